"""Host tests: the real target/release/libpdb.so loaded into Python's sqlite3 (Debian's
/usr/bin/python3, system SQLite 3.40).

    /usr/bin/python3 -m pytest tests/python -q

Expected changesets are built here, byte by byte, with an encoder written from the
session extension's format (see client/src/changeset/mod.rs), and commit hashes are
checked with a BLAKE3 written from its specification, so neither check trusts the
extension's own code.

Several tests are regression tests for defects these host tests found (a changeset
argument reported as SQLITE_CORRUPT or SQLITE_SCHEMA, a panic mid-apply).
"""

import hashlib
import json
import os
import re
import sqlite3
import struct
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

# --------------------------------------------------------------------------------------
# A second source for BLAKE3: written from the specification, shares no code with the
# Rust crate (checked against the official vectors below and, when the `blake3` module
# happens to be installed, against it too).

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
       0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_PERM = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START, _CHUNK_END, _PARENT, _ROOT = 1, 2, 4, 8
_M32 = 0xFFFFFFFF


def _g(s, a, b, c, d, x, y):
    s[a] = (s[a] + s[b] + x) & _M32
    s[d] = ((s[d] ^ s[a]) >> 16 | (s[d] ^ s[a]) << 16) & _M32
    s[c] = (s[c] + s[d]) & _M32
    s[b] = ((s[b] ^ s[c]) >> 12 | (s[b] ^ s[c]) << 20) & _M32
    s[a] = (s[a] + s[b] + y) & _M32
    s[d] = ((s[d] ^ s[a]) >> 8 | (s[d] ^ s[a]) << 24) & _M32
    s[c] = (s[c] + s[d]) & _M32
    s[b] = ((s[b] ^ s[c]) >> 7 | (s[b] ^ s[c]) << 25) & _M32


def _compress(cv, block, counter, block_len, flags):
    m = list(struct.unpack("<16I", block.ljust(64, b"\0")))
    s = list(cv) + list(_IV[:4]) + [counter & _M32, counter >> 32, block_len, flags]
    for _ in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        m = [m[i] for i in _PERM]
    return [s[i] ^ s[i + 8] for i in range(8)]


def _b3_node(data, chunk_counter):
    """Compression inputs of the subtree over `data` (without the ROOT flag)."""
    if len(data) <= 1024:
        blocks = [data[i:i + 64] for i in range(0, len(data), 64)] or [b""]
        cv = _IV
        for i, block in enumerate(blocks):
            flags = (_CHUNK_START if i == 0 else 0) | (_CHUNK_END if i == len(blocks) - 1 else 0)
            if i == len(blocks) - 1:
                return cv, block, chunk_counter, len(block), flags
            cv = _compress(cv, block, chunk_counter, 64, flags)
    chunks = (len(data) + 1023) // 1024
    left = 1 << ((chunks - 1).bit_length() - 1)  # largest power of two below `chunks`
    lcv = _compress(*_b3_node(data[:left * 1024], chunk_counter))
    rcv = _compress(*_b3_node(data[left * 1024:], chunk_counter + left))
    return _IV, struct.pack("<16I", *lcv, *rcv), 0, 64, _PARENT


def blake3_hex(data: bytes) -> str:
    cv, block, _, block_len, flags = _b3_node(bytes(data), 0)
    return struct.pack("<8I", *_compress(cv, block, 0, block_len, flags | _ROOT)).hex()


# --------------------------------------------------------------------------------------
# A changeset encoder, from the format description (session extension, byte for byte).

UNDEF = object()  # a field that is not part of an UPDATE


def varint(v: int) -> bytes:
    """SQLite's record varint (1..9 bytes, big-endian 7-bit groups, 9th byte 8 bits)."""
    if v <= 0x7F:
        return bytes([v])
    if v > 0x00FFFFFFFFFFFFFF:
        hi = v >> 8
        return bytes(((hi >> (7 * i)) & 0x7F) | 0x80 for i in range(7, -1, -1)) + bytes([v & 0xFF])
    groups = []
    while v:
        groups.append(v & 0x7F)
        v >>= 7
    groups.reverse()
    return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])


def enc(v) -> bytes:
    if v is UNDEF:
        return b"\x00"
    if v is None:
        return b"\x05"
    if isinstance(v, int):
        return b"\x01" + v.to_bytes(8, "big", signed=True)
    if isinstance(v, float):
        return b"\x02" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return b"\x03" + varint(len(b)) + b
    if isinstance(v, (bytes, bytearray)):
        return b"\x04" + varint(len(v)) + bytes(v)
    raise TypeError(v)


def tbl(name: str, pk) -> bytes:
    return b"T" + varint(len(pk)) + bytes(pk) + name.encode() + b"\x00"


def ins(*new, indirect=0) -> bytes:
    return bytes([0x12, indirect]) + b"".join(map(enc, new))


def dele(*old, indirect=0) -> bytes:
    return bytes([0x09, indirect]) + b"".join(map(enc, old))


def upd(old, new, indirect=0) -> bytes:
    return bytes([0x17, indirect]) + b"".join(map(enc, old)) + b"".join(map(enc, new))


U = '{"undefined":true}'

EXPECTED_FUNCTIONS = {
    # (name, narg): flags. 0x800 = SQLITE_DETERMINISTIC; 0x80000 = SQLITE_DIRECTONLY
    # (side effects: never callable from a view or trigger someone else planted).
    ("pdb_version", 0): 0x800,
    ("pdb_track", 1): 0x80000,
    ("pdb_untrack", 1): 0x80000,
    ("pdb_changeset", 0): 0x80000,
    ("pdb_commit", 0): 0x80000,
    ("pdb_commit", 1): 0x80000,
    ("pdb_apply", 1): 0x80000,
    ("pdb_apply", 2): 0x80000,
    ("pdb_invert", 1): 0x800,
    ("pdb_concat", 2): 0x800,
    # Sync (DESIGN §6): all of them read or write the database or talk to the witness.
    ("pdb_open", 4): 0x80000,
    ("pdb_sync", 0): 0x80000,
    ("pdb_push", 0): 0x80000,
    ("pdb_pull", 0): 0x80000,
    ("pdb_bootstrap", 0): 0x80000,
    ("pdb_status", 0): 0x80000,
    ("pdb_head", 0): 0x80000,
    ("pdb_certificate", 1): 0x80000,
    ("pdb_verify", 0): 0x80000,
    ("pdb_set_strategy", 2): 0x80000,
    ("pdb_set_strategy", 3): 0x80000,
    ("pdb_resolve", 2): 0x80000,
    ("pdb_sync_start", 0): 0x80000,
    ("pdb_sync_start", 1): 0x80000,
    ("pdb_sync_stop", 0): 0x80000,
}


def one(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def rows(conn, blob):
    return conn.execute("SELECT * FROM pdb_changeset_rows(?)", (blob,)).fetchall()


def snapshot(conn, path):
    """Everything a user could observe: the logical dump and the file's bytes."""
    assert not conn.in_transaction
    dump = list(conn.iterdump())
    return dump, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def now_ms():
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------


def test_blake3_second_source_matches_official_vectors():
    assert blake3_hex(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert blake3_hex(b"abc") == "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    try:
        import blake3  # optional third source
    except ImportError:
        return
    for n in (0, 1, 64, 1023, 1024, 1025, 2048, 3073, 5000):
        data = bytes(i % 251 for i in range(n))
        assert blake3_hex(data) == blake3.blake3(data).hexdigest()


def test_registers_exactly_the_pdb_functions_and_module(connect, lib_path):
    conn = connect(load=False)
    fn_sql = "SELECT name, narg, flags, type, enc FROM pragma_function_list"
    before_fn = set(conn.execute(fn_sql))
    before_mod = set(conn.execute("SELECT name FROM pragma_module_list"))
    assert not any(r[0].startswith("pdb_") for r in before_fn)

    conn.enable_load_extension(True)
    conn.load_extension(str(lib_path))
    after_fn = set(conn.execute(fn_sql))
    after_mod = set(conn.execute("SELECT name FROM pragma_module_list"))

    assert before_fn - after_fn == set()
    added = after_fn - before_fn
    assert {(n, a): f for n, a, f, _, _ in added} == EXPECTED_FUNCTIONS
    assert {(t, e) for _, _, _, t, e in added} == {("s", "utf8")}
    assert after_mod - before_mod == {("pdb_changeset_rows",)}
    assert before_mod - after_mod == set()

    # The table-valued function's columns (plus its hidden argument).
    assert conn.execute(
        "SELECT name, hidden FROM pragma_table_xinfo('pdb_changeset_rows')"
    ).fetchall() == [("tbl", 0), ("op", 0), ("indirect", 0), ("pk", 0), ("old", 0),
                     ("new", 0), ("changeset", 1)]
    assert one(conn, "SELECT pdb_version()") == "0.1.0"

    # DIRECTONLY is enforced: a view or trigger cannot call the side-effecting functions.
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a)")
    conn.execute("CREATE VIEW sneaky AS SELECT pdb_track('t')")
    with pytest.raises(sqlite3.OperationalError, match=r"^unsafe use of pdb_track\(\)$"):
        conn.execute("SELECT * FROM sneaky").fetchall()
    conn.execute("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT pdb_commit(); END")
    with pytest.raises(sqlite3.OperationalError, match=r"^unsafe use of pdb_commit\(\)$"):
        conn.execute("INSERT INTO t VALUES (1, 'a')")
    # ...while the pure functions work there.
    conn.execute("CREATE VIEW ver AS SELECT pdb_version() AS v")
    assert one(conn, "SELECT v FROM ver") == "0.1.0"


def test_load_through_sql_with_explicit_entry_point(lib_path, tmp_path):
    conn = sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None)
    try:
        conn.enable_load_extension(True)
        assert one(conn, "SELECT load_extension(?, 'sqlite3_pdb_init')", str(lib_path)) is None
        assert one(conn, "SELECT pdb_version()") == "0.1.0"
        # A second connection in the same process loads it too, independently.
        other = sqlite3.connect(":memory:", isolation_level=None)
        other.enable_load_extension(True)
        other.load_extension(str(lib_path))
        assert one(other, "SELECT pdb_version()") == "0.1.0"
        other.close()
        assert one(conn, "SELECT pdb_concat(NULL, NULL)") is None
    finally:
        conn.close()


def test_track_write_commit_round_trip(connect, tmp_path):
    path = tmp_path / "notes.db"
    conn = connect(path)
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
                 "score REAL, data BLOB, n INTEGER)")
    conn.execute("INSERT INTO notes VALUES (1, 'first', 1.5, x'00ff', -5), "
                 "(6, 'six', NULL, NULL, 6)")
    header = tbl("notes", [1, 0, 0, 0, 0])

    # Rows already there when tracking starts are pending inserts.
    assert one(conn, "SELECT pdb_track('notes')") == "notes"
    first = header + ins(1, "first", 1.5, b"\x00\xff", -5) + ins(6, "six", None, None, 6)
    assert one(conn, "SELECT pdb_changeset()") == first
    assert one(conn, "SELECT pdb_commit()") == 1
    assert one(conn, "SELECT pdb_changeset()") is None

    conn.execute("INSERT INTO notes VALUES (2, ?, 1e300, NULL, ?)", ('say "hi"\n', 2**62))
    conn.execute("INSERT INTO notes VALUES (3, 'gone', NULL, NULL, NULL)")
    conn.execute("DELETE FROM notes WHERE id = 3")                    # insert+delete: nothing
    conn.execute("INSERT INTO notes VALUES (4, 'draft', 0.25, x'', 0)")
    conn.execute("UPDATE notes SET title = 'final ☕' WHERE id = 4")  # insert+update: insert
    conn.execute("UPDATE notes SET title = 'tmp' WHERE id = 1")
    conn.execute("UPDATE notes SET title = 'first', score = 2.5, n = 7 WHERE id = 1")
    conn.execute("DELETE FROM notes WHERE id = 6")

    expected = (header
                + upd([1, UNDEF, 1.5, UNDEF, -5], [UNDEF, UNDEF, 2.5, UNDEF, 7])
                + ins(2, 'say "hi"\n', 1e300, None, 2**62)
                + ins(4, "final ☕", 0.25, b"", 0)
                + dele(6, "six", None, None, 6))
    pending = one(conn, "SELECT pdb_changeset()")
    assert pending == expected
    assert rows(conn, pending) == [
        ("notes", "UPDATE", 0, "[1]", f"[1,{U},1.5,{U},-5]", f"[{U},{U},2.5,{U},7]"),
        ("notes", "INSERT", 0, "[2]", None, '[2,"say \\"hi\\"\\n",1e300,null,4611686018427387904]'),
        ("notes", "INSERT", 0, "[4]", None, '[4,"final ☕",0.25,{"blob":""},0]'),
        ("notes", "DELETE", 0, "[6]", '[6,"six",null,null,6]', None),
    ]

    before = now_ms()
    assert one(conn, "SELECT pdb_commit(?)", '{"device":"laptop","n":[1,2]}') == 2
    after = now_ms()
    assert one(conn, "SELECT pdb_changeset()") is None
    assert one(conn, "SELECT pdb_commit()") is None  # nothing pending: no commit
    assert one(conn, "SELECT count(*) FROM pdb_upload_queue") == 2

    (qid, cs, h, key, base_seq, base_head, schema_hash, meta, created_at) = conn.execute(
        "SELECT id, changeset, hash, idempotency_key, base_seq, base_head, schema_hash, meta, "
        "created_at FROM pdb_upload_queue WHERE id = 2").fetchone()
    assert (qid, cs) == (2, expected)
    assert h == blake3_hex(expected)
    assert one(conn, "SELECT hash FROM pdb_upload_queue WHERE id = 1") == blake3_hex(first)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key != one(conn, "SELECT idempotency_key FROM pdb_upload_queue WHERE id = 1")
    assert (base_seq, base_head) == (0, None)
    # Schema hash, per client/src/schema.rs: BLAKE3("pdb/v1 schema" || per tracked table:
    # str(name) u16be(ncols) per column str(name) str(UPPER(type)) pk notnull).
    s = lambda x: len(x.encode()).to_bytes(2, "big") + x.encode()  # noqa: E731
    hin = b"pdb/v1 schema" + s("notes") + (5).to_bytes(2, "big")
    for name, typ, pk, notnull in [("id", "INTEGER", 1, 0), ("title", "TEXT", 0, 1),
                                   ("score", "REAL", 0, 0), ("data", "BLOB", 0, 0),
                                   ("n", "INTEGER", 0, 0)]:
        hin += s(name) + s(typ) + bytes([pk, notnull])
    assert schema_hash == blake3_hex(hin)
    assert meta == '{"device":"laptop","n":[1,2]}'
    assert before <= created_at <= after

    # Invert: the exact undo, which pdb_apply can run; what it applies is not captured.
    inverse = (header
               + upd([1, UNDEF, 2.5, UNDEF, 7], [UNDEF, UNDEF, 1.5, UNDEF, -5])
               + dele(2, 'say "hi"\n', 1e300, None, 2**62)
               + dele(4, "final ☕", 0.25, b"", 0)
               + ins(6, "six", None, None, 6))
    assert one(conn, "SELECT pdb_invert(?)", expected) == inverse
    assert one(conn, "SELECT pdb_concat(?, ?)", expected, inverse) == b""
    assert one(conn, "SELECT pdb_concat(?, ?)", first, expected) == header + ins(
        1, "first", 2.5, b"\x00\xff", 7) + ins(2, 'say "hi"\n', 1e300, None, 2**62) + ins(
        4, "final ☕", 0.25, b"", 0)
    assert json.loads(one(conn, "SELECT pdb_apply(?)", inverse)) == {
        "applied": 4, "replaced": 0, "skipped": 0}
    assert conn.execute("SELECT * FROM notes ORDER BY id").fetchall() == [
        (1, "first", 1.5, b"\x00\xff", -5), (6, "six", None, None, 6)]
    assert one(conn, "SELECT pdb_changeset()") is None

    # The queue survives reopening the file in a host that never loaded the extension.
    conn.close()
    plain = sqlite3.connect(str(path))
    assert plain.execute("SELECT id, hash FROM pdb_upload_queue ORDER BY id").fetchall() == [
        (1, blake3_hex(first)), (2, blake3_hex(expected))]
    plain.close()


def test_capture_from_a_connection_that_never_loaded_the_extension(connect, tmp_path):
    path = tmp_path / "shared.db"
    pdb = connect(path)
    pdb.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)")
    assert one(pdb, "SELECT pdb_track('items')") == "items"

    plain = connect(path, load=False)
    assert plain.execute(
        "SELECT count(*) FROM pragma_function_list WHERE name LIKE 'pdb\\_%' ESCAPE '\\'"
    ).fetchone() == (0,)
    with pytest.raises(sqlite3.OperationalError, match="no such function: pdb_version"):
        plain.execute("SELECT pdb_version()")

    # Committed writes of the plain connection are captured.
    plain.execute("BEGIN")
    plain.execute("INSERT INTO items VALUES (1, 'kept'), (2, 'also kept')")
    plain.execute("COMMIT")
    header = tbl("items", [1, 0])
    assert one(pdb, "SELECT pdb_changeset()") == header + ins(1, "kept") + ins(2, "also kept")

    # A rolled-back transaction of the plain connection leaves nothing behind...
    plain.execute("BEGIN")
    plain.execute("INSERT INTO items VALUES (3, 'rolled back')")
    plain.execute("UPDATE items SET name = 'changed' WHERE id = 1")
    plain.execute("DELETE FROM items WHERE id = 2")
    plain.execute("ROLLBACK")
    # ...and so does a rolled-back savepoint inside a committed transaction.
    plain.execute("BEGIN")
    plain.execute("UPDATE items SET name = 'renamed' WHERE id = 2")
    plain.execute("SAVEPOINT sp")
    plain.execute("INSERT INTO items VALUES (4, 'undone')")
    plain.execute("DELETE FROM items WHERE id = 1")
    plain.execute("ROLLBACK TO sp")
    plain.execute("RELEASE sp")
    plain.execute("COMMIT")

    expected = header + ins(1, "kept") + ins(2, "renamed")
    assert one(pdb, "SELECT pdb_changeset()") == expected
    assert one(pdb, "SELECT pdb_commit()") == 1
    assert one(pdb, "SELECT changeset FROM pdb_upload_queue") == expected

    # After the commit, a write by the plain connection is again a pending change.
    plain.execute("DELETE FROM items WHERE id = 1")
    assert rows(pdb, one(pdb, "SELECT pdb_changeset()")) == [
        ("items", "DELETE", 0, "[1]", '[1,"kept"]', None)]


# ---- panics -----------------------------------------------------------------------------

PANIC_CHILD = textwrap.dedent(r"""
    import json, sqlite3, sys
    target, lib = sys.argv[1], sys.argv[2]
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.enable_load_extension(True)
    conn.load_extension(lib)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT)")
    cs = bytes.fromhex("54020100740012000100000000000000090301" "78")  # INSERT t (9, 'x')
    if target == "pdb_commit":
        conn.execute("SELECT pdb_track('t')")
        conn.execute("INSERT INTO t VALUES (1, 'pending')")
    calls = {
        "pdb_version": ("SELECT pdb_version()", ()),
        "pdb_track": ("SELECT pdb_track('t')", ()),
        "pdb_commit": ("SELECT pdb_commit()", ()),
        "pdb_apply": ("SELECT pdb_apply(?)", (cs,)),
        "pdb_invert": ("SELECT pdb_invert(?)", (cs,)),
    }
    sql, params = calls[target]
    out = {}
    try:
        conn.execute(sql, params).fetchall()
        out["error"] = None
    except sqlite3.Error as e:
        out["error"] = [type(e).__name__, getattr(e, "sqlite_errorname", None), str(e)]
    out["tables_after_panic"] = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
    out["t_after_panic"] = conn.execute("SELECT * FROM t ORDER BY id").fetchall()
    out["in_transaction"] = conn.in_transaction
    if target == "pdb_commit":
        out["pending_after_panic"] = conn.execute("SELECT pdb_changeset()").fetchone()[0].hex()
        out["queue_after_panic"] = conn.execute(
            "SELECT count(*) FROM pdb_upload_queue").fetchone()[0]
    # The same connection keeps working.
    if target != "pdb_track":
        conn.execute("SELECT pdb_track('t')")
    conn.execute("INSERT INTO t VALUES (2, 'after')")
    if target != "pdb_commit":
        out["commit"] = conn.execute("SELECT pdb_commit('{}')").fetchone()[0]
    out["pending"] = (conn.execute("SELECT pdb_changeset()").fetchone()[0] or b"").hex()
    out["version"] = None if target == "pdb_version" else conn.execute(
        "SELECT pdb_version()").fetchone()[0]
    conn.execute("CREATE TABLE later(x)")
    conn.execute("INSERT INTO later VALUES (42)")
    out["later"] = conn.execute("SELECT x FROM later").fetchall()
    conn.close()
    print(json.dumps(out))
""")

PANIC_MESSAGE = (
    "[internal] libpdb: internal error (panic: PDB_TEST_PANIC asked {name} to panic); nothing was changed")


@pytest.mark.parametrize("target", ["pdb_version", "pdb_track", "pdb_commit", "pdb_apply",
                                    "pdb_invert"])
def test_panic_becomes_an_sqlite_error_and_connection_survives(lib_path, target):
    env = dict(os.environ, PDB_TEST_PANIC=target)
    proc = subprocess.run(["/usr/bin/python3", "-c", PANIC_CHILD, target, str(lib_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}): {proc.stderr}"
    out = json.loads(proc.stdout)
    # Reported as an ordinary error (SQLITE_ERROR, Python's sqlite3.OperationalError),
    # naming the panic.
    assert out["error"] == ["OperationalError", "SQLITE_ERROR",
                            PANIC_MESSAGE.format(name=target)]
    assert out["in_transaction"] is False
    assert out["t_after_panic"] == ([[1, "pending"]] if target == "pdb_commit" else [])
    head, row1, row2 = tbl("t", [1, 0]).hex(), ins(1, "pending").hex(), ins(2, "after").hex()
    if target == "pdb_commit":
        # Nothing was lost: the pending change is still pending, the queue is empty.
        assert out["pending_after_panic"] == head + row1
        assert out["queue_after_panic"] == 0
        assert out["pending"] == head + row1 + row2
    else:
        if target == "pdb_track":
            # The panic happened before anything was created, and pdb_track keeps
            # panicking, so nothing is tracked and there is nothing to commit.
            assert out["tables_after_panic"] == ["t"]
            assert out["commit"] is None
        else:
            assert out["commit"] == 1
        assert out["pending"] == ""
    if target != "pdb_version":
        assert out["version"] == "0.1.0"
    assert out["later"] == [[42]]


# ---- bad input --------------------------------------------------------------------------

GOOD = tbl("t", [1, 0, 0]) + ins(3, "three", 30)


def _hostile_cases():
    """(id, blob, message of the format error without the function prefix)."""
    t = tbl("t", [1, 0, 0])
    ins_prefix = t + b"\x12\x00" + enc(1)
    cases = [
        ("empty-header", b"T", "malformed changeset at byte 1: truncated varint (column count)"),
        ("garbage", b"\xde\xad\xbe\xef", "malformed changeset at byte 0: unexpected byte 0xde"),
        ("nul-byte", b"\x00", "malformed changeset at byte 0: unexpected byte 0x00"),
        ("truncated-last-value", GOOD[:-1],
         f"malformed changeset at byte {len(GOOD) - 9}: truncated value"),
        ("truncated-in-record", GOOD[:len(t) + 2 + 9 + 3],
         f"malformed changeset at byte {len(t) + 2 + 9}: value of 5 bytes but 1 left"),
        ("truncated-after-op", t + b"\x12",
         f"malformed changeset at byte {len(t) + 1}: truncated: expected indirect flag"),
        ("truncated-pk-flags", b"T\x03\x01",
         "malformed changeset at byte 2: truncated: expected primary key flags"),
        ("name-not-terminated", b"T\x03\x01\x00\x00tab",
         "malformed changeset at byte 5: truncated: table name is not NUL-terminated"),
        ("varint-length-2^63", ins_prefix + b"\x03" + varint(2**63) + b"abc" + enc(5),
         f"malformed changeset at byte {len(ins_prefix)}: "
         "value of 9223372036854775808 bytes but 12 left"),
        ("varint-length-2^64-1", ins_prefix + b"\x04" + varint(2**64 - 1),
         f"malformed changeset at byte {len(ins_prefix)}: "
         "value of 18446744073709551615 bytes but 0 left"),
        ("100000-columns", b"T" + varint(100000) + b"\x01" * 100000 + b"t\x00",
         "malformed changeset at byte 1: table header has 100000 columns"),
        ("2^63-columns", b"T" + varint(2**63) + b"\x01t\x00",
         "malformed changeset at byte 1: table header has 9223372036854775808 columns"),
        ("zero-columns", b"T\x00t\x00" + b"\x12\x00",
         "malformed changeset at byte 1: table header has 0 columns"),
        ("no-pk-column", tbl("t", [0, 0, 0]) + ins(3, "x", 1),
         "malformed changeset at byte 2: table header has no primary key column"),
        ("empty-name", b"T\x01\x01\x00", "malformed changeset at byte 3: empty table name"),
        ("name-not-utf8", b"T\x01\x01\xff\xfe\x00",
         "malformed changeset at byte 3: table name is not UTF-8"),
        ("change-before-header", ins(1, "a", 2),
         "malformed changeset at byte 0: change before any table header"),
        ("unknown-value-type", ins_prefix + b"\x07" + enc(1),
         f"malformed changeset at byte {len(ins_prefix)}: unknown value type 0x07"),
        ("indirect-flag-2", t + b"\x12\x02" + enc(3) + enc("x") + enc(1),
         f"malformed changeset at byte {len(t) + 1}: indirect flag is 2, not 0 or 1"),
        ("insert-undefined", t + ins(3, UNDEF, 1),
         f"malformed changeset at byte {len(t)}: INSERT with an undefined value"),
        ("delete-undefined", t + dele(3, "x", UNDEF),
         f"malformed changeset at byte {len(t)}: DELETE with an undefined value"),
        ("update-without-pk", t + upd([UNDEF, "a", UNDEF], [UNDEF, "b", UNDEF]),
         f"malformed changeset at byte {len(t)}: UPDATE without its primary key"),
        ("update-changes-pk", t + upd([1, "a", UNDEF], [2, "b", UNDEF]),
         f"malformed changeset at byte {len(t)}: UPDATE that changes a primary key column"),
        ("patchset", b"P\x03\x01\x00\x00t\x00",
         "malformed changeset at byte 0: patchsets are not supported, only changesets"),
    ]
    # First table fine, LAST change malformed: nothing at all may be applied.
    good_then_bad = (tbl("u", [1, 0]) + ins(2, "u2") + t + ins(3, "three", 30)
                     + ins(4, "four", 40)[:-3])
    cases.append(("good-then-truncated", good_then_bad,
                  f"malformed changeset at byte {len(good_then_bad) - 6}: truncated value"))
    bad_op = tbl("u", [1, 0]) + ins(2, "u2") + t + ins(3, "three", 30)
    cases.append(("good-then-bad-op", bad_op + b"\x42\x00",
                  f"malformed changeset at byte {len(bad_op)}: unexpected byte 0x42"))
    return cases


HOSTILE = _hostile_cases()


@pytest.fixture
def target_db(connect, tmp_path):
    """A database a user cares about: tracked t with committed rows and one uncommitted
    local edit, an untracked u, and a view."""
    path = tmp_path / "target.db"
    conn = connect(path)
    conn.executescript("""
        CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER);
        INSERT INTO t VALUES (1, 'one', 10), (2, 'two', 20);
        CREATE TABLE u(id INTEGER PRIMARY KEY, v TEXT);
        INSERT INTO u VALUES (1, 'u1');
        CREATE VIEW v AS SELECT id, a, b FROM t;
    """)
    conn.execute("SELECT pdb_track('t')")
    conn.execute("SELECT pdb_commit()")
    conn.execute("UPDATE t SET a = 'local edit' WHERE id = 2")
    return conn, path


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_malformed_changesets_are_rejected_and_change_nothing(target_db, case):
    conn, path = target_db
    _, blob, message = case
    before = snapshot(conn, path)
    pending = one(conn, "SELECT pdb_changeset()")
    calls = [
        ("[bad_changeset] pdb_apply: ", "SELECT pdb_apply(?)", (blob,)),
        ("[bad_changeset] pdb_apply: ", "SELECT pdb_apply(?, 'replace')", (blob,)),
        ("[bad_changeset] pdb_apply: ", "SELECT pdb_apply(?, 'skip')", (blob,)),
        ("[bad_changeset] pdb_changeset_rows: ", "SELECT * FROM pdb_changeset_rows(?)", (blob,)),
        ("[bad_changeset] pdb_invert: ", "SELECT pdb_invert(?)", (blob,)),
        ("[bad_changeset] pdb_concat: first changeset: ", "SELECT pdb_concat(?, ?)", (blob, GOOD)),
        ("[bad_changeset] pdb_concat: second changeset: ", "SELECT pdb_concat(?, ?)", (GOOD, blob)),
    ]
    for prefix, sql, params in calls:
        with pytest.raises(sqlite3.DatabaseError) as info:
            conn.execute(sql, params).fetchall()
        assert str(info.value) == prefix + message, sql
        assert not conn.in_transaction
        assert snapshot(conn, path) == before, sql
    assert one(conn, "SELECT pdb_changeset()") == pending
    assert one(conn, "SELECT count(*) FROM pdb_apply_guard") == 0


def _schema_cases():
    """(id, blob, message, number of changes): well-formed changesets that do not fit the
    target database. pdb_apply refuses them; the functions that know no schema decode them."""
    t_ok = tbl("u", [1, 0]) + ins(2, "u2")  # a first table that would apply fine
    return [
        ("more-columns-than-table", tbl("t", [1, 0, 0, 0]) + ins(3, "x", 1, 2),
         'table "t" does not match the changeset: the changeset has 4 columns with key flags '
         '[1 0 0 0], the table has 3 columns with key flags [1 0 0]', 1),
        ("other-primary-key", tbl("t", [0, 1, 0]) + ins(3, "x", 1),
         'table "t" does not match the changeset: the changeset has 3 columns with key flags '
         '[0 1 0], the table has 3 columns with key flags [1 0 0]', 1),
        ("unknown-table", tbl("nosuch", [1]) + ins(1),
         'changeset names table "nosuch": no such table: "nosuch"', 1),
        ("view", tbl("v", [1, 0, 0]) + ins(3, "x", 1),
         'changeset names table "v": "v" is a view; only tables can be tracked', 1),
        ("internal-queue-table", tbl("pdb_upload_queue", [1, 0, 0, 0, 0, 0, 0, 0, 0])
         + dele(1, b"", "", "", 0, None, "", None, 0),
         'changeset names table "pdb_upload_queue": "pdb_upload_queue" is an internal table '
         'and cannot be tracked', 1),
        ("internal-local-table", tbl("pdb_local", [1, 0])
         + upd(["client_id", UNDEF], [UNDEF, "attacker"]),
         'changeset names table "pdb_local": "pdb_local" is an internal table and cannot be '
         'tracked', 1),
        ("good-then-unknown-table", t_ok + tbl("nosuch", [1]) + ins(1),
         'changeset names table "nosuch": no such table: "nosuch"', 2),
        ("good-then-column-mismatch", tbl("t", [1, 0, 0]) + ins(3, "x", 1) + ins(4, "y", 2)
         + tbl("u", [1, 0, 0]) + ins(4, "x", 1),
         'table "u" does not match the changeset: the changeset has 3 columns with key flags '
         '[1 0 0], the table has 2 columns with key flags [1 0]', 3),
    ]


SCHEMA_CASES = _schema_cases()


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES])
def test_changesets_that_do_not_fit_the_database_are_refused(target_db, case):
    conn, path = target_db
    _, blob, message, n_changes = case
    before = snapshot(conn, path)
    pending = one(conn, "SELECT pdb_changeset()")
    for policy in ("abort", "replace", "skip"):
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("SELECT pdb_apply(?, ?)", (blob, policy))
        assert str(info.value) == "[schema_mismatch] pdb_apply: " + message
        assert not conn.in_transaction
        assert snapshot(conn, path) == before
    assert one(conn, "SELECT pdb_changeset()") == pending
    # Structurally fine, so the schema-free functions accept it.
    assert len(rows(conn, blob)) == n_changes
    assert one(conn, "SELECT pdb_invert(pdb_invert(?))", blob) == blob


@pytest.mark.parametrize("blob,flags", [
    (tbl("t", [1, 0]) + ins(3, "x") + tbl("t", [1, 0, 0, 0]) + ins(4, "x", 1, 2), "1 0 0 0"),
    (tbl("u", [1, 0]) + ins(2, "u2") + tbl("t", [1, 0, 0]) + ins(3, "x", 1)
     + tbl("t", [1, 0, 0, 0, 0]) + ins(4, "x", 1, 2, 3), "1 0 0 0 0"),
], ids=["same-table-wider-second-header", "good-table-then-wider-repeat"])
def test_same_table_repeated_with_more_columns_is_refused_cleanly(target_db, blob, flags):
    conn, path = target_db
    before = snapshot(conn, path)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute("SELECT pdb_apply(?)", (blob,))
        n = len(flags.split())
        assert str(info.value) == (
            f'[schema_mismatch] pdb_apply: table "t" does not match the changeset: the changeset has {n} columns '
            f'with key flags [{flags}], the table has 3 columns with key flags [1 0 0]')
    finally:
        state = {
            "in_transaction": conn.in_transaction,
            "guard": one(conn, "SELECT count(*) FROM pdb_apply_guard"),
            "defer_foreign_keys": one(conn, "PRAGMA defer_foreign_keys"),
        }
        if conn.in_transaction:  # leave the file usable for the snapshot and teardown
            conn.execute("ROLLBACK")
    assert state == {"in_transaction": False, "guard": 0, "defer_foreign_keys": 0}
    assert snapshot(conn, path) == before


def test_good_first_table_then_conflicting_last_change_applies_nothing(target_db):
    conn, path = target_db
    blob = (tbl("t", [1, 0, 0]) + ins(3, "three", 30) + upd([1, "one", UNDEF], [UNDEF, "uno", UNDEF])
            + tbl("u", [1, 0]) + ins(2, "u2") + ins(1, "duplicate"))
    before = snapshot(conn, path)
    pending = one(conn, "SELECT pdb_changeset()")
    with pytest.raises(sqlite3.IntegrityError) as info:
        conn.execute("SELECT pdb_apply(?)", (blob,))
    assert str(info.value) == (
        '[apply_conflict] pdb_apply: CONFLICT conflict on table "u", primary key [1]: a row with this primary '
        'key already exists (INSERT of the changeset); nothing was applied')
    assert snapshot(conn, path) == before
    assert one(conn, "SELECT pdb_changeset()") == pending

    # Inside the application's own transaction: its earlier writes survive, nothing of
    # the changeset is applied, and the transaction can still commit.
    conn.execute("BEGIN")
    conn.execute("INSERT INTO u VALUES (9, 'mine')")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("SELECT pdb_apply(?)", (blob,))
    assert conn.in_transaction
    conn.execute("INSERT INTO u VALUES (10, 'mine too')")
    conn.execute("COMMIT")
    assert conn.execute("SELECT * FROM u ORDER BY id").fetchall() == [
        (1, "u1"), (9, "mine"), (10, "mine too")]
    assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == [
        (1, "one", 10), (2, "local edit", 20)]


@pytest.mark.parametrize("sql", ["SELECT pdb_invert(?)", "SELECT pdb_apply(?)",
                                 "SELECT pdb_concat(?, NULL)"])
def test_malformed_argument_does_not_poison_the_callers_transaction(target_db, sql):
    conn, _ = target_db
    conn.execute("BEGIN")
    conn.execute("INSERT INTO u VALUES (9, 'mine')")
    with pytest.raises(sqlite3.DatabaseError, match="malformed changeset at byte 0"):
        conn.execute(sql, (b"\xde\xad",))
    conn.execute("INSERT INTO u VALUES (10, 'mine too')")
    conn.execute("COMMIT")
    assert conn.execute("SELECT * FROM u ORDER BY id").fetchall() == [
        (1, "u1"), (9, "mine"), (10, "mine too")]


@pytest.mark.parametrize("sql,blob", [
    ("SELECT calls(), pdb_apply(?)", tbl("nosuch", [1]) + ins(1)),
    ("SELECT calls(), pdb_concat(?, x'5401026100')", b"T\x01\x01a\x00"),
], ids=["pdb_apply-unknown-table", "pdb_concat-pk-mismatch"])
def test_a_refused_changeset_runs_the_statement_once(target_db, sql, blob):
    conn, _ = target_db
    count = [0]

    def calls():
        count[0] += 1
        return count[0]

    conn.create_function("calls", 0, calls)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute(sql, (blob,)).fetchall()
    assert count[0] == 1


def test_arguments_of_the_wrong_type_are_rejected(target_db):
    conn, _ = target_db
    cases = [
        ("SELECT pdb_apply('text')", "[argument] pdb_apply: argument 1 must be a changeset BLOB"),
        ("SELECT pdb_apply(x'', 'merge')",
         "[argument] pdb_apply: on_conflict must be 'abort', 'replace' or 'skip', not 'merge'"),
        ("SELECT pdb_invert(42)", "[argument] pdb_invert: argument 1 must be a changeset BLOB"),
        ("SELECT pdb_concat(x'', 1.5)", "[argument] pdb_concat: argument 2 must be a changeset BLOB"),
        ("SELECT pdb_track(7)", "[argument] pdb_track: argument 1 (table name) must be TEXT"),
        ("SELECT pdb_commit('{not json')",
         "[argument] pdb_commit: meta is not valid JSON: key must be a string at line 1 column 2"),
        ("SELECT * FROM pdb_changeset_rows('text')",
         "[argument] pdb_changeset_rows: argument must be a changeset BLOB"),
        ("SELECT * FROM pdb_changeset_rows",
         "[argument] pdb_changeset_rows: needs a changeset argument: select * from pdb_changeset_rows(?)"),
    ]
    for sql, message in cases:
        with pytest.raises(sqlite3.Error) as info:
            conn.execute(sql).fetchall()
        assert str(info.value) == message, sql
    # NULL means "no changes" everywhere.
    assert json.loads(one(conn, "SELECT pdb_apply(NULL)")) == {
        "applied": 0, "replaced": 0, "skipped": 0}
    assert one(conn, "SELECT pdb_invert(NULL)") is None
    assert rows(conn, None) == []


# ---- pdb_track refusals -----------------------------------------------------------------

@pytest.mark.parametrize("name,ddl,message", [
    ("nosuch", "", '[table] pdb_track: no such table: "nosuch"'),
    ("v", "CREATE TABLE base(id INTEGER PRIMARY KEY); CREATE VIEW v AS SELECT * FROM base",
     '[table] pdb_track: "v" is a view; only tables can be tracked'),
    ("nopk", "CREATE TABLE nopk(a TEXT, b INTEGER)",
     '[table] pdb_track: table "nopk" has no PRIMARY KEY; declare one (INTEGER PRIMARY KEY, a '
     'composite key, or WITHOUT ROWID)'),
    ("tp", "CREATE TABLE tp(k TEXT PRIMARY KEY, v)",
     '[table] pdb_track: table "tp": primary key column "k" allows NULL; declare it NOT NULL (or use '
     'INTEGER PRIMARY KEY or WITHOUT ROWID)'),
    ("pdb_local", "CREATE TABLE x(id INTEGER PRIMARY KEY); SELECT pdb_track('x')",
     '[table] pdb_track: "pdb_local" is an internal table and cannot be tracked'),
], ids=["missing", "view", "no-primary-key", "nullable-text-pk", "internal"])
def test_track_refuses_what_it_cannot_capture(connect, tmp_path, name, ddl, message):
    path = tmp_path / "track.db"
    conn = connect(path)
    if ddl:
        for stmt in ddl.split("; "):
            conn.execute(stmt).fetchall()
    before = snapshot(conn, path)
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELECT pdb_track(?)", (name,))
    assert str(info.value) == message
    assert snapshot(conn, path) == before  # no pdb_* tables or triggers left behind


def test_track_accepts_the_keys_it_supports(connect):
    conn = connect()
    conn.executescript("""
        CREATE TABLE a(k TEXT PRIMARY KEY NOT NULL, v);
        CREATE TABLE b(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
        CREATE TABLE c(x INTEGER NOT NULL, y TEXT NOT NULL, v, PRIMARY KEY(y, x));
    """)
    for t in "abc":
        assert one(conn, "SELECT pdb_track(?)", t.upper()) == t  # name as stored
    conn.execute("INSERT INTO c VALUES (1, 'one', 'v')")
    assert one(conn, "SELECT pdb_changeset()") == tbl("c", [2, 1, 0]) + ins(1, "one", "v")
    assert rows(conn, one(conn, "SELECT pdb_changeset()")) == [
        ("c", "INSERT", 0, '["one",1]', None, '[1,"one","v"]')]


# ---- conflicts --------------------------------------------------------------------------

CONFLICTS = (tbl("t", [1, 0, 0])
             + ins(1, "remote one", 11)                            # CONFLICT: row 1 exists
             + upd([2, "two", UNDEF], [UNDEF, "remote two", UNDEF])  # DATA: row 2 is 'local'
             + dele(3, "three", 30)                                # NOTFOUND: no row 3
             + ins(4, "four", 40)                                  # clean
             + upd([5, "five", 50], [UNDEF, "FIVE", 55]))          # clean


@pytest.fixture
def conflict_db(connect, tmp_path):
    path = tmp_path / "conflicts.db"
    conn = connect(path)
    conn.executescript("""
        CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER);
        INSERT INTO t VALUES (1, 'one', 10), (2, 'local two', 20), (5, 'five', 50);
    """)
    return conn, path


def test_apply_abort_applies_nothing_and_names_table_and_key(conflict_db):
    conn, path = conflict_db
    before = snapshot(conn, path)
    for sql in ("SELECT pdb_apply(?)", "SELECT pdb_apply(?, 'abort')",
                "SELECT pdb_apply(?, NULL)", "SELECT pdb_apply(?, 'ABORT')"):
        with pytest.raises(sqlite3.IntegrityError) as info:
            conn.execute(sql, (CONFLICTS,))
        assert str(info.value) == (
            '[apply_conflict] pdb_apply: CONFLICT conflict on table "t", primary key [1]: a row with this '
            'primary key already exists (INSERT of the changeset); nothing was applied')
        assert snapshot(conn, path) == before
    # The other kinds of conflict, each alone.
    for blob, message in [
        (tbl("t", [1, 0, 0]) + upd([2, "two", UNDEF], [UNDEF, "x", UNDEF]),
         'DATA conflict on table "t", primary key [2]: the row\'s current values differ from '
         'the changeset\'s old values (UPDATE of the changeset)'),
        (tbl("t", [1, 0, 0]) + dele(3, "three", 30),
         'NOTFOUND conflict on table "t", primary key [3]: the row does not exist (DELETE of '
         'the changeset)'),
        (tbl("t", [1, 0, 0]) + dele(5, "five", 51),
         'DATA conflict on table "t", primary key [5]: the row\'s current values differ from '
         'the changeset\'s old values (DELETE of the changeset)'),
    ]:
        with pytest.raises(sqlite3.IntegrityError) as info:
            conn.execute("SELECT pdb_apply(?)", (blob,))
        assert str(info.value) == f"[apply_conflict] pdb_apply: {message}; nothing was applied"
        assert snapshot(conn, path) == before


def test_apply_replace_forces_data_and_conflict_and_skips_notfound(conflict_db):
    conn, _ = conflict_db
    assert json.loads(one(conn, "SELECT pdb_apply(?, 'replace')", CONFLICTS)) == {
        "applied": 2, "replaced": 2, "skipped": 1}
    assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == [
        (1, "remote one", 11), (2, "remote two", 20), (4, "four", 40), (5, "FIVE", 55)]


def test_apply_skip_omits_every_conflicting_change(conflict_db):
    conn, _ = conflict_db
    assert json.loads(one(conn, "SELECT pdb_apply(?, 'skip')", CONFLICTS)) == {
        "applied": 2, "replaced": 0, "skipped": 3}
    assert conn.execute("SELECT * FROM t ORDER BY id").fetchall() == [
        (1, "one", 10), (2, "local two", 20), (4, "four", 40), (5, "FIVE", 55)]
    # Applying the same changeset again: now every change conflicts or is a no-op.
    assert json.loads(one(conn, "SELECT pdb_apply(?, 'skip')", CONFLICTS)) == {
        "applied": 0, "replaced": 0, "skipped": 5}


# ---- applied changes are not captured -----------------------------------------------------

def test_applied_remote_changes_are_not_captured(connect, tmp_path):
    remote = connect(tmp_path / "remote.db")
    remote.executescript("""
        CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b INTEGER);
        INSERT INTO t VALUES (1, 'one', 10), (2, 'two', 20), (3, 'three', 30);
    """)
    remote.execute("SELECT pdb_track('t')")
    remote.execute("SELECT pdb_commit()")
    local_path = tmp_path / "local.db"
    remote.execute("VACUUM INTO ?", (str(local_path),))
    local = connect(local_path)
    assert one(local, "SELECT pdb_changeset()") is None

    remote.execute("UPDATE t SET b = 11 WHERE id = 1")
    remote.execute("DELETE FROM t WHERE id = 2")
    remote.execute("INSERT INTO t VALUES (4, 'four', 40)")
    remote.execute("UPDATE t SET b = 33 WHERE id = 3")
    remote.execute("SELECT pdb_commit()")
    cs = one(remote, "SELECT changeset FROM pdb_upload_queue WHERE id = 2")

    # Nothing pending locally: applying leaves nothing pending.
    assert json.loads(one(local, "SELECT pdb_apply(?)", cs)) == {
        "applied": 4, "replaced": 0, "skipped": 0}
    assert one(local, "SELECT pdb_changeset()") is None
    assert one(local, "SELECT pdb_commit()") is None
    assert one(local, "SELECT count(*) FROM pdb_upload_queue") == 1
    assert local.execute("SELECT * FROM t ORDER BY id").fetchall() == remote.execute(
        "SELECT * FROM t ORDER BY id").fetchall()

    # With local edits pending, an apply keeps exactly the local edits pending, even on a
    # row the remote change also touched (another column).
    local.execute("UPDATE t SET a = 'local one' WHERE id = 1")
    remote.execute("UPDATE t SET b = 12 WHERE id = 1")
    remote.execute("INSERT INTO t VALUES (5, 'five', 50)")
    remote.execute("SELECT pdb_commit()")
    cs2 = one(remote, "SELECT changeset FROM pdb_upload_queue WHERE id = 3")
    assert json.loads(one(local, "SELECT pdb_apply(?)", cs2)) == {
        "applied": 2, "replaced": 0, "skipped": 0}
    assert one(local, "SELECT pdb_changeset()") == tbl("t", [1, 0, 0]) + upd(
        [1, "one", UNDEF], [UNDEF, "local one", UNDEF])
    assert local.execute("SELECT * FROM t WHERE id IN (1, 5) ORDER BY id").fetchall() == [
        (1, "local one", 12), (5, "five", 50)]
    # The guard row never outlives the apply.
    assert one(local, "SELECT count(*) FROM pdb_apply_guard") == 0


# ---- mutated changesets: never a panic, never a half-applied change -----------------------

def test_mutated_changesets_give_clean_errors(target_db):
    """A bounded, seeded mutation run over valid changesets: whatever the bytes, every
    function either works or raises its own named error, and never leaves a transaction
    open (a panic would show as a libpdb internal error)."""
    import random

    conn, _ = target_db
    seeds = [
        tbl("t", [1, 0, 0]) + ins(3, "three", 30) + upd([1, "one", UNDEF], [UNDEF, "uno", UNDEF])
        + dele(2, "two", 20),
        tbl("u", [1, 0]) + ins(2, "u2") + dele(1, "u1") + tbl("t", [1, 0, 0]) + ins(5, "x", None),
    ]
    rnd = random.Random(20240601)
    for _ in range(400):
        blob = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 3)):
            kind = rnd.randrange(4)
            if kind == 0:
                blob[rnd.randrange(len(blob))] = rnd.randrange(256)
            elif kind == 1:
                blob.insert(rnd.randrange(len(blob) + 1), rnd.randrange(256))
            elif kind == 2 and len(blob) > 1:
                del blob[rnd.randrange(len(blob))]
            else:
                blob += rnd.choice(seeds)
        blob = bytes(blob)
        for prefix, sql, params in [
            ("pdb_apply: ", "SELECT pdb_apply(?, 'skip')", (blob,)),
            ("pdb_changeset_rows: ", "SELECT * FROM pdb_changeset_rows(?)", (blob,)),
            ("pdb_invert: ", "SELECT pdb_invert(?)", (blob,)),
            ("pdb_concat: ", "SELECT pdb_concat(?, ?)", (blob, seeds[0])),
        ]:
            try:
                conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                assert "panic" not in str(e), f"{sql} panicked on {blob.hex()}: {e}"
                # Whatever refused it, the code comes first, then the function.
                assert re.match(r"\[[a-z_]+\] " + re.escape(prefix), str(e)), (
                    sql, blob.hex(), str(e))
            assert not conn.in_transaction, (sql, blob.hex())
            assert one(conn, "SELECT count(*) FROM pdb_apply_guard") == 0
