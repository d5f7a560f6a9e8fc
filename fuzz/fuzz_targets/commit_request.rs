//! Fuzz target: a whole commit request as the witness reads it — the header values of
//! `POST /v1/groups/{g}/commits` through `pdb_witness::request::commit_headers`, the
//! body through `Replica::validate` and, when accepted, `Replica::apply` in a
//! transaction that is rolled back, on a replica holding `fuzz/apply/base.sql`.
//!
//! Input: up to six newline-terminated header values, in the order `Pdb-Base`,
//! `Idempotency-Key`, `Pdb-Schema`, `Pdb-Client`, `Pdb-Policy`, `Pdb-Meta`, then the
//! body (everything after the sixth newline). An empty line is an absent header; a
//! leading `=` is dropped (so `=` alone is a present, empty value). With fewer than six
//! newlines the missing headers are absent and the body is empty. The body goes to the
//! replica whatever the headers say, so that no input is wasted on one half.
//!
//! What must hold (DESIGN §7, invariant 6, and §5's error codes): nothing panics; a
//! header error is a `bad_request` problem naming a header; a body error from
//! `validate` is `Refusal::Invalid`; an apply either succeeds and moves the state
//! vector exactly as recounting the tables does, or fails with a conflict or `Invalid`
//! and leaves every row as it was; and the rollback restores the replica.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use pdb_client::cert::genesis;
use pdb_client::state::StateVector;
use pdb_witness::problem::Code;
use pdb_witness::replica::{Refusal, Replica};
use pdb_witness::request::commit_headers;

/// The replica's tables and rows.
const BASE_SQL: &str = include_str!("../apply/base.sql");

/// The headers, in the order of the input's lines.
const NAMES: [&str; 6] = [
    "Pdb-Base",
    "Idempotency-Key",
    "Pdb-Schema",
    "Pdb-Client",
    "Pdb-Policy",
    "Pdb-Meta",
];

struct Target {
    replica: Replica,
    /// The state vector of the base rows.
    base: StateVector,
    dir: PathBuf,
}

impl Target {
    fn new() -> Target {
        let dir =
            std::env::temp_dir().join(format!("pdb-fuzz-commit-request-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the replica's directory");
        // A group's DDL holds only CREATE statements (the schema guard refuses rows),
        // so the base rows go in through a connection of their own.
        let (rows, ddl): (Vec<&str>, Vec<&str>) =
            BASE_SQL.lines().partition(|l| l.starts_with("INSERT"));
        let path = dir.join("g.db");
        drop(Replica::create(&path, &ddl.join("\n"), genesis("g")).expect("create replica"));
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch(&rows.join("\n")))
            .expect("insert the base rows");
        let replica = Replica::open(&path)
            .expect("open the replica")
            .expect("a finished replica");
        let base = replica.full_state().expect("state of the base");
        Target { replica, base, dir }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

thread_local! {
    // Creating the replica (a file, its schema and rows) costs far more than an input;
    // each input's changes are rolled back instead.
    static TARGET: Target = Target::new();
}

fuzz_target!(|data: &[u8]| TARGET.with(|t| check(t, data)));

/// Splits the input into the six header values and the body.
fn split(data: &[u8]) -> ([Option<&[u8]>; 6], &[u8]) {
    let mut headers = [None; 6];
    let mut parts = data.splitn(7, |&b| b == b'\n');
    for h in headers.iter_mut() {
        match parts.next() {
            Some([]) | None => {}
            Some([b'=', rest @ ..]) => *h = Some(rest),
            Some(v) => *h = Some(v),
        }
    }
    (headers, parts.next().unwrap_or_default())
}

fn check(t: &Target, data: &[u8]) {
    let (headers, body) = split(data);
    let parsed = commit_headers(|name| {
        let i = NAMES.iter().position(|n| *n == name)?;
        headers[i]
    });
    if let Err(p) = parsed {
        assert_eq!(p.code, Code::BadRequest, "{p}");
        assert!(
            NAMES.iter().any(|n| p.detail.contains(n)),
            "a header problem names no header: {p}"
        );
    }

    let r = &t.replica;
    let touched = match r.validate(body) {
        Ok(touched) => touched,
        Err(Refusal::Invalid(msg)) => {
            assert!(!msg.is_empty());
            return;
        }
        Err(other) => panic!("validate refused with {other:?}, not Invalid"),
    };
    r.begin().expect("begin");
    let mut state = t.base.clone();
    let applied = r.apply(body, &touched, &mut state);
    let recount = r.full_state().expect("recount");
    r.rollback().expect("rollback");
    match applied {
        Ok(()) => assert_eq!(
            state, recount,
            "the state vector moved otherwise than the rows"
        ),
        Err(Refusal::Conflict(rows)) => {
            assert!(!rows.is_empty(), "a conflict names no row");
            assert_eq!(recount, t.base, "a conflicting apply left changes");
        }
        Err(Refusal::Invalid(msg)) => {
            assert!(!msg.is_empty());
            assert_eq!(recount, t.base, "a refused apply left changes");
        }
        Err(Refusal::Storage(e)) => panic!("apply failed with a storage error: {e}"),
    }
    assert_eq!(
        r.full_state().expect("recount after rollback"),
        t.base,
        "the rollback left changes"
    );
}
