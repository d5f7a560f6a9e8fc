//! A group's DDL is outside input: against a real `pdb-witness`, an admin token sends
//! the DDL an attacker would (ATTACH the history, write files elsewhere, TEMP triggers,
//! VACUUM INTO). Each is `400 invalid_schema` naming the statement, and nothing outside
//! the group changes: the history keeps its commits across a restart, no file appears
//! outside the data directory, no table is added to `witness.db`, no group is made.

use std::path::{Path, PathBuf};

use pdb_tests::witness::{record, Client, Commit, Reply, WitnessClient, WitnessProc};
use rusqlite::{Connection, OpenFlags};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdb-witness-ddl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn commit(c: &Client, id: i64, key: &str) -> Reply {
    let ((seq, head), schema) = c.head("g");
    let cs = record(
        DDL,
        "",
        &format!("INSERT INTO notes VALUES ({id}, 'n{id}')"),
    );
    c.commit(
        "g",
        &Commit {
            changeset: &cs,
            base_seq: seq,
            base_head: head,
            key,
            schema,
            policy: None,
        },
    )
}

/// The history as `witness.db` holds it: (seq, head) of every commit, and its tables.
fn history_file(data: &Path) -> (Vec<(i64, Vec<u8>)>, Vec<String>) {
    let conn =
        Connection::open_with_flags(data.join("witness.db"), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let commits = conn
        .prepare("SELECT seq, head FROM commits ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let tables = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    (commits, tables)
}

#[test]
fn hostile_group_ddl_is_refused_and_changes_nothing() {
    let dir = temp_dir("hostile");
    let outside = temp_dir("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let mut w = WitnessProc::start(&dir);
    let c = w.admin_client();
    assert_eq!(c.create_group("g", DDL).status, 201);
    for i in 1..=3 {
        assert_eq!(commit(&c, i, &format!("k{i}")).status, 201);
    }
    let before = history_file(&w.data);
    assert_eq!(before.0.len(), 3);

    let history = w.data.join("witness.db");
    let history = history.display();
    let elsewhere = outside.join("x.db");
    let elsewhere = elsewhere.display();
    let vacuumed = outside.join("vacuumed.db");
    let vacuumed = vacuumed.display();
    let attacks = [
        (
            format!(
                "ATTACH DATABASE '{history}' AS w; DELETE FROM w.commits; \
                 CREATE TABLE t(id INTEGER PRIMARY KEY)"
            ),
            1,
            "ATTACH",
        ),
        (
            format!(
                "CREATE TABLE t(id INTEGER PRIMARY KEY); ATTACH DATABASE '{elsewhere}' AS e; \
                 CREATE TABLE e.t(x); INSERT INTO e.t VALUES (1)"
            ),
            2,
            "ATTACH",
        ),
        (
            format!("CREATE TABLE t(id INTEGER PRIMARY KEY); VACUUM INTO '{vacuumed}'"),
            2,
            "not CREATE TABLE or CREATE INDEX",
        ),
        (
            format!(
                "ATTACH '{history}' AS w; CREATE TABLE w.x(id INTEGER PRIMARY KEY); \
                 CREATE TABLE t(id INTEGER PRIMARY KEY)"
            ),
            1,
            "ATTACH",
        ),
        (
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v); \
             CREATE TEMP TRIGGER no AFTER INSERT ON t BEGIN SELECT RAISE(ABORT, 'no'); END"
                .to_string(),
            2,
            "TEMP",
        ),
        (
            "CREATE TABLE t(id INTEGER PRIMARY KEY); PRAGMA journal_mode = OFF".to_string(),
            2,
            "PRAGMA",
        ),
        (
            "CREATE TABLE t(id INTEGER PRIMARY KEY); CREATE TEMP TABLE u(id INTEGER PRIMARY KEY)"
                .to_string(),
            2,
            "TEMP",
        ),
    ];
    for (ddl, statement, why) in &attacks {
        let r = c.create_group("x", ddl);
        assert_eq!(r.status, 400, "{ddl}: {:?}", r.body);
        assert_eq!(r.content_type, "application/problem+json");
        assert_eq!(r.code(), Some("invalid_schema"), "{ddl}: {:?}", r.body);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("statement {statement} (")) && detail.contains(why),
            "{ddl}: {detail}"
        );
        // The same DDL again is the same answer: a client told to fix its call, not
        // to retry, cannot loop on it.
        assert_eq!(c.create_group("x", ddl).code(), Some("invalid_schema"));
    }
    assert_eq!(c.info("x").status, 404, "no group was made");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "no file outside the data directory"
    );
    assert_eq!(history_file(&w.data), before, "the history is untouched");

    // The group still takes commits, and after a restart the history goes on from
    // seq 3 with the same heads: no fork.
    assert_eq!(commit(&c, 4, "k4").body["seq"], 4);
    w.stop();
    let w = WitnessProc::start(&dir);
    let c = w.admin_client();
    assert_eq!(commit(&c, 5, "k5").body["seq"], 5);
    let after = history_file(&w.data);
    assert_eq!(
        after.0[..3],
        before.0[..],
        "the first three commits are the same"
    );
    assert_eq!(after.0.len(), 5);
    assert_eq!(after.1, before.1, "no table was added to witness.db");
    std::fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn a_schema_of_tables_and_indexes_is_accepted() {
    let w = WitnessProc::start(&temp_dir("accepted"));
    let c = w.admin_client();
    let ddl = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT CHECK (length(body) < 100));\n\
               CREATE INDEX notes_body ON notes(lower(body));\n\
               CREATE TABLE main.tags(note INTEGER, tag TEXT, PRIMARY KEY(note, tag)) WITHOUT ROWID;\n\
               CREATE UNIQUE INDEX IF NOT EXISTS tags_tag ON tags(tag, note) WHERE tag <> '';";
    let r = c.create_group("ok", ddl);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["ddl"], ddl);
}
