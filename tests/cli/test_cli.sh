#!/usr/bin/env bash
# Host test: the real, built libpdb loaded into Debian's sqlite3 command-line shell (3.40),
# with what it captures compared byte for byte against the shell's own session extension.
#
#   cargo build --release -p personaldb && cargo build --release -p personaldb-witness && bash tests/cli/test_cli.sh
#
# Prints one line per check and "N passed, N failed" at the end; exits non-zero on any
# failure. SQLITE3=/path/to/sqlite3 picks another shell; section 6 (sync) starts the
# built witness (PDB_WITNESS=/path/to/pdb-witness picks another) and needs curl.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
SQLITE3=${SQLITE3:-/usr/bin/sqlite3}
LIB=./target/release/libpdb # .load adds the .so suffix and derives sqlite3_pdb_init
WITNESS=${PDB_WITNESS:-./target/release/pdb-witness}
WORK=$(mktemp -d)
WITNESS_PID=
cleanup() { # stops the witness this script started (section 6), if it still runs
    if [ -n "$WITNESS_PID" ]; then
        kill "$WITNESS_PID" 2>/dev/null
        wait "$WITNESS_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PASSED=0
FAILED=0
pass() {
    PASSED=$((PASSED + 1))
    echo "ok   - $1"
}
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL - $1"
    shift
    printf '%s\n' "$@" | sed 's/^/       /'
}
# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [ "$2" == "$3" ]; then pass "$1"; else fail "$1" "expected:" "$2" "actual:" "$3"; fi
}
# expect_contains NAME NEEDLE HAYSTACK
expect_contains() {
    if [[ "$3" == *"$2"* ]]; then pass "$1"; else fail "$1" "expected to contain:" "$2" "actual:" "$3"; fi
}
finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit $?
}

# run DB: runs the SQL script on stdin in the shell, stopping at the first error; stdout
# is the output, stderr goes to $WORK/err (a check that expects success tests it empty).
run() {
    "$SQLITE3" -batch -bail "$1" 2>"$WORK/err"
}
# run_on DB: like run, but goes on after errors (the shell's default for scripts).
run_on() {
    "$SQLITE3" -batch "$1" 2>"$WORK/err"
}
no_errors() { # NAME
    local err
    err=$(cat "$WORK/err")
    expect_eq "$1: no errors on stderr" "" "$err"
}

if [ ! -x "$SQLITE3" ]; then
    fail "sqlite3 shell" "$SQLITE3 not found (apt-get install sqlite3)"
    finish
fi
if [ ! -f "$LIB.so" ]; then
    fail "libpdb is built" "$ROOT/${LIB#./}.so does not exist: run cargo build --release -p personaldb"
    finish
fi
echo "# $("$SQLITE3" -version | cut -d' ' -f1-2), $LIB.so"

# ---- 1. loading: exactly the pdb functions and the module ---------------------------------
out=$(run "$WORK/load.db" <<EOF
CREATE TEMP TABLE before_fn AS SELECT name, narg, flags FROM pragma_function_list;
CREATE TEMP TABLE before_mod AS SELECT name FROM pragma_module_list;
.load $LIB
SELECT 'version', pdb_version();
SELECT 'fn', name, narg, flags FROM pragma_function_list
  EXCEPT SELECT 'fn', name, narg, flags FROM temp.before_fn ORDER BY 2, 3;
SELECT 'gone', count(*) FROM (SELECT * FROM temp.before_fn EXCEPT
  SELECT name, narg, flags FROM pragma_function_list);
SELECT 'mod', name FROM pragma_module_list EXCEPT SELECT 'mod', name FROM temp.before_mod;
EOF
)
no_errors "load"
expect_eq "load: registers exactly the pdb functions (name|narg|flags) and module" \
"version|0.1.0
fn|pdb_apply|1|524288
fn|pdb_apply|2|524288
fn|pdb_bootstrap|0|524288
fn|pdb_certificate|1|524288
fn|pdb_changeset|0|524288
fn|pdb_commit|0|524288
fn|pdb_commit|1|524288
fn|pdb_concat|2|2048
fn|pdb_head|0|524288
fn|pdb_invert|1|2048
fn|pdb_open|4|524288
fn|pdb_pull|0|524288
fn|pdb_push|0|524288
fn|pdb_resolve|2|524288
fn|pdb_set_strategy|2|524288
fn|pdb_set_strategy|3|524288
fn|pdb_status|0|524288
fn|pdb_sync|0|524288
fn|pdb_sync_start|0|524288
fn|pdb_sync_start|1|524288
fn|pdb_sync_stop|0|524288
fn|pdb_track|1|524288
fn|pdb_untrack|1|524288
fn|pdb_verify|0|524288
fn|pdb_version|0|2048
gone|0
mod|pdb_changeset_rows" "$out"

out=$(run "$WORK/load2.db" <<EOF
.load $LIB.so sqlite3_pdb_init
SELECT pdb_version();
EOF
)
no_errors "load with explicit file name and entry point"
expect_eq "load with explicit file name and entry point" "0.1.0" "$out"

# ---- 2. track, write, commit; decoded output ------------------------------------------------
DB="$WORK/notes.db"
before=$(date +%s%3N)
out=$(run "$DB" <<EOF
.load $LIB
.nullvalue NULL
CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT, score REAL, raw BLOB);
INSERT INTO notes VALUES (1, 'kept', 'from before tracking', 0.5, NULL);
SELECT 'track', pdb_track('notes');
SELECT 'commit', pdb_commit();
INSERT INTO notes VALUES (2, 'hello', 'wörld "quoted"', 1.5, x'00ff');
INSERT INTO notes VALUES (3, 'bye', NULL, 2.0, x'');
UPDATE notes SET body = 'everyone' WHERE id = 2;
INSERT INTO notes VALUES (4, 'temp', NULL, NULL, NULL);
DELETE FROM notes WHERE id = 4;
UPDATE notes SET score = -1e300, raw = 'now text' WHERE id = 1;
SELECT 'pending', tbl, op, indirect, pk, old, new FROM pdb_changeset_rows(pdb_changeset());
SELECT 'commit', pdb_commit('{"from":"cli"}');
SELECT 'after', quote(pdb_changeset()), quote(pdb_commit());
SELECT 'queue', id, length(hash), hash GLOB '[0-9a-f]*' AND hash NOT GLOB '*[^0-9a-f]*',
       length(schema_hash), schema_hash NOT GLOB '*[^0-9a-f]*', length(idempotency_key),
       base_seq, base_head, meta FROM pdb_upload_queue ORDER BY id;
SELECT 'queued', tbl, op, pk, old, new
  FROM pdb_changeset_rows((SELECT changeset FROM pdb_upload_queue WHERE id = 2));
SELECT 'created', created_at FROM pdb_upload_queue WHERE id = 2;
EOF
)
after=$(date +%s%3N)
no_errors "round trip"
created=$(grep '^created|' <<<"$out" | cut -d'|' -f2)
out=$(grep -v '^created|' <<<"$out")
U='{"undefined":true}'
expect_eq "round trip: track, capture, commit, decode" \
"track|notes
commit|1
pending|notes|UPDATE|0|[1]|[1,$U,$U,0.5,null]|[$U,$U,$U,-1e300,\"now text\"]
pending|notes|INSERT|0|[2]|NULL|[2,\"hello\",\"everyone\",1.5,{\"blob\":\"00ff\"}]
pending|notes|INSERT|0|[3]|NULL|[3,\"bye\",null,2.0,{\"blob\":\"\"}]
commit|2
after|NULL|NULL
queue|1|64|1|64|1|32|0|NULL|NULL
queue|2|64|1|64|1|32|0|NULL|{\"from\":\"cli\"}
queued|notes|UPDATE|[1]|[1,$U,$U,0.5,null]|[$U,$U,$U,-1e300,\"now text\"]
queued|notes|INSERT|[2]|NULL|[2,\"hello\",\"everyone\",1.5,{\"blob\":\"00ff\"}]
queued|notes|INSERT|[3]|NULL|[3,\"bye\",null,2.0,{\"blob\":\"\"}]" "$out"
if [[ "$created" =~ ^[0-9]+$ ]] && [ "$created" -ge "$before" ] && [ "$created" -le "$after" ]; then
    pass "round trip: created_at is the commit time in unix ms"
else
    fail "round trip: created_at is the commit time in unix ms" "$before <= '$created' <= $after"
fi

# A shell that never loads the extension still feeds the capture triggers.
run "$DB" <<EOF >/dev/null
INSERT INTO notes VALUES (5, 'plain shell', NULL, NULL, NULL);
BEGIN; DELETE FROM notes WHERE id = 1; ROLLBACK;
EOF
no_errors "plain shell write"
out=$(run "$DB" <<EOF
.load $LIB
SELECT op, pk, new FROM pdb_changeset_rows(pdb_changeset());
EOF
)
expect_eq "a shell that never loaded libpdb is captured (its rollback is not)" \
    'INSERT|[5]|[5,"plain shell",null,null,null]' "$out"

# ---- 3. byte compatibility with the shell's session extension -------------------------------
# The same writes are recorded by the shell's .session and by pdb. (The shell's session
# has a table filter installed, which makes it record every table it sees written,
# including pdb's shadow tables, hence `.session filter pdb_*`.)
DB="$WORK/session.db"
run "$DB" <<EOF >/dev/null
.load $LIB
CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB);
CREATE TABLE w(x TEXT NOT NULL, y INTEGER NOT NULL, z, PRIMARY KEY(y, x)) WITHOUT ROWID;
INSERT INTO t VALUES (1, 'one', 1.0, NULL), (2, 'two', 2.5, x'02'), (3, 'three', NULL, x''),
                     (4, 'four', 4.0, 'text in a blob column'), (7, 'seven', 7.0, NULL);
INSERT INTO w VALUES ('a', 1, 'z1'), ('b', 2, 'z2'), ('d', 4, 4.5);
SELECT pdb_track('t'), pdb_track('w'), pdb_commit();
VACUUM INTO '$WORK/start.db';
.session open main s
.session filter pdb_*
.session attach t
.session attach w
INSERT INTO t VALUES (5, 'five', -0.5, x'0505');
UPDATE t SET a = 'ONE', c = x'ff' WHERE id = 1;
UPDATE t SET b = b WHERE id = 2;
DELETE FROM t WHERE id = 3;
INSERT INTO t VALUES (6, 'six', NULL, NULL);
DELETE FROM t WHERE id = 6;
UPDATE t SET a = 'tmp' WHERE id = 4;
UPDATE t SET a = 'four' WHERE id = 4;
UPDATE t SET id = 10 WHERE id = 2;
INSERT INTO t VALUES (-3, 'negative', 1e-300, zeroblob(3));
UPDATE t SET a = NULL, b = 9223372036854775807 WHERE id = 7;
UPDATE w SET z = 42 WHERE x = 'a' AND y = 1;
DELETE FROM w WHERE y = 2;
INSERT INTO w VALUES ('c', 3, x'01');
UPDATE w SET z = 'changed' WHERE y = 4;
.session changeset $WORK/session.bin
.session close
SELECT writefile('$WORK/pdb.bin', pdb_changeset());
EOF
no_errors "session recording"
ROWS="SELECT tbl, op, indirect, pk, coalesce(old, '-'), coalesce(new, '-') FROM pdb_changeset_rows(readfile(?1)) ORDER BY 1, 2, 4"
decode() { # FILE: the decoded rows of a changeset file, sorted
    run "$WORK/decode.db" <<EOF
.load $LIB
.parameter set ?1 '$1'
$ROWS;
EOF
}
session_rows=$(decode "$WORK/session.bin")
pdb_rows=$(decode "$WORK/pdb.bin")
expect_eq "session vs pdb: same set of changes" "$session_rows" "$pdb_rows"
expect_eq "session vs pdb: the expected changes" \
"t|DELETE|0|[2]|[2,\"two\",2.5,{\"blob\":\"02\"}]|-
t|DELETE|0|[3]|[3,\"three\",null,{\"blob\":\"\"}]|-
t|INSERT|0|[-3]|-|[-3,\"negative\",1e-300,{\"blob\":\"000000\"}]
t|INSERT|0|[10]|-|[10,\"two\",2.5,{\"blob\":\"02\"}]
t|INSERT|0|[5]|-|[5,\"five\",-0.5,{\"blob\":\"0505\"}]
t|UPDATE|0|[1]|[1,\"one\",$U,null]|[$U,\"ONE\",$U,{\"blob\":\"ff\"}]
t|UPDATE|0|[7]|[7,\"seven\",7.0,$U]|[$U,null,9.223372036854776e18,$U]
w|DELETE|0|[2,\"b\"]|[\"b\",2,\"z2\"]|-
w|INSERT|0|[3,\"c\"]|-|[\"c\",3,{\"blob\":\"01\"}]
w|UPDATE|0|[1,\"a\"]|[\"a\",1,\"z1\"]|[$U,$U,42]
w|UPDATE|0|[4,\"d\"]|[\"d\",4,4.5]|[$U,$U,\"changed\"]" "$pdb_rows"
out=$(run "$WORK/decode.db" <<EOF
.load $LIB
SELECT length(readfile('$WORK/session.bin')) = length(readfile('$WORK/pdb.bin')),
       pdb_concat(readfile('$WORK/session.bin'), NULL) = readfile('$WORK/pdb.bin'),
       pdb_concat(readfile('$WORK/pdb.bin'), NULL) = readfile('$WORK/pdb.bin');
EOF
)
expect_eq "session vs pdb: same bytes once put in canonical order (and pdb's already is)" \
    "1|1|1" "$out"

# Apply the session's changeset (and ours) with pdb_apply to copies of the starting
# database: both must give exactly the database the session recorded.
end_dump=$("$SQLITE3" "$DB" ".dump t w")
for which in session pdb; do
    cp "$WORK/start.db" "$WORK/applied-$which.db"
    out=$(run "$WORK/applied-$which.db" <<EOF
.load $LIB
SELECT pdb_apply(readfile('$WORK/$which.bin'));
SELECT quote(pdb_changeset());
EOF
    )
    no_errors "pdb_apply of the $which changeset"
    expect_eq "pdb_apply of the $which changeset: counts; nothing captured" \
        '{"applied":11,"replaced":0,"skipped":0}
NULL' "$out"
    applied_dump=$("$SQLITE3" "$WORK/applied-$which.db" ".dump t w")
    expect_eq "pdb_apply of the $which changeset: same tables as the recorded database" \
        "$end_dump" "$applied_dump"
done
start_dump=$("$SQLITE3" "$WORK/start.db" ".dump t w")
if [ "$start_dump" != "$end_dump" ]; then pass "the dumps compared differ from the start"; else
    fail "the dumps compared differ from the start" "start and end dumps are equal"; fi

# ---- 4. bad input: an error in the shell, nothing changed, the shell goes on -----------------
cp "$WORK/start.db" "$WORK/bad.db"
"$SQLITE3" "$WORK/bad.db" "CREATE VIEW v AS SELECT * FROM t"
sum_before=$(sha256sum <"$WORK/bad.db")
session_len=$(stat -c %s "$WORK/session.bin")
out=$(run_on "$WORK/bad.db" <<EOF
.load $LIB
SELECT pdb_apply(x'deadbeef');
SELECT pdb_apply(x'5403010000740012000100000000000000030303');
SELECT pdb_apply(x'54040100000076001200010000000000000001050505');
SELECT pdb_apply(CAST(readfile('$WORK/session.bin') || x'120001' AS BLOB));
SELECT * FROM pdb_changeset_rows(x'5400');
SELECT 'still running', count(*) FROM t;
EOF
)
err=$(cat "$WORK/err")
expect_eq "bad input: the shell goes on after each error" "still running|5" "$out"
expect_contains "bad input: garbage named" \
    "[bad_changeset] pdb_apply: malformed changeset at byte 0: unexpected byte 0xde" "$err"
expect_contains "bad input: truncated value named" \
    "[bad_changeset] pdb_apply: malformed changeset at byte 18: value of 3 bytes but 0 left" "$err"
expect_contains "bad input: changeset for a view named" \
    '[schema_mismatch] pdb_apply: changeset names table "v": "v" is a view; only tables can be tracked' "$err"
expect_contains "bad input: malformed last change of a good changeset named" \
    "[bad_changeset] pdb_apply: malformed changeset at byte $((session_len + 2)): truncated value" "$err"
expect_contains "bad input: zero columns named" \
    "[bad_changeset] pdb_changeset_rows: malformed changeset at byte 1: table header has 0 columns" "$err"
expect_eq "bad input: database file unchanged" "$sum_before" "$(sha256sum <"$WORK/bad.db")"

# ---- 5. a panic is an ordinary error; the shell and its connection go on -------------------
out=$(PDB_TEST_PANIC=pdb_version RUST_BACKTRACE=0 run_on "$WORK/panic.db" <<EOF
.load $LIB
CREATE TABLE p(id INTEGER PRIMARY KEY, v);
SELECT pdb_version();
SELECT 'track', pdb_track('p');
INSERT INTO p VALUES (1, 'after the panic');
SELECT 'commit', pdb_commit();
SELECT 'rows', op, new FROM pdb_changeset_rows((SELECT changeset FROM pdb_upload_queue));
EOF
)
rc=$?
err=$(cat "$WORK/err")
expect_contains "panic: reported as an SQLite error" \
    "[internal] libpdb: internal error (panic: PDB_TEST_PANIC asked pdb_version to panic); nothing was changed" \
    "$err"
expect_eq "panic: the same connection keeps working" \
'track|p
commit|1
rows|INSERT|[1,"after the panic"]' "$out"
expect_eq "panic: the shell exits normally, reporting that an error occurred (rc 1)" "1" "$rc"

# ---- 6. sync: the shell as a device of a real witness --------------------------------------
# A witness in the background; a group made over HTTP with curl; one shell database
# tracks, writes, commits, opens and syncs; a second one syncs and shows the same rows.
sync_section() {
    if [ ! -x "$WITNESS" ]; then
        fail "sync: pdb-witness is built" \
            "$WITNESS does not exist: run cargo build --release -p personaldb-witness"
        return
    fi
    if ! command -v curl >/dev/null; then
        fail "sync: curl" "curl not found (apt-get install curl)"
        return
    fi
    PDB_LOG=warn "$WITNESS" serve --listen 127.0.0.1:0 --data "$WORK/witness" \
        >"$WORK/witness.out" 2>"$WORK/witness.err" </dev/null &
    WITNESS_PID=$!
    local i url="" key="" admin=""
    for ((i = 0; i < 300; i++)); do # up to 30 s
        url=$(sed -n 's/^listening: //p' "$WORK/witness.out")
        [ -n "$url" ] && break
        kill -0 "$WITNESS_PID" 2>/dev/null || break
        sleep 0.1
    done
    key=$(sed -n 's/^witness key: //p' "$WORK/witness.out")
    admin=$(sed -n 's/^admin token: //p' "$WORK/witness.out")
    if [[ "$url" =~ ^http://127\.0\.0\.1:[0-9]+$ && "$key" =~ ^[0-9a-f]{64}$ && -n "$admin" ]]; then
        pass "sync: the witness starts and prints url, key and admin token"
    else
        fail "sync: the witness starts and prints url, key and admin token" \
            "stdout:" "$(cat "$WORK/witness.out")" "stderr:" "$(cat "$WORK/witness.err")"
        return
    fi

    local ddl="CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT)"
    local code token rows rows1 rows2 head1 head2
    code=$(curl -sS -o "$WORK/group.json" -w '%{http_code}' -X PUT \
        -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
        --data "{\"ddl\": \"$ddl\"}" "$url/v1/groups/cli" 2>&1)
    expect_eq "sync: PUT /v1/groups/cli (curl, admin token) creates the group" "201" "$code"
    token=$("$WITNESS" token --data "$WORK/witness" --sub cli --group cli --role write --ttl 600)

    out=$(run "$WORK/device1.db" <<EOF
.load $LIB
$ddl;
SELECT 'track', pdb_track('notes');
INSERT INTO notes VALUES (1, 'hello', 'from the shell'), (2, 'bye', NULL), (3, 'gone', 'x');
DELETE FROM notes WHERE id = 3;
UPDATE notes SET body = 'ünïcödé' WHERE id = 2;
SELECT 'commit', pdb_commit();
SELECT 'open', pdb_open('$url', 'cli', '$token', '$key');
SELECT 'sync', json_extract(s, '\$.pushed'), json_extract(s, '\$.pulled'),
       json_extract(s, '\$.head.seq')
  FROM (SELECT pdb_sync() AS s);
SELECT 'status', json_extract(s, '\$.pending'), json_extract(s, '\$.online'),
       quote(json_extract(s, '\$.last_error'))
  FROM (SELECT pdb_status() AS s);
SELECT 'verify', json_extract(pdb_verify(), '\$.state');
EOF
    )
    no_errors "sync: first shell"
    expect_eq "sync: the first shell tracks, commits, opens and pushes" \
"track|notes
commit|1
open|cli
sync|1|1|1
status|0|1|NULL
verify|ok" "$out"

    out=$(run "$WORK/device2.db" <<EOF
.load $LIB
$ddl;
SELECT 'track', pdb_track('notes');
SELECT 'open', pdb_open('$url', 'cli', '$token', '$key');
SELECT 'sync', json_extract(s, '\$.pushed'), json_extract(s, '\$.pulled'),
       json_extract(s, '\$.head.seq')
  FROM (SELECT pdb_sync() AS s);
SELECT 'verify', json_extract(pdb_verify(), '\$.state');
SELECT 'pending', quote(pdb_changeset());
EOF
    )
    no_errors "sync: second shell"
    expect_eq "sync: the second shell pulls the commit, verified, nothing pending" \
"track|notes
open|cli
sync|0|1|1
verify|ok
pending|NULL" "$out"

    rows="SELECT quote(id), quote(title), quote(body) FROM notes ORDER BY id;"
    rows1=$(run "$WORK/device1.db" <<<"$rows")
    rows2=$(run "$WORK/device2.db" <<<"$rows")
    expect_eq "sync: the second shell shows the first one's rows" \
"1|'hello'|'from the shell'
2|'bye'|'ünïcödé'" "$rows2"
    expect_eq "sync: both shells hold the same rows" "$rows1" "$rows2"
    head1=$(printf '.load %s\nSELECT pdb_head();\n' "$LIB" | run "$WORK/device1.db")
    head2=$(printf '.load %s\nSELECT pdb_head();\n' "$LIB" | run "$WORK/device2.db")
    code=$(curl -sS -o "$WORK/info.json" -w '%{http_code}' \
        -H "Authorization: Bearer $admin" "$url/v1/groups/cli" 2>&1)
    out=$(run "$WORK/decode.db" <<<"SELECT json_object('seq', json_extract(j, '\$.seq'),
                   'head', json_extract(j, '\$.head'))
  FROM (SELECT readfile('$WORK/info.json') AS j);")
    expect_eq "sync: both shells are at the witness's head" \
        "200 $out $out" "$code $head1 $head2"

    if kill "$WITNESS_PID" 2>/dev/null; then
        pass "sync: the witness ran until the end of the section"
    else
        fail "sync: the witness ran until the end of the section" "$(cat "$WORK/witness.err")"
    fi
    wait "$WITNESS_PID" 2>/dev/null
    WITNESS_PID=
}
sync_section

finish
