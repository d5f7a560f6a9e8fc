//! The test vectors of DESIGN §4 (`tests/vectors/witness.json`): a fixed key, a group,
//! a schema, four real changesets, and every head, state digest, certificate and a
//! snapshot manifest signature that follow from them.
//!
//! `vectors_match_the_design` re-derives every value in the file from the byte rules of
//! DESIGN §4, written out here with `blake3` and `ed25519-dalek` directly, replays the
//! changesets with the real session extension to recompute the state digests from the
//! rows themselves, and cross-checks each value against `pdb_client`'s own functions.
//! Finally it regenerates the whole document and requires the file to equal it byte for
//! byte, so any edit to the file fails.
//!
//! `the_witness_certifies_the_vector_heads_and_states` submits the same changesets to a
//! real `pdb-witness` (whose key is random) and requires the same heads and states.
//!
//! Regenerate the file (after a deliberate format change only) with
//!     cargo test -p pdb-tests --test vectors -- --ignored regenerate

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use pdb_client::cert::{self, Certificate, Hash};
use pdb_client::schema::{self, TableInfo};
use pdb_client::state::{self, StateVector};
use pdb_client::Value as CValue;
use pdb_tests::witness::{Commit, WitnessClient, WitnessProc};
use pdb_tests::{canonical, session_apply, to_client};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------
// The inputs (only the generator reads these; the checker reads the file).

/// RFC 8032 §7.1 TEST 1 secret key, so that the public key is checkable there too.
const SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

/// A group id using every kind of character a group id may hold.
const GROUP: &str = "pdb.vectors-1_A";

/// Three tables: `Zähler` sorts first by UTF-8 bytes (`Z` < `b`) though last without
/// regard to case; a TEXT key on a rowid table; an INTEGER PRIMARY KEY table with every
/// value type, a non-ASCII column name, a lower-case and a missing declared type; and a
/// composite WITHOUT ROWID key whose key order (tag, book) differs from column order.
/// (SQLite reports the standard type names INTEGER, REAL, TEXT, BLOB upper-cased however
/// they are written, so the lower-case types that test upper-casing are other names.)
const DDL: &str = r#"CREATE TABLE "Zähler" (name TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL);
CREATE TABLE bücher (
  id INTEGER PRIMARY KEY,
  title varchar(200) NOT NULL,
  "preis_€" Real,
  cover BLOB,
  notiz
);
CREATE TABLE tags (
  book INTEGER NOT NULL,
  tag TEXT NOT NULL,
  weight double precision DEFAULT 1.0,
  PRIMARY KEY (tag, book)
) WITHOUT ROWID;
CREATE INDEX tags_by_book ON tags(book);
"#;

/// The SQL each commit's changeset was recorded from (informative in the file).
fn commit_sql() -> Vec<String> {
    let long_title = "Der Zauberberg – ".repeat(8);
    let cover: String = (0u8..=199).map(|b| format!("{b:02x}")).collect();
    vec![
        // 1: inserts into all three tables.
        "INSERT INTO bücher VALUES (1, 'Faust', 12.5, x'00ff10', NULL);\n\
         INSERT INTO bücher VALUES (2, '東京物語', NULL, NULL, 42);\n\
         INSERT INTO bücher VALUES (3, 'naïve ☕', -3.0e-7, x'', 'ok');\n\
         INSERT INTO tags VALUES (1, 'klassiker', 1.0), (2, '日本', 0.5);\n\
         INSERT INTO \"Zähler\" VALUES ('bücher', 3);"
            .to_string(),
        // 2: updates (several columns, composite key, TEXT key) and an insert whose
        // title and cover need two-byte length varints, with extreme values.
        format!(
            "UPDATE bücher SET \"preis_€\" = 9.99, notiz = 'signiert' WHERE id = 1;\n\
             INSERT INTO bücher VALUES (4, '{long_title}', 1e308, x'{cover}', -9223372036854775808);\n\
             UPDATE tags SET weight = 2.25 WHERE tag = 'klassiker' AND book = 1;\n\
             UPDATE \"Zähler\" SET n = 4 WHERE name = 'bücher';"
        ),
        // 3: deletes, and an update back to an earlier value.
        "DELETE FROM bücher WHERE id = 2;\n\
         DELETE FROM tags WHERE book = 2;\n\
         UPDATE \"Zähler\" SET n = 3 WHERE name = 'bücher';"
            .to_string(),
        // 4: all three kinds at once; a negative key (sorts after positive ones: keys
        // compare as encoded bytes); two composite keys whose canonical order is by
        // column order (book 3 before book 4), not by key order ('a' before 'ü').
        "INSERT INTO bücher VALUES (-5, 'minus', NULL, NULL, 1.5);\n\
         UPDATE bücher SET title = 'naïve ☕☕', cover = NULL WHERE id = 3;\n\
         INSERT INTO tags VALUES (4, 'a', NULL), (3, 'ü', -1);\n\
         DELETE FROM \"Zähler\" WHERE name = 'bücher';\n\
         INSERT INTO \"Zähler\" VALUES ('tags', 3);"
            .to_string(),
    ]
}

/// `committed_at` of commit `seq` in the vectors.
fn committed_at(seq: u64) -> i64 {
    1_700_000_000_000 + 1000 * seq as i64
}

/// The stand-in snapshot file of the manifest vector: its BLAKE3 and size are arbitrary
/// fixed values (bytes 00..1f; a size whose eight big-endian bytes are all distinct and
/// which is below 2^53, so JSON readers of any language keep it exact).
const SNAPSHOT_FILE_BLAKE3: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SNAPSHOT_SIZE: u64 = 0x0000_0102_0304_0506;

// ---------------------------------------------------------------------------------
// Helpers shared by generator and checker (plain byte handling, no format rules).

fn vectors_path() -> PathBuf {
    pdb_tests::root().join("tests/vectors/witness.json")
}

/// Lower-case hex only: an upper-cased digit in the file is a change and must fail.
fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd-length hex {s:?}");
    let digit = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not lower-case hex: {s:?}"),
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| digit(p[0]) << 4 | digit(p[1]))
        .collect()
}

fn unhex32(s: &str) -> [u8; 32] {
    unhex(s).try_into().expect("32 bytes")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The user tables of `conn`, sorted by the UTF-8 bytes of their names.
fn table_names(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
        .unwrap();
    let mut names: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names.sort();
    names
}

/// The document as text: two-space indentation, object keys in byte order whatever
/// serde_json's map type, so that the file is reproducible byte for byte.
fn render(v: &Value) -> String {
    fn go(v: &Value, depth: usize, out: &mut String) {
        let pad = |out: &mut String, d: usize| out.push_str(&"  ".repeat(d));
        match v {
            Value::Object(m) if !m.is_empty() => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push_str("{\n");
                for (i, k) in keys.iter().enumerate() {
                    pad(out, depth + 1);
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push_str(": ");
                    go(&m[k.as_str()], depth + 1, out);
                    out.push_str(if i + 1 < keys.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push('}');
            }
            Value::Array(a) if !a.is_empty() => {
                out.push_str("[\n");
                for (i, x) in a.iter().enumerate() {
                    pad(out, depth + 1);
                    go(x, depth + 1, out);
                    out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    go(v, 0, &mut s);
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------
// The generator: uses pdb_client's functions (the implementation under test) and the
// session extension to record the changesets.

/// Every row of every table: (table, values), in table then encoding order.
fn rows_client(conn: &Connection) -> BTreeMap<Vec<u8>, (String, Vec<CValue>)> {
    let mut out = BTreeMap::new();
    for t in table_names(conn) {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {}", schema::quote(&t)))
            .unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let vals: Vec<CValue> = (0..n)
                .map(|i| to_client(row.get_ref(i).unwrap()).to_owned())
                .collect();
            let refs: Vec<_> = vals.iter().map(CValue::as_ref).collect();
            out.insert(state::row_encoding(&t, &refs), (t.clone(), vals));
        }
    }
    out
}

fn generate() -> Value {
    let key = SigningKey::from_bytes(&unhex32(SEED));
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    let infos: Vec<TableInfo> = table_names(&conn)
        .iter()
        .map(|t| schema::table_info(&conn, t).unwrap())
        .collect();
    let mut schema_input = b"pdb/v1 schema".to_vec();
    for t in &infos {
        t.hash_input(&mut schema_input);
    }
    let schema_hash = schema::schema_hash(&infos);
    assert_eq!(*blake3::hash(&schema_input).as_bytes(), schema_hash);
    let tables: Vec<Value> = infos
        .iter()
        .map(|t| {
            let cols: Vec<Value> = t
                .columns
                .iter()
                .map(|c| json!({"name": c.name, "type": c.decl_type, "pk": c.pk, "notnull": c.notnull}))
                .collect();
            json!({"name": t.name, "columns": cols})
        })
        .collect();

    let mut genesis_input = b"pdb/v1 genesis".to_vec();
    schema::put_str(&mut genesis_input, GROUP);
    let genesis = cert::genesis(GROUP);

    let mut prev = genesis;
    let mut state = StateVector::new();
    let mut commits = Vec::new();
    let mut last = (genesis, state.digest());
    for (i, sql) in commit_sql().iter().enumerate() {
        let seq = i as u64 + 1;
        let before = rows_client(&conn);
        let raw = {
            let mut s = rusqlite::session::Session::new(&conn).unwrap();
            s.attach(None::<&str>).unwrap();
            conn.execute_batch(sql).unwrap();
            let mut out = Vec::new();
            s.changeset_strm(&mut out).unwrap();
            out
        };
        let cs = canonical(&raw);
        let after = rows_client(&conn);
        let changeset_hash = *blake3::hash(&cs).as_bytes();
        let mut head_input = b"pdb/v1 head".to_vec();
        head_input.extend_from_slice(&prev);
        head_input.extend_from_slice(&seq.to_be_bytes());
        head_input.extend_from_slice(&changeset_hash);
        let head = cert::next_head(&prev, seq, &changeset_hash);

        let row_json = |enc: &Vec<u8>, table: &str, with_xof: bool| {
            let mut m = Map::new();
            m.insert("table".into(), table.into());
            m.insert("encoding".into(), cert::hex(enc).into());
            if with_xof {
                let mut h = blake3::Hasher::new();
                h.update(b"pdb/v1 row");
                h.update(enc);
                let mut xof = [0u8; 16];
                h.finalize_xof().fill(&mut xof);
                m.insert("element_first_16".into(), cert::hex(&xof).into());
            }
            Value::Object(m)
        };
        let mut removed = Vec::new();
        for (enc, (t, vals)) in before.iter().filter(|(e, _)| !after.contains_key(*e)) {
            state.remove_row(t, &vals.iter().map(CValue::as_ref).collect::<Vec<_>>());
            removed.push(row_json(enc, t, seq == 1));
        }
        let mut added = Vec::new();
        for (enc, (t, vals)) in after.iter().filter(|(e, _)| !before.contains_key(*e)) {
            state.add_row(t, &vals.iter().map(CValue::as_ref).collect::<Vec<_>>());
            added.push(row_json(enc, t, seq == 1));
        }
        let digest = state.digest();
        let idem = format!("vectors-{seq}");
        let c = Certificate::sign(
            &key,
            GROUP,
            seq,
            prev,
            head,
            digest,
            changeset_hash,
            &idem,
            committed_at(seq),
        );
        let message = cert::cert_message(GROUP, seq, &head, &digest);
        commits.push(json!({
            "seq": seq,
            "sql": sql,
            "changeset": cert::hex(&cs),
            "changeset_hash": cert::hex(&changeset_hash),
            "prev": cert::hex(&prev),
            "head_input": cert::hex(&head_input),
            "head": cert::hex(&head),
            "rows_removed": removed,
            "rows_added": added,
            "state": cert::hex(&digest),
            "idempotency_key": idem,
            "committed_at": committed_at(seq),
            "cert_message": cert::hex(&message),
            "signature": cert::hex(&c.signature),
            "signature_base64": b64(&c.signature),
            "certificate": Value::Object(c.to_json()),
        }));
        prev = head;
        last = (head, digest);
    }

    let seq = commits.len() as u64;
    let file_hash = unhex32(SNAPSHOT_FILE_BLAKE3);
    let mut message = b"pdb/v1 snapshot".to_vec();
    schema::put_str(&mut message, GROUP);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&last.0);
    message.extend_from_slice(&last.1);
    message.extend_from_slice(&file_hash);
    message.extend_from_slice(&SNAPSHOT_SIZE.to_be_bytes());
    let sig = key.sign(&message).to_bytes();

    json!({
        "about": "PersonalDB test vectors for DESIGN.md section 4 (heads, schema hash, state digest, certificates, snapshot manifest). See README.md beside this file.",
        "key": {
            "seed": SEED,
            "public": cert::hex(&key.verifying_key().to_bytes()),
        },
        "group": GROUP,
        "genesis": {
            "input": cert::hex(&genesis_input),
            "head": cert::hex(&genesis),
        },
        "schema": {
            "ddl": DDL,
            "tables": tables,
            "input": cert::hex(&schema_input),
            "hash": cert::hex(&schema_hash),
        },
        "empty_state": cert::hex(&StateVector::new().digest()),
        "commits": commits,
        "snapshot": {
            "group": GROUP,
            "seq": seq,
            "head": cert::hex(&last.0),
            "state": cert::hex(&last.1),
            "blake3": SNAPSHOT_FILE_BLAKE3,
            "size": SNAPSHOT_SIZE,
            "schema_hash": cert::hex(&schema_hash),
            "message": cert::hex(&message),
            "signature": cert::hex(&sig),
            "manifest": {
                "group": GROUP,
                "seq": seq,
                "head": cert::hex(&last.0),
                "state": cert::hex(&last.1),
                "size": SNAPSHOT_SIZE,
                "blake3": SNAPSHOT_FILE_BLAKE3,
                "schema_hash": cert::hex(&schema_hash),
                "signature": b64(&sig),
            },
        },
    })
}

/// Writes `tests/vectors/witness.json`. Run deliberately:
/// `cargo test -p pdb-tests --test vectors -- --ignored regenerate`.
#[test]
#[ignore = "rewrites tests/vectors/witness.json"]
fn regenerate_vectors() {
    let text = render(&generate());
    let path = vectors_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    eprintln!("wrote {}", path.display());
}

// ---------------------------------------------------------------------------------
// The checker: DESIGN §4 written out byte by byte, independently of pdb_client.

fn load() -> Value {
    let text = std::fs::read_to_string(vectors_path()).expect("tests/vectors/witness.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("string field {k}"))
}

fn h(v: &Value, k: &str) -> [u8; 32] {
    unhex32(s(v, k))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("integer field {k}"))
}

fn b3(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for p in parts {
        hasher.update(p);
    }
    *hasher.finalize().as_bytes()
}

/// `str(x)`: u16 big-endian byte length, then the UTF-8 bytes.
fn spec_str(x: &str) -> Vec<u8> {
    let mut out = (x.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(x.as_bytes());
    out
}

/// SQLite's varint (big-endian 7-bit groups; lengths here stay far below 2^56).
fn spec_varint(mut v: u64, out: &mut Vec<u8>) {
    let mut groups = vec![(v & 0x7f) as u8];
    v >>= 7;
    while v > 0 {
        groups.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    groups.reverse();
    out.extend_from_slice(&groups);
}

/// A value in changeset record format.
fn spec_value(v: ValueRef<'_>, out: &mut Vec<u8>) {
    match v {
        ValueRef::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_be_bytes());
        }
        ValueRef::Real(r) => {
            out.push(2);
            out.extend_from_slice(&r.to_bits().to_be_bytes());
        }
        ValueRef::Text(t) => {
            out.push(3);
            spec_varint(t.len() as u64, out);
            out.extend_from_slice(t);
        }
        ValueRef::Blob(b) => {
            out.push(4);
            spec_varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
        ValueRef::Null => out.push(5),
    }
}

/// Every row of every table as (table, `str(table) || values`), sorted by encoding;
/// each encoding is also checked against `pdb_client::state::row_encoding`.
fn spec_rows(conn: &Connection) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for t in table_names(conn) {
        let sql = format!("SELECT * FROM \"{}\"", t.replace('"', "\"\""));
        let mut stmt = conn.prepare(&sql).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let mut enc = spec_str(&t);
            let mut vals = Vec::new();
            for i in 0..n {
                let v = row.get_ref(i).unwrap();
                spec_value(v, &mut enc);
                vals.push(to_client(v));
            }
            assert_eq!(
                state::row_encoding(&t, &vals),
                enc,
                "pdb_client row encoding"
            );
            out.push((t.clone(), enc));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// A row's element: 2048 bytes of BLAKE3 XOF over `"pdb/v1 row" || encoding`.
fn spec_element(enc: &[u8]) -> [u8; 2048] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pdb/v1 row");
    hasher.update(enc);
    let mut out = [0u8; 2048];
    hasher.finalize_xof().fill(&mut out);
    out
}

/// The LtHash vector: 1024 u16 lanes, each element added (sign 1) or subtracted (-1).
fn spec_fold(lanes: &mut [u16; 1024], enc: &[u8], add: bool) {
    let e = spec_element(enc);
    for (i, lane) in lanes.iter_mut().enumerate() {
        let x = u16::from_le_bytes([e[2 * i], e[2 * i + 1]]);
        *lane = if add {
            lane.wrapping_add(x)
        } else {
            lane.wrapping_sub(x)
        };
    }
}

/// `state = BLAKE3("pdb/v1 state" || lanes as 2048 little-endian bytes)`.
fn spec_state(lanes: &[u16; 1024]) -> [u8; 32] {
    let bytes: Vec<u8> = lanes.iter().flat_map(|l| l.to_le_bytes()).collect();
    b3(&[b"pdb/v1 state", &bytes])
}

/// Checks one `{table, encoding}` list against rows recomputed from the database.
fn check_rows(listed: &Value, expected: &[&(String, Vec<u8>)], what: &str) -> Vec<Vec<u8>> {
    let listed = listed.as_array().unwrap_or_else(|| panic!("{what} list"));
    let got: Vec<(String, Vec<u8>)> = listed
        .iter()
        .map(|r| (s(r, "table").to_string(), unhex(s(r, "encoding"))))
        .collect();
    let want: Vec<(String, Vec<u8>)> = expected.iter().map(|&x| x.clone()).collect();
    assert_eq!(got, want, "{what}");
    for (t, enc) in &got {
        assert_eq!(
            &enc[..2 + t.len()],
            spec_str(t).as_slice(),
            "{what}: str(table)"
        );
    }
    got.into_iter().map(|(_, e)| e).collect()
}

#[test]
fn vectors_match_the_design() {
    let v = load();

    // The key: RFC 8032 TEST 1, so the public key is also the RFC's.
    let seed = h(&v["key"], "seed");
    let public = h(&v["key"], "public");
    let key = SigningKey::from_bytes(&seed);
    assert_eq!(key.verifying_key().to_bytes(), public);
    assert_eq!(
        cert::hex(&public),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    let vk = VerifyingKey::from_bytes(&public).unwrap();

    // Genesis: BLAKE3("pdb/v1 genesis" || str(group)).
    let group = s(&v, "group");
    let input = [b"pdb/v1 genesis".as_slice(), &spec_str(group)].concat();
    assert_eq!(unhex(s(&v["genesis"], "input")), input);
    let genesis = h(&v["genesis"], "head");
    assert_eq!(b3(&[&input]), genesis);
    assert_eq!(cert::genesis(group), genesis, "pdb_client genesis");

    // Schema hash, from the listed tables by the rule of DESIGN §4.
    let sch = &v["schema"];
    let mut input = b"pdb/v1 schema".to_vec();
    let tables = sch["tables"].as_array().unwrap();
    let names: Vec<&str> = tables.iter().map(|t| s(t, "name")).collect();
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(names, sorted, "tables in name order");
    for t in tables {
        input.extend_from_slice(&spec_str(s(t, "name")));
        let cols = t["columns"].as_array().unwrap();
        input.extend_from_slice(&(cols.len() as u16).to_be_bytes());
        for c in cols {
            input.extend_from_slice(&spec_str(s(c, "name")));
            input.extend_from_slice(&spec_str(&s(c, "type").to_ascii_uppercase()));
            input.push(u8::try_from(u(c, "pk")).unwrap());
            input.push(u8::from(c["notnull"].as_bool().unwrap()));
        }
    }
    assert_eq!(unhex(s(sch, "input")), input);
    let schema_hash = h(sch, "hash");
    assert_eq!(b3(&[&input]), schema_hash);
    // ... and the listed tables are what the DDL makes, as pdb_client reads them.
    let ddl = s(sch, "ddl");
    let db = Connection::open_in_memory().unwrap();
    db.execute_batch(ddl).unwrap();
    assert_eq!(table_names(&db), names);
    let infos: Vec<TableInfo> = names
        .iter()
        .map(|n| schema::table_info(&db, n).unwrap())
        .collect();
    for (t, info) in tables.iter().zip(&infos) {
        let cols: Vec<(String, String, u64, bool)> = t["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let nn = c["notnull"].as_bool().unwrap();
                (s(c, "name").into(), s(c, "type").into(), u(c, "pk"), nn)
            })
            .collect();
        let live: Vec<(String, String, u64, bool)> = info
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.decl_type.clone(),
                    u64::from(c.pk),
                    c.notnull,
                )
            })
            .collect();
        assert_eq!(cols, live, "table {}", info.name);
    }
    assert_eq!(
        schema::schema_hash(&infos),
        schema_hash,
        "pdb_client schema_hash"
    );

    let empty = [0u16; 1024];
    assert_eq!(h(&v, "empty_state"), spec_state(&empty));
    assert_eq!(h(&v, "empty_state"), StateVector::new().digest());

    // The commits, replayed with the real session extension on a fresh database.
    let mut prev = genesis;
    let mut incremental = [0u16; 1024];
    let commits = v["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 4);
    for (i, c) in commits.iter().enumerate() {
        let seq = u(c, "seq");
        assert_eq!(seq, i as u64 + 1);
        let cs = unhex(s(c, "changeset"));
        assert_eq!(cs[0], b'T', "a changeset payload starts with 'T'");
        assert_eq!(canonical(&cs), cs, "commit {seq}: canonical order");
        let ch = h(c, "changeset_hash");
        assert_eq!(b3(&[&cs]), ch);

        assert_eq!(h(c, "prev"), prev);
        let input = [b"pdb/v1 head".as_slice(), &prev, &seq.to_be_bytes(), &ch].concat();
        assert_eq!(unhex(s(c, "head_input")), input);
        let head = h(c, "head");
        assert_eq!(b3(&[&input]), head);
        assert_eq!(
            cert::next_head(&prev, seq, &ch),
            head,
            "pdb_client next_head"
        );

        let before = spec_rows(&db);
        session_apply(&db, &cs, "abort").unwrap_or_else(|e| panic!("commit {seq}: {e}"));
        let after = spec_rows(&db);
        let removed: Vec<_> = before.iter().filter(|r| !after.contains(r)).collect();
        let added: Vec<_> = after.iter().filter(|r| !before.contains(r)).collect();
        let removed = check_rows(&c["rows_removed"], &removed, "rows_removed");
        let added = check_rows(&c["rows_added"], &added, "rows_added");
        for enc in &removed {
            spec_fold(&mut incremental, enc, false);
        }
        for enc in &added {
            spec_fold(&mut incremental, enc, true);
        }
        // The element spot check, listed for the first commit's rows only.
        for r in c["rows_added"]
            .as_array()
            .unwrap()
            .iter()
            .chain(c["rows_removed"].as_array().unwrap())
        {
            match r.get("element_first_16") {
                Some(x) => {
                    assert_eq!(seq, 1);
                    let e = spec_element(&unhex(s(r, "encoding")));
                    assert_eq!(unhex(x.as_str().unwrap()), &e[..16]);
                }
                None => assert_ne!(seq, 1, "commit 1 lists element_first_16 for every row"),
            }
        }
        // state(n) from scratch over every row, by the rule and by pdb_client.
        let state = h(c, "state");
        let mut scratch = [0u16; 1024];
        let mut client = StateVector::new();
        for (_, enc) in &after {
            spec_fold(&mut scratch, enc, true);
        }
        for t in table_names(&db) {
            let sql = format!("SELECT * FROM {}", schema::quote(&t));
            let mut stmt = db.prepare(&sql).unwrap();
            let n = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                let vals: Vec<_> = (0..n).map(|i| to_client(row.get_ref(i).unwrap())).collect();
                client.add_row(&t, &vals);
            }
        }
        assert_eq!(
            spec_state(&scratch),
            state,
            "commit {seq}: state from scratch"
        );
        assert_eq!(
            spec_state(&incremental),
            state,
            "commit {seq}: state step by step"
        );
        assert_eq!(
            client.digest(),
            state,
            "commit {seq}: pdb_client StateVector"
        );

        // The certificate: message, deterministic Ed25519 signature, JSON.
        let message = [
            b"pdb/v1 cert".as_slice(),
            &spec_str(group),
            &seq.to_be_bytes(),
            &head,
            &state,
        ]
        .concat();
        assert_eq!(unhex(s(c, "cert_message")), message);
        assert_eq!(cert::cert_message(group, seq, &head, &state), message);
        let sig: [u8; 64] = unhex(s(c, "signature")).try_into().unwrap();
        assert_eq!(
            key.sign(&message).to_bytes(),
            sig,
            "Ed25519 is deterministic"
        );
        vk.verify(&message, &Signature::from_bytes(&sig)).unwrap();
        assert_eq!(s(c, "signature_base64"), b64(&sig));
        let idem = s(c, "idempotency_key");
        let at = c["committed_at"].as_i64().unwrap();
        let j = &c["certificate"];
        let want = json!({
            "group": group,
            "seq": seq,
            "prev": cert::hex(&prev),
            "head": cert::hex(&head),
            "state": cert::hex(&state),
            "changeset_hash": cert::hex(&ch),
            "idempotency_key": idem,
            "committed_at": at,
            "witness_key": cert::hex(&public),
            "signature": b64(&sig),
        });
        assert_eq!(j, &want, "commit {seq}: certificate JSON");
        let signed = Certificate::sign(&key, group, seq, prev, head, state, ch, idem, at);
        assert_eq!(Value::Object(signed.to_json()), want, "pdb_client to_json");
        let parsed = Certificate::from_json(j).unwrap();
        assert_eq!(parsed, signed);
        parsed.verify(&public, &cs).unwrap();

        prev = head;
    }

    // The snapshot manifest signature.
    let snap = &v["snapshot"];
    let last = commits.last().unwrap();
    assert_eq!(s(snap, "group"), group);
    let seq = u(snap, "seq");
    assert_eq!(seq, u(last, "seq"));
    assert_eq!(h(snap, "head"), h(last, "head"));
    assert_eq!(h(snap, "state"), h(last, "state"));
    assert_eq!(h(snap, "schema_hash"), schema_hash);
    let message = [
        b"pdb/v1 snapshot".as_slice(),
        &spec_str(group),
        &seq.to_be_bytes(),
        &h(snap, "head"),
        &h(snap, "state"),
        &h(snap, "blake3"),
        &u(snap, "size").to_be_bytes(),
    ]
    .concat();
    assert_eq!(unhex(s(snap, "message")), message);
    let sig: [u8; 64] = unhex(s(snap, "signature")).try_into().unwrap();
    assert_eq!(key.sign(&message).to_bytes(), sig);
    vk.verify(&message, &Signature::from_bytes(&sig)).unwrap();
    let manifest = json!({
        "group": group,
        "seq": seq,
        "head": s(snap, "head"),
        "state": s(snap, "state"),
        "size": u(snap, "size"),
        "blake3": s(snap, "blake3"),
        "schema_hash": s(snap, "schema_hash"),
        "signature": b64(&sig),
    });
    assert_eq!(snap["manifest"], manifest);
    // pdb_client's manifest reads the vector (plus the witness key it serves with it)
    // and verifies it, with the same message bytes.
    let mut served = manifest.as_object().unwrap().clone();
    served.insert("witness_key".into(), s(&v["key"], "public").into());
    let m = pdb_client::snapshot::Manifest::from_json(&Value::Object(served)).unwrap();
    assert_eq!(
        pdb_client::snapshot::snapshot_message(
            &m.group, m.seq, &m.head, &m.state, &m.blake3, m.size
        ),
        message
    );
    m.verify(&vk.to_bytes()).unwrap();

    // Everything else (the informative SQL, the wording), and the exact text.
    let text = std::fs::read_to_string(vectors_path()).unwrap();
    assert!(
        text == render(&generate()),
        "tests/vectors/witness.json differs from what the generator writes; if the format \
         changed on purpose, regenerate it (see the top of tests/tests/vectors.rs)"
    );
}

// ---------------------------------------------------------------------------------
// The real witness makes the same heads and states.

#[test]
fn the_witness_certifies_the_vector_heads_and_states() {
    let v = load();
    let group = s(&v, "group");
    let dir = std::env::temp_dir().join(format!("pdb-vectors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let w = WitnessProc::start(&dir);
    let client = w.admin_client();
    let r = client.create_group(group, s(&v["schema"], "ddl"));
    assert_eq!(r.status, 201, "{:?}", r.body);
    let ((seq0, head0), schema) = client.head(group);
    assert_eq!((seq0, head0), (0, h(&v["genesis"], "head")));
    assert_eq!(schema, h(&v["schema"], "hash"));

    let commits = v["commits"].as_array().unwrap();
    let mut base: (u64, Hash) = (0, head0);
    for c in commits {
        let cs = unhex(s(c, "changeset"));
        let r = client.commit(
            group,
            &Commit {
                changeset: &cs,
                base_seq: base.0,
                base_head: base.1,
                key: s(c, "idempotency_key"),
                schema,
                policy: Some("fast-forward"),
            },
        );
        assert_eq!(r.status, 201, "commit {}: {:?}", u(c, "seq"), r.body);
        let got = Certificate::from_json(&r.body).unwrap();
        let seq = u(c, "seq");
        assert_eq!(got.group, group);
        assert_eq!(got.seq, seq);
        assert_eq!(got.prev, h(c, "prev"), "commit {seq}: prev");
        assert_eq!(got.changeset_hash, h(c, "changeset_hash"));
        assert_eq!(got.head, h(c, "head"), "commit {seq}: head");
        assert_eq!(got.state, h(c, "state"), "commit {seq}: state digest");
        assert_eq!(got.idempotency_key, s(c, "idempotency_key"));
        assert_eq!(got.witness_key, w.key);
        got.verify(&w.key, &cs).unwrap();
        base = (seq, got.head);
    }

    // Pulls return the same history.
    let history = client.history(group);
    assert_eq!(history.len(), commits.len());
    for (p, c) in history.iter().zip(commits) {
        let got = Certificate::from_json(p).unwrap();
        assert_eq!(
            pdb_tests::witness::changeset_of(p),
            unhex(s(c, "changeset"))
        );
        assert_eq!((got.head, got.state), (h(c, "head"), h(c, "state")));
        got.verify(&w.key, &unhex(s(c, "changeset"))).unwrap();
    }
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}
