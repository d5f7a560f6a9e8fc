-- Bookkeeping inside each group's replica (DATA/groups/<g>.db), next to the group's
-- own tables and written in the same transactions as them. The "pdb_" prefix can
-- never name a tracked table, so it cannot collide with the group's schema.
-- (Idempotency keys live in the history, witness.db, which is durable before the
-- sequencer looks at the next batch.)

-- One row: the last commit applied here, its head, and the 2048-byte state vector of
-- DESIGN §4 after it.
CREATE TABLE IF NOT EXISTS pdb_replica (
  id    INTEGER PRIMARY KEY CHECK (id = 1),
  seq   INTEGER NOT NULL,
  head  BLOB NOT NULL,
  state BLOB NOT NULL
) STRICT;
