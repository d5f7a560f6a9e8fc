-- The database the changeset_apply fuzz target applies to, as last committed
-- (make-seeds.sh builds its seeds on the same state).
-- t: rowid table with an INTEGER PRIMARY KEY; w: composite key declared in another
-- order than the columns, WITHOUT ROWID; u: NOT NULL, UNIQUE, CHECK and a trailing
-- column a changeset may leave out; c: a foreign key into t.
-- t and w are tracked by the fuzz target, u and c are not.
CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB);
CREATE TABLE w(k1 TEXT, k2 INTEGER, v, PRIMARY KEY(k2, k1)) WITHOUT ROWID;
CREATE TABLE u(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  n INTEGER CHECK (n >= 0),
  extra TEXT DEFAULT 'x'
);
CREATE TABLE c(id INTEGER PRIMARY KEY, tid INTEGER REFERENCES t(id));
INSERT INTO t VALUES (1, 'one', 1.5, x'01'), (2, 'two', NULL, NULL), (3, 'drei', -0.0, x'');
INSERT INTO w VALUES ('a', 1, 'x'), ('b', 1, 2), ('a', 2, NULL);
INSERT INTO u(id, name, n) VALUES (1, 'ann', 0), (2, 'bob', 5);
INSERT INTO c VALUES (1, 1), (2, NULL);
