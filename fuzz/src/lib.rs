//! Support for the fuzz targets. They drive pdb-client through its own `Db`
//! implementation for `rusqlite::Connection` (feature `rusqlite`, which needs only a
//! bundled SQLite) and use its value conversions.

pub use pdb_client::db::rusqlite_impl::{from_rusqlite, to_rusqlite};

/// The connection type the targets use.
pub type Conn = rusqlite::Connection;
