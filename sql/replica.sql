-- Bookkeeping inside each group's replica (DATA/groups/<g>.db), next to the group's
-- own tables and written in the same transactions as them. The "pdb_" prefix can
-- never name a tracked table, so these cannot collide with the group's schema.

-- 'seq', 'head' (32 bytes) and 'state' (the 2048-byte state vector of DESIGN §4) of
-- the last commit applied here.
CREATE TABLE IF NOT EXISTS pdb_replica (
  key   TEXT PRIMARY KEY,
  value ANY
) STRICT;

-- Idempotency keys of applied commits, checked before anything else about a commit.
CREATE TABLE IF NOT EXISTS pdb_replica_idem (
  key            TEXT PRIMARY KEY,
  seq            INTEGER NOT NULL,
  changeset_hash BLOB NOT NULL
) STRICT;
