"""examples/projection_builder.py, the external builder README points to, against a real
witness: killed with SIGKILL at random moments while a device keeps committing and
restarted each time, its file always holds the projection at its own cursor, exactly,
and ends at the head; a cursor from another history stops it with exit status 2 and the
file as it was; a cursor compacted away while it was down starts it again from the
snapshot the witness names.

The projection is recomputed here from the witness's own account of the group at a seq
(GET .../snapshots?at=<seq>, a SQLite file), with SQL, not with the builder's code.

    cargo build --release -p personaldb && cargo build --release -p personaldb-witness
    /usr/bin/python3 -m pytest tests/python/test_projection_builder.py -q
"""

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest

from conftest import REPO_ROOT, Witness

BUILDER = REPO_ROOT / "examples" / "projection_builder.py"
# An untyped `tag` keeps each value's storage class: integers, reals, text, blobs, NULL.
DDL = "CREATE TABLE notes(id INTEGER PRIMARY KEY, tag, body TEXT)"
TAGS = ["work", "home", None, 3, 2.5, b"\x00\xff", "é \"quoted\""]


def one(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


class Device:
    """A libpdb database on the group: each `commit()` makes one certified commit."""

    def __init__(self, connect, path, witness, group, seed):
        self.conn = connect(path)
        self.conn.executescript(DDL)
        assert one(self.conn, "SELECT pdb_track('notes')") == "notes"
        assert one(self.conn, "SELECT pdb_open(?, ?, ?, ?)", witness.url, group,
                   witness.token("writer", group), witness.key) == group
        self.rng = random.Random(seed)
        self.next_id = 1
        self.seq = 0

    def commit(self):
        """A new row every time (so that every commit moves the projection), and now
        and then a tag changed, a body changed (an UPDATE without the tag) or a row
        deleted."""
        rng, c = self.rng, self.conn
        c.execute("BEGIN")
        c.execute("INSERT INTO notes VALUES (?, ?, ?)",
                  (self.next_id, rng.choice(TAGS), f"note {self.next_id}"))
        self.next_id += 1
        ids = [r[0] for r in c.execute("SELECT id FROM notes")]
        if rng.random() < 0.5:
            c.execute("UPDATE notes SET tag = ? WHERE id = ?", (rng.choice(TAGS), rng.choice(ids)))
        if rng.random() < 0.3:
            c.execute("UPDATE notes SET body = 'edited' WHERE id = ?", (rng.choice(ids),))
        if rng.random() < 0.25 and len(ids) > 1:
            c.execute("DELETE FROM notes WHERE id = ?", (rng.choice(ids[:-1]),))
        c.execute("COMMIT")
        assert one(c, "SELECT pdb_commit()") is not None
        s = json.loads(one(c, "SELECT pdb_sync()"))
        assert s["pushed"] == 1 and s["head"]["seq"] == self.seq + 1, s
        self.seq += 1


def typed(v):
    """A SQLite value as the stream spells it in JSON."""
    return {"blob": v.hex()} if isinstance(v, bytes) else v


def projection_at(witness, group, seq, tmp_path):
    """(cursor, counts, keys) of the group at `seq`, from the witness's snapshot there."""
    if seq == 0:
        return "0", {}, []
    status, m = witness.request("GET", f"/v1/groups/{group}/snapshots?at={seq}")
    assert status == 200, m
    path = tmp_path / f"at-{seq}.db"
    req = urllib.request.Request(witness.url + m["object"],
                                 headers={"Authorization": "Bearer " + witness.admin})
    with urllib.request.urlopen(req, timeout=60) as r:
        path.write_bytes(r.read())
    db = sqlite3.connect(path)
    try:
        counts = {json.dumps(typed(tag), sort_keys=True): n for tag, n in
                  db.execute("SELECT tag, count(*) FROM notes GROUP BY tag")}
        # In the builder's order: by JSON text.
        keys = sorted(([i] for (i,) in db.execute("SELECT id FROM notes")), key=json.dumps)
    finally:
        db.close()
    return f"{seq}:{m['head']}", counts, keys


class Builder:
    """The example, run as a user runs it, on `out`."""

    def __init__(self, witness, group, out):
        self.cmd = [sys.executable, str(BUILDER), "--url", witness.url, "--group", group,
                    "--token", witness.token("builder", group, "read"), "--table", "notes",
                    "--column", "tag", "--out", str(out)]
        self.out = out
        self.log = out.parent / (out.name + ".stderr")
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=log)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def run(self, timeout=30):
        """Runs to its exit; (status, stderr of this run)."""
        out = subprocess.run(self.cmd, capture_output=True, text=True, timeout=timeout)
        return out.returncode, out.stderr

    def state(self):
        """(cursor, counts, keys) as the file holds them, or None before the first save."""
        try:
            p = json.loads(self.out.read_text())
        except FileNotFoundError:
            return None
        return p["cursor"], p["counts"], p["keys"]

    def catch_up(self, seq):
        """Starts it, waits until its file is at `seq`, kills it; the file's state."""
        self.start()
        try:
            return self.wait_for(seq)
        finally:
            self.kill()

    def wait_for(self, seq, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            s = self.state()
            if s and int(s[0].split(":")[0]) == seq:
                return s
            assert time.monotonic() < deadline, (
                f"the builder did not reach seq {seq}: at {s and s[0]}; "
                f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)


@pytest.fixture
def group(witness):
    name = "builder-" + uuid.uuid4().hex[:12]
    witness.create_group(name, DDL)
    return name


def test_killed_at_random_it_resumes_without_missing_or_repeating_a_commit(
        witness, group, connect, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    device = Device(connect, tmp_path / "device.db", witness, group, seed)
    for _ in range(5):
        device.commit()
    builder = Builder(witness, group, tmp_path / "tags.json")
    seen = set()
    for _ in range(6):
        builder.start()
        # Killed while it is catching up or following live commits: a timer pulls the
        # trigger while the device is still committing.
        killer = threading.Timer(rng.uniform(0.05, 0.6), builder.kill)
        killer.start()
        while builder.proc.poll() is None:
            device.commit()
        killer.join()
        # A backlog for the next start to catch up on, which the next kill may cut.
        for _ in range(rng.randrange(6)):
            device.commit()
        state = builder.state()
        if state is None:
            continue  # killed before its first commit was saved
        seq = int(state[0].split(":")[0])
        seen.add(seq)
        # Whatever the moment of the kill, the file is the projection at its cursor.
        assert state == projection_at(witness, group, seq, tmp_path), f"seed {seed}"
    print(f"kills landed at seqs {sorted(seen)} of {device.seq}")
    assert len(seen) >= 3, f"the kills did not land at different seqs: {seen} (seed {seed})"
    # Restarted for good: it catches up with the head and follows live commits.
    builder.start()
    try:
        builder.wait_for(device.seq)
        for _ in range(3):
            device.commit()
        state = builder.wait_for(device.seq)
    finally:
        builder.kill()
    assert state == projection_at(witness, group, device.seq, tmp_path), f"seed {seed}"


def test_a_cursor_from_another_history_stops_it_with_the_file_as_it_was(
        witness, group, connect, tmp_path):
    device = Device(connect, tmp_path / "device.db", witness, group, 1)
    for _ in range(3):
        device.commit()
    builder = Builder(witness, group, tmp_path / "tags.json")
    builder.catch_up(3)
    # The same file pointed at another group of the same tables: its seq exists there,
    # its head does not.
    other = "builder-" + uuid.uuid4().hex[:12]
    witness.create_group(other, DDL)
    stranger = Device(connect, tmp_path / "other.db", witness, other, 2)
    for _ in range(4):
        stranger.commit()
    before = builder.out.read_bytes()
    builder.cmd[builder.cmd.index(group)] = other
    builder.cmd[builder.cmd.index("--token") + 1] = witness.token("builder", other, "read")
    status, stderr = builder.run()
    assert status == 2, stderr
    assert "cursor_mismatch" in stderr
    assert builder.out.read_bytes() == before


def test_a_cursor_compacted_away_starts_again_from_the_snapshot(
        witness_path, connect, tmp_path):
    data = tmp_path / "compacting"
    w = Witness(witness_path, data, argv=[
        str(witness_path), "serve", "--listen", "127.0.0.1:0", "--data", str(data),
        "--snapshot-commits", "5", "--retain-snapshots", "1"])
    try:
        group = "compacted"
        w.create_group(group, DDL)
        device = Device(connect, tmp_path / "device.db", w, group, 3)
        for _ in range(2):
            device.commit()
        builder = Builder(w, group, tmp_path / "tags.json")
        builder.catch_up(2)
        # While it is down the history moves on and is compacted past its cursor.
        for _ in range(16):
            device.commit()
        deadline = time.monotonic() + 60
        while w.request("GET", f"/v1/groups/{group}/commits?after=2")[0] != 410:
            assert time.monotonic() < deadline, "no compaction"
            time.sleep(0.1)
        state = builder.catch_up(device.seq)
        assert "compacted" in builder.log.read_text()
        assert state == projection_at(w, group, device.seq, tmp_path)
    finally:
        w.stop()
