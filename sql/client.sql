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
  created_at      INTEGER NOT NULL -- unix ms
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
