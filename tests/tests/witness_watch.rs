//! The watch stream as a builder outside the witness follows it (projections research
//! §1.6), against a real `pdb-witness` process over loopback HTTP.
//!
//! What such a builder relies on: each event's id is the cursor `seq:head`, and a
//! reconnect with it (`Last-Event-ID`, or `after=`) resumes with the next commit, never
//! one before; a cursor whose head is not this history's at its seq is refused with
//! `409 cursor_mismatch` naming the witness's head, before anything is streamed; a
//! cursor older than the history kept is `410 compacted` with the manifest of the
//! snapshot to start again from, and a stream that falls behind a compaction ends with
//! that problem as an `error` event instead of skipping the gap; `format=rows` sends each commit's changes as typed
//! rows (UPDATEs as partial as the changeset), an unknown format is `400`; an idle
//! stream sends a keep-alive comment.

use std::io::{BufRead, BufReader, Lines};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pdb_client::cert::{genesis, hex, parse_hash, Hash};
use pdb_client::snapshot::Manifest;
use pdb_tests::witness::{Client, Commit, WitnessClient, WitnessProc};
use rusqlite::Connection;
use serde_json::{json, Value};

const DDL: &str = "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, \
                   photo BLOB, qty INTEGER);\
                   CREATE TABLE tags(item INTEGER NOT NULL, tag TEXT NOT NULL, \
                   PRIMARY KEY(item, tag)) WITHOUT ROWID;";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdb-witness-watch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn start(name: &str, args: &[&str]) -> (WitnessProc, Client) {
    let w = WitnessProc::start_with(&temp_dir(name), args, &[]).removing_data();
    let c = w.admin_client();
    (w, c)
}

/// One device writing to a group: SQL on its own copy of the tables, committed as the
/// session extension records it, each on the head before it.
struct Writer {
    c: Client,
    group: String,
    model: Connection,
    schema: Hash,
    /// `heads[seq]`, genesis first.
    heads: Vec<Hash>,
}

impl Writer {
    fn new(c: &Client, group: &str) -> Writer {
        assert_eq!(c.create_group(group, DDL).status, 201);
        let model = Connection::open_in_memory().expect("open");
        model.execute_batch(DDL).expect("ddl");
        Writer {
            schema: c.head(group).1,
            c: c.clone(),
            group: group.to_string(),
            model,
            heads: vec![genesis(group)],
        }
    }

    /// Commits what `sql` changes; returns the certificate's seq.
    fn commit(&mut self, sql: &str) -> u64 {
        let mut session = rusqlite::session::Session::new(&self.model).expect("session");
        session.attach(None::<&str>).expect("attach");
        self.model.execute_batch(sql).expect("sql");
        let mut cs = Vec::new();
        session.changeset_strm(&mut cs).expect("changeset");
        drop(session);
        let seq = self.heads.len() as u64 - 1;
        let key = format!("{}-{}", self.group, seq + 1);
        let r = self.c.commit(
            &self.group,
            &Commit {
                changeset: &cs,
                base_seq: seq,
                base_head: self.heads[seq as usize],
                key: &key,
                schema: self.schema,
                policy: None,
            },
        );
        assert_eq!(r.status, 201, "{sql}: {:?}", r.body);
        self.heads
            .push(parse_hash(r.body["head"].as_str().expect("head")).expect("head"));
        seq + 1
    }

    /// The cursor `seq:head` of this device's commit `seq`.
    fn cursor(&self, seq: u64) -> String {
        format!("{seq}:{}", hex(&self.heads[seq as usize]))
    }
}

/// One server-sent event.
#[derive(Debug)]
struct Ev {
    event: String,
    id: Option<String>,
    data: String,
}

impl Ev {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

/// A watch request's answer: a stream to read event by event, or a refusal.
enum Watch {
    Stream(Lines<BufReader<reqwest::blocking::Response>>),
    Refused(u16, String, Value),
}

/// `GET /v1/groups/{group}/watch?<query>`, with `Last-Event-ID` if given.
fn watch(c: &Client, group: &str, query: &str, last_event_id: Option<&str>) -> Watch {
    let mut req = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
        .get(format!("{}/v1/groups/{group}/watch?{query}", c.url))
        .bearer_auth(c.token.as_deref().expect("token"));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().expect("witness reachable");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if status == 200 {
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Watch::Stream(BufReader::new(resp).lines())
    } else {
        let body = serde_json::from_slice(&resp.bytes().expect("body")).unwrap_or(Value::Null);
        Watch::Refused(status, content_type, body)
    }
}

impl Watch {
    fn stream(self) -> Lines<BufReader<reqwest::blocking::Response>> {
        match self {
            Watch::Stream(s) => s,
            Watch::Refused(status, _, body) => panic!("refused {status}: {body}"),
        }
    }

    /// The refusal, required to be `status` with problem `code`.
    fn refused(self, status: u16, code: &str) -> Value {
        match self {
            Watch::Stream(_) => panic!("streamed, expected {status} {code}"),
            Watch::Refused(s, content_type, body) => {
                assert_eq!((s, body["code"].as_str()), (status, Some(code)), "{body}");
                assert_eq!(content_type, "application/problem+json");
                body
            }
        }
    }
}

/// The next event (keep-alive comments skipped); `None` once the stream ends.
fn next_event(lines: &mut Lines<BufReader<reqwest::blocking::Response>>) -> Option<Ev> {
    let mut ev = Ev {
        event: String::new(),
        id: None,
        data: String::new(),
    };
    loop {
        let line = lines.next()?.expect("read the stream");
        if line.is_empty() {
            if !ev.event.is_empty() || !ev.data.is_empty() {
                return Some(ev);
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (k, v) = line.split_once(':').unwrap_or((&line, ""));
        let v = v.strip_prefix(' ').unwrap_or(v).to_string();
        match k {
            "event" => ev.event = v,
            "id" => ev.id = Some(v),
            "data" => ev.data += &v,
            _ => {}
        }
    }
}

/// The next event, required to be the commit `seq` of `w`'s history; its data.
fn expect_commit(
    lines: &mut Lines<BufReader<reqwest::blocking::Response>>,
    w: &Writer,
    seq: u64,
) -> Value {
    let ev = next_event(lines).expect("an event");
    assert_eq!(ev.event, "commit", "{ev:?}");
    assert_eq!(ev.id.as_deref(), Some(w.cursor(seq).as_str()), "{ev:?}");
    let data = ev.json();
    assert_eq!(data["seq"], seq);
    data
}

#[test]
fn ids_are_cursors_and_a_reconnect_resumes_after_its_last_event_id() {
    let (_w, c) = start("resume", &[]);
    let mut w = Writer::new(&c, "g");
    for i in 1..=3 {
        w.commit(&format!(
            "INSERT INTO items VALUES ({i}, 'item {i}', NULL, NULL, {i})"
        ));
    }
    let history = c.history("g");

    // From the start: every commit in order, each with id `seq:head` and the same JSON
    // as a pull page's commits.
    let mut s = watch(&c, "g", "after=0", None).stream();
    for seq in 1..=3 {
        assert_eq!(expect_commit(&mut s, &w, seq), history[seq as usize - 1]);
    }
    // Live commits follow on the same stream.
    w.commit("UPDATE items SET qty = 40 WHERE id = 1");
    expect_commit(&mut s, &w, 4);
    drop(s);

    // A reconnect resumes with the commit after its Last-Event-ID, which wins over
    // `after`; the bare seq form of earlier streams is still accepted; so is a cursor
    // in `after`, the genesis head at seq 0 included.
    for (query, last, first) in [
        ("after=0", Some(w.cursor(2)), 3),
        ("", Some(w.cursor(3)), 4),
        ("", Some("1".to_string()), 2),
        (&format!("after={}", w.cursor(2)), None, 3),
        (&format!("after={}", w.cursor(0)), None, 1),
        ("after=3", None, 4),
        // An empty Last-Event-ID (an EventSource that saw no event yet) is no cursor.
        ("after=2", Some(String::new()), 3),
    ] {
        let mut s = watch(&c, "g", query, last.as_deref()).stream();
        expect_commit(&mut s, &w, first);
    }

    // A cursor at the head streams nothing until the next commit, then exactly it.
    let mut s = watch(&c, "g", &format!("after={}", w.cursor(4)), None).stream();
    let t = std::thread::spawn(move || {
        let ev = next_event(&mut s).expect("an event");
        (ev.id.clone(), ev.json())
    });
    std::thread::sleep(Duration::from_millis(300));
    w.commit("DELETE FROM items WHERE id = 2");
    let (id, data) = t.join().expect("reader");
    assert_eq!(id, Some(w.cursor(5)));
    assert_eq!(data, c.history("g")[4]);
}

#[test]
fn a_cursor_from_another_history_is_409_cursor_mismatch() {
    let (_w, c) = start("mismatch", &[]);
    let mut w = Writer::new(&c, "g");
    let mut other = Writer::new(&c, "other");
    for i in 1..=3 {
        w.commit(&format!(
            "INSERT INTO items VALUES ({i}, 'g {i}', NULL, NULL, NULL)"
        ));
        other.commit(&format!(
            "INSERT INTO items VALUES ({i}, 'o {i}', NULL, NULL, NULL)"
        ));
    }
    let head = json!({"seq": 3, "head": hex(&w.heads[3])});
    let at = |seq: u64| Value::from(hex(&w.heads[seq as usize]));

    // Another group's cursors (as from another witness or a restored history) at each
    // kind of seq: genesis, inside the history, the head, past the head.
    let past = format!("9:{}", hex(&other.heads[3]));
    for (cursor, have) in [
        (other.cursor(0), at(0)),
        (other.cursor(2), at(2)),
        (other.cursor(3), at(3)),
        (past, Value::Null),
    ] {
        for (query, last) in [
            (format!("after={cursor}"), None),
            ("after=0".to_string(), Some(cursor.as_str())),
        ] {
            let body = watch(&c, "g", &query, last).refused(409, "cursor_mismatch");
            assert_eq!((&body["seq"], &body["head"]), (&head["seq"], &head["head"]));
            assert_eq!(body["head_at_seq"], have, "{cursor}");
        }
    }

    // Malformed cursors are 400, naming where they came from.
    for (query, last, named) in [
        ("after=x", None, "after"),
        ("after=-1", None, "after"),
        ("after=2:abc", None, "after"),
        ("after=:", None, "after"),
        ("", Some("two"), "Last-Event-ID"),
        ("after=1", Some("1:zz"), "Last-Event-ID"),
    ] {
        let body = watch(&c, "g", query, last).refused(400, "bad_request");
        let detail = body["detail"].as_str().expect("detail");
        assert!(detail.starts_with(named), "{query} {last:?}: {detail}");
    }
    // Its own cursors still stream.
    let mut s = watch(&c, "g", &format!("after={}", w.cursor(1)), None).stream();
    expect_commit(&mut s, &w, 2);
}

#[test]
fn format_rows_decodes_each_change_with_typed_values() {
    let (_w, c) = start("rows", &[]);
    let mut w = Writer::new(&c, "g");
    w.commit(
        "INSERT INTO items VALUES (1, 'say \"hi\"\nthen é', 0.1, x'00ff10', -9223372036854775808);\
         INSERT INTO items VALUES (2, 'two', 1e300, NULL, 7);\
         INSERT INTO items VALUES (3, 'three', -0.5, x'', NULL);\
         INSERT INTO tags VALUES (1, 'red'), (2, 'blue');",
    );
    w.commit(
        "UPDATE items SET price = 2.5, photo = x'abcd' WHERE id = 1;\
         UPDATE items SET name = 'THREE' WHERE id = 3;\
         DELETE FROM items WHERE id = 2;\
         DELETE FROM tags WHERE item = 2;\
         INSERT INTO tags VALUES (3, 'green');",
    );
    let history = c.history("g");

    let mut s = watch(&c, "g", "after=0&format=rows", None).stream();
    let first = expect_commit(&mut s, &w, 1);
    let second = expect_commit(&mut s, &w, 2);
    let blob = |h: &str| json!({ "blob": h });
    let want = [
        vec![
            json!({"table": "items", "op": "insert", "pk": [1], "old": null,
                   "new": {"id": 1, "name": "say \"hi\"\nthen é", "price": 0.1,
                           "photo": blob("00ff10"), "qty": i64::MIN}}),
            json!({"table": "items", "op": "insert", "pk": [2], "old": null,
                   "new": {"id": 2, "name": "two", "price": 1e300, "photo": null, "qty": 7}}),
            json!({"table": "items", "op": "insert", "pk": [3], "old": null,
                   "new": {"id": 3, "name": "three", "price": -0.5, "photo": blob(""),
                           "qty": null}}),
            json!({"table": "tags", "op": "insert", "pk": [1, "red"], "old": null,
                   "new": {"item": 1, "tag": "red"}}),
            json!({"table": "tags", "op": "insert", "pk": [2, "blue"], "old": null,
                   "new": {"item": 2, "tag": "blue"}}),
        ],
        vec![
            // UPDATEs as partial as the changeset: the key and the changed columns
            // before, the changed columns after.
            json!({"table": "items", "op": "update", "pk": [1],
                   "old": {"id": 1, "price": 0.1, "photo": blob("00ff10")},
                   "new": {"price": 2.5, "photo": blob("abcd")}}),
            json!({"table": "items", "op": "delete", "pk": [2], "new": null,
                   "old": {"id": 2, "name": "two", "price": 1e300, "photo": null, "qty": 7}}),
            json!({"table": "items", "op": "update", "pk": [3],
                   "old": {"id": 3, "name": "three"}, "new": {"name": "THREE"}}),
            json!({"table": "tags", "op": "delete", "pk": [2, "blue"], "new": null,
                   "old": {"item": 2, "tag": "blue"}}),
            json!({"table": "tags", "op": "insert", "pk": [3, "green"], "old": null,
                   "new": {"item": 3, "tag": "green"}}),
        ],
    ];
    for ((event, pulled), want) in [&first, &second].into_iter().zip(&history).zip(want) {
        // The commit's certificate and submitter as a pull has them; changes for the
        // changeset.
        let mut fields = event.as_object().expect("object").clone();
        let mut changes = fields
            .remove("changes")
            .and_then(|c| c.as_array().cloned())
            .expect("changes");
        let mut pulled = pulled.as_object().expect("object").clone();
        pulled.remove("changeset");
        assert_eq!(fields, pulled);
        // The session extension's order within a changeset is its own.
        let order = |v: &Value| (v["table"].to_string(), v["pk"].to_string());
        changes.sort_by_key(order);
        let mut want = want;
        want.sort_by_key(order);
        assert_eq!(changes, want);
    }
    // REALs and INTEGERs keep their type and every bit.
    let new = &first["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["pk"] == json!([1]))
        .unwrap()["new"];
    assert_eq!(
        new["price"].as_f64().map(f64::to_bits),
        Some(0.1f64.to_bits())
    );
    assert!(new["price"].is_f64() && new["qty"].is_i64());

    // Unknown formats are refused, naming the parameter; an empty one is the default.
    for bad in ["json", "ROWS", "rows,commits"] {
        let body =
            watch(&c, "g", &format!("after=0&format={bad}"), None).refused(400, "bad_request");
        assert!(
            body["detail"].as_str().unwrap().contains("format"),
            "{body}"
        );
    }
    let mut s = watch(&c, "g", "after=1&format=", None).stream();
    assert_eq!(expect_commit(&mut s, &w, 2), history[1]);
}

/// A witness retaining one snapshot every 5 commits, with group `g` on it.
fn compacting(name: &str) -> (WitnessProc, Client, Writer) {
    let (w, c) = start(
        name,
        &["--snapshot-commits", "5", "--retain-snapshots", "1"],
    );
    let writer = Writer::new(&c, "g");
    (w, c, writer)
}

/// Waits (up to 60 s) until the commits of `g` are compacted up to a snapshot at
/// `snapshot` or later; the oldest head kept.
fn compacted_to(c: &Client, snapshot: u64) -> u64 {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.pull("g", 0, 1);
        let (newest, oldest) = (
            r.body["snapshot_seq"].as_u64(),
            r.body["oldest_seq"].as_u64(),
        );
        // The snapshot is recorded before the commits below it go, so a pull can see
        // the new snapshot beside the old horizon for a moment; with one snapshot
        // retained the horizon settles at the head just below it.
        if r.status == 410 && newest >= Some(snapshot) && oldest.map(|o| o + 1) == newest {
            return oldest.expect("oldest_seq");
        }
        assert!(
            Instant::now() < until,
            "not compacted to {snapshot}: {:?}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cursor_older_than_the_history_kept_is_410_with_the_snapshot_to_restart_from() {
    let (w_proc, c, mut w) = compacting("compacted");
    for i in 1..=17 {
        w.commit(&format!(
            "INSERT INTO items VALUES ({i}, 'n{i}', {i}.5, NULL, NULL)"
        ));
    }
    let oldest = compacted_to(&c, 15);
    assert!(oldest > 1, "{oldest}");

    // Below the oldest head kept, in any form and format: 410 with the manifest.
    for (query, last) in [
        ("after=0".to_string(), None),
        ("after=0&format=rows".to_string(), None),
        (format!("after={}", w.cursor(oldest - 1)), None),
        (String::new(), Some(w.cursor(1))),
        (String::new(), Some((oldest - 1).to_string())),
    ] {
        let body = watch(&c, "g", &query, last.as_deref()).refused(410, "compacted");
        assert_eq!(body["oldest_seq"], oldest, "{body}");
        let m = Manifest::from_json(&body["snapshot"]).expect("a snapshot manifest");
        assert_eq!(body["snapshot_seq"], m.seq);
        assert!(m.seq >= oldest, "{} < {oldest}", m.seq);
        assert_eq!(m.head, w.heads[m.seq as usize]);
        assert_eq!(m.verify(&w_proc.key), Ok(()));
    }

    // The snapshot named is one to start from: its file is served under its hash, and
    // its seq and head are a cursor the stream continues from.
    let body = watch(&c, "g", "after=0", None).refused(410, "compacted");
    let m = Manifest::from_json(&body["snapshot"]).expect("manifest");
    let file = c.object(&hex(&m.blake3), None);
    assert_eq!(file.status, 200);
    assert_eq!(*blake3::hash(&file.bytes).as_bytes(), m.blake3);
    // One more, so that a cursor at the snapshot has a commit to follow even when the
    // snapshot is at the head.
    w.commit("INSERT INTO items VALUES (18, 'n18', NULL, NULL, NULL)");
    let kept = c.pull("g", oldest, 1000);
    assert_eq!(kept.status, 200, "{:?}", kept.body);
    let history = kept.body["commits"].as_array().expect("commits").clone();
    for from in [m.seq, oldest] {
        let cursor = format!("{from}:{}", hex(&w.heads[from as usize]));
        let mut s = watch(&c, "g", &format!("after={cursor}"), None).stream();
        let first = expect_commit(&mut s, &w, from + 1);
        let pulled = history
            .iter()
            .find(|h| h["seq"] == from + 1)
            .expect("pulled");
        assert_eq!(&first, pulled);
    }
}

#[test]
fn a_stream_left_behind_a_compaction_ends_with_a_compacted_error_event() {
    let (_w, c, mut w) = compacting("behind");
    // Opened at genesis and not read: once the socket's buffers and the page read
    // ahead are full (a few 500 kB commits), the stream waits at a seq the retention
    // below compacts away.
    let mut s = watch(&c, "g", "after=0", None).stream();
    for i in 1..=30 {
        w.commit(&format!(
            "INSERT INTO items VALUES ({i}, 'n{i}', NULL, randomblob(500000), NULL)"
        ));
    }
    let oldest = compacted_to(&c, 25);
    // What was sent arrives, in order; then, instead of a gap, the error that says
    // where to start again, and the end of the stream.
    let mut seq = 0;
    let error = loop {
        let ev = next_event(&mut s).expect("an event before the stream ends");
        if ev.event != "commit" {
            break ev;
        }
        seq += 1;
        assert_eq!(ev.id, Some(w.cursor(seq)));
    };
    assert!(seq < oldest, "sent {seq} commits, compacted to {oldest}");
    assert_eq!(error.event, "error");
    let problem = error.json();
    assert_eq!(problem["code"], "compacted", "{problem}");
    assert_eq!(problem["oldest_seq"], oldest);
    let m = Manifest::from_json(&problem["snapshot"]).expect("manifest");
    assert_eq!(m.head, w.heads[m.seq as usize]);
    assert!(next_event(&mut s).is_none(), "the stream ends");
}

#[test]
fn an_idle_stream_sends_a_keep_alive_comment() {
    let (_w, c) = start("keepalive", &[]);
    let w = Writer::new(&c, "g");
    let t = Instant::now();
    let mut s = watch(&c, "g", &format!("after={}", w.cursor(0)), None).stream();
    let line = s.next().expect("a line").expect("read");
    let took = t.elapsed();
    assert!(line.starts_with(':'), "{line:?}");
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(30),
        "{took:?}"
    );
}
