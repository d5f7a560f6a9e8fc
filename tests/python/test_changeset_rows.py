"""pdb_changeset_rows, the table-valued function, against hostile input in a real host.

Whatever the argument or the query shape, the host gets the rows README documents or an
ordinary SQLite error naming pdb_changeset_rows (or, where SQLite itself refuses the
statement before calling the extension, SQLite's own error naming it), never a crash;
and the database it runs in, tracked tables with pending changes included, is left
byte for byte as it was.
"""

import json
import os
import random
import sqlite3
import subprocess
import textwrap

import pytest

from test_extension import UNDEF, dele, ins, one, snapshot, tbl, upd

T = tbl("t", [1, 0, 0])
U = tbl("u", [1, 0])
# Parts of one valid changeset over two tables; a prefix ending between parts is itself
# a valid changeset of the changes before it.
PARTS = [T, ins(3, "three", 30), upd([1, "one", UNDEF], [UNDEF, "uno", UNDEF]),
         dele(2, "two", 20, indirect=1), U, ins(2, b"\x00\xff"), ins(4, 1.5)]
GOOD = b"".join(PARTS)
UNDEFINED = '{"undefined":true}'
GOOD_ROWS = [
    ("t", "INSERT", 0, "[3]", None, '[3,"three",30]'),
    ("t", "UPDATE", 0, "[1]", f'[1,"one",{UNDEFINED}]', f'[{UNDEFINED},"uno",{UNDEFINED}]'),
    ("t", "DELETE", 1, "[2]", '[2,"two",20]', None),
    ("u", "INSERT", 0, "[2]", None, '[2,{"blob":"00ff"}]'),
    ("u", "INSERT", 0, "[4]", None, "[4,1.5]"),
]
OTHER = tbl("u", [1, 0]) + ins(9, "nine")
MIB8 = 8 * 1024 * 1024
NOT_A_BLOB = "[argument] pdb_changeset_rows: argument must be a changeset BLOB"
NO_ARG = "[argument] pdb_changeset_rows: needs a changeset argument: select * from pdb_changeset_rows(?)"


def malformed(at, what):
    return f"[bad_changeset] pdb_changeset_rows: malformed changeset at byte {at}: {what}"


@pytest.fixture
def db(connect, tmp_path):
    """A file a user cares about: tracked t with a commit and a pending edit, and a table
    of changesets (good, NULL, empty) to join against."""
    path = tmp_path / "user.db"
    conn = connect(path)
    conn.executescript("""
        CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER);
        INSERT INTO t VALUES (1, 'one', 10), (2, 'two', 20);
        CREATE TABLE cs(id INTEGER PRIMARY KEY, blob BLOB);
    """)
    conn.execute("INSERT INTO cs VALUES (1, ?), (2, NULL), (3, x'')", (GOOD,))
    conn.execute("SELECT pdb_track('t')")
    conn.execute("SELECT pdb_commit()")
    conn.execute("UPDATE t SET a = 'local edit' WHERE id = 2")
    return conn, path


def outcome(conn, sql, params=()):
    """('rows', rows) or ('error', message), never an exception of another kind."""
    try:
        return "rows", conn.execute(sql, params).fetchall()
    except sqlite3.Error as e:
        assert type(e) is sqlite3.OperationalError, (sql, type(e), e)
        return "error", str(e)


def unchanged_after(conn, path, calls):
    """Runs (sql, params) calls; checks each left no transaction open and the file,
    the dump and the pending changes exactly as they were. Returns the outcomes."""
    before = snapshot(conn, path)
    pending = one(conn, "SELECT pdb_changeset()")
    results = []
    for sql, params in calls:
        results.append(outcome(conn, sql, params))
        assert not conn.in_transaction, sql
        assert snapshot(conn, path) == before, sql
    assert one(conn, "SELECT pdb_changeset()") == pending
    return results


def _argument_cases():
    """(id, sql, params, expected outcome)."""
    q = "SELECT * FROM pdb_changeset_rows(?)"
    rnd = random.Random(8)
    garbage = b"\xde" + rnd.randbytes(MIB8 - 1)
    header_then_garbage = T + b"\x12\x00" + b"\x07" + rnd.randbytes(MIB8)
    return [
        ("null", q, (None,), ("rows", [])),
        ("empty-blob", q, (b"",), ("rows", [])),
        ("valid", q, (GOOD,), ("rows", GOOD_ROWS)),
        ("garbage", q, (b"\xde\xad\xbe\xef",), ("error", malformed(0, "unexpected byte 0xde"))),
        ("zeroblob", "SELECT * FROM pdb_changeset_rows(zeroblob(100))", (),
         ("error", malformed(0, "unexpected byte 0x00"))),
        ("garbage-8MiB", q, (garbage,), ("error", malformed(0, "unexpected byte 0xde"))),
        ("header-then-garbage-8MiB", q, (header_then_garbage,),
         ("error", malformed(len(T) + 2, "unknown value type 0x07"))),
        ("integer", q, (42,), ("error", NOT_A_BLOB)),
        ("text", q, ("T\x03\x01\x00\x00t\x00",), ("error", NOT_A_BLOB)),
        ("text-of-valid-bytes", "SELECT * FROM pdb_changeset_rows(CAST(? AS TEXT))", (GOOD,),
         ("error", NOT_A_BLOB)),
        ("real", q, (1.5,), ("error", NOT_A_BLOB)),
        ("no-argument", "SELECT * FROM pdb_changeset_rows()", (), ("error", NO_ARG)),
        ("no-parentheses", "SELECT * FROM pdb_changeset_rows", (), ("error", NO_ARG)),
        ("two-arguments", "SELECT * FROM pdb_changeset_rows(?, ?)", (GOOD, GOOD),
         ("error", "too many arguments on pdb_changeset_rows() - max 1")),
        # The hidden column: the argument may be given as a constraint, and reads back.
        ("hidden-column-as-argument", "SELECT * FROM pdb_changeset_rows WHERE changeset = ?",
         (GOOD,), ("rows", GOOD_ROWS)),
        ("hidden-column-in", "SELECT * FROM pdb_changeset_rows WHERE changeset IN (?)",
         (GOOD,), ("rows", GOOD_ROWS)),
        ("hidden-column-not-equal", "SELECT * FROM pdb_changeset_rows WHERE changeset > ?",
         (GOOD,), ("error", NO_ARG)),
        ("hidden-column-is", "SELECT * FROM pdb_changeset_rows WHERE changeset IS ?",
         (GOOD,), ("error", NO_ARG)),
        ("hidden-column-read", "SELECT changeset, rowid, op FROM pdb_changeset_rows(?)",
         (GOOD,), ("rows", [(GOOD, i + 1, r[1]) for i, r in enumerate(GOOD_ROWS)])),
        ("hidden-column-same-twice", "SELECT * FROM pdb_changeset_rows(?) WHERE changeset = ?",
         (GOOD, GOOD), ("rows", GOOD_ROWS)),
        # Two different changesets: whichever SQLite passes, the other is checked
        # against the hidden column, so no row is both.
        ("hidden-column-two-values",
         "SELECT * FROM pdb_changeset_rows(?) WHERE changeset = ?", (GOOD, OTHER), ("rows", [])),
        ("rowid", q + " WHERE rowid = 2", (GOOD,), ("rows", GOOD_ROWS[1:2])),
        ("limit", q + " LIMIT 2", (GOOD,), ("rows", GOOD_ROWS[:2])),
        ("limit-offset", q + " LIMIT 1 OFFSET 4", (GOOD,), ("rows", GOOD_ROWS[4:])),
        ("limit-0", q + " LIMIT 0", (GOOD,), ("rows", [])),
        ("limit-garbage", q + " LIMIT 1", (b"\xde",), ("error", malformed(0, "unexpected byte 0xde"))),
        ("order-by", "SELECT pk FROM pdb_changeset_rows(?) ORDER BY pk DESC, tbl", (GOOD,),
         ("rows", [("[4]",), ("[3]",), ("[2]",), ("[2]",), ("[1]",)])),
        ("aggregate", "SELECT tbl, count(*) FROM pdb_changeset_rows(?) GROUP BY tbl", (GOOD,),
         ("rows", [("t", 3), ("u", 2)])),
        ("subquery-argument",
         "SELECT op FROM pdb_changeset_rows((SELECT blob FROM cs WHERE id = 1)) LIMIT 1", (),
         ("rows", [("INSERT",)])),
        # What SQLite itself refuses, before the extension sees anything.
        ("insert", "INSERT INTO pdb_changeset_rows(tbl) VALUES ('t')", (),
         ("error", "table pdb_changeset_rows may not be modified")),
        ("update", "UPDATE pdb_changeset_rows SET tbl = 't'", (),
         ("error", "table pdb_changeset_rows may not be modified")),
        ("delete", "DELETE FROM pdb_changeset_rows", (),
         ("error", "table pdb_changeset_rows may not be modified")),
        ("drop", "DROP TABLE pdb_changeset_rows", (),
         ("error", "table pdb_changeset_rows may not be dropped")),
        ("create-virtual-table", "CREATE VIRTUAL TABLE x USING pdb_changeset_rows", (),
         ("error", "no such module: pdb_changeset_rows")),
    ]


ARGUMENT_CASES = _argument_cases()


@pytest.mark.parametrize("case", ARGUMENT_CASES, ids=[c[0] for c in ARGUMENT_CASES])
def test_arguments_and_query_shapes(db, case):
    conn, path = db
    _, sql, params, expected = case
    assert unchanged_after(conn, path, [(sql, params)]) == [expected]
    # The connection goes on as before.
    assert conn.execute("SELECT * FROM pdb_changeset_rows(?)", (GOOD,)).fetchall() == GOOD_ROWS


def test_every_truncation_of_a_valid_changeset(db):
    conn, path = db
    boundaries = {sum(len(p) for p in PARTS[:k]): k for k in range(len(PARTS) + 1)}
    calls = [("SELECT * FROM pdb_changeset_rows(?)", (GOOD[:n],)) for n in range(len(GOOD))]
    results = unchanged_after(conn, path, calls)
    for n, (kind, value) in enumerate(results):
        if n in boundaries:
            # The complete changes of the prefix, in order (a table header counts none).
            k = boundaries[n]
            changes = sum(1 for p in PARTS[:k] if p not in (T, U))
            assert (kind, value) == ("rows", GOOD_ROWS[:changes]), n
        else:
            assert kind == "error" and value.startswith(
                "[bad_changeset] pdb_changeset_rows: malformed changeset at byte "), (n, value)
            # The same decoder as the scalar functions: the same diagnosis.
            with pytest.raises(sqlite3.OperationalError) as info:
                conn.execute("SELECT pdb_invert(?)", (GOOD[:n],))
            assert value.removeprefix("[bad_changeset] pdb_changeset_rows: ") == str(
                info.value).removeprefix("[bad_changeset] pdb_invert: "), n


def test_an_8_mib_valid_changeset(db):
    conn, path = db
    # Many rows: 1,024 inserts of 8 KiB BLOBs; and one value of 8 MiB.
    rnd = random.Random(88)
    blobs = [rnd.randbytes(8192) for _ in range(1024)]
    many = U + b"".join(ins(i, b) for i, b in enumerate(blobs))
    assert len(many) > MIB8
    big = rnd.randbytes(MIB8)
    single = U + ins(1, big)
    results = unchanged_after(conn, path, [
        ("SELECT rowid, pk, new FROM pdb_changeset_rows(?)", (many,)),
        ("SELECT count(*) FROM pdb_changeset_rows(?) LIMIT 1", (many,)),
        ("SELECT tbl, op, pk, old, new FROM pdb_changeset_rows(?)", (single,)),
    ])
    kind, rows = results[0]
    assert kind == "rows" and len(rows) == 1024
    for i in (0, 511, 1023):
        assert rows[i] == (i + 1, f"[{i}]", json.dumps([i, {"blob": blobs[i].hex()}],
                                                        separators=(",", ":")))
    assert results[1] == ("rows", [(1024,)])
    assert results[2] == ("rows", [("u", "INSERT", "[1]", None, f'[1,{{"blob":"{big.hex()}"}}]')])


def test_in_joins_with_the_users_tables(db):
    conn, path = db
    calls = [
        # One row per change of each stored changeset; NULL and empty give none.
        ("SELECT cs.id, r.op FROM cs, pdb_changeset_rows(cs.blob) r", ()),
        ("SELECT cs.id, r.op FROM cs LEFT JOIN pdb_changeset_rows(cs.blob) r ORDER BY cs.id", ()),
        # The argument as a join constraint, from either side.
        ("SELECT cs.id, r.pk FROM cs JOIN pdb_changeset_rows r ON r.changeset = cs.blob", ()),
        ("SELECT cs.id, r.pk FROM pdb_changeset_rows r JOIN cs ON r.changeset = cs.blob", ()),
        ("SELECT count(*) FROM cs, pdb_changeset_rows r WHERE r.changeset = cs.blob "
         "AND r.changeset = ?", (GOOD,)),
        # The queue: what the user has committed.
        ("SELECT q.id, r.tbl, r.op, r.new FROM pdb_upload_queue q, "
         "pdb_changeset_rows(q.changeset) r", ()),
        # Two calls joined with each other.
        ("SELECT count(*) FROM pdb_changeset_rows(?) a, pdb_changeset_rows(?) b "
         "WHERE a.pk = b.pk", (GOOD, GOOD)),
        # Correlated, per outer row.
        ("SELECT id, (SELECT count(*) FROM pdb_changeset_rows(cs.blob)) FROM cs ORDER BY id", ()),
        # Each needs the other's row first: SQLite's planner finds no order and says so.
        ("SELECT * FROM pdb_changeset_rows(b.new) a, pdb_changeset_rows(a.new) b", ()),
    ]
    results = unchanged_after(conn, path, calls)
    ops = [("INSERT",), ("UPDATE",), ("DELETE",), ("INSERT",), ("INSERT",)]
    keys = [r[3] for r in GOOD_ROWS]
    assert results == [
        ("rows", [(1,) + o for o in ops]),
        ("rows", [(1,) + o for o in ops] + [(2, None), (3, None)]),
        ("rows", [(1, k) for k in keys]),
        ("rows", [(1, k) for k in keys]),
        ("rows", [(5,)]),
        ("rows", [(1, "t", "INSERT", '[1,"one",10]'), (1, "t", "INSERT", '[2,"two",20]')]),
        # [2] is a key of both tables: 2 x 2 pairs, plus [1], [3], [4].
        ("rows", [(7,)]),
        ("rows", [(1, 5), (2, 0), (3, 0)]),
        ("error", "no query solution"),
    ]


def test_a_hostile_changeset_stored_in_a_table_stops_the_join_cleanly(db):
    conn, path = db
    conn.execute("INSERT INTO cs VALUES (4, x'deadbeef')")
    before = snapshot(conn, path)
    for sql in ["SELECT cs.id, r.op FROM cs, pdb_changeset_rows(cs.blob) r",
                "SELECT * FROM cs JOIN pdb_changeset_rows r ON r.changeset = cs.blob"]:
        assert outcome(conn, sql) == ("error", malformed(0, "unexpected byte 0xde"))
        assert not conn.in_transaction
    # Inside the user's own transaction: the error does not roll back their writes.
    conn.execute("BEGIN")
    conn.execute("INSERT INTO cs VALUES (5, NULL)")
    assert outcome(conn, "SELECT * FROM cs, pdb_changeset_rows(cs.blob)")[0] == "error"
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert snapshot(conn, path) == before


READ_ONLY_CALLS = [
    ("SELECT * FROM pdb_changeset_rows(?)", (GOOD,)),
    ("SELECT * FROM pdb_changeset_rows(?)", (None,)),
    ("SELECT * FROM pdb_changeset_rows(?)", (b"\xde\xad",)),
    ("SELECT * FROM pdb_changeset_rows(?)", (7,)),
    ("SELECT * FROM pdb_changeset_rows(?)", (GOOD[:-1],)),
    ("SELECT cs.id, r.op FROM cs, pdb_changeset_rows(cs.blob) r LIMIT 2", ()),
    ("SELECT q.id, r.new FROM pdb_upload_queue q, pdb_changeset_rows(q.changeset) r", ()),
]
READ_ONLY_EXPECTED = [
    ("rows", GOOD_ROWS),
    ("rows", []),
    ("error", malformed(0, "unexpected byte 0xde")),
    ("error", NOT_A_BLOB),
    ("error", malformed(len(GOOD) - 9, "truncated value")),
    ("rows", [(1, "INSERT"), (1, "UPDATE")]),
    ("rows", [(1, '[1,"one",10]'), (1, '[2,"two",20]')]),
]


@pytest.mark.parametrize("how", ["mode=ro", "query_only"])
def test_in_a_read_only_database(db, lib_path, how):
    conn, path = db
    conn.close()
    image = path.read_bytes()
    uri = f"file:{path}?mode=ro" if how == "mode=ro" else f"file:{path}"
    ro = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        ro.enable_load_extension(True)
        ro.load_extension(str(lib_path))
        ro.enable_load_extension(False)
        if how == "query_only":
            ro.execute("PRAGMA query_only = 1")
        results = [outcome(ro, sql, params) for sql, params in READ_ONLY_CALLS]
        assert not ro.in_transaction
    finally:
        ro.close()
    assert results == READ_ONLY_EXPECTED
    assert path.read_bytes() == image
    assert not os.path.exists(f"{path}-journal") and not os.path.exists(f"{path}-wal")


# ---- a panic inside the virtual table: an error, never a crashed host --------------------

PANIC_CHILD = textwrap.dedent(r"""
    import hashlib, json, sqlite3, sys
    lib, path, good = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    digest = lambda: hashlib.sha256(open(path, "rb").read()).hexdigest()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.enable_load_extension(True)
    conn.load_extension(lib)
    before, pending = digest(), conn.execute("SELECT pdb_changeset()").fetchone()[0]
    out = {}
    try:
        conn.execute("SELECT * FROM pdb_changeset_rows(?)", (good,)).fetchall()
        out["error"] = None
    except sqlite3.Error as e:
        out["error"] = [type(e).__name__, getattr(e, "sqlite_errorname", None), str(e)]
    out["in_transaction"] = conn.in_transaction
    out["file_unchanged"] = digest() == before
    out["pending_unchanged"] = conn.execute("SELECT pdb_changeset()").fetchone()[0] == pending
    # The connection keeps working: other functions, and the user's writes.
    out["version"] = conn.execute("SELECT pdb_version()").fetchone()[0]
    conn.execute("INSERT INTO t VALUES (7, 'after', 70)")
    out["committed"] = conn.execute("SELECT pdb_commit()").fetchone()[0]
    conn.close()
    print(json.dumps(out))
""")


@pytest.mark.parametrize("target", ["pdb_changeset_rows", "pdb_changeset_rows:column"])
def test_a_panic_becomes_an_sqlite_error_naming_the_function(db, lib_path, target):
    conn, path = db
    conn.close()
    env = dict(os.environ, PDB_TEST_PANIC=target)
    proc = subprocess.run(["/usr/bin/python3", "-c", PANIC_CHILD, str(lib_path), str(path),
                           GOOD.hex()], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}): {proc.stderr}"
    out = json.loads(proc.stdout)
    assert out == {
        "error": ["OperationalError", "SQLITE_ERROR",
                  "[internal] libpdb: pdb_changeset_rows: internal error (panic: PDB_TEST_PANIC asked "
                  f"{target} to panic); nothing was changed"],
        "in_transaction": False,
        "file_unchanged": True,
        "pending_unchanged": True,
        "version": "0.1.0",
        "committed": 2,
    }
