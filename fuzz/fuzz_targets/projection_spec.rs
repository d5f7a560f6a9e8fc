//! Fuzz target: a projection spec as `PUT /v1/groups/{g}/projections/{name}` hands it
//! to the witness (`Spec::from_json`, then `plan` against the group's tables), and the
//! SQL the witness writes for an accepted one.
//!
//! What must hold: nothing panics; a refusal names a field; an accepted spec compiles
//! to SQL that SQLite runs: its tables and triggers are created, its backfill fills
//! them from rows of every type, writes to the source table fire its triggers without
//! an error of the SQL itself (a sum past 64 bits, or a value too big, may still be
//! refused: those are the data's), and its recomputation prepares. An error such as
//! "no such column" or "syntax error" would mean the spec's text reached SQL in a
//! form the parser did not vouch for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdb_witness::projection::compile::{compile, recompute_sql};
use pdb_witness::projection::spec::Spec;
use rusqlite::Connection;

const DDL: &str = "CREATE TABLE events(id INTEGER PRIMARY KEY, title TEXT, starts_at TEXT, duration INTEGER, owner);\
                   CREATE TABLE notes(id TEXT PRIMARY KEY, title TEXT, body TEXT, score REAL) WITHOUT ROWID;";

const ROWS: &str = "INSERT INTO events VALUES (1, 'a', '2026-11-01', 10, 'ann'), (2, NULL, 'now', NULL, x'00ff'), \
                    (3, 'Ünï', '2026-12-24T19:00', 9.5, 3), (4, '{\"a\": [1, 2]}', '', -7, NULL);\
                    INSERT INTO notes VALUES ('n1', 'milk', 'eggs and milk', 1.5), ('n2', NULL, x'01', NULL);";

/// Errors that say the SQL itself was wrong, not the data it met.
fn sql_fault(e: &rusqlite::Error) -> bool {
    let m = e.to_string();
    [
        "syntax error",
        "no such",
        "ambiguous",
        "wrong number of arguments",
        "misuse",
        "unrecognized token",
        "malformed",
    ]
    .iter()
    .any(|s| m.contains(s))
}

fuzz_target!(|data: &[u8]| {
    let db = Connection::open_in_memory().expect("memory database");
    db.execute_batch(DDL).expect("ddl");
    let tables: Vec<_> = ["events", "notes"]
        .iter()
        .map(|t| pdb_client::schema::table_info(&db, t).expect("table"))
        .collect();
    let spec = match Spec::from_json(data) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.reason.is_empty());
            return;
        }
    };
    // The canonical text is a spec too, and the same one.
    let again = Spec::from_json(spec.canonical().as_bytes()).expect("canonical text parses");
    assert_eq!(again, spec);
    let plan = match spec.plan(&tables) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.field.starts_with('/') || e.field.is_empty(), "{e:?}");
            return;
        }
    };
    db.execute_batch(ROWS).expect("rows");
    let c = compile("p", 1, &plan);
    for s in c.create.iter().chain(&c.triggers) {
        db.execute_batch(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    let t = pdb_client::schema::quote(&plan.table.name);
    let mut rest = c.backfill.iter();
    if let Some(whole) = &c.whole {
        let first = rest.next().expect("a chunked backfill statement");
        // As the builder does: rowid steps where the table has rowids, else at once.
        let has_rowid = db.prepare(&format!("SELECT rowid FROM main.{t} LIMIT 0")).is_ok();
        let r = if has_rowid {
            db.execute(first, [0i64, 1_000_000]).map(|_| ())
        } else {
            db.execute_batch(whole)
        };
        if let Err(e) = r {
            assert!(!sql_fault(&e), "{first}: {e}");
        }
    }
    for s in rest {
        if let Err(e) = db.execute_batch(s) {
            assert!(!sql_fault(&e), "{s}: {e}");
        }
    }
    for w in [
        format!("UPDATE {t} SET title = upper(coalesce(title, 'x'))"),
        format!("DELETE FROM {t} WHERE CAST(id AS TEXT) LIKE '%1'"),
        format!("INSERT INTO {t} (id, title) VALUES (99, 'late')"),
        format!("DELETE FROM {t}"),
    ] {
        if let Err(e) = db.execute_batch(&w) {
            assert!(!sql_fault(&e), "{w}: {e}");
        }
    }
    let sql = recompute_sql(&plan);
    db.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
});
