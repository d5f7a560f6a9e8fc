//! `pdb_apply` against `sqlite3changeset_apply` on the same conflicts: for each policy
//! (abort / replace / skip ≙ ABORT / REPLACE / OMIT) both must leave the same database.

use pdb_tests::{dump, memory_with_pdb, pending, session_apply};
use rusqlite::Connection;

const SCHEMA: &str = "
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v <> 'bad'), u UNIQUE);
INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3), (5, 'e', 5);";

/// A changeset made on the base state by `remote_sql`.
fn remote(remote_sql: &str) -> Vec<u8> {
    let r = memory_with_pdb();
    r.execute_batch(SCHEMA).unwrap();
    r.execute_batch("SELECT pdb_track('t'); SELECT pdb_commit();")
        .unwrap();
    r.execute_batch(remote_sql).unwrap();
    pending(&r)
}

/// The base state moved by `local_sql`, once plain (for the session) and once with
/// libpdb (for pdb_apply).
fn targets(local_sql: &str) -> (Connection, Connection) {
    let plain = Connection::open_in_memory().unwrap();
    plain.execute_batch(SCHEMA).unwrap();
    plain.execute_batch(local_sql).unwrap();
    let pdb = memory_with_pdb();
    pdb.execute_batch(SCHEMA).unwrap();
    pdb.execute_batch(local_sql).unwrap();
    (plain, pdb)
}

const POLICIES: [&str; 3] = ["abort", "replace", "skip"];

#[test]
fn data_notfound_and_conflict_match_the_session_extension() {
    // Remote: update 1, delete 2, insert 4, update 3. Local diverged: 1 edited (DATA),
    // 2 already gone (NOTFOUND), 4 inserted too (CONFLICT); 3 applies cleanly.
    let cs = remote("UPDATE t SET v = 'A' WHERE id = 1; DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (4, 'd', 4); UPDATE t SET v = 'C' WHERE id = 3;");
    let local = "UPDATE t SET v = 'x' WHERE id = 1; DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (4, 'mine', 40);";
    for policy in POLICIES {
        let (plain, pdb) = targets(local);
        let before = dump(&pdb, "t");
        let theirs = session_apply(&plain, &cs, policy);
        let ours = pdb.query_row(
            "SELECT pdb_apply(?1, ?2)",
            rusqlite::params![cs, policy],
            |r| r.get::<_, String>(0),
        );
        assert_eq!(
            theirs.is_ok(),
            ours.is_ok(),
            "policy {policy}: session {theirs:?}, pdb {ours:?}"
        );
        assert_eq!(dump(&pdb, "t"), dump(&plain, "t"), "policy {policy}");
        match policy {
            "abort" => {
                let msg = ours.unwrap_err().to_string();
                assert!(
                    msg.contains("conflict on table \"t\", primary key [1]")
                        && msg.contains("nothing was applied"),
                    "{msg}"
                );
                assert_eq!(dump(&pdb, "t"), before, "abort changes nothing");
            }
            "replace" => assert_eq!(ours.unwrap(), r#"{"applied":1,"replaced":2,"skipped":1}"#),
            _ => assert_eq!(ours.unwrap(), r#"{"applied":1,"replaced":0,"skipped":3}"#),
        }
    }
}

#[test]
fn constraint_failures_are_retried_then_reported() {
    // In canonical order the insert of 0 (u = 1) comes before the update that frees
    // u = 1, so it only succeeds on retry.
    let cs = remote("UPDATE t SET u = 7 WHERE id = 1; INSERT INTO t VALUES (0, 'z', 1);");
    let (plain, pdb) = targets("");
    session_apply(&plain, &cs, "abort").unwrap();
    pdb.query_row("SELECT pdb_apply(?1)", [&cs], |_| Ok(()))
        .unwrap();
    assert_eq!(dump(&pdb, "t"), dump(&plain, "t"));

    // A change that can never satisfy the CHECK constraint: abort reports it, skip omits it.
    let cs = remote("INSERT INTO t VALUES (9, 'ok', 9); UPDATE t SET u = 99 WHERE id = 3;");
    for policy in ["skip", "abort"] {
        let (plain, pdb) = targets("UPDATE t SET u = 9 WHERE id = 5;"); // u = 9 now taken locally
        let theirs = session_apply(&plain, &cs, policy);
        let ours = pdb.query_row(
            "SELECT pdb_apply(?1, ?2)",
            rusqlite::params![cs, policy],
            |r| r.get::<_, String>(0),
        );
        assert_eq!(theirs.is_ok(), ours.is_ok(), "{policy}");
        assert_eq!(dump(&pdb, "t"), dump(&plain, "t"), "{policy}");
        if policy == "abort" {
            let msg = ours.unwrap_err().to_string();
            assert!(
                msg.contains("CONSTRAINT conflict on table \"t\", primary key [9]"),
                "{msg}"
            );
        }
    }
}

#[test]
fn foreign_key_violations_abort_with_the_row_named() {
    let schema = "PRAGMA foreign_keys = ON;
        CREATE TABLE parent(id INTEGER PRIMARY KEY);
        CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id));
        INSERT INTO parent VALUES (1), (2);";
    let r = memory_with_pdb();
    r.execute_batch(schema).unwrap();
    r.execute_batch("SELECT pdb_track('parent'); SELECT pdb_track('child'); SELECT pdb_commit(); DELETE FROM parent WHERE id = 1;").unwrap();
    let cs = pending(&r);
    let t = memory_with_pdb();
    t.execute_batch(schema).unwrap();
    t.execute_batch("INSERT INTO child VALUES (10, 1);")
        .unwrap();
    let before = dump(&t, "parent");
    let err = t
        .query_row("SELECT pdb_apply(?1)", [&cs], |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("FOREIGN_KEY conflict") && err.contains("\"child\""),
        "{err}"
    );
    assert_eq!(dump(&t, "parent"), before);
    let plain = Connection::open_in_memory().unwrap();
    plain.execute_batch(schema).unwrap();
    plain
        .execute_batch("INSERT INTO child VALUES (10, 1);")
        .unwrap();
    assert!(session_apply(&plain, &cs, "abort").is_err());
}

#[test]
fn schema_mismatch_and_unknown_tables_are_errors_not_silent_skips() {
    let cs = remote("INSERT INTO t VALUES (8, 'h', 8);");
    let other = memory_with_pdb();
    other
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let err = other
        .query_row("SELECT pdb_apply(?1)", [&cs], |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("table \"t\" does not match the changeset"),
        "{err}"
    );
    let none = memory_with_pdb();
    let err = none
        .query_row("SELECT pdb_apply(?1)", [&cs], |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such table: \"t\""), "{err}");
}

#[test]
fn applying_inside_an_application_transaction_rolls_back_with_it() {
    let cs = remote("INSERT INTO t VALUES (8, 'h', 8);");
    let (_, pdb) = targets("");
    let before = dump(&pdb, "t");
    pdb.execute_batch("BEGIN").unwrap();
    pdb.query_row("SELECT pdb_apply(?1)", [&cs], |_| Ok(()))
        .unwrap();
    assert_eq!(dump(&pdb, "t").len(), before.len() + 1);
    pdb.execute_batch("ROLLBACK").unwrap();
    assert_eq!(dump(&pdb, "t"), before);
}

#[test]
fn local_edits_stay_pending_across_an_applied_remote_change() {
    // Local edits column v of row 1; remote edits column u of the same row cleanly.
    let cs = remote("UPDATE t SET u = 100 WHERE id = 1;");
    let pdb = memory_with_pdb();
    pdb.execute_batch(SCHEMA).unwrap();
    pdb.execute_batch(
        "SELECT pdb_track('t'); SELECT pdb_commit(); UPDATE t SET v = 'local' WHERE id = 1;",
    )
    .unwrap();
    pdb.query_row("SELECT pdb_apply(?1)", [&cs], |_| Ok(()))
        .unwrap();
    let rows: Vec<(String, String)> = pdb
        .prepare("SELECT old, new FROM pdb_changeset_rows(pdb_changeset())")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![(
            r#"[1,"a",{"undefined":true}]"#.to_string(),
            r#"[{"undefined":true},"local",{"undefined":true}]"#.to_string()
        )],
        "only the local edit is pending; the remote u = 100 is the new base"
    );
}

/// The decoded pending changes as `(op, old, new)`.
fn pending_rows(c: &Connection) -> Vec<(String, Option<String>, Option<String>)> {
    c.prepare("SELECT op, old, new FROM pdb_changeset_rows(pdb_changeset())")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Found by the apply fuzz target: UPDATE records with no new value are no-ops that
/// still check their old values, as in `sqlite3changeset_apply`.
#[test]
fn an_update_that_sets_nothing_is_a_no_op() {
    // T t [1,0] | UPDATE old (1, 'a') new (undef, undef)
    let mut cs = vec![b'T', 2, 1, 0, b't', 0, 23, 0];
    cs.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 3, 1, b'a', 0, 0]);
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');";
    let pdb = memory_with_pdb();
    pdb.execute_batch(schema).unwrap();
    let plain = Connection::open_in_memory().unwrap();
    plain.execute_batch(schema).unwrap();
    session_apply(&plain, &cs, "abort").unwrap();
    let out: String = pdb
        .query_row("SELECT pdb_apply(?1)", [&cs], |r| r.get(0))
        .unwrap();
    assert_eq!(out, r#"{"applied":1,"replaced":0,"skipped":0}"#);
    assert_eq!(dump(&pdb, "t"), dump(&plain, "t"));
}

/// Found by the apply fuzz target: a remote change whose key or values the table
/// converts by affinity must still move the saved image forward, so that it never
/// shows up as a local edit.
#[test]
fn carried_forward_images_take_the_table_s_affinity() {
    let pdb = memory_with_pdb();
    pdb.execute_batch(
        "CREATE TABLE w(id INTEGER PRIMARY KEY, v TEXT, b REAL, u);
         INSERT INTO w VALUES (1, 'x', 1.0, 'base');
         SELECT pdb_track('w'); SELECT pdb_commit();
         UPDATE w SET u = 'local' WHERE id = 1;",
    )
    .unwrap();
    // UPDATE w: key spelled TEXT '1'; v 'x' -> 'z'; b 1.0 -> INTEGER 2 (stored as 2.0).
    let mut cs = vec![b'T', 4, 1, 0, 0, 0, b'w', 0, 23, 0];
    cs.extend_from_slice(&[3, 1, b'1', 3, 1, b'x', 2, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0]);
    cs.extend_from_slice(&[0, 3, 1, b'z', 1, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
    let out: String = pdb
        .query_row("SELECT pdb_apply(?1)", [&cs], |r| r.get(0))
        .unwrap();
    assert_eq!(out, r#"{"applied":1,"replaced":0,"skipped":0}"#);
    let undef = r#"{"undefined":true}"#;
    assert_eq!(
        pending_rows(&pdb),
        vec![(
            "UPDATE".to_string(),
            Some(format!(r#"[1,{undef},{undef},"base"]"#)),
            Some(format!(r#"[{undef},{undef},{undef},"local"]"#)),
        )],
        "only the local edit is pending"
    );
    // A remote delete spelled with a TEXT key ends the local edit too.
    let mut del = vec![b'T', 4, 1, 0, 0, 0, b'w', 0, 9, 0];
    del.extend_from_slice(&[
        3, 1, b'1', 3, 1, b'z', 2, 0x40, 0, 0, 0, 0, 0, 0, 0, 3, 5, b'l', b'o', b'c', b'a', b'l',
    ]);
    pdb.query_row("SELECT pdb_apply(?1)", [&del], |_| Ok(()))
        .unwrap();
    assert!(pending(&pdb).is_empty());
}

/// Found by the decode fuzz target: table names are case-insensitive in SQL, so an
/// INSERT into `c` and a DELETE of the same row from `C` cancel out, as in SQLite's
/// changegroup.
#[test]
fn concat_matches_table_names_case_insensitively() {
    let ins = [
        b'T', 2, 1, 0, b'c', 0, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 3, 1, b'a',
    ];
    let del = [
        b'T', 2, 1, 0, b'C', 0, 9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 3, 1, b'a',
    ];
    let c = memory_with_pdb();
    let out: Vec<u8> = c
        .query_row("SELECT pdb_concat(?1, ?2)", [&ins[..], &del[..]], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(out.is_empty(), "{out:02x?}");
    let mut theirs = Vec::new();
    rusqlite::session::concat_strm(&mut &ins[..], &mut &del[..], &mut theirs).unwrap();
    assert!(theirs.is_empty());
}

/// Found by the apply fuzz target: an INSERT from a changeset with fewer columns than
/// the table fills the rest with defaults, and the saved image of a row with local
/// edits must take those defaults too.
#[test]
fn carried_forward_inserts_include_defaulted_trailing_columns() {
    let pdb = memory_with_pdb();
    pdb.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a, b DEFAULT 'dflt', c DEFAULT 7);
         SELECT pdb_track('t'); SELECT pdb_commit();
         INSERT INTO t VALUES (3, 'local', 'x', 1); DELETE FROM t WHERE id = 3;",
    )
    .unwrap();
    // T t [1,0] (two columns of four) | INSERT (3, 'r')
    let cs = [
        b'T', 2, 1, 0, b't', 0, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 3, 1, b'r',
    ];
    pdb.query_row("SELECT pdb_apply(?1)", [&cs[..]], |_| Ok(()))
        .unwrap();
    let row: (String, String, i64) = pdb
        .query_row("SELECT a, b, c FROM t WHERE id = 3", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(row, ("r".to_string(), "dflt".to_string(), 7));
    assert!(pending(&pdb).is_empty(), "{:?}", pending_rows(&pdb));
}
