//! Projections (DESIGN §5): server-side views over a group's certified history, built
//! off the commit path and read with the group's authorisation.
//!
//! - [`spec`], [`expr`]: what an admin declares, and the expression subset it may use;
//! - [`compile`]: the tables, triggers and backfill of a version;
//! - [`builder`]: the per-group thread that keeps them exactly once and checked;
//! - [`read`]: typed filters, cursors and search over them;
//! - [`definitions`]: where the declarations are kept (`witness.db`).
//!
//! [`Projections`] is the whole interface the HTTP layer sees.

pub mod builder;
pub mod compile;
pub mod definitions;
pub mod expr;
pub mod read;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use ed25519_dalek::SigningKey;
use pdb_core::cert::hex;
use pdb_core::schema::TableInfo;
use serde_json::{json, Value};
use tokio::sync::watch;

use self::builder::{Cursor, Shared};
use self::definitions::Definition;
use self::read::{Cursors, Params, Viewer};
use self::spec::Spec;
use crate::group::Group;
use crate::problem::{Code, Problem};
use crate::replica::check_ddl;
use crate::snapshot::Snapshots;
use crate::store::Store;

/// Every group's projections.
pub struct Projections {
    data: PathBuf,
    store: Arc<Store>,
    snapshots: Arc<Snapshots>,
    witness_key: [u8; 32],
    cursors: Cursors,
    running: Arc<Mutex<HashMap<i64, Arc<Shared>>>>,
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    Problem::new(Code::Unavailable, e.to_string())
}

/// A projection's definition and where it stands.
#[derive(Debug, Clone)]
pub struct Status {
    /// The definition.
    pub def: Definition,
    /// `building`, `ready` or `failed`.
    pub state: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// The version reads are served from (an older one while a redefinition builds).
    pub serving: Option<u64>,
    /// The builder's cursor.
    pub cursor: Cursor,
    /// The group's head seq.
    pub head_seq: u64,
    /// The backfill under way.
    pub progress: Option<builder::Progress>,
}

impl Status {
    /// The status document.
    pub fn to_json(&self) -> Value {
        let spec: Value = serde_json::from_str(&self.def.spec).unwrap_or(Value::Null);
        json!({
            "name": self.def.name,
            "version": self.def.version,
            "kind": spec.get("kind").cloned().unwrap_or(Value::Null),
            "spec": spec,
            "state": self.state,
            "error": self.error,
            "serving_version": self.serving,
            "seq": self.cursor.seq,
            "head": hex(&self.cursor.head),
            "lag": self.head_seq.saturating_sub(self.cursor.seq),
            "backfill": self.progress.map(|p| json!({"rows": p.rows, "done": p.done})),
            "created_at": self.def.created_at,
        })
    }
}

impl Projections {
    /// The projections of a witness whose data directory is `data`.
    pub fn new(
        data: &Path,
        store: Arc<Store>,
        snapshots: Arc<Snapshots>,
        key: &SigningKey,
    ) -> Projections {
        Projections {
            data: data.to_path_buf(),
            store,
            snapshots,
            witness_key: key.verifying_key().to_bytes(),
            cursors: Cursors::new(blake3::derive_key(
                "pdb/v1 projection cursor key",
                &key.to_bytes(),
            )),
            running: Arc::default(),
        }
    }

    /// Starts the builders of every group that has projections.
    pub fn start(&self, groups: &[Arc<Group>]) -> Result<(), Problem> {
        let ids = definitions::groups(&self.store).map_err(unavailable)?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for g in groups.iter().filter(|g| ids.contains(&g.info.id)) {
            self.ensure(&mut running, g)?;
        }
        Ok(())
    }

    fn tables(group: &Group) -> Result<Vec<TableInfo>, Problem> {
        check_ddl(&group.info.ddl)
            .map(|(t, _)| t)
            .map_err(|e| unavailable(format!("group \"{}\": {e}", group.info.name)))
    }

    /// The running state of a group's projections, starting its builder if needed.
    fn ensure(
        &self,
        running: &mut HashMap<i64, Arc<Shared>>,
        group: &Arc<Group>,
    ) -> Result<Arc<Shared>, Problem> {
        if let Some(s) = running.get(&group.info.id) {
            return Ok(s.clone());
        }
        let shared = Arc::new(Shared::new(
            group.clone(),
            Self::tables(group)?,
            builder::dir(&self.data, &group.info.name),
        ));
        let (store, id) = (self.store.clone(), group.info.id);
        let map: Weak<Mutex<HashMap<i64, Arc<Shared>>>> = Arc::downgrade(&self.running);
        let env = builder::Env {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
            witness_key: self.witness_key,
            replica: crate::snapshot::replica_path(&self.data, &group.info.name),
            // Under the service's lock, so that a definition made meanwhile (which
            // takes the same lock) either finds this builder still running or starts
            // a new one after it is gone.
            may_end: Box::new(move || {
                let Some(map) = map.upgrade() else {
                    return true;
                };
                let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
                let empty = definitions::list(&store, id).is_ok_and(|d| d.is_empty());
                if empty {
                    m.remove(&id);
                }
                empty
            }),
        };
        builder::spawn(shared.clone(), env).map_err(unavailable)?;
        running.insert(group.info.id, shared.clone());
        Ok(shared)
    }

    fn shared(&self, group: &Group) -> Option<Arc<Shared>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group.info.id)
            .cloned()
    }

    /// Defines projection `name` from the JSON `body`: `(status, true)` when it is a
    /// new definition, `false` when the same spec was already defined.
    pub fn define(
        &self,
        group: &Arc<Group>,
        name: &str,
        body: &[u8],
    ) -> Result<(Status, bool), Problem> {
        if !spec::valid_name(name) {
            return Err(Problem::new(
                Code::BadRequest,
                format!("\"{name}\" is not a projection name: use [a-z][a-z0-9_]{{0,62}}"),
            ));
        }
        let spec = Spec::from_json(body).map_err(invalid)?;
        spec.plan(&Self::tables(group)?).map_err(invalid)?;
        let canonical = spec.canonical();
        let id = group.info.id;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let existing = definitions::get(&self.store, id, name).map_err(unavailable)?;
        let created = match &existing {
            Some(d) if d.spec == canonical => false,
            _ => {
                definitions::put(&self.store, id, name, &canonical).map_err(unavailable)?;
                true
            }
        };
        let shared = self.ensure(&mut running, group)?;
        drop(running);
        shared.wake();
        Ok((self.status(group, name)?, created))
    }

    /// Removes projection `name` and what was built for it.
    pub fn remove(&self, group: &Group, name: &str) -> Result<(), Problem> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if !definitions::delete(&self.store, group.info.id, name).map_err(unavailable)? {
            return Err(no_projection(&group.info.name, name));
        }
        drop(_one_at_a_time);
        if let Some(s) = self.shared(group) {
            s.wake();
        }
        Ok(())
    }

    /// Every projection of a group.
    pub fn list(&self, group: &Group) -> Result<Vec<Status>, Problem> {
        let defs = definitions::list(&self.store, group.info.id).map_err(unavailable)?;
        let built = self.built(group);
        Ok(defs
            .into_iter()
            .map(|d| self.status_of(group, d, &built))
            .collect())
    }

    /// One projection's status.
    pub fn status(&self, group: &Group, name: &str) -> Result<Status, Problem> {
        let def = definitions::get(&self.store, group.info.id, name)
            .map_err(unavailable)?
            .ok_or_else(|| no_projection(&group.info.name, name))?;
        let built = self.built(group);
        Ok(self.status_of(group, def, &built))
    }

    fn built(&self, group: &Group) -> Vec<builder::Built> {
        self.shared(group)
            .and_then(|s| s.read(builder::built).ok())
            .unwrap_or_default()
    }

    fn status_of(&self, group: &Group, def: Definition, built: &[builder::Built]) -> Status {
        let shared = self.shared(group);
        let mine = built.iter().find(|b| b.version == def.version);
        let (state, error) = match mine {
            Some(b) if b.ready => ("ready", None),
            Some(b) => ("failed", b.error.clone()),
            None => ("building", None),
        };
        let serving = built
            .iter()
            .filter(|b| b.name == def.name && b.ready)
            .map(|b| b.version)
            .max();
        let cursor = shared.as_ref().map_or(
            Cursor {
                seq: 0,
                head: pdb_core::cert::genesis(&group.info.name),
            },
            |s| *s.cursor.borrow(),
        );
        let progress = shared.as_ref().and_then(|s| {
            s.progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&def.version)
                .copied()
        });
        Status {
            def,
            state,
            error,
            serving,
            cursor,
            head_seq: group.head().seq,
            progress,
        }
    }

    /// Waits on the group's projection cursor (for `min_seq`).
    pub fn watch_cursor(&self, group: &Group) -> Option<watch::Receiver<Cursor>> {
        self.shared(group).map(|s| s.cursor.subscribe())
    }

    /// A page of projection `name`'s rows as JSON text.
    pub fn read(
        &self,
        group: &Group,
        name: &str,
        params: &Params,
        viewer: &Viewer,
    ) -> Result<String, Problem> {
        let def = definitions::get(&self.store, group.info.id, name)
            .map_err(unavailable)?
            .ok_or_else(|| no_projection(&group.info.name, name))?;
        let shared = self.shared(group).ok_or_else(|| {
            Problem::new(
                Code::ProjectionBuilding,
                format!("projection \"{name}\" is being built"),
            )
        })?;
        let answer = shared.read(|conn| {
            read::read(
                conn,
                &self.cursors,
                &group.info.name,
                &shared.tables,
                name,
                params,
                viewer,
            )
        })?;
        answer.map_err(|p| {
            if p.code == Code::ProjectionBuilding {
                let progress = shared
                    .progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&def.version)
                    .copied();
                p.with(
                    "backfill",
                    progress.map(|p| json!({"rows": p.rows, "done": p.done})),
                )
            } else {
                p
            }
        })
    }
}

impl Drop for Projections {
    fn drop(&mut self) {
        for s in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            s.stop();
        }
    }
}

fn invalid(e: spec::SpecError) -> Problem {
    Problem::new(Code::InvalidProjection, e.to_string()).with("field", e.field)
}

fn no_projection(group: &str, name: &str) -> Problem {
    Problem::new(
        Code::NotFound,
        format!("group \"{group}\" has no projection \"{name}\""),
    )
}
