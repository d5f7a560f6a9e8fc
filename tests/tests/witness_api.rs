//! The witness's HTTP API against a real `pdb-witness` process: acceptance in DESIGN
//! §5's order, both policies, every rejection code, idempotency, pulls, long-polls and
//! the watch stream, body limits, restart and backup/restore.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pdb_client::cert::{genesis, hex, Certificate, Hash};
use pdb_tests::witness::{changeset_of, record, Client, Commit, Reply, WitnessClient, WitnessProc};
use rusqlite::Connection;
use serde_json::Value;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT);\
                   CREATE TABLE tags(note INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY(note, tag)) WITHOUT ROWID;";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdb-witness-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

struct Fixture {
    w: WitnessProc,
    c: Client,
}

fn start(name: &str, args: &[&str]) -> Fixture {
    let w = WitnessProc::start_with(&temp_dir(name), args, &[]);
    let c = w.admin_client();
    let r = c.create_group("g", DDL);
    assert_eq!(r.status, 201, "{:?}", r.body);
    Fixture { w, c }
}

fn insert(id: i64, title: &str) -> Vec<u8> {
    record(
        DDL,
        "",
        &format!("INSERT INTO notes VALUES ({id}, '{title}', NULL)"),
    )
}

impl Fixture {
    fn head(&self) -> ((u64, Hash), Hash) {
        self.c.head("g")
    }

    /// Submits `cs` on the current head.
    fn commit(&self, cs: &[u8], key: &str) -> Reply {
        let ((seq, head), schema) = self.head();
        self.c.commit(
            "g",
            &Commit {
                changeset: cs,
                base_seq: seq,
                base_head: head,
                key,
                schema,
                policy: None,
            },
        )
    }

    fn commit_on(&self, cs: &[u8], key: &str, base: (u64, Hash), policy: Option<&str>) -> Reply {
        let (_, schema) = self.head();
        self.c.commit(
            "g",
            &Commit {
                changeset: cs,
                base_seq: base.0,
                base_head: base.1,
                key,
                schema,
                policy,
            },
        )
    }

    fn raw_commit(&self, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
        self.c
            .send("POST", "/v1/groups/g/commits", headers, Some(body))
            .expect("reachable")
    }

    fn good_headers(&self, key: &str) -> Vec<(&'static str, String)> {
        let ((seq, head), schema) = self.head();
        vec![
            ("Pdb-Base", format!("{seq}:{}", hex(&head))),
            ("Idempotency-Key", key.to_string()),
            ("Pdb-Schema", hex(&schema)),
        ]
    }
}

fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.content_type, "application/problem+json", "{:?}", r.body);
    assert_eq!(r.code(), Some(code), "{:?}", r.body);
    assert_eq!(r.body["status"], status);
    assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

fn cert(r: &Reply) -> Certificate {
    Certificate::from_json(&r.body).expect("a certificate")
}

#[test]
fn accepted_commits_are_certified_in_order_and_pulled_with_their_changesets() {
    let f = start("order", &[]);
    let ((seq0, head0), _) = f.head();
    assert_eq!((seq0, head0), (0, genesis("g")));
    let mut expected = Vec::new();
    for i in 1..=3 {
        let cs = insert(i, &format!("n{i}"));
        let r = f.commit(&cs, &format!("k{i}"));
        assert_eq!(r.status, 201, "{:?}", r.body);
        let c = cert(&r);
        c.verify(&f.w.key, &cs).expect("certificate verifies");
        assert_eq!(c.seq, i as u64);
        assert_eq!(c.group, "g");
        assert_eq!(c.idempotency_key, format!("k{i}"));
        expected.push((c, cs));
    }
    for w in expected.windows(2) {
        assert_eq!(w[1].0.prev, w[0].0.head, "chain");
    }
    assert_eq!(expected[0].0.prev, genesis("g"));
    let ((seq, head), _) = f.head();
    assert_eq!((seq, head), (3, expected[2].0.head));
    let info = f.c.info("g");
    assert_eq!(info.body["state"], hex(&expected[2].0.state));
    assert_eq!(info.body["witness_key"], hex(&f.w.key));

    let pulled = f.c.pull("g", 1, 10);
    assert_eq!(pulled.status, 200);
    let commits = pulled.body["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 2, "after=1 skips the first");
    for (p, (c, cs)) in commits.iter().zip(&expected[1..]) {
        assert_eq!(&Certificate::from_json(p).unwrap(), c);
        assert_eq!(&changeset_of(p), cs);
    }
    assert_eq!(pulled.body["head"]["seq"], 3);
    // A device can check what it pulled as a chain, and its replayed tables against
    // the state digest of the last certificate.
    let all = f.c.history("g");
    let certs: Vec<Certificate> = all
        .iter()
        .map(|c| Certificate::from_json(c).unwrap())
        .collect();
    let payloads: Vec<Vec<u8>> = all.iter().map(changeset_of).collect();
    let trusted = pdb_client::history::verify_chain(
        &f.w.key,
        "g",
        (0, genesis("g")),
        certs.iter().zip(payloads.iter().map(Vec::as_slice)),
    )
    .unwrap();
    assert_eq!(trusted, (3, expected[2].0.head));
    let device = replay(&all);
    let tables = ["notes", "tags"].map(|t| pdb_client::schema::table_info(&device, t).unwrap());
    let state = pdb_client::history::state_of(&device, &tables).unwrap();
    assert_eq!(state.digest(), expected[2].0.state);

    let limited = f.c.pull("g", 0, 1);
    assert_eq!(limited.body["commits"].as_array().unwrap().len(), 1);
    assert_eq!(f.c.pull("g", 3, 10).body["commits"], Value::Array(vec![]));
}

#[test]
fn retries_get_the_original_certificate_and_a_reused_key_is_refused() {
    let f = start("idem", &[]);
    let cs = insert(1, "a");
    let first = f.commit(&cs, "same");
    assert_eq!(first.status, 201);
    assert!(first.body.get("duplicate").is_none());
    // A retry after the head moved on, even with a stale base and a wrong schema hash:
    // idempotency is checked before anything else about the commit.
    assert_eq!(f.commit(&insert(2, "b"), "other").status, 201);
    let r = f.commit_on(&cs, "same", (0, genesis("g")), Some("fast-forward"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["duplicate"], true);
    assert_eq!(cert(&r), cert(&first));
    let again = f.raw_commit(
        &[
            ("Pdb-Base", format!("0:{}", hex(&genesis("g")))),
            ("Idempotency-Key", "same".into()),
            ("Pdb-Schema", hex(&[7; 32])),
        ],
        cs.clone(),
    );
    assert_eq!(again.status, 200, "{:?}", again.body);

    let reuse = f.commit(&insert(3, "c"), "same");
    assert_problem(&reuse, 422, "idempotency_conflict");
    let history = f.c.history("g");
    assert_eq!(history.len(), 2, "the retry was not applied twice");
}

#[test]
fn every_rejection_code_comes_as_problem_json_and_stores_nothing() {
    let f = start("reject", &["--max-body", "4096"]);
    assert_eq!(f.commit(&insert(1, "a"), "k1").status, 201);
    let before = f.head();

    // schema_mismatch: Pdb-Schema differs.
    let ((seq, head), _) = f.head();
    let r = f.c.commit(
        "g",
        &Commit {
            changeset: &insert(2, "b"),
            base_seq: seq,
            base_head: head,
            key: "k2",
            schema: [1; 32],
            policy: None,
        },
    );
    assert_problem(&r, 409, "schema_mismatch");
    assert_eq!(r.body["schema_hash"], hex(&before.1));

    // invalid_changeset: garbage, truncated, empty, unknown table, wrong shape.
    let good = insert(2, "b");
    let other_ddl = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT NOT NULL);\
                     CREATE TABLE secret(id INTEGER PRIMARY KEY, x)";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a changeset".to_vec()),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("empty", Vec::new()),
        (
            "unknown table",
            record(other_ddl, "", "INSERT INTO secret VALUES (1, 2)"),
        ),
        (
            "column count",
            record(other_ddl, "", "INSERT INTO notes VALUES (5, 'x')"),
        ),
    ];
    for (what, body) in cases {
        let r = f.commit(&body, &format!("bad-{}", what.replace(' ', "-")));
        assert_problem(&r, 422, "invalid_changeset");
        assert_eq!(f.head(), before, "{what}: nothing stored");
    }
    let r = f.commit(
        &record(other_ddl, "", "INSERT INTO secret VALUES (1, 2)"),
        "x",
    );
    assert!(
        r.body["detail"].as_str().unwrap().contains("secret"),
        "{:?}",
        r.body
    );

    // conflict: the row exists (INSERT of an existing key), with the rows named.
    let r = f.commit(&insert(1, "again"), "dup-row");
    assert_problem(&r, 409, "conflict");
    assert_eq!(r.body["seq"], before.0 .0);
    assert_eq!(r.body["head"], hex(&before.0 .1));
    assert_eq!(r.body["rows"][0]["table"], "notes");
    assert_eq!(r.body["rows"][0]["key"], serde_json::json!([1]));
    // A constraint the replica enforces (NOT NULL) is a conflict too.
    let loose = "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT)";
    let r = f.commit(
        &record(loose, "", "INSERT INTO notes VALUES (9, NULL, NULL)"),
        "nn",
    );
    assert_problem(&r, 409, "conflict");
    assert_eq!(r.body["rows"][0]["reason"], "constraint");
    assert_eq!(f.head(), before);

    // bad_request: malformed headers.
    let mut h = f.good_headers("k3");
    h[0].1 = "3".into();
    assert_problem(&f.raw_commit(&h, good.clone()), 400, "bad_request");
    let mut h = f.good_headers("k3");
    h[1].1 = "has space".into();
    let r = f.raw_commit(&h, good.clone());
    assert_problem(&r, 400, "bad_request");
    assert!(r.body["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    let h = f.good_headers("k3")[..2].to_vec();
    assert_problem(&f.raw_commit(&h, good.clone()), 400, "bad_request");

    // too_large: declared length and chunked body both.
    let big = vec![b'T'; 5000];
    assert_problem(
        &f.raw_commit(&f.good_headers("big"), big.clone()),
        413,
        "too_large",
    );
    let chunked = reqwest::blocking::Body::new(std::io::Cursor::new(big));
    let mut req = reqwest::blocking::Client::new()
        .post(format!("{}/v1/groups/g/commits", f.c.url))
        .bearer_auth(f.c.token.as_deref().unwrap());
    for (k, v) in f.good_headers("big2") {
        req = req.header(k, v);
    }
    let resp = req.body(chunked).send().unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    // not_found: unknown group and unknown route.
    let r = f.c.info("nope");
    assert_problem(&r, 404, "not_found");
    let r = f.c.send("GET", "/v2/whatever", &[], None).unwrap();
    assert_problem(&r, 404, "not_found");

    // unauthorized / forbidden.
    assert_problem(&f.c.with_token(None).info("g"), 401, "unauthorized");
    let reader = f.c.with_token(Some(&f.w.token("r", "g", "read", 600)));
    assert_problem(&reader.create_group("g", DDL), 403, "forbidden");

    assert_eq!(f.head(), before, "no rejected request changed the head");
    assert_eq!(f.c.history("g").len(), 1);

    let metrics = f.c.send("GET", "/metrics", &[], None).unwrap();
    let text = metrics.body.as_str().unwrap();
    for code in [
        "schema_mismatch",
        "invalid_changeset",
        "conflict",
        "bad_request",
        "too_large",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("pdb_rejections_total{{code=\"{code}\"}}")))
            .unwrap();
        assert_ne!(line.split(' ').next_back(), Some("0"), "{line}");
    }
    assert!(text.contains("pdb_commits_total 1"));
}

#[test]
fn policies_decide_what_a_stale_base_may_do() {
    let f = start("policy", &[]);
    let base0 = (0, genesis("g"));
    assert_eq!(f.commit(&insert(1, "a"), "k1").status, 201);
    let ((_, head1), _) = f.head();

    // fast-forward: any stale base is refused, with the current head to resync from.
    let r = f.commit_on(&insert(2, "b"), "ff", base0, Some("fast-forward"));
    assert_problem(&r, 409, "stale_base");
    assert_eq!(r.body["seq"], 1);
    assert_eq!(r.body["head"], hex(&head1));
    // ...but the head itself is fine.
    let r = f.commit_on(&insert(2, "b"), "ff2", (1, head1), Some("fast-forward"));
    assert_eq!(r.status, 201, "{:?}", r.body);

    // rebase-if-clean (the default): a stale base is fine when nothing conflicts...
    let r = f.commit_on(&insert(3, "c"), "rc", base0, None);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(cert(&r).seq, 3);
    // ...and refused as a conflict when the changeset does not apply to the head.
    let upd = record(
        DDL,
        "INSERT INTO notes VALUES (1, 'a', NULL)",
        "UPDATE notes SET title = 'x' WHERE id = 1",
    );
    assert_eq!(f.commit_on(&upd, "u1", base0, None).status, 201);
    let stale_upd = record(
        DDL,
        "INSERT INTO notes VALUES (1, 'a', NULL)",
        "UPDATE notes SET title = 'y' WHERE id = 1",
    );
    let r = f.commit_on(&stale_upd, "u2", (1, head1), Some("rebase-if-clean"));
    assert_problem(&r, 409, "conflict");
    assert_eq!(r.body["rows"][0]["reason"], "data");
    assert_eq!(r.body["seq"], 4);

    // A base that is not in the history, or is ahead of it, is stale under any policy.
    let r = f.commit_on(&insert(5, "e"), "fork", (1, [9; 32]), None);
    assert_problem(&r, 409, "stale_base");
    let r = f.commit_on(&insert(5, "e"), "ahead", (99, head1), None);
    assert_problem(&r, 409, "stale_base");
    assert_eq!(f.head().0 .0, 4);
}

#[test]
fn checks_run_in_the_documented_order() {
    let f = start("checks", &[]);
    assert_eq!(f.commit(&insert(1, "a"), "k1").status, 201);
    let garbage = b"not a changeset".to_vec();
    // Authentication before everything.
    let anon = f.c.with_token(None);
    let r = anon
        .send("POST", "/v1/groups/g/commits", &[], Some(garbage.clone()))
        .unwrap();
    assert_problem(&r, 401, "unauthorized");
    // Schema before the changeset.
    let ((seq, head), _) = f.head();
    let mk = |body: &[u8], key: &str, schema: Hash, base: (u64, Hash)| {
        f.c.commit(
            "g",
            &Commit {
                changeset: body,
                base_seq: base.0,
                base_head: base.1,
                key,
                schema,
                policy: Some("fast-forward"),
            },
        )
    };
    let (_, schema) = f.head();
    assert_problem(
        &mk(&garbage, "a", [0; 32], (seq, head)),
        409,
        "schema_mismatch",
    );
    // The changeset before the base.
    assert_problem(
        &mk(&garbage, "b", schema, (0, genesis("g"))),
        422,
        "invalid_changeset",
    );
    // The base before applying.
    assert_problem(
        &mk(&insert(1, "dup"), "c", schema, (0, genesis("g"))),
        409,
        "stale_base",
    );
    assert_problem(
        &mk(&insert(1, "dup"), "d", schema, (seq, head)),
        409,
        "conflict",
    );
}

#[test]
fn groups_are_created_once_with_a_checked_schema() {
    let w = WitnessProc::start(&temp_dir("groups"));
    let c = w.admin_client();
    let r = c.create_group("a", DDL);
    assert_eq!(r.status, 201);
    assert_eq!(r.body["seq"], 0);
    assert_eq!(r.body["head"], hex(&genesis("a")));
    assert_eq!(r.body["tables"][0]["name"], "notes");
    // Same DDL again: the existing group, unchanged.
    let again = c.create_group("a", DDL);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, r.body);
    // The schema hash is DESIGN §4's, the same the client computes.
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    let tables = vec![
        pdb_client::schema::table_info(&conn, "notes").unwrap(),
        pdb_client::schema::table_info(&conn, "tags").unwrap(),
    ];
    assert_eq!(
        r.body["schema_hash"],
        hex(&pdb_client::schema::schema_hash(&tables))
    );

    let r = c.create_group("a", "CREATE TABLE other(id INTEGER PRIMARY KEY)");
    assert_problem(&r, 409, "schema_mismatch");
    for (ddl, why) in [
        ("CREATE TABLE t(a, b)", "PRIMARY KEY"),
        ("CREATE TABLE t(id INTEGER PRIMARY KEY); CREATE VIEW v AS SELECT * FROM t", "view"),
        ("CREATE TABLE t(id INTEGER PRIMARY KEY); CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END", "trigger"),
        ("CREATE TABLE pdb_x(id INTEGER PRIMARY KEY)", "internal"),
        ("CREATE TABLE", "does not parse"),
        ("", "no table"),
    ] {
        let r = c.create_group("b", ddl);
        assert_problem(&r, 400, "invalid_schema");
        assert!(r.body["detail"].as_str().unwrap().contains(why), "{ddl}: {:?}", r.body);
    }
    assert_problem(&c.info("b"), 404, "not_found");
    for bad in ["..", ".hidden", "-x", "a%2Fb", &"x".repeat(65)] {
        let r = c.create_group(bad, DDL);
        assert!(matches!(r.status, 400 | 404), "{bad}: {:?}", r.body);
    }
    let r = c
        .send(
            "PUT",
            "/v1/groups/c",
            &[],
            Some(b"CREATE TABLE t(id INTEGER PRIMARY KEY)".to_vec()),
        )
        .unwrap();
    assert_problem(&r, 400, "bad_request");
}

#[test]
fn long_polls_and_the_watch_stream_see_new_commits() {
    let f = start("watch", &[]);
    // A long-poll with nothing new returns empty when its time is up.
    let t = Instant::now();
    let r =
        f.c.send("GET", "/v1/groups/g/commits?after=0&wait=1", &[], None)
            .unwrap();
    assert_eq!(r.body["commits"], Value::Array(vec![]));
    assert!(t.elapsed() >= Duration::from_millis(900));

    let watch = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{}/v1/groups/g/watch?after=0", f.c.url))
        .bearer_auth(f.c.token.as_deref().unwrap())
        .send()
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);
    assert!(watch.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));

    let poll = {
        let c = f.c.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = c
                .send("GET", "/v1/groups/g/commits?after=0&wait=20", &[], None)
                .unwrap();
            (r, t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let cs = insert(1, "a");
    let committed = f.commit(&cs, "k1");
    assert_eq!(committed.status, 201);
    let (r, took) = poll.join().unwrap();
    assert!(
        took < Duration::from_secs(10),
        "the long-poll woke on the commit"
    );
    assert_eq!(r.body["commits"][0]["head"], committed.body["head"]);

    let mut lines = BufReader::new(watch).lines();
    let (mut id, mut data) = (None, None);
    while data.is_none() {
        let line = lines.next().expect("stream open").unwrap();
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
        }
    }
    // The id is the cursor `seq:head` that a reconnect sends back.
    assert_eq!(
        id.unwrap(),
        format!("1:{}", committed.body["head"].as_str().unwrap())
    );
    let event = data.unwrap();
    assert_eq!(Certificate::from_json(&event).unwrap(), cert(&committed));
    assert_eq!(changeset_of(&event), cs);
}

fn dump(conn: &Connection, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs `pdb-witness <cmd> <dir> --data <data>` and requires it to succeed.
fn witness_cli(cmd: &str, dir: &std::path::Path, data: &std::path::Path) {
    let out = std::process::Command::new(pdb_tests::witness::witness_bin())
        .arg(cmd)
        .arg(dir)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn replay(history: &[Value]) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(DDL).unwrap();
    for c in history {
        pdb_tests::session_apply(&conn, &changeset_of(c), "abort").unwrap();
    }
    conn
}

#[test]
fn restarts_keep_the_history_and_backups_restore_a_consistent_prefix() {
    let mut f = start("restart", &[]);
    for i in 1..=20 {
        assert_eq!(f.commit(&insert(i, "x"), &format!("k{i}")).status, 201);
    }
    let upd = record(
        DDL,
        "INSERT INTO notes VALUES (3, 'x', NULL)",
        "UPDATE notes SET body = 'b' WHERE id = 3",
    );
    assert_eq!(f.commit(&upd, "u").status, 201);
    let del = record(
        DDL,
        "INSERT INTO notes VALUES (4, 'x', NULL)",
        "DELETE FROM notes WHERE id = 4",
    );
    assert_eq!(f.commit(&del, "d").status, 201);
    let before = f.c.history("g");

    // A backup taken while commits continue.
    let backup = temp_dir("restart-backup");
    let writer = {
        let c = f.c.clone();
        std::thread::spawn(move || {
            for i in 100..160 {
                let ((seq, head), schema) = c.head("g");
                let cs = insert(i, "during");
                let r = c.commit(
                    "g",
                    &Commit {
                        changeset: &cs,
                        base_seq: seq,
                        base_head: head,
                        key: &format!("b{i}"),
                        schema,
                        policy: None,
                    },
                );
                assert_eq!(r.status, 201, "{:?}", r.body);
            }
        })
    };
    witness_cli("backup", &backup, &f.w.data);
    writer.join().unwrap();

    let full = f.c.history("g");
    assert_eq!(&full[..before.len()], &before[..]);
    assert!(f.w.stop().success(), "graceful stop");
    let replica = Connection::open(f.w.data.join("groups/g.db")).unwrap();
    let q = "SELECT * FROM notes ORDER BY id";
    assert_eq!(
        dump(&replica, q),
        dump(&replay(&full), q),
        "replica = replay of the history"
    );
    drop(replica);

    // Same data dir: same key, same head.
    let w2 = WitnessProc::start(&f.w.data);
    assert_eq!(w2.key, f.w.key);
    f.c = w2.admin_client();
    assert_eq!(f.c.history("g"), full);
    assert_eq!(f.commit(&insert(500, "after"), "after-restart").status, 201);
    drop(w2);

    // The backup: a prefix of the history, consistent with its replica once started.
    let restored = temp_dir("restart-restored");
    witness_cli("restore", &backup, &restored);
    let w3 = WitnessProc::start(&restored);
    assert_eq!(w3.key, f.w.key);
    let c3 = w3.admin_client();
    let prefix = c3.history("g");
    assert!(prefix.len() >= before.len() && prefix.len() <= full.len());
    assert_eq!(&full[..prefix.len()], &prefix[..]);
    let ((seq, _), _) = c3.head("g");
    assert_eq!(seq as usize, prefix.len());
    let state = c3.info("g").body["state"].clone();
    assert_eq!(state, prefix.last().unwrap()["state"]);
    drop(w3);
    let replica = Connection::open(restored.join("groups/g.db")).unwrap();
    assert_eq!(dump(&replica, q), dump(&replay(&prefix), q));
    for d in [&f.w.data, &backup, &restored] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn a_watch_stream_ends_when_its_token_expires() {
    let f = start("expiry", &[]);
    let short = f.w.token("r", "g", "read", 2);
    let t = Instant::now();
    let watch = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{}/v1/groups/g/watch?after=0", f.c.url))
        .bearer_auth(short)
        .send()
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);
    // Reading to the end returns once the server closes the stream.
    let mut lines = BufReader::new(watch).lines();
    while let Some(Ok(_)) = lines.next() {}
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "closed at expiry, after {took:?}"
    );
}

#[test]
fn a_pull_at_the_head_while_commits_land_is_never_compacted() {
    // Pulls ask for what follows the head they last saw while another client commits
    // as fast as it can: each answer is a page (perhaps empty) that never runs ahead of
    // the head it names, and never 410, since nothing was compacted.
    let f = start("pull-race", &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, token) = (f.c.url.clone(), f.c.token.clone());
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = Client::new(&url, token.as_deref());
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 3000 {
                n += 1;
                let ((seq, head), schema) = c.head("g");
                let cs = insert(n, "race");
                let key = format!("race-{n}");
                let commit = Commit {
                    changeset: &cs,
                    base_seq: seq,
                    base_head: head,
                    key: &key,
                    schema,
                    policy: None,
                };
                assert!(matches!(c.commit("g", &commit).status, 201 | 409));
            }
        })
    };
    let until = Instant::now() + Duration::from_secs(4);
    let mut after = 0;
    let mut pulls = 0;
    while Instant::now() < until {
        let r = f.c.pull("g", after, 1000);
        assert_eq!(r.status, 200, "pull after {after}: {:?}", r.body);
        let head = r.body["head"]["seq"].as_u64().unwrap();
        let commits = r.body["commits"].as_array().unwrap();
        if let Some(last) = commits.last() {
            let last = last["seq"].as_u64().unwrap();
            assert!(last <= head, "a page past its head {head}: {last}");
            after = last;
        } else {
            assert_eq!(head, after, "an empty page under a later head");
        }
        pulls += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(pulls > 50 && after > 50, "{pulls} pulls, up to seq {after}");
}
