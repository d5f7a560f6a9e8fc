//! Support for the fuzz targets: a [`pdb_client::Db`] over a rusqlite connection.
//!
//! pdb-client has its own implementation behind its `rusqlite` feature, but that feature
//! brings the workspace's rusqlite with `session`, whose bindings are generated at build
//! time by bindgen. That needs libclang on the machine and minutes of build time, which
//! a quick fuzz run on a fresh machine cannot afford; this one needs only `bundled`.

use std::ops::Deref;

use pdb_client::{Db, DbError, Error, Stmt, ValueRef};
use rusqlite::types::{ToSqlOutput, ValueRef as RValueRef};
use rusqlite::{CachedStatement, Connection};

/// A rusqlite connection that pdb-client can drive.
pub struct Conn(pub Connection);

/// A prepared statement of a [`Conn`].
pub struct ConnStmt<'c>(CachedStatement<'c>);

impl Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.0
    }
}

fn db_error(e: rusqlite::Error) -> DbError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => DbError {
            code: f.extended_code,
            message: msg.clone().unwrap_or_else(|| e.to_string()),
        },
        // SQLITE_ERROR: what the client treats as a plain failure.
        _ => DbError {
            code: 1,
            message: e.to_string(),
        },
    }
}

impl Db for Conn {
    type Stmt<'c> = ConnStmt<'c>;

    fn prepare(&self, sql: &str) -> Result<ConnStmt<'_>, DbError> {
        // Cached, as the client's own implementation is: apply prepares per table.
        self.0.prepare_cached(sql).map(ConnStmt).map_err(db_error)
    }

    fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
        self.0.execute_batch(sql).map_err(db_error)
    }

    fn is_autocommit(&self) -> bool {
        self.0.is_autocommit()
    }
}

impl Stmt for ConnStmt<'_> {
    fn bind(&mut self, index: usize, value: ValueRef<'_>) -> Result<(), DbError> {
        self.0
            .raw_bind_parameter(index, ToSqlOutput::Borrowed(to_rusqlite(value)))
            .map_err(db_error)
    }

    fn execute(&mut self) -> Result<usize, DbError> {
        self.0.raw_execute().map_err(db_error)
    }

    fn query(
        &mut self,
        f: &mut dyn FnMut(&[ValueRef<'_>]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let n = self.0.column_count();
        let mut rows = self.0.raw_query();
        while let Some(row) = rows.next().map_err(db_error)? {
            let mut values = Vec::with_capacity(n);
            for i in 0..n {
                values.push(from_rusqlite(row.get_ref(i).map_err(db_error)?));
            }
            f(&values)?;
        }
        Ok(())
    }
}

/// Converts a client value into rusqlite's type, for binding.
pub fn to_rusqlite(v: ValueRef<'_>) -> RValueRef<'_> {
    match v {
        ValueRef::Null => RValueRef::Null,
        ValueRef::Integer(i) => RValueRef::Integer(i),
        ValueRef::Real(r) => RValueRef::Real(r),
        ValueRef::Text(t) => RValueRef::Text(t),
        ValueRef::Blob(b) => RValueRef::Blob(b),
    }
}

/// Converts a value read by rusqlite into the client's type.
pub fn from_rusqlite(v: RValueRef<'_>) -> ValueRef<'_> {
    match v {
        RValueRef::Null => ValueRef::Null,
        RValueRef::Integer(i) => ValueRef::Integer(i),
        RValueRef::Real(r) => ValueRef::Real(r),
        RValueRef::Text(t) => ValueRef::Text(t),
        RValueRef::Blob(b) => ValueRef::Blob(b),
    }
}
