//! Projection definitions, kept durably in the history store (`witness.db`, table
//! `projections`) so that they survive the loss of the projection files, which are
//! only a cache, and travel with a backup.

use rusqlite::{params, OptionalExtension};

use crate::store::{Store, StoreError};

/// A projection's current definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// Its version: an id never reused in this witness.
    pub version: u64,
    /// Its name within the group.
    pub name: String,
    /// The canonical JSON of its spec.
    pub spec: String,
    /// When it was defined, unix ms.
    pub created_at: i64,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Definition> {
    Ok(Definition {
        version: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        spec: r.get(2)?,
        created_at: r.get(3)?,
    })
}

/// A group's definitions, by name.
pub fn list(store: &Store, group_id: i64) -> Result<Vec<Definition>, StoreError> {
    store.read(|c| {
        let mut stmt = c.prepare_cached(
            "SELECT id, name, spec, created_at FROM projections WHERE group_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([group_id], row)?;
        rows.collect()
    })
}

/// One definition.
pub fn get(store: &Store, group_id: i64, name: &str) -> Result<Option<Definition>, StoreError> {
    store.read(|c| {
        c.prepare_cached(
            "SELECT id, name, spec, created_at FROM projections WHERE group_id = ?1 AND name = ?2",
        )?
        .query_row(params![group_id, name], row)
        .optional()
    })
}

/// Defines (or redefines, as a new version) projection `name` of a group.
pub fn put(store: &Store, group_id: i64, name: &str, spec: &str) -> Result<Definition, StoreError> {
    let (n, s) = (name.to_string(), spec.to_string());
    let now = crate::now_ms();
    store.maintain(move |c| {
        c.execute(
            "DELETE FROM projections WHERE group_id = ?1 AND name = ?2",
            params![group_id, n],
        )?;
        c.execute(
            "INSERT INTO projections (group_id, name, spec, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![group_id, n, s, now],
        )?;
        Ok(())
    })?;
    get(store, group_id, name)?.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "projection \"{name}\" vanished after its definition"
        ))
    })
}

/// Removes projection `name`; whether it existed.
pub fn delete(store: &Store, group_id: i64, name: &str) -> Result<bool, StoreError> {
    let existed = get(store, group_id, name)?.is_some();
    let n = name.to_string();
    store.maintain(move |c| {
        c.execute(
            "DELETE FROM projections WHERE group_id = ?1 AND name = ?2",
            params![group_id, n],
        )
        .map(|_| ())
    })?;
    Ok(existed)
}

/// The groups that have at least one projection.
pub fn groups(store: &Store) -> Result<Vec<i64>, StoreError> {
    store.read(|c| {
        let mut stmt = c.prepare("SELECT DISTINCT group_id FROM projections")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    })
}
