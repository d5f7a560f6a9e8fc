//! Fuzz target: what a reader of a projection sends: search text, filter pairs and a
//! `next` cursor (`fts_query`, `Params::from_pairs`, `Cursors::check`).
//!
//! What must hold: nothing panics; search text the witness accepts never makes FTS5
//! report a syntax error, whatever the tokenizer (it is only quoted words); a cursor
//! the witness did not issue is refused, and one it issued reads back as issued.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdb_client::value::Value;
use pdb_witness::projection::read::{fts_query, Cursors, Params, Position};
use rusqlite::Connection;

thread_local! {
    static FTS: Connection = {
        let db = Connection::open_in_memory().expect("memory database");
        db.execute_batch(
            "CREATE VIRTUAL TABLE u USING fts5(a, b, tokenize = 'unicode61 remove_diacritics 2');\
             CREATE VIRTUAL TABLE t USING fts5(a, tokenize = 'trigram');\
             CREATE VIRTUAL TABLE p USING fts5(a, tokenize = 'porter ascii');\
             INSERT INTO u VALUES ('milk and eggs', 'café'); INSERT INTO t VALUES ('milkshake');\
             INSERT INTO p VALUES ('plans planning');",
        )
        .expect("fts tables");
        db
    };
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(q) = fts_query(&text) {
        FTS.with(|db| {
            for table in ["u", "t", "p"] {
                let mut stmt = db
                    .prepare(&format!("SELECT rowid FROM {table} WHERE {table} MATCH ?1"))
                    .expect("prepare");
                let rows: Result<Vec<i64>, _> =
                    stmt.query_map([&q], |r| r.get(0)).and_then(|r| r.collect());
                assert!(rows.is_ok(), "{text:?} as {q:?} on {table}: {rows:?}");
            }
        });
    }
    let pairs: Vec<(String, String)> = text
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let _ = Params::from_pairs(&pairs);
    let cursors = Cursors::new([3; 32]);
    assert!(
        cursors.check("ctx", &text).is_err(),
        "a forged cursor was accepted: {text:?}"
    );
    let pos = Position {
        version: data.len() as u64,
        offset: data.first().copied().unwrap_or(0) as u64,
        after: vec![
            Value::Text(data.to_vec()),
            Value::Integer(data.len() as i64),
            Value::Null,
        ],
    };
    let token = cursors.issue("ctx", &pos);
    assert_eq!(cursors.check("ctx", &token).expect("an issued cursor"), pos);
});
