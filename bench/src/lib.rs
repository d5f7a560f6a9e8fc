//! What the benchmarks share: machine facts printed with every run, and the verdicts.

use std::process::exit;

pub mod workload;

/// The error type of the benchmark programs.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The CPU model, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average: other work on the machine skews every number here.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// How a figure compares with its target.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

/// Reports a failed check and exits non-zero.
pub fn fail(msg: &str) -> ! {
    eprintln!("check: FAILED: {msg}");
    exit(1)
}

/// Runs a benchmark's body, turning an error into a failed check.
pub fn run(bench: impl FnOnce() -> Res<()>) {
    if let Err(e) = bench() {
        fail(&e.to_string());
    }
}

/// Prints the machine line every benchmark starts with: cores, CPU, load.
pub fn print_machine() {
    println!(
        "machine: nproc {}, {}, load average {} at start",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        loadavg()
    );
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A number from the environment variable `name`, or `default` when it is unset.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Res<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a number").into()),
        Err(_) => Ok(default),
    }
}

/// Loads this workspace's `libpdb` into `conn`.
pub fn load_pdb(conn: &rusqlite::Connection, lib: &std::path::Path) -> Res<()> {
    // SAFETY: the library is this workspace's own extension, built for this SQLite API.
    unsafe {
        conn.load_extension_enable()?;
        conn.load_extension(lib, Some("sqlite3_pdb_init"))?;
    }
    conn.load_extension_disable()?;
    Ok(())
}

/// Removes a database file and its WAL companions.
pub fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
