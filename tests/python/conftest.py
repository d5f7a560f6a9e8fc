"""Fixtures for the host tests: the real, built libpdb loaded into Python's sqlite3.

Run with Debian's Python, whose sqlite3 module can load extensions:

    /usr/bin/python3 -m pytest tests/python -q

The library must be built first: cargo build --release -p personaldb
(PDB_LIB=/path/to/libpdb.so overrides the location.) The sync tests also need the
witness: cargo build --release -p personaldb-witness (PDB_WITNESS=/path/to/pdb-witness).
"""

import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIB_PATH = Path(os.environ.get("PDB_LIB", REPO_ROOT / "target" / "release" / "libpdb.so"))
WITNESS_PATH = Path(os.environ.get("PDB_WITNESS",
                                   REPO_ROOT / "target" / "release" / "pdb-witness"))


def _require_lib() -> Path:
    if not LIB_PATH.is_file():
        pytest.fail(
            f"libpdb is not built: {LIB_PATH} does not exist. "
            f"Build it first with `cargo build --release -p personaldb` in {REPO_ROOT}",
            pytrace=False,
        )
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        pytest.fail(
            f"{sys.executable}'s sqlite3 module cannot load extensions; "
            "run the tests with Debian's /usr/bin/python3",
            pytrace=False,
        )
    return LIB_PATH


@pytest.fixture(scope="session")
def lib_path() -> Path:
    """Absolute path of target/release/libpdb.so; fails the test if it is not built."""
    return _require_lib()


@pytest.fixture
def connect(lib_path, tmp_path):
    """connect(path=None, load=True) -> an autocommit connection (isolation_level=None),
    with libpdb loaded unless load=False; path None means a fresh file in tmp_path.
    Every connection is closed at teardown."""
    opened = []

    def _connect(path=None, load=True):
        if path is None:
            path = tmp_path / f"db{len(opened)}.sqlite"
        conn = sqlite3.connect(str(path), isolation_level=None)
        opened.append(conn)
        if load:
            conn.enable_load_extension(True)
            # Python 3.11's load_extension() takes no entry point: SQLite derives
            # sqlite3_pdb_init from the file name libpdb.so.
            conn.load_extension(str(lib_path))
            conn.enable_load_extension(False)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


# ---- a real witness ------------------------------------------------------------------------

class Witness:
    """A running `pdb-witness serve` on a free loopback port, with its own data directory.
    `argv` (run in `cwd`) replaces the plain binary, e.g. README's `cargo run` command; it
    must end up serving `data` and print the same lines within `start_timeout` seconds."""

    def __init__(self, binary: Path, data: Path, argv=None, cwd=None, start_timeout=30):
        self.binary = binary
        self.data = data
        self.log = data.parent / (data.name + ".stderr")
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(
            argv or [str(binary), "serve", "--listen", "127.0.0.1:0", "--data", str(data)],
            stdout=subprocess.PIPE, stderr=self._log_file, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PDB_LOG="warn"), text=True, cwd=cwd)
        lines = queue.Queue()

        def drain():  # keeps reading stdout, so the witness never blocks on a full pipe
            for line in self.proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        printed = {}
        deadline = time.monotonic() + start_timeout
        while "listening" not in printed:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                pytest.fail(f"pdb-witness did not print `listening: ...` within "
                            f"{start_timeout} s; "
                            f"stderr: {self.stderr()}", pytrace=False)
            if line is None:
                rc = self.proc.wait()
                self._log_file.close()
                pytest.fail(f"pdb-witness exited (rc {rc}) before listening; "
                            f"stderr: {self.stderr()}", pytrace=False)
            key, sep, value = line.partition(": ")
            if sep:
                printed[key] = value
        self.url = printed["listening"]          # http://127.0.0.1:PORT
        self.key = printed["witness key"]        # hex of the Ed25519 public key
        self.admin = printed["admin token"]      # a JWT with role admin on every group

    def stderr(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def token(self, sub: str, group: str, role: str = "write", ttl: int = 3600) -> str:
        """A bearer token from `pdb-witness token`, signed with the data directory's secret."""
        out = subprocess.run(
            [str(self.binary), "token", "--data", str(self.data), "--sub", sub,
             "--group", group, "--role", role, "--ttl", str(ttl)],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"pdb-witness token failed: {out.stderr}"
        return out.stdout.strip()

    def request(self, method: str, path: str, body=None, token=None):
        """(status, parsed JSON body or text) of an HTTP request; token None = admin."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + (token or self.admin))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def create_group(self, group: str, ddl: str) -> dict:
        """PUT /v1/groups/{group} with the admin token; the group must be new."""
        status, body = self.request("PUT", f"/v1/groups/{group}", {"ddl": ddl})
        assert status == 201, f"creating group {group}: {status} {body}"
        return body

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log_file.closed:
            self._log_file.close()


@pytest.fixture(scope="session")
def witness_path() -> Path:
    """Absolute path of target/release/pdb-witness; fails the test if it is not built."""
    if not WITNESS_PATH.is_file():
        pytest.fail(
            f"pdb-witness is not built: {WITNESS_PATH} does not exist. "
            f"Build it first with `cargo build --release -p personaldb-witness` in {REPO_ROOT}",
            pytrace=False,
        )
    return WITNESS_PATH


@pytest.fixture(scope="session")
def witness(witness_path, tmp_path_factory):
    """One witness process for the session (each test makes its own groups); stopped at
    the end of the session."""
    w = Witness(witness_path, tmp_path_factory.mktemp("witness") / "data")
    yield w
    w.stop()
