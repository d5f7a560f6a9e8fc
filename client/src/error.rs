use crate::changeset::{ConcatError, FormatError};
use crate::db::DbError;
use crate::history::ChainError;
use crate::transport::{Rejection, TransportError};

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
    /// Sync was asked for before `pdb_open()` said where to.
    #[error(
        "this database has no witness yet: call pdb_open(url, group, token, witness_key) first"
    )]
    NotOpen,
    /// The witness could not be reached, or answered outside the protocol.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The witness refused a request (its problem code and detail).
    #[error("the witness refused: {0}")]
    Rejected(Rejection),
    /// Pulled history failed verification; nothing of it was applied.
    #[error("pulled history refused, nothing applied: {0}")]
    Chain(#[from] ChainError),
    /// The witness answered a push with a certificate that fails verification; the
    /// commit stays queued, sent again (same key) by the next sync.
    #[error("the certificate for pushed commit {id} (key \"{key}\") refused: {why}; the commit stays queued")]
    PushCertificate {
        /// The local commit's id (`pdb_upload_queue.id`).
        id: i64,
        /// Its idempotency key.
        key: String,
        /// What is wrong with the certificate.
        why: String,
    },
    /// The device's tables do not match what the certified history says they are.
    #[error("{0}")]
    Diverged(String),
    /// A snapshot failed a check; nothing of it was installed.
    #[error("snapshot refused: {0}")]
    Snapshot(String),
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
