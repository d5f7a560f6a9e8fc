//! The witness's snapshots (DESIGN §4–5) against a real `pdb-witness` process over
//! loopback HTTP.
//!
//! What a device relies on when it starts from a snapshot instead of replaying the
//! whole history: policy snapshots appear after the configured count or bytes of
//! commits; a manifest is signed by the witness, names the head and state digest of a
//! certificate, and its file (served by hash, with byte ranges for resumed downloads)
//! hashes to the manifest, holds exactly the group's tables and exactly the rows the
//! history had at that seq, also while commits continue; only admins make snapshots and
//! only readers of a group holding an object may download it; any kept seq can be
//! restored; retention compacts old commits with `410 compacted` answers that say where
//! to resume, and a witness whose replica is lost rebuilds it from the newest snapshot;
//! backups carry the objects.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdb_client::cert::{genesis, hex, parse_hash, Certificate, Hash};
use pdb_client::snapshot::Manifest;
use pdb_client::state::StateVector;
use pdb_tests::witness::{
    changeset_of, record, Client, Commit, RawReply, Reply, WitnessClient, WitnessProc,
};
use rusqlite::Connection;
use serde_json::Value;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body);\
                   CREATE TABLE tags(note INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY(note, tag)) WITHOUT ROWID;";
const TABLES: [&str; 2] = ["notes", "tags"];

/// Every row of every table, table by table, each value in changeset encoding (see
/// `pdb_tests::dump`): an exact picture of a database's content.
type Rows = Vec<Vec<Vec<Vec<u8>>>>;

fn rows(conn: &Connection) -> Rows {
    TABLES.iter().map(|t| pdb_tests::dump(conn, t)).collect()
}

fn state_digest(conn: &Connection) -> Hash {
    let tables = TABLES.map(|t| pdb_client::schema::table_info(conn, t).expect("table info"));
    pdb_client::history::state_of(conn, &tables)
        .expect("state")
        .digest()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdb-witness-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The SQL of the `i`-th scripted commit: inserts every time, and updates and deletes
/// of earlier rows in both tables, so that a seq's rows differ from its neighbours'.
fn step_sql(i: u64) -> String {
    let mut sql = format!(
        "INSERT INTO notes VALUES ({i}, 'note {i}', x'{i:04x}');\
         INSERT INTO tags VALUES ({i}, 't{}');",
        i % 3
    );
    if i % 3 == 0 {
        sql += &format!(
            "UPDATE notes SET title = 'edited {i}', body = {i}.5 WHERE id = {};",
            i - 1
        );
    }
    if i % 4 == 0 {
        sql += &format!(
            "DELETE FROM notes WHERE id = {0}; DELETE FROM tags WHERE note = {0};",
            i - 2
        );
    }
    sql
}

/// One device writing to group `g`: it runs SQL on its own database, commits what the
/// session extension recorded, and remembers every certificate and the rows it had
/// after each seq (`at[seq]`).
struct Writer {
    c: Client,
    /// The witness key it pinned.
    pinned: [u8; 32],
    schema: Hash,
    model: Connection,
    at: Vec<Rows>,
    certs: Vec<Certificate>,
    /// The changeset of each certificate.
    sent: Vec<Vec<u8>>,
}

impl Writer {
    fn new(c: Client) -> Writer {
        let ((seq, _), schema) = c.head("g");
        assert_eq!(seq, 0, "a new group");
        let model = Connection::open_in_memory().expect("open");
        model.execute_batch(DDL).expect("ddl");
        let at = vec![rows(&model)];
        Writer {
            pinned: witness_key(&c, "g"),
            c,
            schema,
            model,
            at,
            certs: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// The head this device knows: its last certificate's.
    fn head(&self) -> (u64, Hash) {
        self.certs
            .last()
            .map_or((0, genesis("g")), |c| (c.seq, c.head))
    }

    /// Runs `sql`, commits its changes on `base` and requires them certified; returns
    /// the certificate and the changeset.
    fn submit(&mut self, base: (u64, Hash), sql: &str) -> (Certificate, Vec<u8>) {
        let mut session = rusqlite::session::Session::new(&self.model).expect("session");
        session.attach(None::<&str>).expect("attach");
        self.model.execute_batch(sql).expect("sql");
        let mut cs = Vec::new();
        session.changeset_strm(&mut cs).expect("changeset");
        drop(session);
        let key = format!("k{}", self.certs.len() + 1);
        let r = self.c.commit(
            "g",
            &Commit {
                changeset: &cs,
                base_seq: base.0,
                base_head: base.1,
                key: &key,
                schema: self.schema,
                policy: None,
            },
        );
        assert_eq!(r.status, 201, "{sql}: {:?}", r.body);
        let cert = Certificate::from_json(&r.body).expect("certificate");
        cert.verify(&self.pinned, &cs)
            .expect("certificate verifies");
        assert_eq!(cert.seq as usize, self.at.len(), "the next seq");
        self.at.push(rows(&self.model));
        self.certs.push(cert.clone());
        self.sent.push(cs.clone());
        (cert, cs)
    }

    /// [`Writer::submit`] on `base`.
    fn commit_from(&mut self, base: (u64, Hash), sql: &str) -> Certificate {
        self.submit(base, sql).0
    }

    /// [`Writer::commit_from`] the device's head; returns the changeset's size.
    fn commit(&mut self, sql: &str) -> usize {
        self.submit(self.head(), sql).1.len()
    }

    /// The next scripted commit.
    fn step(&mut self) -> Certificate {
        let i = self.certs.len() as u64 + 1;
        self.commit_from(self.head(), &step_sql(i))
    }

    /// `(head, state)` of the certificate of `seq` this device was given (genesis and
    /// the empty state at 0).
    fn certified(&self, seq: u64) -> (Hash, Hash) {
        match seq {
            0 => (genesis("g"), StateVector::new().digest()),
            _ => {
                let c = &self.certs[seq as usize - 1];
                (c.head, c.state)
            }
        }
    }
}

/// The `witness_key` a group's description names (what a device pins).
fn witness_key(c: &Client, group: &str) -> [u8; 32] {
    let info = c.info(group);
    assert_eq!(info.status, 200, "{:?}", info.body);
    parse_hash(info.body["witness_key"].as_str().expect("witness_key")).expect("hex key")
}

/// A witness with `args` and an empty group `g`, an admin client and a writer.
fn start_parts(name: &str, args: &[&str]) -> (WitnessProc, Client, Writer) {
    let w = WitnessProc::start_with(&temp_dir(name), args, &[]);
    let c = w.admin_client();
    let r = c.create_group("g", DDL);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(witness_key(&c, "g"), w.key);
    let writer = Writer::new(c.clone());
    (w, c, writer)
}

struct Fixture {
    w: WitnessProc,
    /// Admin of every group.
    c: Client,
    writer: Writer,
}

impl Fixture {
    /// A witness with `args` and an empty group `g`.
    fn start(name: &str, args: &[&str]) -> Fixture {
        let (w, c, writer) = start_parts(name, args);
        Fixture { w, c, writer }
    }

    /// A client with a token of `role` on `group`.
    fn client(&self, group: &str, role: &str) -> Client {
        self.c
            .with_token(Some(&self.w.token("t", group, role, 600)))
    }

    /// Restarts the witness on the same data directory with `args`.
    fn restart(&mut self, args: &[&str], between: impl FnOnce(&Path)) {
        assert!(self.w.stop().success(), "graceful stop");
        between(&self.w.data);
        self.w = WitnessProc::start_with(&self.w.data.clone(), args, &[]);
        self.c = self.w.admin_client();
        self.writer.c = self.c.clone();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.w.kill();
        let _ = std::fs::remove_dir_all(&self.w.data);
    }
}

fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{:?}", r.body);
    assert_eq!(r.code(), Some(code), "{:?}", r.body);
}

/// The manifest in a reply, which must be one for group `group`.
fn manifest(r: &Reply, group: &str) -> Manifest {
    assert!(matches!(r.status, 200 | 201), "{:?}", r.body);
    let m = Manifest::from_json(&r.body).expect("a manifest");
    assert_eq!(m.group, group);
    assert_eq!(r.body["object"], format!("/v1/objects/{}", hex(&m.blake3)));
    m
}

/// The latest snapshot of `g`, if there is one.
fn latest(c: &Client) -> Option<Manifest> {
    let r = c.snapshot_latest("g");
    if r.status == 404 {
        assert_problem(&r, 404, "not_found");
        return None;
    }
    Some(manifest(&r, "g"))
}

/// Polls `f` until it returns something (the policy works in the background).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `(head, state)` of the certificate of `seq` as a pull serves it (genesis and the
/// empty state at 0).
fn certified(c: &Client, seq: u64) -> (Hash, Hash) {
    if seq == 0 {
        return (genesis("g"), StateVector::new().digest());
    }
    let r = c.pull("g", seq - 1, 1);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let cert = Certificate::from_json(&r.body["commits"][0]).expect("certificate");
    assert_eq!(cert.seq, seq);
    cert.verify(&witness_key(c, "g"), &changeset_of(&r.body["commits"][0]))
        .expect("certificate verifies");
    (cert.head, cert.state)
}

/// Opens database bytes as a file and runs `f` on it.
fn with_image<T>(bytes: &[u8], f: impl FnOnce(&Connection) -> T) -> T {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "pdb-witness-snap-image-{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).expect("write image");
    let out = {
        let conn = Connection::open(&path).expect("open image");
        f(&conn)
    };
    let _ = std::fs::remove_file(&path);
    out
}

/// Downloads the file of `m` with `c` and checks it as a device would before installing
/// it: signature (against `pinned`), size and BLAKE3, exactly the group's tables with
/// the manifest's schema hash, and their state digest equal to the manifest's. Returns
/// its rows.
fn fetch_snapshot(c: &Client, m: &Manifest, pinned: &[u8; 32]) -> Rows {
    m.verify(pinned).expect("manifest signature");
    let obj = c.object(&hex(&m.blake3), None);
    assert_eq!(obj.status, 200, "{:?}", obj.json());
    assert_eq!(obj.bytes.len() as u64, m.size, "size");
    assert_eq!(*blake3::hash(&obj.bytes).as_bytes(), m.blake3, "blake3");
    with_image(&obj.bytes, |conn| {
        let mut stmt = conn
            .prepare("SELECT type, name FROM sqlite_schema")
            .expect("schema");
        let objects: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("read");
        let tables: BTreeSet<&str> = objects
            .iter()
            .filter(|(t, _)| t == "table")
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(tables, BTreeSet::from(TABLES), "only the group's tables");
        assert!(
            objects.iter().all(|(_, n)| !n.starts_with("pdb")),
            "{objects:?}"
        );
        let info = TABLES.map(|t| pdb_client::schema::table_info(conn, t).expect("table"));
        assert_eq!(pdb_client::schema::schema_hash(&info), m.schema_hash);
        assert_eq!(state_digest(conn), m.state, "the file holds the state");
        rows(conn)
    })
}

/// The object files in a data directory (not the scratch folder).
fn objects_in(data: &Path) -> BTreeSet<String> {
    std::fs::read_dir(data.join("objects"))
        .expect("objects folder")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().expect("type").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_policy_snapshot_follows_the_commit_count_and_holds_exactly_the_certified_rows() {
    let mut f = Fixture::start("count", &["--snapshot-commits", "5"]);
    for _ in 0..3 {
        f.writer.step();
    }
    assert_eq!(latest(&f.c), None, "3 commits are under the count");
    for _ in 3..12 {
        f.writer.step();
    }
    let m = eventually("a policy snapshot at seq >= 10", || {
        latest(&f.c).filter(|m| m.seq >= 10)
    });
    assert!((5..=12).contains(&m.seq), "seq {}", m.seq);
    assert_eq!((m.head, m.state), certified(&f.c, m.seq));
    assert_eq!(m.schema_hash, f.writer.schema);
    let pinned = witness_key(&f.c, "g");
    assert_eq!(
        fetch_snapshot(&f.c, &m, &pinned),
        f.writer.at[m.seq as usize],
        "the rows the history had at seq {}",
        m.seq
    );
    // A manifest signed by another key, or altered, does not verify.
    assert!(m.verify(&[7; 32]).is_err());
    let mut forged = m.clone();
    forged.state = f.writer.certs[0].state;
    assert!(forged.verify(&pinned).is_err());
}

#[test]
fn a_policy_snapshot_follows_the_bytes_of_changesets() {
    const LIMIT: usize = 20_000;
    let mut f = Fixture::start(
        "bytes",
        &["--snapshot-commits", "0", "--snapshot-bytes", "20000"],
    );
    let big = |i: usize| {
        format!(
            "INSERT INTO notes VALUES ({i}, 'big', '{}')",
            "x".repeat(5000)
        )
    };
    let (mut seq, mut previous) = (0, None);
    for round in 1..=2 {
        let mut bytes = 0;
        while bytes < LIMIT {
            seq += 1;
            bytes += f.writer.commit(&big(seq));
            if bytes < LIMIT {
                assert_eq!(latest(&f.c), previous, "{bytes} bytes are under the limit");
            }
        }
        assert!(seq >= 4 * round, "each commit is about 5 KB");
        let m = eventually(&format!("a snapshot at seq {seq}"), || {
            latest(&f.c).filter(|m| m.seq >= seq as u64)
        });
        assert_eq!(m.seq, seq as u64, "made when the bytes were reached");
        assert_eq!(
            objects_in(&f.w.data).len(),
            round,
            "no snapshot before the limit"
        );
        let pinned = witness_key(&f.c, "g");
        assert_eq!(fetch_snapshot(&f.c, &m, &pinned), f.writer.at[seq]);
        previous = Some(m);
    }
}

#[test]
fn snapshots_taken_while_commits_continue_are_consistent() {
    let (w, c, writer) = start_parts("concurrent", &[]);
    let done = Arc::new(AtomicBool::new(false));
    let thread = {
        let done = done.clone();
        let mut writer = writer;
        std::thread::spawn(move || {
            for _ in 0..200 {
                writer.step();
            }
            done.store(true, Ordering::SeqCst);
            writer
        })
    };
    let mut made = Vec::new();
    while !done.load(Ordering::SeqCst) {
        let r = c.snapshot_make("g");
        assert_eq!(r.status, 201, "{:?}", r.body);
        made.push(manifest(&r, "g"));
    }
    let writer = thread.join().expect("writer");
    let seqs: BTreeSet<u64> = made.iter().map(|m| m.seq).collect();
    assert!(
        seqs.iter().filter(|&&s| s > 0 && s < 200).count() >= 2,
        "several snapshots while committing: {seqs:?}"
    );
    for m in &made {
        assert_eq!((m.head, m.state), writer.certified(m.seq), "seq {}", m.seq);
        assert_eq!(
            fetch_snapshot(&c, m, &w.key),
            writer.at[m.seq as usize],
            "seq {}",
            m.seq
        );
    }
    drop(w);
    let _ = std::fs::remove_dir_all(temp_dir("concurrent"));
}

#[test]
fn only_admins_make_snapshots_and_readers_read_them() {
    let mut f = Fixture::start("auth", &[]);
    assert_eq!(f.c.create_group("h", DDL).status, 201);
    f.writer.step();
    let anon = f.c.with_token(None);
    let reader = f.client("g", "read");
    let writer = f.client("g", "write");
    let admin = f.client("g", "admin");
    let other = f.client("h", "admin");

    assert_problem(&anon.snapshot_make("g"), 401, "unauthorized");
    for c in [&reader, &writer, &other] {
        assert_problem(&c.snapshot_make("g"), 403, "forbidden");
    }
    assert_problem(&reader.snapshot_latest("g"), 404, "not_found");
    assert_problem(&f.c.snapshot_make("nope"), 404, "not_found");

    let r = admin.snapshot_make("g");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let m = manifest(&r, "g");
    assert_eq!(m.seq, 1);
    assert_eq!(m.witness_key, f.w.key);
    for c in [&reader, &writer, &admin] {
        let l = c.snapshot_latest("g");
        assert_eq!(l.status, 200, "{:?}", l.body);
        assert_eq!(l.body, r.body);
        assert_eq!(c.snapshot_at("g", "1").body, r.body);
    }
    assert_problem(&anon.snapshot_latest("g"), 401, "unauthorized");
    assert_problem(&other.snapshot_latest("g"), 403, "forbidden");
    assert_problem(&anon.snapshot_at("g", "1"), 401, "unauthorized");
    assert_problem(&other.snapshot_at("g", "1"), 403, "forbidden");
    // The certificate of a commit by its key is a read too.
    let by_key = |c: &Client, key: &str| {
        c.send(
            "GET",
            &format!("/v1/groups/g/certificates?key={key}"),
            &[],
            None,
        )
        .expect("certificate request")
    };
    for c in [&reader, &writer, &admin] {
        let r = by_key(c, "k1");
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            Certificate::from_json(&r.body).ok(),
            Some(f.writer.certs[0].clone())
        );
        assert_problem(&by_key(c, "k2"), 404, "not_found");
    }
    assert_problem(&by_key(&anon, "k1"), 401, "unauthorized");
    assert_problem(&by_key(&other, "k1"), 403, "forbidden");
    let r = reader
        .send("GET", "/v1/groups/g/certificates", &[], None)
        .expect("certificate request");
    assert_problem(&r, 400, "bad_request");

    // A group with no commit yet: a snapshot of genesis, with no rows.
    let r = other.snapshot_make("h");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let empty = manifest(&r, "h");
    assert_eq!(empty.seq, 0);
    assert_eq!(empty.head, genesis("h"));
    assert_eq!(empty.state, StateVector::new().digest());
    let rows = fetch_snapshot(&other, &empty, &f.w.key);
    assert!(rows.iter().all(Vec::is_empty), "{rows:?}");
}

fn assert_object_problem(o: &RawReply, status: u16, code: &str) {
    assert_eq!(o.status, status, "{:?}", o.json());
    assert_eq!(o.json()["code"], code);
}

#[test]
fn objects_are_served_by_hash_to_readers_with_byte_ranges() {
    let mut f = Fixture::start("ranges", &[]);
    assert_eq!(f.c.create_group("h", DDL).status, 201);
    for i in 1..=20 {
        f.writer.commit(&format!(
            "INSERT INTO notes VALUES ({i}, 'n', '{}')",
            "y".repeat(900)
        ));
    }
    let m = manifest(&f.c.snapshot_make("g"), "g");
    let name = hex(&m.blake3);
    let size = m.size as usize;
    assert!(size > 8192, "several pages: {size}");
    let reader = f.client("g", "read");

    let whole = reader.object(&name, None);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("etag"), Some(format!("\"{name}\"").as_str()));
    assert_eq!(
        whole.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(*blake3::hash(&whole.bytes).as_bytes(), m.blake3);
    let full = whole.bytes;

    // Single ranges: 206 with exactly those bytes.
    let cases: [(String, usize, usize); 5] = [
        ("bytes=0-99".into(), 0, 99),
        ("bytes=100-".into(), 100, size - 1),
        ("bytes=-50".into(), size - 50, size - 1),
        (format!("bytes=4000-{}", size + 1000), 4000, size - 1),
        (format!("bytes=-{}", size + 7), 0, size - 1),
    ];
    for (range, first, last) in cases {
        let o = reader.object(&name, Some(&range));
        assert_eq!(o.status, 206, "{range}");
        assert_eq!(
            o.header("content-range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(
            o.header("content-length"),
            Some((last - first + 1).to_string().as_str())
        );
        assert_eq!(o.header("accept-ranges"), Some("bytes"));
        assert_eq!(o.header("etag"), Some(format!("\"{name}\"").as_str()));
        assert_eq!(o.bytes, full[first..=last], "{range}");
    }

    // A download resumed where it stopped reproduces the file.
    let cut = size / 3;
    let head = reader.object(&name, Some(&format!("bytes=0-{}", cut - 1)));
    let tail = reader.object(&name, Some(&format!("bytes={cut}-")));
    assert_eq!((head.status, tail.status), (206, 206));
    assert_eq!([head.bytes, tail.bytes].concat(), full);

    // Nothing of the object in range: 416 with the size.
    for range in [
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 10, size + 20),
    ] {
        let o = reader.object(&name, Some(&range));
        assert_object_problem(&o, 416, "range_not_satisfiable");
        assert_eq!(
            o.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "{range}"
        );
    }

    // Several ranges, other units, bad syntax: the whole file.
    for range in ["bytes=0-1,5-6", "bytes=abc", "bytes=9-3", "pages=0-1"] {
        let o = reader.object(&name, Some(range));
        assert_eq!(o.status, 200, "{range}");
        assert!(o.header("content-range").is_none(), "{range}");
        assert_eq!(o.bytes, full, "{range}");
    }

    // Who may read it, and names that are no object.
    assert_object_problem(
        &f.c.with_token(None).object(&name, None),
        401,
        "unauthorized",
    );
    assert_object_problem(
        &f.client("h", "admin").object(&name, None),
        403,
        "forbidden",
    );
    assert_eq!(f.client("g", "write").object(&name, None).status, 200);
    for bad in [
        "xyz".to_string(),
        name[..63].to_string(),
        format!("{name}00"),
        "g".repeat(64),
        hex(&[0; 32]),
        hex(blake3::hash(b"unknown").as_bytes()),
    ] {
        assert_object_problem(&reader.object(&bad, None), 404, "not_found");
    }
}

#[test]
fn any_kept_seq_can_be_restored_exactly() {
    let mut f = Fixture::start("restore", &[]);
    for _ in 0..7 {
        f.writer.step();
    }
    let at7 = manifest(&f.c.snapshot_make("g"), "g");
    assert_eq!(at7.seq, 7);
    for _ in 7..14 {
        f.writer.step();
    }
    let reader = f.client("g", "read");
    let pinned = witness_key(&f.c, "g");
    // Before the snapshot (replayed from genesis), the snapshot itself, after it
    // (replayed from it), and the head.
    for at in [0u64, 1, 4, 7, 10, 13, 14] {
        let r = reader.snapshot_at("g", &at.to_string());
        assert_eq!(r.status, 200, "at={at}: {:?}", r.body);
        let m = manifest(&r, "g");
        assert_eq!(m.seq, at);
        assert_eq!((m.head, m.state), certified(&f.c, at), "at={at}");
        assert_eq!(
            fetch_snapshot(&reader, &m, &pinned),
            f.writer.at[at as usize],
            "at={at}"
        );
        if at == 7 {
            assert_eq!(m, at7, "the existing snapshot");
        }
        // Asked again: the same snapshot.
        assert_eq!(reader.snapshot_at("g", &at.to_string()).body, r.body);
    }

    assert_problem(&reader.snapshot_at("g", "15"), 404, "not_found");
    assert_problem(&reader.snapshot_at("g", "999999"), 404, "not_found");
    for bad in ["abc", "-1", "1.5", ""] {
        assert_problem(&reader.snapshot_at("g", bad), 400, "bad_request");
    }
    let missing = reader
        .send("GET", "/v1/groups/g/snapshots", &[], None)
        .expect("reachable");
    assert_problem(&missing, 400, "bad_request");

    // Restoring reads history, never rewrites it.
    assert_eq!(f.c.head("g").0, f.writer.head());
    assert_eq!(f.c.history("g").len(), 14);
    f.writer.step();
}

#[test]
fn retention_compacts_old_commits_and_a_lost_replica_is_rebuilt_from_a_snapshot() {
    let args = ["--snapshot-commits", "5", "--retain-snapshots", "1"];
    let mut f = Fixture::start("compact", &args);
    for _ in 0..17 {
        f.writer.step();
    }
    let kept = eventually("a policy snapshot at seq >= 15", || {
        latest(&f.c).filter(|m| m.seq >= 15)
    });
    let s = kept.seq;
    assert!(s <= 17);
    // Older snapshots' objects go once the newest is kept.
    let only = BTreeSet::from([hex(&kept.blake3)]);
    eventually("only the retained object", || {
        (objects_in(&f.w.data) == only).then_some(())
    });

    // A device far behind is told to bootstrap, and from where.
    let r = f.c.pull("g", 0, 100);
    assert_problem(&r, 410, "compacted");
    let oldest = r.body["oldest_seq"].as_u64().expect("oldest_seq");
    assert_eq!(r.body["snapshot_seq"], s);
    assert!(oldest > 0 && oldest <= s, "oldest {oldest}, snapshot {s}");
    assert_problem(&f.c.pull("g", oldest - 1, 100), 410, "compacted");
    // A device at the oldest head kept still pulls, and the chain continues.
    let r = f.c.pull("g", oldest, 100);
    assert_eq!(r.status, 200, "{:?}", r.body);
    let commits = r.body["commits"].as_array().expect("commits");
    let certs: Vec<Certificate> = commits
        .iter()
        .map(|c| Certificate::from_json(c).expect("certificate"))
        .collect();
    let payloads: Vec<Vec<u8>> = commits.iter().map(changeset_of).collect();
    let trusted = (oldest, f.writer.certs[oldest as usize - 1].head);
    let end = pdb_client::history::verify_chain(
        &f.w.key,
        "g",
        trusted,
        certs.iter().zip(payloads.iter().map(Vec::as_slice)),
    )
    .expect("the chain continues from the oldest head");
    assert_eq!(end, f.writer.head());
    // The snapshot a bootstrapping device starts from holds the rows at its seq.
    assert_eq!(
        fetch_snapshot(&f.c, &kept, &f.w.key),
        f.writer.at[s as usize]
    );

    // A device at the oldest head kept can still commit (the refusal of older bases
    // is tested on its own below).
    let base = (oldest, f.writer.certs[oldest as usize - 1].head);
    f.writer
        .commit_from(base, "INSERT INTO notes VALUES (901, 'rebased', NULL)");

    // Restores: not before the history kept; from the kept snapshot on.
    for at in [1, oldest - 1, oldest] {
        assert_problem(&f.c.snapshot_at("g", &at.to_string()), 410, "compacted");
    }
    let head = f.writer.head().0;
    for at in [s, head] {
        let m = manifest(&f.c.snapshot_at("g", &at.to_string()), "g");
        assert_eq!(m.seq, at);
        assert_eq!(fetch_snapshot(&f.c, &m, &f.w.key), f.writer.at[at as usize]);
    }

    // A restart serves the same; so does one that lost the replica and rebuilt it from
    // the newest snapshot and the commit after it.
    f.writer.step();
    let info = f.c.info("g").body;
    let newest = latest(&f.c);
    assert!(newest.as_ref().is_some_and(|m| m.seq < f.writer.head().0));
    f.restart(&args, |_| {});
    assert_eq!(f.c.info("g").body, info);
    assert_eq!(latest(&f.c), newest);
    assert_problem(&f.c.pull("g", 0, 100), 410, "compacted");
    f.restart(&args, |data| {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(data.join(format!("groups/g.db{suffix}")));
        }
    });
    assert_eq!(f.c.info("g").body, info, "head and state unchanged");
    let cert = f.writer.step();
    assert_eq!(cert.state, state_digest(&f.writer.model));
    let m = manifest(&f.c.snapshot_at("g", &cert.seq.to_string()), "g");
    assert_eq!(
        fetch_snapshot(&f.c, &m, &f.w.key),
        f.writer.at[cert.seq as usize]
    );
}

/// Compacts the history of a fixture's group `g` (retaining one snapshot, made at
/// seq >= 15 of 17 commits) and returns the oldest head kept.
fn compacted_fixture(name: &str, args: &[&str]) -> (Fixture, u64) {
    let mut f = Fixture::start(name, args);
    for _ in 0..17 {
        f.writer.step();
    }
    eventually("commits compacted", || {
        let r = f.c.pull("g", 0, 1);
        (r.status == 410 && r.body["snapshot_seq"].as_u64() >= Some(15)).then_some(())
    });
    let oldest = f.c.pull("g", 0, 1).body["oldest_seq"]
        .as_u64()
        .expect("oldest_seq");
    assert!(oldest > 1, "{oldest}");
    (f, oldest)
}

#[test]
fn a_commit_on_a_compacted_base_is_refused_as_compacted() {
    let args = ["--snapshot-commits", "5", "--retain-snapshots", "1"];
    let (mut f, oldest) = compacted_fixture("compact-base", &args);
    // Changesets that apply cleanly to the head: only the base can refuse them.
    let attempt = |f: &Fixture, base: u64, id: i64| {
        let cs = record(
            DDL,
            "",
            &format!("INSERT INTO notes VALUES ({id}, 'late', NULL)"),
        );
        let r = f.c.commit(
            "g",
            &Commit {
                changeset: &cs,
                base_seq: base,
                base_head: f.writer.certified(base).0,
                key: &format!("late-{id}"),
                schema: f.writer.schema,
                policy: None,
            },
        );
        (
            base,
            r.status,
            r.code().map(str::to_string),
            r.body["oldest_seq"].clone(),
        )
    };
    let mut outcomes = vec![attempt(&f, oldest - 1, 900), attempt(&f, 0, 901)];
    f.restart(&args, |_| {});
    outcomes.push(attempt(&f, oldest - 1, 902));
    outcomes.push(attempt(&f, 0, 903));
    let expected: Vec<_> = outcomes
        .iter()
        .map(|o| (o.0, 410, Some("compacted".to_string()), Value::from(oldest)))
        .collect();
    assert_eq!(
        outcomes, expected,
        "(base seq, status, code, oldest_seq) of commits on bases older than the oldest \
         head kept ({oldest}), before and after a restart"
    );
}

#[test]
fn a_retry_of_a_compacted_commit_gets_its_original_certificate_back() {
    let args = ["--snapshot-commits", "5", "--retain-snapshots", "1"];
    let (mut f, oldest) = compacted_fixture("compact-retry", &args);
    // Commits 1..=oldest are compacted: a device that lost an answer retries one.
    let retry = |f: &Fixture, seq: u64, changeset: &[u8]| {
        let r = f.c.commit(
            "g",
            &Commit {
                changeset,
                base_seq: seq - 1,
                base_head: f.writer.certified(seq - 1).0,
                key: &format!("k{seq}"),
                schema: f.writer.schema,
                policy: None,
            },
        );
        let cert = (r.status == 200 && r.body["duplicate"] == true)
            .then(|| Certificate::from_json(&r.body).expect("certificate"));
        (r.status, r.code().map(str::to_string), cert)
    };
    let looked_up = |f: &Fixture, key: &str| {
        let r =
            f.c.send(
                "GET",
                &format!("/v1/groups/g/certificates?key={key}"),
                &[],
                None,
            )
            .expect("certificate request");
        (r.status == 200).then(|| Certificate::from_json(&r.body).expect("certificate"))
    };
    // The policy may have compacted up to the last commit by now (its snapshot lands
    // when it lands); the retries stay inside the history written.
    let written = f.writer.sent.len() as u64;
    for round in ["before a restart", "after a restart"] {
        for seq in [1, oldest, (oldest + 2).min(written)] {
            let original = f.writer.certs[seq as usize - 1].clone();
            let same = retry(&f, seq, &f.writer.sent[seq as usize - 1]);
            assert_eq!(
                same,
                (200, None, Some(original.clone())),
                "seq {seq} {round}"
            );
            // Another commit's changeset under this key: the next one, or the first.
            let other = retry(&f, seq, &f.writer.sent[seq as usize % written as usize]);
            assert_eq!(
                (other.0, other.1.as_deref()),
                (422, Some("idempotency_conflict")),
                "seq {seq} {round}"
            );
            assert_eq!(looked_up(&f, &format!("k{seq}")), Some(original), "{round}");
        }
        assert_eq!(looked_up(&f, "k0"), None);
        f.restart(&args, |_| {});
    }
    // Nothing was certified twice.
    assert_eq!(f.c.head("g").0 .0, 17);
}

/// Runs `pdb-witness <cmd> <dir> --data <data>` and requires it to succeed.
fn witness_cli(cmd: &str, dir: &Path, data: &Path) {
    let out = std::process::Command::new(pdb_tests::witness::witness_bin())
        .arg(cmd)
        .arg(dir)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run pdb-witness");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_backup_carries_the_snapshots_and_their_objects() {
    let mut f = Fixture::start("backup", &[]);
    for _ in 0..6 {
        f.writer.step();
    }
    let made = f.c.snapshot_make("g");
    let m = manifest(&made, "g");
    let original = f.c.object(&hex(&m.blake3), None);
    assert_eq!(original.status, 200);
    for _ in 0..3 {
        f.writer.step();
    }

    let backup = temp_dir("backup-copy");
    witness_cli("backup", &backup, &f.w.data);
    assert!(backup.join("objects").join(hex(&m.blake3)).is_file());
    let restored = temp_dir("backup-restored");
    witness_cli("restore", &backup, &restored);

    let w = WitnessProc::start(&restored);
    assert_eq!(w.key, f.w.key);
    let c = w.admin_client();
    let l = c.snapshot_latest("g");
    assert_eq!(l.status, 200, "{:?}", l.body);
    assert_eq!(l.body, made.body, "the same manifest");
    let copy = c.object(&hex(&m.blake3), None);
    assert_eq!(copy.status, 200, "{:?}", copy.json());
    assert_eq!(copy.bytes, original.bytes);
    assert_eq!(fetch_snapshot(&c, &m, &w.key), f.writer.at[m.seq as usize]);
    // The restored history continues from the snapshot's seq on, like the original.
    let r = manifest(&c.snapshot_at("g", "8"), "g");
    assert_eq!(fetch_snapshot(&c, &r, &w.key), f.writer.at[8]);
    drop(w);
    for d in [&backup, &restored] {
        let _ = std::fs::remove_dir_all(d);
    }
}
