-- PersonalDB client-side tables, created by the first pdb_track() on a database.
-- Every statement is idempotent; STRICT is why PersonalDB needs SQLite 3.37+.

-- Tables being captured. `id` names the table's shadow table and triggers
-- (pdb_shadow_<id>, pdb_<id>_ai ...), so user table names never need quoting there.
CREATE TABLE IF NOT EXISTS pdb_tracked (
  name       TEXT PRIMARY KEY,     -- spelled as in sqlite_schema
  id         INTEGER NOT NULL UNIQUE,
  columns    TEXT NOT NULL,        -- JSON shape at pdb_track time: [{name,type,pk,notnull}]
  tracked_at INTEGER NOT NULL      -- unix ms
) STRICT;

-- Local commits waiting to be pushed, oldest first. `id` is the local commit id that
-- pdb_commit() returns; AUTOINCREMENT so an id is never reused after a push.
CREATE TABLE IF NOT EXISTS pdb_upload_queue (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  changeset       BLOB NOT NULL,   -- canonical SQLite changeset
  hash            TEXT NOT NULL,   -- BLAKE3 of changeset, lower-case hex
  idempotency_key TEXT NOT NULL UNIQUE,
  base_seq        INTEGER NOT NULL,-- seq of the head the commit was made on
  base_head       TEXT,            -- that head, hex; NULL = genesis of the group not yet opened
  schema_hash     TEXT NOT NULL,   -- DESIGN §4 schema hash of the tracked tables, hex
  meta            TEXT,            -- application JSON given to pdb_commit()
  created_at      INTEGER NOT NULL,-- unix ms
  pushed_seq      INTEGER,         -- seq the witness certified it at, once it answered
  dead            TEXT             -- why the witness refused it for good (dead letter)
) STRICT;

-- Per-database settings and state: client_id (random 128-bit hex), head_seq, head.
CREATE TABLE IF NOT EXISTS pdb_local (
  key   TEXT PRIMARY KEY,
  value ANY
) STRICT;
INSERT OR IGNORE INTO pdb_local(key, value) VALUES ('client_id', lower(hex(randomblob(16))));

-- Holds a row only inside pdb_apply()'s transaction; capture triggers check it so that
-- changes from other devices are never recorded as local ones. Other connections never
-- see the row: it is written and removed within one write transaction.
CREATE TABLE IF NOT EXISTS pdb_apply_guard (
  active INTEGER PRIMARY KEY
) STRICT;

-- The certified history this device has applied, one row per commit (DESIGN §4). The
-- group and witness key are in pdb_local; changesets are not kept (they are in the
-- tables), so pdb_verify() re-checks heads and signatures from these columns alone.
CREATE TABLE IF NOT EXISTS pdb_commits (
  seq             INTEGER PRIMARY KEY,
  prev            TEXT NOT NULL,   -- head(seq-1), hex
  head            TEXT NOT NULL,   -- head(seq), hex
  state           TEXT NOT NULL,   -- state digest at seq, hex
  changeset_hash  TEXT NOT NULL,
  idempotency_key TEXT NOT NULL,
  committed_at    INTEGER NOT NULL,-- unix ms, by the witness
  signature       TEXT NOT NULL,   -- base64
  local_id        INTEGER          -- pdb_upload_queue id when this device wrote it
) STRICT;

-- How pull resolves rows that both this device and the group changed (DESIGN §6).
-- Tables without a row here use 'column-merge'.
CREATE TABLE IF NOT EXISTS pdb_strategies (
  table_name TEXT PRIMARY KEY,
  strategy   TEXT NOT NULL CHECK (strategy IN
               ('remote-wins', 'local-wins', 'column-merge', 'custom', 'manual')),
  function   TEXT,                 -- the SQL function of 'custom'
  CHECK ((strategy = 'custom') = (function IS NOT NULL))
) STRICT;

-- Local writes that did not survive a rebase as written, so that none is lost silently
-- (DESIGN §7 invariant 2). Rows are JSON objects by column name, NULL when absent.
CREATE TABLE IF NOT EXISTS pdb_conflicts (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  table_name  TEXT NOT NULL,
  pk          TEXT NOT NULL,       -- JSON array of the key values
  base        TEXT,                -- the row before the local write
  local       TEXT,                -- the row as the local write left it
  remote      TEXT,                -- the row as the group's history left it
  strategy    TEXT NOT NULL,       -- the table's strategy, or 'rejected'
  outcome     TEXT,                -- the row kept
  status      TEXT NOT NULL CHECK (status IN ('open', 'resolved', 'rejected')),
  reason      TEXT,                -- for 'rejected': the witness's answer
  local_id    INTEGER,             -- pdb_upload_queue id, NULL for uncommitted edits
  head_seq    INTEGER NOT NULL,    -- the head the write was rebased onto
  created_at  INTEGER NOT NULL,
  resolved_at INTEGER
) STRICT;
