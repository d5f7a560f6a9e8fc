//! A group's replica: its tables at the head, maintained by applying every accepted
//! changeset with the real session extension (`sqlite3changeset_apply`), plus the
//! bookkeeping of `sql/replica.sql`. Also where a changeset is checked against the
//! group's schema, since the session extension silently skips tables it cannot match.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use pdb_core::cert::{next_head, Hash};
use pdb_core::changeset::{self, Op};
use pdb_core::db::rusqlite_impl::{from_rusqlite, to_rusqlite};
use pdb_core::schema::{self, affinity, kept_as_is, quote, Affinity, TableInfo};
use pdb_core::state::StateVector;
use pdb_core::value::{decode_field, Value};
use rusqlite::session::{ConflictAction, ConflictType};
use rusqlite::{params, Connection};
use serde_json::json;

use crate::log::StoredCommit;
use crate::schema_guard;

/// The DDL of the replica's bookkeeping tables.
pub const REPLICA_SQL: &str = include_str!("../../sql/replica.sql");

/// Why a changeset was not applied.
#[derive(Debug)]
pub enum Refusal {
    /// Not a changeset of this group's tables (the message names table and column).
    Invalid(String),
    /// It does not apply cleanly; one JSON object per conflicting row.
    Conflict(Vec<serde_json::Value>),
    /// Storage failed.
    Storage(rusqlite::Error),
}

impl From<rusqlite::Error> for Refusal {
    fn from(e: rusqlite::Error) -> Self {
        Refusal::Storage(e)
    }
}

/// Why a group's DDL was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The DDL is refused by the schema guard, does not run, or creates something a
    /// group cannot hold (the message names the statement or object).
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error("replica storage: {0}")]
    Storage(#[from] rusqlite::Error),
}

/// The rows a changeset touches, each once.
#[derive(Debug, Default)]
pub struct Touched {
    rows: Vec<TouchedRow>,
}

#[derive(Debug)]
struct TouchedRow {
    table: usize,
    key: Vec<Value>,
    /// Only INSERTs name this row.
    insert_only: bool,
    /// The row as SQLite will store it, known without reading it back: set when every
    /// change to its table is an INSERT (so no other change can reach this row under
    /// another spelling of its key) and no value is changed by its column's affinity.
    stored: Option<Vec<Value>>,
}

struct Table {
    info: TableInfo,
    select_by_key: String,
    affinities: Vec<Affinity>,
}

/// A group's replica database.
pub struct Replica {
    conn: Connection,
    tables: Vec<Table>,
    by_name: HashMap<String, usize>,
    schema_hash: Hash,
}

/// The last applied commit: seq, head and state vector.
#[derive(Debug, Clone)]
pub struct Position {
    /// Seq of the last applied commit (0 = none).
    pub seq: u64,
    /// Its head (the genesis head when seq is 0).
    pub head: Hash,
    /// The state vector after it.
    pub state: StateVector,
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // The history store is durable; a replica that loses its last transactions on
    // power loss is caught up from it at start-up, so NORMAL is enough here.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Foreign-key actions would change rows no changeset names; the witness keeps the
    // group's declared keys but does not enforce them (ARCHITECTURE.md).
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.pragma_update(None, "cache_size", -1024)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// The position recorded in the replica attached to `conn` as `schema` (an identifier
/// the caller chose).
pub fn read_position(conn: &Connection, schema: &str) -> rusqlite::Result<Position> {
    conn.query_row(
        &format!("SELECT seq, head, state FROM {schema}.pdb_replica WHERE id = 1"),
        [],
        |r| {
            let head: Vec<u8> = r.get(1)?;
            let state: Vec<u8> = r.get(2)?;
            Ok(Position {
                seq: r.get::<_, i64>(0)? as u64,
                head: head.try_into().unwrap_or([0; 32]),
                state: StateVector::from_bytes(&state).unwrap_or_default(),
            })
        },
    )
}

/// Runs `ddl` in `conn` and reads back the tables it made, refusing anything but
/// trackable tables and their indexes.
fn install_schema(conn: &Connection, ddl: &str) -> Result<Vec<TableInfo>, SchemaError> {
    schema_guard::run(conn, ddl).map_err(|e| SchemaError::Invalid(e.to_string()))?;
    let objects: Vec<(String, String)> = {
        let mut stmt = conn.prepare(
            "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut tables = Vec::new();
    for (kind, name) in objects {
        match kind.as_str() {
            "table" => tables.push(
                schema::table_info(conn, &name).map_err(|e| SchemaError::Invalid(e.to_string()))?,
            ),
            "index" => {}
            other => {
                return Err(SchemaError::Invalid(format!(
                    "the DDL creates {other} \"{name}\"; a group holds only tables and indexes"
                )))
            }
        }
    }
    if tables.is_empty() {
        return Err(SchemaError::Invalid("the DDL creates no table".into()));
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tables)
}

/// Checks `ddl` in a scratch in-memory database: the tables and schema hash it yields.
pub fn check_ddl(ddl: &str) -> Result<(Vec<TableInfo>, Hash), SchemaError> {
    let conn = Connection::open_in_memory()?;
    let tables = install_schema(&conn, ddl)?;
    let hash = schema::schema_hash(&tables);
    Ok((tables, hash))
}

impl Replica {
    /// Creates a new replica at `path` (which must not exist) with the group's `ddl`.
    pub fn create(path: &Path, ddl: &str, genesis: Hash) -> Result<Replica, SchemaError> {
        let conn = open_conn(path)?;
        conn.execute_batch("BEGIN")?;
        let tables = install_schema(&conn, ddl)?;
        conn.execute_batch(REPLICA_SQL)?;
        conn.execute(
            "INSERT INTO pdb_replica(id, seq, head, state) VALUES (1, 0, ?1, ?2)",
            params![&genesis[..], StateVector::new().to_bytes()],
        )?;
        conn.execute_batch("COMMIT")?;
        Ok(Replica::from_parts(conn, tables))
    }

    /// Opens an existing replica; `None` if the file is missing or was never finished.
    pub fn open(path: &Path) -> Result<Option<Replica>, SchemaError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = open_conn(path)?;
        let finished: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'pdb_replica'",
            [],
            |r| r.get(0),
        )?;
        if !finished {
            return Ok(None);
        }
        let names: Vec<String> = {
            let mut stmt = conn.prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'pdb\\_%' ESCAPE '\\' \
                 ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut tables = Vec::new();
        for name in names {
            tables.push(
                schema::table_info(&conn, &name)
                    .map_err(|e| SchemaError::Invalid(e.to_string()))?,
            );
        }
        Ok(Some(Replica::from_parts(conn, tables)))
    }

    fn from_parts(conn: Connection, infos: Vec<TableInfo>) -> Replica {
        let schema_hash = schema::schema_hash(&infos);
        let tables: Vec<Table> = infos
            .into_iter()
            .map(|info| {
                let cols: Vec<String> = info.columns.iter().map(|c| quote(&c.name)).collect();
                let cond: Vec<String> = info
                    .pk_columns()
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| format!("{} IS ?{}", quote(&info.columns[c].name), i + 1))
                    .collect();
                let select_by_key = format!(
                    "SELECT {} FROM main.{} WHERE {}",
                    cols.join(", "),
                    quote(&info.name),
                    cond.join(" AND ")
                );
                Table {
                    affinities: info
                        .columns
                        .iter()
                        .map(|c| affinity(&c.decl_type))
                        .collect(),
                    info,
                    select_by_key,
                }
            })
            .collect();
        let by_name = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.info.name.clone(), i))
            .collect();
        Replica {
            conn,
            tables,
            by_name,
            schema_hash,
        }
    }

    /// The replica's connection, for a projection builder, whose derived tables live
    /// in the same file as its mirror of the group's tables.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The schema hash of the replica's tables.
    pub fn schema_hash(&self) -> Hash {
        self.schema_hash
    }

    /// The replica's tables, in name order.
    pub fn tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.tables.iter().map(|t| &t.info)
    }

    /// The last applied commit.
    pub fn position(&self) -> Result<Position, rusqlite::Error> {
        read_position(&self.conn, "main")
    }

    /// Records the last applied commit (inside the batch's transaction).
    pub fn set_position(&self, pos: &Position) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE pdb_replica SET seq = ?1, head = ?2, state = ?3 WHERE id = 1",
        )?;
        stmt.execute(params![pos.seq as i64, &pos.head[..], pos.state.to_bytes()])?;
        Ok(())
    }

    /// Runs a statement without parameters, prepared once per connection.
    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    /// Opens the write transaction a batch of commits runs in.
    pub fn begin(&self) -> rusqlite::Result<()> {
        self.exec("BEGIN IMMEDIATE")
    }

    /// Commits the batch's transaction.
    pub fn commit(&self) -> rusqlite::Result<()> {
        self.exec("COMMIT")
    }

    /// Undoes the batch's transaction.
    pub fn rollback(&self) -> rusqlite::Result<()> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.exec("ROLLBACK")
    }

    /// Parses `cs` and checks it names only this group's tables, with their column
    /// count and primary key, and a defined, non-NULL key in every change.
    pub fn validate(&self, cs: &[u8]) -> Result<Touched, Refusal> {
        let parsed = changeset::parse(cs).map_err(|e| Refusal::Invalid(e.to_string()))?;
        let mut touched = Touched::default();
        let mut seen = HashMap::new();
        for (header, changes) in &parsed {
            let Some(&ti) = self.by_name.get(header.name) else {
                return Err(Refusal::Invalid(format!(
                    "unknown table \"{}\": the group has {}",
                    header.name,
                    self.tables
                        .iter()
                        .map(|t| format!("\"{}\"", t.info.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            let info = &self.tables[ti].info;
            if header.n_col() != info.columns.len() {
                return Err(Refusal::Invalid(format!(
                    "table \"{}\": the changeset has {} columns, the group's table has {}",
                    info.name,
                    header.n_col(),
                    info.columns.len()
                )));
            }
            if header.pk != info.pk_flags().as_slice() {
                return Err(Refusal::Invalid(format!(
                    "table \"{}\": the changeset's primary key columns differ from the group's",
                    info.name
                )));
            }
            let pk = info.pk_columns();
            let all_inserts = changes.iter().all(|c| c.op == Op::Insert);
            let affinities = &self.tables[ti].affinities;
            for change in changes {
                let rec = change.key_record();
                let mut key = Vec::with_capacity(pk.len());
                for &c in &pk {
                    match decode_field(rec[c]) {
                        // A rowid alias holds only integers; SQLite would refuse anything
                        // else mid-apply (SQLITE_MISMATCH), so refuse it here by name.
                        Some(v) if info.integer_pk && !matches!(v, pdb_core::ValueRef::Integer(_)) => {
                            return Err(Refusal::Invalid(format!(
                                "table \"{}\": key column \"{}\" is an INTEGER PRIMARY KEY, but a change gives it a non-integer value",
                                info.name, info.columns[c].name
                            )))
                        }
                        Some(v) if v != pdb_core::ValueRef::Null => key.push(v.to_owned()),
                        _ => {
                            return Err(Refusal::Invalid(format!(
                                "table \"{}\": a change has no value for key column \"{}\"",
                                info.name, info.columns[c].name
                            )))
                        }
                    }
                }
                let insert = change.op == Op::Insert;
                let stored = if all_inserts {
                    let vals: Option<Vec<Value>> = change
                        .new
                        .iter()
                        .zip(affinities)
                        .map(|(f, a)| {
                            decode_field(f)
                                .map(|v| v.to_owned())
                                .filter(|v| kept_as_is(*a, v))
                        })
                        .collect();
                    vals
                } else {
                    None
                };
                match seen.entry((ti, change.key(header.pk))) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(touched.rows.len());
                        touched.rows.push(TouchedRow {
                            table: ti,
                            key,
                            insert_only: insert,
                            stored,
                        });
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let row = &mut touched.rows[*o.get()];
                        row.insert_only &= insert;
                        row.stored = None;
                    }
                }
            }
            if changes.is_empty() {
                return Err(Refusal::Invalid(format!(
                    "table \"{}\": header without changes",
                    info.name
                )));
            }
        }
        if touched.rows.is_empty() {
            return Err(Refusal::Invalid("the changeset is empty".into()));
        }
        Ok(touched)
    }

    fn read_row(&self, table: usize, key: &[Value]) -> rusqlite::Result<Option<Vec<Value>>> {
        let t = &self.tables[table];
        let mut stmt = self.conn.prepare_cached(&t.select_by_key)?;
        for (i, v) in key.iter().enumerate() {
            stmt.raw_bind_parameter(
                i + 1,
                rusqlite::types::ToSqlOutput::Borrowed(to_rusqlite(v.as_ref())),
            )?;
        }
        let mut rows = stmt.raw_query();
        match rows.next()? {
            Some(row) => {
                let mut vals = Vec::with_capacity(t.info.columns.len());
                for i in 0..t.info.columns.len() {
                    vals.push(from_rusqlite(row.get_ref(i)?).to_owned());
                }
                Ok(Some(vals))
            }
            None => Ok(None),
        }
    }

    /// Applies a validated changeset with `sqlite3changeset_apply`, aborting on the
    /// first conflict of any kind (nothing is left applied then), and moves `state`
    /// by the rows it changed, read back from the tables themselves (so values are as
    /// SQLite stored them, after column affinity).
    pub fn apply(
        &self,
        cs: &[u8],
        touched: &Touched,
        state: &mut StateVector,
    ) -> Result<(), Refusal> {
        self.exec("SAVEPOINT pdb_apply")?;
        let result = self.apply_inner(cs, touched, state);
        if result.is_err() {
            self.exec("ROLLBACK TO pdb_apply")?;
        }
        self.exec("RELEASE pdb_apply")?;
        result
    }

    fn apply_inner(
        &self,
        cs: &[u8],
        touched: &Touched,
        state: &mut StateVector,
    ) -> Result<(), Refusal> {
        let mut before = HashMap::new();
        // A row named only by INSERTs did not exist if the apply succeeds (an INSERT
        // of an existing key is a conflict, which aborts), so it needs no read.
        for r in touched.rows.iter().filter(|r| !r.insert_only) {
            if let Some(row) = self.read_row(r.table, &r.key)? {
                before.insert(self.identity(r.table, &row), (r.table, row));
            }
        }
        let conflicts: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = conflicts.clone();
        let mut input: &[u8] = cs;
        let applied =
            self.conn
                .apply_strm(&mut input, None::<fn(&str) -> bool>, move |kind, item| {
                    let row = describe_conflict(&kind, &item);
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(row);
                    ConflictAction::SQLITE_CHANGESET_ABORT
                });
        if let Err(e) = applied {
            let found = std::mem::take(&mut *conflicts.lock().unwrap_or_else(|e| e.into_inner()));
            if !found.is_empty() {
                return Err(Refusal::Conflict(found));
            }
            if is_storage_failure(&e) {
                return Err(Refusal::Storage(e));
            }
            // Anything else SQLite refuses mid-apply is the changeset's fault.
            return Err(Refusal::Invalid(format!(
                "SQLite refused the changeset: {e}"
            )));
        }
        let mut after = HashMap::new();
        for r in &touched.rows {
            let row = match &r.stored {
                Some(values) => Some(values.clone()),
                None => self.read_row(r.table, &r.key)?,
            };
            if let Some(row) = row {
                after.insert(self.identity(r.table, &row), (r.table, row));
            }
        }
        // Unchanged rows cancel out; "unchanged" is bit for bit, as the state digest
        // reads values: -0.0 replacing 0.0 is a change there, though the two compare equal.
        let identical = |a: &[Value], b: &[Value]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.as_ref().identical(y.as_ref()))
        };
        for (id, (t, old)) in &before {
            if !after.get(id).is_some_and(|(_, new)| identical(new, old)) {
                let vals: Vec<_> = old.iter().map(Value::as_ref).collect();
                state.remove_row(&self.tables[*t].info.name, &vals);
            }
        }
        for (id, (t, new)) in &after {
            if !before.get(id).is_some_and(|(_, old)| identical(old, new)) {
                let vals: Vec<_> = new.iter().map(Value::as_ref).collect();
                state.add_row(&self.tables[*t].info.name, &vals);
            }
        }
        Ok(())
    }

    /// Which row `row` is, as SQLite sees it: its table and its key as stored. Two
    /// spellings of a key in a changeset (INTEGER 9 and TEXT '9' for an INTEGER column)
    /// find the same row, and the state must count that row once.
    fn identity(&self, table: usize, row: &[Value]) -> (usize, Vec<u8>) {
        let mut key = Vec::new();
        for c in self.tables[table].info.pk_columns() {
            row[c].as_ref().encode(&mut key);
        }
        (table, key)
    }

    /// Replaces the rows of every table with those of the same tables in the database
    /// file `src` (a snapshot), in a transaction of its own (SQLite detaches a file only
    /// outside one). Same schema, so SQLite copies the records as they are.
    pub fn load_tables(&self, src: &Path) -> rusqlite::Result<()> {
        self.conn
            .execute("ATTACH ?1 AS pdb_src", [src.to_string_lossy()])?;
        let copied = (|| {
            self.begin()?;
            for t in &self.tables {
                let name = quote(&t.info.name);
                self.conn.execute_batch(&format!(
                    "DELETE FROM main.{name}; INSERT INTO main.{name} SELECT * FROM pdb_src.{name};"
                ))?;
            }
            self.commit()
        })();
        if copied.is_err() {
            let _ = self.rollback();
        }
        let detached = self.conn.execute_batch("DETACH pdb_src");
        copied.and(detached)
    }

    /// Replaces the rows of every table with those of the replica file `src` (the
    /// group's own, while its sequencer goes on), and takes over its position, read in
    /// the same read transaction as the rows. The caller checks the state.
    pub fn copy_replica(&self, src: &Path) -> rusqlite::Result<Position> {
        self.conn
            .execute("ATTACH ?1 AS pdb_src", [src.to_string_lossy()])?;
        let copied = (|| {
            self.begin()?;
            let pos = read_position(&self.conn, "pdb_src")?;
            for t in &self.tables {
                let name = quote(&t.info.name);
                self.conn.execute_batch(&format!(
                    "DELETE FROM main.{name}; INSERT INTO main.{name} SELECT * FROM pdb_src.{name};"
                ))?;
            }
            self.set_position(&pos)?;
            self.commit()?;
            Ok(pos)
        })();
        if copied.is_err() {
            let _ = self.rollback();
        }
        let detached = self.conn.execute_batch("DETACH pdb_src");
        copied.and_then(|pos| detached.map(|()| pos))
    }

    /// The state vector recomputed from every row of the replica's tables.
    pub fn full_state(&self) -> Result<StateVector, pdb_core::Error> {
        let tables: Vec<TableInfo> = self.tables().cloned().collect();
        pdb_core::state::state_of(&self.conn, &tables)
    }
}

/// Errors that say the witness's storage failed, as opposed to SQLite refusing what the
/// changeset asks (a type mismatch, a value too big, ...).
fn is_storage_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::SystemIoFailure
                | C::DiskFull
                | C::OutOfMemory
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::DatabaseCorrupt
                | C::NotADatabase
                | C::CannotOpen
                | C::ReadOnly
                | C::FileLockingProtocolFailed
        ) | None
    )
}

fn describe_conflict(
    kind: &ConflictType,
    item: &rusqlite::session::ChangesetItem,
) -> serde_json::Value {
    let reason = match kind {
        ConflictType::SQLITE_CHANGESET_DATA => "data",
        ConflictType::SQLITE_CHANGESET_NOTFOUND => "notfound",
        ConflictType::SQLITE_CHANGESET_CONFLICT => "conflict",
        ConflictType::SQLITE_CHANGESET_CONSTRAINT => "constraint",
        ConflictType::SQLITE_CHANGESET_FOREIGN_KEY => "foreign_key",
        _ => "unknown",
    };
    let Ok(op) = item.op() else {
        return json!({ "reason": reason });
    };
    let code = op.code();
    let (name, n) = (op.table_name().to_string(), op.number_of_columns());
    let mut key = Vec::new();
    if let Ok(pk) = item.pk() {
        for (i, flag) in pk.iter().enumerate().take(n.max(0) as usize) {
            if *flag == 0 {
                continue;
            }
            let v = if code == rusqlite::hooks::Action::SQLITE_INSERT {
                item.new_value(i)
            } else {
                item.old_value(i)
            };
            if let Ok(v) = v {
                let mut s = String::new();
                pdb_core::changeset::value_json(&mut s, from_rusqlite(v));
                key.push(serde_json::from_str::<serde_json::Value>(&s).unwrap_or_default());
            }
        }
    }
    let op_name = match code {
        rusqlite::hooks::Action::SQLITE_INSERT => Op::Insert.name(),
        rusqlite::hooks::Action::SQLITE_UPDATE => Op::Update.name(),
        _ => Op::Delete.name(),
    };
    json!({ "table": name, "op": op_name, "key": key, "reason": reason })
}

/// Applies certified `commits` to `replica` from `pos`, checking that each one yields
/// its certified head and state (start-up catch-up, restores of past heads).
pub fn replay(
    replica: &Replica,
    pos: &mut Position,
    commits: &[StoredCommit],
) -> Result<(), String> {
    for c in commits {
        let seq = pos.seq + 1;
        if c.cert.seq != seq || c.cert.prev != pos.head {
            return Err(format!("commit {} does not follow {}", c.cert.seq, pos.seq));
        }
        let touched = replica
            .validate(&c.changeset)
            .map_err(|e| format!("commit {seq}: {e:?}"))?;
        replica
            .apply(&c.changeset, &touched, &mut pos.state)
            .map_err(|e| format!("commit {seq} does not apply: {e:?}"))?;
        let head = next_head(&pos.head, seq, &c.cert.changeset_hash);
        if head != c.cert.head || pos.state.digest() != c.cert.state {
            return Err(format!(
                "commit {seq} does not reproduce its certified head and state"
            ));
        }
        pos.seq = seq;
        pos.head = head;
    }
    Ok(())
}
