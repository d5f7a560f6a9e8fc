//! A device for sync tests: its own SQLite file with the real `libpdb` loaded, opened
//! on a witness group, driven through the SQL surface only.

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::Value as Json;

use crate::witness::WitnessProc;

/// One device: a database file and the connection the application uses.
pub struct Device {
    /// The application's connection, with `libpdb` loaded.
    pub conn: Connection,
    /// The database file.
    pub path: PathBuf,
}

impl Device {
    /// Opens (or creates) `dir/name.db`, runs `ddl`, tracks `tables` and opens the group.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: &Path,
        name: &str,
        ddl: &str,
        tables: &[&str],
        url: &str,
        group: &str,
        token: &str,
        key: &[u8; 32],
    ) -> Device {
        let path = dir.join(format!("{name}.db"));
        let conn = open(&path);
        conn.execute_batch(ddl).expect("device DDL");
        for t in tables {
            let _: String = conn
                .query_row("SELECT pdb_track(?1)", [t], |r| r.get(0))
                .expect("pdb_track");
        }
        let _: String = conn
            .query_row(
                "SELECT pdb_open(?1, ?2, ?3, ?4)",
                (url, group, token, pdb_client::cert::hex(key)),
                |r| r.get(0),
            )
            .expect("pdb_open");
        Device { conn, path }
    }

    /// A device on witness `w`'s group `group`, with a write token.
    pub fn on(
        w: &WitnessProc,
        dir: &Path,
        name: &str,
        ddl: &str,
        tables: &[&str],
        group: &str,
    ) -> Device {
        let token = w.token(name, group, "write", 3600);
        Device::new(dir, name, ddl, tables, &w.url, group, &token, &w.key)
    }

    /// Runs SQL with no result.
    pub fn sql(&self, sql: &str) {
        self.conn
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// One value of a query.
    pub fn value(&self, sql: &str) -> Value {
        self.conn
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A JSON-returning function call, parsed; `Err` carries SQLite's message.
    pub fn try_json(&self, sql: &str) -> Result<Json, String> {
        self.conn
            .query_row(sql, [], |r| r.get::<_, String>(0))
            .map(|s| serde_json::from_str(&s).expect("function returned JSON"))
            .map_err(|e| e.to_string())
    }

    /// A JSON-returning function call that must succeed.
    pub fn json(&self, sql: &str) -> Json {
        self.try_json(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `pdb_commit()`: the local commit id, or `None` when nothing changed.
    pub fn commit(&self) -> Option<i64> {
        self.conn
            .query_row("SELECT pdb_commit()", [], |r| r.get(0))
            .expect("pdb_commit")
    }

    /// `pdb_sync()`'s summary.
    pub fn sync(&self) -> Json {
        self.json("SELECT pdb_sync()")
    }

    /// A consistent copy of the database as it is now (`VACUUM INTO path`), for
    /// [`Device::crash_back_to`].
    pub fn copy_to(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
        self.conn
            .execute("VACUUM INTO ?1", [path.to_str().expect("UTF-8 path")])
            .expect("VACUUM INTO");
    }

    /// Puts the database back to a copy, as if the process had died having written
    /// nothing since: the connection is closed, the file replaced, and `libpdb` loaded
    /// into a new connection.
    pub fn crash_back_to(&mut self, copy: &Path) {
        // Closing the only connection checkpoints the WAL and removes it.
        drop(std::mem::replace(
            &mut self.conn,
            Connection::open_in_memory().expect("placeholder connection"),
        ));
        for suffix in ["-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        std::fs::rename(copy, &self.path).expect("restore the copy");
        self.conn = open(&self.path);
    }

    /// `pdb_status()`.
    pub fn status(&self) -> Json {
        self.json("SELECT pdb_status()")
    }

    /// Rows of a query, each as a list of values.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        let mut stmt = self
            .conn
            .prepare(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Every row of `table`, exactly (see [`crate::dump`]).
    pub fn dump(&self, table: &str) -> Vec<Vec<Vec<u8>>> {
        crate::dump(&self.conn, table)
    }

    /// The `pdb_conflicts` rows as JSON objects, oldest first.
    pub fn conflicts(&self) -> Vec<Json> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT json_object('id', id, 'table', table_name, 'pk', json(pk), 'base', json(base), \
                 'local', json(local), 'remote', json(remote), 'strategy', strategy, 'outcome', json(outcome), \
                 'status', status, 'reason', reason, 'local_id', local_id) FROM pdb_conflicts ORDER BY id",
            )
            .expect("conflicts query");
        stmt.query_map([], |r| r.get::<_, String>(0))
            .expect("conflicts")
            .map(|s| serde_json::from_str(&s.expect("row")).expect("json"))
            .collect()
    }
}

/// A device's database file opened as an application would: WAL, a busy timeout, and
/// `libpdb` loaded.
fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open device database");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn.pragma_update(None, "journal_mode", "wal")
        .expect("wal");
    crate::load(&conn);
    conn
}
