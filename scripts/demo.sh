#!/usr/bin/env bash
# The main job: build libpdb and pdb-witness; in Debian's sqlite3 shell, a "laptop"
# tracks a table and commits (examples/demo.sql); a witness starts on the embedded
# default (SQLite files in a temp data directory); the laptop and a "phone" sync
# through it; both edit while the witness is down, reconnect, and converge on one
# signed history, which both verify; then a "tablet" with an empty database starts from
# the witness's signed snapshot instead of replaying the history.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sqlite3 >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq && apt-get install -y -qq sqlite3 curl >/dev/null
fi
cargo build --release -p personaldb && cargo build --release -p personaldb-witness
work=$(mktemp -d)
witness_pid=
stop_witness() {
  if [ -n "$witness_pid" ]; then kill "$witness_pid" 2>/dev/null || true; wait "$witness_pid" 2>/dev/null || true; fi
  witness_pid=
}
trap 'stop_witness; rm -rf "$work"' EXIT
laptop=$work/laptop.db
phone=$work/phone.db
tablet=$work/tablet.db
json() { /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# One device step: the sqlite3 shell with libpdb loaded, SQL on stdin.
device() { sqlite3 -bail -cmd '.load ./target/release/libpdb' -cmd '.mode box' "$@"; }
start_witness() {
  target/release/pdb-witness serve --data "$work/witness" --listen "$1" >"$work/witness.out" 2>"$work/witness.log" &
  witness_pid=$!
  for _ in $(seq 100); do grep -q '^listening: ' "$work/witness.out" 2>/dev/null && break; sleep 0.1; done
}

echo "== the laptop: track, write, commit (examples/demo.sql)"
sqlite3 "$laptop" < examples/demo.sql

echo
echo "== a witness on the embedded default; the group gets the laptop's schema"
start_witness 127.0.0.1:0
cat "$work/witness.out"
url=$(sed -n 's/^listening: //p' "$work/witness.out")
key=$(sed -n 's/^witness key: //p' "$work/witness.out")
admin=$(sed -n 's/^admin token: //p' "$work/witness.out")
ddl=$(sqlite3 "$laptop" "select sql from sqlite_schema where name = 'notes'")
body=$(/usr/bin/python3 -c 'import json,sys; print(json.dumps({"ddl": sys.argv[1]}))' "$ddl")
curl -sf -X PUT "$url/v1/groups/notes" -H "Authorization: Bearer $admin" -d "$body" \
  | json '"group notes: seq %d, schema %s…" % (d["seq"], d["schema_hash"][:16])'
token() { target/release/pdb-witness token --data "$work/witness" --sub "$1" --group notes --role write; }
laptop_token=$(token laptop)
phone_token=$(token phone)

echo
echo "== the laptop syncs: its two queued commits become seq 1 and 2"
device "$laptop" <<SQL
SELECT pdb_open('$url', 'notes', '$laptop_token', '$key') AS opened;
SELECT pdb_sync() AS sync;
SQL

echo
echo "== a phone joins: same table, tracked, opened, synced"
device "$phone" <<SQL
$ddl;
SELECT pdb_track('notes') AS tracked;
SELECT pdb_open('$url', 'notes', '$phone_token', '$key') AS opened;
SELECT pdb_sync() AS sync;
SELECT id, title, body, stars FROM notes;
SQL

echo
echo "== the witness goes away; both devices keep working offline"
stop_witness
device "$laptop" <<'SQL'
UPDATE notes SET title = 'groceries for sunday' WHERE id = 1;
UPDATE notes SET body = 'sync sqlite between devices, offline first' WHERE id = 2;
SELECT pdb_commit('{"device":"laptop"}') AS laptop_commit;
SQL
device "$phone" <<'SQL'
UPDATE notes SET stars = 3 WHERE id = 1;
UPDATE notes SET body = 'sync sqlite between phones' WHERE id = 2;
INSERT INTO notes(title, body, stars) VALUES ('from the phone', 'written on the train', 1);
SELECT pdb_commit('{"device":"phone"}') AS phone_commit;
SQL
device "$phone" <<'SQL' || true
SELECT pdb_sync();
SQL
device "$phone" <<'SQL'
SELECT json_extract(pdb_status(), '$.online') AS online, json_extract(pdb_status(), '$.pending') AS pending,
       json_extract(pdb_status(), '$.last_error') AS last_error;
SQL

echo
echo "== the witness is back (same address); the devices reconnect"
start_witness "${url#http://}"
device "$laptop" <<'SQL'
SELECT 'laptop' AS device, pdb_sync() AS sync;
SQL
echo "The phone rebases over the laptop's commit. Note 1: each side changed another"
echo "column, both survive (column-merge, the default strategy). Note 2: both changed"
echo "the body; the last certified writer, the phone, wins."
device "$phone" <<'SQL'
SELECT 'phone' AS device, pdb_sync() AS sync;
SQL
device "$laptop" <<'SQL'
SELECT 'laptop' AS device, pdb_sync() AS sync;
SQL

echo
echo "== converged: the same rows, the same certified head, verified on both"
for d in laptop phone; do
  echo "-- $d"
  device "$work/$d.db" <<'SQL'
SELECT id, title, body, stars FROM notes ORDER BY id;
SELECT json_extract(pdb_verify(), '$.head.seq') AS head_seq,
       substr(json_extract(pdb_verify(), '$.head.head'), 1, 16) || '…' AS head,
       json_extract(pdb_verify(), '$.state') AS state_digest_check;
SQL
done
if [ "$(sqlite3 "$laptop" 'select * from notes order by id')" != "$(sqlite3 "$phone" 'select * from notes order by id')" ]; then
  echo "the devices differ" >&2
  exit 1
fi

echo
echo "== the signed history, as the phone stores it (pdb_commits), and one certificate"
device "$phone" <<'SQL'
SELECT seq, substr(prev, 1, 12) || '…' AS prev, substr(head, 1, 12) || '…' AS head,
       substr(state, 1, 12) || '…' AS state, local_id AS mine FROM pdb_commits ORDER BY seq;
.mode line
SELECT pdb_certificate(1) AS certificate;
SQL

echo
echo "== a tablet joins with an empty database: it starts from a signed snapshot"
snap=$(curl -sf -X POST "$url/v1/groups/notes/snapshots" -H "Authorization: Bearer $admin")
echo "$snap" | json '"snapshot of seq %d: %d bytes, blake3 %s…" % (d["seq"], d["size"], d["blake3"][:16])'
tablet_token=$(token tablet)
device "$tablet" <<SQL
SELECT pdb_open('$url', 'notes', '$tablet_token', '$key') AS opened;
SELECT json_extract(pdb_status(), '\$.head.seq') AS head_seq, count(*) AS notes FROM notes;
SELECT json_extract(pdb_verify(), '\$.state') AS state_digest_check;
SQL
if [ "$(sqlite3 "$laptop" 'select * from notes order by id')" != "$(sqlite3 "$tablet" 'select * from notes order by id')" ]; then
  echo "the tablet differs" >&2
  exit 1
fi
