//! Support for the fuzz targets: conversions between rusqlite's and the client's values.
//! The targets drive pdb-client through its own `Db` implementation for
//! `rusqlite::Connection` (feature `rusqlite`, which needs only a bundled SQLite).

use pdb_client::ValueRef;
use rusqlite::types::ValueRef as RValueRef;

/// The connection type the targets use.
pub type Conn = rusqlite::Connection;

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
