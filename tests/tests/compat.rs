//! Byte compatibility with the real session extension, proven both ways on random
//! workloads (DESIGN §3):
//! (a) our changeset, applied by `sqlite3changeset_apply` to a copy of the starting
//!     database, gives exactly the final database;
//! (b) the session extension's changeset for the same workload applies with
//!     `pdb_apply` to the same result, and is not captured as a local change;
//! (c) both hold the same set of changes, and ours is canonical.

use pdb_tests::{canonical, change_set, dump, load, pending, session_apply};
use proptest::prelude::*;
use rusqlite::session::Session;
use rusqlite::{params_from_iter, Connection};

/// Three tables covering the key shapes: rowid alias, composite WITHOUT ROWID whose key
/// order differs from column order (and names that need quoting), TEXT key on a rowid table.
const TABLES: [&str; 3] = ["t1", "odd \"name\" é", "t3"];
const SCHEMA: &str = r#"
CREATE TABLE t1(id INTEGER PRIMARY KEY, a, b TEXT UNIQUE, c REAL);
CREATE TABLE "odd ""name"" é"(k1 TEXT NOT NULL, "select" INTEGER NOT NULL, "v a l",
                             PRIMARY KEY("select", k1)) WITHOUT ROWID;
CREATE TABLE t3(k TEXT PRIMARY KEY NOT NULL, v BLOB, w);
INSERT INTO t1 VALUES (1, 'one', 'x', 1.5), (2, NULL, NULL, NULL), (3, x'00ff', '', -0.0);
INSERT INTO t1 VALUES (4, 4, 'y', 4);
INSERT INTO "odd ""name"" é" VALUES ('a', 1, 10), ('é', 2, 'twenty');
INSERT INTO t3 VALUES ('k1', x'', 1), ('', NULL, 2.5);
"#;

#[derive(Debug, Clone)]
enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Null => ValueRef::Null,
            Val::Int(i) => ValueRef::Integer(*i),
            Val::Real(r) => ValueRef::Real(*r),
            Val::Text(t) => ValueRef::Text(t.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        Just(Val::Null),
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(0i64),
            Just(-1),
            any::<i64>(),
            0i64..5
        ]
        .prop_map(Val::Int),
        prop_oneof![
            Just(-0.0f64),
            Just(0.0),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(1.5),
            any::<f64>().prop_filter("NaN is stored as NULL", |f| !f.is_nan())
        ]
        .prop_map(Val::Real),
        prop_oneof![
            Just(String::new()),
            Just("x".to_string()),
            "[a-zé'\" ]{0,12}"
        ]
        .prop_map(Val::Text),
        prop_oneof![
            Just(Vec::new()),
            proptest::collection::vec(any::<u8>(), 0..16),
            Just(vec![0xabu8; 70_000])
        ]
        .prop_map(Val::Blob),
    ]
}

/// A key of one of the tables, from a small domain so that rows collide often.
#[derive(Debug, Clone)]
enum Key {
    T1(i64),
    T2(String, i64),
    T3(String),
}

fn key() -> impl Strategy<Value = Key> {
    let text =
        prop_oneof![Just("a"), Just("é"), Just(""), Just("k1"), Just("b")].prop_map(String::from);
    prop_oneof![
        (0i64..8).prop_map(Key::T1),
        (text.clone(), 0i64..3).prop_map(|(a, b)| Key::T2(a, b)),
        text.prop_map(Key::T3),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Key, Val, Val),
    Replace(Key, Val, Val),
    Upsert(Key, Val),
    /// `UPDATE [OR REPLACE] t SET col = v WHERE key`.
    Update(Key, usize, Val, bool),
    /// `UPDATE [OR REPLACE] t SET key = other WHERE key`.
    ChangeKey(Key, Key, bool),
    Delete(Key),
    /// Runs the ops in a transaction that is rolled back.
    RolledBack(Vec<Op>),
    /// Runs the ops in a transaction that commits.
    Committed(Vec<Op>),
}

fn op() -> impl Strategy<Value = Op> {
    let leaf = prop_oneof![
        3 => (key(), val(), val()).prop_map(|(k, a, b)| Op::Insert(k, a, b)),
        1 => (key(), val(), val()).prop_map(|(k, a, b)| Op::Replace(k, a, b)),
        1 => (key(), val()).prop_map(|(k, a)| Op::Upsert(k, a)),
        4 => (key(), 0usize..3, val(), any::<bool>()).prop_map(|(k, c, v, r)| Op::Update(k, c, v, r)),
        1 => (key(), key(), any::<bool>()).prop_map(|(a, b, r)| Op::ChangeKey(a, b, r)),
        2 => key().prop_map(Op::Delete),
    ];
    leaf.prop_recursive(1, 16, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..6).prop_map(Op::RolledBack),
            proptest::collection::vec(inner, 1..6).prop_map(Op::Committed),
        ]
    })
}

fn table_of(k: &Key) -> &'static str {
    match k {
        Key::T1(_) => TABLES[0],
        Key::T2(..) => TABLES[1],
        Key::T3(_) => TABLES[2],
    }
}

fn key_vals(k: &Key) -> Vec<Val> {
    match k {
        Key::T1(i) => vec![Val::Int(*i)],
        Key::T2(a, b) => vec![Val::Text(a.clone()), Val::Int(*b)],
        Key::T3(s) => vec![Val::Text(s.clone())],
    }
}

/// `(key condition, SET-able column names)` per table.
fn shape(k: &Key) -> (&'static str, [&'static str; 3]) {
    match k {
        Key::T1(_) => ("id = ?1", ["a", "b", "c"]),
        Key::T2(..) => (
            "k1 = ?1 AND \"select\" = ?2",
            ["\"v a l\"", "\"v a l\"", "\"v a l\""],
        ),
        Key::T3(_) => ("k = ?1", ["v", "w", "v"]),
    }
}

fn q(t: &str) -> String {
    format!("\"{}\"", t.replace('"', "\"\""))
}

fn verb(replace: bool) -> &'static str {
    if replace {
        "UPDATE OR REPLACE"
    } else {
        "UPDATE"
    }
}

/// Runs one op; constraint failures are part of the workload and are ignored.
fn run(conn: &Connection, op: &Op) {
    let exec = |sql: &str, vals: Vec<Val>| {
        let _ = conn.execute(sql, params_from_iter(vals.iter()));
    };
    match op {
        Op::Insert(k, a, b) | Op::Replace(k, a, b) => {
            let verb = if matches!(op, Op::Replace(..)) {
                "INSERT OR REPLACE"
            } else {
                "INSERT"
            };
            let mut vals = key_vals(k);
            // t1 has three non-key columns; the others fewer.
            let extra = match k {
                Key::T1(_) => vec![a.clone(), b.clone(), Val::Real(2.0)],
                Key::T2(..) => vec![a.clone()],
                Key::T3(_) => vec![a.clone(), b.clone()],
            };
            vals.extend(extra);
            let cols = match k {
                Key::T1(_) => "id, a, b, c",
                Key::T2(..) => "k1, \"select\", \"v a l\"",
                Key::T3(_) => "k, v, w",
            };
            let ph: Vec<String> = (1..=vals.len()).map(|i| format!("?{i}")).collect();
            exec(
                &format!(
                    "{verb} INTO {}({cols}) VALUES ({})",
                    q(table_of(k)),
                    ph.join(", ")
                ),
                vals,
            );
        }
        Op::Upsert(k, v) => {
            let (cols, set) = match k {
                Key::T1(_) => ("id, a", "a"),
                Key::T2(..) => ("k1, \"select\", \"v a l\"", "\"v a l\""),
                Key::T3(_) => ("k, w", "w"),
            };
            let mut vals = key_vals(k);
            vals.push(v.clone());
            let ph: Vec<String> = (1..=vals.len()).map(|i| format!("?{i}")).collect();
            exec(
                &format!(
                    "INSERT INTO {}({cols}) VALUES ({}) ON CONFLICT DO UPDATE SET {set} = excluded.{set}",
                    q(table_of(k)),
                    ph.join(", ")
                ),
                vals,
            );
        }
        Op::Update(k, col, v, replace) => {
            let (cond, cols) = shape(k);
            let mut vals = key_vals(k);
            let n = vals.len();
            vals.push(v.clone());
            exec(
                &format!(
                    "{} {} SET {} = ?{} WHERE {cond}",
                    verb(*replace),
                    q(table_of(k)),
                    cols[*col],
                    n + 1
                ),
                vals,
            );
        }
        Op::ChangeKey(a, b, replace) => {
            if table_of(a) != table_of(b) {
                return;
            }
            let (cond, _) = shape(a);
            let mut vals = key_vals(a);
            let n = vals.len();
            let set = match b {
                Key::T1(_) => format!("id = ?{}", n + 1),
                Key::T2(..) => format!("k1 = ?{}, \"select\" = ?{}", n + 1, n + 2),
                Key::T3(_) => format!("k = ?{}", n + 1),
            };
            vals.extend(key_vals(b));
            exec(
                &format!(
                    "{} {} SET {set} WHERE {cond}",
                    verb(*replace),
                    q(table_of(a))
                ),
                vals,
            );
        }
        Op::Delete(k) => {
            let (cond, _) = shape(k);
            exec(
                &format!("DELETE FROM {} WHERE {cond}", q(table_of(k))),
                key_vals(k),
            );
        }
        Op::RolledBack(ops) | Op::Committed(ops) => {
            conn.execute_batch("BEGIN").unwrap();
            for op in ops {
                run(conn, op);
            }
            let end = if matches!(op, Op::RolledBack(_)) {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            conn.execute_batch(end).unwrap();
        }
    }
}

/// A database at the starting state; with `pdb`, the extension loaded and every table
/// tracked with its seed rows already committed (so they are the base).
fn start(pdb: bool) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    if pdb {
        load(&conn);
        for t in TABLES {
            conn.query_row("SELECT pdb_track(?1)", [t], |_| Ok(()))
                .unwrap();
        }
        conn.query_row("SELECT pdb_commit()", [], |_| Ok(()))
            .unwrap();
    }
    conn
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let a = start(true);
    let mut session = Session::new(&a).unwrap();
    for t in TABLES {
        session.attach(Some(t)).unwrap();
    }
    for op in ops {
        run(&a, op);
    }
    let ours = pending(&a);
    let mut theirs = Vec::new();
    session.changeset_strm(&mut theirs).unwrap();
    drop(session);

    // (c) the same changes, and ours canonical.
    let (our_headers, our_changes) = change_set(&ours);
    let (their_headers, their_changes) = change_set(&theirs);
    prop_assert_eq!(&our_changes, &their_changes, "different changes");
    for (t, pk) in &our_headers {
        prop_assert_eq!(Some(pk), their_headers.get(t), "PK flags of {}", t);
    }
    prop_assert_eq!(&ours, &canonical(&theirs), "ours is not the canonical form");
    prop_assert_eq!(ours.len(), theirs.len());

    // invert and concat agree with sqlite3changeset_invert / sqlite3changeset_concat.
    let sql_blob = |sql: &str, args: &[&Vec<u8>]| -> Vec<u8> {
        a.query_row(sql, rusqlite::params_from_iter(args.iter()), |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .unwrap()
        .unwrap_or_default()
    };
    let our_inverse = sql_blob("SELECT pdb_invert(?1)", &[&ours]);
    let mut their_inverse = Vec::new();
    rusqlite::session::invert_strm(&mut &ours[..], &mut their_inverse).unwrap();
    prop_assert_eq!(&our_inverse, &their_inverse, "invert differs");
    for (x, y) in [
        (&ours, &our_inverse),
        (&theirs, &ours),
        (&our_inverse, &theirs),
    ] {
        let our_concat = sql_blob("SELECT pdb_concat(?1, ?2)", &[x, y]);
        let mut their_concat = Vec::new();
        rusqlite::session::concat_strm(&mut &x[..], &mut &y[..], &mut their_concat).unwrap();
        prop_assert_eq!(
            change_set(&our_concat).1,
            change_set(&their_concat).1,
            "concat differs"
        );
        prop_assert_eq!(
            &our_concat,
            &canonical(&our_concat),
            "concat output is not canonical"
        );
    }

    // (a) ours through the real sqlite3changeset_apply, (b) theirs through pdb_apply.
    // Row-at-a-time apply cannot do everything (two rows swapping UNIQUE values
    // deadlock), so the requirement is: each applies exactly when the session
    // extension applies its own changeset, and then gives the same database.
    let reference = start(false);
    let theirs_ok = session_apply(&reference, &theirs, "abort").is_ok();
    let b = start(false);
    let ours_ok = session_apply(&b, &ours, "abort");
    prop_assert_eq!(
        ours_ok.is_ok(),
        theirs_ok,
        "session apply of ours: {:?}",
        ours_ok
    );
    let c = start(true);
    let pdb_ok = c.query_row("SELECT pdb_apply(?1)", [&theirs], |_| Ok(()));
    prop_assert_eq!(
        pdb_ok.is_ok(),
        theirs_ok,
        "pdb_apply of theirs: {:?}",
        pdb_ok
    );
    prop_assert!(
        pending(&c).is_empty(),
        "pdb_apply was captured as a local change"
    );
    if theirs_ok {
        for t in TABLES {
            let want = dump(&a, t);
            prop_assert_eq!(
                &dump(&reference, t),
                &want,
                "session apply of theirs differs in {}",
                t
            );
            prop_assert_eq!(
                &dump(&b, t),
                &want,
                "session apply of ours differs in {}",
                t
            );
            prop_assert_eq!(&dump(&c, t), &want, "pdb_apply of theirs differs in {}", t);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn same_changes_as_the_session_extension(ops in proptest::collection::vec(op(), 0..30)) {
        check(&ops)?;
    }
}

#[test]
fn commit_then_more_writes_matches_session_per_commit() {
    // Two rounds: what pdb_commit queued for round one equals the session's changeset
    // of round one, and round two starts from a clean slate.
    let a = start(true);
    for round in 0..2 {
        let mut session = Session::new(&a).unwrap();
        for t in TABLES {
            session.attach(Some(t)).unwrap();
        }
        a.execute_batch(&format!(
            "INSERT INTO t1(a) VALUES ('r{round}'); UPDATE t1 SET c = c + 1; DELETE FROM t3 WHERE k = 'k1';"
        ))
        .unwrap();
        let mut theirs = Vec::new();
        session.changeset_strm(&mut theirs).unwrap();
        drop(session);
        let id: i64 = a
            .query_row("SELECT pdb_commit()", [], |r| r.get(0))
            .unwrap();
        let ours: Vec<u8> = a
            .query_row(
                "SELECT changeset FROM pdb_upload_queue WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ours, canonical(&theirs), "round {round}");
        assert!(pending(&a).is_empty());
    }
}

/// `pdb_invert` gives `sqlite3changeset_invert`'s bytes even for encodings SQLite would
/// not write: a header's column count in a longer varint than needed is copied, an
/// UPDATE value's long length varint is written afresh (found by the decode fuzz target).
#[test]
fn invert_is_byte_identical_on_non_minimal_varints() {
    let mut cs = vec![
        b'T', 0x80, 0x80, 0x01, 0x01, b't', 0, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7,
    ];
    cs.extend_from_slice(&[b'T', 2, 1, 0, b'u', 0, 23, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    cs.extend_from_slice(&[3, 0x80, 0x01, b'a', 0, 3, 1, b'b']);
    let c = pdb_tests::memory_with_pdb();
    let ours: Vec<u8> = c
        .query_row("SELECT pdb_invert(?1)", [&cs], |r| r.get(0))
        .unwrap();
    let mut theirs = Vec::new();
    rusqlite::session::invert_strm(&mut &cs[..], &mut theirs).unwrap();
    assert_eq!(ours, theirs);
}
