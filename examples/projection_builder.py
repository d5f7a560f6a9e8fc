#!/usr/bin/env python3
"""A projection built outside the witness, from the same stream its own builder reads.

    python3 examples/projection_builder.py --url http://localhost:7070 --group notes \
        --token "$T" --table notes --column tag --out tags.json

It follows GET /v1/groups/{g}/watch?format=rows and keeps in --out how many rows of
--table hold each value of --column (keyed by the value's JSON text) and the keys of
those rows. Counting is not idempotent (a commit applied twice counts twice), so the
file also holds the cursor `seq:head` of the last commit applied, and both are replaced
in one rename: killed at any moment, the builder restarts after exactly the commit the
file reflects. Standard library only; Python 3.9 or later.

Exit status: 2 when the witness does not know the cursor (409 cursor_mismatch: another
witness, or a restored history), 1 on any other refusal. A cursor older than the
history kept (410 compacted) starts again from the snapshot the witness names.
"""

import argparse
import http.client
import json
import os
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request


def load(path):
    """The projection file, or an empty projection before the first commit."""
    try:
        with open(path) as f:
            p = json.load(f)
    except FileNotFoundError:
        return {"cursor": "0", "counts": {}, "keys": set()}
    p["keys"] = {json.dumps(k) for k in p["keys"]}
    return p


def save(path, p):
    """Writes derived data and cursor together: a temporary file, synced, renamed."""
    out = dict(p, keys=[json.loads(k) for k in sorted(p["keys"])])
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    os.fsync(fd)  # so that the rename itself survives a power loss
    os.close(fd)


def count(p, value, delta):
    key = json.dumps(value, sort_keys=True)
    n = p["counts"].get(key, 0) + delta
    if n:
        p["counts"][key] = n
    else:
        p["counts"].pop(key, None)


def apply(p, commit, table, column):
    """One commit's changes. An UPDATE carries only the columns it changed, which is
    all a count needs: the old value out, the new one in."""
    for ch in commit["changes"]:
        if ch["table"] != table:
            continue
        key = json.dumps(ch["pk"])
        if ch["op"] == "insert":
            p["keys"].add(key)
            count(p, ch["new"][column], +1)
        elif ch["op"] == "delete":
            p["keys"].discard(key)
            count(p, ch["old"][column], -1)
        elif column in ch["new"]:
            count(p, ch["old"][column], -1)
            count(p, ch["new"][column], +1)


def request(args, path):
    req = urllib.request.Request(args.url + path)
    req.add_header("Authorization", "Bearer " + args.token)
    return urllib.request.urlopen(req, timeout=60)  # keep-alives come every 15 s


def quote(name):
    return '"' + name.replace('"', '""') + '"'


def typed(v):
    """A value from SQLite as the stream spells it (pdb_core::changeset::value_json)."""
    if isinstance(v, bytes):
        return {"blob": v.hex()}
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return {"real": "nan" if v != v else ("inf" if v > 0 else "-inf")}
    return v


def bootstrap(args, manifest):
    """The projection at a snapshot, whose tables are a plain SQLite file."""
    with request(args, f"/v1/groups/{args.group}") as r:
        tables = {t["name"]: t["columns"] for t in json.load(r)["tables"]}
    pk = sorted((c for c in tables[args.table] if c["pk"]), key=lambda c: c["pk"])
    cols = ", ".join(quote(c) for c in [args.column] + [c["name"] for c in pk])
    p = {"cursor": f"{manifest['seq']}:{manifest['head']}", "counts": {}, "keys": set()}
    with tempfile.NamedTemporaryFile(suffix=".db") as f:
        with request(args, manifest["object"]) as r:
            f.write(r.read())
        f.flush()
        if os.path.getsize(f.name) != manifest["size"]:
            raise OSError("the snapshot file is not the size its manifest says")
        db = sqlite3.connect(f.name)
        for value, *key in db.execute(f"SELECT {cols} FROM {quote(args.table)}"):
            p["keys"].add(json.dumps([typed(v) for v in key]))
            count(p, typed(value), +1)
        db.close()
    return p


class Refused(Exception):
    """The witness's problem document: a refusal, or an error event mid-stream."""


def events(resp):
    """The server-sent events of a stream, as {field: value}; comments skipped."""
    event = {}
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[field] = event[field] + "\n" + value if field in event else value


def stream(args, p):
    """Applies commits as they come, saving after each, until the stream ends."""
    path = f"/v1/groups/{args.group}/watch?format=rows&after={p['cursor']}"
    try:
        resp = request(args, path)
    except urllib.error.HTTPError as e:
        try:
            problem = json.loads(e.read())
        except ValueError:
            problem = {"status": e.code}
        raise Refused(problem) from None
    with resp:
        print(f"following {args.group} after {p['cursor']}", file=sys.stderr)
        for ev in events(resp):
            if ev.get("event") == "error":
                raise Refused(json.loads(ev["data"]))
            commit = json.loads(ev["data"])
            seq, _, head = p["cursor"].partition(":")
            # Delivery is at least once: what the cursor covers is skipped; a gap or
            # another chain is a history this file was not built from.
            if commit["seq"] <= int(seq):
                continue
            if commit["seq"] != int(seq) + 1 or (head and commit["prev"] != head):
                raise Refused({"detail": f"commit {commit['seq']} does not follow "
                                         f"cursor {p['cursor']}"})
            apply(p, commit, args.table, args.column)
            p["cursor"] = ev["id"]
            save(args.out, p)


def follow(args):
    p = load(args.out)
    while True:
        try:
            stream(args, p)
        except Refused as e:
            problem = e.args[0]
            if problem.get("code") != "compacted" or not problem.get("snapshot"):
                print(f"refused: {problem.get('status')} {problem.get('code')}: "
                      f"{problem.get('detail')}", file=sys.stderr)
                sys.exit(2 if problem.get("code") == "cursor_mismatch" else 1)
            print(f"{p['cursor']} was compacted: starting again from the snapshot at seq "
                  f"{problem['snapshot_seq']}", file=sys.stderr)
            p = bootstrap(args, problem["snapshot"])
            save(args.out, p)
            continue
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError) as e:
            print(f"witness unreachable ({e}); retrying", file=sys.stderr)
        # The stream ended (the token expired, the witness restarted): resume.
        time.sleep(1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the witness, e.g. http://localhost:7070")
    ap.add_argument("--group", required=True)
    ap.add_argument("--token", default=os.environ.get("PDB_TOKEN"), help="a read token")
    ap.add_argument("--table", required=True)
    ap.add_argument("--column", required=True, help="the column whose values are counted")
    ap.add_argument("--out", required=True, help="the projection's JSON file")
    args = ap.parse_args()
    if not args.token:
        ap.error("--token or PDB_TOKEN is required")
    follow(args)
