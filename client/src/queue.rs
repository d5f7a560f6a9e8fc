//! Local commits: `pdb_commit` closes the pending changes into a row of
//! `pdb_upload_queue` and forgets them, in one transaction.

use crate::capture;
use crate::cert::hex;
use crate::db::{transaction, Db, Stmt};
use crate::schema::schema_hash;
use crate::value::{Value, ValueRef};
use crate::Error;

/// The pending changeset, or `None` if nothing changed since the last commit.
pub fn pending_changeset<D: Db>(db: &D) -> Result<Option<Vec<u8>>, Error> {
    let tables = capture::tracked(db)?;
    let cs = capture::pending(db, &tables)?;
    Ok((!cs.is_empty()).then_some(cs))
}

/// Closes the pending changes into a local commit and returns its id, or `None` when
/// nothing changed. `meta` must be JSON if given.
pub fn commit<D: Db>(db: &D, meta: Option<&str>) -> Result<Option<i64>, Error> {
    if let Some(m) = meta {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(m) {
            return Err(Error::Argument(format!("meta is not valid JSON: {e}")));
        }
    }
    if !capture::has_schema(db)? {
        return Ok(None);
    }
    transaction(db, "pdb_commit", || {
        let tables = capture::tracked(db)?;
        let changeset = capture::pending(db, &tables)?;
        if changeset.is_empty() {
            return Ok(None);
        }
        let infos: Vec<_> = tables.iter().map(|t| t.info.clone()).collect();
        let (base_seq, base_head) = head(db)?;
        let hash = hex(blake3::hash(&changeset).as_bytes());
        let schema = hex(&schema_hash(&infos));
        let mut stmt = db.prepare(
            "INSERT INTO pdb_upload_queue \
             (changeset, hash, idempotency_key, base_seq, base_head, schema_hash, meta, created_at) \
             VALUES (?1, ?2, lower(hex(randomblob(16))), ?3, ?4, ?5, ?6, ?7) RETURNING id",
        )?;
        stmt.bind_all(&[
            ValueRef::Blob(&changeset),
            ValueRef::Text(hash.as_bytes()),
            ValueRef::Integer(base_seq),
            base_head
                .as_deref()
                .map_or(ValueRef::Null, |h| ValueRef::Text(h.as_bytes())),
            ValueRef::Text(schema.as_bytes()),
            meta.map_or(ValueRef::Null, |m| ValueRef::Text(m.as_bytes())),
            ValueRef::Integer(capture::now_ms()),
        ])?;
        let mut id = None;
        stmt.query::<Error>(&mut |row| {
            if let ValueRef::Integer(i) = row[0] {
                id = Some(i);
            }
            Ok(())
        })?;
        drop(stmt);
        capture::clear(db, &tables)?;
        Ok(id)
    })
}

/// The head this device has applied: `(seq, head hex)`, `(0, None)` before any sync.
pub fn head<D: Db>(db: &D) -> Result<(i64, Option<String>), Error> {
    let seq = match db.query_value("SELECT value FROM pdb_local WHERE key = 'head_seq'", &[])? {
        Some(Value::Integer(i)) => i,
        _ => 0,
    };
    let head = match db.query_value("SELECT value FROM pdb_local WHERE key = 'head'", &[])? {
        Some(Value::Text(t)) => Some(String::from_utf8_lossy(&t).into_owned()),
        _ => None,
    };
    Ok((seq, head))
}
