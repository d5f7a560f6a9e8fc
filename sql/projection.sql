-- Bookkeeping inside a group's projection file (DATA/projections/<g>/mirror-<n>.db),
-- beside the mirror of the group's tables (kept by `Replica` with its `pdb_replica`
-- cursor) and the tables and triggers of each projection version (`pdb_p<version>_*`).
-- Written in the same transactions as the derived rows, so cursor and rows move
-- together.

-- One row per projection version built here: ready (serving) or failed.
CREATE TABLE IF NOT EXISTS pdb_proj_meta (
  version    INTEGER PRIMARY KEY,     -- projections.id in witness.db
  name       TEXT NOT NULL,
  spec       TEXT NOT NULL,           -- canonical JSON it was built from
  state      TEXT NOT NULL CHECK (state IN ('ready', 'failed')),
  error      TEXT,                    -- why it failed
  built_seq  INTEGER NOT NULL,        -- cursor when it became ready (or failed)
  touched_at INTEGER NOT NULL         -- unix ms of the last change of state
) STRICT;

-- One row once the mirror stopped reproducing the certified state: every projection
-- of the file failed with it, and the next definition rebuilds the file.
CREATE TABLE IF NOT EXISTS pdb_proj_diverged (
  id     INTEGER PRIMARY KEY CHECK (id = 1),
  seq    INTEGER NOT NULL,
  reason TEXT NOT NULL
) STRICT;
