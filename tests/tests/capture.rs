//! Change capture as DESIGN §2 defines it, case by case, through the real `libpdb`
//! loaded into rusqlite's SQLite.

use pdb_tests::{canonical, dump, load, memory_with_pdb, pending, session_apply};
use rusqlite::session::Session;
use rusqlite::Connection;

/// One decoded change: `(tbl, op, pk, old, new)`.
type Row = (String, String, String, Option<String>, Option<String>);

/// The pending changes as rows of `pdb_changeset_rows`.
fn rows(conn: &Connection) -> Vec<Row> {
    let mut stmt = conn
        .prepare("SELECT tbl, op, pk, old, new FROM pdb_changeset_rows(pdb_changeset())")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn row(t: &str, op: &str, pk: &str, old: Option<&str>, new: Option<&str>) -> Row {
    (
        t.into(),
        op.into(),
        pk.into(),
        old.map(Into::into),
        new.map(Into::into),
    )
}

fn notes() -> Connection {
    let c = memory_with_pdb();
    c.execute_batch(
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, n INTEGER);
         SELECT pdb_track('notes');",
    )
    .unwrap();
    c
}

#[test]
fn consolidates_per_row_like_the_session_extension() {
    let c = notes();
    c.execute_batch(
        "INSERT INTO notes VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3);
         SELECT pdb_commit();
         INSERT INTO notes VALUES (10, 'new', 0); UPDATE notes SET n = 99 WHERE id = 10;  -- INSERT+UPDATE
         INSERT INTO notes VALUES (11, 'gone', 0); DELETE FROM notes WHERE id = 11;       -- INSERT+DELETE
         DELETE FROM notes WHERE id = 1; INSERT INTO notes VALUES (1, 'a', 1);             -- DELETE+INSERT same
         DELETE FROM notes WHERE id = 2; INSERT INTO notes VALUES (2, 'B', 2);             -- DELETE+INSERT other
         UPDATE notes SET n = 30 WHERE id = 3; UPDATE notes SET n = 3 WHERE id = 3;       -- back to original",
    )
    .unwrap();
    assert_eq!(
        rows(&c),
        vec![
            row(
                "notes",
                "UPDATE",
                "[2]",
                Some(r#"[2,"b",{"undefined":true}]"#),
                Some(r#"[{"undefined":true},"B",{"undefined":true}]"#)
            ),
            row("notes", "INSERT", "[10]", None, Some(r#"[10,"new",99]"#)),
        ]
    );
}

#[test]
fn existing_rows_are_pending_inserts_of_the_first_commit() {
    let c = memory_with_pdb();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (2, 'b'), (1, 'a');
         SELECT pdb_track('t');",
    )
    .unwrap();
    assert_eq!(
        rows(&c),
        vec![
            row("t", "INSERT", "[1]", None, Some(r#"[1,"a"]"#)),
            row("t", "INSERT", "[2]", None, Some(r#"[2,"b"]"#))
        ]
    );
    // Tracking again is a no-op: nothing is doubled or lost.
    c.execute_batch("SELECT pdb_track('t')").unwrap();
    assert_eq!(rows(&c).len(), 2);
}

#[test]
fn every_storage_class_survives_bit_for_bit() {
    let c = memory_with_pdb();
    c.execute_batch("CREATE TABLE v(id INTEGER PRIMARY KEY, x); SELECT pdb_track('v');")
        .unwrap();
    let big = vec![0x5au8; 1 << 20];
    let values: Vec<rusqlite::types::Value> = vec![
        i64::MIN.into(),
        i64::MAX.into(),
        0i64.into(),
        (-0.0f64).into(),
        f64::INFINITY.into(),
        f64::NEG_INFINITY.into(),
        f64::MIN_POSITIVE.into(),
        String::new().into(),
        "zwölf \u{1F600} \"quoted\"\n".to_string().into(),
        Vec::<u8>::new().into(),
        big.into(),
        rusqlite::types::Value::Null,
    ];
    for (i, v) in values.iter().enumerate() {
        c.execute(
            "INSERT INTO v VALUES (?1, ?2)",
            rusqlite::params![i as i64, v],
        )
        .unwrap();
    }
    let cs = pending(&c);
    // Apply with the real session extension to a fresh table: identical contents,
    // including -0.0 and the empty BLOB (which must not turn into NULL).
    let other = Connection::open_in_memory().unwrap();
    other
        .execute_batch("CREATE TABLE v(id INTEGER PRIMARY KEY, x)")
        .unwrap();
    session_apply(&other, &cs, "abort").unwrap();
    assert_eq!(dump(&other, "v"), dump(&c, "v"));
    let neg_zero: f64 = other
        .query_row("SELECT x FROM v WHERE id = 3", [], |r| r.get(0))
        .unwrap();
    assert!(
        neg_zero == 0.0 && neg_zero.is_sign_negative(),
        "-0.0 kept its sign"
    );
    let (ty, len): (String, i64) = other
        .query_row("SELECT typeof(x), length(x) FROM v WHERE id = 9", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((ty.as_str(), len), ("blob", 0));
    // The JSON view spells the awkward values unambiguously.
    let json: Vec<String> = c
        .prepare(
            "SELECT new FROM pdb_changeset_rows(?1) WHERE pk IN ('[3]','[4]','[5]','[9]','[11]')",
        )
        .unwrap()
        .query_map([&cs], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        json,
        vec![
            r#"[3,-0.0]"#,
            r#"[4,{"real":"inf"}]"#,
            r#"[5,{"real":"-inf"}]"#,
            r#"[9,{"blob":""}]"#,
            r#"[11,null]"#
        ]
    );
}

#[test]
fn composite_keys_without_rowid_and_names_that_need_quoting() {
    let c = memory_with_pdb();
    c.execute_batch(
        r#"CREATE TABLE "my ""odd"" täble"("order" TEXT NOT NULL, "b c" INTEGER NOT NULL, "ü", PRIMARY KEY("b c", "order")) WITHOUT ROWID;
           SELECT pdb_track('my "odd" täble');"#,
    )
    .unwrap();
    let mut session = Session::new(&c).unwrap();
    session.attach(Some(r#"my "odd" täble"#)).unwrap();
    c.execute_batch(
        r#"INSERT INTO "my ""odd"" täble" VALUES ('x', 2, 'v1'), ('y', 1, 'v2'), ('a', 2, 'v3');
           UPDATE "my ""odd"" täble" SET "ü" = 'changed' WHERE "order" = 'y';"#,
    )
    .unwrap();
    let mut theirs = Vec::new();
    session.changeset_strm(&mut theirs).unwrap();
    let ours = pending(&c);
    assert_eq!(ours, canonical(&theirs));
    // PK flags are positions in the PRIMARY KEY: column "order" is 2nd, "b c" 1st.
    let header_end = 1 + 1 + 3;
    assert_eq!(&ours[..header_end], &[b'T', 3, 2, 1, 0]);
    // Rows ordered by PK fields in column order: ("a",2) < ("x",2) < ("y",1) as bytes of "order" first.
    let pks: Vec<String> = c
        .prepare("SELECT pk FROM pdb_changeset_rows(?1)")
        .unwrap()
        .query_map([&ours], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pks, vec![r#"[2,"a"]"#, r#"[2,"x"]"#, r#"[1,"y"]"#]);
}

#[test]
fn writes_from_a_connection_without_the_extension_are_captured_and_roll_back() {
    let dir = std::env::temp_dir().join(format!("pdb-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plain-writer.db");
    let _ = std::fs::remove_file(&path);
    let c = Connection::open(&path).unwrap();
    load(&c);
    c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v); SELECT pdb_track('t');")
        .unwrap();

    let plain = Connection::open(&path).unwrap(); // never loads libpdb
    plain
        .execute_batch("INSERT INTO t VALUES (1, 'kept')")
        .unwrap();
    plain.execute_batch("BEGIN; INSERT INTO t VALUES (2, 'rolled back'); UPDATE t SET v = 'x' WHERE id = 1; ROLLBACK;").unwrap();
    assert_eq!(
        rows(&c),
        vec![row("t", "INSERT", "[1]", None, Some(r#"[1,"kept"]"#))]
    );
    drop((c, plain));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replace_through_a_unique_constraint_is_a_delete() {
    let c = memory_with_pdb();
    c.execute_batch(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
         INSERT INTO u VALUES (1, 'a@x', 'Ann'), (2, 'b@x', 'Bob');
         SELECT pdb_track('u'); SELECT pdb_commit();
         INSERT OR REPLACE INTO u VALUES (3, 'a@x', 'Anna');",
    )
    .unwrap();
    assert_eq!(
        rows(&c),
        vec![
            row("u", "DELETE", "[1]", Some(r#"[1,"a@x","Ann"]"#), None),
            row("u", "INSERT", "[3]", None, Some(r#"[3,"a@x","Anna"]"#)),
        ]
    );
}

#[test]
fn explicit_conflict_clauses_on_the_application_statement_do_not_break_capture() {
    // An outer OR ABORT/OR REPLACE overrides conflict policies inside triggers; capture
    // must not depend on them.
    let c = notes();
    c.execute_batch(
        "INSERT INTO notes VALUES (1, 'a', 1); SELECT pdb_commit();
         UPDATE OR ABORT notes SET n = 2 WHERE id = 1;
         UPDATE OR ABORT notes SET n = 3 WHERE id = 1;
         INSERT OR REPLACE INTO notes VALUES (1, 'a', 4);
         INSERT OR ROLLBACK INTO notes VALUES (2, 'z', 0);",
    )
    .unwrap();
    assert_eq!(
        rows(&c),
        vec![
            row(
                "notes",
                "UPDATE",
                "[1]",
                Some(r#"[1,{"undefined":true},1]"#),
                Some(r#"[{"undefined":true},{"undefined":true},4]"#)
            ),
            row("notes", "INSERT", "[2]", None, Some(r#"[2,"z",0]"#)),
        ]
    );
}

#[test]
fn alter_table_add_column_needs_a_retrack_and_keeps_pending_changes() {
    let c = notes();
    c.execute_batch("INSERT INTO notes VALUES (1, 'a', 1); SELECT pdb_commit(); UPDATE notes SET n = 2 WHERE id = 1;")
        .unwrap();
    c.execute_batch("ALTER TABLE notes ADD COLUMN tag TEXT DEFAULT 'none'")
        .unwrap();
    let err = c
        .query_row("SELECT pdb_commit()", [], |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("changed shape") && err.contains("pdb_track('notes')"),
        "{err}"
    );
    c.execute_batch("SELECT pdb_track('notes'); UPDATE notes SET tag = 'x' WHERE id = 1;")
        .unwrap();
    assert_eq!(
        rows(&c),
        vec![row(
            "notes",
            "UPDATE",
            "[1]",
            Some(r#"[1,{"undefined":true},1,"none"]"#),
            Some(r#"[{"undefined":true},{"undefined":true},2,"x"]"#)
        )]
    );
}

#[test]
fn untracked_tables_and_dropped_tables() {
    let c = notes();
    c.execute_batch("INSERT INTO notes VALUES (1, 'a', 1); SELECT pdb_untrack('notes');")
        .unwrap();
    assert!(pending(&c).is_empty());
    let leftovers: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'pdb_1_%' OR name = 'pdb_shadow_1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0, "untrack removes triggers and shadow table");
    c.execute_batch("INSERT INTO notes VALUES (2, 'b', 2)")
        .unwrap();
    assert!(pending(&c).is_empty());

    c.execute_batch("SELECT pdb_track('notes'); DROP TABLE notes;")
        .unwrap();
    let err = c
        .query_row("SELECT pdb_changeset()", [], |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no longer exists") && err.contains("pdb_untrack('notes')"),
        "{err}"
    );
}

#[test]
fn tables_that_cannot_be_tracked_say_why() {
    let c = memory_with_pdb();
    c.execute_batch(
        "CREATE TABLE nokey(a, b); CREATE VIEW vw AS SELECT 1 AS x;
         CREATE TABLE nullable(k TEXT PRIMARY KEY, v);
         CREATE TABLE gen(id INTEGER PRIMARY KEY, a, b AS (a * 2));",
    )
    .unwrap();
    let err = |t: &str| {
        c.query_row("SELECT pdb_track(?1)", [t], |_| Ok(()))
            .unwrap_err()
            .to_string()
    };
    assert!(err("missing").contains(r#"no such table: "missing""#));
    assert!(err("nokey").contains(r#""nokey" has no PRIMARY KEY"#));
    assert!(err("vw").contains(r#""vw" is a view"#));
    assert!(err("nullable").contains(r#"primary key column "k" allows NULL"#));
    assert!(err("gen").contains(r#"generated column "b""#));
    assert!(err("pdb_tracked").contains("internal table"));
}
