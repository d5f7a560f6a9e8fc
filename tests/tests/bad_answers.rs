//! Answers no genuine witness gives, from a fake one: each is refused with an error
//! that names what is wrong, and the device keeps what it has.
//!
//! - a pull page with no commits while its head claims later ones (the device would
//!   otherwise believe itself up to date and stay behind);
//! - a push answered with a certificate that fails verification (the error names the
//!   pushed commit, and the commit stays queued).

use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use pdb_client::cert::{genesis, next_head, Certificate};
use pdb_tests::device::Device;
use pdb_tests::fake::{bare, pinned, witness_key, Fake, Group, DDL, HISTORY};
use rusqlite::types::Value;
use serde_json::Value as Json;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdb-bad-answers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_empty_page_under_a_later_head_is_refused() {
    let dir = scratch("empty-page");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // No snapshot, so the device replays; the witness claims head 3 but serves only
    // commit 1, and then empty pages.
    fake.set(|s| {
        s.manifest = None;
        s.commits.truncate(1);
    });
    let d = bare(&fake, &dir, "d");
    let err = d.try_json("SELECT pdb_sync()").unwrap_err();
    assert!(
        err.contains("the pull page after seq 1 holds no commit, but its head claims seq 3"),
        "{err}"
    );
    let status = d.status();
    // Commit 1 came in a page of its own and stays applied; the witness did answer.
    assert_eq!(status["head"]["seq"], 1, "{status}");
    assert_eq!(status["online"], true, "{status}");
    let last = status["last_error"].as_str().unwrap_or("(none)");
    assert!(err.ends_with(last), "{status}");
    let v = d.json("SELECT pdb_verify()");
    assert_eq!(v["commits"], 1, "{v}");
}

/// The commit `d` queued last: its id, idempotency key and changeset.
fn queued(d: &Device) -> (i64, String, Vec<u8>) {
    let row = d.rows(
        "SELECT id, idempotency_key, changeset FROM pdb_upload_queue ORDER BY id DESC LIMIT 1",
    );
    match &row[..] {
        [r] => match &r[..] {
            [Value::Integer(id), Value::Text(key), Value::Blob(cs)] => {
                (*id, key.clone(), cs.clone())
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_push_answered_with_a_bad_certificate_names_the_pushed_commit() {
    let dir = scratch("push");
    let fake = Fake::start();
    // A device tracking the group's tables, with one local commit to send.
    let d = Device::new(&dir, "d", DDL, &["notes"], &fake.url, "g", "t", &pinned());
    d.sql("INSERT INTO notes VALUES (1, 'one')");
    d.commit().expect("a local commit");
    let (id, key, cs) = queued(&d);
    let hash = *blake3::hash(&cs).as_bytes();
    let head = next_head(&genesis("g"), 1, &hash);
    let cert = |signer: &SigningKey, group: &str, key: &str| {
        let c = Certificate::sign(
            signer,
            group,
            1,
            genesis(group),
            head,
            [0; 32],
            hash,
            key,
            0,
        );
        Json::Object(c.to_json())
    };
    let other = SigningKey::from_bytes(&[8; 32]);
    let cases = [
        (
            "signed by another key",
            cert(&other, "g", &key),
            "bad witness signature".to_string(),
        ),
        (
            "of another group",
            cert(&witness_key(), "h", &key),
            "it is for group \"h\", not \"g\"".to_string(),
        ),
        (
            "of another commit",
            cert(&witness_key(), "g", "someone-else"),
            "it is of key \"someone-else\"".to_string(),
        ),
    ];
    for (name, answer, why) in cases {
        fake.set(|s| s.push = Some(answer));
        let err = d.try_json("SELECT pdb_sync()").unwrap_err();
        let named = format!("the certificate for pushed commit {id} (key \"{key}\") refused: ");
        assert!(err.contains(&named), "{name}: {err}");
        assert!(err.contains(&why), "{name}: {err}");
        assert!(err.contains("the commit stays queued"), "{name}: {err}");
        assert!(!err.contains("pulled history"), "{name}: {err}");
        let status = d.status();
        assert_eq!(status["unsent"], 1, "{name}: {status}");
        assert_eq!(status["head"]["seq"], 0, "{name}: {status}");
        assert_eq!(
            d.value("SELECT count(*) FROM pdb_commits"),
            Value::Integer(0),
            "{name}"
        );
    }
}

#[test]
fn a_group_ddl_that_is_not_a_schema_runs_nothing_on_the_device() {
    let dir = scratch("hostile-ddl");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let outside = dir.join("outside.db");
    // No snapshot, no table: the device would take the tables from the DDL the witness
    // reports, which here also attaches a file and plants a trigger.
    let hostile = format!(
        "{DDL} ATTACH DATABASE '{}' AS e; CREATE TABLE e.t(x);",
        outside.display()
    );
    let trigger =
        format!("{DDL} CREATE TEMP TRIGGER t AFTER INSERT ON notes BEGIN DELETE FROM notes; END;");
    for ddl in [hostile, trigger] {
        fake.set(|s| {
            s.manifest = None;
            s.info["ddl"] = Json::String(ddl.clone());
        });
        let d = bare(&fake, &dir, &format!("d{}", ddl.len()));
        let err = d.try_json("SELECT pdb_sync()").unwrap_err();
        assert!(
            err.contains("the group's DDL from the witness is refused: statement 3 ("),
            "{err}"
        );
        assert_eq!(
            d.value("SELECT count(*) FROM sqlite_schema WHERE name = 'notes'"),
            Value::Integer(0),
            "no statement of a refused DDL runs"
        );
        assert_eq!(
            d.value("SELECT count(*) FROM temp.sqlite_schema"),
            Value::Integer(0)
        );
        assert!(!outside.exists(), "no file was attached");
    }
}
