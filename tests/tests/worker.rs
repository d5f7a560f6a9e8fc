//! The background worker (`pdb_sync_start`): devices converge without calling
//! `pdb_sync()`, ride out a witness that goes away and comes back, stop on request, and
//! never hold up the host process's exit.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pdb_tests::device::Device;
use pdb_tests::witness::WitnessProc;
use rusqlite::types::Value;

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
