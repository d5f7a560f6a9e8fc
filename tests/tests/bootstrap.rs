//! Starting from a snapshot, through the SQL surface: real `libpdb` in rusqlite hosts
//! and a real witness over HTTP. A new device installs the newest verified snapshot
//! and pulls only what came after; a device whose head was compacted away starts again
//! from a snapshot with its pending local changes rebased onto it.

use std::path::{Path, PathBuf};

use pdb_tests::device::Device;
use pdb_tests::witness::{WitnessClient, WitnessProc};
use rusqlite::types::Value;
use serde_json::Value as Json;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, a TEXT, b TEXT);\
                   CREATE INDEX notes_a ON notes(a);\
                   CREATE TABLE tags(note INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY(note, tag)) WITHOUT ROWID;";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdb-bootstrap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn witness(dir: &Path, args: &[&str]) -> WitnessProc {
    let w = WitnessProc::start_with(&dir.join("witness"), args, &[]);
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    w
}

/// A device that has nothing: no table, nothing tracked, only `pdb_open`.
fn bare(w: &WitnessProc, dir: &Path, name: &str) -> Device {
    Device::on(w, dir, name, "", &[], "g")
}

/// Asks the witness for a snapshot now; returns its seq.
fn snapshot_now(w: &WitnessProc) -> u64 {
    let r = w
        .admin_client()
        .send("POST", "/v1/groups/g/snapshots", &[], None)
        .expect("snapshot request");
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["seq"].as_u64().unwrap()
}

fn write_notes(d: &Device, from: i64, to: i64, tag: &str) {
    for i in from..to {
        d.sql(&format!(
            "INSERT INTO notes VALUES ({i}, 'note {i}', '{tag}'); INSERT INTO tags VALUES ({i}, '{tag}');"
        ));
        d.commit().unwrap();
    }
}

fn same_tables(a: &Device, b: &Device) {
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(a.dump("tags"), b.dump("tags"));
}

fn verified(d: &Device) -> Json {
    let v = d.json("SELECT pdb_verify()");
    assert_eq!(v["state"], "ok", "{v}");
    v
}

#[test]
fn a_new_device_starts_from_the_snapshot_and_pulls_only_what_came_after() {
    let dir = scratch("new");
    let w = witness(&dir, &["--snapshot-commits", "0"]);
    let a = Device::on(&w, &dir, "a", DDL, &["notes", "tags"], "g");
    write_notes(&a, 1, 9, "early");
    a.sync();
    let at = snapshot_now(&w);
    assert_eq!(at, 8);
    write_notes(&a, 9, 12, "late");
    a.sync();

    // pdb_open on a database with nothing of the group installs the snapshot at once:
    // tables, indexes, rows, head, capture.
    let b = bare(&w, &dir, "b");
    let status = b.status();
    assert_eq!(status["head"]["seq"], 8, "{status}");
    assert_eq!(status["last_error"], Json::Null, "{status}");
    assert_eq!(status["progress"], Json::Null, "{status}");
    assert_eq!(status["snapshot"]["seq"], 8, "{status}");
    assert_eq!(
        b.value("SELECT count(*) FROM sqlite_schema WHERE name = 'notes_a'"),
        Value::Integer(1),
        "the group's indexes come with it"
    );
    assert_eq!(b.value("SELECT count(*) FROM notes"), Value::Integer(8));
    assert_eq!(
        b.value("SELECT pdb_changeset() IS NULL"),
        Value::Integer(1),
        "installed rows are the base, not local changes"
    );
    // Only the three commits after the snapshot are pulled.
    let s = b.sync();
    assert_eq!(s["pulled"], 3, "{s}");
    assert_eq!(s["head"]["seq"], 11, "{s}");
    same_tables(&a, &b);
    let v = verified(&b);
    assert_eq!(
        v["commits"], 4,
        "the snapshot's certificate and three more: {v}"
    );

    // The new device's own writes are captured and reach the others.
    b.sql("UPDATE notes SET b = 'edited on b' WHERE id = 2");
    b.commit().unwrap();
    b.sync();
    a.sync();
    same_tables(&a, &b);
    assert_eq!(
        a.value("SELECT b FROM notes WHERE id = 2"),
        Value::Text("edited on b".into())
    );
    verified(&a);
    verified(&b);
}

#[test]
fn without_a_snapshot_a_new_device_takes_the_group_tables_and_replays() {
    let dir = scratch("replay");
    let w = witness(&dir, &["--snapshot-commits", "0"]);
    let a = Device::on(&w, &dir, "a", DDL, &["notes", "tags"], "g");
    write_notes(&a, 1, 4, "x");
    a.sync();
    let b = bare(&w, &dir, "b");
    assert_eq!(b.status()["head"]["seq"], 0);
    let s = b.sync();
    assert_eq!(s["pulled"], 3, "{s}");
    assert!(s.get("bootstrapped").is_none(), "{s}");
    same_tables(&a, &b);
    verified(&b);
    // pdb_bootstrap() with nothing newer than the device does nothing but pull.
    let s = b.json("SELECT pdb_bootstrap()");
    assert!(s.get("bootstrapped").is_none(), "{s}");
    assert_eq!(s["head"]["seq"], 3, "{s}");
}

#[test]
fn a_device_behind_the_compacted_history_starts_again_keeping_its_pending_changes() {
    let dir = scratch("compacted");
    let w = witness(
        &dir,
        &["--snapshot-commits", "4", "--retain-snapshots", "1"],
    );
    let a = Device::on(&w, &dir, "a", DDL, &["notes", "tags"], "g");
    let c = Device::on(&w, &dir, "c", DDL, &["notes", "tags"], "g");
    write_notes(&a, 1, 3, "first");
    a.sync();
    c.sync();
    assert_eq!(c.status()["head"]["seq"], 2);

    // c goes offline with a queued commit and an uncommitted edit: one on a row a
    // will also change, one on its own row.
    c.sql("UPDATE notes SET a = 'c title' WHERE id = 1");
    c.commit().unwrap();
    c.sql("INSERT INTO notes VALUES (100, 'c only', NULL)");

    // Meanwhile a writes on, and the witness snapshots and compacts.
    a.sql("UPDATE notes SET b = 'a body' WHERE id = 1");
    a.commit().unwrap();
    write_notes(&a, 3, 14, "second");
    a.sync();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let oldest = loop {
        let r = w.admin_client().pull("g", 0, 1);
        if r.status == 410 {
            assert_eq!(r.body["code"], "compacted", "{:?}", r.body);
            break r.body["oldest_seq"].as_u64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "never compacted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        oldest > 2,
        "c's head must be compacted away, oldest kept is {oldest}"
    );

    // c's sync gets 410, starts again from the snapshot, and rebases its changes.
    let s = c.sync();
    assert!(s.get("bootstrapped").is_some(), "{s}");
    assert_eq!(s["pushed"], 1, "{s}");
    assert_eq!(c.status()["pending"], 0);
    // The uncommitted edit is still uncommitted, and still there.
    assert_eq!(
        c.value("SELECT pdb_changeset() IS NOT NULL"),
        Value::Integer(1)
    );
    assert_eq!(
        c.value("SELECT a FROM notes WHERE id = 100"),
        Value::Text("c only".into())
    );
    c.commit().unwrap();
    c.sync();
    a.sync();
    same_tables(&a, &c);
    // Column merge (the default): c's title and a's body both survive.
    assert_eq!(
        a.rows("SELECT a, b FROM notes WHERE id = 1"),
        vec![vec![
            Value::Text("c title".into()),
            Value::Text("a body".into())
        ]]
    );
    verified(&a);
    verified(&c);
}

/// The certificate the witness holds under an idempotency key: (status, seq).
fn certified_under(w: &WitnessProc, key: &str) -> (u16, Option<u64>) {
    let r = w
        .admin_client()
        .send(
            "GET",
            &format!("/v1/groups/g/certificates?key={key}"),
            &[],
            None,
        )
        .expect("certificate request");
    (r.status, r.body["seq"].as_u64())
}

#[test]
fn a_commit_whose_answer_was_lost_is_not_certified_again_after_its_seq_was_compacted() {
    let dir = scratch("lost-answer");
    let w = witness(
        &dir,
        &[
            "--snapshot-commits",
            "0",
            "--snapshot-bytes",
            "0",
            "--retain-snapshots",
            "1",
        ],
    );
    let a = Device::on(&w, &dir, "a", DDL, &["notes", "tags"], "g");
    write_notes(&a, 1, 3, "first");
    a.sync();
    // One device comes back with a pull, the other with a sync (which pushes first).
    for (n, entry) in ["SELECT pdb_pull()", "SELECT pdb_sync()"]
        .into_iter()
        .enumerate()
    {
        let name = format!("c{n}");
        let mut c = Device::on(&w, &dir, &name, DDL, &["notes", "tags"], "g");
        // Its write would win again over the group's later one if it were rebased.
        c.sql("SELECT pdb_set_strategy('notes', 'local-wins')");
        c.sync();
        c.sql(&format!("UPDATE notes SET a = '{name} title' WHERE id = 1"));
        c.commit().unwrap();
        let key = match c.value("SELECT idempotency_key FROM pdb_upload_queue") {
            Value::Text(k) => k,
            other => panic!("{other:?}"),
        };
        let copy = dir.join(format!("{name}-before-push.db"));
        c.copy_to(&copy);
        assert_eq!(c.sync()["pushed"], 1);
        let (status, seq) = certified_under(&w, &key);
        assert_eq!(status, 200);
        let seq = seq.unwrap();
        // The device dies before it writes the certificate down: its commit is queued
        // again, unsent as far as it knows.
        c.crash_back_to(&copy);
        assert_eq!(c.status()["pending"], 1);

        // The group writes over the same row; two snapshots compact the commit away.
        a.sync();
        a.sql(&format!(
            "UPDATE notes SET a = 'a after {name}' WHERE id = 1"
        ));
        a.commit().unwrap();
        a.sync();
        snapshot_now(&w);
        write_notes(&a, 10 + 10 * n as i64, 11 + 10 * n as i64, "more");
        a.sync();
        let newest = snapshot_now(&w);
        let r = w.admin_client().pull("g", 0, 1);
        assert_eq!(r.status, 410, "{:?}", r.body);
        assert!(r.body["oldest_seq"].as_u64().unwrap() > seq, "{:?}", r.body);

        let s = c.json(entry);
        assert_eq!(s["bootstrapped"]["seq"], newest, "{entry}: {s}");
        // The sync's push got the original certificate back (counted as pushed).
        assert_eq!(s["pushed"].as_u64().unwrap_or(0), n as u64, "{entry}: {s}");
        assert_eq!(c.status()["pending"], 0, "{entry}");
        assert!(c.conflicts().is_empty(), "{entry}: {:?}", c.conflicts());
        assert_eq!(
            c.value("SELECT a FROM notes WHERE id = 1"),
            Value::Text(format!("a after {name}")),
            "{entry}: the group's later write stands"
        );
        // Exactly once: the key is still the commit's at its first seq, and the
        // history after the compaction holds no second commit under it.
        assert_eq!(certified_under(&w, &key), (200, Some(seq)));
        c.sync();
        a.sync();
        same_tables(&a, &c);
        assert_eq!(
            a.value(&format!(
                "SELECT group_concat(seq) FROM pdb_commits WHERE idempotency_key = '{key}'"
            )),
            Value::Text(seq.to_string()),
            "{entry}"
        );
        verified(&c);
    }
    assert_eq!(certified_under(&w, "never-used"), (404, None));
}
