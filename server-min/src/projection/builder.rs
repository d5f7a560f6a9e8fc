//! The builder of one group's projections: a thread of its own, off the commit path,
//! that keeps the group's projection file current. The file holds a *mirror* of the
//! group's tables (a [`Replica`], applied with the session extension like the
//! sequencer's), the tables of every projection version, and the triggers on the
//! mirror's tables that maintain them from full old and new rows.
//!
//! Exactly once: each batch of certified commits is applied to the mirror, and so
//! through the triggers to every projection, in one SQLite transaction that also moves
//! the mirror's cursor (`pdb_replica`). A kill at any point leaves rows and cursor of
//! one and the same seq. Each commit must reproduce its certificate's head and state
//! digest on the mirror; when it does not, the projections stop (failed, with the
//! reason) rather than serve rows of a state nobody certified.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pdb_core::cert::{genesis, next_head, Hash};
use pdb_core::schema::{quote, TableInfo};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{watch, Notify};

use super::compile::{compile, Compiled};
use super::definitions::{self, Definition};
use super::spec::{Plan, Spec, SpecError};
use crate::group::Group;
use crate::log::{Log, StoredCommit};
use crate::problem::{Code, Problem};
use crate::replica::{Position, Refusal, Replica};
use crate::snapshot::{remove_db, Snapshots};
use crate::store::Store;

/// The DDL of a projection file's bookkeeping.
pub const PROJECTION_SQL: &str = include_str!("../../../sql/projection.sql");

/// Commits applied per builder transaction, at most.
const BATCH: usize = 256;
/// Changeset bytes read per batch, about.
const BATCH_BYTES: usize = 8 << 20;
/// Source rows per backfill step (between progress updates).
const CHUNK: i64 = 50_000;
/// Idle read connections kept per group.
const READERS: usize = 16;
/// How long the builder lets new commits gather after a head moves, so that a busy
/// group's commits are applied many to a transaction rather than one each.
const LINGER: Duration = Duration::from_millis(4);

/// Where a group's projections are: the last commit the mirror (and every projection
/// in the file) reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Its seq (0 before the first commit).
    pub seq: u64,
    /// Its head.
    pub head: Hash,
}

/// How far a backfill has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Rows of the source table.
    pub rows: u64,
    /// Rows read so far (estimated from the rowid range).
    pub done: u64,
}

/// A projection version as the file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Its version.
    pub version: u64,
    /// Its name.
    pub name: String,
    /// The canonical spec it was built from.
    pub spec: String,
    /// Ready (serving) rather than failed.
    pub ready: bool,
    /// Why it failed.
    pub error: Option<String>,
}

/// What the builder, the readers and the status share for one group.
pub struct Shared {
    /// The group.
    pub group: Arc<Group>,
    /// Its tables.
    pub tables: Vec<TableInfo>,
    dir: PathBuf,
    /// The projection file in use (its generation), once one is open.
    generation: Mutex<Option<u64>>,
    /// Published after every builder transaction.
    pub cursor: watch::Sender<Cursor>,
    /// Backfills under way, by version.
    pub progress: Mutex<HashMap<u64, Progress>>,
    wake: Notify,
    /// Set when the definitions changed since the builder last read them.
    defs_changed: AtomicBool,
    stop: AtomicBool,
    readers: Mutex<Vec<(u64, Connection)>>,
}

/// A reason the builder stopped its current step.
type StepError = String;

impl Shared {
    /// The state of a group's projections, before its builder has started.
    pub fn new(group: Arc<Group>, tables: Vec<TableInfo>, dir: PathBuf) -> Shared {
        let cursor = watch::channel(Cursor {
            seq: 0,
            head: genesis(&group.info.name),
        })
        .0;
        Shared {
            group,
            tables,
            dir,
            generation: Mutex::new(None),
            cursor,
            progress: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            defs_changed: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            readers: Mutex::new(Vec::new()),
        }
    }

    /// Tells the builder the definitions changed.
    pub fn wake(&self) {
        self.defs_changed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Asks the builder to stop after its current step.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn path(&self, gen: u64) -> PathBuf {
        self.dir.join(format!("mirror-{gen}.db"))
    }

    /// Runs `f` in one read transaction of the projection file: everything it reads
    /// is of one cursor. `None` from the inner result type is left to the caller.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Problem> {
        let gen = self
            .generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ok_or_else(|| {
                Problem::new(
                    Code::ProjectionBuilding,
                    format!(
                        "the projections of group \"{}\" are being set up",
                        self.group.info.name
                    ),
                )
            })?;
        let pooled = {
            let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            pool.retain(|(g, _)| *g == gen);
            pool.pop()
        };
        let unavailable =
            |e: rusqlite::Error| Problem::new(Code::Unavailable, format!("projection file: {e}"));
        let conn = match pooled {
            Some((_, c)) => c,
            None => {
                let c = Connection::open_with_flags(
                    self.path(gen),
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(unavailable)?;
                c.busy_timeout(Duration::from_secs(5))
                    .map_err(unavailable)?;
                c.pragma_update(None, "query_only", true)
                    .map_err(unavailable)?;
                c
            }
        };
        let out = conn.execute_batch("BEGIN").and_then(|()| f(&conn));
        let _ = conn.execute_batch("ROLLBACK");
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS {
            pool.push((gen, conn));
        }
        out.map_err(|e| match e {
            // A bound on a read (see `read::budget`) shows as an interrupt.
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                Problem::new(
                    Code::InvalidQuery,
                    "the read took too long: narrow it with filters or a lower limit",
                )
            }
            other => unavailable(other),
        })
    }
}

/// The versions recorded in a projection file.
pub fn built(conn: &Connection) -> rusqlite::Result<Vec<Built>> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, name, spec, state, error FROM pdb_proj_meta ORDER BY version",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Built {
            version: r.get::<_, i64>(0)? as u64,
            name: r.get(1)?,
            spec: r.get(2)?,
            ready: r.get::<_, String>(3)? == "ready",
            error: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Why the file's mirror stopped, if it did.
pub fn diverged(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT reason FROM pdb_proj_diverged WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// A spec's plan against the group's tables.
pub fn plan_of(spec: &str, tables: &[TableInfo]) -> Result<Plan, SpecError> {
    Spec::from_json(spec.as_bytes())?.plan(tables)
}

/// What a builder needs from the witness.
pub struct Env {
    /// The history and the definitions.
    pub store: Arc<Store>,
    /// Snapshots, to start a mirror of a compacted group.
    pub snapshots: Arc<Snapshots>,
    /// The witness's public key (certificates are rebuilt with it).
    pub witness_key: [u8; 32],
    /// The group's replica file, which a new mirror is copied from.
    pub replica: PathBuf,
    /// Called when the group has no definitions left: whether the builder may end
    /// (the service checks, under its own lock, that none was added meanwhile).
    pub may_end: Box<dyn Fn() -> bool + Send>,
}

/// Starts the builder thread of a group.
pub fn spawn(shared: Arc<Shared>, env: Env) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("pdb-proj-{}", shared.group.info.id))
        .spawn(move || run(shared, env))
        .map(|_| ())
}

struct Mirror {
    replica: Replica,
    gen: u64,
}

struct Builder {
    shared: Arc<Shared>,
    env: Env,
    mirror: Option<Mirror>,
    /// The definitions as last read, while they have not changed.
    defs: Option<Vec<Definition>>,
}

/// Gives the calling thread the lowest CPU priority: a builder is off the commit path,
/// and on a busy machine it should lag rather than take cores from the sequencers.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::warn!(error = %e, "projection builder keeps its CPU priority");
    }
}

fn run(shared: Arc<Shared>, env: Env) {
    lower_priority();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "projection builder cannot start");
            return;
        }
    };
    let mut head = shared.group.info.head.subscribe();
    let mut b = Builder {
        shared: shared.clone(),
        env,
        mirror: None,
        defs: None,
    };
    let mut failures = 0u32;
    while !shared.stop.load(Ordering::Acquire) {
        // A bug that panics in a step must not end the builder, and with it every
        // projection of the group, unseen: it counts as a failed step.
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.step()))
            .unwrap_or_else(|_| Err("the builder panicked (a bug); retrying".to_string()));
        let pause = match step {
            Ok(Step::More) => continue,
            Ok(Step::Idle) => {
                failures = 0;
                Duration::from_secs(30)
            }
            Ok(Step::End) => {
                if (b.env.may_end)() {
                    drop(b.mirror.take());
                    shared
                        .generation
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    shared
                        .readers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    let _ = std::fs::remove_dir_all(&shared.dir);
                    return;
                }
                continue;
            }
            Err(e) => {
                failures += 1;
                tracing::error!(group = %shared.group.info.name, error = %e, "projection builder");
                // The mirror is reopened from its last commit on the next step.
                b.mirror = None;
                Duration::from_millis(100 << failures.min(6))
            }
        };
        rt.block_on(async {
            tokio::select! {
                changed = head.changed() => {
                    tokio::time::sleep(if changed.is_err() { pause } else { LINGER }).await;
                }
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        });
    }
}

enum Step {
    /// There is more to do at once.
    More,
    /// Caught up.
    Idle,
    /// The group has no projections left.
    End,
}

/// Why a certified commit did not apply to the mirror.
enum Failure {
    /// The mirror's state is not the certified one (or the history contradicts itself).
    Diverged(String),
    /// SQLite refused the apply: a trigger's error, or a mirror that diverged.
    Apply(String),
    /// Storage failed; retry later.
    Storage(String),
}

fn sql_err(e: rusqlite::Error) -> StepError {
    format!("projection file: {e}")
}

fn gid(s: &Shared) -> i64 {
    s.group.info.id
}

impl Builder {
    fn step(&mut self) -> Result<Step, StepError> {
        let changed = self.shared.defs_changed.swap(false, Ordering::AcqRel);
        if self.mirror.is_none() {
            self.mirror = Some(self.open_mirror()?);
            self.defs = None;
        }
        if changed || self.defs.is_none() {
            let defs = definitions::list(&self.env.store, gid(&self.shared)).map_err(|e| {
                self.shared.defs_changed.store(true, Ordering::Release);
                e.to_string()
            })?;
            if defs.is_empty() {
                return Ok(Step::End);
            }
            if let Err(e) = self.sync(&defs) {
                self.shared.defs_changed.store(true, Ordering::Release);
                return Err(e);
            }
            self.defs = Some(defs);
        }
        self.follow()
    }

    fn mirror(&self) -> &Mirror {
        self.mirror
            .as_ref()
            .expect("the mirror is opened before it is used")
    }

    fn conn(&self) -> &Connection {
        self.mirror().replica.conn()
    }

    fn publish(&self, pos: &Position) {
        self.shared.cursor.send_replace(Cursor {
            seq: pos.seq,
            head: pos.head,
        });
    }

    /// Opens the newest projection file if it agrees with the history, else makes a
    /// new one (from genesis, or from the newest snapshot of a compacted group).
    fn open_mirror(&self) -> Result<Mirror, StepError> {
        let dir = &self.shared.dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut gens: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("mirror-")?.strip_suffix(".db")?.parse().ok()
            })
            .collect();
        gens.sort_unstable();
        if let Some(&gen) = gens.last() {
            match Replica::open(&self.shared.path(gen)) {
                Ok(Some(r)) if self.agrees(&r)? => {
                    r.conn().execute_batch(PROJECTION_SQL).map_err(sql_err)?;
                    return Ok(self.adopt(r, gen, &gens));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(group = %self.shared.group.info.name, error = %e, "projection file unreadable; rebuilding")
                }
            }
        }
        self.create_mirror(gens.last().map_or(1, |g| g + 1), &gens)
    }

    /// Whether a mirror is at a head of this group's history that later commits follow.
    fn agrees(&self, r: &Replica) -> Result<bool, StepError> {
        if r.schema_hash() != self.shared.group.info.schema_hash {
            return Ok(false);
        }
        let pos = r.position().map_err(sql_err)?;
        let log = &self.env.store;
        let id = gid(&self.shared);
        let last = log.last_seq(id).map_err(|e| e.to_string())?;
        if pos.seq > last {
            return Ok(false);
        }
        if pos.seq == 0 {
            return Ok(pos.head == genesis(&self.shared.group.info.name));
        }
        Ok(log.head_at(id, pos.seq).map_err(|e| e.to_string())? == Some(pos.head))
    }

    fn adopt(&self, replica: Replica, gen: u64, others: &[u64]) -> Mirror {
        // A replica keeps a small page cache (there is one per group); building an FTS5
        // index or an aggregate of a large table wants more.
        if let Err(e) = replica.conn().pragma_update(None, "cache_size", -8192) {
            tracing::warn!(error = %e, "projection file: cache_size");
        }

        *self
            .shared
            .generation
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(gen);
        for g in others.iter().filter(|g| **g != gen) {
            remove_db(&self.shared.path(*g));
        }
        if let Ok(pos) = replica.position() {
            self.publish(&pos);
        }
        Mirror { replica, gen }
    }

    fn create_mirror(&self, gen: u64, others: &[u64]) -> Result<Mirror, StepError> {
        let g = &self.shared.group.info;
        let path = self.shared.path(gen);
        remove_db(&path);
        let compacted = self
            .env
            .store
            .oldest_head(g.id)
            .map_err(|e| e.to_string())?
            > 0;
        let replica = if compacted {
            self.env.snapshots.reseed(&g.name, g.id, &g.ddl, &path)?;
            Replica::open(&path)
                .map_err(|e| e.to_string())?
                .ok_or("the reseeded projection file is missing")?
        } else {
            Replica::create(&path, &g.ddl, genesis(&g.name)).map_err(|e| e.to_string())?
        };
        if !compacted && self.shared.group.head().seq > 0 {
            self.seed_from_replica(&replica)?;
        }
        replica
            .conn()
            .execute_batch(PROJECTION_SQL)
            .map_err(sql_err)?;
        Ok(self.adopt(replica, gen, others))
    }

    /// Starts a new mirror from a copy of the group's replica (much faster than
    /// replaying the whole history), checked like a snapshot: its rows must hash to
    /// the state the replica records, and its head must be the history's at that seq.
    /// Copying records as they are keeps values bit for bit, as applying would.
    fn seed_from_replica(&self, mirror: &Replica) -> Result<(), StepError> {
        let g = &self.shared.group;
        // The replica file holds what its sequencer has committed; commit the rest.
        g.flush();
        let pos = mirror.copy_replica(&self.env.replica).map_err(sql_err)?;
        let state = mirror.full_state().map_err(|e| e.to_string())?;
        let head = self
            .env
            .store
            .head_at(g.info.id, pos.seq)
            .map_err(|e| e.to_string())?;
        if state.digest() != pos.state.digest() || (pos.seq > 0 && head != Some(pos.head)) {
            return Err(format!(
                "the copy of group \"{}\"'s replica at seq {} does not hold its recorded state",
                g.info.name, pos.seq
            ));
        }
        Ok(())
    }

    /// Builds what is defined and not built, drops what is built and not defined.
    fn sync(&mut self, defs: &[Definition]) -> Result<(), StepError> {
        let have = built(self.conn()).map_err(sql_err)?;
        let stopped = diverged(self.conn()).map_err(sql_err)?;
        let unbuilt = |v: u64| !have.iter().any(|b| b.version == v);
        if stopped.is_some() && defs.iter().any(|d| unbuilt(d.version)) {
            // A redefinition after the mirror diverged starts over from the history.
            let gen = self.mirror().gen + 1;
            self.mirror = None;
            self.mirror = Some(self.create_mirror(gen, &[gen - 1])?);
            return self.sync(defs);
        }
        for b in &have {
            let keep = match defs.iter().find(|d| d.name == b.name) {
                None => false,
                Some(d) if d.version == b.version => true,
                // An older version serves until its successor is ready (the build's
                // own transaction drops it then), unless it failed.
                Some(d) => b.ready && !have.iter().any(|n| n.version == d.version && n.ready),
            };
            if !keep {
                let conn = self.conn();
                conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
                let dropped = drop_objects(conn, b.version).and_then(|()| {
                    conn.execute(
                        "DELETE FROM pdb_proj_meta WHERE version = ?1",
                        [b.version as i64],
                    )
                    .map(|_| ())
                });
                finish(conn, dropped).map_err(sql_err)?;
            }
        }
        if stopped.is_some() {
            return Ok(());
        }
        for d in defs.iter().filter(|d| unbuilt(d.version)) {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            self.build(d, &have)?;
        }
        Ok(())
    }

    /// Creates, fills and hooks up one projection version at the mirror's cursor, in
    /// one transaction that also retires the versions it replaces.
    fn build(&self, d: &Definition, have: &[Built]) -> Result<(), StepError> {
        let conn = self.conn();
        let pos = self.mirror().replica.position().map_err(sql_err)?;
        let compiled = match plan_of(&d.spec, &self.shared.tables) {
            Ok(plan) => (compile(&d.name, d.version, &plan), plan),
            Err(e) => {
                return self.record_failure(
                    d,
                    pos.seq,
                    &format!("the spec no longer fits the group: {e}"),
                )
            }
        };
        let (compiled, plan) = compiled;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
        let made =
            (|| -> rusqlite::Result<()> {
                for s in &compiled.create {
                    conn.execute_batch(s)?;
                }
                self.backfill(conn, &compiled, &plan, d.version)?;
                for s in &compiled.triggers {
                    conn.execute_batch(s)?;
                }
                conn.execute(
                "INSERT INTO pdb_proj_meta (version, name, spec, state, built_seq, touched_at) \
                 VALUES (?1, ?2, ?3, 'ready', ?4, ?5)",
                params![d.version as i64, d.name, d.spec, pos.seq as i64, crate::now_ms()],
            )?;
                for old in have.iter().filter(|b| b.name == d.name) {
                    drop_objects(conn, old.version)?;
                    conn.execute(
                        "DELETE FROM pdb_proj_meta WHERE version = ?1",
                        [old.version as i64],
                    )?;
                }
                Ok(())
            })();
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&d.version);
        match made {
            Ok(()) => conn.execute_batch("COMMIT").map_err(sql_err),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                if is_storage(&e) {
                    return Err(sql_err(e));
                }
                self.record_failure(d, pos.seq, &format!("building it failed: {e}"))
            }
        }
    }

    fn record_failure(&self, d: &Definition, seq: u64, why: &str) -> Result<(), StepError> {
        tracing::warn!(group = %self.shared.group.info.name, projection = %d.name, version = d.version, error = why, "projection failed");
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO pdb_proj_meta (version, name, spec, state, error, built_seq, touched_at) \
                 VALUES (?1, ?2, ?3, 'failed', ?4, ?5, ?6)",
                params![d.version as i64, d.name, d.spec, why, seq as i64, crate::now_ms()],
            )
            .map(|_| ())
            .map_err(sql_err)
    }

    /// Fills a new version's tables from the mirror, in rowid steps where the table
    /// has rowids, so that its progress can be shown.
    fn backfill(
        &self,
        conn: &Connection,
        c: &Compiled,
        plan: &Plan,
        version: u64,
    ) -> rusqlite::Result<()> {
        let table = quote(&plan.table.name);
        let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM main.{table}"), [], |r| {
            r.get(0)
        })?;
        let set = |done: i64| {
            self.shared
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    version,
                    Progress {
                        rows: rows as u64,
                        done: done.clamp(0, rows) as u64,
                    },
                );
        };
        set(0);
        let named_rowid = plan
            .table
            .columns
            .iter()
            .any(|col| col.name.eq_ignore_ascii_case("rowid"));
        let range: Option<(Option<i64>, Option<i64>)> = match &c.whole {
            Some(_) if !named_rowid => conn
                .query_row(
                    &format!("SELECT min(rowid), max(rowid) FROM main.{table}"),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .ok(),
            _ => None,
        };
        let mut rest = c.backfill.iter();
        match (range, &c.whole) {
            (Some((lo, hi)), _) => {
                let first = rest.next().map(String::as_str).unwrap_or_default();
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    let mut stmt = conn.prepare(first)?;
                    let mut at = lo - 1;
                    while at < hi {
                        let to = at.saturating_add(CHUNK).min(hi);
                        stmt.execute(params![at, to])?;
                        at = to;
                        let span = (hi - lo + 1).max(1) as f64;
                        set(((at - lo + 1) as f64 / span * rows as f64) as i64);
                    }
                }
            }
            (None, Some(whole)) => {
                rest.next();
                conn.execute_batch(whole)?;
            }
            (None, None) => {}
        }
        for s in rest {
            conn.execute_batch(s)?;
        }
        set(rows);
        Ok(())
    }

    /// Applies the next batch of certified commits; `Idle` once at the group's head.
    fn follow(&mut self) -> Result<Step, StepError> {
        if diverged(self.conn()).map_err(sql_err)?.is_some() {
            return Ok(Step::Idle);
        }
        let replica = &self.mirror().replica;
        let mut pos = replica.position().map_err(sql_err)?;
        self.publish(&pos);
        let head = self.shared.group.head();
        if pos.seq >= head.seq {
            return Ok(Step::Idle);
        }
        let g = &self.shared.group.info;
        let commits = self
            .env
            .store
            .commits_after(
                g.id,
                &g.name,
                self.env.witness_key,
                pos.seq,
                BATCH,
                BATCH_BYTES,
            )
            .map_err(|e| e.to_string())?;
        if commits.first().map(|c| c.cert.seq) != Some(pos.seq + 1) {
            // Compacted below the cursor (the builder was stopped for long): start
            // again from the newest snapshot.
            tracing::warn!(group = %g.name, seq = pos.seq, "projection cursor below the history kept; rebuilding from a snapshot");
            let gen = self.mirror().gen + 1;
            self.mirror = None;
            self.mirror = Some(self.create_mirror(gen, &[gen - 1])?);
            self.defs = None;
            return Ok(Step::More);
        }
        replica.begin().map_err(sql_err)?;
        let mut go_on = true;
        for c in commits.iter().take_while(|c| c.cert.seq <= head.seq) {
            match self.apply_one(c, &mut pos) {
                Ok(true) => {}
                Ok(false) => {
                    go_on = false;
                    break;
                }
                Err(e) => {
                    let _ = replica.rollback();
                    return Err(e);
                }
            }
        }
        let done = replica.set_position(&pos).and_then(|()| replica.commit());
        if let Err(e) = done {
            let _ = replica.rollback();
            return Err(sql_err(e));
        }
        self.publish(&pos);
        Ok(if go_on && pos.seq < head.seq {
            Step::More
        } else {
            Step::Idle
        })
    }

    /// Applies one certified commit inside the batch's transaction. A projection whose
    /// trigger makes it fail is stopped and the commit applied without it; `false` when
    /// the mirror diverged (every projection stopped, nothing more to apply).
    fn apply_one(&self, c: &StoredCommit, pos: &mut Position) -> Result<bool, StepError> {
        loop {
            match certified(&self.mirror().replica, pos, c) {
                Ok(next) => {
                    *pos = next;
                    return Ok(true);
                }
                Err(Failure::Storage(e)) => return Err(e),
                Err(Failure::Diverged(why)) => {
                    self.diverge(c.cert.seq, &why).map_err(sql_err)?;
                    return Ok(false);
                }
                Err(Failure::Apply(why)) => match self.culprits(c, pos).map_err(sql_err)? {
                    Some(versions) => {
                        for v in versions {
                            self.stop_one(
                                v,
                                c.cert.seq,
                                &format!("commit {} made it fail: {why}", c.cert.seq),
                            )
                            .map_err(sql_err)?;
                        }
                    }
                    None => {
                        self.diverge(
                            c.cert.seq,
                            &format!("commit {} does not apply to the mirror: {why}", c.cert.seq),
                        )
                        .map_err(sql_err)?;
                        return Ok(false);
                    }
                },
            }
        }
    }

    /// The projections whose triggers make `c` fail: the first one without which it
    /// applies, else all of them if it applies with none; `None` if it fails anyway.
    fn culprits(&self, c: &StoredCommit, pos: &Position) -> rusqlite::Result<Option<Vec<u64>>> {
        let conn = self.conn();
        let ready: Vec<u64> = built(conn)?
            .into_iter()
            .filter(|b| b.ready)
            .map(|b| b.version)
            .collect();
        let applies_without = |versions: &[u64]| -> rusqlite::Result<bool> {
            conn.execute_batch("SAVEPOINT pdb_culprit")?;
            let mut r = Ok(());
            for v in versions {
                r = r.and_then(|()| drop_triggers(conn, *v));
            }
            let ok = r.is_ok() && certified(&self.mirror().replica, pos, c).is_ok();
            conn.execute_batch("ROLLBACK TO pdb_culprit; RELEASE pdb_culprit")?;
            r.map(|()| ok)
        };
        for v in &ready {
            if applies_without(&[*v])? {
                return Ok(Some(vec![*v]));
            }
        }
        if !ready.is_empty() && applies_without(&ready)? {
            return Ok(Some(ready));
        }
        Ok(None)
    }

    fn stop_one(&self, version: u64, seq: u64, why: &str) -> rusqlite::Result<()> {
        tracing::warn!(group = %self.shared.group.info.name, version, error = why, "projection failed");
        let conn = self.conn();
        drop_objects(conn, version)?;
        conn.execute(
            "UPDATE pdb_proj_meta SET state = 'failed', error = ?2, built_seq = ?3, touched_at = ?4 WHERE version = ?1",
            params![version as i64, why, seq as i64, crate::now_ms()],
        )?;
        Ok(())
    }

    fn diverge(&self, seq: u64, why: &str) -> rusqlite::Result<()> {
        tracing::error!(group = %self.shared.group.info.name, seq, error = why, "projection mirror diverged from the certified state");
        let conn = self.conn();
        let reason =
            format!("the mirror does not reproduce the certified state at seq {seq}: {why}");
        for b in built(conn)?.into_iter().filter(|b| b.ready) {
            self.stop_one(b.version, seq, &reason)?;
        }
        conn.execute(
            "INSERT OR REPLACE INTO pdb_proj_diverged (id, seq, reason) VALUES (1, ?1, ?2)",
            params![seq as i64, reason],
        )?;
        Ok(())
    }
}

/// Commits or rolls back the transaction `r` ran in.
fn finish(conn: &Connection, r: rusqlite::Result<()>) -> rusqlite::Result<()> {
    match r {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn is_storage(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::SystemIoFailure
                | C::DiskFull
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::DatabaseCorrupt
                | C::CannotOpen
        )
    )
}

/// Applies certified commit `c` to the mirror at `pos` and checks it reproduces the
/// certificate: the position after it.
fn certified(replica: &Replica, pos: &Position, c: &StoredCommit) -> Result<Position, Failure> {
    let seq = pos.seq + 1;
    if c.cert.seq != seq || c.cert.prev != pos.head {
        return Err(Failure::Diverged(format!(
            "commit {} does not follow seq {}",
            c.cert.seq, pos.seq
        )));
    }
    if *blake3::hash(&c.changeset).as_bytes() != c.cert.changeset_hash {
        return Err(Failure::Diverged(format!(
            "the stored changeset of commit {seq} does not match its certificate"
        )));
    }
    let touched = replica.validate(&c.changeset).map_err(|e| {
        Failure::Diverged(format!(
            "commit {seq} does not fit the mirror's tables: {e:?}"
        ))
    })?;
    let mut state = pos.state.clone();
    match replica.apply(&c.changeset, &touched, &mut state) {
        Ok(()) => {}
        Err(Refusal::Storage(e)) => return Err(Failure::Storage(sql_err(e))),
        Err(Refusal::Invalid(why)) => return Err(Failure::Apply(why)),
        // SQLite reports a trigger's RAISE as a constraint conflict, without its
        // message; the only RAISE in a projection's triggers is the sum overflow.
        Err(Refusal::Conflict(rows)) if rows.iter().all(|r| r["reason"] == "constraint") => {
            return Err(Failure::Apply(
                "its triggers refused a row: an integer sum would pass 64 bits (where SQL's sum() fails too)".into(),
            ))
        }
        Err(Refusal::Conflict(rows)) => {
            return Err(Failure::Apply(format!(
                "{} row(s) conflict: {}",
                rows.len(),
                serde_json::Value::Array(rows)
            )))
        }
    }
    let head = next_head(&pos.head, seq, &c.cert.changeset_hash);
    if head != c.cert.head || state.digest() != c.cert.state {
        return Err(Failure::Diverged(format!(
            "after commit {seq} the mirror's state digest is not the certified one"
        )));
    }
    Ok(Position { seq, head, state })
}

fn objects(conn: &Connection, version: u64, kind: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT name, coalesce(sql, '') FROM sqlite_schema WHERE type = ?1 AND name LIKE ?2 ESCAPE '\\'",
    )?;
    let rows = stmt.query_map(params![kind, format!("pdb\\_p{version}\\_%")], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    rows.collect()
}

fn drop_triggers(conn: &Connection, version: u64) -> rusqlite::Result<()> {
    for (name, _) in objects(conn, version, "trigger")? {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote(&name)))?;
    }
    Ok(())
}

/// Drops every object of a projection version: triggers, then its FTS tables (which
/// take their shadow tables along), then the rest.
pub fn drop_objects(conn: &Connection, version: u64) -> rusqlite::Result<()> {
    drop_triggers(conn, version)?;
    for (name, sql) in objects(conn, version, "table")? {
        if sql
            .trim_start()
            .get(..14)
            .is_some_and(|s| s.eq_ignore_ascii_case("CREATE VIRTUAL"))
        {
            conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&name)))?;
        }
    }
    for (name, _) in objects(conn, version, "table")? {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote(&name)))?;
    }
    Ok(())
}

/// The directory of a group's projection files.
pub fn dir(data: &Path, group: &str) -> PathBuf {
    data.join("projections").join(group)
}
