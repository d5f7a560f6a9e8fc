//! Where and as whom a database syncs (`pdb_open`), and the head it has applied, kept in
//! `pdb_local` so that every connection, the background worker's included, sees them.

use crate::capture;
use crate::cert::{genesis, hex, parse_hash, parse_hex, Hash};
use crate::db::Db;
use crate::state::StateVector;
use crate::value::{Value, ValueRef};
use crate::Error;

/// The witness and group a database syncs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the witness (`http://` or `https://`).
    pub url: String,
    /// The group.
    pub group: String,
    /// Bearer token sent with every request.
    pub token: String,
    /// The pinned witness public key: certificates signed by any other are refused.
    pub witness_key: [u8; 32],
}

/// Reads one `pdb_local` value.
pub(crate) fn get<D: Db>(db: &D, key: &str) -> Result<Option<Value>, Error> {
    Ok(db.query_value(
        "SELECT value FROM pdb_local WHERE key = ?1",
        &[ValueRef::Text(key.as_bytes())],
    )?)
}

/// Writes one `pdb_local` value.
pub(crate) fn set<D: Db>(db: &D, key: &str, value: ValueRef<'_>) -> Result<(), Error> {
    db.execute(
        "INSERT OR REPLACE INTO pdb_local(key, value) VALUES (?1, ?2)",
        &[ValueRef::Text(key.as_bytes()), value],
    )?;
    Ok(())
}

fn get_text<D: Db>(db: &D, key: &str) -> Result<Option<String>, Error> {
    Ok(match get(db, key)? {
        Some(Value::Text(t)) => Some(String::from_utf8_lossy(&t).into_owned()),
        _ => None,
    })
}

/// Stores the sync target after checking the arguments. A database that already holds
/// history of one group from one witness cannot be pointed at another: its rows and
/// certificates would belong to neither.
pub fn open<D: Db>(
    db: &D,
    url: &str,
    group: &str,
    token: &str,
    key_hex: &str,
) -> Result<(), Error> {
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if !host.is_some_and(|h| !h.is_empty() && !h.starts_with('/')) {
        return Err(Error::Argument(format!(
            "argument 1 (url) must be http:// or https:// and a host, not \"{url}\""
        )));
    }
    if group.is_empty() {
        return Err(Error::Argument(
            "argument 2 (group) must not be empty".into(),
        ));
    }
    let key = parse_hex::<32>(key_hex).ok_or_else(|| {
        Error::Argument(
            "argument 4 (witness_key) must be the witness's Ed25519 public key: 64 hex digits"
                .into(),
        )
    })?;
    capture::ensure_schema(db)?;
    crate::db::transaction(db, "pdb_open", || {
        let (seq, _) = head_raw(db)?;
        if seq > 0 {
            let old_group = get_text(db, "group")?.unwrap_or_default();
            let old_key = get_text(db, "witness_key")?.unwrap_or_default();
            if old_group != group || old_key != hex(&key) {
                return Err(Error::Argument(format!(
                    "this database already holds {seq} commits of group \"{old_group}\" from witness {old_key}; \
                     it cannot follow another group or witness (use a fresh database)"
                )));
            }
        }
        set(
            db,
            "url",
            ValueRef::Text(url.trim_end_matches('/').as_bytes()),
        )?;
        set(db, "group", ValueRef::Text(group.as_bytes()))?;
        set(db, "token", ValueRef::Text(token.as_bytes()))?;
        set(db, "witness_key", ValueRef::Text(hex(&key).as_bytes()))?;
        Ok(())
    })
}

/// The stored sync target, or [`Error::NotOpen`].
pub fn load<D: Db>(db: &D) -> Result<Config, Error> {
    if !capture::has_schema(db)? {
        return Err(Error::NotOpen);
    }
    read(db)
}

/// [`load`] in a database known to have the PersonalDB tables.
pub(crate) fn read<D: Db>(db: &D) -> Result<Config, Error> {
    let (Some(url), Some(group), Some(token), Some(key)) = (
        get_text(db, "url")?,
        get_text(db, "group")?,
        get_text(db, "token")?,
        get_text(db, "witness_key")?,
    ) else {
        return Err(Error::NotOpen);
    };
    let witness_key = parse_hex::<32>(&key)
        .ok_or_else(|| Error::Diverged("pdb_local.witness_key is corrupt".into()))?;
    Ok(Config {
        url,
        group,
        token,
        witness_key,
    })
}

/// This device's id (`Pdb-Client`).
pub fn client_id<D: Db>(db: &D) -> Result<Option<String>, Error> {
    get_text(db, "client_id")
}

fn head_raw<D: Db>(db: &D) -> Result<(u64, Option<Hash>), Error> {
    let seq = match get(db, "head_seq")? {
        Some(Value::Integer(i)) if i >= 0 => i as u64,
        _ => 0,
    };
    let head = get_text(db, "head")?.and_then(|h| parse_hash(&h));
    Ok((seq, head))
}

/// The head this device has applied: `(seq, head)`, the group's genesis before any.
pub fn head<D: Db>(db: &D, group: &str) -> Result<(u64, Hash), Error> {
    match head_raw(db)? {
        (0, _) => Ok((0, genesis(group))),
        (seq, Some(h)) => Ok((seq, h)),
        (seq, None) => Err(Error::Diverged(format!(
            "pdb_local says head seq {seq} but holds no head hash"
        ))),
    }
}

/// The state vector of the tracked tables at the applied head.
pub fn state<D: Db>(db: &D) -> Result<StateVector, Error> {
    match get(db, "state_vector")? {
        None => Ok(StateVector::new()),
        Some(Value::Blob(b)) => StateVector::from_bytes(&b)
            .ok_or_else(|| Error::Diverged("pdb_local.state_vector is corrupt".into())),
        Some(_) => Err(Error::Diverged("pdb_local.state_vector is corrupt".into())),
    }
}

/// Records a new applied head and its state vector.
pub fn set_head<D: Db>(db: &D, seq: u64, head: &Hash, state: &StateVector) -> Result<(), Error> {
    set(db, "head_seq", ValueRef::Integer(seq as i64))?;
    set(db, "head", ValueRef::Text(hex(head).as_bytes()))?;
    set(db, "state_vector", ValueRef::Blob(&state.to_bytes()))?;
    Ok(())
}
