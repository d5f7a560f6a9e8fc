//! The witness never panics on a commit request's input (DESIGN §7, invariant 6): the
//! headers of `POST /v1/groups/{g}/commits` ([`commit_headers`]) and its body
//! ([`Replica::validate`], then [`Replica::apply`] inside a rolled-back transaction),
//! under random bytes and near-valid mutations of good values.
//!
//! Besides not panicking: every header error is a `bad_request` problem naming the
//! first header at fault (in the order the witness checks them); every valid set of
//! headers parses to exactly its values; every body error is `Refusal::Invalid` with a
//! message of the documented kinds; every real session changeset is accepted; and an
//! accepted apply moves the state vector exactly as a recount of the tables does, and
//! its rollback leaves the replica as it was.

use std::path::PathBuf;

use pdb_core::cert::{genesis, hex, Hash};
use pdb_core::state::StateVector;
use pdb_witness::problem::Code;
use pdb_witness::replica::{Refusal, Replica};
use pdb_witness::request::{commit_headers, CommitHeaders, Policy, MAX_META};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rusqlite::Connection;

// ---------------------------------------------------------------------------------
// Headers

/// The headers in the order the witness checks them.
const NAMES: [&str; 6] = [
    "Pdb-Base",
    "Idempotency-Key",
    "Pdb-Schema",
    "Pdb-Client",
    "Pdb-Policy",
    "Pdb-Meta",
];

/// One header value per name in [`NAMES`]; `None` is an absent header.
type Headers = [Option<Vec<u8>>; 6];

fn parse(h: &Headers) -> Result<CommitHeaders, pdb_witness::problem::Problem> {
    commit_headers(|name| {
        let i = NAMES.iter().position(|n| *n == name)?;
        h[i].as_deref()
    })
}

fn is_hex64(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// What the witness must make of the headers, from the rules of DESIGN §5 and the
/// documented limits: `Ok` with the values, or `Err` with the first header at fault.
fn oracle(h: &Headers) -> Result<CommitHeaders, &'static str> {
    let text = |i: usize| -> Result<Option<&str>, &'static str> {
        match &h[i] {
            None => Ok(None),
            Some(b) => std::str::from_utf8(b).map(Some).map_err(|_| NAMES[i]),
        }
    };
    let base = text(0)?.ok_or(NAMES[0])?;
    let (seq, head) = base.trim().split_once(':').ok_or(NAMES[0])?;
    if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NAMES[0]);
    }
    let seq: u64 = seq.parse().map_err(|_| NAMES[0])?;
    let head = is_hex64(head).ok_or(NAMES[0])?;
    let key = text(1)?.ok_or(NAMES[1])?;
    if key.is_empty() || key.len() > 255 || key.bytes().any(|b| !(b'!'..=b'~').contains(&b)) {
        return Err(NAMES[1]);
    }
    let schema = is_hex64(text(2)?.ok_or(NAMES[2])?.trim()).ok_or(NAMES[2])?;
    let client = text(3)?;
    if let Some(c) = client {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if c.is_empty() || c.len() > 64 || !c.bytes().all(ok) {
            return Err(NAMES[3]);
        }
    }
    let policy = match text(4)?.map(str::trim) {
        None | Some("rebase-if-clean") => Policy::RebaseIfClean,
        Some("fast-forward") => Policy::FastForward,
        Some(_) => return Err(NAMES[4]),
    };
    let meta = text(5)?;
    if let Some(m) = meta {
        if m.len() > MAX_META || serde_json::from_str::<serde_json::Value>(m).is_err() {
            return Err(NAMES[5]);
        }
    }
    Ok(CommitHeaders {
        base: (seq, head),
        idempotency_key: key.to_string(),
        schema_hash: schema,
        client: client.map(str::to_string),
        meta: meta.map(str::to_string),
        policy,
    })
}

/// Small edits of a byte string: replace, insert, delete, truncate, duplicate, or
/// splice random bytes in.
fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec(
        (
            0u8..6,
            any::<prop::sample::Index>(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..6),
        ),
        1..4,
    );
    edits.prop_map(move |edits| {
        let mut v = base.clone();
        for (kind, at, byte, bytes) in edits {
            let i = if v.is_empty() { 0 } else { at.index(v.len()) };
            match kind {
                0 if !v.is_empty() => v[i] = byte,
                1 => v.insert(i.min(v.len()), byte),
                2 if !v.is_empty() => {
                    v.remove(i);
                }
                3 => v.truncate(i),
                4 => {
                    let tail = v[i..].to_vec();
                    v.extend_from_slice(&tail);
                }
                _ => {
                    let at = i.min(v.len());
                    v.splice(at..at, bytes);
                }
            }
        }
        v
    })
}

fn hash_hex() -> impl Strategy<Value = String> {
    (any::<[u8; 32]>(), any::<bool>()).prop_map(|(h, upper)| {
        let s = hex(&h);
        if upper {
            s.to_uppercase()
        } else {
            s
        }
    })
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\t", "  "])
}

/// A valid value for header `i`.
fn valid(i: usize) -> BoxedStrategy<Vec<u8>> {
    match i {
        0 => (any::<u64>(), hash_hex(), ws(), ws())
            .prop_map(|(seq, h, a, b)| format!("{a}{seq}:{h}{b}").into_bytes())
            .boxed(),
        1 => "[!-~]{1,255}".prop_map(String::into_bytes).boxed(),
        2 => (hash_hex(), ws(), ws())
            .prop_map(|(h, a, b)| format!("{a}{h}{b}").into_bytes())
            .boxed(),
        3 => "[A-Za-z0-9_-]{1,64}".prop_map(String::into_bytes).boxed(),
        4 => (
            prop::sample::select(vec!["rebase-if-clean", "fast-forward"]),
            ws(),
            ws(),
        )
            .prop_map(|(p, a, b)| format!("{a}{p}{b}").into_bytes())
            .boxed(),
        _ => prop_oneof![
            Just(b"{}".to_vec()),
            Just(br#"{"device": "laptop", "n": [1, 2.5, null, true]}"#.to_vec()),
            "[a-z ]{0,40}".prop_map(|s| serde_json::Value::String(s).to_string().into_bytes()),
            any::<i64>().prop_map(|n| n.to_string().into_bytes()),
            // Up to exactly the limit.
            (MAX_META - 3..=MAX_META).prop_map(long_meta),
        ]
        .boxed(),
    }
}

/// A JSON string of exactly `n` bytes.
fn long_meta(n: usize) -> Vec<u8> {
    format!("\"{}\"", "x".repeat(n - 2)).into_bytes()
}

/// Any value for header `i`: absent, valid, a near-valid mutation, or random bytes.
fn header(i: usize) -> BoxedStrategy<Option<Vec<u8>>> {
    let absent_weight = if i < 3 { 1 } else { 4 };
    let any_value = prop_oneof![
        absent_weight => Just(None),
        6 => valid(i).prop_map(Some),
        4 => valid(i).prop_flat_map(mutate).prop_map(Some),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Some),
    ];
    if i == 5 {
        // Pdb-Meta also just over its limit.
        let over = (MAX_META + 1..MAX_META + 3)
            .prop_map(long_meta)
            .prop_map(Some);
        prop_oneof![10 => any_value, 1 => over].boxed()
    } else {
        any_value.boxed()
    }
}

fn headers() -> impl Strategy<Value = Headers> {
    (
        header(0),
        header(1),
        header(2),
        header(3),
        header(4),
        header(5),
    )
        .prop_map(|(a, b, c, d, e, f)| [a, b, c, d, e, f])
}

fn valid_headers() -> impl Strategy<Value = Headers> {
    (
        valid(0),
        valid(1),
        valid(2),
        prop::option::of(valid(3)),
        prop::option::of(valid(4)),
        prop::option::of(valid(5)),
    )
        .prop_map(|(a, b, c, d, e, f)| [Some(a), Some(b), Some(c), d, e, f])
}

proptest! {
    #![proptest_config(Config::with_cases(3000))]

    /// Any header values: no panic; the result is what the rules say, and an error
    /// is a `bad_request` naming the first header at fault.
    #[test]
    fn headers_parse_as_documented(h in headers()) {
        let got = parse(&h);
        match (oracle(&h), got) {
            (Ok(want), Ok(got)) => prop_assert_eq!(got, want),
            (Err(name), Err(p)) => {
                prop_assert_eq!(p.code, Code::BadRequest);
                prop_assert!(p.detail.contains(name), "{:?} should name {}", p.detail, name);
                prop_assert_eq!(p.to_json()["status"].as_u64(), Some(400));
            }
            (want, got) => prop_assert!(false, "expected {:?}, got {:?}", want, got),
        }
    }

    /// Valid headers (absent optional ones included) are always accepted.
    #[test]
    fn valid_headers_are_accepted(h in valid_headers()) {
        let got = parse(&h);
        prop_assert!(got.is_ok(), "{:?}: {:?}", h, got);
        prop_assert_eq!(got.unwrap(), oracle(&h).unwrap());
    }
}

/// `Pdb-Meta` is accepted up to [`MAX_META`] bytes and refused, by name, past it.
#[test]
fn meta_over_the_limit_is_refused_by_name() {
    let mut h: Headers = [
        Some(format!("0:{}", "0".repeat(64)).into_bytes()),
        Some(b"k".to_vec()),
        Some("a".repeat(64).into_bytes()),
        None,
        None,
        Some(format!("\"{}\"", "x".repeat(MAX_META - 1)).into_bytes()),
    ];
    assert!(parse(&h).is_err_and(|p| p.detail.contains("Pdb-Meta")));
    h[5] = Some(format!("\"{}\"", "x".repeat(MAX_META - 2)).into_bytes());
    assert!(parse(&h).is_ok());
}

// ---------------------------------------------------------------------------------
// Bodies

/// Four tables: INTEGER PRIMARY KEY with every value type, a composite WITHOUT ROWID
/// key in another order than its columns, a TEXT key with constraints (so that applies
/// can fail on them), and a non-ASCII name.
const DDL: &str = r#"
CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB, d);
CREATE TABLE k(x TEXT NOT NULL, y INTEGER NOT NULL, v, PRIMARY KEY (y, x)) WITHOUT ROWID;
CREATE TABLE u(name TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL CHECK (n >= 0) UNIQUE);
CREATE TABLE "é"(id INTEGER PRIMARY KEY, w NUMERIC);
"#;

/// The rows the replica holds before each case (committed once).
const BASE: &str = r#"
INSERT INTO t VALUES (1, 'one', 1.5, x'01', NULL), (2, 'two', NULL, NULL, 2), (3, NULL, -0.5, x'', 'x');
INSERT INTO k VALUES ('a', 1, 10), ('b', 1, NULL), ('a', 2, 'z');
INSERT INTO u VALUES ('p', 1), ('q', 2);
INSERT INTO "é" VALUES (1, 1), (2, '2.5');
"#;

/// A scratch directory for one test's replica, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("pdb-commit-parsing-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records the changes `sql` makes, with the real session extension, on a database
/// holding the DDL and `setup`.
fn record(setup: &str, sql: &str) -> Vec<u8> {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    conn.execute_batch(setup).unwrap();
    let mut s = rusqlite::session::Session::new(&conn).unwrap();
    s.attach(None::<&str>).unwrap();
    // Statements that violate a constraint are simply not part of the changeset.
    for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
        let _ = conn.execute_batch(stmt);
    }
    let mut out = Vec::new();
    s.changeset_strm(&mut out).unwrap();
    out
}

/// A replica holding [`BASE`] as its committed state.
fn replica(dir: &TempDir) -> Replica {
    let r = Replica::create(&dir.0.join("g.db"), DDL, genesis("g")).expect("create replica");
    let cs = record("", BASE);
    let touched = r.validate(&cs).expect("base validates");
    let mut state = StateVector::new();
    r.begin().unwrap();
    r.apply(&cs, &touched, &mut state).expect("base applies");
    r.commit().unwrap();
    assert_eq!(r.full_state().unwrap(), state);
    r
}

fn sql_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        (-3i64..6).prop_map(|i| i.to_string()),
        Just("9223372036854775807".to_string()),
        (-4.0f64..4.0).prop_map(|r| format!("{r:?}")),
        "[a-cé]{0,3}".prop_map(|s| format!("'{s}'")),
        Just("'2'".to_string()),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(|b| format!("x'{}'", hex(&b))),
    ]
}

/// One random write to the base tables, as SQL.
fn write() -> impl Strategy<Value = String> {
    let v = sql_value;
    prop_oneof![
        (0i64..6, v(), v(), v(), v()).prop_map(|(id, a, b, c, d)| format!(
            "INSERT OR REPLACE INTO t VALUES ({id}, {a}, {b}, {c}, {d})"
        )),
        (0i64..6, v(), v())
            .prop_map(|(id, a, b)| format!("UPDATE t SET a = {a}, b = {b} WHERE id = {id}")),
        (0i64..6).prop_map(|id| format!("DELETE FROM t WHERE id = {id}")),
        ("[abc]", 0i64..3, v())
            .prop_map(|(x, y, w)| format!("INSERT OR REPLACE INTO k VALUES ('{x}', {y}, {w})")),
        ("[abc]", 0i64..3, v())
            .prop_map(|(x, y, w)| format!("UPDATE k SET v = {w} WHERE x = '{x}' AND y = {y}")),
        ("[abc]", 0i64..3).prop_map(|(x, y)| format!("DELETE FROM k WHERE x = '{x}' AND y = {y}")),
        ("[pqr]", 0i64..4)
            .prop_map(|(n, i)| format!("INSERT OR REPLACE INTO u VALUES ('{n}', {i})")),
        ("[pqr]", -1i64..4).prop_map(|(n, i)| format!("UPDATE u SET n = {i} WHERE name = '{n}'")),
        (0i64..4, v())
            .prop_map(|(id, w)| format!("INSERT OR REPLACE INTO \"é\" VALUES ({id}, {w})")),
        (0i64..4).prop_map(|id| format!("DELETE FROM \"é\" WHERE id = {id}")),
    ]
}

/// A real changeset against the base (possibly empty when the writes cancel out).
fn real_changeset() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(write(), 1..8).prop_map(|w| record(BASE, &w.join(";")))
}

/// Real changesets, their mutations, splices of two, and random bytes.
fn body() -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        3 => real_changeset().prop_map(|c| (c, true)),
        6 => real_changeset().prop_flat_map(mutate).prop_map(|c| (c, false)),
        1 => (real_changeset(), real_changeset(), any::<prop::sample::Index>()).prop_map(|(a, b, i)| {
            let cut = if a.is_empty() { 0 } else { i.index(a.len()) };
            ([&a[..cut], &b[..]].concat(), false)
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(|c| (c, false)),
    ]
}

/// The kinds of message `Refusal::Invalid` carries (see `Replica::validate`).
fn documented_invalid(msg: &str) -> bool {
    msg.starts_with("malformed changeset at byte ")
        || msg.starts_with("unknown table \"")
        || msg.starts_with("table \"")
        || msg == "the changeset is empty"
}

/// Runs one body through validate and, if accepted, apply in a rolled-back
/// transaction, checking everything the module promises.
fn check_body(r: &Replica, base: &StateVector, cs: &[u8], real: bool) -> Result<(), TestCaseError> {
    let touched = match r.validate(cs) {
        Ok(t) => t,
        Err(Refusal::Invalid(msg)) => {
            prop_assert!(documented_invalid(&msg), "undocumented refusal: {msg}");
            prop_assert!(
                !real || cs.is_empty(),
                "a real changeset was refused: {msg}"
            );
            return Ok(());
        }
        Err(other) => return Err(TestCaseError::fail(format!("validate: {other:?}"))),
    };
    r.begin().unwrap();
    let mut state = base.clone();
    let applied = r.apply(cs, &touched, &mut state);
    let recount = r.full_state().unwrap();
    r.rollback().unwrap();
    match applied {
        Ok(()) => prop_assert_eq!(&state, &recount, "the state moved otherwise than the rows"),
        Err(Refusal::Conflict(rows)) => {
            // A real changeset on its own base can still fail a UNIQUE constraint: one
            // that swaps two unique values applies its changes one at a time, and
            // `sqlite3changeset_apply`'s retry of constraint failures cannot help.
            let constraint = |r: &serde_json::Value| r["reason"] == "constraint";
            prop_assert!(
                !real || rows.iter().all(constraint),
                "a real changeset on its own base conflicted: {rows:?}"
            );
            prop_assert!(!rows.is_empty());
            prop_assert_eq!(&recount, base, "a refused apply left changes");
        }
        Err(Refusal::Invalid(msg)) => {
            prop_assert!(!real, "a real changeset was refused: {msg}");
            prop_assert_eq!(&recount, base, "a refused apply left changes");
        }
        Err(Refusal::Storage(e)) => {
            return Err(TestCaseError::fail(format!("apply: storage error {e}")))
        }
    }
    prop_assert_eq!(&r.full_state().unwrap(), base, "rollback left changes");
    Ok(())
}

#[test]
fn bodies_never_panic_and_real_changesets_apply() {
    let dir = TempDir::new("bodies");
    let r = replica(&dir);
    let base = r.full_state().unwrap();
    let mut runner = TestRunner::new(Config::with_cases(2000));
    let result = runner.run(&body(), |(cs, real)| check_body(&r, &base, &cs, real));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Every prefix of a real changeset, and every single-byte change of it, is refused
/// cleanly or applies consistently.
#[test]
fn every_truncation_and_byte_flip_of_a_real_changeset() {
    let dir = TempDir::new("flips");
    let r = replica(&dir);
    let base = r.full_state().unwrap();
    let cs = record(
        BASE,
        "UPDATE t SET a = 'uno', d = 1.25 WHERE id = 1; DELETE FROM t WHERE id = 2; \
         INSERT INTO t VALUES (7, 'seven', 7.5, x'07', NULL); \
         UPDATE k SET v = 'w' WHERE x = 'a' AND y = 1; INSERT INTO k VALUES ('c', 2, 3); \
         UPDATE u SET n = 3 WHERE name = 'p'; INSERT INTO \"é\" VALUES (3, 'x')",
    );
    check_body(&r, &base, &cs, true).unwrap();
    for n in 0..cs.len() {
        check_body(&r, &base, &cs[..n], false).unwrap_or_else(|e| panic!("prefix {n}: {e}"));
    }
    for i in 0..cs.len() {
        for b in [0u8, 1, 2, 3, 4, 5, 9, 18, 23, 0x7f, 0x80, 0xff, cs[i] ^ 1] {
            let mut m = cs.clone();
            m[i] = b;
            check_body(&r, &base, &m, false)
                .unwrap_or_else(|e| panic!("byte {i} set to {b:#04x}: {e}"));
        }
    }
}

/// An INSERT into `t` whose INTEGER PRIMARY KEY value is `key` (an encoded field).
fn insert_t_with_key(key: &[u8]) -> Vec<u8> {
    let mut w = pdb_core::changeset::Writer::new();
    w.table("t", &[1, 0, 0, 0, 0]);
    w.begin(pdb_core::changeset::Op::Insert, false);
    w.buf().extend_from_slice(key);
    for _ in 0..4 {
        w.buf().push(5); // NULL
    }
    w.finish()
}

/// A key SQLite cannot store in an INTEGER PRIMARY KEY (REAL 1.5, TEXT 'x', a BLOB) is
/// the client's fault: it must be refused as `invalid_changeset` (422) or as a
/// conflict, not reported as a storage failure, which the sequencer turns into a failed
/// batch: every other commit of the same group commit is refused with 503 too.
#[test]
fn a_rowid_key_that_is_not_an_integer_is_refused_as_invalid() {
    let dir = TempDir::new("mismatch");
    let r = replica(&dir);
    let mut real = vec![2u8];
    real.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
    for key in [real, b"\x03\x01x".to_vec(), b"\x04\x01\x00".to_vec()] {
        let cs = insert_t_with_key(&key);
        let outcome = match r.validate(&cs) {
            Err(e) => Err(e),
            Ok(touched) => {
                r.begin().unwrap();
                let mut state = r.full_state().unwrap();
                let res = r.apply(&cs, &touched, &mut state);
                r.rollback().unwrap();
                res
            }
        };
        assert!(
            matches!(outcome, Err(Refusal::Invalid(_) | Refusal::Conflict(_))),
            "key {key:02x?}: {outcome:?}"
        );
    }
}

/// Two changes naming the same row with differently typed keys (TEXT '9' and INTEGER
/// 9, which the TEXT key column's affinity makes the same row) must move the state
/// digest once: the certified state must equal the digest of the replica's rows.
#[test]
fn one_row_named_by_two_key_spellings_moves_the_state_once() {
    let dir = TempDir::new("spellings");
    let r = replica(&dir);
    let mut w = pdb_core::changeset::Writer::new();
    // u(name TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL UNIQUE)
    w.table("u", &[1, 0]);
    w.begin(pdb_core::changeset::Op::Insert, false);
    w.buf().extend_from_slice(&[3, 1, b'9']);
    w.buf().extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 101]);
    w.begin(pdb_core::changeset::Op::Update, false);
    w.buf().extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 9]);
    w.buf().extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 101]);
    w.buf().extend_from_slice(&[0]);
    w.buf().extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 102]);
    let cs = w.finish();
    let touched = r.validate(&cs).expect("validates");
    r.begin().unwrap();
    let mut state = r.full_state().unwrap();
    let res = r.apply(&cs, &touched, &mut state);
    let recount = r.full_state().unwrap();
    r.rollback().unwrap();
    res.expect("applies");
    assert_eq!(
        state, recount,
        "the state vector moved otherwise than the rows"
    );
}

/// A value in changeset record format that column affinity may or may not keep as is.
fn affinity_probe() -> impl Strategy<Value = Vec<u8>> {
    let real = |r: f64| {
        let mut v = vec![2u8];
        v.extend_from_slice(&r.to_bits().to_be_bytes());
        v
    };
    let int = |i: i64| {
        let mut v = vec![1u8];
        v.extend_from_slice(&i.to_be_bytes());
        v
    };
    let text = |s: &str| {
        let mut v = vec![3u8, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    };
    prop_oneof![
        Just(vec![5u8]),
        Just(int(5)),
        Just(int(-7)),
        Just(real(2.0)),
        Just(real(1.5)),
        Just(real(0.0)),
        Just(real(-0.0)),
        Just(real(f64::NAN)),
        Just(real(f64::INFINITY)),
        Just(real(1e300)),
        Just(text("7")),
        Just(text("2.5")),
        Just(text(" 3")),
        Just(text("x")),
        Just(text("")),
        Just(vec![4u8, 2, 0, 1]),
    ]
}

proptest! {
    #![proptest_config(Config { cases: 3000, ..Config::default() })]

    /// Rows that only INSERTs name take their stored values from the changeset when
    /// the column's affinity keeps them as they are; whatever the values, the state
    /// must move exactly as a recount of the rows says.
    #[test]
    fn inserted_values_count_as_sqlite_stores_them(
        t in proptest::collection::vec(affinity_probe(), 4),
        w in affinity_probe(),
        id in 100i64..110,
    ) {
        let dir = TempDir::new("affinity");
        let r = replica(&dir);
        let base = r.full_state().unwrap();
        let mut cs = pdb_core::changeset::Writer::new();
        cs.table("t", &[1, 0, 0, 0, 0]);
        cs.begin(pdb_core::changeset::Op::Insert, false);
        cs.buf().push(1);
        cs.buf().extend_from_slice(&id.to_be_bytes());
        for v in &t {
            cs.buf().extend_from_slice(v);
        }
        cs.table("é", &[1, 0]);
        cs.begin(pdb_core::changeset::Op::Insert, false);
        cs.buf().push(1);
        cs.buf().extend_from_slice(&id.to_be_bytes());
        cs.buf().extend_from_slice(&w);
        let cs = cs.finish();
        let touched = r.validate(&cs).expect("validates");
        r.begin().unwrap();
        let mut state = base.clone();
        let applied = r.apply(&cs, &touched, &mut state);
        let recount = r.full_state().unwrap();
        r.rollback().unwrap();
        match applied {
            Ok(()) => prop_assert_eq!(state, recount),
            Err(Refusal::Storage(e)) => return Err(TestCaseError::fail(format!("storage: {e}"))),
            Err(_) => prop_assert_eq!(recount, base),
        }
    }
}
