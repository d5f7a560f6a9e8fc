//! The witness core: the data directory, the history store, and every group's
//! sequencer. It knows nothing of HTTP; `http` is a thin layer over it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::SigningKey;
use pdb_core::cert::genesis;

use crate::group::{self, Env, Group, Groups, SnapshotDue};
use crate::log::{Log, StoredCommit};
use crate::metrics::Metrics;
use crate::problem::{Code, Problem};
use crate::projection::Projections;
use crate::replica::{check_ddl, Replica, SchemaError};
use crate::snapshot::{remove_db, replica_path, Policy, Snapshots};
use crate::store::Store;

/// Why the witness could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or a key file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The history store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A group's replica could not be opened or caught up.
    #[error("{0}")]
    Group(String),
}

/// A running witness.
pub struct Witness {
    data: PathBuf,
    store: Arc<Store>,
    key: Arc<SigningKey>,
    metrics: Arc<Metrics>,
    groups: Groups,
    snapshots: Arc<Snapshots>,
    snapshot_due: SnapshotDue,
    projections: Projections,
    creating: Mutex<()>,
}

/// Whether `name` can name a group: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with a
/// dot or dash (it is also a file name in the data directory).
pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-'])
}

impl Witness {
    /// Opens the data directory (creating it and the keys on first start), catches
    /// every replica up with the history, and starts the sequencers.
    pub fn open(data: &Path, metrics: Arc<Metrics>) -> Result<Witness, StartError> {
        Witness::open_with(data, metrics, Policy::default())
    }

    /// [`Witness::open`] with a snapshot policy.
    pub fn open_with(
        data: &Path,
        metrics: Arc<Metrics>,
        policy: Policy,
    ) -> Result<Witness, StartError> {
        std::fs::create_dir_all(data.join("groups"))?;
        let key = Arc::new(crate::keys::witness_key(data)?);
        let store = Arc::new(Store::open(&data.join("witness.db"))?);
        let rows = store.groups()?;
        let known: std::collections::HashSet<String> =
            rows.iter().map(|g| format!("{}.db", g.name)).collect();
        // A replica without a group row is a creation that crashed before it was
        // registered: nobody was told it exists.
        for entry in std::fs::read_dir(data.join("groups"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".db") && !known.contains(&name) {
                remove_db(&data.join("groups").join(&name));
            }
        }
        let groups: Groups = Arc::new(RwLock::new(HashMap::new()));
        let (snapshots, due) =
            Snapshots::open(data, store.clone(), key.clone(), policy, groups.clone())?;
        let projections = Projections::new(data, store.clone(), snapshots.clone(), &key);
        let witness = Witness {
            data: data.to_path_buf(),
            store,
            key,
            metrics,
            groups,
            projections,
            snapshots,
            snapshot_due: SnapshotDue {
                every_commits: policy.every_commits,
                every_bytes: policy.every_bytes,
                tx: due,
            },
            creating: Mutex::new(()),
        };
        for row in rows {
            let path = replica_path(data, &row.name);
            let replica = match Replica::open(&path) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    remove_db(&path);
                    let compacted = witness.store.oldest_head(row.id)? > 0;
                    if compacted {
                        // The history no longer starts at genesis: start from the
                        // newest snapshot and replay what came after it.
                        witness
                            .snapshots
                            .reseed(&row.name, row.id, &row.ddl, &path)
                            .map_err(StartError::Group)?;
                        Replica::open(&path)
                            .map_err(|e| StartError::Group(format!("group \"{}\": {e}", row.name)))?
                            .ok_or_else(|| {
                                StartError::Group(format!(
                                    "group \"{}\": reseeded replica is missing",
                                    row.name
                                ))
                            })?
                    } else {
                        Replica::create(&path, &row.ddl, genesis(&row.name)).map_err(|e| {
                            StartError::Group(format!("group \"{}\": {e}", row.name))
                        })?
                    }
                }
                Err(e) => return Err(StartError::Group(format!("group \"{}\": {e}", row.name))),
            };
            if replica.schema_hash() != row.schema_hash {
                return Err(StartError::Group(format!(
                    "group \"{}\": the replica's schema differs from the registered one",
                    row.name
                )));
            }
            let g = group::start(row.id, &row.name, &row.ddl, replica, witness.env())
                .map_err(StartError::Group)?;
            witness.register(g);
        }
        witness
            .projections
            .start(&witness.all_groups())
            .map_err(|p| StartError::Group(format!("projections: {p}")))?;
        Ok(witness)
    }

    fn env(&self) -> Env<Store> {
        Env {
            log: self.store.clone(),
            key: self.key.clone(),
            metrics: self.metrics.clone(),
            snapshot_due: self.snapshot_due.clone(),
        }
    }

    /// Every group's projections.
    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    /// Snapshots and the object store.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    fn register(&self, g: Group) -> Arc<Group> {
        let g = Arc::new(g);
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(g.info.name.clone(), g.clone());
        g
    }

    /// The witness's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The history store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A group by name.
    pub fn group(&self, name: &str) -> Option<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn all_groups(&self) -> Vec<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Commits every replica's open transaction (at a graceful exit).
    pub fn flush(&self) {
        for g in self.all_groups() {
            g.flush();
        }
    }

    /// Number of groups.
    pub fn group_count(&self) -> usize {
        self.groups.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Creates a group with the tables of `ddl`; `Ok((group, false))` if it already
    /// exists with the same schema.
    pub fn create_group(&self, name: &str, ddl: &str) -> Result<(Arc<Group>, bool), Problem> {
        if !valid_group_name(name) {
            return Err(Problem::new(
                Code::BadRequest,
                format!("\"{name}\" is not a group name: use 1-64 of A-Z a-z 0-9 . _ -"),
            ));
        }
        let _one_at_a_time = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        // A refused DDL stays refused however often it is sent: never `unavailable`,
        // which tells a client to retry.
        let refused = |e: SchemaError| match e {
            SchemaError::Invalid(m) => Problem::new(Code::InvalidSchema, format!("ddl: {m}")),
            SchemaError::Storage(e) => Problem::new(Code::Unavailable, e.to_string()),
        };
        let (_, hash) = check_ddl(ddl).map_err(refused)?;
        if let Some(g) = self.group(name) {
            if g.info.schema_hash == hash {
                return Ok((g, false));
            }
            return Err(Problem::new(
                Code::SchemaMismatch,
                format!("group \"{name}\" exists with another schema"),
            )
            .with("schema_hash", pdb_core::cert::hex(&g.info.schema_hash)));
        }
        let unavailable =
            |e: &dyn std::fmt::Display| Problem::new(Code::Unavailable, e.to_string());
        let path = replica_path(&self.data, name);
        remove_db(&path);
        let replica = Replica::create(&path, ddl, genesis(name)).map_err(|e| {
            remove_db(&path);
            refused(e)
        })?;
        let id = match self.store.create_group(name, ddl, hash) {
            Ok(id) => id,
            Err(e) => {
                drop(replica);
                remove_db(&path);
                return Err(unavailable(&e));
            }
        };
        let g = group::start(id, name, ddl, replica, self.env()).map_err(|e| unavailable(&e))?;
        Ok((self.register(g), true))
    }

    /// Commits after `after`, bounded by `limit` and about `max_bytes` of payload.
    pub fn commits_after(
        &self,
        group: &Group,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredCommit>, Problem> {
        self.store
            .commits_after(
                group.info.id,
                &group.info.name,
                self.public_key(),
                after,
                limit,
                max_bytes,
            )
            .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))
    }
}
