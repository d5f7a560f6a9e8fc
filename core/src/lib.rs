//! What a PersonalDB device and the witness agree on, byte for byte.
//!
//! No HTTP and no runtime here: the encodings and checks of DESIGN §4 and §5 that both
//! sides compute, so that they are written once. Everything is written against the
//! small [`Db`] trait, implemented for `rusqlite::Connection` with the `rusqlite`
//! feature and, in the extension, over the host connection.
//!
//! - [`changeset`]: the session extension's changeset format (read, write, invert, concat).
//! - [`value`]: the record value encoding.
//! - [`cert`]: heads and certificates; [`state`]: the state digest.
//! - [`snapshot`]: signed snapshot manifests.
//! - [`schema`]: table introspection and the schema hash.
//! - [`db`]: the `Db` trait.
//! - [`problem`]: the witness's stable rejection codes.
#![forbid(unsafe_code)]

pub mod cert;
pub mod changeset;
pub mod db;
mod error;
pub mod problem;
pub mod schema;
pub mod snapshot;
pub mod state;
pub mod value;
mod varint;

pub use db::{Db, DbError, Stmt};
pub use error::Error;
pub use problem::Code;
pub use value::{Value, ValueRef};
