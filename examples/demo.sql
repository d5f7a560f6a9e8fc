-- The PersonalDB extension in the sqlite3 shell: track a table, write, commit, and look
-- at the commit. Run from the repository root: sqlite3 demo.db < examples/demo.sql
.load ./target/release/libpdb
.mode box
.headers on

CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT, stars INTEGER);
INSERT INTO notes VALUES (1, 'groceries', 'milk, eggs', 0);

-- Existing rows become the first commit's inserts.
SELECT pdb_track('notes') AS tracked;

-- Ordinary SQL. Capture is done by triggers, so any connection's writes count.
INSERT INTO notes(title, body) VALUES ('ideas', 'sync sqlite between devices');
UPDATE notes SET stars = 5 WHERE id = 1;
UPDATE notes SET body = 'milk, eggs, bread' WHERE id = 1;   -- merged with the line above
INSERT INTO notes(title) VALUES ('scratch');
DELETE FROM notes WHERE title = 'scratch';                   -- insert + delete = nothing

SELECT 'pending changes' AS step;
SELECT tbl, op, pk, old, new FROM pdb_changeset_rows(pdb_changeset());

SELECT pdb_commit('{"device":"demo"}') AS commit_id;
SELECT id, length(changeset) AS bytes, substr(hash, 1, 16) || '…' AS blake3,
       substr(idempotency_key, 1, 8) || '…' AS idem_key, base_seq, meta
FROM pdb_upload_queue;

SELECT 'the queued commit, decoded' AS step;
SELECT tbl, op, pk, old, new
FROM pdb_changeset_rows((SELECT changeset FROM pdb_upload_queue ORDER BY id DESC LIMIT 1));

SELECT 'a second commit: one column of one row' AS step;
UPDATE notes SET stars = 4 WHERE id = 2;
SELECT pdb_commit() AS commit_id;
SELECT tbl, op, pk, old, new
FROM pdb_changeset_rows((SELECT changeset FROM pdb_upload_queue ORDER BY id DESC LIMIT 1));
