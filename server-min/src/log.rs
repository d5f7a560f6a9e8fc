//! The certified history as a group's sequencer sees it: the one narrow interface
//! between ordering commits and keeping them, so that the history can live somewhere
//! other than `witness.db` (a server database, say) without touching the sequencer.
//! The SQLite implementation is `Store` in `store.rs`.

use bytes::Bytes;
use pdb_core::cert::{Certificate, Hash};

/// One certified commit as stored and served.
#[derive(Debug, Clone)]
pub struct StoredCommit {
    /// Its certificate.
    pub cert: Certificate,
    /// `Pdb-Client` of the device that submitted it.
    pub client: Option<String>,
    /// `Pdb-Meta` as submitted.
    pub meta: Option<String>,
    /// The payload (a changeset).
    pub changeset: Bytes,
}

/// Where certified commits are kept. Every call may block (the sequencer runs on its
/// own thread); a group is named by the id its registration returned. A certificate
/// is rebuilt from its columns, so reads take the group's name and the witness key
/// rather than store them per commit.
pub trait Log: Send + Sync + 'static {
    /// A storage failure; nothing it touched was certified.
    type Error: std::fmt::Display + std::fmt::Debug + Send + 'static;

    /// Appends `commits` (consecutive seqs of one group) durably; returns once they
    /// are synced to disk, since an answer to a device may follow at once.
    fn append(&self, group_id: i64, commits: Vec<StoredCommit>) -> Result<(), Self::Error>;

    /// The highest seq stored for a group (0 if none).
    fn last_seq(&self, group_id: i64) -> Result<u64, Self::Error>;

    /// The oldest seq whose head the group's history still holds: 0 unless commits
    /// were compacted away, else the seq just before the first one kept.
    fn oldest_head(&self, group_id: i64) -> Result<u64, Self::Error>;

    /// `head(seq)` as stored: the head of commit `seq`, or the `prev` of commit
    /// `seq + 1` when `seq` itself was compacted away.
    fn head_at(&self, group_id: i64, seq: u64) -> Result<Option<Hash>, Self::Error>;

    /// The commit an idempotency key was certified with in a group, if any. A compacted
    /// commit is found too (its certificate is kept), with an empty changeset, so that
    /// exactly-once outlives compaction.
    fn by_key(
        &self,
        group_id: i64,
        group: &str,
        witness_key: [u8; 32],
        key: &str,
    ) -> Result<Option<StoredCommit>, Self::Error>;

    /// Commits after `after`, in order: at most `limit`, and no more than `max_bytes` of
    /// changesets (but always at least one, so a large commit can still be read).
    fn commits_after(
        &self,
        group_id: i64,
        group: &str,
        witness_key: [u8; 32],
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredCommit>, Self::Error>;

    /// Bytes of changesets after `seq` (what a snapshot at `seq` saves a new device).
    fn bytes_after(&self, group_id: i64, seq: u64) -> Result<u64, Self::Error>;

    /// The seq of the group's newest policy or admin snapshot (0 if none): restores of
    /// past heads do not count, as they save a new device nothing.
    fn last_snapshot_seq(&self, group_id: i64) -> Result<u64, Self::Error>;
}
