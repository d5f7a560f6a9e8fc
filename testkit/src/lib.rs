//! What the integration tests (`pdb-tests`) and the benchmarks (`pdb-bench`) share:
//! finding or building this workspace's release artifacts, loading `libpdb` into a
//! rusqlite connection, scratch directories, and a `pdb-witness serve` child process.

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod witness;

pub use witness::{mint_token, token, witness_bin, WitnessProc};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_path_buf()
}

/// Builds `package` in release mode (once per process and package, so that tests never
/// run against a stale artifact) and returns `target/release/<file>`.
pub fn release_artifact(package: &'static str, file: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&package) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--release", "-p", package])
            .current_dir(root());
        // What cargo set for this test binary must not reach the build: `ring`'s build
        // script reruns when CARGO_PKG_NAME, CARGO_MANIFEST_DIR, OUT_DIR, … differ, so
        // the release tree would be rebuilt here and again by every plain `cargo build
        // --release` after it (README's commands, the host tests), minutes each time.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if crate_env_var(&name) {
                build.env_remove(&*name);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building {package} failed");
        built.push(package);
    }
    root().join("target/release").join(file)
}

/// Whether `name` is one of the variables cargo sets for the crate it runs (not the
/// user's own cargo settings such as CARGO_HOME or CARGO_TARGET_DIR).
fn crate_env_var(name: &str) -> bool {
    const EXACT: [&str; 9] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// A release artifact that must already exist: the path in the environment variable
/// `var` if set, else `target/release/<file>`. The benchmarks never build (README's
/// commands do, first), so a missing file is an error that says what to build.
pub fn prebuilt_artifact(var: &str, package: &str, file: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os(var)
        .map_or_else(|| root().join("target/release").join(file), PathBuf::from);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found; run `cargo build --release -p {package}` first or set {var}",
            path.display()
        ))
    }
}

/// Loads the `libpdb` at `lib` into `conn`, leaving extension loading disabled after.
pub fn load_pdb(conn: &rusqlite::Connection, lib: &Path) -> rusqlite::Result<()> {
    // SAFETY: loading native code is inherently unchecked; this is the library built
    // from this workspace, loaded by its documented entry point.
    unsafe {
        conn.load_extension_enable()?;
        let loaded = conn.load_extension(lib, Some("sqlite3_pdb_init"));
        conn.load_extension_disable()?;
        loaded
    }
}

/// An empty directory at `path`: whatever an earlier (crashed) run left there is removed.
pub fn fresh_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir_all(path)
}

/// A fresh, empty `pdb-<name>-<pid>` under the system temp directory; the pid keeps
/// concurrent runs of the same test or benchmark apart.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdb-{name}-{}", std::process::id()));
    fresh_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}
