//! No witness keeps the host waiting for ever (DESIGN §7.6): against a fake witness
//! that accepts a request and never answers, or stops halfway through an object, every
//! call returns within a bound with a "timed out" error and leaves the database as it
//! was; a download that stalled keeps its bytes and resumes from them by `Range` once
//! the witness answers again. A download that is slow but keeps moving is never cut,
//! and a long-poll gets its wait on top of the ordinary deadline.
//!
//! The deadlines are shortened through `PDB_REQUEST_TIMEOUT_MS` and
//! `PDB_IDLE_TIMEOUT_MS`, read by the extension loaded into this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdb_client::transport::Remote;
use pdb_client::TransportError;
use pdb_tests::device::Device;
use pdb_tests::fake::{
    bare, download_name, downloads, installed, nothing_installed, pinned, Fake, Group, DDL, HISTORY,
};
use serde_json::Value as Json;

/// The deadline of an ordinary request in these tests.
const REQUEST: Duration = Duration::from_millis(1500);

/// The longest silence a download is allowed in these tests.
const IDLE: Duration = Duration::from_millis(1500);

/// Every call must return well within this, stalled witness or not.
const BOUND: Duration = Duration::from_secs(15);

fn short_deadlines() {
    // Every test of this file sets the same values, so the order they run in does not
    // matter.
    std::env::set_var("PDB_REQUEST_TIMEOUT_MS", REQUEST.as_millis().to_string());
    std::env::set_var("PDB_IDLE_TIMEOUT_MS", IDLE.as_millis().to_string());
}

fn scratch(name: &str) -> PathBuf {
    short_deadlines();
    // Built (if need be) before any call is timed.
    pdb_tests::libpdb();
    let dir = std::env::temp_dir().join(format!("pdb-stalls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `f` on another thread and fails the test if it has not returned within
/// [`BOUND`] (a hang would otherwise hang the test too). Returns what it returned and
/// how long it took.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> (T, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(BOUND) {
        Ok(v) => (v, start.elapsed()),
        Err(_) => panic!("{what} did not return within {BOUND:?}"),
    }
}

/// `sql` (a JSON-returning call) on `d`, which must return within [`BOUND`].
fn call(d: Device, sql: &'static str) -> (Device, Result<Json, String>) {
    within(sql, move || {
        let r = d.try_json(sql);
        (d, r)
    })
    .0
}

fn last_error(d: &Device) -> String {
    d.status()["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_object_request_never_answered_times_out_and_the_bytes_kept_resume() {
    let dir = scratch("unanswered");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // A first download breaks off at a third: those bytes are on disk.
    let (size, third) = (g.image.len(), g.image.len() / 3);
    fake.set(|s| s.cut_at = Some(third));
    let d = bare(&fake, &dir, "d");
    assert_eq!(
        downloads(&d),
        vec![(download_name(&d, &g.manifest), third as u64)]
    );
    // Now the witness takes every object request and never says a word.
    fake.set(|s| {
        s.cut_at = None;
        s.ranges = true;
        s.hold = vec![("/v1/objects/".into(), None)];
    });
    let stopped = format!("snapshot download stopped at {third} of {size} bytes");
    let (d, r) = call(d, "SELECT pdb_bootstrap()");
    let err = r.unwrap_err();
    assert!(err.contains(&stopped), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(err.contains("it resumes from there"), "{err}");
    nothing_installed(&d);
    let (d, r) = call(d, "SELECT pdb_sync()");
    let err = r.unwrap_err();
    assert!(err.contains(&stopped) && err.contains("timed out"), "{err}");
    nothing_installed(&d);
    // pdb_open is best effort: it returns, and the status says why nothing came.
    let path = d.path.clone();
    drop(d);
    std::fs::remove_file(&path).unwrap();
    let url = fake.url.clone();
    let (d, _) = within("pdb_open", move || {
        Device::new(&dir, "d", "", &[], &url, "g", "t", &pinned())
    });
    let status = d.status();
    assert!(last_error(&d).contains("timed out"), "{status}");
    assert_eq!(status["online"], false, "{status}");
    nothing_installed(&d);
    assert_eq!(
        downloads(&d),
        vec![(download_name(&d, &g.manifest), third as u64)],
        "the bytes of the earlier download are kept"
    );

    // The witness answers again: only the rest is asked for.
    fake.set(|s| {
        s.hold.clear();
        s.ranges_seen.clear();
    });
    let (d, r) = call(d, "SELECT pdb_bootstrap()");
    let s = r.unwrap();
    assert_eq!(s["bootstrapped"]["resumed"], third, "{s}");
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={third}-")]);
    installed(&d, &g);
}

#[test]
fn a_download_that_stalls_halfway_times_out_and_resumes_by_range() {
    let dir = scratch("halfway");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let (size, half) = (g.image.len(), g.image.len() / 2);
    // Headers and half the body, then silence; a request for the rest gets its
    // headers and silence.
    fake.set(|s| {
        s.ranges = true;
        s.stall_at = Some(half);
    });
    let stopped = format!("snapshot download stopped at {half} of {size} bytes");
    let url = fake.url.clone();
    let d_dir = dir.clone();
    let (mut d, took) = within("pdb_open", move || {
        Device::new(&d_dir, "d", "", &[], &url, "g", "t", &pinned())
    });
    let err = last_error(&d);
    assert!(err.contains(&stopped), "{err}");
    assert!(
        err.contains(&format!("timed out: nothing received for {IDLE:?}")),
        "{err}"
    );
    assert!(
        took >= IDLE,
        "gave up after {took:?}, before the idle deadline"
    );
    nothing_installed(&d);
    let file = download_name(&d, &g.manifest);
    assert_eq!(downloads(&d), vec![(file.clone(), half as u64)]);
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={half}-")]);

    for sql in ["SELECT pdb_bootstrap()", "SELECT pdb_sync()"] {
        let (back, r) = call(d, sql);
        let err = r.unwrap_err();
        assert!(
            err.contains(&stopped) && err.contains("timed out"),
            "{sql}: {err}"
        );
        nothing_installed(&back);
        assert_eq!(downloads(&back), vec![(file.clone(), half as u64)], "{sql}");
        d = back;
    }

    fake.set(|s| {
        s.stall_at = None;
        s.ranges_seen.clear();
    });
    let (d, r) = call(d, "SELECT pdb_bootstrap()");
    let s = r.unwrap();
    assert_eq!(s["bootstrapped"]["resumed"], half, "{s}");
    assert_eq!(s["bootstrapped"]["bytes"], size, "{s}");
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={half}-")]);
    installed(&d, &g);
}

#[test]
fn a_slow_download_that_keeps_moving_completes() {
    let dir = scratch("trickle");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // Twenty pieces a fifth of a second apart: well within the idle deadline each,
    // longer than any request's deadline in all.
    fake.set(|s| {
        s.chunk = g.image.len().div_ceil(20);
        s.throttle = Some(Duration::from_millis(200));
    });
    let url = fake.url.clone();
    let (d, took) = within("pdb_open", move || {
        Device::new(&dir, "d", "", &[], &url, "g", "t", &pinned())
    });
    assert!(
        took > REQUEST.max(IDLE) * 2,
        "the download took only {took:?}: too fast to show anything"
    );
    installed(&d, &g);
}

#[test]
fn a_request_never_answered_times_out() {
    let dir = scratch("requests");
    let fake = Fake::start();
    let timed_out = format!("timed out: no complete answer within {REQUEST:?}");
    // Devices tracking the group's tables; the witness has no commits, no snapshot.
    // Group info is asked once per process and database, by pdb_open's first sync
    // step: the one device is opened while it hangs, the other before.
    let open = |name: &'static str| {
        let (dir, url) = (dir.clone(), fake.url.clone());
        within("pdb_open", move || {
            Device::new(&dir, name, DDL, &["notes"], &url, "g", "t", &pinned())
        })
        .0
    };
    fake.set(|s| s.hold = vec![("/v1/groups/g".into(), None)]);
    let info = open("info");
    assert!(last_error(&info).contains(&timed_out), "{}", info.status());
    fake.set(|s| s.hold.clear());
    let pull = open("pull");
    assert_eq!(pull.status()["last_error"], Json::Null);
    for (d, path) in [(info, "/v1/groups/g"), (pull, "/v1/groups/g/commits")] {
        fake.set(|s| s.hold = vec![(path.into(), None)]);
        let (d, r) = call(d, "SELECT pdb_sync()");
        let err = r.unwrap_err();
        assert!(err.contains(&timed_out), "{path}: {err}");
        let status = d.status();
        assert_eq!(status["online"], false, "{path}: {status}");
        assert_eq!(status["head"]["seq"], 0, "{path}: {status}");
        // Once the witness answers, the same call goes through.
        fake.set(|s| s.hold.clear());
        let (d, r) = call(d, "SELECT pdb_sync()");
        r.unwrap();
        assert_eq!(d.status()["online"], true, "{path}");
    }
}

#[test]
fn a_long_poll_gets_its_wait_on_top_of_the_deadline() {
    scratch("long-poll");
    let fake = Fake::start();
    let remote = Arc::new(Remote::new(&fake.url, "g", "t").unwrap());
    let wait = Duration::from_secs(2);
    // The witness holds the poll past the ordinary deadline, within the wait.
    let held = REQUEST + Duration::from_millis(1000);
    assert!(held > REQUEST && held < REQUEST + wait);
    fake.set(|s| s.hold = vec![("/v1/groups/g/commits".into(), Some(held))]);
    let r = remote.clone();
    let (page, _) = within("a long-poll", move || r.pull(0, 1, wait));
    assert!(page.unwrap().unwrap().commits.is_empty());
    // The same answer to a pull that does not wait comes too late.
    let r = remote.clone();
    let (err, took) = within("a pull", move || r.pull(0, 1, Duration::ZERO));
    match err {
        Err(TransportError::Unreachable(why)) => assert!(why.contains("timed out"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(took < held, "{took:?}");
    // A poll never answered ends at its wait plus the deadline.
    fake.set(|s| s.hold = vec![("/v1/groups/g/commits".into(), None)]);
    let r = remote.clone();
    let (err, took) = within("a long-poll", move || r.pull(0, 1, wait));
    match err {
        Err(TransportError::Unreachable(why)) => assert!(
            why.contains(&format!("no complete answer within {:?}", REQUEST + wait)),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(took >= REQUEST + wait, "{took:?}");
}
