//! Sync through the SQL surface: real `libpdb` in rusqlite hosts, a real witness over
//! HTTP. Push, pull, verification, dead letters, and every conflict strategy on the
//! classic cases of DESIGN §6.

use std::path::PathBuf;

use pdb_tests::device::Device;
use pdb_tests::witness::WitnessProc;
use rusqlite::types::Value;
use serde_json::json;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, a TEXT, b TEXT)";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdb-sync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A witness with group `g` of `DDL`.
fn witness(dir: &std::path::Path) -> WitnessProc {
    let w = WitnessProc::start(&dir.join("witness"));
    assert_eq!(w.admin_client().create_group("g", DDL).status, 201);
    w
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn two_devices_converge_with_verified_history() {
    let dir = scratch("converge");
    let w = witness(&dir);
    let a = Device::on(&w, &dir, "a", DDL, &["notes"], "g");
    let b = Device::on(&w, &dir, "b", DDL, &["notes"], "g");

    a.sql("INSERT INTO notes VALUES (1, 'one', NULL), (2, 'two', NULL)");
    assert_eq!(a.commit(), Some(1));
    let s = a.sync();
    assert_eq!(
        (s["pushed"].as_u64(), s["pulled"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["head"]["seq"], 1);
    assert_eq!(
        a.status()["pending"],
        0,
        "certified commits leave the queue"
    );

    let s = b.sync();
    assert_eq!(
        (s["pushed"].as_u64(), s["pulled"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
    assert_eq!(b.dump("notes"), a.dump("notes"));
    // Pulled rows are the base, not local changes.
    assert_eq!(b.value("SELECT pdb_changeset() IS NULL"), Value::Integer(1));

    b.sql("UPDATE notes SET b = 'from b' WHERE id = 2; DELETE FROM notes WHERE id = 1");
    b.commit().unwrap();
    b.sync();
    a.sync();
    assert_eq!(a.dump("notes"), b.dump("notes"));
    assert_eq!(
        a.rows("SELECT id, a, b FROM notes"),
        vec![vec![Value::Integer(2), text("two"), text("from b")]]
    );

    for d in [&a, &b] {
        let v = d.json("SELECT pdb_verify()");
        assert_eq!(
            (v["commits"].as_u64(), v["state"].as_str()),
            (Some(2), Some("ok")),
            "{v}"
        );
        assert_eq!(d.json("SELECT pdb_head()")["seq"], 2);
    }
    // A stored certificate is the witness's, and verifies with the pinned key.
    let cert = a.json("SELECT pdb_certificate(2)");
    let c = pdb_client::cert::Certificate::from_json(&cert).unwrap();
    c.verify_signature(&w.key).unwrap();
    assert_eq!(
        c.head,
        pdb_client::cert::parse_hash(b.json("SELECT pdb_head()")["head"].as_str().unwrap())
            .unwrap()
    );
    assert_eq!(a.value("SELECT pdb_certificate(3)"), Value::Null);
    let st = a.status();
    assert_eq!(
        (st["online"].as_bool(), st["last_error"].is_null()),
        (Some(true), true),
        "{st}"
    );
}
