//! Snapshots (DESIGN §4–5): database images of a group's tables at a head, so a new
//! device starts from one verified file instead of replaying the whole history.
//!
//! An image is made by copying the replica's tables into a fresh file inside one read
//! transaction of the replica (WAL), so it is consistent while the sequencer goes on
//! committing. Before it is published its rows are hashed into the state digest and
//! compared with the certificate of its seq. Files live in `DATA/objects/<blake3 hex>`;
//! their signed manifests in `witness.db`. After a new snapshot, retention may delete
//! older ones and compact the commits before the oldest one kept.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use pdb_core::cert::{genesis, hex, Hash};
use pdb_core::schema::quote;
use pdb_core::snapshot::Manifest;
use pdb_core::state::StateVector;
use rusqlite::{params, Connection};

use crate::group::{Group, Groups};
use crate::log::Log;
use crate::problem::{Code, Problem};
use crate::replica::{read_position, replay, Position, Replica};
use crate::store::{SnapshotRow, Store, CERT_COLUMNS};

/// When snapshots are made and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Make one after this many commits since the last (0: never by count).
    pub every_commits: u64,
    /// Make one after this many bytes of changesets since the last (0: never by size).
    pub every_bytes: u64,
    /// Keep this many policy and admin snapshots per group and compact the commits
    /// before the oldest of them (0: keep every snapshot and every commit).
    pub retain: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            every_commits: 10_000,
            every_bytes: 64 << 20,
            retain: 0,
        }
    }
}

/// Why a snapshot was made (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The policy's count or size was reached.
    Policy,
    /// An admin asked for one.
    Admin,
    /// Someone asked for a past head.
    Restore,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::Admin => "admin",
            Kind::Restore => "restore",
        }
    }
}

/// The snapshot maker and object store.
pub struct Snapshots {
    data: PathBuf,
    store: Arc<Store>,
    key: Arc<SigningKey>,
    policy: Policy,
    groups: Groups,
    /// One snapshot at a time: each reads a whole replica and writes a whole file.
    making: Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    Problem::new(Code::Unavailable, e.to_string())
}

/// Where a group's replica lives.
pub fn replica_path(data: &Path, name: &str) -> PathBuf {
    data.join("groups").join(format!("{name}.db"))
}

/// Copies the tables of the database `src` into a new database file `dst` made with
/// `ddl`, in one read transaction of `src`; returns the replica position `src` holds
/// (none if it is not a replica).
fn copy_tables(src: &Path, ddl: &str, dst: &Path) -> rusqlite::Result<Option<Position>> {
    let conn = Connection::open(dst)?;
    // A half-written file is deleted, never read: no journal, no syncs until the end.
    conn.pragma_update(None, "journal_mode", "OFF")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    // The DDL was accepted by the guard when the group was made; it runs under the
    // guard again so that a history written before the guard existed cannot use it.
    crate::schema_guard::run(&conn, ddl).map_err(|e| {
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_AUTH),
            Some(format!("group DDL refused: {e}")),
        )
    })?;
    conn.execute("ATTACH ?1 AS src", [src.to_string_lossy()])?;
    let tables: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT name FROM main.sqlite_schema WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    conn.execute_batch("BEGIN")?;
    let is_replica: bool = conn.query_row(
        "SELECT count(*) FROM src.sqlite_schema WHERE name = 'pdb_replica'",
        [],
        |r| r.get(0),
    )?;
    let pos = if is_replica {
        Some(read_position(&conn, "src")?)
    } else {
        None
    };
    for t in &tables {
        let t = quote(t);
        // Same tables and indexes on both sides: SQLite's transfer optimisation copies
        // the records without decoding them.
        conn.execute_batch(&format!("INSERT INTO main.{t} SELECT * FROM src.{t}"))?;
    }
    conn.execute_batch("COMMIT; DETACH src")?;
    conn.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(pos)
}

/// The state vector of a snapshot file's tables.
fn state_of_file(path: &Path) -> Result<StateVector, String> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = (|| {
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()
    })()
    .map_err(|e| e.to_string())?;
    let mut tables = Vec::new();
    for n in names {
        tables.push(pdb_core::schema::table_info(&conn, &n).map_err(|e| e.to_string())?);
    }
    pdb_core::state::state_of(&conn, &tables).map_err(|e| e.to_string())
}

/// BLAKE3 and size of a file, read in large pieces (BLAKE3 hashes them in parallel
/// lanes).
pub fn hash_file(path: &Path) -> std::io::Result<(Hash, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((*h.finalize().as_bytes(), size))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Removes a database file and whatever journal SQLite left beside it.
pub(crate) fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A temporary database in the objects folder, removed (with its journals) when
/// dropped; a published one was renamed away by then, so only its journals go.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_db(&self.0);
    }
}

impl Snapshots {
    /// Opens the object store under `data` (clearing what a crash left half-made) and
    /// starts the thread that makes policy snapshots; the sender takes the names of
    /// groups whose snapshot is due.
    pub fn open(
        data: &Path,
        store: Arc<Store>,
        key: Arc<SigningKey>,
        policy: Policy,
        groups: Groups,
    ) -> std::io::Result<(Arc<Snapshots>, Sender<String>)> {
        let tmp = data.join("objects").join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let snaps = Arc::new(Snapshots {
            data: data.to_path_buf(),
            store,
            key,
            policy,
            groups,
            making: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel();
        let weak = Arc::downgrade(&snaps);
        std::thread::Builder::new()
            .name("pdb-snapshots".into())
            .spawn(move || policy_loop(&weak, &rx))?;
        Ok((snaps, tx))
    }

    /// The file of an object.
    pub fn object_path(&self, blake3: &Hash) -> PathBuf {
        self.data.join("objects").join(hex(blake3))
    }

    fn scratch(&self, what: &str) -> Scratch {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        Scratch(
            self.data
                .join("objects")
                .join("tmp")
                .join(format!("{what}-{}.db", hex(&r))),
        )
    }

    /// The newest snapshot of `group`.
    pub fn latest(&self, group: &Group) -> Result<Option<Manifest>, Problem> {
        let row = self
            .store
            .snapshot_before(group.info.id, u64::MAX)
            .map_err(unavailable)?;
        Ok(row.map(|r| self.manifest(group, &r)))
    }

    fn manifest(&self, group: &Group, row: &SnapshotRow) -> Manifest {
        row.manifest(&group.info.name, self.key.verifying_key().to_bytes())
    }

    /// The certified state digest at `seq` (the empty one at 0).
    fn certified_state(&self, group: &Group, seq: u64) -> Result<Hash, Problem> {
        if seq == 0 {
            return Ok(StateVector::new().digest());
        }
        let found = self
            .store
            .commits_after(
                group.info.id,
                &group.info.name,
                self.key.verifying_key().to_bytes(),
                seq - 1,
                1,
                0,
            )
            .map_err(unavailable)?;
        match found.first() {
            Some(c) if c.cert.seq == seq => Ok(c.cert.state),
            _ => Err(Problem::new(
                Code::Compacted,
                format!("commit {seq} is no longer in the history"),
            )),
        }
    }

    /// Makes a snapshot of `group` at its durable head now (admin requests and the
    /// policy), returning its manifest.
    pub fn make(&self, group: &Group, kind: Kind) -> Result<Manifest, Problem> {
        let _one = self.making.lock().unwrap_or_else(|e| e.into_inner());
        // The replica file commits its open transaction lazily; bring it to the head.
        group.flush();
        let file = self.scratch("snapshot");
        let src = replica_path(&self.data, &group.info.name);
        let pos = copy_tables(&src, &group.info.ddl, &file.0)
            .map_err(|e| unavailable(format!("copying the replica: {e}")))?
            .ok_or_else(|| unavailable("the replica has no position"))?;
        let (head, seq) = (pos.head, pos.seq);
        if let Some(mut existing) = self
            .store
            .snapshot_before(group.info.id, seq)
            .map_err(unavailable)?
            .filter(|r| r.seq == seq)
        {
            if existing.kind == Kind::Restore.as_str() {
                // Made for a restore, now wanted as a retained snapshot.
                existing.kind = kind.as_str().to_string();
                self.store
                    .add_snapshot(group.info.id, existing.clone())
                    .map_err(unavailable)?;
                self.retain(group)?;
            }
            return Ok(self.manifest(group, &existing));
        }
        self.publish(group, file, seq, head, kind)
    }

    /// Checks a finished file against the certificate of `seq`, stores it under its
    /// hash, signs and records its manifest, then applies retention.
    fn publish(
        &self,
        group: &Group,
        file: Scratch,
        seq: u64,
        head: Hash,
        kind: Kind,
    ) -> Result<Manifest, Problem> {
        let state = state_of_file(&file.0)
            .map_err(|e| unavailable(format!("reading the snapshot: {e}")))?
            .digest();
        let certified = self.certified_state(group, seq)?;
        if state != certified {
            tracing::error!(group = %group.info.name, seq, "snapshot state differs from the certificate");
            return Err(unavailable(format!(
                "the image at seq {seq} has state {} but the certificate says {}",
                hex(&state),
                hex(&certified)
            )));
        }
        std::fs::File::open(&file.0)
            .and_then(|f| f.sync_all())
            .map_err(unavailable)?;
        let (blake3, size) = hash_file(&file.0).map_err(unavailable)?;
        let object = self.object_path(&blake3);
        if !object.exists() {
            std::fs::rename(&file.0, &object).map_err(unavailable)?;
            sync_dir(&self.data.join("objects")).map_err(unavailable)?;
        }
        let m = Manifest::sign(
            &self.key,
            &group.info.name,
            seq,
            head,
            state,
            size,
            blake3,
            group.info.schema_hash,
            crate::now_ms(),
        );
        let row = SnapshotRow {
            seq,
            head,
            state,
            blake3,
            size,
            schema_hash: m.schema_hash,
            signature: m.signature,
            kind: kind.as_str().to_string(),
            created_at: m.created_at,
        };
        self.store
            .add_snapshot(group.info.id, row)
            .map_err(unavailable)?;
        tracing::info!(group = %group.info.name, seq, size, kind = kind.as_str(), object = %hex(&blake3), "snapshot");
        if kind != Kind::Restore {
            if let Err(e) = self.retain(group) {
                tracing::error!(group = %group.info.name, error = %e, "retention failed");
            }
        }
        Ok(m)
    }

    /// Keeps the newest `retain` policy/admin snapshots, deletes older ones of any
    /// kind, compacts the commits before the oldest kept, and removes objects no
    /// snapshot names any more.
    fn retain(&self, group: &Group) -> Result<(), Problem> {
        if self.policy.retain == 0 {
            return Ok(());
        }
        let rows = self.store.snapshots(group.info.id).map_err(unavailable)?;
        let kept: Vec<&SnapshotRow> = rows.iter().filter(|r| r.kind != "restore").collect();
        if kept.len() < self.policy.retain {
            return Ok(());
        }
        let oldest = kept[self.policy.retain - 1].seq;
        let id = group.info.id;
        // The commit at `oldest` itself stays: a device at that head verifies the
        // next commit against it, and its certificate proves the snapshot's head.
        // The sequencer refuses the bases about to go before they go.
        let before = group
            .info
            .oldest
            .fetch_max(oldest.saturating_sub(1), Ordering::AcqRel);
        self.store
            .maintain(move |c| {
                c.execute(
                    "DELETE FROM snapshots WHERE group_id = ?1 AND seq < ?2",
                    params![id, oldest as i64],
                )?;
                // Their certificates stay, for the idempotency check.
                c.execute(
                    &format!(
                        "INSERT INTO compacted (group_id, {CERT_COLUMNS}) \
                         SELECT group_id, {CERT_COLUMNS} FROM commits \
                         WHERE group_id = ?1 AND seq < ?2"
                    ),
                    params![id, oldest as i64],
                )?;
                c.execute(
                    "DELETE FROM commits WHERE group_id = ?1 AND seq < ?2",
                    params![id, oldest as i64],
                )?;
                Ok(())
            })
            .map_err(|e| {
                group.info.oldest.store(before, Ordering::Release);
                unavailable(e)
            })?;
        let named = self.store.objects().map_err(unavailable)?;
        for r in rows.iter().filter(|r| r.seq < oldest) {
            if !named.contains(&r.blake3) {
                let _ = std::fs::remove_file(self.object_path(&r.blake3));
            }
        }
        tracing::info!(group = %group.info.name, before = oldest, "compacted");
        Ok(())
    }

    /// A snapshot of `group` exactly at `seq`: an existing one, or one made now from
    /// the nearest snapshot before it plus the commits up to it, checked against the
    /// certificate of `seq`. History is only read, never rewritten.
    pub fn at(&self, group: &Group, seq: u64) -> Result<Manifest, Problem> {
        let _one = self.making.lock().unwrap_or_else(|e| e.into_inner());
        let id = group.info.id;
        let head = group.head();
        if seq > head.seq {
            return Err(Problem::new(
                Code::NotFound,
                format!("seq {seq} is beyond the group's head {}", head.seq),
            ));
        }
        let base = self.store.snapshot_before(id, seq).map_err(unavailable)?;
        if let Some(b) = base.as_ref().filter(|b| b.seq == seq) {
            return Ok(self.manifest(group, b));
        }
        let oldest = group.info.oldest_head();
        // Replaying from the base needs the commits after it, and none before `oldest`
        // are kept.
        if seq < oldest || base.as_ref().map_or(0, |b| b.seq) < oldest {
            return Err(Problem::new(
                Code::Compacted,
                format!("commits before seq {oldest} were compacted; seq {seq} cannot be restored"),
            )
            .with("oldest_seq", oldest));
        }
        let work = self.scratch("restore");
        let replica = self
            .seed(&group.info.name, &group.info.ddl, &work.0, base.as_ref())
            .map_err(unavailable)?;
        let mut pos = replica.position().map_err(unavailable)?;
        let wkey = self.key.verifying_key().to_bytes();
        while pos.seq < seq {
            let commits = self
                .store
                .commits_after(id, &group.info.name, wkey, pos.seq, 256, 64 << 20)
                .map_err(unavailable)?;
            let commits: Vec<_> = commits.into_iter().filter(|c| c.cert.seq <= seq).collect();
            if commits.is_empty() {
                return Err(unavailable(format!("the history ends before seq {seq}")));
            }
            replica.begin().map_err(unavailable)?;
            replay(&replica, &mut pos, &commits).map_err(unavailable)?;
            replica
                .set_position(&pos)
                .and_then(|()| replica.commit())
                .map_err(unavailable)?;
        }
        drop(replica);
        let file = self.scratch("snapshot");
        copy_tables(&work.0, &group.info.ddl, &file.0).map_err(unavailable)?;
        self.publish(group, file, pos.seq, pos.head, Kind::Restore)
    }

    /// A new replica at `path` holding `base`'s tables at its position (the group's
    /// genesis without one), its rows checked against `base`'s state.
    fn seed(
        &self,
        name: &str,
        ddl: &str,
        path: &Path,
        base: Option<&SnapshotRow>,
    ) -> Result<Replica, String> {
        let replica = Replica::create(path, ddl, genesis(name)).map_err(|e| e.to_string())?;
        let Some(b) = base else {
            return Ok(replica);
        };
        replica
            .load_tables(&self.object_path(&b.blake3))
            .map_err(|e| e.to_string())?;
        let state = replica.full_state().map_err(|e| e.to_string())?;
        if state.digest() != b.state {
            return Err(format!(
                "snapshot {} does not hold its manifest's state",
                hex(&b.blake3)
            ));
        }
        let pos = Position {
            seq: b.seq,
            head: b.head,
            state,
        };
        replica
            .begin()
            .and_then(|()| replica.set_position(&pos))
            .and_then(|()| replica.commit())
            .map_err(|e| e.to_string())?;
        Ok(replica)
    }

    /// Rebuilds a lost replica of a compacted group from its newest snapshot (the
    /// history no longer starts at genesis); start-up replays the rest. Made beside
    /// `path` and renamed into place once complete, so a crash leaves no half replica.
    pub fn reseed(&self, group_name: &str, id: i64, ddl: &str, path: &Path) -> Result<(), String> {
        let row = self
            .store
            .snapshot_before(id, u64::MAX)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("group \"{group_name}\" is compacted but has no snapshot"))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push("-reseed");
        let tmp = PathBuf::from(tmp);
        remove_db(&tmp);
        let replica = self
            .seed(group_name, ddl, &tmp, Some(&row))
            .map_err(|e| format!("group \"{group_name}\": {e}"))?;
        drop(replica);
        remove_db(path);
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        path.parent()
            .map_or(Ok(()), sync_dir)
            .map_err(|e| e.to_string())
    }

    /// Whether a token holder with `can_read(group)` may fetch object `blake3`: some
    /// group holding it as a snapshot is readable. `None` if no group holds it.
    pub fn object_readable(
        &self,
        blake3: &Hash,
        can_read: impl Fn(&str) -> Result<(), Problem>,
    ) -> Result<(), Problem> {
        let ids = self.store.object_groups(blake3).map_err(unavailable)?;
        let names: Vec<String> = {
            let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
            groups
                .values()
                .filter(|g| ids.contains(&g.info.id))
                .map(|g| g.info.name.clone())
                .collect()
        };
        let missing = || Problem::new(Code::NotFound, format!("no object {}", hex(blake3)));
        if names.is_empty() || !self.object_path(blake3).exists() {
            return Err(missing());
        }
        let mut last = None;
        for n in &names {
            match can_read(n) {
                Ok(()) => return Ok(()),
                Err(p) => last = Some(p),
            }
        }
        Err(last.unwrap_or_else(missing))
    }
}

/// Makes the policy snapshots the sequencers ask for, one at a time. Requests that
/// came meanwhile are taken together, so a busy group that asked many times during a
/// long snapshot gets one more, not one per request.
fn policy_loop(snaps: &std::sync::Weak<Snapshots>, rx: &Receiver<String>) {
    let mut queue: VecDeque<String> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(name) => queue.push_back(name),
                Err(_) => return,
            }
        }
        while let Ok(name) = rx.try_recv() {
            if !queue.contains(&name) {
                queue.push_back(name);
            }
        }
        let Some(name) = queue.pop_front() else {
            continue;
        };
        let Some(s) = snaps.upgrade() else { return };
        let group = s
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        if let Some(g) = group {
            if let Err(p) = s.make(&g, Kind::Policy) {
                tracing::error!(group = %name, error = %p, "policy snapshot failed");
            }
        }
    }
}
