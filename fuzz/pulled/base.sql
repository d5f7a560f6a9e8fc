-- The device database of the pulled_history fuzz target at its applied head (seq 1):
-- these rows arrive as the group's first certified commit. make-seeds.sh records the
-- target's seed changesets on the same state.
-- t: rowid table with an INTEGER PRIMARY KEY and a UNIQUE column (a redo can then
-- meet a constraint the new head makes fail); w: composite key declared in another
-- order than the columns, WITHOUT ROWID. Both are tracked. t 1's b is the REAL 0.0 and
-- local.sql changes another column of t 1, so that a remote -0.0 there (equal as a
-- REAL, another value in the record format and the state digest) meets the rebase.
CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT UNIQUE, b);
CREATE TABLE w(k1 TEXT, k2 INTEGER, v, PRIMARY KEY(k2, k1)) WITHOUT ROWID;
INSERT INTO t VALUES (1, 'one', 0.0), (2, 'two', NULL), (3, 'three', x'03'),
    (4, 'four', -4), (5, 'five', '5');
INSERT INTO w VALUES ('a', 1, 'x'), ('b', 1, 2), ('a', 2, NULL), ('c', 2, 0.5);
