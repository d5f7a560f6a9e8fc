//! Snapshot benchmark (issue deliverable): how long a new device takes to be ready when
//! it starts from the witness's snapshot, against replaying the whole history and
//! against the physical floor of the same bytes, and how much memory the snapshot path
//! needs, against a real `pdb-witness` on loopback.
//!
//! What is measured, and why:
//!
//! - **The group.** A witness runs with policy snapshots off (`--snapshot-commits 0
//!   --snapshot-bytes 0`), so the only snapshot is the one asked for below. Group
//!   `bench` holds one table `items(id, name, body, n, x)` with a secondary index on `n`,
//!   ~250 bytes a row of deterministic pseudo-random text (1,000,000 rows: ~250 MB). A
//!   writer device (release `libpdb`, WAL, `synchronous=NORMAL`; `pdb_open` before any
//!   row, so it starts from nothing) inserts the rows a commit at a time, one
//!   transaction and `pdb_commit()` each, and runs `pdb_sync()` every few commits: the
//!   group's history is what real devices would have sent. Its time is reported, not
//!   judged.
//! - **(R) replay.** Before any snapshot exists, a fresh device in a separate process
//!   (this program re-run with `--child replay`, so it is cold and its memory is its
//!   own) takes a bare database (WAL, SQLite's default `synchronous=FULL`, no table),
//!   calls `pdb_open` (which finds no snapshot) and `pdb_sync()` until its head is the
//!   group's: `pdb_sync()` creates the tables from the group's DDL and replays every
//!   commit. Time from just before `pdb_open` until that `pdb_sync()` returns at the
//!   group's head.
//! - **The snapshot.** `POST /v1/groups/bench/snapshots` (admin token) at the head;
//!   its time is reported, not judged.
//! - **(S) snapshot bootstrap.** The same kind of fresh device (`--child snapshot`):
//!   `pdb_open` downloads the image, checks its manifest, certificate, BLAKE3 and state
//!   digest, and installs it in one transaction; then `pdb_sync()` (which finds nothing
//!   after the snapshot's head). Same clock as R. Its peak RSS growth is VmHWM when
//!   ready minus VmRSS just before `pdb_open` (`/proc/self/status`). The device must
//!   report, right after `pdb_open`, the snapshot's seq as its head and root.
//! - **(P) physical reference.** Copying the witness's object file
//!   (`DATA/objects/<blake3>`) to a new file while BLAKE3-hashing it (1 MiB reads,
//!   `blake3::Hasher`), then `fsync` of the copy: the least any bootstrap must do to
//!   have a verified durable copy of the image. The reference is the time **with** the
//!   fsync (the device's install is durable too); the time without it is shown as well.
//!
//! Every device ends checked outside the clock: all rows present, and `pdb_verify()`
//! answers `"state": "ok"`. After the measured runs, one more snapshot bootstrap runs
//! with a second connection polling `pdb_status()` every 2 ms, to show where the time
//! goes by the progress phases the client reports (manifest and certificate, download
//! with BLAKE3, state digest of the image, install transaction); it is not in the
//! medians, and the polling slows it down. The install's SQLite work is also redone
//! step by step in this process on a fresh database (state digest, `INSERT .. SELECT`,
//! `COMMIT`, WAL checkpoint), each step timed against the physical reference.
//!
//! Targets: snapshot bootstrap at most 2x the physical reference and at least 20x
//! faster than replay; peak RSS growth of the bootstrapping device at most 64 MB.
//!
//! Run: `cargo build --release -p personaldb && cargo build --release -p personaldb-witness &&
//! cargo run --release -p pdb-bench --bin snapshot` (two builds, not one `-p personaldb -p personaldb-witness`:
//! built together, libpdb would take pdb-client's `rusqlite` feature from the witness).
//! Environment: `PDB_SNAP_ROWS` (default 1000000),
//! `PDB_SNAP_COMMIT_ROWS` (rows per commit, default 10000), `PDB_SNAP_SYNC_EVERY`
//! (writer commits between `pdb_sync()` calls, default 5), `PDB_SNAP_REPS` (S and P
//! repetitions, medians, default 3), `PDB_SNAP_REPLAY_REPS` (default 1),
//! `PDB_SNAP_PHASES` (the extra phase-timed run, default 1; 0 skips it),
//! `PDB_SNAP_CHILD_LIMIT_S` (longest a device process may run, default 900),
//! `PDB_BENCH_DIR` (temporary files, default the system temp directory), `PDB_LIB`,
//! `PDB_WITNESS_BIN` (default the release builds).

use pdb_bench::workload::Rng;
use pdb_bench::{
    admin_request, create_group, env_num, load_pdb, loadavg, median, prebuilt_artifact,
    print_machine, remove_db, run, scratch_witness, verdict, Res,
};
use pdb_testkit::WitnessProc;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdb_client::cert::hex;
use rusqlite::{params, Connection};
use serde_json::Value;

/// Target: snapshot bootstrap at most this multiple of the physical reference.
const MAX_PHYSICAL_RATIO: f64 = 2.0;
/// Target: replay at least this multiple of the snapshot bootstrap.
const MIN_REPLAY_RATIO: f64 = 20.0;
/// Target: peak RSS growth of the bootstrapping device.
const MAX_GROWTH_MB: f64 = 64.0;
/// The group's name.
const GROUP: &str = "bench";
/// The group's schema: one rowid table and a secondary index.
const DDL: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, body TEXT, \
                   n INTEGER, x REAL);\nCREATE INDEX items_n ON items(n);";
/// Seed of the rows, so every run writes the same group.
const SEED: u64 = 0x5044_4253_4e41_5053;
/// The witness's `serve` settings: snapshots only when asked (the benchmark times its
/// own), and a largest request body of 64 MiB (a commit of 10,000 rows is ~2.5 MB).
const SERVE_ARGS: [&str; 6] = [
    "--snapshot-commits",
    "0",
    "--snapshot-bytes",
    "0",
    "--max-body",
    "67108864",
];
/// The physical reference's read size.
const CHUNK: usize = 1 << 20;
/// How often the phase-timed run polls `pdb_status()`.
const PHASE_POLL: Duration = Duration::from_millis(2);

struct Settings {
    lib: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    rows: usize,
    commit_rows: usize,
    sync_every: usize,
    reps: usize,
    replay_reps: usize,
    phases: bool,
    child_limit: Duration,
}

fn settings() -> Res<Settings> {
    let s = Settings {
        lib: prebuilt_artifact("PDB_LIB", "personaldb", "libpdb.so")?,
        bin: prebuilt_artifact("PDB_WITNESS_BIN", "personaldb-witness", "pdb-witness")?,
        dir: std::env::var_os("PDB_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        rows: env_num("PDB_SNAP_ROWS", 1_000_000)?,
        commit_rows: env_num("PDB_SNAP_COMMIT_ROWS", 10_000)?,
        sync_every: env_num("PDB_SNAP_SYNC_EVERY", 5)?,
        reps: env_num("PDB_SNAP_REPS", 3)?,
        replay_reps: env_num("PDB_SNAP_REPLAY_REPS", 1)?,
        phases: env_num("PDB_SNAP_PHASES", 1u8)? != 0,
        child_limit: Duration::from_secs(env_num("PDB_SNAP_CHILD_LIMIT_S", 900)?),
    };
    if s.rows == 0 || s.commit_rows == 0 || s.sync_every == 0 || s.reps == 0 || s.replay_reps == 0 {
        return Err("PDB_SNAP_* sizes and repetitions must be > 0".into());
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------
// The witness, devices and /proc

/// `POST /v1/groups/bench/snapshots`: the manifest of a snapshot at the head.
fn snapshot(w: &WitnessProc) -> Res<Value> {
    let (status, body) = admin_request(
        w,
        reqwest::Method::POST,
        &format!("/v1/groups/{GROUP}/snapshots"),
        None,
    )?;
    if status != 201 {
        return Err(format!("POST snapshot: HTTP {status}: {body}").into());
    }
    Ok(serde_json::from_str(&body)?)
}

/// A JSON-returning SQL function call, parsed.
fn call_json(conn: &Connection, sql: &str) -> Res<Value> {
    let s: String = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(serde_json::from_str(&s)?)
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

fn file_mb(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6)
}

/// Removes a device database, its WAL and any snapshot download left beside it.
fn remove_device(db: &Path) {
    remove_db(db);
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return;
    };
    let prefix = format!("{}-pdb-", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The group

struct Fill {
    commits: usize,
    secs: f64,
    history_mb: f64,
    replica_mb: f64,
}

/// The writer device: inserts the rows a commit at a time and syncs every few commits.
fn fill(s: &Settings, w: &WitnessProc, dir: &Path) -> Res<Fill> {
    let db = dir.join("writer.db");
    remove_device(&db);
    let token = w.try_token("writer", GROUP, "write", 7200)?;
    let conn = Connection::open(&db)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not wal").into());
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    load_pdb(&conn, &s.lib)?;
    conn.execute_batch(DDL)?;
    conn.query_row("SELECT pdb_track('items')", [], |_| Ok(()))?;
    conn.query_row(
        "SELECT pdb_open(?1, ?2, ?3, ?4)",
        params![w.url, GROUP, token, w.key_hex()],
        |_| Ok(()),
    )?;
    let mut rng = Rng(SEED);
    let commits = s.rows.div_ceil(s.commit_rows);
    let t = Instant::now();
    let mut id = 0usize;
    for c in 0..commits {
        conn.execute_batch("BEGIN")?;
        {
            let mut ins = conn.prepare_cached(
                "INSERT INTO items(id, name, body, n, x) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            while id < s.rows && id < (c + 1) * s.commit_rows {
                id += 1;
                let name = rng.text(12, 9);
                let body = rng.text(160, 61);
                let n = rng.below(1_000_000) as i64;
                let x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 1000.0;
                ins.execute(params![id as i64, name, body, n, x])?;
            }
        }
        conn.execute_batch("COMMIT")?;
        let local: Option<i64> = conn.query_row("SELECT pdb_commit()", [], |r| r.get(0))?;
        if local.is_none() {
            return Err(format!("pdb_commit() found nothing to commit at commit {}", c + 1).into());
        }
        if (c + 1) % s.sync_every == 0 {
            call_json(&conn, "SELECT pdb_sync()")?;
        }
    }
    // Until everything is certified and pulled back.
    for _ in 0..100 {
        let sum = call_json(&conn, "SELECT pdb_sync()")?;
        let st = call_json(&conn, "SELECT pdb_status()")?;
        if st["unsent"] == 0 && sum["head"]["seq"].as_u64() == Some(commits as u64) {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let st = call_json(&conn, "SELECT pdb_status()")?;
    if st["head"]["seq"].as_u64() != Some(commits as u64) || st["unsent"] != 0 {
        return Err(format!("the writer did not get all {commits} commits certified: {st}").into());
    }
    drop(conn);
    remove_device(&db);
    Ok(Fill {
        commits,
        secs,
        history_mb: file_mb(&w.data.join("witness.db")) + file_mb(&w.data.join("witness.db-wal")),
        replica_mb: file_mb(&w.data.join("groups").join(format!("{GROUP}.db"))),
    })
}

// ---------------------------------------------------------------------------------
// The devices: separate processes

/// What a device process reports.
struct Device {
    secs: f64,
    open_secs: f64,
    growth_mb: f64,
    rss_before_mb: f64,
    hwm_after_mb: f64,
    db_mb: f64,
    /// The WAL file beside the database when it was ready (still open).
    wal_mb: f64,
    /// Phase name and seconds since just before `pdb_open`, when first seen.
    phases: Vec<(String, f64)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replay,
    Snapshot,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Replay => "replay",
            Mode::Snapshot => "snapshot",
        }
    }
}

/// Everything a device process needs to know.
struct Job<'a> {
    url: &'a str,
    token: &'a str,
    key: &'a str,
    head_seq: u64,
    snapshot_seq: u64,
    rows: usize,
}

fn device(s: &Settings, job: &Job<'_>, mode: Mode, db: &Path, phases: bool) -> Res<Device> {
    remove_device(db);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--child", mode.arg()])
        .env("PDB_SNAP_CHILD_DB", db)
        .env("PDB_SNAP_CHILD_URL", job.url)
        .env("PDB_SNAP_CHILD_TOKEN", job.token)
        .env("PDB_SNAP_CHILD_KEY", job.key)
        .env("PDB_SNAP_CHILD_SEQ", job.head_seq.to_string())
        .env("PDB_SNAP_CHILD_SNAPSHOT_SEQ", job.snapshot_seq.to_string())
        .env("PDB_SNAP_CHILD_ROWS", job.rows.to_string())
        .env("PDB_SNAP_CHILD_PHASES", if phases { "1" } else { "0" })
        .env("PDB_LIB", &s.lib)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if started.elapsed() > s.child_limit {
            let _ = child.kill();
            let _ = child.wait();
            remove_device(db);
            return Err(format!(
                "the {} device did not finish within {:?}",
                mode.arg(),
                s.child_limit
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut text)?;
    let db_mb = file_mb(db);
    remove_device(db);
    if !status.success() {
        return Err(format!("the {} device failed ({status}): {text}", mode.arg()).into());
    }
    let r: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("the {} device printed {text:?}: {e}", mode.arg()))?;
    let num = |k: &str| -> Res<f64> {
        r.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("the device reported no {k}: {text}").into())
    };
    let rss_before_mb = num("rss_before_kb")? / 1024.0;
    let hwm_after_mb = num("hwm_after_kb")? / 1024.0;
    let phases = r["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Device {
        secs: num("secs")?,
        open_secs: num("open_secs")?,
        growth_mb: hwm_after_mb - rss_before_mb,
        rss_before_mb,
        hwm_after_mb,
        db_mb,
        wal_mb: num("wal_mb")?,
        phases,
    })
}

/// A phase of the client's `pdb_status().progress`, as a short name.
fn phase_of(status: &Value) -> String {
    match status["progress"]["phase"].as_str() {
        Some(p) => p.to_string(),
        None => "-".into(),
    }
}

/// The device process: a bare database, `pdb_open`, `pdb_sync()` until the group's head.
fn child(mode: &str) -> Res<()> {
    let mode = match mode {
        "replay" => Mode::Replay,
        "snapshot" => Mode::Snapshot,
        other => return Err(format!("unknown child mode {other:?}").into()),
    };
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let db = PathBuf::from(var("PDB_SNAP_CHILD_DB")?);
    let lib = PathBuf::from(var("PDB_LIB")?);
    let (url, token, key) = (
        var("PDB_SNAP_CHILD_URL")?,
        var("PDB_SNAP_CHILD_TOKEN")?,
        var("PDB_SNAP_CHILD_KEY")?,
    );
    let head_seq: u64 = var("PDB_SNAP_CHILD_SEQ")?.parse()?;
    let snapshot_seq: u64 = var("PDB_SNAP_CHILD_SNAPSHOT_SEQ")?.parse()?;
    let rows: i64 = var("PDB_SNAP_CHILD_ROWS")?.parse()?;
    let polled = var("PDB_SNAP_CHILD_PHASES")? == "1";

    let conn = Connection::open(&db)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let journal: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {journal}, not wal").into());
    }
    load_pdb(&conn, &lib)?;

    // The phase-timed run: a second connection polls the live status.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = if polled {
        let stop = stop.clone();
        let watcher = Connection::open(&db)?;
        load_pdb(&watcher, &lib)?;
        Some(std::thread::spawn(move || -> Vec<(String, Instant)> {
            let mut seen: Vec<(String, Instant)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(st) = call_json(&watcher, "SELECT pdb_status()") {
                    let p = phase_of(&st);
                    if seen.last().map_or(true, |l| l.0 != p) {
                        seen.push((p, Instant::now()));
                    }
                }
                std::thread::sleep(PHASE_POLL);
            }
            seen
        }))
    } else {
        None
    };

    let rss_before = status_kb("VmRSS:").ok_or("no VmRSS")?;
    let hwm_before = status_kb("VmHWM:").ok_or("no VmHWM")?;
    let started = Instant::now();
    conn.query_row(
        "SELECT pdb_open(?1, ?2, ?3, ?4)",
        params![url, GROUP, token, key],
        |_| Ok(()),
    )?;
    let open_secs = started.elapsed().as_secs_f64();
    let after_open = if mode == Mode::Snapshot {
        Some(call_json(&conn, "SELECT pdb_status()")?)
    } else {
        None
    };
    let mut syncs = Vec::new();
    loop {
        let sum = call_json(&conn, "SELECT pdb_sync()")?;
        let seq = sum["head"]["seq"].as_u64().unwrap_or(0);
        let pulled = sum["pulled"].as_i64().unwrap_or(0);
        syncs.push(sum);
        if seq >= head_seq {
            break;
        }
        if pulled == 0 {
            return Err(format!("pdb_sync() stopped at seq {seq} of {head_seq}: {syncs:?}").into());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let hwm_after = status_kb("VmHWM:").ok_or("no VmHWM")?;
    let wal_mb = file_mb(&PathBuf::from(format!("{}-wal", db.display())));
    stop.store(true, Ordering::Relaxed);
    let seen = match poller {
        Some(p) => p.join().map_err(|_| "the status poller panicked")?,
        None => Vec::new(),
    };

    // Checks, outside the clock.
    if let Some(st) = &after_open {
        if st["head"]["seq"].as_u64() != Some(snapshot_seq) || !st["last_error"].is_null() {
            return Err(format!(
                "after pdb_open the device is not at the snapshot's seq {snapshot_seq}: {st}"
            )
            .into());
        }
        let root: Option<i64> = conn
            .query_row(
                "SELECT value FROM pdb_local WHERE key = 'root_seq'",
                [],
                |r| r.get(0),
            )
            .ok();
        if root != Some(snapshot_seq as i64) {
            return Err(format!("root_seq is {root:?}, not the snapshot's {snapshot_seq}").into());
        }
        if snapshot_seq == head_seq && syncs.iter().any(|s| s["pulled"] != 0) {
            return Err(format!("pdb_sync() after the bootstrap pulled commits: {syncs:?}").into());
        }
    } else if syncs.iter().any(|s| !s["bootstrapped"].is_null()) {
        return Err(format!("the replaying device bootstrapped: {syncs:?}").into());
    }
    let prefix = format!(
        "{}-pdb-",
        db.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            return Err(format!(
                "the download {} is left beside the database",
                e.path().display()
            )
            .into());
        }
    }
    let have: i64 = conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
    if have != rows {
        return Err(format!("the device has {have} rows, not {rows}").into());
    }
    let v = call_json(&conn, "SELECT pdb_verify()")?;
    if v["ok"] != true || v["state"] != "ok" || v["head"]["seq"].as_u64() != Some(head_seq) {
        return Err(format!("pdb_verify() answered {v}").into());
    }
    // Phase names and seconds since just before pdb_open, in order.
    let since = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
    let mut phases: Vec<Value> = seen
        .iter()
        .map(|(p, t)| serde_json::json!([p, since(*t)]))
        .collect();
    if polled {
        phases.push(serde_json::json!(["pdb_open returned", open_secs]));
        phases.push(serde_json::json!(["ready", secs]));
        phases.sort_by(|a, b| {
            f64::total_cmp(&a[1].as_f64().unwrap_or(0.0), &b[1].as_f64().unwrap_or(0.0))
        });
    }
    println!(
        "{}",
        serde_json::json!({
            "rss_before_kb": rss_before,
            "hwm_before_kb": hwm_before,
            "hwm_after_kb": hwm_after,
            "secs": secs,
            "open_secs": open_secs,
            "wal_mb": wal_mb,
            "phases": phases,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// The physical reference

struct Physical {
    /// Copy and hash, then with the fsync of the copy.
    copy_secs: f64,
    synced_secs: f64,
}

/// Copies `src` to `dst` while hashing it with BLAKE3, then fsyncs the copy.
fn physical(src: &Path, dst: &Path, want: &str) -> Res<Physical> {
    let _ = std::fs::remove_file(dst);
    let t = Instant::now();
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::File::create(dst)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    let copy_secs = t.elapsed().as_secs_f64();
    to.sync_all()?;
    let synced_secs = t.elapsed().as_secs_f64();
    let got = hasher.finalize().to_hex().to_string();
    drop(to);
    let _ = std::fs::remove_file(dst);
    if got != want {
        return Err(format!("the object hashes to {got}, not its name {want}").into());
    }
    Ok(Physical {
        copy_secs,
        synced_secs,
    })
}

/// The install's SQLite work redone step by step on a fresh database, to show what
/// each costs: what the client does after the download, without its bookkeeping.
struct InstallReplica {
    state: f64,
    insert: f64,
    commit: f64,
    checkpoint: f64,
    total: f64,
}

/// Attaches the object read-only to a fresh device-like database (WAL,
/// `synchronous=FULL`, the group's DDL, automatic checkpoints off so the checkpoint is
/// timed on its own) and does what the install does: the image's state digest
/// (`pdb_client::history::state_in`, checked against the manifest), then one
/// transaction of `INSERT INTO main.items SELECT * FROM image.items` (SQLite's transfer
/// optimisation), its `COMMIT`, and the WAL checkpoint SQLite would run after it.
fn install_replica(object: &Path, db: &Path, want_state: &str) -> Res<InstallReplica> {
    remove_db(db);
    let conn = Connection::open(db)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, not wal").into());
    }
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
    conn.execute_batch(DDL)?;
    let all = Instant::now();
    conn.execute(
        "ATTACH ?1 AS image",
        [format!("file:{}?mode=ro", object.display())],
    )?;
    let mut t = Instant::now();
    let mut lap = || {
        let now = Instant::now();
        let d = now.duration_since(t).as_secs_f64();
        t = now;
        d
    };
    let info = pdb_client::schema::table_info_in(&conn, "image", "items")?;
    let digest = pdb_client::history::state_in(&conn, "image", &[info])?.digest();
    if hex(&digest) != want_state {
        return Err(format!(
            "the image's state digest is {}, not the manifest's {want_state}",
            hex(&digest)
        )
        .into());
    }
    let state = lap();
    conn.execute_batch("BEGIN; INSERT INTO main.items SELECT * FROM image.items")?;
    let insert = lap();
    conn.execute_batch("COMMIT")?;
    let commit = lap();
    let (busy, _, _): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let checkpoint = lap();
    let total = all.elapsed().as_secs_f64();
    if busy != 0 {
        return Err("the replica's checkpoint was blocked".into());
    }
    drop(conn);
    remove_db(db);
    Ok(InstallReplica {
        state,
        insert,
        commit,
        checkpoint,
        total,
    })
}

// ---------------------------------------------------------------------------------
// Report

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--child") {
        let mode = args.next().unwrap_or_default();
        run(|| child(&mode));
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
        "sqlite {} (rusqlite bundled); libpdb {} ({}); witness {} on 127.0.0.1 \
         ({}); files in {} ({})",
        rusqlite::version(),
        pdb_version,
        s.lib.display(),
        s.bin.display(),
        SERVE_ARGS.join(" "),
        s.dir.display(),
        fs_type(&s.dir)
    );
    let dir = s
        .dir
        .join(format!("pdb-bench-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&s, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let ok = result?;
    println!();
    println!(
        "total {:.1} s, load average {} at end; targets {}",
        started.elapsed().as_secs_f64(),
        loadavg(),
        if ok { "all met" } else { "not all met" }
    );
    Ok(())
}

fn measure(s: &Settings, dir: &Path) -> Res<bool> {
    let w = scratch_witness(&s.bin, &dir.join("witness"), &SERVE_ARGS)?;
    create_group(&w, GROUP, DDL)?;
    let f = fill(s, &w, dir)?;
    println!();
    println!(
        "group {GROUP}: {} rows of items(id, name, body, n, x) + index on n, {} commits of {} \
         rows, written by a device (pdb_commit per commit, pdb_sync every {} commits) in {:.1} s \
         ({:.0} rows/s, not judged); witness store {:.1} MB, replica {:.1} MB; load average {}",
        s.rows,
        f.commits,
        s.commit_rows,
        s.sync_every,
        f.secs,
        s.rows as f64 / f.secs,
        f.history_mb,
        f.replica_mb,
        loadavg()
    );
    let token = w.try_token("device", GROUP, "read", 7200)?;
    let key = w.key_hex();
    let mut job = Job {
        url: &w.url,
        token: &token,
        key: &key,
        head_seq: f.commits as u64,
        snapshot_seq: 0,
        rows: s.rows,
    };

    // (R) before any snapshot exists.
    let mut replays = Vec::new();
    for i in 0..s.replay_reps {
        let d = device(
            s,
            &job,
            Mode::Replay,
            &dir.join(format!("replay-{i}.db")),
            false,
        )?;
        replays.push(d);
    }

    // The snapshot.
    let t = Instant::now();
    let m = snapshot(&w)?;
    let snap_secs = t.elapsed().as_secs_f64();
    let seq = m["seq"]
        .as_u64()
        .ok_or_else(|| format!("manifest without seq: {m}"))?;
    let size = m["size"]
        .as_u64()
        .ok_or_else(|| format!("manifest without size: {m}"))?;
    let blake3 = m["blake3"]
        .as_str()
        .ok_or_else(|| format!("manifest without blake3: {m}"))?
        .to_string();
    if seq != job.head_seq {
        return Err(format!(
            "the snapshot is at seq {seq}, not the head {}",
            job.head_seq
        )
        .into());
    }
    job.snapshot_seq = seq;
    let object = w.data.join("objects").join(&blake3);
    let image_mb = size as f64 / 1e6;
    if std::fs::metadata(&object)?.len() != size {
        return Err(format!("{} is not {size} bytes", object.display()).into());
    }

    // (S) and (P), interleaved.
    let mut boots = Vec::new();
    let mut phys = Vec::new();
    for i in 0..s.reps {
        boots.push(device(
            s,
            &job,
            Mode::Snapshot,
            &dir.join(format!("snap-{i}.db")),
            false,
        )?);
        phys.push(physical(&object, &dir.join("copy.bin"), &blake3)?);
    }
    let want_state = m["state"]
        .as_str()
        .ok_or_else(|| format!("manifest without state: {m}"))?;
    let replica = install_replica(&object, &dir.join("replica.db"), want_state)?;
    let phased = if s.phases {
        Some(device(
            s,
            &job,
            Mode::Snapshot,
            &dir.join("snap-phases.db"),
            true,
        )?)
    } else {
        None
    };

    let p_ref = median(phys.iter().map(|p| p.synced_secs).collect());
    let p_copy = median(phys.iter().map(|p| p.copy_secs).collect());
    let s_med = median(boots.iter().map(|d| d.secs).collect());
    let s_open = median(boots.iter().map(|d| d.open_secs).collect());
    let r_med = median(replays.iter().map(|d| d.secs).collect());
    let growth = boots.iter().map(|d| d.growth_mb).fold(f64::MIN, f64::max);

    println!(
        "snapshot: POST /v1/groups/{GROUP}/snapshots in {snap_secs:.2} s (not judged): seq {seq}, \
         {image_mb:.1} MB, object {}",
        &blake3[..16]
    );
    println!();
    println!(
        "new device ready (all {} rows at head {seq}; WAL, synchronous=FULL; a fresh process \
         each); S and P: medians of {} reps, interleaved; R: {} rep(s); MB/s of the {image_mb:.1} \
         MB image",
        s.rows, s.reps, s.replay_reps
    );
    println!(
        "{:<46} {:>9} {:>8} {:>10} {:>11} {:>11}",
        "", "time (s)", "MB/s", "rows/s", "x physical", "RSS +MB"
    );
    let row = |label: &str, secs: f64, rss: Option<f64>| {
        println!(
            "{label:<46} {secs:>9.3} {:>8.1} {:>10.0} {:>10.2}x {:>11}",
            image_mb / secs,
            s.rows as f64 / secs,
            secs / p_ref,
            rss.map_or_else(|| "-".into(), |r| format!("{r:.1}"))
        );
    };
    row("(P) copy + BLAKE3 + fsync (reference)", p_ref, None);
    row("    copy + BLAKE3, no fsync", p_copy, None);
    row("(S) snapshot: pdb_open + pdb_sync", s_med, Some(growth));
    row(
        "    of which pdb_open (download, check, install)",
        s_open,
        None,
    );
    row(
        "(R) replay: pdb_open + pdb_sync from genesis",
        r_med,
        replays.iter().map(|d| d.growth_mb).reduce(f64::max),
    );
    for (label, ds) in [("S", &boots), ("R", &replays)] {
        let each: Vec<String> = ds
            .iter()
            .map(|d| {
                format!(
                    "{:.3} s (RSS {:.1} -> peak {:.1} MB)",
                    d.secs, d.rss_before_mb, d.hwm_after_mb
                )
            })
            .collect();
        let last = ds.last();
        println!(
            "  {label} runs: {}; device database {:.1} MB at the end, WAL {:.1} MB when ready",
            each.join(", "),
            last.map_or(0.0, |d| d.db_mb),
            last.map_or(0.0, |d| d.wal_mb)
        );
    }
    let each: Vec<String> = phys
        .iter()
        .map(|p| format!("{:.3}/{:.3} s", p.copy_secs, p.synced_secs))
        .collect();
    println!("  P runs (no fsync/fsync): {}", each.join(", "));

    if let Some(d) = &phased {
        println!(
            "where the bootstrap time goes (one more S run, pdb_status() polled every {} ms from \
             a second connection; total {:.3} s; each phase from when it was first seen):",
            PHASE_POLL.as_millis(),
            d.secs
        );
        for (i, pair) in d.phases.windows(2).enumerate() {
            let ((p, t0), (_, t1)) = (&pair[0], &pair[1]);
            if t1 > t0 {
                let label = match p.as_str() {
                    "-" if i == 0 => "pdb_open before any progress (config, GET group)".into(),
                    "-" => "after the install (detach, remove download)".into(),
                    _ => phase_label(p),
                };
                println!(
                    "  {label:<48} {:>7.3} s {:>5.1}%",
                    t1 - t0,
                    100.0 * (t1 - t0) / d.secs
                );
            }
        }
    }

    let r = &replica;
    println!(
        "the install's SQLite work replayed step by step on a fresh WAL database (this process, \
         one pass, total {:.3} s):",
        r.total
    );
    for (label, t) in [
        ("state digest of the image's rows", r.state),
        ("INSERT .. SELECT (transfer), into the WAL", r.insert),
        ("COMMIT (WAL fsync)", r.commit),
        ("WAL checkpoint into the database file", r.checkpoint),
    ] {
        println!(
            "  {label:<48} {t:>7.3} s {:>5.1}%  ({:.2}x physical)",
            100.0 * t / r.total,
            t / p_ref
        );
    }

    let phys_ratio = s_med / p_ref;
    let replay_ratio = r_med / s_med;
    let (ok1, ok2, ok3) = (
        phys_ratio <= MAX_PHYSICAL_RATIO,
        replay_ratio >= MIN_REPLAY_RATIO,
        growth <= MAX_GROWTH_MB,
    );
    println!();
    println!(
        "snapshot / physical  {phys_ratio:.2}x  <= {MAX_PHYSICAL_RATIO:.2} {}",
        verdict(ok1)
    );
    println!(
        "replay / snapshot  {replay_ratio:.1}x  >= {MIN_REPLAY_RATIO:.0} {}",
        verdict(ok2)
    );
    println!(
        "peak RSS growth {growth:.1} MB (largest of the S runs)  <= {MAX_GROWTH_MB:.0} {}",
        verdict(ok3)
    );
    println!(
        "check: ok (every device: {} rows at seq {seq}, pdb_verify() state ok; every S device at \
         the snapshot's seq right after pdb_open, no download left beside it; every copy hashed to the object's name)",
        s.rows
    );
    drop(w);
    Ok(ok1 && ok2 && ok3)
}

/// What a progress phase of the client means.
fn phase_label(p: &str) -> String {
    match p {
        "manifest" => "manifest + certificate (phase manifest)".into(),
        "download" => "download + BLAKE3 (phase download)".into(),
        "verify" => "state digest of the image (phase verify)".into(),
        "install" => "install transaction (phase install)".into(),
        "pull" => "pull of commits (phase pull)".into(),
        "pdb_open returned" => "from pdb_open's return to ready".into(),
        other => other.to_string(),
    }
}
