//! `pdb_commit` and the upload queue (DESIGN §2, §4).

use pdb_tests::{memory_with_pdb, pending};

/// A column as the schema hash sees it: name, declared type, PK position, NOT NULL.
type Col<'a> = (&'a str, &'a str, u8, bool);

/// The schema hash of DESIGN §4, computed here independently of the client.
fn expected_schema_hash(tables: &[(&str, &[Col<'_>])]) -> String {
    fn put(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut h = b"pdb/v1 schema".to_vec();
    for (name, cols) in tables {
        put(&mut h, name);
        h.extend_from_slice(&(cols.len() as u16).to_be_bytes());
        for (c, ty, pk, nn) in cols.iter() {
            put(&mut h, c);
            put(&mut h, ty);
            h.push(*pk);
            h.push(u8::from(*nn));
        }
    }
    blake3::hash(&h).to_hex().to_string()
}

#[test]
fn commit_queues_the_changeset_with_its_envelope() {
    let c = memory_with_pdb();
    c.execute_batch(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, title text NOT NULL, body);
         CREATE TABLE tags(note INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY(tag, note)) WITHOUT ROWID;
         SELECT pdb_track('tags'); SELECT pdb_track('notes');
         INSERT INTO notes VALUES (1, 't', 'b'); INSERT INTO tags VALUES (1, 'x');",
    )
    .unwrap();
    let expected = pending(&c);
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let id: i64 = c
        .query_row(r#"SELECT pdb_commit('{"device":"laptop"}')"#, [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(id, 1);
    let (cs, hash, key, base_seq, base_head, schema, meta, created): (Vec<u8>, String, String, i64, Option<String>, String, String, i64) = c
        .query_row(
            "SELECT changeset, hash, idempotency_key, base_seq, base_head, schema_hash, meta, created_at FROM pdb_upload_queue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
        )
        .unwrap();
    assert_eq!(cs, expected);
    assert_eq!(hash, blake3::hash(&cs).to_hex().to_string());
    assert!(
        key.len() == 32 && key.chars().all(|ch| ch.is_ascii_hexdigit()),
        "{key}"
    );
    assert_eq!((base_seq, base_head), (0, None));
    assert_eq!(
        schema,
        expected_schema_hash(&[
            (
                "notes",
                &[
                    ("id", "INTEGER", 1, false),
                    ("title", "TEXT", 0, true),
                    ("body", "", 0, false)
                ]
            ),
            (
                "tags",
                &[("note", "INTEGER", 2, true), ("tag", "TEXT", 1, true)]
            ),
        ])
    );
    assert_eq!(meta, r#"{"device":"laptop"}"#);
    assert!(created >= start && created < start + 60_000);
    // Tables appear in name order: notes before tags.
    assert_eq!(&cs[..1], b"T");
    assert!(
        cs.windows(6).position(|w| w == b"notes\0") < cs.windows(5).position(|w| w == b"tags\0")
    );

    assert!(pending(&c).is_empty(), "pending changes are cleared");
    let again: Option<i64> = c
        .query_row("SELECT pdb_commit()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(again, None, "nothing changed");
    c.execute_batch("UPDATE notes SET body = 'c'").unwrap();
    let second: i64 = c
        .query_row("SELECT pdb_commit()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(second, 2);
    let keys: i64 = c
        .query_row(
            "SELECT count(DISTINCT idempotency_key) FROM pdb_upload_queue",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(keys, 2);
}

#[test]
fn commit_is_atomic_with_the_application_transaction() {
    let c = memory_with_pdb();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v); SELECT pdb_track('t'); INSERT INTO t VALUES (1, 'a');").unwrap();
    let before = pending(&c);
    c.execute_batch("BEGIN; SELECT pdb_commit(); ROLLBACK;")
        .unwrap();
    let queued: i64 = c
        .query_row("SELECT count(*) FROM pdb_upload_queue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 0);
    assert_eq!(
        pending(&c),
        before,
        "the rolled-back commit's changes are pending again"
    );
}

#[test]
fn bad_meta_is_refused_and_changes_nothing() {
    let c = memory_with_pdb();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v); SELECT pdb_track('t'); INSERT INTO t VALUES (1, 'a');").unwrap();
    let err = c
        .query_row("SELECT pdb_commit('{not json')", [], |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("[argument] pdb_commit: meta is not valid JSON"),
        "{err}"
    );
    assert!(!pending(&c).is_empty());
}

#[test]
fn commit_without_tracked_tables_is_null() {
    let c = memory_with_pdb();
    let id: Option<i64> = c
        .query_row("SELECT pdb_commit()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(id, None);
    let cs: Option<Vec<u8>> = c
        .query_row("SELECT pdb_changeset()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cs, None);
}
