//! Sync benchmark (issue deliverable 8): how fast a commit travels from one device to
//! another, how much memory a device needs to pull a large history, and how fast pulled
//! commits are applied, against a real `pdb-witness` on loopback.
//!
//! What is measured, and why:
//!
//! 1. **Latency.** Two devices A and B (database files, each a rusqlite connection with
//!    the release `libpdb` loaded, tracking one table) run background workers
//!    (`pdb_sync_start`). A inserts one small row and calls `pdb_commit()`; the time runs
//!    from just before that call until B's own connection sees the row (polled every
//!    0.5 ms). Each commit is measured alone: the next one is made only after B has the
//!    row and A has pulled its own commit back (its queue is empty), plus a short gap.
//!    While polling, A's queue is read too, so the latency splits into A's push (until
//!    the certificate is stored on A) and the rest (B's watcher, pull and apply).
//! 2. **Memory of a large pull.** A group is filled with ~100 MB of changesets over HTTP
//!    (commits of ~50 KB: a few rows with random BLOBs); then a separate process (this
//!    program re-run with `--pull-child`, so that its memory is its own) opens a fresh
//!    device, reads VmRSS, runs `pdb_sync()` until it has the witness's head, and reads
//!    VmHWM. The growth is VmHWM minus that VmRSS; the device must end with every row.
//! 3. **Apply throughput.** The apply benchmark's workload (1,000 commits of 100 changes
//!    over two tables, recorded by the session extension) is committed to a witness
//!    after one commit with the initial rows. A template device pulls that first commit;
//!    then, on fresh copies of it, the remaining commits are applied (a) by the client's
//!    pull path without HTTP: `pdb_client::sync::rebase::integrate` (verification, apply,
//!    state vector, bookkeeping) on the pages the witness serves, pulled into memory once
//!    before timing; (b) by `sqlite3changeset_apply` (rusqlite's `apply_strm`) on an
//!    untracked copy, one transaction per page like (a), and for reference one per
//!    commit; (c) by `pdb_pull()` over HTTP end to end. The final databases must equal
//!    the source. Then a replica of (a) re-does its per-commit steps one by one with the
//!    client's public pieces (verify, keys, row images before, apply, row images after,
//!    state vector) and times each, to show where (a)'s time goes; a second replica
//!    runs on a copy without libpdb's capture triggers, to show what they cost.
//!
//! All devices: WAL; part 3's also `synchronous=NORMAL` (as the apply benchmark), parts
//! 1 and 2 SQLite's default (`FULL`) as an application would have it.
//!
//! Run: `cargo build --release -p personaldb && cargo build --release -p personaldb-witness &&
//! cargo run --release -p pdb-bench --bin sync` (two builds, not one `-p personaldb -p personaldb-witness`:
//! built together, libpdb would take pdb-client's `rusqlite` feature from the witness).
//! Environment: `PDB_SYNC_LATENCY_N` (measured commits, default 300),
//! `PDB_SYNC_LATENCY_WARMUP` (default 5), `PDB_SYNC_LATENCY_GAP_MS` (default 10),
//! `PDB_SYNC_HISTORY_MB` (default 100), `PDB_SYNC_HISTORY_COMMIT_KB` (default 50),
//! `PDB_SYNC_APPLY_COMMITS` (default 1000), `PDB_SYNC_APPLY_CHANGES` (default 100),
//! `PDB_SYNC_REPS` (part 3 repetitions, medians, default 3), `PDB_SYNC_PARTS` (which
//! parts to run, default `123`), `PDB_BENCH_DIR` (temporary files, default the system
//! temp directory), `PDB_LIB`, `PDB_WITNESS_BIN` (default the release builds).

use pdb_bench::workload::{self, Initial, Rng};
use pdb_bench::{
    create_group, env_num, load_pdb, loadavg, median, prebuilt_artifact, print_machine, remove_db,
    run, scratch_witness, verdict, Res,
};
use pdb_testkit::WitnessProc;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pdb_client::apply::OnConflict;
use pdb_client::cert::Hash;
use pdb_client::rows::{key_bytes, key_columns, key_of, Row, Rows};
use pdb_client::sync::{config, rebase};
use pdb_client::transport::{Pulled, Remote, Submission};
use pdb_client::value::{decode_field, Value as PValue, ValueRef as PValueRef};
use rusqlite::session::{ConflictAction, Session};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

/// Target: median latency from `pdb_commit()` on A to the row on B.
const MAX_LATENCY_P50_MS: f64 = 50.0;
/// Target: peak RSS growth of a device pulling the whole history.
const MAX_PULL_GROWTH_MB: f64 = 64.0;
/// Target: integrate's time at most this multiple of the session extension's.
const MAX_INTEGRATE_RATIO: f64 = 1.3;
/// The latency table.
const LAT_DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)";
/// The history table.
const HIST_DDL: &str = "CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB NOT NULL)";
/// Rows per history commit (their BLOBs share the commit's size).
const HIST_ROWS: usize = 5;
/// Commits per pull page the client asks for (its own `PAGE`).
const PAGE: usize = 1000;
/// The worker options of part 1: the default long-poll, spelled out. (The transport
/// sends the wait in whole seconds, so anything under 1000 ms would become a
/// zero-second wait and the watcher would poll back to back.)
const WORKER_OPTIONS: &str = r#"{"wait_ms": 20000}"#;
/// Longest a single commit may take to arrive before the run fails.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(20);

struct Settings {
    lib: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    parts: String,
    latency_n: usize,
    latency_warmup: usize,
    latency_gap: Duration,
    history_mb: f64,
    history_commit_kb: f64,
    apply_commits: usize,
    apply_changes: usize,
    reps: usize,
}

fn settings() -> Res<Settings> {
    let s = Settings {
        lib: prebuilt_artifact("PDB_LIB", "personaldb", "libpdb.so")?,
        bin: prebuilt_artifact("PDB_WITNESS_BIN", "personaldb-witness", "pdb-witness")?,
        dir: std::env::var_os("PDB_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        parts: std::env::var("PDB_SYNC_PARTS").unwrap_or_else(|_| "123".into()),
        latency_n: env_num("PDB_SYNC_LATENCY_N", 300)?,
        latency_warmup: env_num("PDB_SYNC_LATENCY_WARMUP", 5)?,
        latency_gap: Duration::from_millis(env_num("PDB_SYNC_LATENCY_GAP_MS", 10)?),
        history_mb: env_num("PDB_SYNC_HISTORY_MB", 100.0)?,
        history_commit_kb: env_num("PDB_SYNC_HISTORY_COMMIT_KB", 50.0)?,
        apply_commits: env_num("PDB_SYNC_APPLY_COMMITS", 1000)?,
        apply_changes: env_num("PDB_SYNC_APPLY_CHANGES", 100)?,
        reps: env_num("PDB_SYNC_REPS", 3)?,
    };
    if s.latency_n == 0
        || s.history_mb <= 0.0
        || s.history_commit_kb < 1.0
        || s.apply_commits == 0
        || s.apply_changes == 0
        || s.reps == 0
    {
        return Err("PDB_SYNC_* sizes must be > 0 (PDB_SYNC_HISTORY_COMMIT_KB >= 1)".into());
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------
// The witness, devices and /proc

/// Sends commits to one group in order, each on the head the previous one made.
struct Pusher {
    remote: Remote,
    schema: Hash,
    base: (u64, Hash),
    prefix: String,
}

impl Pusher {
    fn new(w: &WitnessProc, group: &str, schema: Hash) -> Res<Pusher> {
        let token = w.try_token("loader", group, "write", 3600)?;
        Ok(Pusher {
            remote: Remote::new(&w.url, group, &token)?,
            schema,
            base: (0, pdb_client::cert::genesis(group)),
            prefix: format!("bench-{group}-{}", std::process::id()),
        })
    }

    fn push(&mut self, changeset: &[u8]) -> Res<()> {
        let key = format!("{}-{}", self.prefix, self.base.0 + 1);
        let answer = self.remote.push(&Submission {
            changeset,
            base: self.base,
            idempotency_key: &key,
            schema_hash: self.schema,
            client: None,
            meta: None,
            fast_forward: false,
        })?;
        match answer {
            Ok((cert, _)) => {
                self.base = (cert.seq, cert.head);
                Ok(())
            }
            Err(rej) => Err(format!("commit {} refused: {rej}", self.base.0 + 1).into()),
        }
    }
}

/// Where a device syncs.
struct Target<'a> {
    url: &'a str,
    group: &'a str,
    token: &'a str,
    key: &'a str,
}

/// A fresh device database at `path`: WAL, `libpdb`, `ddl`, `tables` tracked, opened on
/// the target's group (the steps of the integration tests' `Device`).
fn open_device(
    path: &Path,
    lib: &Path,
    ddl: &str,
    tables: &[&str],
    t: &Target<'_>,
) -> Res<Connection> {
    remove_db(path);
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not wal").into());
    }
    load_pdb(&conn, lib)?;
    conn.execute_batch(ddl)?;
    for table in tables {
        conn.query_row("SELECT pdb_track(?1)", [table], |_| Ok(()))?;
    }
    conn.query_row(
        "SELECT pdb_open(?1, ?2, ?3, ?4)",
        params![t.url, t.group, t.token, t.key],
        |_| Ok(()),
    )?;
    Ok(conn)
}

/// A JSON-returning SQL function call, parsed.
fn call_json(conn: &Connection, sql: &str) -> Res<Value> {
    let s: String = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(serde_json::from_str(&s)?)
}

fn count(conn: &Connection, sql: &str) -> Res<i64> {
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// A `kB` line of `/proc/self/status`, in kB.
fn status_kb(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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

/// The `p`th percentile of sorted milliseconds (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------
// Part 1: latency

struct Latency {
    /// Per measured commit, in ms: the whole way, `pdb_commit()` itself, A's push.
    total: Vec<f64>,
    commit: Vec<f64>,
    pushed: Vec<f64>,
    rest: Vec<f64>,
}

fn latency(s: &Settings) -> Res<Latency> {
    let dir = s
        .dir
        .join(format!("pdb-bench-sync-{}-lat", std::process::id()));
    let w = scratch_witness(&s.bin, &dir.join("witness"), &[])?;
    create_group(&w, "lat", LAT_DDL)?;
    let (ta, tb) = (
        w.try_token("a", "lat", "write", 3600)?,
        w.try_token("b", "lat", "write", 3600)?,
    );
    let key = w.key_hex();
    let target = |token| Target {
        url: &w.url,
        group: "lat",
        token,
        key: &key,
    };
    let a = open_device(&dir.join("a.db"), &s.lib, LAT_DDL, &["t"], &target(&ta))?;
    let b = open_device(&dir.join("b.db"), &s.lib, LAT_DDL, &["t"], &target(&tb))?;
    for d in [&a, &b] {
        let r: String = d.query_row("SELECT pdb_sync_start(?1)", [WORKER_OPTIONS], |r| r.get(0))?;
        if r != "started" {
            return Err(format!("pdb_sync_start answered {r}").into());
        }
    }
    let started = Instant::now();
    while !(call_json(&a, "SELECT pdb_status()")?["worker"] == true
        && call_json(&b, "SELECT pdb_status()")?["worker"] == true)
    {
        if started.elapsed() > ARRIVAL_LIMIT {
            return Err("the workers did not report running".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    let body = "x".repeat(100);
    let mut out = Latency {
        total: Vec::new(),
        commit: Vec::new(),
        pushed: Vec::new(),
        rest: Vec::new(),
    };
    let poll = Duration::from_micros(500);
    let total = s.latency_warmup + s.latency_n;
    {
        let mut on_b = b.prepare("SELECT count(*) FROM t WHERE id = ?1")?;
        let mut queued = a.prepare("SELECT pushed_seq FROM pdb_upload_queue WHERE id = ?1")?;
        let mut unsent = a.prepare("SELECT count(*) FROM pdb_upload_queue")?;
        for i in 0..total {
            let id = i as i64 + 1;
            a.execute("INSERT INTO t(id, body) VALUES (?1, ?2)", params![id, body])?;
            let t0 = Instant::now();
            let local: Option<i64> = a.query_row("SELECT pdb_commit()", [], |r| r.get(0))?;
            let committed = t0.elapsed();
            let local = local.ok_or("pdb_commit() found nothing to commit")?;
            let mut pushed = None;
            loop {
                if pushed.is_none() {
                    // Certified: pushed_seq set, or the row already gone (pulled back).
                    let seq: Option<Option<i64>> =
                        queued.query_row([local], |r| r.get(0)).optional()?;
                    if !matches!(seq, Some(None)) {
                        pushed = Some(t0.elapsed());
                    }
                }
                if on_b.query_row([id], |r| r.get::<_, i64>(0))? == 1 {
                    break;
                }
                if t0.elapsed() > ARRIVAL_LIMIT {
                    return Err(
                        format!("commit {id} did not reach B within {ARRIVAL_LIMIT:?}").into(),
                    );
                }
                std::thread::sleep(poll);
            }
            let arrived = t0.elapsed();
            let pushed = pushed.unwrap_or(arrived);
            // Alone: A has its own commit back (queue empty) before the next one.
            while unsent.query_row([], |r| r.get::<_, i64>(0))? > 0 {
                if t0.elapsed() > ARRIVAL_LIMIT {
                    return Err(format!("A's queue did not drain after commit {id}").into());
                }
                std::thread::sleep(poll);
            }
            if i >= s.latency_warmup {
                out.total.push(ms(arrived));
                out.commit.push(ms(committed));
                out.pushed.push(ms(pushed));
                out.rest.push(ms(arrived) - ms(pushed));
            }
            std::thread::sleep(s.latency_gap);
        }
    }
    for d in [&a, &b] {
        d.query_row("SELECT pdb_sync_stop()", [], |_| Ok(()))?;
    }
    let (na, nb) = (
        count(&a, "SELECT count(*) FROM t")?,
        count(&b, "SELECT count(*) FROM t")?,
    );
    if na != total as i64 || nb != total as i64 {
        return Err(format!("after the run A has {na} rows and B {nb}, not {total}").into());
    }
    for v in [
        &mut out.total,
        &mut out.commit,
        &mut out.pushed,
        &mut out.rest,
    ] {
        v.sort_by(f64::total_cmp);
    }
    drop((a, b, w));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Part 2: memory of a large pull

struct History {
    commits: usize,
    bytes: usize,
    rows: i64,
    fill_secs: f64,
    rss_before_mb: f64,
    hwm_before_mb: f64,
    hwm_after_mb: f64,
    pull_secs: f64,
    pulled: i64,
    db_mb: f64,
}

fn history(s: &Settings) -> Res<History> {
    let dir = s
        .dir
        .join(format!("pdb-bench-sync-{}-hist", std::process::id()));
    let w = scratch_witness(&s.bin, &dir.join("witness"), &[])?;
    let schema = create_group(&w, "hist", HIST_DDL)?;
    let mut pusher = Pusher::new(&w, "hist", schema)?;
    let commit_bytes = (s.history_commit_kb * 1000.0) as usize;
    let commits = ((s.history_mb * 1e6) / commit_bytes as f64)
        .round()
        .max(1.0) as usize;
    // Each row's BLOB takes its share of the commit, less the record overhead.
    let blob = (commit_bytes / HIST_ROWS).saturating_sub(16).max(1);
    let src = Connection::open_in_memory()?;
    src.execute_batch(HIST_DDL)?;
    let mut rng = Rng(0x5044_4253_594e_4331);
    let mut bytes = 0;
    let t = Instant::now();
    for c in 0..commits {
        src.execute_batch("DELETE FROM blobs")?;
        let mut session = Session::new(&src)?;
        session.attach::<&str>(None)?;
        for r in 0..HIST_ROWS {
            let data: Vec<u8> = (0..blob.div_ceil(8))
                .flat_map(|_| rng.next_u64().to_le_bytes())
                .take(blob)
                .collect();
            src.execute(
                "INSERT INTO blobs(id, body) VALUES (?1, ?2)",
                params![(c * HIST_ROWS + r + 1) as i64, data],
            )?;
        }
        let mut cs = Vec::new();
        session.changeset_strm(&mut cs)?;
        drop(session);
        bytes += cs.len();
        pusher.push(&cs)?;
    }
    let fill_secs = t.elapsed().as_secs_f64();
    drop(src);

    let token = w.try_token("puller", "hist", "read", 3600)?;
    let db = dir.join("puller.db");
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--pull-child")
        .env("PDB_SYNC_CHILD_DB", &db)
        .env("PDB_SYNC_CHILD_URL", &w.url)
        .env("PDB_SYNC_CHILD_TOKEN", &token)
        .env("PDB_SYNC_CHILD_KEY", w.key_hex())
        .env("PDB_SYNC_CHILD_SEQ", commits.to_string())
        .env("PDB_LIB", &s.lib)
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("the pulling process failed ({}): {text}", out.status).into());
    }
    let r: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the pulling process printed {text:?}: {e}"))?;
    let num = |k: &str| -> Res<f64> {
        r.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("the pulling process reported no {k}: {text}").into())
    };
    let h = History {
        commits,
        bytes,
        rows: num("rows")? as i64,
        fill_secs,
        rss_before_mb: num("rss_before_kb")? / 1024.0,
        hwm_before_mb: num("hwm_before_kb")? / 1024.0,
        hwm_after_mb: num("hwm_after_kb")? / 1024.0,
        pull_secs: num("secs")?,
        pulled: num("pulled")? as i64,
        db_mb: std::fs::metadata(&db).map_or(f64::NAN, |m| m.len() as f64 / 1e6),
    };
    let want = (commits * HIST_ROWS) as i64;
    if h.rows != want || h.pulled != commits as i64 {
        return Err(format!(
            "the pulling device has {} rows from {} commits, not {want} from {commits}",
            h.rows, h.pulled
        )
        .into());
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(h)
}

/// The separate process of part 2: a fresh device pulls the whole group.
fn pull_child() -> Res<()> {
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let db = PathBuf::from(var("PDB_SYNC_CHILD_DB")?);
    let lib = PathBuf::from(var("PDB_LIB")?);
    let (url, token, key) = (
        var("PDB_SYNC_CHILD_URL")?,
        var("PDB_SYNC_CHILD_TOKEN")?,
        var("PDB_SYNC_CHILD_KEY")?,
    );
    let target_seq: u64 = var("PDB_SYNC_CHILD_SEQ")?.parse()?;
    let t = Target {
        url: &url,
        group: "hist",
        token: &token,
        key: &key,
    };
    let conn = open_device(&db, &lib, HIST_DDL, &["blobs"], &t)?;
    let rss_before = status_kb("VmRSS:").ok_or("no VmRSS")?;
    let hwm_before = status_kb("VmHWM:").ok_or("no VmHWM")?;
    let started = Instant::now();
    let mut pulled = 0;
    loop {
        let sum = call_json(&conn, "SELECT pdb_sync()")?;
        pulled += sum["pulled"].as_i64().unwrap_or(0);
        let seq = sum["head"]["seq"].as_u64().unwrap_or(0);
        if seq >= target_seq {
            break;
        }
        if sum["pulled"].as_i64() == Some(0) {
            return Err(format!("pdb_sync() stopped at seq {seq} of {target_seq}").into());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let hwm_after = status_kb("VmHWM:").ok_or("no VmHWM")?;
    let rows = count(&conn, "SELECT count(*) FROM blobs")?;
    println!(
        "{}",
        serde_json::json!({
            "rss_before_kb": rss_before,
            "hwm_before_kb": hwm_before,
            "hwm_after_kb": hwm_after,
            "secs": secs,
            "pulled": pulled,
            "rows": rows,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Part 3: apply throughput

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Session,
    Integrate,
    Pull,
    SessionPerCommit,
}

const VARIANTS: [Variant; 4] = [
    Variant::Session,
    Variant::Integrate,
    Variant::Pull,
    Variant::SessionPerCommit,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Session => "session apply, txn per page",
            Variant::Integrate => "rebase::integrate (no HTTP)",
            Variant::Pull => "pdb_pull() over HTTP",
            Variant::SessionPerCommit => "session apply, txn per commit",
        }
    }
}

/// Where the integrate path's time goes, from a step-by-step replica of it.
#[derive(Default)]
struct Breakdown {
    verify: f64,
    keys: f64,
    read_before: f64,
    apply: f64,
    read_after: f64,
    state: f64,
    transaction: f64,
    total: f64,
    rows_hashed: usize,
}

struct ApplyRun {
    commits: usize,
    changes: usize,
    bytes: usize,
    pages: Vec<(usize, usize)>,
    push_secs: f64,
    rows: usize,
    times: Vec<Vec<f64>>,
    breakdown: Breakdown,
    untriggered: Breakdown,
}

/// The session extension's apply of every page's changesets, in order, to an untracked
/// copy of the initial rows: one transaction per page (as integrate), or per commit.
fn session_apply(conn: &Connection, pages: &[Vec<Pulled>], per_commit: bool) -> Res<()> {
    for page in pages {
        if !per_commit {
            conn.execute_batch("BEGIN")?;
        }
        for p in page {
            if per_commit {
                conn.execute_batch("BEGIN")?;
            }
            conn.apply_strm(&mut &p.changeset[..], None::<fn(&str) -> bool>, |_, _| {
                ConflictAction::SQLITE_CHANGESET_ABORT
            })?;
            if per_commit {
                conn.execute_batch("COMMIT")?;
            }
        }
        if !per_commit {
            conn.execute_batch("COMMIT")?;
        }
    }
    Ok(())
}

/// A copy of the template device (at the first commit) at `path`, opened as part 3's
/// devices are: WAL, `synchronous=NORMAL`, `libpdb` loaded.
fn device_copy(template: &Path, path: &Path, lib: &Path) -> Res<Connection> {
    remove_db(path);
    std::fs::copy(template, path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    load_pdb(&conn, lib)?;
    Ok(conn)
}

fn run_variant(
    v: Variant,
    s: &Settings,
    dir: &Path,
    template: &Path,
    init: &Initial,
    pages: &[Vec<Pulled>],
    commits: usize,
) -> Res<(f64, Vec<String>)> {
    let path = dir.join("variant.db");
    let conn = match v {
        Variant::Session | Variant::SessionPerCommit => {
            remove_db(&path);
            let conn = Connection::open(&path)?;
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
            conn.execute_batch(workload::DDL)?;
            init.load(&conn)?;
            conn
        }
        Variant::Integrate | Variant::Pull => device_copy(template, &path, &s.lib)?,
    };
    let t = Instant::now();
    match v {
        Variant::Session => session_apply(&conn, pages, false)?,
        Variant::SessionPerCommit => session_apply(&conn, pages, true)?,
        Variant::Integrate => {
            let cfg = config::load(&conn)?;
            let (mut pulled, mut conflicts) = (0, 0);
            for page in pages {
                let r = rebase::integrate(&conn, &cfg, page, None)?;
                pulled += r.pulled;
                conflicts += r.conflicts;
            }
            if pulled != commits || conflicts != 0 {
                return Err(format!(
                    "integrate applied {pulled} commits with {conflicts} conflicts, not {commits} with none"
                )
                .into());
            }
        }
        Variant::Pull => {
            let r = call_json(&conn, "SELECT pdb_pull()")?;
            if r["pulled"].as_u64() != Some(commits as u64) || r["conflicts"].as_u64() != Some(0) {
                return Err(format!("pdb_pull() answered {r}, not {commits} pulled").into());
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if matches!(v, Variant::Integrate | Variant::Pull) {
        let pending: Option<Vec<u8>> =
            conn.query_row("SELECT pdb_changeset()", [], |r| r.get(0))?;
        let queued = count(&conn, "SELECT count(*) FROM pdb_upload_queue")?;
        if pending.is_some() || queued != 0 {
            return Err(format!("{}: pulled changes were captured as local", v.label()).into());
        }
    }
    let d = workload::dump(&conn)?;
    drop(conn);
    remove_db(&path);
    Ok((secs, d))
}

/// Re-does integrate's per-commit work with the client's public pieces, one transaction
/// per page as integrate does, timing each step: verification, the changed rows' keys,
/// reading their images before, the apply, reading them after, the state vector.
///
/// With `triggers` false, libpdb's capture triggers are dropped from the copy first, to
/// show what they cost the apply (they are muted by the apply guard, but SQLite still
/// compiles them into every write statement and runs them per row to test the guard).
fn replica(
    s: &Settings,
    dir: &Path,
    template: &Path,
    pages: &[Vec<Pulled>],
    triggers: bool,
) -> Res<Breakdown> {
    let path = dir.join("breakdown.db");
    let conn = device_copy(template, &path, &s.lib)?;
    if !triggers {
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'pdb\\_%' ESCAPE '\\'")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if names.is_empty() {
            return Err("the device copy has no pdb_ triggers to drop".into());
        }
        for n in names {
            conn.execute_batch(&format!("DROP TRIGGER main.\"{n}\""))?;
        }
    }
    let cfg = config::load(&conn)?;
    let tables = pdb_client::capture::tracked(&conn)?;
    let by_name: BTreeMap<&str, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.info.name.as_str(), i))
        .collect();
    let key_cols: Vec<Vec<usize>> = tables.iter().map(|t| key_columns(&t.info)).collect();
    let mut rows: Vec<Rows<'_, Connection>> =
        tables.iter().map(|t| Rows::new(&conn, &t.info)).collect();
    let mut state = config::state(&conn)?;
    let mut trusted = config::head(&conn, &cfg.group)?;
    let mut b = Breakdown::default();
    let all = Instant::now();
    let lap = |t: &mut Instant| {
        let now = Instant::now();
        let d = now.duration_since(*t).as_secs_f64();
        *t = now;
        d
    };
    for page in pages {
        let mut t = Instant::now();
        trusted = pdb_client::history::verify_chain(
            &cfg.witness_key,
            &cfg.group,
            trusted,
            page.iter().map(|p| (&p.cert, p.changeset.as_slice())),
        )?;
        b.verify += lap(&mut t);
        conn.execute_batch(
            "BEGIN IMMEDIATE; INSERT OR REPLACE INTO pdb_apply_guard(active) VALUES (1)",
        )?;
        b.transaction += lap(&mut t);
        for p in page {
            let mut touched: BTreeMap<(usize, Vec<u8>), Vec<PValue>> = BTreeMap::new();
            for (header, changes) in pdb_client::changeset::parse(&p.changeset)? {
                let ti = *by_name
                    .get(header.name)
                    .ok_or_else(|| format!("untracked table {}", header.name))?;
                for c in &changes {
                    let key: Option<Vec<PValue>> = key_cols[ti]
                        .iter()
                        .map(|&i| decode_field(c.key_record()[i]).map(PValueRef::to_owned))
                        .collect();
                    let key = key.ok_or("a change without its key")?;
                    touched.insert((ti, key_bytes(&key)), key);
                }
            }
            b.keys += lap(&mut t);
            // As integrate does: each image keyed by its key as stored, then hashed.
            type Images = BTreeMap<(usize, Vec<u8>), Row>;
            let read = |rows: &mut Vec<Rows<'_, Connection>>| -> Res<Images> {
                let mut out = Images::new();
                for ((ti, _), key) in &touched {
                    if let Some(row) = rows[*ti].get(key)? {
                        let stored = key_bytes(&key_of(&tables[*ti].info, &row));
                        out.insert((*ti, stored), row);
                    }
                }
                Ok(out)
            };
            let before = read(&mut rows)?;
            b.read_before += lap(&mut t);
            pdb_client::apply::apply(&conn, &p.changeset, OnConflict::Abort)?;
            b.apply += lap(&mut t);
            let after = read(&mut rows)?;
            b.read_after += lap(&mut t);
            for ((ti, _), row) in &before {
                let vals: Vec<PValueRef<'_>> = row.iter().map(PValue::as_ref).collect();
                state.remove_row(&tables[*ti].info.name, &vals);
            }
            for ((ti, _), row) in &after {
                let vals: Vec<PValueRef<'_>> = row.iter().map(PValue::as_ref).collect();
                state.add_row(&tables[*ti].info.name, &vals);
            }
            b.rows_hashed += before.len() + after.len();
            if state.digest() != p.cert.state {
                return Err(format!(
                    "breakdown: the state after commit {} differs from its certificate",
                    p.cert.seq
                )
                .into());
            }
            b.state += lap(&mut t);
        }
        conn.execute_batch("DELETE FROM pdb_apply_guard; COMMIT")?;
        b.transaction += lap(&mut t);
    }
    b.total = all.elapsed().as_secs_f64();
    drop(rows);
    drop(conn);
    remove_db(&path);
    Ok(b)
}

fn apply_bench(s: &Settings) -> Res<ApplyRun> {
    let dir = s
        .dir
        .join(format!("pdb-bench-sync-{}-apply", std::process::id()));
    let w = scratch_witness(&s.bin, &dir.join("witness"), &[])?;
    let schema = create_group(&w, "apply", workload::DDL)?;
    let mut rng = Rng(workload::SEED);
    let init = Initial::generate(&mut rng);
    let (changesets, source) = workload::record(&init, &mut rng, s.apply_commits, s.apply_changes)?;
    let mut pusher = Pusher::new(&w, "apply", schema)?;
    pusher.push(&workload::initial_changeset(&init)?)?;

    // The template device: everything up to the initial rows, pulled as a device would.
    let template = dir.join("template.db");
    let token = w.try_token("device", "apply", "read", 3600)?;
    let key = w.key_hex();
    let target = Target {
        url: &w.url,
        group: "apply",
        token: &token,
        key: &key,
    };
    {
        let t = open_device(
            &template,
            &s.lib,
            workload::DDL,
            &["notes", "pairs"],
            &target,
        )?;
        let r = call_json(&t, "SELECT pdb_pull()")?;
        if r["pulled"] != 1 {
            return Err(format!("the template's first pull answered {r}").into());
        }
        t.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }

    let t = Instant::now();
    for cs in &changesets {
        pusher.push(cs)?;
    }
    let push_secs = t.elapsed().as_secs_f64();

    // The pages a device is served after the first commit, in memory.
    let mut pages: Vec<Vec<Pulled>> = Vec::new();
    let mut after = 1;
    while after < pusher.base.0 {
        let page = pusher
            .remote
            .pull(after, PAGE, Duration::ZERO)?
            .map_err(|r| format!("pull: {r}"))?;
        let Some(last) = page.commits.last() else {
            return Err("the witness served an empty page before its head".into());
        };
        after = last.cert.seq;
        pages.push(page.commits);
    }
    let pulled: usize = pages.iter().map(Vec::len).sum();
    if pulled != changesets.len() {
        return Err(format!("pulled {pulled} commits, pushed {}", changesets.len()).into());
    }

    let mut times: Vec<Vec<f64>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for rep in 0..s.reps {
        for k in 0..VARIANTS.len() {
            let vi = (rep + k) % VARIANTS.len();
            let v = VARIANTS[vi];
            let (secs, d) = run_variant(v, s, &dir, &template, &init, &pages, pulled)?;
            if d != source {
                return Err(format!(
                    "rep {}: {} left contents that differ from the source",
                    rep + 1,
                    v.label()
                )
                .into());
            }
            times[vi].push(secs);
        }
    }
    let breakdown = replica(s, &dir, &template, &pages, true)?;
    let untriggered = replica(s, &dir, &template, &pages, false)?;
    let run = ApplyRun {
        commits: pulled,
        changes: pulled * s.apply_changes,
        bytes: changesets.iter().map(Vec::len).sum(),
        pages: pages
            .iter()
            .map(|p| (p.len(), p.iter().map(|c| c.changeset.len()).sum()))
            .collect(),
        push_secs,
        rows: source.len(),
        times,
        breakdown,
        untriggered,
    };
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(run)
}

// ---------------------------------------------------------------------------------
// Report

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--pull-child") {
        run(pull_child);
        return;
    }
    run(bench);
}

fn bench() -> Res<()> {
    let s = settings()?;
    let started = Instant::now();
    let pdb_version: String = {
        let conn = Connection::open_in_memory()?;
        load_pdb(&conn, &s.lib)?;
        conn.query_row("SELECT pdb_version()", [], |r| r.get(0))?
    };
    print_machine();
    println!(
        "sqlite {} (rusqlite bundled); libpdb {} ({}); witness {} on 127.0.0.1, \
         fresh data directory per part in {} ({})",
        rusqlite::version(),
        pdb_version,
        s.lib.display(),
        s.bin.display(),
        s.dir.display(),
        fs_type(&s.dir)
    );
    let mut ok = true;

    if s.parts.contains('1') {
        let l = latency(&s)?;
        println!();
        println!(
            "1. latency: {} one-row commits (+{} warm-up) from device A to device B, each alone \
             ({} ms after A has its own commit back); workers on both, pdb_sync_start('{}'); \
             B polled every 0.5 ms on its own connection; WAL, synchronous=FULL",
            l.total.len(),
            s.latency_warmup,
            s.latency_gap.as_millis(),
            WORKER_OPTIONS
        );
        println!(
            "{:<40} {:>8} {:>8} {:>8}   target",
            "", "p50 ms", "p99 ms", "max ms"
        );
        let p50 = percentile(&l.total, 50.0);
        let row = |label: &str, v: &[f64], target: &str| {
            println!(
                "{label:<40} {:>8.2} {:>8.2} {:>8.2}   {target}",
                percentile(v, 50.0),
                percentile(v, 99.0),
                v.last().copied().unwrap_or(f64::NAN)
            );
        };
        let lat_ok = p50 <= MAX_LATENCY_P50_MS;
        ok &= lat_ok;
        row(
            "pdb_commit() on A -> row visible on B",
            &l.total,
            &format!("p50 <= {MAX_LATENCY_P50_MS:.0} {}", verdict(lat_ok)),
        );
        row("  pdb_commit() call on A", &l.commit, "");
        row("  until A's worker has the certificate", &l.pushed, "");
        row("  then until B has the row", &l.rest, "");
    }

    if s.parts.contains('2') {
        let h = history(&s)?;
        let growth = h.hwm_after_mb - h.rss_before_mb;
        let mem_ok = growth <= MAX_PULL_GROWTH_MB;
        ok &= mem_ok;
        println!();
        println!(
            "2. pull of a large history: {} commits x {:.1} KB ({} rows with random BLOBs each), \
             {:.1} MB of changesets, committed over HTTP in {:.1} s; a fresh device in a \
             separate process runs pdb_sync() until it has the head; WAL, synchronous=FULL",
            h.commits,
            h.bytes as f64 / h.commits as f64 / 1e3,
            HIST_ROWS,
            h.bytes as f64 / 1e6,
            h.fill_secs
        );
        println!(
            "peak RSS growth {growth:.1} MB (VmHWM {:.1} MB after, VmRSS {:.1} MB before; VmHWM \
             before {:.1} MB)   target <= {MAX_PULL_GROWTH_MB:.0} MB {}",
            h.hwm_after_mb,
            h.rss_before_mb,
            h.hwm_before_mb,
            verdict(mem_ok)
        );
        println!(
            "pulled {} commits in {:.2} s ({:.1} MB/s of changesets); {} rows, database {:.1} MB",
            h.pulled,
            h.pull_secs,
            h.bytes as f64 / 1e6 / h.pull_secs,
            h.rows,
            h.db_mb
        );
    }

    if s.parts.contains('3') {
        let a = apply_bench(&s)?;
        println!();
        let sizes: Vec<String> = a
            .pages
            .iter()
            .map(|(n, b)| format!("{n}/{:.1}", *b as f64 / 1e6))
            .collect();
        println!(
            "3. apply: {} pulled commits x {} changes ({:.1} MB of changesets; the apply \
             benchmark's workload, committed over HTTP in {:.1} s) onto a device at the first \
             commit (the initial {} + {} rows); {} pages as the witness serves them \
             (commits/MB: {}); WAL, synchronous=NORMAL; medians of {} reps, order rotated",
            a.commits,
            s.apply_changes,
            a.bytes as f64 / 1e6,
            a.push_secs,
            workload::INITIAL_NOTES,
            workload::INITIAL_PAIRS,
            a.pages.len(),
            sizes.join(" "),
            s.reps
        );
        let med: Vec<f64> = a.times.iter().map(|t| median(t.clone())).collect();
        let session = med[0];
        println!(
            "{:<32} {:>9} {:>11} {:>10} {:>10}   target",
            "apply", "time (s)", "changes/s", "commits/s", "x session"
        );
        for (vi, v) in VARIANTS.iter().enumerate() {
            let t = med[vi];
            let ratio = t / session;
            let target = match v {
                Variant::Integrate => {
                    let good = ratio <= MAX_INTEGRATE_RATIO;
                    ok &= good;
                    format!("<= {MAX_INTEGRATE_RATIO:.2} {}", verdict(good))
                }
                Variant::Pull => "(report)".to_string(),
                Variant::Session => "(reference)".to_string(),
                Variant::SessionPerCommit => "(for the apply benchmark)".to_string(),
            };
            println!(
                "{:<32} {t:>9.3} {:>11.0} {:>10.0} {ratio:>9.2}x   {target}",
                v.label(),
                a.changes as f64 / t,
                a.commits as f64 / t
            );
        }
        let b = &a.breakdown;
        println!(
            "where integrate's time goes (a step-by-step replica of it, one pass; {} row \
             images hashed into the state vector):",
            b.rows_hashed
        );
        let steps = [
            ("verify chain (BLAKE3 + Ed25519)", b.verify),
            ("changed rows' keys (parse)", b.keys),
            ("row images before (Rows::get)", b.read_before),
            ("apply (pdb_client::apply)", b.apply),
            ("row images after (Rows::get)", b.read_after),
            ("state vector (2 KiB XOF/row) + digest", b.state),
            ("BEGIN/COMMIT, guard", b.transaction),
        ];
        for (label, t) in steps {
            println!(
                "  {label:<40} {t:>7.3} s {:>5.1}%  ({:.0} us/commit)",
                100.0 * t / b.total,
                t * 1e6 / a.commits as f64
            );
        }
        println!(
            "  {:<40} {:>7.3} s (integrate itself: {:.3} s; session: {:.3} s)",
            "total", b.total, med[1], session
        );
        let u = &a.untriggered;
        println!(
            "  the same replica with libpdb's capture triggers dropped: apply {:.3} s, total {:.3} s",
            u.apply, u.total
        );
        println!(
            "check: ok (every rep: the four variants' notes and pairs identical to the source, \
             {} rows; no pulled change captured as local; integrate and pdb_pull applied every \
             commit without conflicts; the replica's state digest matched every certificate)",
            a.rows
        );
    }

    println!();
    println!(
        "total {:.1} s, load average {} at end; targets {}",
        started.elapsed().as_secs_f64(),
        loadavg(),
        if ok { "all met" } else { "not all met" }
    );
    Ok(())
}
