//! The little of SQLite that devices and the witness need, as a trait: prepared
//! statements with bound values, executed or iterated. The extension implements it over
//! the host's connection; the `rusqlite` feature implements it for
//! `rusqlite::Connection`.

use crate::value::ValueRef;

/// An error reported by SQLite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    /// Extended result code (`SQLITE_CONSTRAINT_PRIMARYKEY`, ...).
    pub code: i32,
    /// SQLite's message, with the failing SQL where it helps.
    pub message: String,
}

impl DbError {
    /// The primary result code (the low byte of the extended one).
    pub fn primary(&self) -> i32 {
        self.code & 0xff
    }
}

/// `SQLITE_CONSTRAINT`.
pub const SQLITE_CONSTRAINT: i32 = 19;

/// A database connection.
pub trait Db {
    /// A prepared statement borrowed from this connection.
    type Stmt<'c>: Stmt
    where
        Self: 'c;

    /// Prepares one SQL statement.
    fn prepare(&self, sql: &str) -> Result<Self::Stmt<'_>, DbError>;

    /// Runs SQL text of one or more statements that take no parameters.
    fn execute_batch(&self, sql: &str) -> Result<(), DbError>;

    /// Whether the connection is outside any explicit transaction.
    fn is_autocommit(&self) -> bool;

    /// Prepares and runs one statement with parameters; returns the rows changed.
    fn execute(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<usize, DbError> {
        let mut stmt = self.prepare(sql)?;
        stmt.bind_all(params)?;
        stmt.execute()
    }

    /// Runs a query and returns its first column of its first row, if any.
    fn query_value(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
    ) -> Result<Option<crate::Value>, DbError> {
        let mut stmt = self.prepare(sql)?;
        stmt.bind_all(params)?;
        let mut out = None;
        stmt.query::<DbError>(&mut |row| {
            if out.is_none() {
                out = Some(row[0].to_owned());
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// A prepared statement.
pub trait Stmt {
    /// Binds parameter `index` (1-based).
    fn bind(&mut self, index: usize, value: ValueRef<'_>) -> Result<(), DbError>;

    /// Runs the statement to completion and resets it; returns the rows changed.
    fn execute(&mut self) -> Result<usize, DbError>;

    /// Runs the statement, calling `f` with each row's values, then resets it. Generic
    /// in the error so that `f` fails with its caller's own error type, which need only
    /// hold SQLite's.
    fn query<E: From<DbError>>(
        &mut self,
        f: &mut dyn FnMut(&[ValueRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E>;

    /// Binds `params` to parameters 1..=n.
    fn bind_all(&mut self, params: &[ValueRef<'_>]) -> Result<(), DbError> {
        for (i, v) in params.iter().enumerate() {
            self.bind(i + 1, *v)?;
        }
        Ok(())
    }
}

/// `Db` for `rusqlite::Connection`, and value conversions between the two crates.
#[cfg(feature = "rusqlite")]
pub mod rusqlite_impl {
    use super::{Db, DbError, Stmt};
    use crate::value::ValueRef;
    use rusqlite::types::{ToSqlOutput, ValueRef as RValueRef};

    impl From<rusqlite::Error> for DbError {
        fn from(e: rusqlite::Error) -> Self {
            match &e {
                rusqlite::Error::SqliteFailure(f, msg) => DbError {
                    code: f.extended_code,
                    message: msg.clone().unwrap_or_else(|| e.to_string()),
                },
                _ => DbError {
                    code: 1,
                    message: e.to_string(),
                },
            }
        }
    }

    /// A client value as rusqlite's, for binding.
    pub fn to_rusqlite(v: ValueRef<'_>) -> RValueRef<'_> {
        match v {
            ValueRef::Null => RValueRef::Null,
            ValueRef::Integer(i) => RValueRef::Integer(i),
            ValueRef::Real(r) => RValueRef::Real(r),
            ValueRef::Text(t) => RValueRef::Text(t),
            ValueRef::Blob(b) => RValueRef::Blob(b),
        }
    }

    /// A value rusqlite read, as the client's.
    pub fn from_rusqlite(v: RValueRef<'_>) -> ValueRef<'_> {
        match v {
            RValueRef::Null => ValueRef::Null,
            RValueRef::Integer(i) => ValueRef::Integer(i),
            RValueRef::Real(r) => ValueRef::Real(r),
            RValueRef::Text(t) => ValueRef::Text(t),
            RValueRef::Blob(b) => ValueRef::Blob(b),
        }
    }

    impl Db for rusqlite::Connection {
        type Stmt<'c> = rusqlite::CachedStatement<'c>;

        fn prepare(&self, sql: &str) -> Result<Self::Stmt<'_>, DbError> {
            Ok(self.prepare_cached(sql)?)
        }

        fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
            Ok(rusqlite::Connection::execute_batch(self, sql)?)
        }

        fn is_autocommit(&self) -> bool {
            rusqlite::Connection::is_autocommit(self)
        }
    }

    impl Stmt for rusqlite::CachedStatement<'_> {
        fn bind(&mut self, index: usize, value: ValueRef<'_>) -> Result<(), DbError> {
            Ok(self.raw_bind_parameter(index, ToSqlOutput::Borrowed(to_rusqlite(value)))?)
        }

        fn execute(&mut self) -> Result<usize, DbError> {
            Ok(self.raw_execute()?)
        }

        fn query<E: From<DbError>>(
            &mut self,
            f: &mut dyn FnMut(&[ValueRef<'_>]) -> Result<(), E>,
        ) -> Result<(), E> {
            let n = self.column_count();
            let mut rows = self.raw_query();
            while let Some(row) = rows.next().map_err(DbError::from)? {
                let values: Vec<ValueRef<'_>> = (0..n)
                    .map(|i| from_rusqlite(row.get_ref_unwrap(i)))
                    .collect();
                f(&values)?;
            }
            Ok(())
        }
    }
}
