//! Counters for `/metrics`, rendered in Prometheus' text format by hand: a handful of
//! atomics does not need a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::problem::Code;

/// Upper bounds (seconds) of the commit latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The witness's counters.
#[derive(Default)]
pub struct Metrics {
    /// Commits certified.
    pub commits: AtomicU64,
    /// Retries answered with the original certificate.
    pub duplicates: AtomicU64,
    rejections: [AtomicU64; Code::ALL.len()],
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Counts a rejection.
    pub fn rejected(&self, code: Code) {
        let i = Code::ALL.iter().position(|c| *c == code).unwrap_or(0);
        self.rejections[i].fetch_add(1, Relaxed);
    }

    /// Records how long a commit request took, whatever its outcome.
    pub fn observe_commit(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (b, bound) in self.latency.iter().zip(BUCKETS) {
            if secs <= bound {
                b.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self, groups: usize, syncs: u64) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "pdb_commits_total",
            "Commits certified.",
            self.commits.load(Relaxed),
        );
        counter(
            "pdb_duplicate_commits_total",
            "Retried commits answered with their original certificate.",
            self.duplicates.load(Relaxed),
        );
        counter(
            "pdb_history_syncs_total",
            "Transactions synced to disk by the history store (one per group-commit batch).",
            syncs,
        );
        let _ = writeln!(
            s,
            "# HELP pdb_rejections_total Rejected requests by problem code.\n# TYPE pdb_rejections_total counter"
        );
        for (code, n) in Code::ALL.iter().zip(&self.rejections) {
            let _ = writeln!(
                s,
                "pdb_rejections_total{{code=\"{}\"}} {}",
                code.as_str(),
                n.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP pdb_groups Groups this witness holds.\n# TYPE pdb_groups gauge\npdb_groups {groups}"
        );
        let _ = writeln!(
            s,
            "# HELP pdb_commit_seconds Time to answer a commit request.\n# TYPE pdb_commit_seconds histogram"
        );
        for (b, bound) in self.latency.iter().zip(BUCKETS) {
            let _ = writeln!(
                s,
                "pdb_commit_seconds_bucket{{le=\"{bound}\"}} {}",
                b.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(s, "pdb_commit_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "pdb_commit_seconds_sum {}\npdb_commit_seconds_count {count}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        s
    }
}
