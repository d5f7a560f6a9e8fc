use crate::changeset::{ConcatError, FormatError};
use crate::db::DbError;

/// Everything that can go wrong in the client. Messages name the table, row or argument
/// at fault; the extension prefixes them with the SQL function's name.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite reported an error.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A changeset argument is malformed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Two changesets cannot be concatenated.
    #[error(transparent)]
    Concat(#[from] ConcatError),
    /// An argument is wrong (names the argument and why).
    #[error("{0}")]
    Argument(String),
    /// A table cannot be tracked, or its tracked shape no longer matches.
    #[error("{0}")]
    Table(String),
    /// A changeset does not fit the database it is applied to.
    #[error("{0}")]
    Schema(String),
    /// Applying a changeset hit a conflict that the policy says to abort on.
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    /// The SQLite result code this error should be reported with.
    ///
    /// Only `SQLITE_ERROR` and `SQLITE_CONSTRAINT` are reported for PersonalDB's own
    /// errors. Codes with side effects are avoided on purpose: a function that returns
    /// `SQLITE_CORRUPT` makes SQLite refuse further writes in the caller's transaction,
    /// and `SQLITE_SCHEMA` makes `sqlite3_step` re-prepare and re-run the statement.
    pub fn sqlite_code(&self) -> i32 {
        const SQLITE_ERROR: i32 = 1;
        const SQLITE_CORRUPT: i32 = 11;
        const SQLITE_SCHEMA: i32 = 17;
        const SQLITE_CONSTRAINT: i32 = 19;
        match self {
            Error::Db(e) if matches!(e.primary(), SQLITE_SCHEMA | SQLITE_CORRUPT) => SQLITE_ERROR,
            Error::Db(e) => e.code,
            Error::Conflict(_) => SQLITE_CONSTRAINT,
            _ => SQLITE_ERROR,
        }
    }
}
