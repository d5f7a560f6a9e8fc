//! The schema guard: the only way a group's DDL reaches SQLite (DESIGN §7.7).
//!
//! A group's DDL arrives in a request, so it is outside input. It may create tables and
//! indexes in `main` and nothing else: no ATTACH, VACUUM, PRAGMA, TEMP objects, triggers,
//! views, virtual tables, data statements or transactions. SQLite enforces it, not a
//! parser of ours: the DDL is prepared one statement at a time under an authorizer that
//! denies every action but those, and a statement runs only once it is known to be
//! exactly one CREATE TABLE or CREATE INDEX. Statements that run nothing (VACUUM has no
//! authorizer action) are refused because they create nothing.

use std::sync::{Arc, Mutex};

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Batch, Connection};

/// Why a group's DDL was refused, naming the statement at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// A statement does something a group's schema may not (or does not parse).
    #[error("statement {index} ({text}): {reason}")]
    Refused {
        /// 1-based position of the statement in the DDL.
        index: usize,
        /// The start of the statement, as written.
        text: String,
        /// What it does that a schema may not.
        reason: String,
    },
    /// The connection the DDL was to run on has another database attached.
    #[error("the schema guard runs DDL only on a connection with nothing attached: {0}")]
    Attached(String),
}

/// What the authorizer saw while one statement was prepared.
#[derive(Default)]
struct Seen {
    /// The objects the statement creates in `main`: `table t` or `index i`.
    creates: Vec<String>,
    /// The first action denied, if any.
    denied: Option<String>,
}

/// The schema tables SQLite itself writes while creating a table or an index.
fn is_schema_table(name: &str) -> bool {
    name.eq_ignore_ascii_case("sqlite_master") || name.eq_ignore_ascii_case("sqlite_schema")
}

/// The authorizer's decision for one action of a statement being prepared.
fn decide(seen: &mut Seen, ctx: &AuthContext<'_>) -> Authorization {
    let in_main = ctx.database_name == Some("main");
    let denied = match ctx.action {
        AuthAction::CreateTable { table_name } if in_main => {
            seen.creates.push(format!("table {table_name}"));
            None
        }
        AuthAction::CreateIndex { index_name, .. } if in_main => {
            // A table's UNIQUE and PRIMARY KEY constraints come as indexes of its own.
            if !index_name.starts_with("sqlite_autoindex_") {
                seen.creates.push(format!("index {index_name}"));
            }
            None
        }
        // SQLite records a new table or index by inserting into (and, for a table,
        // updating) its schema table; CHECK constraints and index expressions read the
        // columns they name and may call (deterministic) functions.
        AuthAction::Insert { table_name } | AuthAction::Update { table_name, .. }
            if in_main && is_schema_table(table_name) =>
        {
            None
        }
        AuthAction::Insert { table_name } | AuthAction::Update { table_name, .. }
            if is_schema_table(table_name) || table_name.eq_ignore_ascii_case("sqlite_temp_master") =>
        {
            Some(format!(
                "objects outside schema main are not allowed (TEMP objects included; database {:?})",
                ctx.database_name.unwrap_or("")
            ))
        }
        AuthAction::Delete { table_name } if is_schema_table(table_name) => {
            Some("dropping objects is not allowed".into())
        }
        AuthAction::Read { .. } if in_main => None,
        // Creating an index fills it, which SQLite authorizes as a REINDEX of it.
        AuthAction::Reindex { index_name }
            if in_main && seen.creates.iter().any(|c| *c == format!("index {index_name}")) =>
        {
            None
        }
        AuthAction::Function { .. } => None,
        AuthAction::CreateTable { table_name } | AuthAction::CreateIndex { table_name, .. } => {
            Some(format!(
                "\"{table_name}\" is not in schema main (database {:?})",
                ctx.database_name.unwrap_or("")
            ))
        }
        AuthAction::Attach { .. } => Some("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Some("DETACH is not allowed".into()),
        AuthAction::Pragma { pragma_name, .. } => {
            Some(format!("PRAGMA {pragma_name} is not allowed"))
        }
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => Some("TEMP objects are not allowed".into()),
        AuthAction::CreateTrigger { .. } => Some("triggers are not allowed".into()),
        AuthAction::CreateView { .. } => Some("views are not allowed".into()),
        AuthAction::CreateVtable { .. } => Some("virtual tables are not allowed".into()),
        AuthAction::Select | AuthAction::Recursive => {
            Some("queries are not allowed (CREATE TABLE ... AS SELECT included)".into())
        }
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => {
            Some(format!("writing rows (of \"{table_name}\") is not allowed"))
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Some("transaction control is not allowed".into())
        }
        _ => Some(format!("{:?} is not allowed", ctx.action)),
    };
    match denied {
        None => Authorization::Allow,
        Some(why) => {
            seen.denied.get_or_insert(why);
            Authorization::Deny
        }
    }
}

/// The first `max` characters of `s` on one line, for naming a statement.
fn excerpt(s: &str, max: usize) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!("{}…", one_line.chars().take(max).collect::<String>())
    }
}

/// Runs `ddl` on `conn` statement by statement, each only after SQLite's authorizer
/// showed it to be exactly one CREATE TABLE or CREATE INDEX in `main`. Statements
/// before a refused one have run: callers run this inside a transaction or on a
/// scratch database they discard.
pub fn run(conn: &Connection, ddl: &str) -> Result<(), GuardError> {
    let attached: Vec<String> = conn
        .prepare("SELECT name FROM pragma_database_list WHERE name NOT IN ('main', 'temp')")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| GuardError::Attached(e.to_string()))?;
    if !attached.is_empty() {
        return Err(GuardError::Attached(attached.join(", ")));
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let hook_seen = Arc::clone(&seen);
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        decide(
            &mut hook_seen.lock().unwrap_or_else(|e| e.into_inner()),
            &ctx,
        )
    }));
    let result = run_statements(conn, ddl, &seen);
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    result
}

fn run_statements(conn: &Connection, ddl: &str, seen: &Mutex<Seen>) -> Result<(), GuardError> {
    let take = || std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let mut batch = Batch::new(conn, ddl);
    // Where the statement being prepared starts, found by skipping the text of those
    // before it (`Batch` does not say), only to name it in a refusal.
    let mut offset = 0;
    let mut index = 0;
    loop {
        index += 1;
        take();
        let refuse = |offset: usize, reason: String| GuardError::Refused {
            index,
            text: excerpt(ddl.get(offset..).unwrap_or(""), 80),
            reason,
        };
        let next = batch.next();
        let seen_now = take();
        let mut stmt = match next {
            Ok(Some(stmt)) => stmt,
            Ok(None) => return Ok(()),
            Err(e) => {
                let why = seen_now
                    .denied
                    .unwrap_or_else(|| format!("does not parse: {e}"));
                return Err(refuse(offset, why));
            }
        };
        let sql = stmt.expanded_sql().unwrap_or_default();
        let start = ddl[offset..]
            .find(sql.trim())
            .map_or(offset, |i| offset + i);
        offset = start + sql.trim().len();
        // EXPLAIN compiles the statement it explains (so the authorizer saw a CREATE)
        // but only lists its program: a statement that returns rows is not DDL.
        if stmt.column_count() != 0 {
            return Err(refuse(start, "EXPLAIN is not allowed".into()));
        }
        match seen_now.creates.as_slice() {
            [_] => {}
            [] => {
                return Err(refuse(
                    start,
                    "not CREATE TABLE or CREATE INDEX; a group's schema holds only those".into(),
                ))
            }
            more => return Err(refuse(start, format!("creates {}", more.join(", ")))),
        }
        stmt.raw_execute()
            .map_err(|e| refuse(start, format!("does not run: {e}")))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(ddl: &str) -> String {
        let conn = Connection::open_in_memory().unwrap();
        run(&conn, ddl).unwrap_err().to_string()
    }

    #[test]
    fn tables_and_indexes_run() {
        let conn = Connection::open_in_memory().unwrap();
        run(
            &conn,
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT CHECK (length(a) < 10), b);
             CREATE UNIQUE INDEX ta ON t(a) WHERE b IS NOT NULL;
             CREATE INDEX tb ON t(lower(a));
             CREATE TABLE IF NOT EXISTS main.u(k TEXT PRIMARY KEY, v) WITHOUT ROWID;",
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            n, 4,
            "two tables, two indexes (u's key is the table itself)"
        );
    }

    #[test]
    fn everything_else_is_refused_naming_the_statement() {
        for (ddl, index, why) in [
            ("CREATE TABLE t(x PRIMARY KEY); ATTACH ':memory:' AS w", 2, "ATTACH"),
            ("VACUUM INTO '/tmp/pdb-guard-vacuum.db'", 1, "not CREATE TABLE"),
            ("CREATE TABLE t(x PRIMARY KEY); PRAGMA writable_schema = 1", 2, "PRAGMA"),
            ("CREATE TEMP TABLE t(x PRIMARY KEY)", 1, "TEMP"),
            ("CREATE TABLE temp.t(x PRIMARY KEY)", 1, "TEMP"),
            ("CREATE TABLE t(x PRIMARY KEY); CREATE TEMP TRIGGER g BEFORE INSERT ON t BEGIN SELECT RAISE(ABORT, 'no'); END", 2, "TEMP"),
            ("CREATE TABLE t(x PRIMARY KEY); CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM t; END", 2, "trigger"),
            ("CREATE TABLE t(x PRIMARY KEY); CREATE VIEW v AS SELECT * FROM t", 2, "view"),
            ("CREATE VIRTUAL TABLE v USING fts5(x)", 1, "virtual"),
            ("CREATE TABLE t AS SELECT 1 AS x", 1, "queries"),
            ("CREATE TABLE t(x PRIMARY KEY); INSERT INTO t VALUES (1)", 2, "writing rows"),
            ("CREATE TABLE t(x PRIMARY KEY); DELETE FROM t", 2, "writing rows"),
            ("BEGIN; CREATE TABLE t(x PRIMARY KEY)", 1, "transaction"),
            ("SAVEPOINT a", 1, "transaction"),
            ("CREATE TABLE t(x PRIMARY KEY); DROP TABLE t", 2, "dropping"),
            ("CREATE TABLE t(x PRIMARY KEY); ALTER TABLE t ADD COLUMN y", 2, "AlterTable"),
            ("SELECT 1", 1, "queries"),
            ("EXPLAIN CREATE TABLE t(x PRIMARY KEY)", 1, "EXPLAIN"),
            ("CREATE TABLE t(x PRIMARY KEY); ANALYZE", 2, "Analyze"),
            ("CREATE TABLE t(x PRIMARY KEY); REINDEX", 2, "Reindex"),
            ("CREATE TABLE", 1, "does not parse"),
        ] {
            let msg = refusal(ddl);
            assert!(msg.starts_with(&format!("statement {index} (")), "{ddl}: {msg}");
            assert!(msg.contains(why), "{ddl}: {msg}");
        }
        assert!(!std::path::Path::new("/tmp/pdb-guard-vacuum.db").exists());
    }

    #[test]
    fn a_refused_statement_writes_no_file() {
        let dir = std::env::temp_dir().join(format!("pdb-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let outside = dir.join("outside.db");
        let ddl = format!(
            "ATTACH DATABASE '{0}' AS e; CREATE TABLE e.t(x PRIMARY KEY); VACUUM INTO '{0}'",
            outside.display()
        );
        let msg = refusal(&ddl);
        assert!(msg.contains("ATTACH"), "{msg}");
        assert!(!outside.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_connection_with_an_attached_database_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("ATTACH ':memory:' AS other").unwrap();
        let e = run(&conn, "CREATE TABLE t(x PRIMARY KEY)").unwrap_err();
        assert_eq!(e, GuardError::Attached("other".into()));
    }

    #[test]
    fn the_authorizer_is_removed_afterwards() {
        let conn = Connection::open_in_memory().unwrap();
        run(&conn, "CREATE TABLE t(x PRIMARY KEY)").unwrap();
        conn.execute_batch("INSERT INTO t VALUES (1); PRAGMA user_version = 3")
            .unwrap();
    }
}
