//! The client's errors, below every module that returns them: the transport's and the
//! history check's own error types live here too, so that no lower module's error knows
//! HTTP and each crosses into [`Error`] by one `From`.

use std::time::Duration;

use pdb_core::problem::Code;

use crate::cert::{parse_hash, CertError, Hash};
use crate::changeset::{ConcatError, FormatError};
use crate::db::DbError;

/// Everything that can go wrong in the client. Messages name the table, row or argument
/// at fault; the extension prefixes them with [`Error::code`] and the SQL function's name.
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
    /// An argument is wrong, or the call is made where it cannot run (names the
    /// argument or the place, and why).
    #[error("{0}")]
    Argument(String),
    /// The same work already runs in this process (a bootstrap, a worker), or a thread
    /// could not be started: it passes by itself.
    #[error("{0}")]
    Busy(String),
    /// A file of the client's own (the snapshot download) could not be read or written.
    #[error("{0}")]
    Io(String),
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
    /// The witness signs with another key than the one `pdb_open` pinned.
    #[error("{0}")]
    WitnessKey(String),
    /// A table's custom conflict function cannot be called on this connection, failed,
    /// or returned something that is not a row.
    #[error("{0}")]
    Custom(String),
}

/// Folded into the variants of the same names rather than wrapped: `sqlite_code`,
/// `retry` and `code` then judge an SQLite error or a table the same wherever it came
/// from, and the messages stay what they were.
impl From<pdb_core::Error> for Error {
    fn from(e: pdb_core::Error) -> Self {
        match e {
            pdb_core::Error::Db(e) => Error::Db(e),
            pdb_core::Error::Table(m) => Error::Table(m),
        }
    }
}

/// The witness could not be asked (network, TLS, timeout) or answered nonsense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer: the witness is unreachable, or the connection broke.
    #[error("witness unreachable: {0}")]
    Unreachable(String),
    /// An answer that is not what the API documents.
    #[error("unexpected answer from the witness: {0}")]
    Protocol(String),
}

/// A rejection (`application/problem+json`) with its stable code.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// HTTP status.
    pub status: u16,
    /// The problem's `code` (`stale_base`, `conflict`, ...).
    pub code: String,
    /// The problem's `detail`.
    pub detail: String,
    /// The whole problem document (`seq`/`head` on `stale_base` and `conflict`, ...).
    pub body: serde_json::Value,
    /// How long the witness asked to wait before trying again (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Rejection {
    /// The problem code, when this version knows it (`code` keeps any string as sent).
    pub fn code(&self) -> Option<Code> {
        Code::parse(&self.code)
    }

    /// The current head a `stale_base` or `conflict` carries.
    pub fn head(&self) -> Option<(u64, Hash)> {
        let seq = self.body.get("seq")?.as_u64()?;
        let head = parse_hash(self.body.get("head")?.as_str()?)?;
        Some((seq, head))
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.detail)
    }
}

/// Why a run of commits was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A certificate itself is wrong (key, changeset hash, head, signature).
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// A certificate of another group.
    #[error("commit {seq} is certified for group \"{found}\", not \"{expected}\"")]
    Group {
        /// Seq of the commit.
        seq: u64,
        /// Group the certificate names.
        found: String,
        /// Group being pulled.
        expected: String,
    },
    /// The next commit is not the one after the trusted head.
    #[error("expected commit {expected} next, got {found}")]
    Gap {
        /// The seq that must come next.
        expected: u64,
        /// The seq that came.
        found: u64,
    },
    /// The commit does not build on the trusted head: another history.
    #[error("commit {seq} does not follow the trusted head (a different history)")]
    Fork {
        /// Seq of the commit.
        seq: u64,
    },
}

/// What to do after a failed sync ([`Error::retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The cause passes by itself (offline, a timeout, a busy witness or database): try
    /// again after a backoff, or not before the witness's `Retry-After` when it sent one.
    Later(Option<Duration>),
    /// Only the application's own connection gets past it (it has the custom conflict
    /// function): try again once the applied head moved, i.e. the application synced.
    Application,
    /// Trying again changes nothing until the app or the user acts (a new token, a
    /// role, the schema, the pinned key, the group name): stop.
    Never,
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

    /// Whether trying the same sync again can succeed, and when.
    ///
    /// A witness refusal is judged by its code (the README's table), and an unknown code
    /// by its status: 408, 429 and 5xx pass, any other 4xx needs a change. Local errors
    /// pass when SQLite says the database was busy or short of a resource; history or a
    /// snapshot that fails verification would fail the same way again.
    pub fn retry(&self) -> Retry {
        const SQLITE_CORRUPT: i32 = 11;
        const SQLITE_NOTADB: i32 = 26;
        match self {
            Error::Transport(_) => Retry::Later(None),
            Error::Rejected(r) => match r.code() {
                // A witness that goes on rebasing or compacting ahead of this device.
                Some(
                    Code::StaleBase
                    | Code::Conflict
                    | Code::Compacted
                    | Code::Unavailable
                    | Code::RangeNotSatisfiable,
                ) => Retry::Later(r.retry_after),
                Some(
                    Code::SchemaMismatch
                    | Code::Unauthorized
                    | Code::Forbidden
                    | Code::NotFound
                    | Code::InvalidChangeset
                    | Code::IdempotencyConflict
                    | Code::TooLarge
                    | Code::BadRequest
                    | Code::InvalidSchema
                    | Code::InvalidProjection
                    | Code::InvalidQuery
                    | Code::InvalidCursor
                    | Code::ProjectionFailed
                    | Code::CursorMismatch,
                ) => Retry::Never,
                // The client itself never reads projections; these are here so that
                // every code has a class.
                Some(Code::ProjectionBuilding | Code::ProjectionLagging) => {
                    Retry::Later(r.retry_after)
                }
                None if matches!(r.status, 408 | 429 | 500..=599) => Retry::Later(r.retry_after),
                None => Retry::Never,
            },
            Error::Custom(_) => Retry::Application,
            Error::Db(e) if matches!(e.primary(), SQLITE_CORRUPT | SQLITE_NOTADB) => Retry::Never,
            // Busy, locked, I/O, full: the database's condition, not the request's.
            Error::Db(_) => Retry::Later(None),
            // A full disk or a bootstrap running elsewhere passes, as a busy database does.
            Error::Busy(_) | Error::Io(_) => Retry::Later(None),
            Error::Argument(_)
            | Error::Format(_)
            | Error::Concat(_)
            | Error::Table(_)
            | Error::Schema(_)
            | Error::Conflict(_)
            | Error::NotOpen
            | Error::Chain(_)
            | Error::PushCertificate { .. }
            | Error::Diverged(_)
            | Error::Snapshot(_)
            | Error::WitnessKey(_) => Retry::Never,
        }
    }

    /// A short stable name of the error's kind: the witness's problem code when it
    /// refused, else one naming the local cause (`pdb_status()`'s `halted.code`).
    pub fn code(&self) -> &str {
        match self {
            Error::Rejected(r) => &r.code,
            Error::Transport(TransportError::Protocol(_)) => "protocol",
            Error::Transport(_) => "unreachable",
            Error::Db(_) => "database",
            Error::Format(_) | Error::Concat(_) => "bad_changeset",
            Error::Argument(_) => "argument",
            Error::Busy(_) => "busy",
            Error::Io(_) => "io",
            Error::Table(_) => "table",
            Error::Schema(_) => "schema_mismatch",
            Error::Conflict(_) => "apply_conflict",
            Error::NotOpen => "not_open",
            Error::Chain(_) => "unverified_history",
            Error::PushCertificate { .. } => "unverified_certificate",
            Error::Diverged(_) => "diverged",
            Error::Snapshot(_) => "snapshot_refused",
            Error::WitnessKey(_) => "witness_key",
            Error::Custom(_) => "custom_strategy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16, code: &str, retry_after: Option<u64>) -> Error {
        Error::Rejected(Rejection {
            status,
            code: code.into(),
            detail: String::new(),
            body: serde_json::Value::Null,
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    #[test]
    fn every_code_of_the_rejection_table_is_classified() {
        let later = Retry::Later(None);
        for (status, code, want) in [
            (409, "stale_base", later),
            (409, "conflict", later),
            (409, "schema_mismatch", Retry::Never),
            (401, "unauthorized", Retry::Never),
            (403, "forbidden", Retry::Never),
            (422, "invalid_changeset", Retry::Never),
            (422, "idempotency_conflict", Retry::Never),
            (413, "too_large", Retry::Never),
            (404, "not_found", Retry::Never),
            (400, "bad_request", Retry::Never),
            (503, "unavailable", later),
            (410, "compacted", later),
            (416, "range_not_satisfiable", later),
            (400, "invalid_schema", Retry::Never),
        ] {
            let e = refusal(status, code, None);
            assert_eq!(e.retry(), want, "{status} {code}");
            assert_eq!(e.code(), code);
        }
    }

    #[test]
    fn retry_after_is_the_next_delay_and_unknown_codes_go_by_status() {
        let secs = |s| Retry::Later(Some(Duration::from_secs(s)));
        assert_eq!(refusal(429, "rate_limited", Some(7)).retry(), secs(7));
        assert_eq!(refusal(503, "unavailable", Some(3)).retry(), secs(3));
        assert_eq!(
            refusal(429, "rate_limited", None).retry(),
            Retry::Later(None)
        );
        assert_eq!(
            refusal(502, "bad_gateway", None).retry(),
            Retry::Later(None)
        );
        assert_eq!(refusal(408, "timeout", None).retry(), Retry::Later(None));
        assert_eq!(refusal(418, "teapot", None).retry(), Retry::Never);
        // A known permanent code stays permanent whatever the witness adds.
        assert_eq!(refusal(403, "forbidden", Some(1)).retry(), Retry::Never);
    }

    #[test]
    fn local_errors_are_classified_by_what_would_change_them() {
        let db = |code| {
            Error::Db(DbError {
                code,
                message: String::new(),
            })
        };
        let unreachable = Error::Transport(TransportError::Unreachable("refused".into()));
        assert_eq!(unreachable.retry(), Retry::Later(None));
        assert_eq!(unreachable.code(), "unreachable");
        let garbled = Error::Transport(TransportError::Protocol("status 502".into()));
        assert_eq!(garbled.retry(), Retry::Later(None));
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_BUSY_SNAPSHOT, SQLITE_FULL pass.
        for code in [5, 6, 517, 13] {
            assert_eq!(db(code).retry(), Retry::Later(None), "{code}");
        }
        // SQLITE_CORRUPT, SQLITE_NOTADB do not.
        for code in [11, 26] {
            assert_eq!(db(code).retry(), Retry::Never, "{code}");
        }
        assert_eq!(Error::WitnessKey("k".into()).retry(), Retry::Never);
        assert_eq!(Error::WitnessKey("k".into()).code(), "witness_key");
        assert_eq!(Error::Schema("s".into()).retry(), Retry::Never);
        assert_eq!(Error::Schema("s".into()).code(), "schema_mismatch");
        assert_eq!(Error::Custom("f".into()).retry(), Retry::Application);
        assert_eq!(Error::Diverged("d".into()).retry(), Retry::Never);
        assert_eq!(Error::Snapshot("s".into()).retry(), Retry::Never);
        assert_eq!(Error::NotOpen.retry(), Retry::Never);
        assert_eq!(Error::Busy("running".into()).retry(), Retry::Later(None));
        assert_eq!(Error::Io("full".into()).retry(), Retry::Later(None));
        // A wrong call stays wrong: the worker would repeat it.
        assert_eq!(Error::Argument("arg 1".into()).retry(), Retry::Never);
    }
}
