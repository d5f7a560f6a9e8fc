//! The background worker (`pdb_sync_start`): devices converge without calling
//! `pdb_sync()`, ride out a witness that goes away and comes back or is busy (503, 429
//! with `Retry-After`), halt on refusals no retry fixes until given a new token, wait
//! for the application's own sync on a custom strategy, stop on request, and never hold
//! up the host process's exit.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pdb_tests::device::Device;
use pdb_tests::witness::{WitnessClient, WitnessProc};
use rusqlite::types::Value;
use serde_json::json;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdb-worker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until `f` holds, failing with `what` after `limit`. Liveness, not speed: the
/// limits are generous, and the benchmark measures how fast it actually is.
fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(d: &Device) -> i64 {
    match d.value("SELECT count(*) FROM notes") {
        Value::Integer(n) => n,
        v => panic!("{v:?}"),
    }
}

const FAST: &str =
    r#"{"wait_ms": 2000, "poll_ms": 200, "min_backoff_ms": 50, "max_backoff_ms": 400}"#;

#[test]
fn workers_sync_in_the_background_and_survive_the_witness_going_away() {
    let dir = scratch("background");
    let data = dir.join("witness");
    let mut w = WitnessProc::start(&data);
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let listen = w.url.trim_start_matches("http://").to_string();
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");
    for d in [&a, &b] {
        assert_eq!(
            d.value(&format!("SELECT pdb_sync_start('{FAST}')")),
            Value::Text("started".into())
        );
        assert_eq!(
            d.value("SELECT pdb_sync_start()"),
            Value::Text("running".into())
        );
        assert_eq!(d.value("PRAGMA journal_mode"), Value::Text("wal".into()));
    }
    eventually("workers report running", Duration::from_secs(10), || {
        a.status()["worker"] == true && b.status()["worker"] == true
    });

    // A commit on A wakes A's worker; B's watcher sees the new head.
    a.sql("INSERT INTO notes VALUES (1, 'from a')");
    a.commit().unwrap();
    eventually("B has A's row", Duration::from_secs(10), || count(&b) == 1);
    b.sql("INSERT INTO notes VALUES (2, 'from b')");
    b.commit().unwrap();
    eventually("A has B's row", Duration::from_secs(10), || count(&a) == 2);

    // The witness goes away: commits wait, the status says offline.
    w.kill();
    a.sql("INSERT INTO notes VALUES (3, 'while offline')");
    a.commit().unwrap();
    eventually("A reports offline", Duration::from_secs(10), || {
        let s = a.status();
        s["online"] == false
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("unreachable"))
    });
    assert_eq!(a.status()["pending"], 1);
    // Back on the same address: both workers resume by themselves.
    let w = WitnessProc::start_at(&data, &listen, &[], &[]);
    eventually(
        "B gets the offline commit after the witness returns",
        Duration::from_secs(15),
        || count(&b) == 3,
    );
    eventually("A's queue drains", Duration::from_secs(10), || {
        a.status()["pending"] == 0
    });
    assert_eq!(a.status()["online"], true);

    // Stopped workers do nothing more.
    for d in [&a, &b] {
        assert_eq!(
            d.value("SELECT pdb_sync_stop()"),
            Value::Text("stopped".into())
        );
        assert_eq!(
            d.value("SELECT pdb_sync_stop()"),
            Value::Text("not running".into())
        );
        assert_eq!(d.status()["worker"], false);
    }
    a.sql("INSERT INTO notes VALUES (4, 'after stop')");
    a.commit().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.status()["pending"], 1, "no worker pushed it");
    assert_eq!(w.admin_client().head("g").0 .0, 3);
    a.sync();
    b.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
    for d in [&a, &b] {
        assert_eq!(d.json("SELECT pdb_verify()")["state"], "ok");
    }
}

#[test]
fn bad_worker_options_are_refused_and_an_unopened_database_cannot_start_one() {
    let dir = scratch("options");
    let conn = rusqlite::Connection::open(dir.join("x.db")).unwrap();
    pdb_tests::load(&conn);
    conn.execute_batch(DDL).unwrap();
    let err = |sql: &str| {
        conn.query_row(sql, [], |r| r.get::<_, String>(0))
            .unwrap_err()
            .to_string()
    };
    assert!(err("SELECT pdb_sync_start()").contains("pdb_open"));
    assert!(err(r#"SELECT pdb_sync_start('{"speed": 1}')"#).contains("unknown key \"speed\""));
    assert!(err(r#"SELECT pdb_sync_start('{"wait_ms": -1}')"#).contains("\"wait_ms\" must be"));
    assert!(err("SELECT pdb_sync_start('[')").contains("options_json"));
}

/// A Python host starts a worker, commits and exits without stopping it: the process
/// ends promptly and the database is intact and consistent.
#[test]
fn the_host_process_exits_with_a_worker_running() {
    let dir = scratch("exit");
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let token = w.token("py", "g", "write", 600);
    let db = dir.join("py.db");
    let script = format!(
        r#"
import sqlite3, time
c = sqlite3.connect({db:?}, isolation_level=None)
c.enable_load_extension(True)
c.load_extension({lib:?})
c.executescript({ddl:?})
c.execute("select pdb_track('notes')").fetchone()
c.execute("select pdb_open(?, 'g', ?, ?)", ({url:?}, {token:?}, {key:?})).fetchone()
c.execute("select pdb_sync_start()").fetchone()
for i in range(50):
    c.execute("insert into notes values (?, 'py')", (i,))
    c.execute("select pdb_commit()").fetchone()
time.sleep(0.05)
"#,
        db = db.to_str().unwrap(),
        lib = pdb_tests::libpdb()
            .to_str()
            .unwrap()
            .trim_end_matches(".so"),
        ddl = DDL,
        url = w.url,
        key = pdb_client::cert::hex(&w.key),
    );
    let start = Instant::now();
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        start.elapsed()
    );

    // Whatever the worker had done when the process ended is consistent: the rest is
    // still queued and goes out with the next sync.
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(
        conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "ok"
    );
    pdb_tests::load(&conn);
    let s: String = conn
        .query_row("SELECT pdb_sync()", [], |r| r.get(0))
        .unwrap();
    let v: String = conn
        .query_row("SELECT pdb_verify()", [], |r| r.get(0))
        .unwrap();
    assert!(v.contains(r#""state":"ok""#), "{s} {v}");
    assert_eq!(w.admin_client().head("g").0 .0, 50);
}

/// The witness's `pdb_rejections_total` for `code`.
fn rejections(w: &WitnessProc, code: &str) -> u64 {
    let text = reqwest::blocking::get(format!("{}/metrics", w.url))
        .and_then(|r| r.text())
        .expect("GET /metrics");
    let prefix = format!("pdb_rejections_total{{code=\"{code}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
        .trim()
        .parse()
        .expect("a number")
}

/// Waits until the worker of `d` halted, and returns its `halted` record.
fn halted(d: &Device) -> serde_json::Value {
    eventually("the worker halts", Duration::from_secs(10), || {
        !d.status()["halted"].is_null()
    });
    let s = d.status();
    assert_eq!(s["worker"], false, "{s}");
    s["halted"].clone()
}

fn reopen(d: &Device, w: &WitnessProc, token: &str) {
    let _: String = d
        .conn
        .query_row(
            "SELECT pdb_open(?1, 'g', ?2, ?3)",
            (&w.url, token, pdb_client::cert::hex(&w.key)),
            |r| r.get(0),
        )
        .expect("pdb_open");
}

/// A token without the write role: the push is refused with 403, the worker halts and
/// asks no more, keeping the queue; `pdb_open` with a write token resumes it.
#[test]
fn a_worker_refused_403_halts_until_pdb_open_gives_it_a_new_token() {
    let dir = scratch("forbidden");
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let read = w.token("a", "g", "read", 3600);
    let a = Device::new(&dir, "a", DDL, &["notes"], &w.url, "g", &read, &w.key);
    assert_eq!(
        a.value(&format!("SELECT pdb_sync_start('{FAST}')")),
        Value::Text("started".into())
    );
    eventually(
        "the read-only worker syncs",
        Duration::from_secs(10),
        || !a.status()["last_sync_at"].is_null(),
    );
    a.sql("INSERT INTO notes VALUES (1, 'needs write')");
    a.commit().unwrap();
    let h = halted(&a);
    assert_eq!(h["code"], "forbidden", "{h}");
    assert!(h["error"].as_str().unwrap().contains("403"), "{h}");

    // Without the halt, a 50..400 ms backoff would have asked several times by now,
    // and a commit changes nothing.
    let refused = rejections(&w, "forbidden");
    std::thread::sleep(Duration::from_millis(1500));
    a.sql("INSERT INTO notes VALUES (2, 'still queued')");
    a.commit().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        rejections(&w, "forbidden"),
        refused,
        "the halted worker asked again"
    );
    let s = a.status();
    assert_eq!(
        (s["worker"].clone(), s["pending"].clone()),
        (false.into(), 2.into())
    );
    assert_eq!(s["halted"]["code"], "forbidden");

    // A new token: the worker runs again at once and sends the queue.
    reopen(&a, &w, &w.token("a", "g", "write", 3600));
    let s = a.status();
    assert_eq!(
        (s["worker"].clone(), s["halted"].clone()),
        (true.into(), json!(null))
    );
    eventually("the queue drains", Duration::from_secs(10), || {
        a.status()["pending"] == 0
    });
    assert_eq!(w.admin_client().head("g").0 .0, 2);
    assert_eq!(
        a.value("SELECT pdb_sync_start()"),
        Value::Text("running".into())
    );
    assert_eq!(rejections(&w, "forbidden"), refused);
}

/// A token the witness cannot read (401): the worker halts before sending anything;
/// `pdb_sync_start` tries again (and halts again); after `pdb_sync_stop`, `pdb_open`
/// with a good token and `pdb_sync_start`, it syncs.
#[test]
fn a_worker_refused_401_halts_and_resumes_after_a_new_token_and_start() {
    let dir = scratch("unauthorized");
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let a = Device::new(
        &dir,
        "a",
        DDL,
        &["notes"],
        &w.url,
        "g",
        "not.a.token",
        &w.key,
    );
    a.sql("INSERT INTO notes VALUES (1, 'queued')");
    a.commit().unwrap();
    assert_eq!(
        a.value(&format!("SELECT pdb_sync_start('{FAST}')")),
        Value::Text("started".into())
    );
    let h = halted(&a);
    assert_eq!(h["code"], "unauthorized", "{h}");
    let refused = rejections(&w, "unauthorized");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        rejections(&w, "unauthorized"),
        refused,
        "the halted worker asked again"
    );

    // Started again with the same token: one more try, one more refusal.
    assert_eq!(
        a.value(&format!("SELECT pdb_sync_start('{FAST}')")),
        Value::Text("started".into())
    );
    eventually("the second halt", Duration::from_secs(10), || {
        rejections(&w, "unauthorized") == refused + 1 && !a.status()["halted"].is_null()
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rejections(&w, "unauthorized"), refused + 1);

    assert_eq!(
        a.value("SELECT pdb_sync_stop()"),
        Value::Text("not running".into())
    );
    assert_eq!(a.status()["halted"], json!(null));
    reopen(&a, &w, &w.token("a", "g", "write", 3600));
    assert_eq!(
        a.status()["worker"],
        false,
        "a stopped worker stays stopped"
    );
    assert_eq!(
        a.value(&format!("SELECT pdb_sync_start('{FAST}')")),
        Value::Text("started".into())
    );
    eventually("the queue drains", Duration::from_secs(10), || {
        a.status()["pending"] == 0
    });
    assert_eq!(w.admin_client().head("g").0 .0, 1);
    assert_eq!(a.status()["halted"], json!(null));
}

/// A device whose tracked table differs from the group's: the worker halts with
/// `schema_mismatch`, the queue untouched.
#[test]
fn a_schema_mismatch_halts_the_worker() {
    let dir = scratch("schema");
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let other = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, extra TEXT)";
    let a = Device::on(&w, &dir, "a", other, &["notes"], "g");
    a.sql("INSERT INTO notes VALUES (1, 'x', 'y')");
    a.commit().unwrap();
    a.value(&format!("SELECT pdb_sync_start('{FAST}')"));
    let h = halted(&a);
    assert_eq!(h["code"], "schema_mismatch", "{h}");
    assert!(h["error"].as_str().unwrap().contains("schema"), "{h}");
    std::thread::sleep(Duration::from_millis(800));
    let s = a.status();
    assert_eq!(
        (s["worker"].clone(), s["pending"].clone()),
        (false.into(), 1.into())
    );
    assert_eq!(w.admin_client().head("g").0 .0, 0);
}

/// A loopback stand-in for a busy witness: every answer is a problem with `status`,
/// except the one to group-info request number `slow_at`, a 429 with `Retry-After: 2`.
/// Keeps when each group-info request (the first request of every sync) came.
fn busy_witness(slow_at: usize) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let times = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut n = usize::MAX;
            if request.starts_with("GET /v1/groups/g HTTP") {
                let mut t = times.lock().unwrap();
                n = t.len();
                t.push(Instant::now());
            }
            let (status, extra, body) = if n == slow_at {
                (
                    "429 Too Many Requests",
                    "Retry-After: 2\r\n",
                    json!({"code": "rate_limited", "detail": "slow down"}),
                )
            } else {
                (
                    "503 Service Unavailable",
                    "",
                    json!({"code": "unavailable", "detail": "storage failed"}),
                )
            };
            let body = body.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{extra}Content-Type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

/// 503 and 429 pass: the worker keeps trying with its short backoff, but not before a
/// 429's `Retry-After`, and it never halts.
#[test]
fn a_busy_witness_is_retried_and_retry_after_is_obeyed() {
    let dir = scratch("busy");
    let (url, seen) = busy_witness(4);
    let a = Device::new(&dir, "a", DDL, &["notes"], &url, "g", "t", &[7; 32]);
    a.value(&format!("SELECT pdb_sync_start('{FAST}')"));
    eventually("tries after the 429", Duration::from_secs(15), || {
        seen.lock().unwrap().len() >= 7
    });
    let t = seen.lock().unwrap().clone();
    let gaps: Vec<Duration> = t.windows(2).map(|w| w[1] - w[0]).collect();
    // Request 0 is pdb_open's bootstrap attempt; the worker's start at 1.
    assert!(
        gaps[4] >= Duration::from_secs(2),
        "retried before Retry-After: {gaps:?}"
    );
    for (i, g) in gaps.iter().enumerate().skip(1) {
        if i != 4 {
            assert!(
                *g < Duration::from_millis(1500),
                "a 503 waited {g:?}: {gaps:?}"
            );
        }
    }
    let s = a.status();
    assert_eq!(
        (s["worker"].clone(), s["halted"].clone()),
        (true.into(), json!(null)),
        "{s}"
    );
    assert!(
        s["last_error"].as_str().unwrap().contains("unavailable"),
        "{s}"
    );
    assert_eq!(
        a.value("SELECT pdb_sync_stop()"),
        Value::Text("stopped".into())
    );
}

/// The worker's connection lacks the application's custom conflict function: it
/// neither halts nor retries blindly, and runs on once the application's own sync
/// got past the conflict.
#[test]
fn a_custom_strategy_conflict_waits_for_the_applications_sync() {
    use rusqlite::functions::FunctionFlags;
    let dir = scratch("custom");
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");
    a.conn
        .create_scalar_function("keep_remote", 3, FunctionFlags::SQLITE_UTF8, |ctx| {
            ctx.get::<Option<String>>(2)
        })
        .unwrap();
    a.value("SELECT pdb_set_strategy('notes', 'custom', 'keep_remote')");
    a.sql("INSERT INTO notes VALUES (1, 'first')");
    a.commit().unwrap();
    a.sync();
    b.sync();
    a.value(&format!("SELECT pdb_sync_start('{FAST}')"));

    // A local edit (not yet committed) and a remote one of the same row.
    a.sql("UPDATE notes SET body = 'a' WHERE id = 1");
    b.sql("UPDATE notes SET body = 'b' WHERE id = 1");
    b.commit().unwrap();
    b.sync();
    eventually(
        "the worker names the function",
        Duration::from_secs(10),
        || {
            a.status()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("keep_remote"))
        },
    );
    let s = a.status();
    assert_eq!(
        (s["worker"].clone(), s["halted"].clone()),
        (true.into(), json!(null)),
        "{s}"
    );

    // The application's sync settles it; the worker then carries on by itself.
    a.sync();
    assert_eq!(
        a.value("SELECT body FROM notes WHERE id = 1"),
        Value::Text("b".into())
    );
    b.sql("INSERT INTO notes VALUES (2, 'later')");
    b.commit().unwrap();
    b.sync();
    eventually("the worker pulls again", Duration::from_secs(10), || {
        count(&a) == 2
    });
    eventually("the error clears", Duration::from_secs(10), || {
        a.status()["last_error"].is_null()
    });
}
