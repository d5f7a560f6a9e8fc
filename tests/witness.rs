//! Harness for tests that need a real witness: the process comes from `pdb-testkit`
//! (re-exported here), and the tests talk to it over real HTTP.

use std::time::Duration;

use pdb_client::cert::{parse_hash, Hash};
use rusqlite::Connection;
use serde_json::Value;

pub use pdb_testkit::witness::{token, witness_bin, WitnessProc};

/// What only the tests do with a witness process.
pub trait WitnessClient {
    /// A client with the admin token.
    fn admin_client(&self) -> Client;
}

impl WitnessClient for WitnessProc {
    fn admin_client(&self) -> Client {
        Client::new(&self.url, self.admin.as_deref())
    }
}

/// An HTTP response: status and body (JSON when it parses, else a string).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The body as JSON, or as a JSON string if it is not JSON.
    pub body: Value,
}

impl Reply {
    /// The problem `code`, if this is a problem document.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }
}

/// A blocking HTTP client bound to one witness and one token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    /// Base URL.
    pub url: String,
    /// Bearer token sent with each request.
    pub token: Option<String>,
}

/// A commit to submit.
#[derive(Debug, Clone)]
pub struct Commit<'a> {
    /// The changeset.
    pub changeset: &'a [u8],
    /// `Pdb-Base` seq.
    pub base_seq: u64,
    /// `Pdb-Base` head.
    pub base_head: Hash,
    /// `Idempotency-Key`.
    pub key: &'a str,
    /// `Pdb-Schema`.
    pub schema: Hash,
    /// `Pdb-Policy`, if sent.
    pub policy: Option<&'a str>,
}

impl Client {
    /// A client for `url` sending `token`.
    pub fn new(url: &str, token: Option<&str>) -> Client {
        Client {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
            url: url.to_string(),
            token: token.map(str::to_string),
        }
    }

    /// The same witness with another token.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    /// Sends a request; `Err` only if the witness could not be reached.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send()?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp.bytes()?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply {
            status,
            content_type,
            body,
        })
    }

    /// `PUT /v1/groups/{g}` with `ddl`.
    pub fn create_group(&self, group: &str, ddl: &str) -> Reply {
        let body = serde_json::json!({ "ddl": ddl }).to_string().into_bytes();
        self.send("PUT", &format!("/v1/groups/{group}"), &[], Some(body))
            .expect("witness reachable")
    }

    /// `GET /v1/groups/{g}`.
    pub fn info(&self, group: &str) -> Reply {
        self.send("GET", &format!("/v1/groups/{group}"), &[], None)
            .expect("witness reachable")
    }

    /// The group's head `(seq, head)` and schema hash, from `GET /v1/groups/{g}`.
    pub fn head(&self, group: &str) -> ((u64, Hash), Hash) {
        let info = self.info(group);
        assert_eq!(info.status, 200, "{:?}", info.body);
        let h = |k: &str| parse_hash(info.body[k].as_str().expect(k)).expect(k);
        (
            (info.body["seq"].as_u64().expect("seq"), h("head")),
            h("schema_hash"),
        )
    }

    /// `POST /v1/groups/{g}/commits`; `Err` if the witness could not be reached.
    pub fn try_commit(&self, group: &str, c: &Commit<'_>) -> reqwest::Result<Reply> {
        let mut headers = vec![
            (
                "Pdb-Base",
                format!("{}:{}", c.base_seq, pdb_client::cert::hex(&c.base_head)),
            ),
            ("Idempotency-Key", c.key.to_string()),
            ("Pdb-Schema", pdb_client::cert::hex(&c.schema)),
            (
                "Content-Type",
                "application/vnd.sqlite.changeset".to_string(),
            ),
        ];
        if let Some(p) = c.policy {
            headers.push(("Pdb-Policy", p.to_string()));
        }
        self.send(
            "POST",
            &format!("/v1/groups/{group}/commits"),
            &headers,
            Some(c.changeset.to_vec()),
        )
    }

    /// `POST /v1/groups/{g}/commits`.
    pub fn commit(&self, group: &str, c: &Commit<'_>) -> Reply {
        self.try_commit(group, c).expect("witness reachable")
    }

    /// `GET /v1/groups/{g}/commits?after=..&limit=..`.
    pub fn pull(&self, group: &str, after: u64, limit: usize) -> Reply {
        self.send(
            "GET",
            &format!("/v1/groups/{group}/commits?after={after}&limit={limit}"),
            &[],
            None,
        )
        .expect("witness reachable")
    }

    /// Every commit of a group, in order, paging through pulls.
    pub fn history(&self, group: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let after = all.last().map_or(0, |c| c["seq"].as_u64().expect("seq"));
            let r = self.pull(group, after, 1000);
            assert_eq!(r.status, 200, "{:?}", r.body);
            let page = r.body["commits"].as_array().expect("commits").clone();
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    // ----- Snapshots and objects (DESIGN §4-5) -----------------------------------

    /// `GET /v1/groups/{g}/snapshots/latest`.
    pub fn snapshot_latest(&self, group: &str) -> Reply {
        self.send(
            "GET",
            &format!("/v1/groups/{group}/snapshots/latest"),
            &[],
            None,
        )
        .expect("witness reachable")
    }

    /// `POST /v1/groups/{g}/snapshots`: a snapshot at the current head (admin).
    pub fn snapshot_make(&self, group: &str) -> Reply {
        self.send("POST", &format!("/v1/groups/{group}/snapshots"), &[], None)
            .expect("witness reachable")
    }

    /// `GET /v1/groups/{g}/snapshots?at=<at>`; `at` is sent as given, so that tests
    /// can send what is not a number.
    pub fn snapshot_at(&self, group: &str, at: &str) -> Reply {
        self.send(
            "GET",
            &format!("/v1/groups/{group}/snapshots?at={at}"),
            &[],
            None,
        )
        .expect("witness reachable")
    }

    /// `GET /v1/objects/{name}` with an optional `Range` header; the body as bytes.
    pub fn object(&self, name: &str, range: Option<&str>) -> RawReply {
        let mut req = self.http.get(format!("{}/v1/objects/{name}", self.url));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        let resp = req.send().expect("witness reachable");
        RawReply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            bytes: resp.bytes().expect("body").to_vec(),
        }
    }
}

/// An HTTP response whose body is kept as bytes (a snapshot object).
#[derive(Debug, Clone)]
pub struct RawReply {
    /// HTTP status.
    pub status: u16,
    /// Every response header.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub bytes: Vec<u8>,
}

impl RawReply {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (a problem document), or `Null`.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }
}

/// The payload of a pulled commit.
pub fn changeset_of(commit: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(commit["changeset"].as_str().expect("changeset"))
        .expect("base64")
}

/// Records what `sql` changes in a database that holds `ddl` and then `setup`, with the
/// real session extension.
pub fn record(ddl: &str, setup: &str, sql: &str) -> Vec<u8> {
    let conn = Connection::open_in_memory().expect("open");
    conn.execute_batch(ddl).expect("ddl");
    conn.execute_batch(setup).expect("setup");
    let mut s = rusqlite::session::Session::new(&conn).expect("session");
    s.attach(None::<&str>).expect("attach");
    conn.execute_batch(sql).expect("sql");
    let mut out = Vec::new();
    s.changeset_strm(&mut out).expect("changeset");
    out
}
