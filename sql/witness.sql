-- The witness's history store (DATA/witness.db): every group and every certified
-- commit. It is the source of truth; the per-group replicas (DATA/groups/<g>.db) are
-- derived from it and rebuilt or caught up from it at start-up. Opened with
-- journal_mode=WAL and synchronous=FULL: a commit is on disk before its certificate
-- leaves the process.

CREATE TABLE IF NOT EXISTS groups (
  id          INTEGER PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,   -- the {g} of the HTTP API
  ddl         TEXT NOT NULL,          -- CREATE statements of the tracked tables, as given
  schema_hash BLOB NOT NULL,          -- DESIGN §4 over the tables the DDL creates
  created_at  INTEGER NOT NULL        -- unix ms
) STRICT;

CREATE TABLE IF NOT EXISTS commits (
  group_id        INTEGER NOT NULL REFERENCES groups(id),
  seq             INTEGER NOT NULL,   -- 1, 2, ... per group, no gaps
  prev            BLOB NOT NULL,      -- head(seq - 1)
  head            BLOB NOT NULL,      -- head(seq)
  state           BLOB NOT NULL,      -- state(seq)
  changeset_hash  BLOB NOT NULL,
  idempotency_key TEXT NOT NULL,
  client_id       TEXT,               -- Pdb-Client of the submitter
  meta            TEXT,               -- Pdb-Meta as given
  committed_at    INTEGER NOT NULL,   -- unix ms
  signature       BLOB NOT NULL,      -- Ed25519 over the certificate message
  changeset       BLOB NOT NULL,
  PRIMARY KEY (group_id, seq),
  UNIQUE (group_id, idempotency_key)
) STRICT;

-- The certificates of compacted commits (see `snapshots`), moved here from `commits`
-- without their changesets: a retried commit whose key was certified before the
-- compaction still gets its original certificate back, never a second commit (DESIGN
-- §5, §7 invariant 4). About 250 bytes per commit, kept for good.
CREATE TABLE IF NOT EXISTS compacted (
  group_id        INTEGER NOT NULL REFERENCES groups(id),
  seq             INTEGER NOT NULL,
  prev            BLOB NOT NULL,
  head            BLOB NOT NULL,
  state           BLOB NOT NULL,
  changeset_hash  BLOB NOT NULL,
  idempotency_key TEXT NOT NULL,
  client_id       TEXT,
  meta            TEXT,
  committed_at    INTEGER NOT NULL,
  signature       BLOB NOT NULL,
  PRIMARY KEY (group_id, seq),
  UNIQUE (group_id, idempotency_key)
) STRICT;

-- Snapshots (DESIGN §4): database images of a group's tables at a head, stored as
-- DATA/objects/<blake3 hex>, described by a signed manifest. `kind` is why it was
-- made: 'policy' (every N commits or M bytes), 'admin' (asked for), 'restore' (a past
-- head someone asked for). Retention counts only 'policy' and 'admin' snapshots;
-- commits older than the oldest retained one may be compacted away.
CREATE TABLE IF NOT EXISTS snapshots (
  group_id    INTEGER NOT NULL REFERENCES groups(id),
  seq         INTEGER NOT NULL,
  head        BLOB NOT NULL,
  state       BLOB NOT NULL,
  blake3      BLOB NOT NULL,        -- of the file; its object name
  size        INTEGER NOT NULL,
  schema_hash BLOB NOT NULL,
  signature   BLOB NOT NULL,        -- Ed25519 over the manifest message
  kind        TEXT NOT NULL,
  created_at  INTEGER NOT NULL,     -- unix ms
  PRIMARY KEY (group_id, seq)
) STRICT;
CREATE INDEX IF NOT EXISTS snapshots_by_object ON snapshots(blake3);

-- Projections (DESIGN §5): admin-declared views over a group's certified history,
-- built outside the commit path into DATA/projections/ (a cache, rebuilt from the
-- history when lost). One row per projection: its current definition. `id` is its
-- version and never reused (AUTOINCREMENT), so the tables of a redefinition are never
-- mistaken for the old one's.
CREATE TABLE IF NOT EXISTS projections (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  group_id   INTEGER NOT NULL REFERENCES groups(id),
  name       TEXT NOT NULL,
  spec       TEXT NOT NULL,          -- canonical JSON (projection::spec::Spec::canonical)
  created_at INTEGER NOT NULL,       -- unix ms
  UNIQUE (group_id, name)
) STRICT;
