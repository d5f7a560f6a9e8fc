//! What the benchmarks share: machine facts printed with every run, and the verdicts.

use std::process::exit;

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
