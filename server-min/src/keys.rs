//! The witness's key material in its data directory: the Ed25519 key that signs
//! certificates (`witness.key`) and the HS256 secret of locally issued tokens
//! (`jwt.secret`), each 32 random bytes as hex, created on first start with mode 0600.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use pdb_core::cert::{hex, parse_hex};

/// File name of the certificate signing key.
pub const WITNESS_KEY: &str = "witness.key";
/// File name of the token secret.
pub const JWT_SECRET: &str = "jwt.secret";

/// 32 bytes from the operating system's random source.
pub fn random32() -> std::io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(b)
}

/// Reads a 32-byte hex file, creating it with fresh random bytes if it does not exist.
pub fn load_or_create(path: &Path) -> std::io::Result<[u8; 32]> {
    match load(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = random32()?;
            write_secret(path, &bytes)?;
            Ok(bytes)
        }
        found => found,
    }
}

/// Reads a 32-byte hex file that must exist.
pub fn load(path: &Path) -> std::io::Result<[u8; 32]> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    parse_hex::<32>(s.trim()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: expected 64 hex digits", path.display()),
        )
    })
}

/// Writes `bytes` as hex to a new file readable only by its owner, synced to disk.
pub fn write_secret(path: &Path, bytes: &[u8; 32]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "{}", hex(bytes))?;
    f.sync_all()
}

/// The witness signing key of a data directory, created on first use.
pub fn witness_key(data: &Path) -> std::io::Result<SigningKey> {
    load_or_create(&data.join(WITNESS_KEY)).map(|seed| SigningKey::from_bytes(&seed))
}
