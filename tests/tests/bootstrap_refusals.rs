//! Starting from a snapshot refuses what it cannot verify (DESIGN §4, §6, §7 invariant
//! 5), against a fake witness that serves a genuine group history and snapshot bent one
//! way per test.
//!
//! A device with nothing of the group installs a snapshot only after its manifest's
//! signature (by the pinned witness), its head against the certified history, the
//! image's size and BLAKE3, and the state digest of the image's rows all check out.
//! Each bad input is refused with its own clear error, by `pdb_open` (in
//! `pdb_status().last_error`) and by `pdb_bootstrap()`, and leaves nothing behind: no
//! tables, no head, no certificates, no attached image, no refused download file. A
//! download cut short keeps its bytes and resumes from them with a `Range` request, on
//! the same connection or a new one, and `pdb_status()` shows the download's progress
//! from another connection while it runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use ed25519_dalek::SigningKey;
use pdb_client::cert::{genesis, hex, next_head, Certificate, Hash};
use pdb_client::snapshot::Manifest;
use pdb_tests::device::Device;
use pdb_tests::witness::record;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::{json, Value as Json};

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);\
                   CREATE INDEX notes_body ON notes(body);";

/// The commits of the usual group: a few hundred rows, updated and deleted a little.
const HISTORY: [&str; 3] = [
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
     INSERT INTO notes SELECT i, 'note ' || i || ' ' || hex(zeroblob(40)) FROM n",
    "UPDATE notes SET body = 'edited' WHERE id % 7 = 0",
    "DELETE FROM notes WHERE id % 11 = 0",
];

/// The key the devices pin, which the fake signs with.
fn witness_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn pinned() -> [u8; 32] {
    witness_key().verifying_key().to_bytes()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pdb-bootstrap-refusals-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn schema_hash() -> Hash {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    pdb_client::schema::schema_hash(&[pdb_client::schema::table_info(&conn, "notes").unwrap()])
}

/// A group's certified history and a genuine snapshot of its last head, made the way
/// the witness makes them.
struct Group {
    /// The replica at the last head.
    conn: Connection,
    /// Certificates with their changesets, seq 1 on.
    commits: Vec<(Certificate, Vec<u8>)>,
    /// The snapshot file's bytes.
    image: Vec<u8>,
    /// Its manifest, signed by the pinned key.
    manifest: Manifest,
}

impl Group {
    fn new(dir: &Path, sqls: &[&str]) -> Group {
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

    fn last(&self) -> &Certificate {
        &self.commits.last().unwrap().0
    }
}

/// A manifest of `image` at `cert`'s seq, head and state, signed by `key`.
fn sign(key: &SigningKey, cert: &Certificate, image: &[u8]) -> Manifest {
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

fn manifest_json(m: &Manifest) -> String {
    Json::Object(m.to_json()).to_string()
}

/// What the fake witness serves, and what it saw.
#[derive(Default)]
struct Serve {
    /// `GET /v1/groups/g`.
    info: Json,
    /// The body of `GET /v1/groups/g/snapshots/latest`; `None` answers 404 `not_found`.
    manifest: Option<String>,
    /// Certificates with `changeset`, as pull pages carry them.
    commits: Vec<Json>,
    /// The bytes served at any `/v1/objects/...`.
    object: Arc<Vec<u8>>,
    /// Whether `Range: bytes=N-` is honoured (206) or ignored (200, whole object).
    ranges: bool,
    /// The connection closes once the object's bytes before this offset are sent
    /// (the headers still announce the full length).
    cut_at: Option<usize>,
    /// A pause after each 64 KiB of an object.
    throttle: Option<Duration>,
    /// Every `Range` header of an object request.
    ranges_seen: Vec<String>,
}

/// A witness impostor answering canned HTTP, one thread per connection.
struct Fake {
    url: String,
    serve: Arc<Mutex<Serve>>,
}

impl Fake {
    /// A witness of group `g` with no commits and no snapshot yet.
    fn start() -> Fake {
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
    fn publish(&self, g: &Group) {
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

    fn set(&self, f: impl FnOnce(&mut Serve)) {
        f(&mut self.serve.lock().unwrap());
    }

    fn ranges_seen(&self) -> Vec<String> {
        self.serve.lock().unwrap().ranges_seen.clone()
    }
}

/// Group info as the witness serves it (`group_json` of server-min).
fn info(head: Option<&Certificate>) -> Json {
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

fn answer(mut stream: TcpStream, serve: &Mutex<Serve>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? <= 2 {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
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

/// Serves the object, from the requested offset when ranges are on, cut and
/// throttled as set.
fn object(
    mut stream: TcpStream,
    serve: &Mutex<Serve>,
    range: Option<String>,
) -> std::io::Result<()> {
    let (bytes, ranges, cut_at, throttle) = {
        let mut s = serve.lock().unwrap();
        s.ranges_seen.extend(range.clone());
        (s.object.clone(), s.ranges, s.cut_at, s.throttle)
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
    let end = cut_at.map_or(size, |c| c.clamp(start, size));
    for chunk in bytes[start..end].chunks(64 << 10) {
        stream.write_all(chunk)?;
        if let Some(t) = throttle {
            std::thread::sleep(t);
        }
    }
    // Dropping the stream closes the connection, early when the body was cut.
    stream.flush()
}

/// A device with nothing: no table, nothing tracked; `pdb_open` on the fake (which
/// bootstraps at once when the fake has a snapshot).
fn bare(fake: &Fake, dir: &Path, name: &str) -> Device {
    Device::new(dir, name, "", &[], &fake.url, "g", "t", &pinned())
}

/// Download files beside the device's database, with their lengths.
fn downloads(d: &Device) -> Vec<(String, u64)> {
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
fn download_name(d: &Device, m: &Manifest) -> String {
    let db = d.path.file_name().unwrap().to_string_lossy().into_owned();
    format!("{db}-pdb-{}.snapshot", &hex(&m.blake3)[..16])
}

/// Nothing of the group is on the device: no tables, no head, no certificates, no
/// attached image, no progress shown.
fn nothing_installed(d: &Device) {
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

/// A bare device opened on `fake` refuses its snapshot with an error containing
/// `want`, in `pdb_open`, `pdb_bootstrap()` and `pdb_sync()`, and keeps nothing of it,
/// not even the download file. Returns `pdb_bootstrap()`'s error.
fn refused(fake: &Fake, dir: &Path, name: &str, want: &str) -> String {
    let d = bare(fake, dir, name);
    let status = d.status();
    let open_error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        open_error.starts_with("snapshot refused:"),
        "{name}: pdb_open: {status}"
    );
    assert!(open_error.contains(want), "{name}: pdb_open: {status}");
    nothing_installed(&d);
    let err = d.try_json("SELECT pdb_bootstrap()").expect_err(name);
    assert!(err.contains("snapshot refused:"), "{name}: {err}");
    assert!(err.contains(want), "{name}: {err}");
    assert!(err.contains("nothing installed"), "{name}: {err}");
    nothing_installed(&d);
    assert_eq!(
        downloads(&d),
        vec![],
        "{name}: a refused image stays on disk"
    );
    // A sync refuses it as well: it never falls back to replaying beside the snapshot.
    let err = d.try_json("SELECT pdb_sync()").expect_err(name);
    assert!(err.contains(want), "{name}: pdb_sync: {err}");
    nothing_installed(&d);
    err
}

/// The device holds the group's snapshot: its rows and index, the head, a verified
/// chain, nothing in progress and no download file left.
fn installed(d: &Device, g: &Group) {
    assert_eq!(d.dump("notes"), pdb_tests::dump(&g.conn, "notes"));
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

#[test]
fn tampered_bytes_are_refused_by_their_hash() {
    let dir = scratch("tampered");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let mut bad = g.image.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    fake.set(|s| s.object = Arc::new(bad));
    refused(
        &fake,
        &dir,
        "d",
        "the downloaded bytes hash to something else",
    );
}

#[test]
fn a_manifest_changed_after_signing_is_refused() {
    let dir = scratch("resigned");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // Another image under the genuine signature: the manifest names its hash.
    let other = Group::new(&dir, &HISTORY[..1]);
    let mut m = g.manifest.to_json();
    m.insert(
        "blake3".into(),
        hex(blake3::hash(&other.image).as_bytes()).into(),
    );
    m.insert("size".into(), other.image.len().into());
    fake.set(|s| {
        s.manifest = Some(Json::Object(m).to_string());
        s.object = Arc::new(other.image.clone());
    });
    let err = refused(&fake, &dir, "d", "bad witness signature");
    assert!(
        err.contains(&format!("snapshot manifest of seq {}", g.last().seq)),
        "{err}"
    );
}

#[test]
fn a_manifest_of_another_witness_is_refused() {
    let dir = scratch("witness");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let other = SigningKey::from_bytes(&[8; 32]);
    let m = sign(&other, g.last(), &g.image);
    fake.set(|s| s.manifest = Some(manifest_json(&m)));
    let err = refused(&fake, &dir, "named", "not the pinned");
    assert!(
        err.contains(&hex(&other.verifying_key().to_bytes())),
        "{err}"
    );
    // Signed by the other key while naming the pinned one: the signature fails.
    let mut m = m.to_json();
    m.insert("witness_key".into(), hex(&pinned()).into());
    fake.set(|s| s.manifest = Some(Json::Object(m).to_string()));
    refused(&fake, &dir, "claimed", "bad witness signature");
}

#[test]
fn a_manifest_head_outside_the_certified_history_is_refused() {
    let dir = scratch("fork");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // A fork at the same seq, signed by the pinned key, with its own genuine image:
    // every check but the certified head would pass.
    let fork = Group::new(
        &dir,
        &[HISTORY[0], "DELETE FROM notes WHERE id < 100", HISTORY[2]],
    );
    assert_eq!(fork.last().seq, g.last().seq);
    fake.set(|s| {
        s.manifest = Some(manifest_json(&fork.manifest));
        s.object = Arc::new(fork.image.clone());
    });
    let err = refused(&fake, &dir, "d", "is not the certified head");
    assert!(err.contains(&hex(&fork.last().head)), "{err}");
    assert!(err.contains(&hex(&g.last().head)), "{err}");
    assert!(
        err.contains("not in the history this device trusts"),
        "{err}"
    );
}

/// Serves `g`'s image changed by `sql`, under a manifest of it signed by the pinned
/// key at `g`'s last certificate: only the image's content can give it away.
fn publish_edited(fake: &Fake, dir: &Path, g: &Group, sql: &str) {
    let file = dir.join("edited.db");
    std::fs::write(&file, &g.image).unwrap();
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    let bad = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let m = sign(&witness_key(), g.last(), &bad);
    fake.set(|s| {
        s.manifest = Some(manifest_json(&m));
        s.object = Arc::new(bad);
    });
}

#[test]
fn an_image_whose_rows_differ_from_the_certified_state_is_refused() {
    let dir = scratch("state");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // The image holds one row more than the certified state; manifest and certificate
    // agree and are signed, and the image matches the manifest's size and hash.
    publish_edited(
        &fake,
        &dir,
        &g,
        "INSERT INTO notes VALUES (1000, 'smuggled')",
    );
    let err = refused(&fake, &dir, "d", "state digest");
    assert!(err.contains(&hex(&g.last().state)), "{err}");
}

#[test]
fn an_image_whose_schema_was_written_by_hand_is_refused() {
    let dir = scratch("schema");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    // Rows and schema hash as certified, the manifest signed and matching the bytes;
    // only a field of the schema table is no longer what SQLite writes there.
    publish_edited(
        &fake,
        &dir,
        &g,
        "PRAGMA writable_schema = ON; \
         UPDATE sqlite_schema SET tbl_name = CAST(tbl_name AS BLOB) WHERE name = 'notes'; \
         PRAGMA writable_schema = OFF;",
    );
    refused(
        &fake,
        &dir,
        "d",
        "the tbl_name of entry \"notes\" is not UTF-8 text",
    );
}

#[test]
fn a_manifest_that_is_not_json_or_lacks_a_field_is_refused() {
    let dir = scratch("malformed");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let mut cases = vec![(
        "garbage",
        "<html>maintenance</html>".to_string(),
        "not JSON".to_string(),
    )];
    for field in ["blake3", "signature", "seq"] {
        let mut m = g.manifest.to_json();
        m.remove(field);
        cases.push((
            field,
            Json::Object(m).to_string(),
            format!("field \"{field}\""),
        ));
    }
    let mut m = g.manifest.to_json();
    m.insert("size".into(), json!("big"));
    cases.push(("size", Json::Object(m).to_string(), "field \"size\"".into()));
    for (name, body, want) in cases {
        fake.set(|s| s.manifest = Some(body));
        let d = bare(&fake, &dir, name);
        let status = d.status();
        let open_error = status["last_error"].as_str().unwrap_or_default();
        assert!(open_error.contains(&want), "{name}: pdb_open: {status}");
        nothing_installed(&d);
        let err = d.try_json("SELECT pdb_bootstrap()").expect_err(name);
        assert!(err.contains(&want), "{name}: {err}");
        if name != "garbage" {
            assert!(err.contains("manifest"), "{name}: {err}");
        }
        nothing_installed(&d);
        assert_eq!(downloads(&d), vec![], "{name}");
    }
}

#[test]
fn a_cut_download_keeps_its_bytes_and_resumes_with_a_range_request() {
    let dir = scratch("cut");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let (size, cut) = (g.image.len(), g.image.len() / 3);
    // A witness that drops the connection at a third, and ignores ranges meanwhile.
    fake.set(|s| s.cut_at = Some(cut));
    let d = bare(&fake, &dir, "d");
    let stopped = format!("snapshot download stopped at {cut} of {size} bytes");
    let status = d.status();
    let open_error = status["last_error"].as_str().unwrap_or_default();
    assert!(open_error.contains(&stopped), "{status}");
    assert!(open_error.contains("it resumes from there"), "{status}");
    nothing_installed(&d);
    let file = download_name(&d, &g.manifest);
    assert_eq!(downloads(&d), vec![(file.clone(), cut as u64)]);
    // Asked again, it resumes (the fake ignores the range and cuts again).
    let err = d.try_json("SELECT pdb_bootstrap()").unwrap_err();
    assert!(err.contains(&stopped), "{err}");
    assert!(fake.ranges_seen().contains(&format!("bytes={cut}-")));
    nothing_installed(&d);
    assert_eq!(downloads(&d), vec![(file, cut as u64)]);

    // Once the witness serves the rest, only the rest is asked for.
    fake.set(|s| {
        s.cut_at = None;
        s.ranges = true;
        s.ranges_seen.clear();
    });
    let s = d.json("SELECT pdb_bootstrap()");
    assert_eq!(
        s["bootstrapped"],
        json!({"seq": g.last().seq, "bytes": size, "resumed": cut, "conflicts": 0}),
        "{s}"
    );
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={cut}-")]);
    installed(&d, &g);
    // Nothing came after the snapshot: a sync pulls nothing and still verifies.
    let s = d.sync();
    assert_eq!(s["pulled"], 0, "{s}");
    installed(&d, &g);
}

#[test]
fn a_cut_download_resumes_on_a_new_connection() {
    let dir = scratch("restart");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let (size, cut) = (g.image.len(), g.image.len() / 2);
    fake.set(|s| {
        s.cut_at = Some(cut);
        s.ranges = true;
    });
    let d = bare(&fake, &dir, "d");
    let status = d.status();
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("stopped at {cut} of {size} bytes")),
        "{status}"
    );
    nothing_installed(&d);
    assert_eq!(
        downloads(&d),
        vec![(download_name(&d, &g.manifest), cut as u64)]
    );
    let path = d.path.clone();
    drop(d);

    // The application starts again: a new connection, no pdb_open.
    fake.set(|s| {
        s.cut_at = None;
        s.ranges_seen.clear();
    });
    let conn = Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    pdb_tests::load(&conn);
    let d = Device { conn, path };
    let s = d.json("SELECT pdb_bootstrap()");
    assert_eq!(s["bootstrapped"]["resumed"], cut, "{s}");
    assert_eq!(s["bootstrapped"]["bytes"], size, "{s}");
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={cut}-")]);
    installed(&d, &g);
}

#[test]
fn a_witness_that_ignores_ranges_sends_the_whole_image_again() {
    let dir = scratch("no-ranges");
    let fake = Fake::start();
    let g = Group::new(&dir, &HISTORY);
    fake.publish(&g);
    let (size, cut) = (g.image.len(), g.image.len() / 3);
    fake.set(|s| s.cut_at = Some(cut));
    let d = bare(&fake, &dir, "d");
    assert_eq!(
        downloads(&d),
        vec![(download_name(&d, &g.manifest), cut as u64)]
    );
    fake.set(|s| {
        s.cut_at = None;
        s.ranges_seen.clear();
    });
    // Asked for the rest, the witness sends all of it (200): the earlier bytes are
    // dropped, and the summary does not claim them.
    let s = d.json("SELECT pdb_bootstrap()");
    assert_eq!(fake.ranges_seen(), vec![format!("bytes={cut}-")]);
    assert_eq!(
        s["bootstrapped"],
        json!({"seq": g.last().seq, "bytes": size, "resumed": 0, "conflicts": 0}),
        "{s}"
    );
    installed(&d, &g);
}

#[test]
fn progress_shows_the_download_while_it_runs() {
    let dir = scratch("progress");
    let fake = Fake::start();
    // No snapshot yet: pdb_open installs nothing.
    let d = bare(&fake, &dir, "d");
    nothing_installed(&d);
    let g = Group::new(
        &dir,
        &[
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) \
           INSERT INTO notes SELECT i, i || hex(zeroblob(500)) FROM n",
        ],
    );
    let size = g.image.len() as u64;
    assert!(
        size > 2 << 20,
        "the image must span several progress reports: {size}"
    );
    fake.publish(&g);
    fake.set(|s| s.throttle = Some(Duration::from_millis(10)));

    let watcher = Connection::open(&d.path).unwrap();
    watcher.busy_timeout(Duration::from_secs(10)).unwrap();
    pdb_tests::load(&watcher);
    let worker = std::thread::spawn(move || {
        let s = d.json("SELECT pdb_bootstrap()");
        (s, d)
    });
    let mut seen: Vec<Json> = Vec::new();
    while !worker.is_finished() {
        let status: String = watcher
            .query_row("SELECT pdb_status()", [], |r| r.get(0))
            .unwrap();
        let status: Json = serde_json::from_str(&status).unwrap();
        if !status["progress"].is_null() && seen.last() != Some(&status["progress"]) {
            seen.push(status["progress"].clone());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (s, d) = worker.join().unwrap();
    assert_eq!(s["bootstrapped"]["bytes"], size, "{s}");
    assert_eq!(s["bootstrapped"]["resumed"], 0, "{s}");

    let phases = ["manifest", "download", "verify", "install"];
    let order: Vec<usize> = seen
        .iter()
        .filter_map(|p| phases.iter().position(|&x| p["phase"] == x))
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "phases out of order: {seen:?}"
    );
    let downloading: Vec<(u64, u64)> = seen
        .iter()
        .filter(|p| p["phase"] == "download")
        .map(|p| {
            assert_eq!(p["seq"], g.last().seq, "{p}");
            (p["bytes"].as_u64().unwrap(), p["total"].as_u64().unwrap())
        })
        .collect();
    assert!(
        downloading
            .iter()
            .all(|&(bytes, total)| total == size && bytes <= total),
        "{seen:?}"
    );
    assert!(
        downloading.windows(2).all(|w| w[0].0 <= w[1].0),
        "bytes went backwards: {seen:?}"
    );
    assert!(
        downloading
            .iter()
            .any(|&(bytes, total)| 0 < bytes && bytes < total),
        "no progress seen in the middle of the download: {seen:?}"
    );
    let status: String = watcher
        .query_row("SELECT pdb_status()", [], |r| r.get(0))
        .unwrap();
    let status: Json = serde_json::from_str(&status).unwrap();
    assert_eq!(status["progress"], Json::Null, "{status}");
    installed(&d, &g);
}
