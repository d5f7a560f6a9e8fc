//! Nothing unverified is applied (DESIGN §7 invariant 5): a device pulling from a fake
//! witness that serves tampered history refuses each kind of tampering with its own
//! error and changes nothing, not even the part of a page that was fine.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use base64::Engine;
use ed25519_dalek::SigningKey;
use pdb_client::cert::{genesis, hex, next_head, Certificate, Hash};
use pdb_client::state::StateVector;
use pdb_client::ValueRef;
use pdb_tests::device::Device;
use pdb_tests::witness::record;
use rusqlite::types::Value;
use serde_json::{json, Value as Json};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)";

/// A witness impostor: answers group info and pull pages from what the test set.
struct Fake {
    url: String,
    info: Arc<Mutex<Json>>,
    page: Arc<Mutex<Json>>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let info = Arc::new(Mutex::new(Json::Null));
        let page = Arc::new(Mutex::new(Json::Null));
        let (i, p) = (info.clone(), page.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                // This witness has no snapshots: the history is all there is.
                let (status, body) = if request.contains("/snapshots") {
                    (
                        "404 Not Found",
                        json!({"code": "not_found", "detail": "no snapshot"}),
                    )
                } else if request.contains("/commits") {
                    ("200 OK", p.lock().unwrap().clone())
                } else {
                    ("200 OK", i.lock().unwrap().clone())
                };
                let body = body.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Fake { url, info, page }
    }
}

/// A history the fake serves: certificates signed by `key`, as a pull page.
struct History {
    key: SigningKey,
    certs: Vec<Certificate>,
    payloads: Vec<Vec<u8>>,
}

impl History {
    /// Commits of `sqls` on `notes`, each certified with the right state unless bent.
    fn new(key: SigningKey, sqls: &[&str]) -> History {
        let (mut prev, mut state, mut setup) = (genesis("g"), StateVector::new(), String::new());
        let mut h = History {
            key,
            certs: vec![],
            payloads: vec![],
        };
        let mut rows: std::collections::BTreeMap<i64, String> = Default::default();
        for (i, sql) in sqls.iter().enumerate() {
            let cs = record(DDL, &setup, sql);
            // The tests only insert (id, body) rows: the state follows from them.
            let conn = rusqlite::Connection::open_in_memory().unwrap();
            conn.execute_batch(DDL).unwrap();
            conn.execute_batch(&setup).unwrap();
            conn.execute_batch(sql).unwrap();
            let now: std::collections::BTreeMap<i64, String> = conn
                .prepare("SELECT id, body FROM notes")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for (id, body) in &rows {
                state.remove_row(
                    "notes",
                    &[ValueRef::Integer(*id), ValueRef::Text(body.as_bytes())],
                );
            }
            for (id, body) in &now {
                state.add_row(
                    "notes",
                    &[ValueRef::Integer(*id), ValueRef::Text(body.as_bytes())],
                );
            }
            rows = now;
            setup.push_str(sql);
            setup.push(';');
            let seq = i as u64 + 1;
            let hash = *blake3::hash(&cs).as_bytes();
            let head = next_head(&prev, seq, &hash);
            h.certs.push(Certificate::sign(
                &h.key,
                "g",
                seq,
                prev,
                head,
                state.digest(),
                hash,
                &format!("k{seq}"),
                0,
            ));
            h.payloads.push(cs);
            prev = head;
        }
        h
    }

    fn resign(&mut self, i: usize) {
        let c = &self.certs[i];
        self.certs[i] = Certificate::sign(
            &self.key,
            &c.group,
            c.seq,
            c.prev,
            c.head,
            c.state,
            c.changeset_hash,
            &c.idempotency_key,
            0,
        );
    }

    fn page(&self) -> Json {
        let last = self.certs.last().unwrap();
        let commits: Vec<Json> = self
            .certs
            .iter()
            .zip(&self.payloads)
            .map(|(c, p)| {
                let mut j = Json::Object(c.to_json());
                j["changeset"] = json!(base64::engine::general_purpose::STANDARD.encode(p));
                j
            })
            .collect();
        json!({"head": {"seq": last.seq, "head": hex(&last.head)}, "commits": commits})
    }
}

fn schema_hash() -> Hash {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    pdb_client::schema::schema_hash(&[pdb_client::schema::table_info(&conn, "notes").unwrap()])
}

#[test]
fn tampered_history_is_refused_and_nothing_is_applied() {
    let dir = std::env::temp_dir().join(format!("pdb-verify-pull-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let pinned = key.verifying_key().to_bytes();
    let fake = Fake::start();
    *fake.info.lock().unwrap() = json!({
        "seq": 0, "head": hex(&genesis("g")), "state": hex(&StateVector::new().digest()),
        "schema_hash": hex(&schema_hash()), "witness_key": hex(&pinned), "ddl": DDL,
    });
    let sqls = [
        "INSERT INTO notes VALUES (1, 'one')",
        "INSERT INTO notes VALUES (2, 'two')",
    ];
    let good = || History::new(key.clone(), &sqls);

    type Bend = Box<dyn Fn(&mut History)>;
    let cases: Vec<(&str, Bend, &str)> = vec![
        (
            "swapped changeset",
            Box::new(|h| h.payloads[1] = record(DDL, "", "INSERT INTO notes VALUES (2, 'evil')")),
            "changeset",
        ),
        (
            "forged signature",
            Box::new(|h| h.certs[1].signature[0] ^= 1),
            "signature",
        ),
        (
            "another witness",
            Box::new(|h| {
                let k = SigningKey::from_bytes(&[8; 32]);
                h.key = k.clone();
                h.resign(0);
                h.certs[0].witness_key = k.verifying_key().to_bytes();
            }),
            "witness",
        ),
        (
            "gap",
            Box::new(|h| {
                h.certs.remove(0);
                h.payloads.remove(0);
            }),
            "expected commit 1",
        ),
        (
            "fork",
            Box::new(|h| {
                h.certs[0].prev = [9; 32];
                h.certs[0].head = next_head(&[9; 32], 1, &h.certs[0].changeset_hash);
                h.resign(0);
            }),
            "different history",
        ),
        (
            "wrong state",
            Box::new(|h| {
                h.certs[1].state = [1; 32];
                h.resign(1);
            }),
            "state",
        ),
        (
            "malformed changeset",
            Box::new(|h| {
                let bad = b"T\x02\x01\x00notes\x00\x12\x00\x01".to_vec();
                h.certs[1].changeset_hash = *blake3::hash(&bad).as_bytes();
                h.certs[1].head = next_head(&h.certs[1].prev, 2, &h.certs[1].changeset_hash);
                h.payloads[1] = bad;
                h.resign(1);
            }),
            "malformed",
        ),
    ];

    let fresh = |name: &str| Device::new(&dir, name, DDL, &["notes"], &fake.url, "g", "t", &pinned);
    for (name, bend, want) in &cases {
        let mut h = good();
        bend(&mut h);
        *fake.page.lock().unwrap() = h.page();
        let d = fresh(&name.replace(' ', "-"));
        let err = d.try_json("SELECT pdb_pull()").expect_err(name);
        assert!(err.to_lowercase().contains(want), "{name}: {err}");
        assert_eq!(
            d.value("SELECT count(*) FROM notes"),
            Value::Integer(0),
            "{name}: rows applied"
        );
        assert_eq!(
            d.value("SELECT count(*) FROM pdb_commits"),
            Value::Integer(0),
            "{name}: certificates kept"
        );
        assert_eq!(d.json("SELECT pdb_head()")["seq"], 0, "{name}");
        assert!(d.status()["last_error"].as_str().is_some(), "{name}");
    }

    // The untampered history applies: the cases fail for their tampering alone.
    *fake.page.lock().unwrap() = good().page();
    let d = fresh("good");
    assert_eq!(d.json("SELECT pdb_pull()")["pulled"], 2);
    assert_eq!(d.json("SELECT pdb_verify()")["state"], "ok");
}
