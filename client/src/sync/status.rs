//! What `pdb_status()` reports beyond the database's own tables: whether the witness
//! answered last time, the last error, and whether a worker runs. Kept in memory per
//! database file, so the application's connection sees what the worker's connection did.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::db::Db;
use crate::value::Value;
use crate::Error;

/// The live part of a database's sync status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    /// Whether the last exchange reached the witness (`None`: none tried yet).
    pub online: Option<bool>,
    /// The last error of a sync, cleared by the next success.
    pub last_error: Option<String>,
    /// When the last sync succeeded, unix ms.
    pub last_sync_at: Option<i64>,
    /// Whether a background worker runs for the database.
    pub worker: bool,
    /// Why the worker stopped by itself (`{code, error, at}`), until it is started again.
    pub halted: Option<serde_json::Value>,
    /// The group info was checked against this device (witness key, schema).
    pub checked: bool,
    /// A long pull's or a bootstrap's progress (`{"phase", ...}`), while it runs.
    pub progress: Option<serde_json::Value>,
    /// A bootstrap of this database runs in this process (it owns the download file).
    pub bootstrapping: bool,
}

fn registry() -> &'static Mutex<HashMap<String, Live>> {
    static R: OnceLock<Mutex<HashMap<String, Live>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The file of the connection's main database (empty for an in-memory one).
pub fn db_path<D: Db>(db: &D) -> Result<String, Error> {
    Ok(
        match db.query_value(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            &[],
        )? {
            Some(Value::Text(t)) => String::from_utf8_lossy(&t).into_owned(),
            _ => String::new(),
        },
    )
}

/// The live status of a database file.
pub fn get(path: &str) -> Live {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
        .cloned()
        .unwrap_or_default()
}

/// Changes the live status of a database file.
pub fn update(path: &str, f: impl FnOnce(&mut Live)) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    f(r.entry(path.to_string()).or_default());
}
