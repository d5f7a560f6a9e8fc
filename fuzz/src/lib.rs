//! Support for the fuzz targets. They drive pdb-client through its own `Db`
//! implementation for `rusqlite::Connection` (feature `rusqlite`, which needs only a
//! bundled SQLite) and use its value conversions.
//!
//! The harness the database targets share: a template database built once and copied
//! back by page after an input changed the working copy, and dumps of every row that
//! show, compared before and after, whether an input changed anything.

use std::fmt::Display;

use pdb_client::schema::quote;
use pdb_client::Error;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Row, Statement};

pub use pdb_client::db::rusqlite_impl::{from_rusqlite, to_rusqlite};

/// The connection type the targets use.
pub type Conn = rusqlite::Connection;

/// Rows encoded by [`dump`]: bytes, so that equality is exact value for value (-0.0, types).
pub type Dump = Vec<u8>;

const SQLITE_ERROR: i32 = 1;
const SQLITE_MISUSE: i32 = 21;
const SQLITE_RANGE: i32 = 25;

/// An in-memory database whose statement cache fits the code under test and the dumps together.
pub fn open() -> Conn {
    let db = Conn::open_in_memory().expect("open");
    // The default 16 is fewer than the code under test and the dump use between them,
    // and preparing anew would be most of the time spent per input.
    db.set_prepared_statement_cache_capacity(256);
    db
}

/// Copies a template over `to`: far cheaper per input than building the database again.
pub fn restore(from: &Conn, to: &mut Conn) {
    // -1: every page in one step; nothing else uses these connections meanwhile.
    let step = Backup::new(from, to).and_then(|b| b.step(-1));
    assert!(
        matches!(step, Ok(StepResult::Done)),
        "restore a template: {step:?}"
    );
}

/// The tables a target's dumps cover, which differ with what the code under test may touch.
pub enum Tables<'a> {
    /// Just these tables (unqualified), for comparing user data alone.
    Only(&'a [&'a str]),
    /// The schema, temp's too if `temp`, then every table of `schema` (`None`: unqualified).
    All {
        /// Qualifies every name, where an attached database could otherwise be read.
        schema: Option<&'a str>,
        /// Whether to include temp's schema, where the code under test could create temp objects.
        temp: bool,
    },
}

/// One query per table, each ordering by all columns, so that equal content dumps equal.
pub fn dump_queries(db: &Conn, tables: Tables<'_>) -> Vec<String> {
    let from: Vec<String> = match tables {
        Tables::Only(names) => names.iter().map(|n| quote(n)).collect(),
        Tables::All { schema, temp } => {
            let prefix = schema.map_or(String::new(), |s| format!("{}.", quote(s)));
            let names: Vec<String> = db
                .prepare(&format!(
                    "SELECT name FROM {prefix}sqlite_schema WHERE type = 'table' ORDER BY name"
                ))
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .expect("list tables");
            let mut from = vec![format!("{prefix}sqlite_schema")];
            if temp {
                from.push("temp.sqlite_schema".into());
            }
            from.extend(names.iter().map(|n| format!("{prefix}{}", quote(n))));
            from
        }
    };
    from.iter()
        .map(|from| {
            let n = db
                .prepare(&format!("SELECT * FROM {from}"))
                .expect("prepare")
                .column_count();
            // A total order: every table the targets dump has a primary key.
            let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
            format!("SELECT * FROM {from} ORDER BY {}", order.join(", "))
        })
        .collect()
}

/// Every row of `queries`, each table's after a 0xff byte (no value starts with one).
pub fn dump(db: &Conn, queries: &[String]) -> Dump {
    let mut out = Vec::new();
    for sql in queries {
        out.push(0xff);
        let mut stmt = db.prepare_cached(sql).expect("prepare dump");
        let mut rows = stmt.query([]).expect("dump");
        while let Some(row) = rows.next().expect("dump") {
            encode_row(row, &mut out).expect("column");
        }
    }
    out
}

/// Appends a row in record format, the encoding the state digest reads values in.
pub fn encode_row(row: &Row<'_>, out: &mut Vec<u8>) -> rusqlite::Result<()> {
    let stmt: &Statement<'_> = row.as_ref();
    for i in 0..stmt.column_count() {
        from_rusqlite(row.get_ref(i)?).encode(out);
    }
    Ok(())
}

/// The rows of `queries` as text, so that a failed comparison of dumps shows what differs.
pub fn show(db: &Conn, queries: &[String]) -> String {
    let mut out = String::new();
    for sql in queries {
        out.push_str(sql);
        out.push('\n');
        out.push_str(&show_statement(
            &mut db.prepare_cached(sql).expect("prepare dump"),
        ));
    }
    out
}

/// A statement's rows as text, one a line, for failure messages.
pub fn show_statement(stmt: &mut Statement<'_>) -> String {
    let n = stmt.column_count();
    let mut out = String::new();
    let mut rows = stmt.query([]).expect("rows");
    while let Some(row) = rows.next().expect("row") {
        let vals: Vec<String> = (0..n)
            .map(|i| format!("{:?}", from_rusqlite(row.get_ref(i).expect("column"))))
            .collect();
        out.push_str(&format!("  {}\n", vals.join(", ")));
    }
    out
}

/// A pragma's value, for the settings the code under test must leave as it found them.
pub fn pragma(db: &Conn, name: &str) -> i64 {
    db.prepare_cached(&format!("PRAGMA {name}"))
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .expect("pragma")
}

/// The code where SQLite refused a statement: a bug whatever the input, pdb-client writes its SQL.
pub fn refused_statement(e: &Error) -> Option<i32> {
    match e {
        Error::Db(e) if [SQLITE_ERROR, SQLITE_MISUSE, SQLITE_RANGE].contains(&e.primary()) => {
            Some(e.primary())
        }
        _ => None,
    }
}

/// `PDB_FUZZ_STATS` as 0 (unset), 1 (counts every 10,000 inputs) or 2 (`each`: every input).
pub fn stats_level() -> u8 {
    match std::env::var("PDB_FUZZ_STATS").as_deref() {
        Ok("each") => 2,
        Ok(_) => 1,
        Err(_) => 0,
    }
}

/// An error's first `len` characters with digits as `#`, so that stats count kinds, not rows.
pub fn error_kind(e: &dyn Display, len: usize) -> String {
    e.to_string()
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(len)
        .collect()
}
