#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/seeds/ from real SQLite sessions, so that the
# seeds are changesets exactly as the session extension writes them.
# Needs the sqlite3 command-line shell built with the session extension (Debian's is).
# Usage: bash fuzz/make-seeds.sh
set -euo pipefail

fuzz=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
apply_seeds="$fuzz/seeds/changeset_apply"
decode_seeds="$fuzz/seeds/changeset_decode"
rm -rf "$apply_seeds" "$decode_seeds"
mkdir -p "$apply_seeds" "$decode_seeds"

# record NAME STATE_SQL WRITES_SQL: the changeset of WRITES_SQL, made on a database
# holding STATE_SQL, into $work/NAME. Every table is attached to the session.
record() {
    local name=$1 state=$2 writes=$3
    rm -f "$work/db"
    {
        printf '%s\n' "$state"
        printf '.session open main s\n.session attach *\n'
        printf '%s\n' "$writes"
        printf '.session changeset %s\n' "$work/$name"
    } | sqlite3 -bail "$work/db"
    test -s "$work/$name" || { echo "make-seeds: $name is empty" >&2; exit 1; }
}

base=$(cat "$fuzz/apply/base.sql")
local_edits=$(cat "$fuzz/apply/local.sql")
# The state the fuzz target applies to: committed rows plus the local edits.
target="$base
$local_edits"

# Applies cleanly: an update, an insert with a BLOB value, a delete, and a child row.
record clean "$target" "
UPDATE t SET a = 'deux', b = 2.25 WHERE id = 2;
INSERT INTO w VALUES ('c', 5, x'00ff');
DELETE FROM u WHERE id = 2;
INSERT INTO c VALUES (3, 2);"

# Made on the committed state, so it meets the local edits: a DATA conflict (t 1), a
# NOTFOUND (t 3, deleted locally), a CONFLICT (t 4, inserted locally), and a DATA
# conflict on the composite key (w 1/'a').
record conflicts "$base" "
UPDATE t SET a = 'ein' WHERE id = 1;
DELETE FROM t WHERE id = 3;
INSERT INTO t VALUES (4, 'four', NULL, x'04');
UPDATE w SET v = 'z' WHERE k1 = 'a' AND k2 = 1;"

# A UNIQUE violation that clears once a later row is applied (u 0 takes bob's name
# before bob is renamed), and a CHECK violation that never does (n < 0).
record constraint "$target" "
UPDATE u SET name = 'carl' WHERE id = 2;
INSERT INTO u(id, name, n) VALUES (0, 'bob', 1);
UPDATE u SET n = 3 WHERE id = 1;"
# The CHECK violation cannot be made through SQL with the constraint in place.
record check "$(printf '%s\n' "$target" | sed 's/ CHECK (n >= 0)//')" "
UPDATE u SET n = -1 WHERE id = 1;"

# Deleting t 1 orphans c 1: a FOREIGN_KEY conflict.
record orphan "$target" "
DELETE FROM t WHERE id = 1;
UPDATE w SET v = 7 WHERE k1 = 'b' AND k2 = 1;"

# A changeset from a peer that does not have u's trailing column yet.
record narrow "$(printf '%s\n' "$target" |
    sed "/extra TEXT DEFAULT/d; s/n INTEGER CHECK (n >= 0),/n INTEGER CHECK (n >= 0)/")" "
INSERT INTO u(id, name, n) VALUES (7, 'dora', 2);
UPDATE u SET n = 6 WHERE id = 2;"

for s in clean conflicts constraint check orphan narrow; do
    cp "$work/$s" "$apply_seeds/$s"
done

# The decoder gets the same plus every value type, a long value (two-byte length
# varint), several updates of the composite key table, and indirect changes.
cp "$work/clean" "$work/conflicts" "$work/narrow" "$decode_seeds/"
record types "" "
CREATE TABLE v(k PRIMARY KEY, x, y);
INSERT INTO v VALUES (1, NULL, 1.5), ('two', -9223372036854775808, x''),
    (x'ff00', 'é€😀', -0.0), (3.25, x'', 1e308);
INSERT INTO v VALUES (4, 'line
break \"quoted\" \\ tab	', zeroblob(200));"
record composite "$base" "
UPDATE w SET v = 'p' WHERE k2 = 1;
DELETE FROM w WHERE k2 = 2;
INSERT INTO w VALUES ('z', -1, 0.5);"
record indirect "$base" "
CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO c VALUES (NEW.id + 100, NEW.id); END;
INSERT INTO t VALUES (9, 'nine', 9.0, NULL);"
cp "$work/types" "$work/composite" "$work/indirect" "$decode_seeds/"

ls -l "$apply_seeds" "$decode_seeds"
