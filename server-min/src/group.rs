//! One group's sequencer: a thread that owns the group's replica and accepts its
//! commits one at a time, in DESIGN §5's order of checks. Requests that arrive while a
//! batch is being made durable form the next batch: one replica transaction and one
//! history append (and so one fsync shared with every other group's batch) for all.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use pdb_core::cert::{genesis, hex, next_head, Certificate, Hash};
use tokio::sync::{oneshot, watch};

use crate::log::{Log, StoredCommit};
use crate::metrics::Metrics;
use crate::problem::{Code, Problem};
use crate::replica::{replay, Position, Refusal, Replica};
use crate::request::{CommitHeaders, Policy};

/// A commit as submitted: its checked headers and the payload.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// `Pdb-Base`, `Idempotency-Key`, `Pdb-Schema`, ...
    pub headers: CommitHeaders,
    /// The payload (a changeset).
    pub changeset: Bytes,
}

/// An accepted commit.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// Certified now.
    New(StoredCommit),
    /// Certified earlier under the same idempotency key and changeset.
    Duplicate(StoredCommit),
}

/// A group's head as published to readers and watchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Seq of the last durable commit.
    pub seq: u64,
    /// Its head.
    pub head: Hash,
    /// Its state digest.
    pub state: Hash,
}

/// What every request handler may know about a group.
pub struct GroupInfo {
    /// Row id in the history store.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Schema hash.
    pub schema_hash: Hash,
    /// The DDL it was created with.
    pub ddl: String,
    /// Its tables' shapes, as JSON.
    pub tables: serde_json::Value,
    /// The durable head; watchers wait on it.
    pub head: watch::Sender<Head>,
    /// The oldest head the history holds (0 until a compaction): retention raises it
    /// before it deletes, so the sequencer never looks up a base being deleted.
    pub oldest: Arc<AtomicU64>,
}

impl GroupInfo {
    /// [`GroupInfo::oldest`] now: the one answer to "how far back does the history go".
    pub fn oldest_head(&self) -> u64 {
        self.oldest.load(Ordering::Acquire)
    }
}

type Reply = oneshot::Sender<Result<Accepted, Problem>>;

enum Job {
    Commit {
        req: CommitRequest,
        reply: Reply,
    },
    /// Commit the replica's open transaction, then answer.
    Flush(mpsc::SyncSender<()>),
}

/// The groups by name, shared by the witness and the snapshot service.
pub type Groups = Arc<RwLock<HashMap<String, Arc<Group>>>>;

/// A running group: its info and the queue into its sequencer.
pub struct Group {
    /// The group's description and durable head.
    pub info: Arc<GroupInfo>,
    jobs: mpsc::Sender<Job>,
}

impl Group {
    /// Submits a commit and waits for its outcome (after it is durable, if accepted).
    pub async fn commit(&self, req: CommitRequest) -> Result<Accepted, Problem> {
        let (reply, wait) = oneshot::channel();
        self.jobs
            .send(Job::Commit { req, reply })
            .map_err(|_| unavailable("the group's sequencer has stopped"))?;
        wait.await
            .map_err(|_| unavailable("the group's sequencer has stopped"))?
    }

    /// Brings the replica file up to the durable head (before a graceful exit, or
    /// before reading the file directly) and waits until it is.
    pub fn flush(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// The durable head.
    pub fn head(&self) -> Head {
        *self.info.head.borrow()
    }
}

fn unavailable(detail: impl Into<String>) -> Problem {
    Problem::new(Code::Unavailable, detail)
}

/// Shared things a sequencer needs.
pub struct Env<L: Log> {
    /// The certified history.
    pub log: Arc<L>,
    /// The witness's signing key.
    pub key: Arc<SigningKey>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where the sequencer says a policy snapshot is due.
    pub snapshot_due: SnapshotDue,
}

/// When a policy snapshot is due and whom to tell: the sequencer only counts and
/// sends the group's name, so it holds nothing of the snapshot service.
#[derive(Debug, Clone)]
pub struct SnapshotDue {
    /// After this many commits since the last snapshot (0: never by count).
    pub every_commits: u64,
    /// After this many changeset bytes since the last snapshot (0: never by size).
    pub every_bytes: u64,
    /// Receives the name of a group whose snapshot is due.
    pub tx: mpsc::Sender<String>,
}

/// Catches the replica up with the history and starts the group's sequencer thread.
pub fn start<L: Log>(
    id: i64,
    name: &str,
    ddl: &str,
    replica: Replica,
    env: Env<L>,
) -> Result<Group, String> {
    let tables = serde_json::Value::Array(
        replica
            .tables()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "columns": serde_json::from_str::<serde_json::Value>(&t.shape_json()).unwrap_or_default(),
                })
            })
            .collect(),
    );
    let mut seq = Sequencer {
        id,
        name: name.to_string(),
        replica,
        pos: Position {
            seq: 0,
            head: genesis(name),
            state: Default::default(),
        },
        recent: VecDeque::new(),
        open_batches: 0,
        since_snapshot: (0, 0),
        oldest: Arc::new(AtomicU64::new(
            env.log.oldest_head(id).map_err(|e| e.to_string())?,
        )),
        env,
    };
    seq.catch_up()?;
    // What the history grew by since the last snapshot, for the policy.
    let last = seq
        .env
        .log
        .last_snapshot_seq(id)
        .map_err(|e| e.to_string())?;
    seq.since_snapshot = (
        seq.pos.seq.saturating_sub(last),
        seq.env
            .log
            .bytes_after(id, last)
            .map_err(|e| e.to_string())?,
    );
    let head = Head {
        seq: seq.pos.seq,
        head: seq.pos.head,
        state: seq.pos.state.digest(),
    };
    let info = Arc::new(GroupInfo {
        id,
        name: name.to_string(),
        schema_hash: seq.replica.schema_hash(),
        ddl: ddl.to_string(),
        tables,
        head: watch::channel(head).0,
        oldest: seq.oldest.clone(),
    });
    let (jobs, rx) = mpsc::channel();
    let shared = info.clone();
    std::thread::Builder::new()
        .name(format!("pdb-group-{id}"))
        .spawn(move || seq.run(rx, &shared))
        .map_err(|e| format!("cannot start the group's thread: {e}"))?;
    Ok(Group { info, jobs })
}

/// Heads kept in memory for checking recent `Pdb-Base`s without a read.
const RECENT_HEADS: usize = 4096;
/// Most requests taken into one batch.
const MAX_BATCH: usize = 512;
/// The replica's transaction is committed after this many batches...
const FLUSH_EVERY: usize = 256;
/// ...or once no request came for this long.
const FLUSH_IDLE: std::time::Duration = std::time::Duration::from_millis(20);

struct Sequencer<L: Log> {
    id: i64,
    name: String,
    replica: Replica,
    pos: Position,
    /// (seq, head) of the latest commits, oldest first.
    recent: VecDeque<(u64, Hash)>,
    /// Batches applied to the replica's open transaction (durable in the history,
    /// not yet committed to the replica file); 0 when no transaction is open.
    open_batches: usize,
    /// Commits and changeset bytes certified since the last snapshot was asked for.
    since_snapshot: (u64, u64),
    /// [`GroupInfo::oldest`].
    oldest: Arc<AtomicU64>,
    env: Env<L>,
}

enum Outcome {
    Done(Box<Result<Accepted, Problem>>),
    /// Accepted as `pending[i]`, durable once the batch is.
    Pending(usize),
    /// A retry of `pending[i]` within the same batch.
    PendingDuplicate(usize),
}

/// A storage failure in the middle of a batch: the whole batch is undone.
struct BatchFailed(String);

impl Outcome {
    fn done(r: Result<Accepted, Problem>) -> Outcome {
        Outcome::Done(Box::new(r))
    }
}

impl<L: Log> Sequencer<L> {
    fn run(mut self, rx: Receiver<Job>, info: &GroupInfo) {
        loop {
            // While the replica has uncommitted batches, wake up to commit them once
            // the group goes quiet.
            let first = if self.open_batches > 0 {
                match rx.recv_timeout(FLUSH_IDLE) {
                    Ok(j) => j,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.flush();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            };
            let mut jobs = Vec::new();
            let mut flushed = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Commit { req, reply } => jobs.push((req, reply)),
                    Job::Flush(done) => flushed.push(done),
                }
                next = if jobs.len() < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !jobs.is_empty() {
                self.batch(jobs, info);
            }
            if self.open_batches >= FLUSH_EVERY || !flushed.is_empty() {
                self.flush();
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
        self.flush();
    }

    /// Commits the replica's open transaction: every batch in it is already durable
    /// in the history, so this only saves start-up a replay.
    fn flush(&mut self) {
        if self.open_batches == 0 {
            return;
        }
        self.open_batches = 0;
        let done = self
            .replica
            .set_position(&self.pos)
            .and_then(|()| self.replica.commit());
        if let Err(e) = done {
            tracing::error!(group = %self.name, error = %e, "replica commit failed; catching up from the history");
            self.recover();
        }
    }

    /// Drops the replica's open transaction and rebuilds the position from the
    /// replica's last commit plus the history.
    fn recover(&mut self) {
        self.open_batches = 0;
        let _ = self.replica.rollback();
        match self.catch_up() {
            Ok(()) => {
                let seq = self.pos.seq;
                self.recent.retain(|&(s, _)| s <= seq);
            }
            Err(e) => {
                tracing::error!(group = %self.name, error = %e, "replica cannot catch up");
            }
        }
    }

    fn batch(&mut self, jobs: Vec<(CommitRequest, Reply)>, info: &GroupInfo) {
        let mut pending: Vec<StoredCommit> = Vec::new();
        let mut keys: HashMap<String, usize> = HashMap::new();
        let mut run = |this: &mut Self, pending: &mut Vec<StoredCommit>| {
            if this.open_batches == 0 {
                this.replica
                    .begin()
                    .map_err(|e| BatchFailed(e.to_string()))?;
            }
            this.open_batches += 1;
            let mut outcomes = Vec::with_capacity(jobs.len());
            for (req, _) in &jobs {
                outcomes.push(this.one(req, pending, &mut keys)?);
            }
            if !pending.is_empty() {
                this.env
                    .log
                    .append(this.id, pending.clone())
                    .map_err(|e| BatchFailed(e.to_string()))?;
            }
            Ok(outcomes)
        };
        let outcomes = match run(self, &mut pending) {
            Ok(o) => o,
            Err(BatchFailed(why)) => {
                // Undo this batch (and the durable batches not yet committed to the
                // replica, which the history replays back).
                tracing::error!(group = %self.name, error = %why, "batch failed; nothing certified");
                self.recover();
                for (_, reply) in jobs {
                    let _ = reply.send(Err(unavailable(format!("storage failed: {why}"))));
                }
                return;
            }
        };
        if !pending.is_empty() {
            info.head.send_replace(Head {
                seq: self.pos.seq,
                head: self.pos.head,
                state: pending.last().map_or([0; 32], |c| c.cert.state),
            });
            self.env
                .metrics
                .commits
                .fetch_add(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.since_snapshot.0 += pending.len() as u64;
            self.since_snapshot.1 += pending
                .iter()
                .map(|c| c.changeset.len() as u64)
                .sum::<u64>();
            let policy = &self.env.snapshot_due;
            let due = (policy.every_commits > 0 && self.since_snapshot.0 >= policy.every_commits)
                || (policy.every_bytes > 0 && self.since_snapshot.1 >= policy.every_bytes);
            if due {
                self.since_snapshot = (0, 0);
                // The snapshot copies the replica file: commit what it should hold.
                self.flush();
                // Gone only when the witness is shutting down: nothing left to snapshot.
                let _ = self.env.snapshot_due.tx.send(self.name.clone());
            }
        }
        for ((_, reply), outcome) in jobs.into_iter().zip(outcomes) {
            let result = match outcome {
                Outcome::Done(r) => *r,
                Outcome::Pending(i) => Ok(Accepted::New(pending[i].clone())),
                Outcome::PendingDuplicate(i) => Ok(Accepted::Duplicate(pending[i].clone())),
            };
            let _ = reply.send(result);
        }
    }

    fn with_head(&self, p: Problem) -> Problem {
        p.with("seq", self.pos.seq)
            .with("head", hex(&self.pos.head))
    }

    fn one(
        &mut self,
        req: &CommitRequest,
        pending: &mut Vec<StoredCommit>,
        keys: &mut HashMap<String, usize>,
    ) -> Result<Outcome, BatchFailed> {
        let storage = |e: &dyn std::fmt::Display| BatchFailed(e.to_string());
        let hash = *blake3::hash(&req.changeset).as_bytes();
        let (changeset, req) = (&req.changeset, &req.headers);
        let reuse = || {
            Problem::new(
                Code::IdempotencyConflict,
                format!(
                    "Idempotency-Key \"{}\" was already used with a different changeset",
                    req.idempotency_key
                ),
            )
        };
        if let Some(&i) = keys.get(&req.idempotency_key) {
            return Ok(if pending[i].cert.changeset_hash == hash {
                Outcome::PendingDuplicate(i)
            } else {
                Outcome::done(Err(reuse()))
            });
        }
        // Compacted commits are found too: exactly-once outlives the history's prefix.
        if let Some(earlier) = self
            .env
            .log
            .by_key(
                self.id,
                &self.name,
                self.env.key.verifying_key().to_bytes(),
                &req.idempotency_key,
            )
            .map_err(|e| storage(&e))?
        {
            return Ok(Outcome::done(if earlier.cert.changeset_hash == hash {
                Ok(Accepted::Duplicate(earlier))
            } else {
                Err(reuse())
            }));
        }
        let schema_hash = self.replica.schema_hash();
        if req.schema_hash != schema_hash {
            return Ok(Outcome::done(Err(Problem::new(
                Code::SchemaMismatch,
                format!(
                    "Pdb-Schema {} differs from the group's schema {}",
                    hex(&req.schema_hash),
                    hex(&schema_hash)
                ),
            )
            .with("schema_hash", hex(&schema_hash)))));
        }
        let touched = match self.replica.validate(changeset) {
            Ok(t) => t,
            Err(Refusal::Invalid(why)) => {
                return Ok(Outcome::done(Err(Problem::new(
                    Code::InvalidChangeset,
                    why,
                ))))
            }
            // Validation reads nothing from storage and applies nothing, so this arm
            // is only here to keep the match total without a panic.
            Err(other) => return Err(BatchFailed(format!("validation: {other:?}"))),
        };
        let (base_seq, base_head) = req.base;
        if base_seq > self.pos.seq {
            return Ok(Outcome::done(Err(self.with_head(Problem::new(
                Code::StaleBase,
                format!(
                    "Pdb-Base seq {base_seq} is ahead of the head {}",
                    self.pos.seq
                ),
            )))));
        }
        if base_seq < self.pos.seq {
            // Before anything about the base is looked up (recent heads are kept in
            // memory, and genesis is always known): a base the history no longer
            // holds cannot be checked, whatever the policy.
            let oldest = self.oldest.load(Ordering::Acquire);
            if base_seq < oldest {
                return Ok(Outcome::done(Err(self
                    .with_head(Problem::new(
                        Code::Compacted,
                        format!(
                            "Pdb-Base seq {base_seq} was compacted away: bootstrap from a snapshot"
                        ),
                    ))
                    .with("oldest_seq", oldest))));
            }
        }
        let known = self.head_at(base_seq).map_err(|e| storage(&e))?;
        match known {
            Some(h) if h == base_head => {}
            _ => {
                return Ok(Outcome::done(Err(self.with_head(Problem::new(
                    Code::StaleBase,
                    format!(
                        "Pdb-Base {base_seq}:{} is not in this group's history",
                        hex(&base_head)
                    ),
                )))))
            }
        }
        if base_seq != self.pos.seq && req.policy == Policy::FastForward {
            return Ok(Outcome::done(Err(self.with_head(Problem::new(
                Code::StaleBase,
                format!(
                    "Pdb-Base seq {base_seq} is not the head {} (policy fast-forward)",
                    self.pos.seq
                ),
            )))));
        }
        let mut state = self.pos.state.clone();
        match self.replica.apply(changeset, &touched, &mut state) {
            Ok(()) => {}
            Err(Refusal::Conflict(rows)) => {
                let detail = format!("{} row(s) conflict with head {}", rows.len(), self.pos.seq);
                return Ok(Outcome::done(Err(self
                    .with_head(Problem::new(Code::Conflict, detail))
                    .with("rows", rows))));
            }
            Err(Refusal::Invalid(why)) => {
                return Ok(Outcome::done(Err(Problem::new(
                    Code::InvalidChangeset,
                    why,
                ))))
            }
            Err(Refusal::Storage(e)) => return Err(storage(&e)),
        }
        let seq = self.pos.seq + 1;
        let head = next_head(&self.pos.head, seq, &hash);
        let cert = Certificate::sign(
            &self.env.key,
            &self.name,
            seq,
            self.pos.head,
            head,
            state.digest(),
            hash,
            &req.idempotency_key,
            crate::now_ms(),
        );
        self.pos = Position { seq, head, state };
        self.remember(seq, head);
        pending.push(StoredCommit {
            cert,
            client: req.client.clone(),
            meta: req.meta.clone(),
            changeset: changeset.clone(),
        });
        keys.insert(req.idempotency_key.clone(), pending.len() - 1);
        Ok(Outcome::Pending(pending.len() - 1))
    }

    fn remember(&mut self, seq: u64, head: Hash) {
        if self.recent.len() == RECENT_HEADS {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, head));
    }

    fn head_at(&self, seq: u64) -> Result<Option<Hash>, L::Error> {
        if seq == self.pos.seq {
            return Ok(Some(self.pos.head));
        }
        if seq == 0 {
            return Ok(Some(genesis(&self.name)));
        }
        if let Some(&(first, _)) = self.recent.front() {
            if seq >= first {
                return Ok(self.recent.get((seq - first) as usize).map(|&(_, h)| h));
            }
        }
        self.env.log.head_at(self.id, seq)
    }

    /// Replays the commits the history has and the replica lacks, checking that each
    /// yields the certified head and state (start-up, and after a failed replica commit).
    fn catch_up(&mut self) -> Result<(), String> {
        let mut pos = self.replica.position().map_err(|e| e.to_string())?;
        let last = self.env.log.last_seq(self.id).map_err(|e| e.to_string())?;
        if pos.seq > last {
            return Err(format!(
                "group \"{}\": the replica is at seq {} but the history ends at {last}",
                self.name, pos.seq
            ));
        }
        let wkey = self.env.key.verifying_key().to_bytes();
        while pos.seq < last {
            let commits = self
                .env
                .log
                .commits_after(self.id, &self.name, wkey, pos.seq, 256, 64 << 20)
                .map_err(|e| e.to_string())?;
            if commits.is_empty() {
                break;
            }
            self.replica.begin().map_err(|e| e.to_string())?;
            let replayed = replay(&self.replica, &mut pos, &commits);
            let done = replayed
                .and_then(|()| self.replica.set_position(&pos).map_err(|e| e.to_string()))
                .and_then(|()| self.replica.commit().map_err(|e| e.to_string()));
            if let Err(e) = done {
                let _ = self.replica.rollback();
                return Err(format!(
                    "group \"{}\": replaying the history: {e}",
                    self.name
                ));
            }
        }
        if pos.seq > 0 {
            self.remember(pos.seq, pos.head);
        }
        self.pos = pos;
        Ok(())
    }
}
