"""Fixtures for the host tests: the real, built libpdb loaded into Python's sqlite3.

Run with Debian's Python, whose sqlite3 module can load extensions:

    /usr/bin/python3 -m pytest tests/python -q

The library must be built first: cargo build --release -p pdb
(PDB_LIB=/path/to/libpdb.so overrides the location.)
"""

import os
import sqlite3
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIB_PATH = Path(os.environ.get("PDB_LIB", REPO_ROOT / "target" / "release" / "libpdb.so"))


def _require_lib() -> Path:
    if not LIB_PATH.is_file():
        pytest.fail(
            f"libpdb is not built: {LIB_PATH} does not exist. "
            f"Build it first with `cargo build --release -p pdb` in {REPO_ROOT}",
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
