//! The PersonalDB client runtime.
//!
//! Everything the `libpdb` extension does lives here, written against the small [`Db`]
//! trait so that it runs (and is tested) on a rusqlite connection as well as on the
//! host connection the extension is handed. This crate contains no `unsafe` code.
//!
//! - [`changeset`], [`cert`], [`state`], [`snapshot`], [`schema`], [`value`],
//!   [`problem`]: re-exported from `pdb-core`, shared with the witness.
//! - [`capture`]: `pdb_track`, the shadow tables and triggers, and the pending changeset.
//! - [`queue`]: `pdb_commit` and the upload queue.
//! - [`apply`]: applying a changeset with `sqlite3changeset_apply` semantics.
//! - [`group_ddl`]: the group's DDL from the witness, checked before a device runs it.
//! - [`history`]: checking pulled certificates as a chain, and the local state digest.
//! - [`transport`]: the witness's HTTP API from a device's side.
//! - [`sync`]: `pdb_open`, push, pull, rebase with conflict strategies, status.
//! - [`rows`]: whole rows by key, as rebase compares, records and writes them.
#![forbid(unsafe_code)]

pub mod apply;
pub mod capture;
pub mod db;
mod error;
pub mod group_ddl;
pub mod history;
pub mod queue;
pub mod rows;
pub mod sync;
pub mod transport;

// What the witness shares moved to pdb-core; its old paths here keep every user
// (the extension, tests, benchmarks, fuzz targets) compiling unchanged.
pub use pdb_core::{cert, changeset, problem, schema, snapshot, state, value};

pub use db::{Db, DbError, Stmt};
pub use error::{ChainError, Error, Rejection, Retry, TransportError};
pub use value::{Value, ValueRef};

/// The version reported by `pdb_version()`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The client-side DDL, created on first use (see `sql/client.sql`).
pub const CLIENT_SQL: &str = include_str!("../../sql/client.sql");
