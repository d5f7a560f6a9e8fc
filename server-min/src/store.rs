//! The history store: `witness.db` (see `sql/witness.sql`), written by one thread that
//! batches the commits of every group into one transaction, so one fsync certifies many
//! commits (group commit), and read through a small pool of connections. It is the
//! SQLite implementation of [`Log`], plus what only the witness itself needs (groups,
//! snapshot rows, maintenance).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pdb_core::cert::{Certificate, Hash};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::log::{Log, StoredCommit};

/// The DDL of the history store.
pub const WITNESS_SQL: &str = include_str!("../../sql/witness.sql");

/// A storage failure; nothing it touched was certified.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("history store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread is gone (the process is shutting down).
    #[error("history store writer has stopped")]
    Stopped,
    /// What is on disk contradicts itself.
    #[error("history store is inconsistent: {0}")]
    Corrupt(String),
}

/// A group as registered in the history store.
#[derive(Debug, Clone)]
pub struct GroupRow {
    /// Row id, used as the group's key in `commits`.
    pub id: i64,
    /// Group name.
    pub name: String,
    /// DDL of its tables.
    pub ddl: String,
    /// Its schema hash.
    pub schema_hash: Hash,
}

enum WriteOp {
    Commits {
        group_id: i64,
        commits: Vec<StoredCommit>,
        done: SyncSender<Result<(), String>>,
    },
    CreateGroup {
        name: String,
        ddl: String,
        schema_hash: Hash,
        done: SyncSender<Result<i64, String>>,
    },
    /// Anything else that must be durable (snapshots, compaction), in the same
    /// transactions as the commits.
    Maintain {
        work: Maintenance,
        done: SyncSender<Result<i64, String>>,
    },
}

type Maintenance = Box<dyn Fn(&Connection) -> rusqlite::Result<()> + Send>;

/// A stored snapshot (see `sql/witness.sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// The seq of the head it holds.
    pub seq: u64,
    /// `head(seq)`.
    pub head: Hash,
    /// `state(seq)`.
    pub state: Hash,
    /// BLAKE3 of the file (its object name).
    pub blake3: Hash,
    /// File size in bytes.
    pub size: u64,
    /// Schema hash of its tables.
    pub schema_hash: Hash,
    /// Signature over the manifest message.
    pub signature: [u8; 64],
    /// `policy`, `admin` or `restore`.
    pub kind: String,
    /// Unix ms.
    pub created_at: i64,
}

impl SnapshotRow {
    /// The manifest this row describes.
    pub fn manifest(&self, group: &str, witness_key: [u8; 32]) -> pdb_core::snapshot::Manifest {
        pdb_core::snapshot::Manifest {
            group: group.to_string(),
            seq: self.seq,
            head: self.head,
            state: self.state,
            size: self.size,
            blake3: self.blake3,
            schema_hash: self.schema_hash,
            created_at: self.created_at,
            witness_key,
            signature: self.signature,
        }
    }
}

const SNAPSHOT_COLUMNS: &str =
    "seq, head, state, blake3, size, schema_hash, signature, kind, created_at";

fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRow> {
    let signature: Vec<u8> = r.get(6)?;
    Ok(SnapshotRow {
        seq: r.get::<_, i64>(0)? as u64,
        head: r.get(1)?,
        state: r.get(2)?,
        blake3: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        schema_hash: r.get(5)?,
        signature: signature.try_into().unwrap_or([0; 64]),
        kind: r.get(7)?,
        created_at: r.get(8)?,
    })
}

/// Handle to the history store.
pub struct Store {
    path: PathBuf,
    writer: Mutex<Sender<WriteOp>>,
    readers: Mutex<Vec<Connection>>,
    /// Transactions the writer has committed (each is one sync of the log to disk).
    pub syncs: Arc<AtomicU64>,
}

fn open_rw(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // WAL + NORMAL may lose the last transactions on power loss; a witness that forgets
    // a certified commit would later sign another at the same seq (DESIGN §5).
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Statement journals of a big batch would otherwise spill to temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = open_rw(path)?;
        conn.execute_batch(WITNESS_SQL)?;
        let (tx, rx) = mpsc::channel();
        let syncs = Arc::new(AtomicU64::new(0));
        let counter = syncs.clone();
        std::thread::Builder::new()
            .name("pdb-log-writer".into())
            .spawn(move || writer_loop(conn, rx, &counter))
            .map_err(|e| StoreError::Corrupt(format!("cannot start writer: {e}")))?;
        Ok(Store {
            path: path.to_path_buf(),
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
            syncs,
        })
    }

    fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tx.send(op).map_err(|_| StoreError::Stopped)
    }

    /// Registers a group durably and returns its id.
    pub fn create_group(
        &self,
        name: &str,
        ddl: &str,
        schema_hash: Hash,
    ) -> Result<i64, StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(WriteOp::CreateGroup {
            name: name.to_string(),
            ddl: ddl.to_string(),
            schema_hash,
            done,
        })?;
        match wait.recv() {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => Err(StoreError::Corrupt(e)),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// Runs `work` durably in the writer's next transaction.
    pub fn maintain(
        &self,
        work: impl Fn(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(WriteOp::Maintain {
            work: Box::new(work),
            done,
        })?;
        match wait.recv() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Corrupt(e)),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// Records a snapshot durably.
    pub fn add_snapshot(&self, group_id: i64, row: SnapshotRow) -> Result<(), StoreError> {
        self.maintain(move |c| {
            c.execute(
                &format!(
                    "INSERT OR REPLACE INTO snapshots (group_id, {SNAPSHOT_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    group_id,
                    row.seq as i64,
                    row.head,
                    row.state,
                    row.blake3,
                    row.size as i64,
                    row.schema_hash,
                    &row.signature[..],
                    row.kind,
                    row.created_at
                ],
            )
            .map(|_| ())
        })
    }

    /// A group's snapshots, newest first.
    pub fn snapshots(&self, group_id: i64) -> Result<Vec<SnapshotRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE group_id = ?1 ORDER BY seq DESC"
            ))?;
            let rows = stmt.query_map([group_id], snapshot_row)?;
            rows.collect()
        })
    }

    /// The group's newest snapshot at or before `seq`.
    pub fn snapshot_before(
        &self,
        group_id: i64,
        seq: u64,
    ) -> Result<Option<SnapshotRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE group_id = ?1 AND seq <= ?2 \
                 ORDER BY seq DESC LIMIT 1"
            ))?
            .query_row(
                params![group_id, seq.min(i64::MAX as u64) as i64],
                snapshot_row,
            )
            .optional()
        })
    }

    /// The groups (ids) that hold the object `blake3` as a snapshot.
    pub fn object_groups(&self, blake3: &Hash) -> Result<Vec<i64>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT DISTINCT group_id FROM snapshots WHERE blake3 = ?1")?;
            let rows = stmt.query_map([&blake3[..]], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Every object some snapshot names.
    pub fn objects(&self) -> Result<std::collections::HashSet<Hash>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT DISTINCT blake3 FROM snapshots")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Runs `f` on a pooled read connection.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.pragma_update(None, "query_only", true)?;
                // Up to 256 of these: keep each one's page cache small.
                c.pragma_update(None, "cache_size", -512)?;
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        // Every sequencer reads here (idempotency, old heads) besides the pulls:
        // keep enough connections that none is opened per request.
        if pool.len() < 256 {
            pool.push(conn);
        }
        Ok(out?)
    }

    /// Every registered group.
    pub fn groups(&self) -> Result<Vec<GroupRow>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT id, name, ddl, schema_hash FROM groups ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                Ok(GroupRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    ddl: r.get(2)?,
                    schema_hash: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }
}

impl Log for Store {
    type Error = StoreError;

    fn append(&self, group_id: i64, commits: Vec<StoredCommit>) -> Result<(), StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(WriteOp::Commits {
            group_id,
            commits,
            done,
        })?;
        match wait.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Corrupt(e)),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    fn oldest_head(&self, group_id: i64) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT min(seq) FROM commits WHERE group_id = ?1",
                [group_id],
                |r| r.get::<_, Option<i64>>(0),
            )
        })
        .map(|first| first.map_or(0, |s| (s as u64).saturating_sub(1)))
    }

    fn bytes_after(&self, group_id: i64, seq: u64) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT coalesce(sum(length(changeset)), 0) FROM commits \
                 WHERE group_id = ?1 AND seq > ?2",
                params![group_id, seq as i64],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n as u64)
    }

    fn last_seq(&self, group_id: i64) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT coalesce(max(seq), 0) FROM commits WHERE group_id = ?1",
                [group_id],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|s| s as u64)
    }

    fn by_key(
        &self,
        group_id: i64,
        group: &str,
        witness_key: [u8; 32],
        key: &str,
    ) -> Result<Option<StoredCommit>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {CERT_COLUMNS}, changeset FROM commits \
                 WHERE group_id = ?1 AND idempotency_key = ?2 \
                 UNION ALL SELECT {CERT_COLUMNS}, x'' FROM compacted \
                 WHERE group_id = ?1 AND idempotency_key = ?2 LIMIT 1"
            ))?
            .query_row(params![group_id, key], |r| {
                stored_commit(r, group, witness_key)
            })
            .optional()
        })
    }

    fn head_at(&self, group_id: i64, seq: u64) -> Result<Option<Hash>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT CASE WHEN seq = ?2 THEN head ELSE prev END FROM commits \
                 WHERE group_id = ?1 AND seq IN (?2, ?2 + 1) ORDER BY seq LIMIT 1",
                params![group_id, seq as i64],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn commits_after(
        &self,
        group_id: i64,
        group: &str,
        witness_key: [u8; 32],
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredCommit>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CERT_COLUMNS}, changeset FROM commits \
                 WHERE group_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let mut rows = stmt.query(params![group_id, after as i64, limit as i64])?;
            let mut out: Vec<StoredCommit> = Vec::new();
            let mut bytes = 0usize;
            while let Some(r) = rows.next()? {
                let c = stored_commit(r, group, witness_key)?;
                bytes += c.changeset.len();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(c);
            }
            Ok(out)
        })
    }

    fn last_snapshot_seq(&self, group_id: i64) -> Result<u64, StoreError> {
        Ok(self
            .snapshots(group_id)?
            .into_iter()
            .find(|r| r.kind != "restore")
            .map_or(0, |r| r.seq))
    }
}

/// The columns of `commits` (and `compacted`) a certificate is read from, in the
/// order [`stored_commit`] reads them; the changeset follows.
pub(crate) const CERT_COLUMNS: &str = "seq, prev, head, state, changeset_hash, idempotency_key, \
     client_id, meta, committed_at, signature";

fn stored_commit(
    r: &rusqlite::Row<'_>,
    group: &str,
    witness_key: [u8; 32],
) -> rusqlite::Result<StoredCommit> {
    let signature: Vec<u8> = r.get(9)?;
    Ok(StoredCommit {
        cert: Certificate {
            group: group.to_string(),
            seq: r.get::<_, i64>(0)? as u64,
            prev: r.get(1)?,
            head: r.get(2)?,
            state: r.get(3)?,
            changeset_hash: r.get(4)?,
            idempotency_key: r.get(5)?,
            committed_at: r.get(8)?,
            witness_key,
            signature: signature.try_into().unwrap_or([0; 64]),
        },
        client: r.get(6)?,
        meta: r.get(7)?,
        changeset: Bytes::from(r.get::<_, Vec<u8>>(10)?),
    })
}

fn writer_loop(mut conn: Connection, rx: Receiver<WriteOp>, syncs: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < 4096 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let outcome = write_batch(&mut conn, &ops);
        if outcome.is_ok() {
            syncs.fetch_add(1, Ordering::Relaxed);
        }
        for (i, op) in ops.into_iter().enumerate() {
            let result = match &outcome {
                Ok(per_op) => per_op[i].clone(),
                Err(e) => Err(e.to_string()),
            };
            match op {
                WriteOp::Commits { done, .. } => {
                    let _ = done.send(result.map(|_| ()));
                }
                WriteOp::CreateGroup { done, .. } | WriteOp::Maintain { done, .. } => {
                    let _ = done.send(result);
                }
            }
        }
    }
}

/// Writes every op in one transaction: one sync for all. An op fails only on a bug or
/// a storage failure, and then the whole transaction fails: the sequencers roll their
/// batches back, so the history never has a gap.
fn write_batch(
    conn: &mut Connection,
    ops: &[WriteOp],
) -> rusqlite::Result<Vec<Result<i64, String>>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(Ok(write_op(&tx, op)?));
    }
    tx.commit()?;
    Ok(results)
}

fn write_op(conn: &Connection, op: &WriteOp) -> rusqlite::Result<i64> {
    match op {
        WriteOp::Commits {
            group_id, commits, ..
        } => {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO commits (group_id, seq, prev, head, state, changeset_hash, \
                 idempotency_key, client_id, meta, committed_at, signature, changeset) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            for c in commits {
                stmt.execute(params![
                    group_id,
                    c.cert.seq as i64,
                    c.cert.prev,
                    c.cert.head,
                    c.cert.state,
                    c.cert.changeset_hash,
                    c.cert.idempotency_key,
                    c.client,
                    c.meta,
                    c.cert.committed_at,
                    &c.cert.signature[..],
                    &c.changeset[..],
                ])?;
            }
            Ok(0)
        }
        WriteOp::CreateGroup {
            name,
            ddl,
            schema_hash,
            ..
        } => conn.query_row(
            "INSERT INTO groups (name, ddl, schema_hash, created_at) VALUES (?1, ?2, ?3, ?4) \
             RETURNING id",
            params![name, ddl, schema_hash, crate::now_ms()],
            |r| r.get(0),
        ),
        WriteOp::Maintain { work, .. } => work(conn).map(|()| 0),
    }
}
