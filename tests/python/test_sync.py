"""Sync from a Python host: the real target/release/libpdb.so loaded into Debian's
/usr/bin/python3 sqlite3 module, talking to a real `pdb-witness serve` process (the
session-wide `witness` fixture of conftest.py; each test makes its own group).

    cargo build --release -p personaldb && cargo build --release -p personaldb-witness
    /usr/bin/python3 -m pytest tests/python -q

Certificates are checked with an Ed25519 verifier written here from RFC 8032 and with
the BLAKE3 of test_extension.py, so neither check trusts the extension's own code.
"""

import base64
import hashlib
import json
import re
import sqlite3
import time
import uuid

import pytest

from test_extension import blake3_hex

DDL = "CREATE TABLE notes(id INTEGER PRIMARY KEY, a TEXT, b TEXT)"
HEX64 = re.compile(r"[0-9a-f]{64}")

# --------------------------------------------------------------------------------------
# A second source for Ed25519 verification, from RFC 8032 §5.1 / §6 (no shared code with
# the Rust crates; checked against the RFC's test vectors below).

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(P, Q):
    a = (P[1] - P[0]) * (Q[1] - Q[0]) % _P
    b = (P[1] + P[0]) * (Q[1] + Q[0]) % _P
    c = 2 * P[3] * Q[3] * _D % _P
    d = 2 * P[2] * Q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s, P):
    Q = (0, 1, 1, 0)
    while s:
        if s & 1:
            Q = _add(Q, P)
        P = _add(P, P)
        s >>= 1
    return Q


def _equal(P, Q):
    return ((P[0] * Q[2] - Q[0] * P[2]) % _P == 0
            and (P[1] * Q[2] - Q[1] * P[2]) % _P == 0)


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


def _decompress(s: bytes):
    y = int.from_bytes(s, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    A, R = _decompress(public), _decompress(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if A is None or R is None or s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _Q
    return _equal(_mul(s, _G), _add(R, _mul(h, A)))


def test_ed25519_second_source_matches_rfc8032_vectors():
    vectors = [  # RFC 8032 §7.1, TEST 1 and TEST 2
        ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
         "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
         "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
        ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
         "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e45"
         "8f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ]
    for pk, msg, sig in vectors:
        pk, msg, sig = bytes.fromhex(pk), bytes.fromhex(msg), bytes.fromhex(sig)
        assert ed25519_verify(pk, msg, sig)
        assert not ed25519_verify(pk, msg + b"x", sig)
        assert not ed25519_verify(pk, msg, sig[:-1] + bytes([sig[-1] ^ 1]))


# --------------------------------------------------------------------------------------
# Helpers


def one(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def js(conn, sql, *params):
    """A JSON-returning function call, parsed."""
    return json.loads(one(conn, sql, *params))


def notes(conn):
    return conn.execute("SELECT id, a, b FROM notes ORDER BY id").fetchall()


def commit(conn):
    return one(conn, "SELECT pdb_commit()")


def sync(conn):
    return js(conn, "SELECT pdb_sync()")


def conflicts(conn):
    return [
        {"id": i, "table": t, "pk": json.loads(pk), "base": json.loads(b) if b else None,
         "local": json.loads(l) if l else None, "remote": json.loads(r) if r else None,
         "strategy": s, "outcome": json.loads(o) if o else None, "status": st}
        for i, t, pk, b, l, r, s, o, st in conn.execute(
            "SELECT id, table_name, pk, base, local, remote, strategy, outcome, status "
            "FROM pdb_conflicts ORDER BY id")
    ]


def observable(conn):
    """What a failed sync must leave as it was: rows, queue, head, certificates,
    conflicts and the uncommitted changes."""
    return {
        "notes": notes(conn),
        "queue": conn.execute("SELECT id, changeset, hash, idempotency_key, base_seq, base_head "
                              "FROM pdb_upload_queue ORDER BY id").fetchall(),
        "head": one(conn, "SELECT pdb_head()"),
        "commits": conn.execute("SELECT * FROM pdb_commits ORDER BY seq").fetchall(),
        "conflicts": conn.execute("SELECT * FROM pdb_conflicts ORDER BY id").fetchall(),
        "uncommitted": one(conn, "SELECT pdb_changeset()"),
    }


def u64be(n):
    return n.to_bytes(8, "big")


def s16(x: str) -> bytes:
    return len(x.encode()).to_bytes(2, "big") + x.encode()


@pytest.fixture
def group(witness):
    """A fresh group of DDL on the session's witness."""
    name = "py-" + uuid.uuid4().hex[:12]
    witness.create_group(name, DDL)
    return name


@pytest.fixture
def device(connect, tmp_path, witness):
    """device(name, group, ...) -> a connection to tmp_path/NAME.db with libpdb loaded,
    DDL created, `notes` tracked and pdb_open'ed on the group with a write token."""

    def _device(name, group, ddl=DDL, tables=("notes",), token=None, key=None, url=None):
        conn = connect(tmp_path / f"{name}.db")
        conn.execute("PRAGMA journal_mode = wal")
        conn.executescript(ddl)
        for t in tables:
            assert one(conn, "SELECT pdb_track(?)", t) == t
        token = witness.token(name, group) if token is None else token
        assert one(conn, "SELECT pdb_open(?, ?, ?, ?)", url or witness.url, group, token,
                   key or witness.key) == group
        return conn

    return _device


# --------------------------------------------------------------------------------------
# a. Two devices converge, with a history that verifies


CERT_FIELDS = {"group", "seq", "prev", "head", "state", "changeset_hash", "idempotency_key",
               "committed_at", "witness_key", "signature"}


def test_two_devices_converge_with_verified_history(witness, group, device):
    started = int(time.time() * 1000)
    a, b = device("a", group), device("b", group)
    genesis = blake3_hex(b"pdb/v1 genesis" + s16(group))
    assert js(a, "SELECT pdb_head()") == {"seq": 0, "head": genesis}

    a.executescript("INSERT INTO notes VALUES (1, 'one', NULL), (2, 'two', 'x'), "
                    "(3, 'three', NULL);")
    assert commit(a) == 1
    # B writes before it ever synced: its commit is made on genesis.
    b.execute("INSERT INTO notes VALUES (10, 'ten', 'from b')")
    assert commit(b) == 1

    s = sync(a)
    assert (s["pushed"], s["pulled"], s["conflicts"], s["dead"]) == (1, 1, 0, 0), s
    assert s["head"]["seq"] == 1
    s = sync(b)  # B's commit lands on top of A's (a stale but clean base)
    assert (s["pushed"], s["pulled"], s["head"]["seq"]) == (1, 2, 2), s
    assert sync(a)["pulled"] == 1
    assert notes(a) == notes(b) == [(1, "one", None), (2, "two", "x"), (3, "three", None),
                                    (10, "ten", "from b")]
    # Pulled rows are the base, not local changes.
    assert one(a, "SELECT pdb_changeset()") is None
    assert one(b, "SELECT pdb_changeset()") is None

    # Updates and deletes on both, including both sides on one row (other columns).
    a.executescript("UPDATE notes SET a = 'ONE' WHERE id = 1; DELETE FROM notes WHERE id = 2; "
                    "UPDATE notes SET b = 'a was here' WHERE id = 3; "
                    "INSERT INTO notes VALUES (4, 'four', NULL);")
    assert commit(a) is not None
    b.executescript("DELETE FROM notes WHERE id = 10; UPDATE notes SET a = 'THREE' WHERE id = 3; "
                    "INSERT INTO notes VALUES (11, 'eleven', NULL);")
    assert commit(b) is not None
    b.execute("UPDATE notes SET b = 'second commit' WHERE id = 11")
    assert commit(b) is not None
    sync(a)
    s = sync(b)
    assert s["conflicts"] == 0, s
    sync(a)
    want = [(1, "ONE", None), (3, "THREE", "a was here"), (4, "four", None),
            (11, "eleven", "second commit")]
    assert notes(a) == want
    assert notes(b) == want

    head = js(a, "SELECT pdb_head()")
    assert js(b, "SELECT pdb_head()") == head
    status, info = witness.request("GET", f"/v1/groups/{group}")
    assert status == 200, info
    assert (info["seq"], info["head"]) == (head["seq"], head["head"])
    n = head["seq"]
    assert n == 5
    for d in (a, b):
        v = js(d, "SELECT pdb_verify()")
        assert (v["ok"], v["commits"], v["head"], v["state"]) == (True, n, head, "ok"), v
        st = js(d, "SELECT pdb_status()")
        assert (st["pending"], st["unsent"], st["online"], st["last_error"],
                st["conflicts_open"], st["head"]) == (0, 0, True, None, 0, head), st

    # The certificates (DESIGN §4), checked independently: field set, formats, the hash
    # chain from genesis, each changeset's hash against the changeset the witness serves,
    # and the signature with the witness key.
    status, page = witness.request("GET", f"/v1/groups/{group}/commits?after=0&limit=100")
    assert status == 200, page
    served = {c["seq"]: c for c in page["commits"]}
    assert sorted(served) == list(range(1, n + 1))
    prev = genesis
    key = bytes.fromhex(witness.key)
    for seq in range(1, n + 1):
        cert = js(a, "SELECT pdb_certificate(?)", seq)
        assert js(b, "SELECT pdb_certificate(?)", seq) == cert
        assert set(cert) == CERT_FIELDS, cert
        assert (cert["group"], cert["seq"], cert["witness_key"]) == (group, seq, witness.key)
        for f in ("prev", "head", "state", "changeset_hash"):
            assert HEX64.fullmatch(cert[f]), (f, cert)
        assert re.fullmatch(r"[0-9a-f]{32}", cert["idempotency_key"]), cert
        assert isinstance(cert["committed_at"], int)
        assert started <= cert["committed_at"] <= int(time.time() * 1000), cert
        assert cert["prev"] == prev
        changeset = base64.b64decode(served[seq]["changeset"], validate=True)
        assert changeset[:1] == b"T"
        assert cert["changeset_hash"] == blake3_hex(changeset)
        assert cert["head"] == blake3_hex(b"pdb/v1 head" + bytes.fromhex(prev) + u64be(seq)
                                          + bytes.fromhex(cert["changeset_hash"]))
        for f in CERT_FIELDS - {"group"}:
            assert served[seq][f] == cert[f], (f, served[seq], cert)
        signature = base64.b64decode(cert["signature"], validate=True)
        assert base64.b64encode(signature).decode() == cert["signature"]  # standard, padded
        message = (b"pdb/v1 cert" + s16(group) + u64be(seq) + bytes.fromhex(cert["head"])
                   + bytes.fromhex(cert["state"]))
        assert ed25519_verify(key, message, signature), seq
        assert not ed25519_verify(key, message + b"\0", signature)
        prev = cert["head"]
    assert prev == head["head"]
    assert one(a, "SELECT pdb_certificate(?)", n + 1) is None
    assert one(a, "SELECT pdb_certificate(0)") is None


def test_sync_inside_pythons_implicit_transaction_then_rollback_still_converges(
        group, device):
    """Python's sqlite3 opens a transaction before DML unless isolation_level is None, so
    an application can easily call pdb_sync() inside one and roll it back afterwards.
    The push cannot be taken back: whether pdb_sync refuses to run there or runs, the
    next sync must bring the device back to the group's history, with nothing certified
    twice."""
    a = device("a", group)
    a.execute("INSERT INTO notes VALUES (1, 'x', 'y')")
    commit(a)
    sync(a)
    b = device("b", group)
    b.isolation_level = ""  # Python's default: implicit BEGIN before INSERT/UPDATE/DELETE
    b.execute("INSERT INTO notes VALUES (2, 'in a transaction', NULL)")
    assert b.in_transaction
    assert commit(b) == 1
    try:
        ran = sync(b)
    except sqlite3.OperationalError as e:
        ran = None
        assert "transaction" in str(e), str(e)
    b.rollback()
    b.isolation_level = None
    sync(b)
    sync(a)
    assert notes(a) == notes(b)
    if ran is not None:  # it was certified: the group has it, and only once
        assert notes(a) == [(1, "x", "y"), (2, "in a transaction", None)]
        assert js(a, "SELECT pdb_head()")["seq"] == 2
    for d in (a, b):
        assert js(d, "SELECT pdb_verify()")["state"] == "ok"


# --------------------------------------------------------------------------------------
# b. The custom strategy with a Python function


def _setup_rows(a, b):
    """Rows 1-3 committed and synced on both devices."""
    a.execute("INSERT INTO notes VALUES (1, 'x', 'y'), (2, 'p', 'q'), (3, 'm', 'n')")
    commit(a)
    sync(a)
    sync(b)
    assert notes(b) == notes(a)


def _concurrent_edits(a, b):
    """A changes rows 1-3 and syncs; B changes them too (and adds row 4), committed but
    not synced. Row 5 is A's alone."""
    a.executescript("UPDATE notes SET a = 'R' WHERE id = 1; "
                    "UPDATE notes SET b = 'R2' WHERE id = 2; "
                    "UPDATE notes SET a = 'R3' WHERE id = 3; "
                    "INSERT INTO notes VALUES (5, 'remote only', NULL);")
    commit(a)
    sync(a)
    b.executescript("UPDATE notes SET a = 'L' WHERE id = 1; DELETE FROM notes WHERE id = 2; "
                    "UPDATE notes SET b = 'L3' WHERE id = 3; "
                    "INSERT INTO notes VALUES (4, 'local only', NULL);")
    commit(b)


def test_custom_strategy_calls_the_python_function(group, device):
    a, b = device("a", group), device("b", group)
    calls = []

    def merge_notes(base, local, remote):
        calls.append((base, local, remote))
        if local is None or remote is None:
            return None  # a delete on either side wins
        merged = json.loads(remote)
        merged["a"] = f"{merged['a']}+{json.loads(local)['a']}"
        merged["b"] = json.loads(local)["b"]
        return json.dumps(merged)

    b.create_function("merge_notes", 3, merge_notes)
    _setup_rows(a, b)
    assert one(b, "SELECT pdb_set_strategy('notes', 'custom', 'merge_notes')") == "notes"
    _concurrent_edits(a, b)
    s = sync(b)
    assert s["dead"] == 0, s

    # Called once per row both sides changed, with B, L and R as JSON text (None when
    # absent); never for rows only one side touched (4, 5).
    assert all(isinstance(x, (str, type(None))) for call in calls for x in call), calls
    got = sorted(([json.loads(x) if x is not None else None for x in call] for call in calls),
                 key=lambda call: call[0]["id"])
    assert got == [
        [{"id": 1, "a": "x", "b": "y"}, {"id": 1, "a": "L", "b": "y"},
         {"id": 1, "a": "R", "b": "y"}],
        [{"id": 2, "a": "p", "b": "q"}, None, {"id": 2, "a": "p", "b": "R2"}],
        [{"id": 3, "a": "m", "b": "n"}, {"id": 3, "a": "m", "b": "L3"},
         {"id": 3, "a": "R3", "b": "n"}],
    ], calls

    want = [(1, "R+L", "y"), (3, "R3+m", "L3"), (4, "local only", None),
            (5, "remote only", None)]
    assert notes(b) == want
    sync(a)
    assert notes(a) == want
    for d in (a, b):
        assert js(d, "SELECT pdb_verify()")["state"] == "ok"
        assert js(d, "SELECT pdb_status()")["pending"] == 0
    assert js(a, "SELECT pdb_head()") == js(b, "SELECT pdb_head()")

    # A local write that did not survive as written is recorded with the outcome: row 1
    # (a = 'L' became 'R+L'). Row 3's write (b = 'L3') and row 2's delete survived.
    recorded = conflicts(b)
    assert [(c["table"], c["pk"], c["strategy"], c["status"]) for c in recorded] == [
        ("notes", [1], "custom", "resolved")], recorded
    assert recorded[0]["base"] == {"id": 1, "a": "x", "b": "y"}
    assert recorded[0]["local"] == {"id": 1, "a": "L", "b": "y"}
    assert recorded[0]["remote"] == {"id": 1, "a": "R", "b": "y"}
    assert recorded[0]["outcome"] == {"id": 1, "a": "R+L", "b": "y"}
    assert conflicts(a) == []


def _failing_sync(a, b, merge_notes):
    """Sets up a conflict on B with `merge_notes` as its custom function; returns the
    error pdb_sync raised and asserts that it changed nothing."""
    b.create_function("merge_notes", 3, merge_notes)
    _setup_rows(a, b)
    one(b, "SELECT pdb_set_strategy('notes', 'custom', 'merge_notes')")
    _concurrent_edits(a, b)
    b.execute("INSERT INTO notes VALUES (6, 'uncommitted', NULL)")
    before = observable(b)
    with pytest.raises(sqlite3.OperationalError) as info:
        b.execute("SELECT pdb_sync()").fetchall()
    assert not b.in_transaction
    assert observable(b) == before
    assert len(before["queue"]) == 1
    return str(info.value)


def _raising(calls):
    def merge_notes(base, local, remote):
        calls.append((base, local, remote))
        raise ValueError("cannot merge")
    return merge_notes


def test_custom_function_that_raises_stops_sync_and_changes_nothing(group, device):
    a, b = device("a", group), device("b", group)
    calls = []
    message = _failing_sync(a, b, _raising(calls))
    assert message.startswith("[custom_strategy] pdb_sync: "), message
    assert "raised exception" in message, message  # Python's sqlite3 reports it so
    assert calls, "the function was called"
    st = js(b, "SELECT pdb_status()")
    assert (st["pending"], st["unsent"], st["online"]) == (1, 1, True), st
    assert "raised exception" in st["last_error"], st

    # Nothing was lost: with a working function the same sync goes through.
    b.create_function("merge_notes", 3, lambda base, local, remote: remote)
    sync(b)
    sync(a)
    synced = [(1, "R", "y"), (2, "p", "R2"), (3, "R3", "n"), (4, "local only", None),
              (5, "remote only", None)]
    assert notes(a) == synced
    assert notes(b) == synced + [(6, "uncommitted", None)]  # still pending, not lost
    assert b.execute("SELECT op, pk FROM pdb_changeset_rows(pdb_changeset())").fetchall() == [
        ("INSERT", "[6]")]


def test_custom_function_that_raises_is_named_in_the_error(group, device):
    a, b = device("a", group), device("b", group)
    message = _failing_sync(a, b, _raising([]))
    assert "merge_notes" in message and '"notes"' in message, message


@pytest.mark.parametrize("result,message", [
    ('{"id": 1, "a": "merged", "zzz": 1}',
     '[custom_strategy] pdb_sync: the result of merge_notes() for table "notes": table "notes" has no column '
     '"zzz"'),
    ("not json",
     '[custom_strategy] pdb_sync: the result of merge_notes() for table "notes" is not JSON: expected ident at '
     'line 1 column 2'),
    ('[1, "a", "b"]',
     '[custom_strategy] pdb_sync: the result of merge_notes() for table "notes" must be a JSON object of the '
     'row or null, not [1,"a","b"]'),
    ('{"id": 99, "a": "moved"}',
     '[custom_strategy] pdb_sync: the result of merge_notes() for table "notes": column "id" is part of the '
     'primary key and must stay 1'),
    (42, '[custom_strategy] pdb_sync: the result of merge_notes() for table "notes" must be JSON text or NULL'),
], ids=["unknown-column", "not-json", "not-an-object", "changes-the-key", "not-text"])
def test_custom_function_with_a_bad_result_is_refused(group, device, result, message):
    a, b = device("a", group), device("b", group)

    def merge_notes(base, local, remote):
        return result if json.loads(remote)["id"] == 1 else remote

    assert _failing_sync(a, b, merge_notes) == message


def test_custom_function_missing_on_the_connection_is_named(group, device):
    a, b = device("a", group), device("b", group)
    _setup_rows(a, b)
    one(b, "SELECT pdb_set_strategy('notes', 'custom', 'merge_notes')")
    _concurrent_edits(a, b)
    before = observable(b)
    with pytest.raises(sqlite3.OperationalError) as info:
        b.execute("SELECT pdb_sync()")
    assert str(info.value).startswith(
        '[custom_strategy] pdb_sync: table "notes" resolves conflicts with custom function merge_notes(), which '
        'this connection cannot call: no such function: merge_notes'), str(info.value)
    assert observable(b) == before


# --------------------------------------------------------------------------------------
# c. manual, pdb_conflicts and pdb_resolve


def test_manual_conflicts_wait_for_pdb_resolve(group, device):
    a, b = device("a", group), device("b", group)
    a.execute("INSERT INTO notes VALUES (1, 'x', 'y'), (2, 'p', 'q'), (3, 'm', 'n'), "
              "(4, 'keep', 'me')")
    commit(a)
    sync(a)
    sync(b)
    assert one(b, "SELECT pdb_set_strategy('notes', 'manual')") == "notes"
    a.executescript("UPDATE notes SET a = 'R1' WHERE id = 1; "
                    "UPDATE notes SET a = 'R2' WHERE id = 2; "
                    "UPDATE notes SET a = 'R3' WHERE id = 3; DELETE FROM notes WHERE id = 4;")
    commit(a)
    sync(a)
    b.executescript("UPDATE notes SET a = 'L1' WHERE id = 1; "
                    "UPDATE notes SET b = 'L2' WHERE id = 2; "
                    "UPDATE notes SET b = 'L3' WHERE id = 3; "
                    "UPDATE notes SET b = 'L4' WHERE id = 4;")
    commit(b)
    s = sync(b)
    assert s["conflicts"] == 4, s

    # The group's version is kept, the local one waits.
    assert notes(b) == notes(a) == [(1, "R1", "y"), (2, "R2", "q"), (3, "R3", "n")]
    assert js(b, "SELECT pdb_status()")["conflicts_open"] == 4
    open_ = conflicts(b)
    assert [c["pk"] for c in open_] == [[1], [2], [3], [4]]
    assert all((c["table"], c["status"], c["strategy"]) == ("notes", "open", "manual")
               for c in open_), open_
    assert open_[0]["base"] == {"id": 1, "a": "x", "b": "y"}
    assert open_[0]["local"] == {"id": 1, "a": "L1", "b": "y"}
    assert open_[0]["remote"] == {"id": 1, "a": "R1", "b": "y"}
    assert open_[3]["local"] == {"id": 4, "a": "keep", "b": "L4"}
    assert open_[3]["remote"] is None
    ids = [c["id"] for c in open_]

    # Refusals name what is wrong and change nothing.
    before = observable(b)
    for sql, params, needle in [
        ("SELECT pdb_resolve(?, ?)", (ids[1], '{"id": 3}'), "primary key"),
        ("SELECT pdb_resolve(?, ?)", (ids[1], '{"nope": 1}'), 'has no column "nope"'),
        ("SELECT pdb_resolve(?, ?)", (ids[1], "mine"),
         "argument 2 must be 'local', 'remote' or the row as a JSON object (or null)"),
        ("SELECT pdb_resolve(?, ?)", (999999, "local"), "there is no conflict with id 999999"),
        ("SELECT pdb_resolve(?, ?)", ("1", "local"), "argument 1 (conflict_id) must be an INTEGER"),
    ]:
        with pytest.raises(sqlite3.OperationalError) as info:
            b.execute(sql, params)
        assert str(info.value).startswith("[argument] pdb_resolve: "), str(info.value)
        assert needle in str(info.value), (params, str(info.value))
        assert observable(b) == before

    # Resolutions: the local row, a row of the application's own, the group's row, and
    # bringing back a row the group deleted.
    assert js(b, "SELECT pdb_resolve(?, 'local')", ids[0]) == {"id": 1, "a": "L1", "b": "y"}
    assert js(b, "SELECT pdb_resolve(?, ?)", ids[1], '{"a": "both", "b": "L2"}') == {
        "id": 2, "a": "both", "b": "L2"}
    assert js(b, "SELECT pdb_resolve(?, 'remote')", ids[2]) == {"id": 3, "a": "R3", "b": "n"}
    assert js(b, "SELECT pdb_resolve(?, 'local')", ids[3]) == {"id": 4, "a": "keep", "b": "L4"}
    assert js(b, "SELECT pdb_status()")["conflicts_open"] == 0
    assert [c["status"] for c in conflicts(b)] == ["resolved"] * 4
    assert conflicts(b)[1]["outcome"] == {"id": 2, "a": "both", "b": "L2"}

    # A resolution is an ordinary local write: committed, pushed, pulled.
    assert notes(b) == [(1, "L1", "y"), (2, "both", "L2"), (3, "R3", "n"), (4, "keep", "L4")]
    assert commit(b) is not None
    sync(b)
    sync(a)
    assert notes(a) == notes(b)
    for d in (a, b):
        assert js(d, "SELECT pdb_verify()")["state"] == "ok"


# --------------------------------------------------------------------------------------
# d. Bad arguments: clear errors, nothing stored


@pytest.mark.parametrize("args,message", [
    (("ftp://example.com", "g", "t", "KEY"),
     '[argument] pdb_open: argument 1 (url) must be http:// or https:// and a host, not "ftp://example.com"'),
    (("example.com:7070", "g", "t", "KEY"),
     '[argument] pdb_open: argument 1 (url) must be http:// or https:// and a host, not "example.com:7070"'),
    (("http://", "g", "t", "KEY"),
     '[argument] pdb_open: argument 1 (url) must be http:// or https:// and a host, not "http://"'),
    ((None, "g", "t", "KEY"), "[argument] pdb_open: argument 1 (url) must be TEXT"),
    (("URL", "", "t", "KEY"), "[argument] pdb_open: argument 2 (group) must not be empty"),
    (("URL", "g", "t", "abc"),
     "[argument] pdb_open: argument 4 (witness_key) must be the witness's Ed25519 public key: 64 hex digits"),
    (("URL", "g", "t", "KEY[:-2]"),
     "[argument] pdb_open: argument 4 (witness_key) must be the witness's Ed25519 public key: 64 hex digits"),
    (("URL", "g", "t", "g" * 64),
     "[argument] pdb_open: argument 4 (witness_key) must be the witness's Ed25519 public key: 64 hex digits"),
    (("URL", "g", "t", "KEY+00"),
     "[argument] pdb_open: argument 4 (witness_key) must be the witness's Ed25519 public key: 64 hex digits"),
    (("URL", "g", "t", b"\x01" * 32), "[argument] pdb_open: argument 4 (witness_key) must be TEXT"),
], ids=["ftp-url", "no-scheme", "no-host", "null-url", "empty-group", "short-key", "62-hex-digits",
        "not-hex", "66-hex-digits", "blob-key"])
def test_pdb_open_refuses_bad_arguments(connect, tmp_path, args, message):
    conn = connect(tmp_path / "d.db")
    conn.execute(DDL)
    conn.execute("SELECT pdb_track('notes')")
    url, key = "http://127.0.0.1:9", "0123456789abcdef" * 4  # well-formed; nothing is contacted
    # The good form is accepted (on another database, so this one stays unopened).
    other = connect(tmp_path / "other.db")
    assert one(other, "SELECT pdb_open(?, 'g', 't', ?)", url, key) == "g"

    def fill(x):
        return {"URL": url, "KEY": key, "KEY[:-2]": key[:-2], "KEY+00": key + "00"}.get(x, x) \
            if isinstance(x, str) else x

    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELECT pdb_open(?, ?, ?, ?)", tuple(map(fill, args)))
    assert str(info.value) == message
    st = js(conn, "SELECT pdb_status()")
    assert st["open"] is False, st
    assert conn.execute("SELECT key FROM pdb_local WHERE key IN "
                        "('url', 'group', 'token', 'witness_key')").fetchall() == []
    with pytest.raises(sqlite3.OperationalError,
                       match=r"^\[not_open\] pdb_sync: this database has no "
                       r"witness yet: call pdb_open\(url, group, token, witness_key\) first$"):
        conn.execute("SELECT pdb_sync()")


@pytest.mark.parametrize("args,message", [
    (("plain", "manual"),
     "[table] pdb_set_strategy: table \"plain\" is not tracked: pdb_track('plain') first"),
    (("nosuch", "manual"),
     "[table] pdb_set_strategy: table \"nosuch\" is not tracked: pdb_track('nosuch') first"),
    (("notes", "last-writer-wins"),
     "[argument] pdb_set_strategy: argument 2 (strategy) must be 'remote-wins', 'local-wins', "
     "'column-merge', 'custom' or 'manual', not 'last-writer-wins'"),
    (("notes", ""),
     "[argument] pdb_set_strategy: argument 2 (strategy) must be 'remote-wins', 'local-wins', "
     "'column-merge', 'custom' or 'manual', not ''"),
    (("notes", "custom"),
     "[argument] pdb_set_strategy: strategy 'custom' needs argument 3: the name of an SQL function "
     "f(base, local, remote)"),
    (("notes", "custom", None),
     "[argument] pdb_set_strategy: strategy 'custom' needs argument 3: the name of an SQL function "
     "f(base, local, remote)"),
    (("notes", "custom", ""),
     "[argument] pdb_set_strategy: strategy 'custom' needs argument 3: the name of an SQL function "
     "f(base, local, remote)"),
    (("notes", "manual", "merge_notes"),
     "[argument] pdb_set_strategy: argument 3 (sql_function) is only for strategy 'custom', not 'manual'"),
    ((None, "manual"), "[argument] pdb_set_strategy: argument 1 (table) must be TEXT"),
    (("notes", None), "[argument] pdb_set_strategy: argument 2 (strategy) must be TEXT"),
], ids=["untracked-table", "missing-table", "unknown-strategy", "empty-strategy",
        "custom-without-function", "custom-null-function", "custom-empty-function",
        "function-for-manual", "null-table", "null-strategy"])
def test_pdb_set_strategy_refuses_bad_arguments(connect, tmp_path, args, message):
    conn = connect(tmp_path / "d.db")
    conn.executescript(DDL + "; CREATE TABLE plain(id INTEGER PRIMARY KEY, v);")
    conn.execute("SELECT pdb_track('notes')")
    sql = f"SELECT pdb_set_strategy({', '.join('?' * len(args))})"
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute(sql, args)
    assert str(info.value) == message
    assert conn.execute("SELECT * FROM pdb_strategies").fetchall() == []
    # The good forms work, case-insensitively on the table as pdb_track does.
    assert one(conn, "SELECT pdb_set_strategy('NOTES', 'custom', 'merge_notes')") == "notes"
    assert one(conn, "SELECT pdb_set_strategy('notes', 'remote-wins')") == "notes"
    assert conn.execute("SELECT * FROM pdb_strategies").fetchall() == [
        ("notes", "remote-wins", None)]


def test_sync_functions_before_pdb_open_say_what_to_do(connect, tmp_path):
    conn = connect(tmp_path / "d.db")
    conn.execute(DDL)
    conn.execute("SELECT pdb_track('notes')")
    for fn in ("pdb_sync()", "pdb_push()", "pdb_pull()", "pdb_head()", "pdb_verify()",
               "pdb_certificate(1)"):
        with pytest.raises(sqlite3.OperationalError) as info:
            conn.execute(f"SELECT {fn}")
        assert str(info.value) == (
            f"[not_open] {fn.split('(')[0]}: this database has no witness yet: call pdb_open(url, group, "
            "token, witness_key) first")
    assert js(conn, "SELECT pdb_status()")["open"] is False
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELECT pdb_resolve(1, 'local')")
    assert str(info.value) == "[argument] pdb_resolve: argument 1: there is no conflict with id 1"


def test_pdb_resolve_on_a_fresh_database_says_there_is_no_such_conflict(connect):
    conn = connect()
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("SELECT pdb_resolve(1, 'local')")
    assert str(info.value) == "[argument] pdb_resolve: argument 1: there is no conflict with id 1"


# --------------------------------------------------------------------------------------
# Bootstrap: a Python host with an empty database starts from the witness's snapshot


def test_an_empty_database_starts_from_the_snapshot(witness, group, device, connect, tmp_path):
    a = device("a", group)
    a.executescript("INSERT INTO notes VALUES (1, 'one', NULL), (2, 'two', 'x');")
    assert commit(a) == 1
    sync(a)
    status, snap = witness.request("POST", f"/v1/groups/{group}/snapshots")
    assert status == 201, snap
    assert snap["seq"] == 1 and snap["object"] == "/v1/objects/" + snap["blake3"]
    a.execute("INSERT INTO notes VALUES (3, 'three', NULL)")
    commit(a)
    sync(a)

    # No table, nothing tracked: pdb_open installs the snapshot's tables and rows.
    b = connect(tmp_path / "b.db")
    assert one(b, "SELECT pdb_open(?, ?, ?, ?)", witness.url, group,
               witness.token("b", group), witness.key) == group
    st = js(b, "SELECT pdb_status()")
    assert st["head"]["seq"] == 1 and st["progress"] is None and st["last_error"] is None, st
    assert notes(b) == [(1, "one", None), (2, "two", "x")]
    assert one(b, "SELECT pdb_changeset()") is None
    # The rest comes with the next sync; the chain verifies from the snapshot on.
    s = sync(b)
    assert (s["pulled"], s["head"]["seq"]) == (1, 2), s
    assert notes(b) == notes(a)
    v = js(b, "SELECT pdb_verify()")
    assert (v["commits"], v["state"]) == (2, "ok"), v
    b.execute("UPDATE notes SET b = 'from b' WHERE id = 3")
    commit(b)
    sync(b)
    sync(a)
    assert notes(a) == notes(b)
    # Nothing newer than the device: pdb_bootstrap() installs nothing and pulls.
    s = js(b, "SELECT pdb_bootstrap()")
    assert "bootstrapped" not in s and s["head"]["seq"] == 3, s
