//! `pdb-witness`: orders each group's commits into one signed history (DESIGN §5).
//!
//! - [`witness`]: the core — data directory, groups, start-up recovery.
//! - [`group`]: one group's sequencer, where a commit is checked, applied and certified.
//! - [`replica`]: a group's tables, kept at the head with the session extension.
//! - [`schema_guard`]: the only way a group's DDL reaches SQLite.
//! - [`snapshot`]: database images at a head, the object store, retention.
//! - [`projection`]: server-side views over the history, built off the commit path.
//! - [`log`]: the history as the sequencer uses it, a trait any store can implement.
//! - [`store`]: the durable history (`witness.db`) and its group-commit writer.
//! - [`http`], [`request`], [`auth`], [`problem`]: the HTTP API over the core.
//! - [`limits`]: connections, idle and request time a client may hold.
//! - [`keys`], [`backup`], [`metrics`]: operations.

pub mod auth;
pub mod backup;
pub mod group;
pub mod http;
pub mod keys;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod problem;
pub mod projection;
pub mod replica;
pub mod request;
pub mod schema_guard;
pub mod snapshot;
pub mod store;
pub mod witness;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
