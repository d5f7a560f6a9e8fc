//! A `pdb-witness serve` child process on a loopback port, and tokens from
//! `pdb-witness token`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use pdb_core::cert::{hex, parse_hash, Hash};

/// Path of the release `pdb-witness`, built first (once per process).
pub fn witness_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::release_artifact("personaldb-witness", "pdb-witness"))
}

/// A running `pdb-witness serve`; killed (SIGKILL) when dropped.
pub struct WitnessProc {
    child: Child,
    bin: PathBuf,
    remove_data: bool,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The admin token it printed (`*`: admin), if it issues tokens itself.
    pub admin: Option<String>,
    /// Its certificate signing key.
    pub key: Hash,
    /// Its data directory.
    pub data: PathBuf,
}

impl WitnessProc {
    /// Starts the release witness on `data` with default settings.
    pub fn start(data: &Path) -> WitnessProc {
        Self::start_with(data, &[], &[])
    }

    /// Starts the release witness with extra `serve` arguments and environment
    /// variables, and waits until it listens.
    pub fn start_with(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> WitnessProc {
        Self::start_at(data, "127.0.0.1:0", args, envs)
    }

    /// Starts the release witness listening on `listen` (a restart on the same address,
    /// so that devices find it where they left it).
    pub fn start_at(
        data: &Path,
        listen: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> WitnessProc {
        Self::spawn(witness_bin(), data, listen, args, envs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `bin serve --listen <listen> --data <data> <args>` and reads what it
    /// prints until it listens; an error, not a panic, so that a benchmark can report it.
    pub fn spawn(
        bin: &Path,
        data: &Path,
        listen: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<WitnessProc, String> {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(args)
            .env("PDB_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let (mut url, mut admin, mut key) = (None, None, None);
        while url.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!("pdb-witness exited before listening: {status}"));
            };
            let line = line.trim();
            if let Some(v) = line.strip_prefix("listening: ") {
                url = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("admin token: ") {
                admin = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("witness key: ") {
                key = parse_hash(v);
            }
        }
        // Built before the check so that an error still kills the child on drop.
        let mut w = WitnessProc {
            child,
            bin: bin.to_path_buf(),
            remove_data: false,
            url: url.expect("the loop ends with a url"),
            admin,
            key: [0; 32],
            data: data.to_path_buf(),
        };
        w.key = key.ok_or("pdb-witness printed no witness key")?;
        Ok(w)
    }

    /// Removes the data directory too when dropped (a benchmark's scratch witness).
    pub fn removing_data(mut self) -> WitnessProc {
        self.remove_data = true;
        self
    }

    /// The admin token, or an error if the witness printed none.
    pub fn admin_token(&self) -> Result<&str, String> {
        self.admin
            .as_deref()
            .ok_or_else(|| "pdb-witness printed no admin token".to_string())
    }

    /// The signing key in hex, as `pdb_open` takes it.
    pub fn key_hex(&self) -> String {
        hex(&self.key)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub fn stop(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for pdb-witness")
    }

    /// Issues a token with `pdb-witness token` from the data directory's secret.
    pub fn token(&self, sub: &str, group: &str, role: &str, ttl: i64) -> String {
        self.try_token(sub, group, role, ttl)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`WitnessProc::token`], with a failure returned rather than raised.
    pub fn try_token(
        &self,
        sub: &str,
        group: &str,
        role: &str,
        ttl: i64,
    ) -> Result<String, String> {
        mint_token(&self.bin, &self.data, sub, group, role, ttl)
    }
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        self.kill();
        if self.remove_data {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// Issues a token signed with the `jwt.secret` of the data directory `data`, with the
/// release witness.
pub fn token(data: &Path, sub: &str, group: &str, role: &str, ttl: i64) -> String {
    mint_token(witness_bin(), data, sub, group, role, ttl).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `bin token` for `sub`, `group`, `role` and `ttl` seconds (a negative one as 0)
/// on the secret of the data directory `data`.
pub fn mint_token(
    bin: &Path,
    data: &Path,
    sub: &str,
    group: &str,
    role: &str,
    ttl: i64,
) -> Result<String, String> {
    let out = Command::new(bin)
        .args(["token", "--sub", sub, "--group", group, "--role", role])
        .arg("--ttl")
        .arg(ttl.max(0).to_string())
        .arg("--data")
        .arg(data)
        .output()
        .map_err(|e| format!("cannot run {} token: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "pdb-witness token: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("pdb-witness token: {e}"))
}
