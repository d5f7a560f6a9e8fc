//! What one client may hold of a real `pdb-witness`: sockets that never send a request,
//! or send half a header, or stay kept alive, are closed after `--idle-timeout` while
//! real clients go on being served; no more than `--max-connections` sockets are
//! accepted; a request not done within `--request-timeout` gets `503 unavailable`,
//! while a long-poll waiting longer and a watch stream are not cut.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pdb_client::cert::hex;
use pdb_tests::witness::{record, Client, Commit, WitnessClient, WitnessProc};
use serde_json::Value;

const DDL: &str = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pdb-witness-limits-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn addr(w: &WitnessProc) -> String {
    w.url.trim_start_matches("http://").to_string()
}

/// The sockets the witness process has open (its listener included).
fn sockets_of(w: &WitnessProc) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", w.pid()))
        .expect("the witness's fd table")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Commits a fresh row on the group's head and checks it is certified.
fn commit_one(c: &Client, id: i64) {
    let ((seq, head), schema) = c.head("g");
    let cs = record(
        DDL,
        "",
        &format!("INSERT INTO notes VALUES ({id}, 'n{id}')"),
    );
    let r = c.commit(
        "g",
        &Commit {
            changeset: &cs,
            base_seq: seq,
            base_head: head,
            key: &format!("k{id}"),
            schema,
            policy: None,
        },
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// Whether the peer closed `s` before `deadline`.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Reads one HTTP/1.1 answer: status, lower-cased head, body (by `content-length`).
fn read_answer(s: &mut TcpStream) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("content-length"));
    let mut body = got[end..].to_vec();
    while body.len() < length {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok((status, head, body))
}

/// A connection that has had one answer and is kept alive.
fn kept_alive(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n")
        .expect("send");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, _, body) = read_answer(&mut s).expect("an answer");
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
    s
}

#[test]
fn idle_and_slow_header_sockets_neither_starve_clients_nor_outlive_the_idle_timeout() {
    let w = WitnessProc::start_with(&temp_dir("idle"), &["--idle-timeout", "3"], &[]);
    let addr = addr(&w);
    let c = w.admin_client();
    assert_eq!(c.create_group("g", DDL).status, 201);
    let before = sockets_of(&w);

    let opened = Instant::now();
    let mut held: Vec<TcpStream> = Vec::new();
    // Silent: connected, never a byte.
    for _ in 0..300 {
        held.push(TcpStream::connect(&addr).expect("connect"));
    }
    // Slow headers: a request line and part of a header, then a byte now and then.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.write_all(format!("GET /v1/groups/g HTTP/1.1\r\nHost: w\r\nX-Slow-{i}: ").as_bytes())
                .expect("send");
            s
        })
        .collect();
    // Kept alive after one answer.
    for _ in 0..20 {
        held.push(kept_alive(&addr));
    }

    // Real clients, meanwhile, are answered at once.
    let served = Instant::now();
    for id in 1..=5 {
        let t = Instant::now();
        commit_one(&c, id);
        let r = c.pull("g", 0, 100);
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            r.body["commits"].as_array().expect("commits").len(),
            id as usize
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "slow: {:?}",
            t.elapsed()
        );
    }
    for s in &mut slow {
        s.write_all(b"x").expect("the header is still being read");
    }
    assert!(
        served.elapsed() < Duration::from_secs(2),
        "the check must run well inside the idle timeout"
    );
    held.extend(slow);

    // Every one of them is closed by the witness, none early.
    std::thread::sleep((opened + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    for (i, s) in held.iter_mut().enumerate() {
        s.set_nonblocking(true).expect("non-blocking");
        let e = s.read(&mut [0u8; 64]).expect_err("no answer, no close");
        assert_eq!(
            e.kind(),
            ErrorKind::WouldBlock,
            "socket {i} closed early: {e}"
        );
        s.set_nonblocking(false).expect("blocking");
    }
    let deadline = opened + Duration::from_secs(3 + 5);
    for (i, s) in held.iter_mut().enumerate() {
        assert!(closed_by(s, deadline), "socket {i} still open");
    }
    assert!(
        sockets_of(&w) <= before + 1,
        "the witness still holds sockets"
    );
    commit_one(&c, 6);
}

#[test]
fn no_more_than_max_connections_are_accepted_and_the_rest_wait() {
    let w = WitnessProc::start_with(
        &temp_dir("cap"),
        &["--max-connections", "8", "--idle-timeout", "60"],
        &[],
    );
    let addr = addr(&w);
    let before = sockets_of(&w);
    let mut held: Vec<TcpStream> = (0..8).map(|_| kept_alive(&addr)).collect();

    // The kernel completes more handshakes, but the witness takes none of them.
    let extra: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).expect("connect to the backlog"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        sockets_of(&w),
        before + 8,
        "sockets beyond the cap were accepted"
    );
    drop(extra);

    // A new client waits for a slot ...
    let mut waiting = TcpStream::connect(&addr).expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: w\r\n\r\n")
        .expect("send");
    waiting
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    let e = waiting
        .read(&mut byte)
        .expect_err("answered beyond the cap");
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );

    // ... and gets one when a connection closes (the closed ones queued before it
    // end at once).
    drop(held.pop());
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, _, body) = read_answer(&mut waiting).expect("answered once a slot freed");
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
    assert!(sockets_of(&w) <= before + 8);
}

#[test]
fn a_request_past_the_request_timeout_is_cut_but_long_polls_and_watches_are_not() {
    let w = WitnessProc::start_with(
        &temp_dir("request"),
        &["--request-timeout", "2", "--idle-timeout", "60"],
        &[],
    );
    let c = w.admin_client();
    assert_eq!(c.create_group("g", DDL).status, 201);
    commit_one(&c, 1);
    let token = c.token.clone().expect("admin token");

    // A watch stream and a long-poll that both outlast the request timeout.
    let watch = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{}/v1/groups/g/watch?after=1", w.url))
        .bearer_auth(&token)
        .send()
        .expect("watch");
    assert_eq!(watch.status().as_u16(), 200);
    let poll = |after: u64, wait: u64| {
        let c = c.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let path = format!("/v1/groups/g/commits?after={after}&wait={wait}");
            (
                c.send("GET", &path, &[], None).expect("reachable"),
                t.elapsed(),
            )
        })
    };
    let empty = poll(1, 3);
    let woken = poll(1, 20);

    // A commit whose body never finishes arriving.
    let ((seq, head), schema) = c.head("g");
    let mut slow = TcpStream::connect(addr(&w)).expect("connect");
    let sent = Instant::now();
    slow.write_all(
        format!(
            "POST /v1/groups/g/commits HTTP/1.1\r\nHost: w\r\nAuthorization: Bearer {token}\r\n\
             Pdb-Base: {seq}:{}\r\nPdb-Schema: {}\r\nIdempotency-Key: slow\r\n\
             Content-Type: application/vnd.sqlite.changeset\r\nContent-Length: 1000\r\n\r\nT",
            hex(&head),
            hex(&schema)
        )
        .as_bytes(),
    )
    .expect("send");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, head_text, body) = read_answer(&mut slow).expect("an answer in time");
    let took = sent.elapsed();
    assert_eq!(status, 503);
    assert!(
        head_text.contains("content-type: application/problem+json"),
        "{head_text}"
    );
    let problem: Value = serde_json::from_slice(&body).expect("problem JSON");
    assert_eq!(problem["code"], "unavailable", "{problem}");
    assert_eq!(problem["timeout_s"], 2, "{problem}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // A long-poll with nothing new ends when its wait is up, past the request timeout.
    let (r, took) = empty.join().expect("long-poll");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["commits"], Value::Array(vec![]), "{:?}", r.body);
    assert!(took >= Duration::from_millis(2900), "{took:?}");

    // Later still, a commit reaches the other long-poll and the stream.
    commit_one(&c, 2);
    let (r, took) = woken.join().expect("long-poll");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["commits"][0]["seq"], 2, "{:?}", r.body);
    assert!(took >= Duration::from_millis(2900), "{took:?}");

    let mut lines = BufReader::new(watch).lines();
    let id = loop {
        let line = lines.next().expect("the stream is open").expect("read");
        if let Some(id) = line.strip_prefix("id:") {
            break id.trim().to_string();
        }
    };
    let head = c.history("g")[1]["head"]
        .as_str()
        .expect("head")
        .to_string();
    assert_eq!(id, format!("2:{head}"));
    // The slow commit was never certified.
    assert_eq!(c.history("g").len(), 2);
}
