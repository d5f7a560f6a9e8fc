-- Local edits not yet committed when the changeset arrives, so that applying it has
-- saved original images to carry forward.
UPDATE t SET a = 'uno' WHERE id = 1;
DELETE FROM t WHERE id = 3;
INSERT INTO t VALUES (4, 'vier', 4.0, NULL);
UPDATE w SET v = 'y' WHERE k1 = 'a' AND k2 = 1;
