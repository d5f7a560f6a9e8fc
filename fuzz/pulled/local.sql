-- The device's local changes on top of base.sql, pending when the remote commits
-- arrive: two queued local commits (each section ending in a `-- pdb_commit()` line
-- is closed with queue::commit), then uncommitted edits. The three steps touch
-- disjoint rows, so that the fuzz target knows each row's B and L (DESIGN §6).
-- Queued commit 1: an update, a delete, an insert into w.
UPDATE t SET a = 'uno' WHERE id = 1;
DELETE FROM t WHERE id = 3;
INSERT INTO w VALUES ('d', 1, 'local');
-- pdb_commit()
-- Queued commit 2: an update of w, an insert into t.
UPDATE w SET v = 'y' WHERE k1 = 'a' AND k2 = 1;
INSERT INTO t VALUES (10, 'ten', 10);
-- pdb_commit()
-- Uncommitted: updates of other columns, a delete, an insert.
UPDATE t SET b = 2.5 WHERE id = 2;
UPDATE t SET a = 'vier', b = x'04' WHERE id = 4;
DELETE FROM w WHERE k1 = 'b' AND k2 = 1;
INSERT INTO t VALUES (11, 'eleven', NULL);
