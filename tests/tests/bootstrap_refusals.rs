//! Starting from a snapshot refuses what it cannot verify (DESIGN §4, §6, §7 invariant
//! 5), against a fake witness that serves a genuine group history and snapshot bent one
//! way per test.
//!
//! A device with nothing of the group installs a snapshot only after its manifest's
//! signature (by the pinned witness), its head against the certified history, the
//! image's size and BLAKE3, and the state digest of the image's rows all check out.
//! Each bad input is refused with its own clear error, by `pdb_open` (in
//! `pdb_status().last_error`) and by `pdb_bootstrap()`, and leaves nothing behind: no
//! tables, no head, no certificates, no attached image, no refused download file. A
//! download cut short keeps its bytes and resumes from them with a `Range` request, on
//! the same connection or a new one, and `pdb_status()` shows the download's progress
//! from another connection while it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use pdb_client::cert::hex;
use pdb_tests::device::Device;
use pdb_tests::fake::{
    bare, download_name, downloads, installed, manifest_json, nothing_installed, pinned, sign,
    witness_key, Fake, Group, HISTORY,
};
use rusqlite::Connection;
use serde_json::{json, Value as Json};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pdb-bootstrap-refusals-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A bare device opened on `fake` refuses its snapshot with an error containing
/// `want`, in `pdb_open`, `pdb_bootstrap()` and `pdb_sync()`, and keeps nothing of it,
/// not even the download file. Returns `pdb_bootstrap()`'s error.
fn refused(fake: &Fake, dir: &Path, name: &str, want: &str) -> String {
    let d = bare(fake, dir, name);
    let status = d.status();
    let open_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        open_error.starts_with("snapshot refused:"),
        "{name}: pdb_open: {status}"
    );
    assert!(open_error.contains(want), "{name}: pdb_open: {status}");
    nothing_installed(&d);
    let err = d.try_json("SELECT pdb_bootstrap()").expect_err(name);
    assert!(err.contains("snapshot refused:"), "{name}: {err}");
    assert!(err.contains(want), "{name}: {err}");
    assert!(err.contains("nothing installed"), "{name}: {err}");
    nothing_installed(&d);
    assert_eq!(
        downloads(&d),
        vec![],
        "{name}: a refused image stays on disk"
    );
    // A sync refuses it as well: it never falls back to replaying beside the snapshot.
    let err = d.try_json("SELECT pdb_sync()").expect_err(name);
    assert!(err.contains(want), "{name}: pdb_sync: {err}");
    nothing_installed(&d);
    err
}

#[test]
fn tampered_bytes_are_refused_by_their_hash() {
    let dir = scratch("tampered");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let mut bad = g.image.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    fake.set(|s| s.object = Arc::new(bad));
    refused(
        &fake,
        &dir,
        "d",
        "the downloaded bytes hash to something else",
    );
}

#[test]
fn a_manifest_changed_after_signing_is_refused() {
    let dir = scratch("resigned");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // Another image under the genuine signature: the manifest names its hash.
    let other = Group::new(&dir, &HISTORY[..1]);
    let mut m = g.manifest.to_json();
    m.insert(
        "blake3".into(),
        hex(blake3::hash(&other.image).as_bytes()).into(),
    );
    m.insert("size".into(), other.image.len().into());
    fake.set(|s| {
        s.manifest = Some(Json::Object(m).to_string());
        s.object = Arc::new(other.image.clone());
    });
    let err = refused(&fake, &dir, "d", "bad witness signature");
    assert!(
        err.contains(&format!("snapshot manifest of seq {}", g.last().seq)),
        "{err}"
    );
}

#[test]
fn a_manifest_of_another_witness_is_refused() {
    let dir = scratch("witness");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let other = SigningKey::from_bytes(&[8; 32]);
    let m = sign(&other, g.last(), &g.image);
    fake.set(|s| s.manifest = Some(manifest_json(&m)));
    let err = refused(&fake, &dir, "named", "not the pinned");
    assert!(
        err.contains(&hex(&other.verifying_key().to_bytes())),
        "{err}"
    );
    // Signed by the other key while naming the pinned one: the signature fails.
    let mut m = m.to_json();
    m.insert("witness_key".into(), hex(&pinned()).into());
    fake.set(|s| s.manifest = Some(Json::Object(m).to_string()));
    refused(&fake, &dir, "claimed", "bad witness signature");
}

#[test]
fn a_manifest_head_outside_the_certified_history_is_refused() {
    let dir = scratch("fork");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // A fork at the same seq, signed by the pinned key, with its own genuine image:
    // every check but the certified head would pass.
    let fork = Group::new(
        &dir,
        &[HISTORY[0], "DELETE FROM notes WHERE id < 100", HISTORY[2]],
    );
    assert_eq!(fork.last().seq, g.last().seq);
    fake.set(|s| {
        s.manifest = Some(manifest_json(&fork.manifest));
        s.object = Arc::new(fork.image.clone());
    });
    let err = refused(&fake, &dir, "d", "is not the certified head");
    assert!(err.contains(&hex(&fork.last().head)), "{err}");
    assert!(err.contains(&hex(&g.last().head)), "{err}");
    assert!(
        err.contains("not in the history this device trusts"),
        "{err}"
    );
}

/// Serves `g`'s image changed by `sql`, under a manifest of it signed by the pinned
/// key at `g`'s last certificate: only the image's content can give it away.
fn publish_edited(fake: &Fake, dir: &Path, g: &Group, sql: &str) {
    let file = dir.join("edited.db");
    std::fs::write(&file, &g.image).unwrap();
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    let bad = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let m = sign(&witness_key(), g.last(), &bad);
    fake.set(|s| {
        s.manifest = Some(manifest_json(&m));
        s.object = Arc::new(bad);
    });
}

#[test]
fn an_image_whose_rows_differ_from_the_certified_state_is_refused() {
    let dir = scratch("state");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // The image holds one row more than the certified state; manifest and certificate
    // agree and are signed, and the image matches the manifest's size and hash.
    publish_edited(
        &fake,
        &dir,
        &g,
        "INSERT INTO notes VALUES (1000, 'smuggled')",
    );
    let err = refused(&fake, &dir, "d", "state digest");
    assert!(err.contains(&hex(&g.last().state)), "{err}");
}

#[test]
fn an_image_whose_schema_was_written_by_hand_is_refused() {
    let dir = scratch("schema");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // Rows and schema hash as certified, the manifest signed and matching the bytes;
    // only a field of the schema table is no longer what SQLite writes there.
    publish_edited(
        &fake,
        &dir,
        &g,
        "PRAGMA writable_schema = ON; \
         UPDATE sqlite_schema SET tbl_name = CAST(tbl_name AS BLOB) WHERE name = 'notes'; \
         PRAGMA writable_schema = OFF;",
    );
    refused(
        &fake,
        &dir,
        "d",
        "the tbl_name of entry \"notes\" is not UTF-8 text",
    );
}

#[test]
fn a_manifest_that_is_not_json_or_lacks_a_field_is_refused() {
    let dir = scratch("malformed");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let mut cases = vec![(
        "garbage",
        "<html>maintenance</html>".to_string(),
        "not JSON".to_string(),
    )];
    for field in ["blake3", "signature", "seq"] {
        let mut m = g.manifest.to_json();
        m.remove(field);
        cases.push((
            field,
            Json::Object(m).to_string(),
            format!("field \"{field}\""),
        ));
    }
    let mut m = g.manifest.to_json();
    m.insert("size".into(), json!("big"));
    cases.push(("size", Json::Object(m).to_string(), "field \"size\"".into()));
    for (name, body, want) in cases {
        fake.set(|s| s.manifest = Some(body));
        let d = bare(&fake, &dir, name);
        let status = d.status();
        let open_error = status["last_error"].as_str().unwrap_or_default();
        assert!(open_error.contains(&want), "{name}: pdb_open: {status}");
        nothing_installed(&d);
        let err = d.try_json("SELECT pdb_bootstrap()").expect_err(name);
        assert!(err.contains(&want), "{name}: {err}");
        if name != "garbage" {
            assert!(err.contains("manifest"), "{name}: {err}");
        }
        nothing_installed(&d);
        assert_eq!(downloads(&d), vec![], "{name}");
    }
}

#[test]
fn a_cut_download_keeps_its_bytes_and_resumes_with_a_range_request() {
    let dir = scratch("cut");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let (size, cut) = (g.image.len(), g.image.len() / 3);
    // A witness that drops the connection at a third, and ignores ranges meanwhile.
    fake.set(|s| s.cut_at = Some(cut));
    let d = bare(&fake, &dir, "d");
    let stopped = format!("snapshot download stopped at {cut} of {size} bytes");
    let status = d.status();
    let open_error = status["last_error"].as_str().unwrap_or_default();
    assert!(open_error.contains(&stopped), "{status}");
    assert!(open_error.contains("it resumes from there"), "{status}");
    nothing_installed(&d);
    let file = download_name(&d, &g.manifest);
    assert_eq!(downloads(&d), vec![(file.clone(), cut as u64)]);
    // Asked again, it resumes (the fake ignores the range and cuts again).
    let err = d.try_json("SELECT pdb_bootstrap()").unwrap_err();
    assert!(err.contains(&stopped), "{err}");
    assert!(fake.ranges_seen().contains(&format!("bytes={cut}-")));
    nothing_installed(&d);
    assert_eq!(downloads(&d), vec![(file, cut as u64)]);

    // Once the witness serves the rest, only the rest is asked for.
    fake.set(|s| {
        s.cut_at = None;
        s.ranges = true;
        s.ranges_seen.clear();
    });
    let s = d.json("SELECT pdb_bootstrap()");
    assert_eq!(
        s["bootstrapped"],
        json!({"seq": g.last().seq, "bytes": size, "resumed": cut, "conflicts": 0}),
        "{s}"
    );
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={cut}-")]);
    installed(&d, &g);
    // Nothing came after the snapshot: a sync pulls nothing and still verifies.
    let s = d.sync();
    assert_eq!(s["pulled"], 0, "{s}");
    installed(&d, &g);
}

#[test]
fn a_cut_download_resumes_on_a_new_connection() {
    let dir = scratch("restart");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let (size, cut) = (g.image.len(), g.image.len() / 2);
    fake.set(|s| {
        s.cut_at = Some(cut);
        s.ranges = true;
    });
    let d = bare(&fake, &dir, "d");
    let status = d.status();
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("stopped at {cut} of {size} bytes")),
        "{status}"
    );
    nothing_installed(&d);
    assert_eq!(
        downloads(&d),
        vec![(download_name(&d, &g.manifest), cut as u64)]
    );
    let path = d.path.clone();
    drop(d);

    // The application starts again: a new connection, no pdb_open.
    fake.set(|s| {
        s.cut_at = None;
        s.ranges_seen.clear();
    });
    let conn = Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    pdb_tests::load(&conn);
    let d = Device { conn, path };
    let s = d.json("SELECT pdb_bootstrap()");
    assert_eq!(s["bootstrapped"]["resumed"], cut, "{s}");
    assert_eq!(s["bootstrapped"]["bytes"], size, "{s}");
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={cut}-")]);
    installed(&d, &g);
}

#[test]
fn a_witness_that_ignores_ranges_sends_the_whole_image_again() {
    let dir = scratch("no-ranges");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let (size, cut) = (g.image.len(), g.image.len() / 3);
    fake.set(|s| s.cut_at = Some(cut));
    let d = bare(&fake, &dir, "d");
    assert_eq!(
        downloads(&d),
        vec![(download_name(&d, &g.manifest), cut as u64)]
    );
    fake.set(|s| {
        s.cut_at = None;
        s.ranges_seen.clear();
    });
    // Asked for the rest, the witness sends all of it (200): the earlier bytes are
    // dropped, and the summary does not claim them.
    let s = d.json("SELECT pdb_bootstrap()");
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={cut}-")]);
    assert_eq!(
        s["bootstrapped"],
        json!({"seq": g.last().seq, "bytes": size, "resumed": 0, "conflicts": 0}),
        "{s}"
    );
    installed(&d, &g);
}

#[test]
fn progress_shows_the_download_while_it_runs() {
    let dir = scratch("progress");
    let fake = Fake::start();
    // No snapshot yet: pdb_open installs nothing.
    let d = bare(&fake, &dir, "d");
    nothing_installed(&d);
    let g = Group::new(
        &dir,
        &[
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) \
           INSERT INTO notes SELECT i, i || hex(zeroblob(500)) FROM n",
        ],
    );
    let size = g.image.len() as u64;
    assert!(
        size > 2 << 20,
        "the image must span several progress reports: {size}"
    );
    fake.publish(&g);
    fake.set(|s| s.throttle = Some(Duration::from_millis(10)));

    let watcher = Connection::open(&d.path).unwrap();
    watcher.busy_timeout(Duration::from_secs(10)).unwrap();
    pdb_tests::load(&watcher);
    let worker = std::thread::spawn(move || {
        let s = d.json("SELECT pdb_bootstrap()");
        (s, d)
    });
    let mut seen: Vec<Json> = Vec::new();
    while !worker.is_finished() {
        let status: String = watcher
            .query_row("SELECT pdb_status()", [], |r| r.get(0))
            .unwrap();
        let status: Json = serde_json::from_str(&status).unwrap();
        if !status["progress"].is_null() && seen.last() != Some(&status["progress"]) {
            seen.push(status["progress"].clone());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (s, d) = worker.join().unwrap();
    assert_eq!(s["bootstrapped"]["bytes"], size, "{s}");
    assert_eq!(s["bootstrapped"]["resumed"], 0, "{s}");

    let phases = ["manifest", "download", "verify", "install"];
    let order: Vec<usize> = seen
        .iter()
        .filter_map(|p| phases.iter().position(|&x| p["phase"] == x))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "phases out of order: {seen:?}"
    );
    let downloading: Vec<(u64, u64)> = seen
        .iter()
        .filter(|p| p["phase"] == "download")
        .map(|p| {
            assert_eq!(p["seq"], g.last().seq, "{p}");
            (p["bytes"].as_u64().unwrap(), p["total"].as_u64().unwrap())
        })
        .collect();
    assert!(
        downloading
            .iter()
            .all(|&(bytes, total)| total == size && bytes <= total),
        "{seen:?}"
    );
    assert!(
        downloading.windows(2).all(|w| w[0].0 <= w[1].0),
        "bytes went backwards: {seen:?}"
    );
    assert!(
        downloading
            .iter()
            .any(|&(bytes, total)| 0 < bytes && bytes < total),
        "no progress seen in the middle of the download: {seen:?}"
    );
    let status: String = watcher
        .query_row("SELECT pdb_status()", [], |r| r.get(0))
        .unwrap();
    let status: Json = serde_json::from_str(&status).unwrap();
    assert_eq!(status["progress"], Json::Null, "{status}");
    installed(&d, &g);
}
