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
pulled_seeds="$fuzz/seeds/pulled_history"
rm -rf "$apply_seeds" "$decode_seeds" "$pulled_seeds"
mkdir -p "$apply_seeds" "$decode_seeds" "$pulled_seeds"

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

# pulled_history: two control bytes (which queued commit each remote commit confirms,
# two bits per commit; the strategies of t and w, two bits each), then the payloads of
# the remote commits separated by "|next|" (see fuzz_targets/pulled_history.rs). Each
# payload is recorded on fuzz/pulled/base.sql (the device's head) plus the payloads
# before it, so that the chain applies at head, unless said otherwise.
pulled_base=$(cat "$fuzz/pulled/base.sql")
# section N: the Nth part of pulled/local.sql (1, 2: the queued commits, 3: the
# uncommitted edits).
section() {
    awk -v n="$1" '/^-- pdb_commit\(\)$/ { i++; next } i == n - 1' "$fuzz/pulled/local.sql"
}
# history NAME CONTROL WRITES...: the seed NAME: CONTROL (printf escapes), then the
# changeset of each WRITES on the base plus the WRITES before it.
history() {
    local name=$1 control=$2 state=$pulled_base i=0
    shift 2
    printf "$control" >"$pulled_seeds/$name"
    for writes in "$@"; do
        record "p$i" "$state" "$writes"
        if [[ $i -gt 0 ]]; then printf '|next|' >>"$pulled_seeds/$name"; fi
        cat "$work/p$i" >>"$pulled_seeds/$name"
        state="$state
$writes"
        i=$((i + 1))
    done
}

# Rows no local step touched: an update, an insert, a delete, an insert into w.
clean="
UPDATE t SET b = 55 WHERE id = 5;
INSERT INTO t VALUES (6, 'six', x'06');
DELETE FROM w WHERE k1 = 'c' AND k2 = 2;
INSERT INTO w VALUES ('e', 3, 'e');"
history clean '\x00\x00' "$clean"

# Every case of DESIGN §6's table against the local steps: update/update (t 1's a,
# w a/1), remote update of a locally deleted row (t 3), remote delete of a locally
# updated row (t 2, uncommitted; t 4 with another column), insert/insert (t 10 of
# queued commit 2, w d/1 of queued commit 1, t 11 uncommitted).
overlap="
UPDATE t SET a = 'ein' WHERE id = 1;
UPDATE t SET b = 33 WHERE id = 3;
DELETE FROM t WHERE id = 2;
UPDATE t SET b = 44 WHERE id = 4;
INSERT INTO t VALUES (10, 'zehn', 10), (11, 'eleven', 11);
UPDATE w SET v = 'z' WHERE k1 = 'a' AND k2 = 1;
INSERT INTO w VALUES ('d', 1, 'remote');"
history overlap '\x00\x00' "$overlap"
history overlap-remote-wins '\x00\x05' "$overlap"
history overlap-local-wins '\x00\x0a' "$overlap"
history overlap-manual '\x00\x0f' "$overlap"

# Values the local writes also write, so that their redo meets the UNIQUE of t.a:
# 'vier' (uncommitted, t 4) and 'ten' (queued commit 2, t 10) taken by other rows
# (t local-wins).
history unique '\x00\x02' "
INSERT INTO t VALUES (12, 'vier', NULL);
UPDATE t SET a = 'ten' WHERE id = 5;"

# Three commits building on each other over local rows and others.
history chain '\x00\x00' "
INSERT INTO t VALUES (6, 'six', 6);
UPDATE t SET a = 'one!' WHERE id = 1;" "
UPDATE t SET b = 7, a = 'sechs' WHERE id = 6;
DELETE FROM w WHERE k1 = 'a' AND k2 = 1;" "
DELETE FROM t WHERE id = 6;
INSERT INTO w VALUES ('a', 1, 'back');"

# This device's own queued commits, certified: the first alone, then both in order
# (keys byte: commit 2 carries queued commit 1's key, commit 3 queued commit 2's).
history confirm '\x01\x00' "$(section 1)"
history confirm-both '\x09\x00' "$(section 1)" "$(section 2)"
# Queued commit 1's key on another changeset, after a commit of someone else's.
history confirm-other '\x04\x00' "$clean" "$overlap"

# Made on the device's local state, not the head: w d/1 exists only locally, so the
# commit does not apply to head and integrate must refuse the pull; alone, and as the
# second commit after one that applies.
record local-only "$pulled_base
$(section 1)" "UPDATE w SET v = 'gone' WHERE k1 = 'd' AND k2 = 1;"
{ printf '\x00\x00'; cat "$work/local-only"; } >"$pulled_seeds/diverged"
history p '\x00\x00' "$clean"
{ cat "$pulled_seeds/p"; printf '|next|'; cat "$work/local-only"; } >"$pulled_seeds/chain-diverged"
rm "$pulled_seeds/p"

# Four commits, each confirming nothing, the last one empty.
history four '\xff\x00' "$clean" "UPDATE t SET a = 'fuenf' WHERE id = 5;" \
    "DELETE FROM t WHERE id = 5;"
printf '|next|' >>"$pulled_seeds/four"

# A peer whose t has no column b yet: a table this device tracks with another shape.
record p0 "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT UNIQUE);" \
    "INSERT INTO t VALUES (7, 'seven');"
{ printf '\x00\x00'; cat "$work/p0"; } >"$pulled_seeds/narrow"

ls -l "$apply_seeds" "$decode_seeds" "$pulled_seeds"
