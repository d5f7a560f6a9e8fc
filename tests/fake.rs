//! A witness impostor for tests of what a device does with answers no real witness
//! gives: it serves a genuine group history and snapshot (made the way the witness
//! makes them) bent one way per test, cut, throttled or left unanswered, and takes a
//! push answer from the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::SigningKey;
use pdb_client::cert::{genesis, hex, next_head, Certificate, Hash};
use pdb_client::snapshot::Manifest;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::{json, Value as Json};

use crate::device::Device;
use crate::witness::record;

/// The schema of the fake's group `g`.
pub const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);\
                   CREATE INDEX notes_body ON notes(body);";

/// The commits of the usual group: a few hundred rows, updated and deleted a little.
pub const HISTORY: [&str; 3] = [
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
     INSERT INTO notes SELECT i, 'note ' || i || ' ' || hex(zeroblob(40)) FROM n",
    "UPDATE notes SET body = 'edited' WHERE id % 7 = 0",
    "DELETE FROM notes WHERE id % 11 = 0",
];

/// The key the devices pin, which the fake signs with.
pub fn witness_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The public half of [`witness_key`].
pub fn pinned() -> [u8; 32] {
    witness_key().verifying_key().to_bytes()
}

/// The schema hash of [`DDL`]'s tables.
pub fn schema_hash() -> Hash {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    pdb_client::schema::schema_hash(&[pdb_client::schema::table_info(&conn, "notes").unwrap()])
}

/// A group's certified history and a genuine snapshot of its last head, made the way
/// the witness makes them.
pub struct Group {
    /// The replica at the last head.
    pub conn: Connection,
    /// Certificates with their changesets, seq 1 on.
    pub commits: Vec<(Certificate, Vec<u8>)>,
    /// The snapshot file's bytes.
    pub image: Vec<u8>,
    /// Its manifest, signed by the pinned key.
    pub manifest: Manifest,
}

impl Group {
    /// The history of `sqls` on [`DDL`], one commit each, and a snapshot of its end
    /// (`dir` holds the image while it is made).
    pub fn new(dir: &Path, sqls: &[&str]) -> Group {
        let key = witness_key();
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(DDL).unwrap();
        let tables = [pdb_client::schema::table_info(&conn, "notes").unwrap()];
        let (mut prev, mut setup, mut commits) = (genesis("g"), String::new(), Vec::new());
        for (i, sql) in sqls.iter().enumerate() {
            let cs = record(DDL, &setup, sql);
            conn.execute_batch(sql).unwrap();
            setup.push_str(sql);
            setup.push(';');
            let (seq, hash) = (i as u64 + 1, *blake3::hash(&cs).as_bytes());
            let head = next_head(&prev, seq, &hash);
            let state = pdb_client::history::state_of(&conn, &tables)
                .unwrap()
                .digest();
            let cert = Certificate::sign(&key, "g", seq, prev, head, state, hash, "k", 0);
            commits.push((cert, cs));
            prev = head;
        }
        let file = dir.join(format!("image-{}.db", blake3::hash(setup.as_bytes())));
        conn.execute("VACUUM INTO ?1", [file.to_str().unwrap()])
            .unwrap();
        let image = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        let manifest = sign(&key, &commits.last().unwrap().0, &image);
        Group {
            conn,
            commits,
            image,
            manifest,
        }
    }

    /// The last certificate.
    pub fn last(&self) -> &Certificate {
        &self.commits.last().unwrap().0
    }
}

/// A manifest of `image` at `cert`'s seq, head and state, signed by `key`.
pub fn sign(key: &SigningKey, cert: &Certificate, image: &[u8]) -> Manifest {
    let hash = *blake3::hash(image).as_bytes();
    let size = image.len() as u64;
    Manifest::sign(
        key,
        "g",
        cert.seq,
        cert.head,
        cert.state,
        size,
        hash,
        schema_hash(),
        1,
    )
}

/// A manifest as the witness serves it.
pub fn manifest_json(m: &Manifest) -> String {
    Json::Object(m.to_json()).to_string()
}

/// What the fake witness serves, and what it saw.
#[derive(Default)]
pub struct Serve {
    /// `GET /v1/groups/g`.
    pub info: Json,
    /// The body of `GET /v1/groups/g/snapshots/latest`; `None` answers 404 `not_found`.
    pub manifest: Option<String>,
    /// Certificates with `changeset`, as pull pages carry them.
    pub commits: Vec<Json>,
    /// The answer (200) to `POST /v1/groups/g/commits`; `None` answers 404.
    pub push: Option<Json>,
    /// The bytes served at any `/v1/objects/...`.
    pub object: Arc<Vec<u8>>,
    /// Whether `Range: bytes=N-` is honoured (206) or ignored (200, whole object).
    pub ranges: bool,
    /// The connection closes once the object's bytes before this offset are sent
    /// (the headers still announce the full length).
    pub cut_at: Option<usize>,
    /// Once the object's bytes before this offset are sent, the connection stays
    /// open and silent (a stalled witness); a request from there on gets only the
    /// headers.
    pub stall_at: Option<usize>,
    /// A pause after each chunk of an object.
    pub throttle: Option<Duration>,
    /// The size of those chunks (64 KiB when 0).
    pub chunk: usize,
    /// Requests of these paths (`/v1/objects/` for every object) are read, then
    /// answered after the pause, or never (`None`: the connection stays open and
    /// silent).
    pub hold: Vec<(String, Option<Duration>)>,
    /// Every `Range` header of an object request.
    pub ranges_seen: Vec<String>,
}

/// A witness impostor answering canned HTTP, one thread per connection.
pub struct Fake {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    serve: Arc<Mutex<Serve>>,
}

impl Fake {
    /// A witness of group `g` with no commits and no snapshot yet.
    pub fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let serve = Arc::new(Mutex::new(Serve {
            info: info(None),
            ..Serve::default()
        }));
        let s = serve.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = answer(stream, &s);
                });
            }
        });
        Fake { url, serve }
    }

    /// Serves `g`'s history, manifest and image as they are.
    pub fn publish(&self, g: &Group) {
        self.set(|s| {
            s.info = info(Some(g.last()));
            s.commits = g
                .commits
                .iter()
                .map(|(c, cs)| {
                    let mut j = Json::Object(c.to_json());
                    j["changeset"] = json!(base64::engine::general_purpose::STANDARD.encode(cs));
                    j
                })
                .collect();
            s.manifest = Some(manifest_json(&g.manifest));
            s.object = Arc::new(g.image.clone());
        });
    }

    /// Changes what is served.
    pub fn set(&self, f: impl FnOnce(&mut Serve)) {
        f(&mut self.serve.lock().unwrap());
    }

    /// Every `Range` header of an object request so far.
    pub fn ranges_seen(&self) -> Vec<String> {
        self.serve.lock().unwrap().ranges_seen.clone()
    }
}

/// Group info as the witness serves it (`group_json` of server-min).
pub fn info(head: Option<&Certificate>) -> Json {
    let (seq, hash, state) = head.map_or(
        (
            0,
            genesis("g"),
            pdb_client::state::StateVector::new().digest(),
        ),
        |c| (c.seq, c.head, c.state),
    );
    json!({
        "group": "g", "seq": seq, "head": hex(&hash), "state": hex(&state),
        "schema_hash": hex(&schema_hash()), "witness_key": hex(&pinned()), "ddl": DDL,
        "tables": ["notes"],
    })
}

/// Keeps a connection open without a word until the device gives up on it (or a
/// minute passes, so that no test leaves a thread behind for long).
fn silence(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink)? > 0 {}
    Ok(())
}

fn answer(mut stream: TcpStream, serve: &Mutex<Serve>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let (mut range, mut length) = (None, 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? <= 2 {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    // A push's body is read before the answer: closing on unread bytes would reset
    // the connection under the answer.
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let target = request.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let hold = serve.lock().unwrap().hold.iter().find_map(|(p, pause)| {
        let matches = path == p || (p.ends_with('/') && path.starts_with(p.as_str()));
        matches.then_some(*pause)
    });
    match hold {
        Some(None) => return silence(stream),
        Some(Some(pause)) => std::thread::sleep(pause),
        None => {}
    }
    if path.starts_with("/v1/objects/") {
        return object(stream, serve, range);
    }
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let not_found = || {
        let body = json!({"code": "not_found", "detail": "no such thing"});
        ("404 Not Found", body.to_string())
    };
    let s = serve.lock().unwrap();
    let (status, body) = match path {
        "/v1/groups/g" => ("200 OK", s.info.to_string()),
        "/v1/groups/g/snapshots/latest" => match &s.manifest {
            Some(m) => ("200 OK", m.clone()),
            None => not_found(),
        },
        "/v1/groups/g/commits" if request.starts_with("POST") => match &s.push {
            Some(answer) => ("200 OK", answer.to_string()),
            None => not_found(),
        },
        "/v1/groups/g/commits" => {
            let after = param("after").unwrap_or(0);
            let limit = param("limit").unwrap_or(100) as usize;
            let seq = |c: &Json| c["seq"].as_u64().unwrap();
            let commits: Vec<&Json> = s
                .commits
                .iter()
                .filter(|c| seq(c) > after)
                .take(limit)
                .collect();
            let head =
                json!({"seq": s.info["seq"], "head": s.info["head"], "state": s.info["state"]});
            let page = json!({"group": "g", "head": head, "commits": commits});
            ("200 OK", page.to_string())
        }
        _ => not_found(),
    };
    drop(s);
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves the object, from the requested offset when ranges are on, cut, stalled and
/// throttled as set.
fn object(
    mut stream: TcpStream,
    serve: &Mutex<Serve>,
    range: Option<String>,
) -> std::io::Result<()> {
    let (bytes, ranges, cut_at, stall_at, throttle, chunk) = {
        let mut s = serve.lock().unwrap();
        s.ranges_seen.extend(range.clone());
        let chunk = if s.chunk == 0 { 64 << 10 } else { s.chunk };
        (
            s.object.clone(),
            s.ranges,
            s.cut_at,
            s.stall_at,
            s.throttle,
            chunk,
        )
    };
    let size = bytes.len();
    let from = range
        .filter(|_| ranges)
        .and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        })
        .filter(|&n| n < size);
    let head = match from {
        Some(n) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{size}\r\nContent-Length: {}\r\n",
            size - 1,
            size - n
        ),
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"),
    };
    write!(
        stream,
        "{head}Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    )?;
    let start = from.unwrap_or(0);
    let end = cut_at
        .into_iter()
        .chain(stall_at)
        .fold(size, usize::min)
        .max(start);
    for piece in bytes[start..end].chunks(chunk) {
        stream.write_all(piece)?;
        stream.flush()?;
        if let Some(t) = throttle {
            std::thread::sleep(t);
        }
    }
    if stall_at.is_some_and(|s| s < size) {
        return silence(stream);
    }
    // Dropping the stream closes the connection, early when the body was cut.
    stream.flush()
}

/// A device with nothing: no table, nothing tracked; `pdb_open` on the fake (which
/// bootstraps at once when the fake has a snapshot).
pub fn bare(fake: &Fake, dir: &Path, name: &str) -> Device {
    Device::new(dir, name, "", &[], &fake.url, "g", "t", &pinned())
}

/// Download files beside the device's database, with their lengths.
pub fn downloads(d: &Device) -> Vec<(String, u64)> {
    let prefix = format!("{}-pdb-", d.path.file_name().unwrap().to_string_lossy());
    let mut found: Vec<(String, u64)> = std::fs::read_dir(d.path.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".snapshot"))
        .map(|n| {
            let len = std::fs::metadata(d.path.with_file_name(&n)).unwrap().len();
            (n, len)
        })
        .collect();
    found.sort();
    found
}

/// The download file `m`'s image goes to.
pub fn download_name(d: &Device, m: &Manifest) -> String {
    let db = d.path.file_name().unwrap().to_string_lossy().into_owned();
    format!("{db}-pdb-{}.snapshot", &hex(&m.blake3)[..16])
}

/// Nothing of the group is on the device: no tables, no head, no certificates, no
/// attached image, no progress shown.
pub fn nothing_installed(d: &Device) {
    let count = |sql: &str| match d.value(sql) {
        Value::Integer(n) => n,
        v => panic!("{sql}: {v:?}"),
    };
    assert_eq!(
        count("SELECT count(*) FROM sqlite_schema WHERE name IN ('notes', 'notes_body')"),
        0,
        "tables installed"
    );
    assert_eq!(
        count("SELECT count(*) FROM pragma_database_list WHERE name NOT IN ('main', 'temp')"),
        0,
        "the image is still attached"
    );
    if count("SELECT count(*) FROM sqlite_schema WHERE name = 'pdb_commits'") > 0 {
        assert_eq!(
            count("SELECT count(*) FROM pdb_commits"),
            0,
            "certificates kept"
        );
    }
    let status = d.status();
    assert_eq!(status["head"]["seq"], 0, "{status}");
    assert_eq!(status["progress"], Json::Null, "{status}");
}

/// The device holds the group's snapshot: its rows and index, the head, a verified
/// chain, nothing in progress and no download file left.
pub fn installed(d: &Device, g: &Group) {
    assert_eq!(d.dump("notes"), crate::dump(&g.conn, "notes"));
    assert_eq!(
        d.value("SELECT count(*) FROM sqlite_schema WHERE name = 'notes_body'"),
        Value::Integer(1)
    );
    let status = d.status();
    assert_eq!(status["head"]["seq"], g.last().seq, "{status}");
    assert_eq!(status["head"]["head"], hex(&g.last().head), "{status}");
    assert_eq!(status["last_error"], Json::Null, "{status}");
    assert_eq!(status["progress"], Json::Null, "{status}");
    let v = d.json("SELECT pdb_verify()");
    assert_eq!(v["state"], "ok", "{v}");
    assert_eq!(downloads(d), vec![], "the image is removed once installed");
}
