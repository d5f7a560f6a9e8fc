"""README.md's commands, run as written.

The table of every README command and where it runs is readme_commands.py; here: that
the table matches README, and the witness section's commands (README's `cargo run` serve
line and its curl examples) run against a real witness, in README order, with real
values put in for the placeholders and each answer checked.
"""

import base64
import json
import re
import socket
import sqlite3
import subprocess
import time
import urllib.request

import pytest

import readme_commands
from conftest import REPO_ROOT, Witness
from test_extension import blake3_hex

README_TEXT = readme_commands.README.read_text()


def test_every_readme_command_is_run_somewhere():
    assert readme_commands.check() == []


def test_a_new_readme_command_must_be_wired_up():
    text = README_TEXT.replace("```sh\nbash scripts/demo.sh",
                               "```sh\nbash scripts/new.sh   # a new step\nbash scripts/demo.sh")
    problems = readme_commands.check_table(readme_commands.readme_commands(text))
    assert len(problems) == 1 and problems[0].endswith("\n    bash scripts/new.sh"), problems
    # A removed one leaves a stale row, which is reported too.
    text = README_TEXT.replace("bash .ci/run", "")
    assert any("no longer has" in p and "bash .ci/run" in p
               for p in readme_commands.check_table(readme_commands.readme_commands(text)))


def test_commands_are_read_as_the_shell_reads_them():
    text = ("intro\n```sh\n# a comment line\ncurl -d '{\"a\": \"# not a comment\"}' \\\n"
            "     -H \"X: 1\"   # trailing\n\nmake all\n```\n```sql\nselect 1;\n```\n")
    assert readme_commands.readme_commands(text) == [
        "curl -d '{\"a\": \"# not a comment\"}' -H \"X: 1\"", "make all"]

# ---- the witness section, step by step ----------------------------------------------------

STEPS = {}


def step(label):
    """Registers the check of the README command COMMANDS knows by `label`."""
    def register(f):
        STEPS[label] = f
        return f
    return register


class Walk:
    """What the steps share: the directory the user is in, the witness, values seen so far."""

    def __init__(self, tmp_path, lib_path, witness_path):
        self.dir = tmp_path
        self.lib = lib_path
        self.witness_path = witness_path
        self.witness = None
        with socket.socket() as s:  # a free port stands in for README's 7070
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.values = {}  # placeholder name (as in <head>) -> value
        # curl's own config file adds the status line to README's unchanged commands.
        (tmp_path / ".curlrc").write_text(
            'silent\nshow-error\nwrite-out = "\\n%{http_code} %{content_type}\\n"\n')

    def real(self, command):
        """README's command with this run's values in place of its example ones."""
        command = command.replace(":7070", f":{self.port}").replace(
            "./witness-data", str(self.dir / "witness-data"))
        for name, value in self.values.items():
            command = command.replace(f"<{name}>", value)
        left = re.findall(r"<[a-z0-9_]+>", command)
        assert not left, f"no value for {left} in {command}"
        return command

    def shell(self, command, timeout=60):
        env = {"PATH": "/usr/bin:/bin", "CURL_HOME": str(self.dir), "T": self.witness.admin}
        return subprocess.run(["bash", "-c", command], cwd=self.dir, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def curl(self, command):
        """(status, content type, body as JSON or text) of one README curl command."""
        out = self.shell(command)
        assert out.returncode == 0, f"{command}: rc {out.returncode}: {out.stderr}"
        body, _, last = out.stdout.rstrip("\n").rpartition("\n")
        status, _, ctype = last.partition(" ")
        try:
            body = json.loads(body)
        except ValueError:
            pass
        return int(status), ctype, body

    def device(self, sql):
        """Debian's sqlite3 shell with libpdb, on the user's device database."""
        out = subprocess.run(["sqlite3", "-bail", "-cmd", f".load {self.lib}", "device.db", sql],
                             cwd=self.dir, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def post_commit(self, changeset, key):
        """One more commit, as the README's commit command makes it (the client's way)."""
        req = urllib.request.Request(
            f"{self.witness.url}/v1/groups/notes/commits", data=changeset, method="POST",
            headers={"Authorization": "Bearer " + self.witness.admin,
                     "Pdb-Base": f"0:{self.genesis['head']}",
                     "Pdb-Schema": self.genesis["schema_hash"], "Idempotency-Key": key,
                     "Content-Type": "application/vnd.sqlite.changeset"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 201
            return json.loads(resp.read())


@step("serve")
def _serve(walk, command):
    data = walk.dir / "witness-data"
    # cargo builds first if the witness is not up to date (normally it is: CI and the
    # witness_path fixture need the release build), hence the long start timeout.
    walk.witness = Witness(walk.witness_path, data, argv=["bash", "-c", walk.real(command)],
                           cwd=REPO_ROOT, start_timeout=900)
    assert walk.witness.url == f"http://127.0.0.1:{walk.port}"
    assert re.fullmatch(r"[0-9a-f]{64}", walk.witness.key)
    # What README says the first start creates.
    for name in ("witness.db", "groups", "witness.key", "jwt.secret"):
        assert (data / name).exists(), name


@step("create-group")
def _create_group(walk, command):
    status, ctype, body = walk.curl(walk.real(command))
    assert (status, ctype) == (201, "application/json"), body
    assert body["group"] == "notes" and body["seq"] == 0
    assert body["ddl"] == "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"
    assert body["witness_key"] == walk.witness.key
    assert [t["name"] for t in body["tables"]] == ["notes"]
    walk.genesis = body


@step("group-info")
def _group_info(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200 and body == walk.genesis
    walk.values.update(head=body["head"], schema_hash=body["schema_hash"])


@step("commit")
def _commit(walk, command):
    # cs.bin as README makes it: the group's table tracked on a device, one row committed,
    # then README's statement writes the queued changeset out.
    walk.device(f"{walk.genesis['ddl']}; SELECT pdb_track('notes');"
                "INSERT INTO notes VALUES (1, 'first'); SELECT pdb_commit();")
    walk.device("select writefile('cs.bin', changeset) from pdb_upload_queue")
    walk.changeset = (walk.dir / "cs.bin").read_bytes()
    assert walk.changeset
    status, _, cert = walk.curl(walk.real(command))
    assert status == 201, cert
    assert (cert["seq"], cert["prev"], cert["idempotency_key"]) == (1, walk.genesis["head"], "k1")
    assert cert["witness_key"] == walk.witness.key and "duplicate" not in cert
    # README: a retry with the same key and changeset gets the original certificate.
    status, _, again = walk.curl(walk.real(command))
    assert status == 200 and again == dict(cert, duplicate=True)
    walk.certs = {1: cert}


@step("pull")
def _pull(walk, command):
    started = time.monotonic()
    status, _, body = walk.curl(walk.real(command))
    assert status == 200, body
    assert time.monotonic() - started < 20, "long-polled although a commit was there"
    assert [c["seq"] for c in body["commits"]] == [1]
    assert base64.b64decode(body["commits"][0]["changeset"]) == walk.changeset
    assert body["commits"][0]["head"] == walk.certs[1]["head"]
    assert body["head"]["seq"] == 1 and body["head"]["head"] == walk.certs[1]["head"]


@step("watch")
def _watch(walk, command):
    # The stream never ends by itself: read it for 2 s, as a user would press ^C.
    out = walk.shell(f"timeout 2 {walk.real(command)}")
    assert out.returncode == 124, out.stderr  # timeout's "I stopped it"
    events = [e for e in out.stdout.split("\n\n") if e.strip()]
    assert len(events) == 1, out.stdout
    fields = dict(line.split(": ", 1) for line in events[0].splitlines())
    assert (fields["event"], fields["id"]) == ("commit", "1:" + walk.certs[1]["head"])
    assert json.loads(fields["data"])["head"] == walk.certs[1]["head"]


@step("certificate")
def _certificate(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200 and body == walk.certs[1]
    # Five more commits (rows 2..6), so that README's `at=5` names a seq in the history
    # other than the newest one.
    for n in range(2, 7):
        walk.device(f"INSERT INTO notes VALUES ({n}, 'row {n}'); SELECT pdb_commit();")
        blob = bytes.fromhex(walk.device(
            f"SELECT hex(changeset) FROM pdb_upload_queue WHERE id = {n}").strip())
        walk.certs[n] = walk.post_commit(blob, f"k{n}")
        assert walk.certs[n]["seq"] == n


@step("snapshot-create")
def _snapshot_create(walk, command):
    status, _, m = walk.curl(walk.real(command))
    assert status == 201, m
    assert (m["group"], m["seq"], m["head"]) == ("notes", 6, walk.certs[6]["head"])
    assert m["state"] == walk.certs[6]["state"] and m["schema_hash"] == walk.genesis["schema_hash"]
    assert m["object"] == "/v1/objects/" + m["blake3"] and m["size"] > 0
    walk.latest = m


@step("snapshot-latest")
def _snapshot_latest(walk, command):
    status, _, m = walk.curl(walk.real(command))
    assert status == 200 and m == walk.latest


@step("snapshot-at")
def _snapshot_at(walk, command):
    status, _, m = walk.curl(walk.real(command))
    assert status == 200, m
    assert (m["seq"], m["head"], m["state"]) == (5, walk.certs[5]["head"], walk.certs[5]["state"])
    assert m["blake3"] != walk.latest["blake3"]
    walk.values["blake3"] = m["blake3"]
    walk.at5 = m


@step("object")
def _object(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 206, body  # a Range request, answered in part (here: all of it)
    image = (walk.dir / "notes-5.db").read_bytes()
    assert len(image) == walk.at5["size"] and blake3_hex(image) == walk.at5["blake3"]
    conn = sqlite3.connect(f"file:{walk.dir / 'notes-5.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall() == [
            (1, "first")] + [(n, f"row {n}") for n in range(2, 6)]
    finally:
        conn.close()


def ready(walk, name):
    """Waits until projection `name` is built (it is built in the background)."""
    deadline = time.monotonic() + 60
    while True:
        req = urllib.request.Request(f"{walk.witness.url}/v1/groups/notes/projections/{name}/status",
                                     headers={"Authorization": "Bearer " + walk.witness.admin})
        with urllib.request.urlopen(req, timeout=60) as resp:
            state = json.loads(resp.read())["state"]
        if state == "ready":
            return
        assert state == "building" and time.monotonic() < deadline, state
        time.sleep(0.05)


@step("projection-search")
def _projection_search(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 201, body
    assert (body["name"], body["kind"], body["state"] in ("building", "ready")) == ("search", "search", True)
    ready(walk, "search")


@step("projection-index")
def _projection_index(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 201 and body["spec"]["where"] == "length(body) > 3", body
    ready(walk, "by_initial")


@step("projection-aggregate")
def _projection_aggregate(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 201, body
    ready(walk, "counts")
    # The same spec again defines nothing new.
    status, _, again = walk.curl(walk.real(command))
    assert status == 200 and again["version"] == body["version"], again


@step("projection-status")
def _projection_status(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200, body
    assert (body["state"], body["seq"], body["lag"]) == ("ready", 6, 0), body
    assert body["head"] == walk.certs[6]["head"]


@step("projection-list")
def _projection_list(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200, body
    assert [p["name"] for p in body["projections"]] == ["by_initial", "counts", "search"]


@step("projection-read-search")
def _projection_read_search(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200 and body["seq"] == 6, body
    assert [(r["id"], r["body"]) for r in body["rows"]] == [(6, "row 6")]
    assert body["rows"][0]["snippet"] == "<mark>row</mark> <mark>6</mark>"


@step("projection-read-prefix")
def _projection_read_prefix(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200 and [r["id"] for r in body["rows"]] == [1], body


@step("projection-read-index")
def _projection_read_index(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200, body
    assert body["rows"] == [{"initial": "R", "id": 2, "body": "row 2"},
                            {"initial": "R", "id": 3, "body": "row 3"}]
    walk.values["next"] = body["next"]


@step("projection-read-next")
def _projection_read_next(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200 and body["seq"] >= 6, body
    assert [r["id"] for r in body["rows"]] == [4, 5] and body["next"], body


@step("projection-read-aggregate")
def _projection_read_aggregate(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 200, body
    assert body["rows"] == [{"initial": "F", "n": 1, "longest": 5, "ids": 1},
                            {"initial": "R", "n": 5, "longest": 5, "ids": 20}], body


@step("projection-delete")
def _projection_delete(walk, command):
    status, _, body = walk.curl(walk.real(command))
    assert status == 204, body
    status, _, body = walk.curl(walk.real(command))
    assert status == 404 and body["code"] == "not_found", body


@step("watch-rows")
def _watch_rows(walk, command):
    # The cursor of commit 5, as its event's id: the stream goes on with commit 6.
    walk.values["cursor"] = "5:" + walk.certs[5]["head"]
    out = walk.shell(f"timeout 2 {walk.real(command)}")
    assert out.returncode == 124, out.stderr
    events = [e for e in out.stdout.split("\n\n") if e.strip()]
    assert len(events) == 1, out.stdout
    fields = dict(line.split(": ", 1) for line in events[0].splitlines())
    assert (fields["event"], fields["id"]) == ("commit", "6:" + walk.certs[6]["head"])
    data = json.loads(fields["data"])
    assert data.pop("changes") == [{"table": "notes", "op": "insert", "pk": [6], "old": None,
                                    "new": {"id": 6, "body": "row 6"}}]
    assert data == dict(walk.certs[6], client=None, meta=None)


def test_witness_section_commands(tmp_path, lib_path, witness_path):
    """README's serve command and curl examples, in order, each answer checked."""
    commands = [(c, label) for c, where, label in readme_commands.COMMANDS
                if where == readme_commands.WALKTHROUGH]
    assert commands, "the table has no witness-section commands"
    walk = Walk(tmp_path, lib_path, witness_path)
    try:
        for command, label in commands:
            if label not in STEPS:
                pytest.fail(f"no @step({label!r}) checks README's `{command}`")
            STEPS[label](walk, command)
    finally:
        if walk.witness:
            walk.witness.stop()
