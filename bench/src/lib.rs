//! What the benchmarks share: machine facts printed with every run, the verdicts, and a
//! scratch witness (the process itself is `pdb-testkit`'s, shared with the tests).

use std::collections::HashMap;
use std::path::Path;
use std::process::{exit, Command};

use pdb_client::cert::{parse_hash, Hash};
use pdb_testkit::{fresh_dir, WitnessProc};

pub mod workload;

pub use pdb_testkit::{load_pdb, prebuilt_artifact};

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

/// A witness on a fresh data directory `data`, started from `bin` with extra `serve`
/// arguments; the directory goes with it when it is dropped.
pub fn scratch_witness(bin: &Path, data: &Path, args: &[&str]) -> Res<WitnessProc> {
    fresh_dir(data)?;
    Ok(WitnessProc::spawn(bin, data, "127.0.0.1:0", args, &[])?.removing_data())
}

/// A request to `w` with its admin token: `(status, body)`.
pub fn admin_request(
    w: &WitnessProc,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Res<(u16, String)> {
    // A runtime per call: the benchmarks that use this are synchronous, and call it
    // only to set a group up, outside what they measure.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin = w.admin_token()?;
    Ok(rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", w.url))
            .bearer_auth(admin);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        Ok::<_, reqwest::Error>((resp.status().as_u16(), resp.text().await?))
    })?)
}

/// `PUT /v1/groups/{group}` with `ddl` on `w`; returns the group's schema hash.
pub fn create_group(w: &WitnessProc, group: &str, ddl: &str) -> Res<Hash> {
    let (status, body) = admin_request(
        w,
        reqwest::Method::PUT,
        &format!("/v1/groups/{group}"),
        Some(serde_json::json!({ "ddl": ddl })),
    )?;
    if status != 201 {
        return Err(format!("creating group {group}: HTTP {status}: {body}").into());
    }
    let info: serde_json::Value = serde_json::from_str(&body)?;
    info.get("schema_hash")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_hash)
        .ok_or_else(|| format!("group {group}: no schema_hash in {body}").into())
}

/// Removes a database file and its WAL companions.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Clock ticks per second of `/proc/*/stat` times.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `(comm, utime + stime in ticks)` of a `/proc/.../stat` file.
pub fn stat_cpu(path: &Path) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s[open + 1..close].to_string();
    // Fields after the comm start at field 3 (state); utime and stime are 14 and 15.
    let rest: Vec<&str> = s[close + 1..].split_whitespace().collect();
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some((comm, ticks))
}

/// CPU ticks of every thread of `pid`, by thread id, with the thread's name.
pub fn thread_ticks(pid: u32) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            if let Some(v) = stat_cpu(&e.path().join("stat")) {
                out.insert(e.file_name().to_string_lossy().into_owned(), v);
            }
        }
    }
    out
}
