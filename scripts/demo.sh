#!/usr/bin/env bash
# The main job: build libpdb and pdb-witness, run the extension demo in Debian's
# sqlite3 shell, then start a witness on the embedded default (SQLite files in a temp
# data directory), push the demo's queued commits to it with curl, and pull them back
# as signed certificates.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v sqlite3 >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq && apt-get install -y -qq sqlite3 curl >/dev/null
fi
cargo build --release -p pdb -p pdb-witness
work=$(mktemp -d)
witness_pid=
cleanup() {
  if [ -n "$witness_pid" ]; then kill "$witness_pid" 2>/dev/null || true; wait "$witness_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
db=$work/demo.db
sqlite3 "$db" < examples/demo.sql

echo
echo "== the witness: start it, create the group, push the queued commits"
target/release/pdb-witness serve --data "$work/witness" --listen 127.0.0.1:0 >"$work/witness.out" 2>"$work/witness.log" &
witness_pid=$!
for _ in $(seq 100); do grep -q '^listening: ' "$work/witness.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/witness.out"
url=$(sed -n 's/^listening: //p' "$work/witness.out")
token=$(sed -n 's/^admin token: //p' "$work/witness.out")
auth="Authorization: Bearer $token"
json() { /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

ddl=$(sqlite3 "$db" "select sql from sqlite_schema where name = 'notes'")
body=$(/usr/bin/python3 -c 'import json,sys; print(json.dumps({"ddl": sys.argv[1]}))' "$ddl")
group=$(curl -sf -X PUT "$url/v1/groups/notes" -H "$auth" -d "$body")
echo "group notes: seq $(echo "$group" | json 'd["seq"]'), schema $(echo "$group" | json 'd["schema_hash"][:16]')…"
genesis=$(echo "$group" | json 'd["head"]')
for id in $(sqlite3 "$db" "select id from pdb_upload_queue order by id"); do
  sqlite3 "$db" "select writefile('$work/c$id.bin', changeset) from pdb_upload_queue where id = $id" >/dev/null
  key=$(sqlite3 "$db" "select idempotency_key from pdb_upload_queue where id = $id")
  schema=$(sqlite3 "$db" "select schema_hash from pdb_upload_queue where id = $id")
  # Both commits were made before any sync, on the genesis head; the default policy
  # (rebase-if-clean) accepts the second on top of the first since they do not conflict.
  cert=$(curl -s -X POST "$url/v1/groups/notes/commits" -H "$auth" \
    -H "Pdb-Base: 0:$genesis" -H "Pdb-Schema: $schema" -H "Idempotency-Key: $key" \
    -H "Content-Type: application/vnd.sqlite.changeset" --data-binary "@$work/c$id.bin")
  echo "local commit $id → $(echo "$cert" | json '"seq %d, head %s…" % (d["seq"], d["head"][:16]) if "seq" in d else d')"
done
echo "a retry of local commit 1 (same idempotency key):"
key=$(sqlite3 "$db" "select idempotency_key from pdb_upload_queue where id = 1")
schema=$(sqlite3 "$db" "select schema_hash from pdb_upload_queue where id = 1")
curl -s -X POST "$url/v1/groups/notes/commits" -H "$auth" -H "Pdb-Base: 0:$genesis" \
  -H "Pdb-Schema: $schema" -H "Idempotency-Key: $key" --data-binary "@$work/c1.bin" \
  | json '"  seq %d again, duplicate: %s" % (d["seq"], d["duplicate"])'

echo
echo "== pull: the signed history"
curl -sf "$url/v1/groups/notes/commits?after=0" -H "$auth" | json '"\n".join("seq %d  prev %s…  head %s…  state %s…  %d-byte changeset  signed by %s…" % (c["seq"], c["prev"][:12], c["head"][:12], c["state"][:12], len(__import__("base64").b64decode(c["changeset"])), c["witness_key"][:12]) for c in d["commits"])'
