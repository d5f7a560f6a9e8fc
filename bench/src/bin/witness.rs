//! Witness benchmark: commit throughput, latency and memory of the real `pdb-witness`
//! over loopback HTTP, next to this machine's raw fdatasync rate.
//!
//! What is measured, and why:
//!
//! - The release `target/release/pdb-witness serve` runs as a child process on a fresh
//!   data directory (one per scenario, so memory peaks and counters belong to one
//!   scenario), exactly as it would be deployed: HTTP/1.1 on 127.0.0.1, SQLite history
//!   with `synchronous=FULL`, one sequencer thread per group.
//! - The workload is what a notes app sends: one commit per local transaction, each a
//!   one-row INSERT changeset of 300 bytes (`t(id INTEGER PRIMARY KEY, body TEXT)`, a
//!   280-byte body), built here in the session extension's format and checked once
//!   against the bytes the real session extension records for the same row. Ids never
//!   repeat, so no commit conflicts; each client sends as `Pdb-Base` the head of its
//!   own last certificate (stale by however many commits other clients made since,
//!   which the default `rebase-if-clean` policy accepts).
//! - Clients are closed-loop: each sends its next commit when the previous one is
//!   answered, over its own keep-alive connection. Scenario A puts 16 of them on one
//!   group (the group-commit path: one sequencer, batches of concurrent commits);
//!   scenario B puts one on each of 64 groups (the cross-group path: 64 sequencers
//!   whose batches share the history store's fsync). After a warm-up, commits
//!   answered 201 within a fixed window are counted; their client-side latencies give
//!   p50 and p99. Any other answer, at any time, is an error: they are counted,
//!   the first few are printed, and the run fails.
//! - Durability is bounded by the disk, so the run first measures the disk: 300-byte
//!   appends each followed by fdatasync, on the data directory's filesystem. The
//!   witness's `/metrics` counters (`pdb_commits_total`, `pdb_history_syncs_total`)
//!   give commits per history fsync over the window: how well group commit amortises
//!   that cost.
//! - The load generator shares the machine's cores with the witness, so it is kept
//!   small (a tokio runtime with one worker thread by default, prebuilt headers, bodies
//!   made by patching 8 bytes of a template) and both sides' CPU time over the window is
//!   reported, the witness's split by thread (HTTP runtime, group sequencers, history
//!   writer), from `/proc/<pid>/task/*/stat`; the busy time of the rest of the machine
//!   (`/proc/stat` less both) says whether other work skewed the run (the load average
//!   does not: the witness's own runnable and fsync-blocked threads inflate it). Memory
//!   is the witness's VmHWM (peak) and VmRSS (now) after each scenario; disk writes are
//!   `/proc/<pid>/io` write_bytes.
//!
//! Run: `cargo build --release -p personaldb-witness && cargo run --release -p pdb-bench --bin
//! witness`. Environment: `PDB_BENCH_SECS` (measured window, default 10),
//! `PDB_BENCH_WARMUP` (default 2), `PDB_BENCH_THREADS` (generator worker threads,
//! default 1), `PDB_BENCH_DIR` (where the temporary data directories go, default the
//! system temp directory), `PDB_WITNESS_BIN` (default `<workspace>/target/release/
//! pdb-witness`).

use pdb_bench::{
    clock_ticks, env_num, fail, loadavg, prebuilt_artifact, print_machine, run, stat_cpu,
    thread_ticks, verdict, Res,
};
use pdb_testkit::WitnessProc;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdb_client::cert::hex;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

/// The one table of every benchmark group.
const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)";
/// Bytes of the `body` text; with the rest of the changeset it makes 300 bytes.
const BODY_LEN: usize = 280;
/// Target: one group, 16 clients.
const MIN_ONE_GROUP: f64 = 5_000.0;
/// Target: 64 groups, aggregate.
const MIN_MANY_GROUPS: f64 = 15_000.0;
/// Target: 64 groups, p99 latency.
const MAX_P99_MS: f64 = 20.0;
/// Target: witness peak RSS.
const MAX_RSS_MB: f64 = 200.0;
/// Seconds of the raw fdatasync measurement.
const FSYNC_SECS: f64 = 2.0;
/// Errors printed in full per scenario (all are counted).
const SHOWN_ERRORS: usize = 5;

struct Settings {
    secs: f64,
    warmup: f64,
    threads: usize,
    dir: PathBuf,
    bin: PathBuf,
}

fn settings() -> Res<Settings> {
    let s = Settings {
        secs: env_num("PDB_BENCH_SECS", 10.0)?,
        warmup: env_num("PDB_BENCH_WARMUP", 2.0)?,
        threads: env_num("PDB_BENCH_THREADS", 1)?,
        dir: std::env::var_os("PDB_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        bin: prebuilt_artifact("PDB_WITNESS_BIN", "personaldb-witness", "pdb-witness")?,
    };
    if s.secs <= 0.0 || s.warmup < 0.0 || s.threads == 0 {
        return Err(
            "PDB_BENCH_SECS must be > 0, PDB_BENCH_WARMUP >= 0, PDB_BENCH_THREADS >= 1".into(),
        );
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------
// The changeset

/// SQLite's varint (`sqlite3PutVarint`), as the changeset format uses it.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v > 0x00ff_ffff_ffff_ffff {
        // Nine bytes; never needed by this benchmark's small lengths.
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut w = v >> 8;
        for b in buf[..8].iter_mut().rev() {
            *b = (w as u8 & 0x7f) | 0x80;
            w >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut groups = Vec::with_capacity(9);
    let mut w = v;
    loop {
        groups.push((w & 0x7f) as u8);
        w >>= 7;
        if w == 0 {
            break;
        }
    }
    let last = groups.len() - 1;
    for (i, g) in groups.iter().rev().enumerate() {
        out.push(if i < last { g | 0x80 } else { *g });
    }
}

/// A one-row INSERT changeset for `t` whose id is patched in place per commit.
struct Template {
    bytes: Vec<u8>,
    id_at: usize,
    body: String,
}

impl Template {
    fn new() -> Template {
        let body: String = (0..BODY_LEN)
            .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
            .collect();
        let mut b = vec![b'T'];
        put_varint(&mut b, 2); // columns
        b.extend_from_slice(&[1, 0]); // id is the primary key
        b.extend_from_slice(b"t\0");
        b.extend_from_slice(&[18, 0]); // SQLITE_INSERT, not indirect
        b.push(1); // INTEGER, 8 bytes big-endian
        let id_at = b.len();
        b.extend_from_slice(&0i64.to_be_bytes());
        b.push(3); // TEXT: varint length, bytes
        put_varint(&mut b, BODY_LEN as u64);
        b.extend_from_slice(body.as_bytes());
        Template {
            bytes: b,
            id_at,
            body,
        }
    }

    fn with_id(&self, id: i64) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b[self.id_at..self.id_at + 8].copy_from_slice(&id.to_be_bytes());
        b
    }

    /// Checks the hand-made bytes against what the session extension records.
    fn check(&self) -> Res<()> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.execute_batch(DDL)?;
        let mut s = rusqlite::session::Session::new(&conn)?;
        s.attach(None::<&str>)?;
        let id = 0x0102_0304_0506_0708_i64;
        conn.execute(
            "INSERT INTO t(id, body) VALUES (?1, ?2)",
            rusqlite::params![id, self.body],
        )?;
        let mut theirs = Vec::new();
        s.changeset_strm(&mut theirs)?;
        if theirs != self.with_id(id) {
            return Err(format!(
                "the hand-made changeset differs from the session extension's:\n  ours:   {}\n  theirs: {}",
                hex(&self.with_id(id)),
                hex(&theirs)
            )
            .into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The witness process and /proc

/// The witness's thread classes, in print order.
const CLASS_NAMES: [&str; 4] = [
    "http (tokio workers)",
    "group sequencers",
    "history writer",
    "other (main: accept loop)",
];

fn class_of(comm: &str) -> usize {
    if comm.starts_with("tokio-r") {
        0
    } else if comm.starts_with("pdb-group-") {
        1
    } else if comm == "pdb-log-writer" {
        2
    } else {
        3
    }
}

/// Busy ticks of the whole machine (`/proc/stat`: everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?;
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is in user).
            Some(v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?)
        })
        .unwrap_or(0)
}

/// A `kB` line of `/proc/<pid>/status`, in MB.
fn status_mb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `write_bytes` of `/proc/<pid>/io` (bytes sent to the storage layer).
fn write_bytes(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The type of the filesystem holding `path` (longest mount point prefix).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), kind.to_string()))
        })
        .max_by_key(|(n, _)| *n)
        .map_or_else(|| "?".into(), |(_, k)| k)
}

/// Appends of 300 bytes, each followed by fdatasync, for `FSYNC_SECS`: syncs per second.
fn fsync_rate(dir: &Path) -> Res<f64> {
    let path = dir.join(format!("pdb-bench-fsync-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    let chunk = [b'x'; 300];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < FSYNC_SECS {
        f.write_all(&chunk)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

// ---------------------------------------------------------------------------------
// Load generation

/// What one client needs to commit to its group.
struct ClientSpec {
    commit_url: String,
    base: String,
    key_prefix: String,
    id_base: i64,
    http: reqwest::Client,
}

/// The measured window, shared by every client.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct ClientResult {
    /// Latencies (microseconds) of the commits answered 201 within the window.
    latencies: Vec<u32>,
    /// Commits answered 201 at any time.
    accepted: u64,
    errors: u64,
    shown: Vec<String>,
}

/// One keep-alive connection's client, sending `headers` with every request.
fn http_client(headers: HeaderMap) -> Res<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?)
}

async fn client_loop(spec: ClientSpec, template: Arc<Template>, w: Window) -> ClientResult {
    let mut r = ClientResult::default();
    let mut base = spec.base;
    let mut n: i64 = 0;
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            break;
        }
        n += 1;
        let key = format!("{}{n}", spec.key_prefix);
        let outcome = spec
            .http
            .post(&spec.commit_url)
            .header("Pdb-Base", &base)
            .header("Idempotency-Key", key)
            .body(template.with_id(spec.id_base + n))
            .send()
            .await;
        let (status, body) = match outcome {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.bytes().await.map_err(|e| e.to_string()))
            }
            Err(e) => (0, Err(e.to_string())),
        };
        let done = Instant::now();
        let cert = match (status, &body) {
            (201, Ok(b)) => serde_json::from_slice::<Value>(b).ok().and_then(|v| {
                Some(format!(
                    "{}:{}",
                    v.get("seq")?.as_u64()?,
                    v.get("head")?.as_str()?
                ))
            }),
            _ => None,
        };
        match cert {
            Some(next_base) => {
                base = next_base;
                r.accepted += 1;
                if done >= w.start && done < w.end {
                    r.latencies
                        .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                }
            }
            None => {
                r.errors += 1;
                if r.shown.len() < SHOWN_ERRORS {
                    let detail = match body {
                        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                        Err(e) => e,
                    };
                    r.shown.push(format!("HTTP {status}: {detail}"));
                }
            }
        }
    }
    r
}

/// The witness's counters of interest, from `/metrics`.
#[derive(Default, Clone, Copy)]
struct Counters {
    commits: f64,
    syncs: f64,
    handled: f64,
    handled_secs: f64,
}

async fn counters(http: &reqwest::Client, url: &str) -> Res<Counters> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = v.parse().unwrap_or(0.0);
        match name {
            "pdb_commits_total" => c.commits = v,
            "pdb_history_syncs_total" => c.syncs = v,
            "pdb_commit_seconds_count" => c.handled = v,
            "pdb_commit_seconds_sum" => c.handled_secs = v,
            _ => {}
        }
    }
    Ok(c)
}

/// Everything sampled at one edge of the window.
struct Snapshot {
    at: Instant,
    server_ticks: HashMap<String, (String, u64)>,
    self_ticks: u64,
    machine_ticks: u64,
    written: Option<u64>,
    counters: Counters,
}

async fn snapshot(w: &WitnessProc, admin: &reqwest::Client) -> Res<Snapshot> {
    let at = Instant::now();
    let server_ticks = thread_ticks(w.pid());
    let self_ticks = stat_cpu(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t);
    let machine_ticks = machine_busy_ticks();
    let written = write_bytes(w.pid());
    let counters = counters(admin, &w.url).await?;
    Ok(Snapshot {
        at,
        server_ticks,
        self_ticks,
        machine_ticks,
        written,
        counters,
    })
}

struct Scenario {
    label: &'static str,
    groups: usize,
    clients_per_group: usize,
}

/// What one scenario measured.
struct Outcome {
    commits_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    shown: Vec<String>,
    commits_per_sync: f64,
    syncs_per_s: f64,
    server_cpu: [f64; CLASS_NAMES.len()],
    generator_cpu: f64,
    others_cpu: f64,
    server_us_per_commit: f64,
    handled_ms: f64,
    bytes_per_commit: Option<f64>,
    rss_peak_mb: f64,
    rss_now_mb: f64,
    window_commits: u64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

async fn run_scenario(sc: &Scenario, s: &Settings, template: Arc<Template>) -> Res<Outcome> {
    let data = s.dir.join(format!(
        "pdb-bench-witness-{}-{}",
        std::process::id(),
        sc.label
    ));
    std::fs::create_dir_all(&data)?;
    let w = WitnessProc::spawn(&s.bin, &data, "127.0.0.1:0", &[], &[])?.removing_data();
    let bearer = HeaderValue::from_str(&format!("Bearer {}", w.admin_token()?))?;
    let mut admin_headers = HeaderMap::new();
    admin_headers.insert(AUTHORIZATION, bearer.clone());
    let admin = http_client(admin_headers)?;

    let mut specs = Vec::new();
    for g in 0..sc.groups {
        let name = format!("bench-{g}");
        let url = format!("{}/v1/groups/{name}", w.url);
        let created = admin
            .put(&url)
            .json(&serde_json::json!({ "ddl": DDL }))
            .send()
            .await?;
        if created.status().as_u16() != 201 {
            let status = created.status();
            return Err(format!("creating {name}: {status}: {}", created.text().await?).into());
        }
        let info: Value = created.json().await?;
        let field = |k: &str| -> Res<String> {
            Ok(info
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("group info has no {k}"))?
                .to_string())
        };
        let (head, schema) = (field("head")?, field("schema_hash")?);
        let seq = info.get("seq").and_then(Value::as_u64).unwrap_or(0);
        for c in 0..sc.clients_per_group {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, bearer.clone());
            h.insert("Pdb-Schema", HeaderValue::from_str(&schema)?);
            h.insert(
                "Pdb-Client",
                HeaderValue::from_str(&format!("{:032x}", (g << 16) | c))?,
            );
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.sqlite.changeset"),
            );
            specs.push(ClientSpec {
                commit_url: format!("{url}/commits"),
                base: format!("{seq}:{head}"),
                key_prefix: format!("{}-{g}-{c}-", sc.label),
                id_base: (c as i64) << 40,
                http: http_client(h)?,
            });
        }
    }

    let now = Instant::now();
    let start = now + Duration::from_secs_f64(s.warmup);
    let window = Window {
        start,
        end: start + Duration::from_secs_f64(s.secs),
    };
    let tasks: Vec<_> = specs
        .into_iter()
        .map(|spec| tokio::spawn(client_loop(spec, template.clone(), window)))
        .collect();
    tokio::time::sleep_until(window.start.into()).await;
    let before = snapshot(&w, &admin).await?;
    tokio::time::sleep_until(window.end.into()).await;
    let after = snapshot(&w, &admin).await?;
    let mut latencies = Vec::new();
    let (mut errors, mut shown, mut accepted) = (0, Vec::new(), 0);
    for t in tasks {
        let r = t.await?;
        latencies.extend(r.latencies);
        errors += r.errors;
        accepted += r.accepted;
        shown.extend(r.shown);
    }
    shown.truncate(SHOWN_ERRORS);
    // Everything the witness did: every accepted commit and nothing else was certified.
    let total = counters(&admin, &w.url).await?;
    if total.commits as u64 != accepted {
        shown.push(format!(
            "the witness certified {} commits, the clients saw {accepted} accepted",
            total.commits
        ));
        errors += 1;
    }
    latencies.sort_unstable();

    let ticks = clock_ticks();
    let mut server_cpu = [0.0; CLASS_NAMES.len()];
    for (tid, (comm, t1)) in &after.server_ticks {
        let t0 = before.server_ticks.get(tid).map_or(0, |(_, t)| *t);
        server_cpu[class_of(comm)] += t1.saturating_sub(t0) as f64 / ticks;
    }
    let (c0, c1) = (before.counters, after.counters);
    let window_commits = c1.commits - c0.commits;
    let handled = c1.handled - c0.handled;
    let outcome = Outcome {
        commits_per_s: latencies.len() as f64 / s.secs,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies
            .last()
            .map_or(f64::NAN, |&m| f64::from(m) / 1000.0),
        errors,
        shown,
        commits_per_sync: window_commits / (c1.syncs - c0.syncs).max(1.0),
        syncs_per_s: (c1.syncs - c0.syncs) / after.at.duration_since(before.at).as_secs_f64(),
        generator_cpu: after.self_ticks.saturating_sub(before.self_ticks) as f64 / ticks,
        others_cpu: (after.machine_ticks.saturating_sub(before.machine_ticks) as f64 / ticks
            - server_cpu.iter().sum::<f64>()
            - after.self_ticks.saturating_sub(before.self_ticks) as f64 / ticks)
            .max(0.0),
        server_us_per_commit: server_cpu.iter().sum::<f64>() * 1e6 / window_commits.max(1.0),
        server_cpu,
        handled_ms: (c1.handled_secs - c0.handled_secs) * 1e3 / handled.max(1.0),
        bytes_per_commit: match (before.written, after.written) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / window_commits.max(1.0)),
            _ => None,
        },
        rss_peak_mb: status_mb(w.pid(), "VmHWM:"),
        rss_now_mb: status_mb(w.pid(), "VmRSS:"),
        window_commits: window_commits as u64,
    };
    drop(w);
    Ok(outcome)
}

// ---------------------------------------------------------------------------------
// Report

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn main() {
    run(bench);
}

fn bench() -> Res<()> {
    let s = settings()?;
    let started = Instant::now();
    let template = Arc::new(Template::new());
    template.check()?;
    print_machine();
    println!(
        "witness: {} (fresh data directory per scenario in {}, {})",
        s.bin.display(),
        s.dir.display(),
        fs_type(&s.dir)
    );
    println!(
        "workload: one-row INSERT changesets of {} bytes (same bytes as the session extension's), \
         Pdb-Base = the client's last head, rebase-if-clean",
        template.bytes.len()
    );
    println!(
        "clients: closed loop, one keep-alive HTTP/1.1 connection each; warm-up {} s, window {} s; \
         generator: tokio, {} worker thread{}, same machine",
        s.warmup,
        s.secs,
        s.threads,
        plural(s.threads)
    );
    let fsyncs = fsync_rate(&s.dir)?;
    println!(
        "disk: {fsyncs:.0} fsyncs/s (300-byte append + fdatasync, {FSYNC_SECS} s, same filesystem)"
    );

    let runtime = if s.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(s.threads)
            .enable_all()
            .build()?
    };
    let scenarios = [
        Scenario {
            label: "A",
            groups: 1,
            clients_per_group: 16,
        },
        Scenario {
            label: "B",
            groups: 64,
            clients_per_group: 1,
        },
    ];
    let mut outcomes = Vec::new();
    for sc in &scenarios {
        outcomes.push(runtime.block_on(run_scenario(sc, &s, template.clone()))?);
    }

    println!();
    println!(
        "{:<22} {:>10} {:>7} {:>7} {:>7} {:>7}   target",
        "scenario", "commits/s", "p50 ms", "p99 ms", "max ms", "errors"
    );
    let targets = [
        (
            format!("{MIN_ONE_GROUP:.0}/s"),
            outcomes[0].commits_per_s >= MIN_ONE_GROUP,
        ),
        (
            format!("{MIN_MANY_GROUPS:.0}/s, p99 <= {MAX_P99_MS:.0} ms"),
            outcomes[1].commits_per_s >= MIN_MANY_GROUPS && outcomes[1].p99_ms <= MAX_P99_MS,
        ),
    ];
    for ((sc, o), (t, ok)) in scenarios.iter().zip(&outcomes).zip(&targets) {
        println!(
            "{:<22} {:>10.0} {:>7.2} {:>7.2} {:>7.2} {:>7}   >= {t} {}",
            format!(
                "{} {}x{} clients",
                sc.label,
                sc.groups,
                sc.groups * sc.clients_per_group
            ),
            o.commits_per_s,
            o.p50_ms,
            o.p99_ms,
            o.max_ms,
            o.errors,
            verdict(*ok)
        );
    }
    println!();
    let header: String = scenarios
        .iter()
        .map(|sc| format!(" {:>10}", sc.label))
        .collect();
    println!("{:<34}{header}", "where time goes (window)");
    let row = |label: &str, f: &dyn Fn(&Outcome) -> String| {
        let cells: String = outcomes.iter().map(|o| format!(" {:>10}", f(o))).collect();
        println!("{label:<34}{cells}");
    };
    row("commits certified", &|o| o.window_commits.to_string());
    row("commits per history fsync", &|o| {
        format!("{:.1}", o.commits_per_sync)
    });
    row("history fsyncs/s", &|o| format!("{:.0}", o.syncs_per_s));
    row("witness cpu s", &|o| {
        format!("{:.2}", o.server_cpu.iter().sum::<f64>())
    });
    for (i, class) in CLASS_NAMES.iter().enumerate() {
        row(&format!("  {class}"), &|o| {
            format!("{:.2}", o.server_cpu[i])
        });
    }
    row("witness cpu us/commit", &|o| {
        if o.window_commits == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", o.server_us_per_commit)
        }
    });
    row(
        &format!(
            "generator cpu s ({} thread{})",
            s.threads,
            plural(s.threads)
        ),
        &|o| format!("{:.2}", o.generator_cpu),
    );
    row("rest of the machine cpu s", &|o| {
        format!("{:.2}", o.others_cpu)
    });
    row("witness mean answer ms", &|o| {
        format!("{:.2}", o.handled_ms)
    });
    row(
        "witness disk writes B/commit",
        &|o| match o.bytes_per_commit {
            Some(b) if o.window_commits > 0 => format!("{b:.0}"),
            _ => "-".to_string(),
        },
    );
    row("witness rss peak MB (VmHWM)", &|o| {
        format!("{:.1}", o.rss_peak_mb)
    });
    row("witness rss now MB (VmRSS)", &|o| {
        format!("{:.1}", o.rss_now_mb)
    });
    let rss_ok = outcomes.iter().all(|o| o.rss_peak_mb < MAX_RSS_MB);
    println!(
        "rss target: peak < {MAX_RSS_MB:.0} MB {}; raw disk {fsyncs:.0} fsyncs/s",
        verdict(rss_ok)
    );
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    for (sc, o) in scenarios.iter().zip(&outcomes) {
        for e in &o.shown {
            eprintln!("error in {}: {e}", sc.label);
        }
    }
    println!(
        "total {:.1} s, load average {} at end",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    if errors > 0 {
        fail(&format!("{errors} commit(s) were not answered 201"));
    }
    Ok(())
}
