//! Witness authorisation (DESIGN §5): bearer JWTs verified with an HS256 secret or an
//! Ed25519 public key, a role per group ordered `read` < `write` < `admin`.
//!
//! The core is a matrix, written out as data: every endpoint × every kind of token ×
//! {the token's own group, another existing group, a group that does not exist}, each
//! cell the expected status and problem `code`. On top of the statuses the matrix checks
//! that a token learns nothing about a group it has no role on: the answers are byte for
//! byte those for a group that does not exist, and no answer to such a token ever holds
//! that group's name, DDL, heads, schema hash or changesets.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use pdb_client::cert::{hex, parse_hash};
use pdb_tests::witness::{changeset_of, record, witness_bin, Client, WitnessProc};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The groups.

/// A group the tests create (or, for `charlie-void`, never create).
struct Group {
    name: &'static str,
    ddl: &'static str,
    table: &'static str,
    /// A value only this group's rows hold.
    value: &'static str,
}

const ALPHA: Group = Group {
    name: "alpha-notes",
    ddl: "CREATE TABLE notes_alpha(id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    table: "notes_alpha",
    value: "kumquat-alpha-only",
};

const BRAVO: Group = Group {
    name: "bravo-ledger",
    ddl: "CREATE TABLE ledger_bravo(id INTEGER PRIMARY KEY, secret TEXT NOT NULL)",
    table: "ledger_bravo",
    value: "tangerine-bravo-only",
};

/// Never created. Requests to it are shaped like requests to `bravo-ledger`.
const CHARLIE: &str = "charlie-void";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Alpha,
    Bravo,
    Charlie,
}

const TARGETS: [Target; 3] = [Target::Alpha, Target::Bravo, Target::Charlie];

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Alpha => ALPHA.name,
            Target::Bravo => BRAVO.name,
            Target::Charlie => CHARLIE,
        }
    }

    /// The schema requests to this group are written for.
    fn shape(self) -> &'static Group {
        match self {
            Target::Alpha => &ALPHA,
            Target::Bravo | Target::Charlie => &BRAVO,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The endpoints.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `PUT /v1/groups/{g}` (admin).
    PutGroup,
    /// `GET /v1/groups/{g}` (read).
    GetGroup,
    /// `POST /v1/groups/{g}/commits` (write).
    PostCommit,
    /// `GET /v1/groups/{g}/commits?after=0` (read).
    Pull,
    /// `GET /v1/groups/{g}/watch?after=0` (read; server-sent events).
    Watch,
}

/// In the order of the matrix's columns.
const ENDPOINTS: [Endpoint; 5] = [
    Endpoint::PutGroup,
    Endpoint::GetGroup,
    Endpoint::PostCommit,
    Endpoint::Pull,
    Endpoint::Watch,
];

/// What a cell expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// This 2xx status with a JSON body.
    Json(u16),
    /// 200 with a `text/event-stream` whose first event is a commit.
    Stream,
    /// An `application/problem+json` with this status and `code`.
    Problem(u16, &'static str),
}

const OK: Want = Want::Json(200);
const CREATED: Want = Want::Json(201);
const SSE: Want = Want::Stream;
const UNAUTH: Want = Want::Problem(401, "unauthorized");
const FORBID: Want = Want::Problem(403, "forbidden");
const MISSING: Want = Want::Problem(404, "not_found");

// Rows of a group's five cells: PUT group, GET group, POST commit, GET commits, watch.
/// An invalid token: 401 everywhere.
const NO_AUTH: [Want; 5] = [UNAUTH; 5];
/// A valid token with no role on the group: 403 everywhere, whether the group exists.
const NO_ROLE: [Want; 5] = [FORBID; 5];
const READ: [Want; 5] = [FORBID, OK, FORBID, OK, SSE];
const WRITE: [Want; 5] = [FORBID, OK, CREATED, OK, SSE];
/// Admin on an existing group: `PUT` with the same DDL answers 200 (it exists).
const ADMIN: [Want; 5] = [OK, OK, CREATED, OK, SSE];
/// `read` on every group, asked about one that does not exist: the role check comes
/// first (PUT is forbidden), then the group is not found.
const READ_ABSENT: [Want; 5] = [FORBID, MISSING, FORBID, MISSING, MISSING];
/// `write` on every group, asked about one that does not exist.
const WRITE_ABSENT: [Want; 5] = [FORBID, MISSING, MISSING, MISSING, MISSING];

/// The kinds of `Authorization` the matrix sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// No `Authorization` header.
    Absent,
    /// `Basic ...` instead of `Bearer`.
    NotBearer,
    /// `Bearer ` and nothing.
    EmptyBearer,
    /// `Bearer not.a.jwt`.
    Garbage,
    /// `"alg": "none"`, no signature, claiming `*` admin.
    AlgNone,
    /// Admin on alpha, signed HS256 with another secret (`token --jwt-secret`).
    BadSignature,
    /// A real read token on alpha whose claims were rewritten to admin on `*`.
    Tampered,
    /// Admin on alpha, EdDSA-signed, sent to an HS256 witness.
    WrongAlgorithm,
    /// Admin on `*`, correctly signed, expired an hour ago.
    Expired,
    /// Admin on alpha, correctly signed, no `sub`.
    NoSubject,
    /// Admin on alpha, correctly signed, no `exp`.
    NoExpiry,
    /// Correctly signed, role "owner" (no such role) on alpha.
    UnknownRole,
    /// `read` on alpha.
    ReadAlpha,
    /// `write` on alpha.
    WriteAlpha,
    /// `admin` on alpha.
    AdminAlpha,
    /// `admin` on bravo: the "other group" token, seen from alpha.
    AdminBravo,
    /// `read` on bravo.
    ReadBravo,
    /// One token naming two groups: `write` on alpha, `read` on bravo.
    WriteAlphaReadBravo,
    /// `read` on `*`.
    ReadStar,
    /// `write` on `*`.
    WriteStar,
}

/// One row of the matrix: a token and its expected answers on each group.
struct Row {
    tok: Tok,
    alpha: [Want; 5],
    bravo: [Want; 5],
    charlie: [Want; 5],
}

impl Row {
    fn cells(&self, t: Target) -> &[Want; 5] {
        match t {
            Target::Alpha => &self.alpha,
            Target::Bravo => &self.bravo,
            Target::Charlie => &self.charlie,
        }
    }

    /// Whether this token may learn anything about the group `t`.
    fn sees(&self, t: Target) -> bool {
        let c = self.cells(t);
        *c != NO_AUTH && *c != NO_ROLE
    }
}

/// The matrix. Star-admin is tested on its own witness: its `PUT` on `charlie-void`
/// would create it.
#[rustfmt::skip]
const MATRIX: &[Row] = &[
    Row { tok: Tok::Absent, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::NotBearer, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::EmptyBearer, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::Garbage, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::AlgNone, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::BadSignature, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::Tampered, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::WrongAlgorithm, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::Expired, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::NoSubject, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::NoExpiry, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::UnknownRole, alpha: NO_AUTH, bravo: NO_AUTH, charlie: NO_AUTH },
    Row { tok: Tok::ReadAlpha, alpha: READ, bravo: NO_ROLE, charlie: NO_ROLE },
    Row { tok: Tok::WriteAlpha, alpha: WRITE, bravo: NO_ROLE, charlie: NO_ROLE },
    Row { tok: Tok::AdminAlpha, alpha: ADMIN, bravo: NO_ROLE, charlie: NO_ROLE },
    Row { tok: Tok::AdminBravo, alpha: NO_ROLE, bravo: ADMIN, charlie: NO_ROLE },
    Row { tok: Tok::ReadBravo, alpha: NO_ROLE, bravo: READ, charlie: NO_ROLE },
    Row { tok: Tok::WriteAlphaReadBravo, alpha: WRITE, bravo: READ, charlie: NO_ROLE },
    Row { tok: Tok::ReadStar, alpha: READ, bravo: READ, charlie: READ_ABSENT },
    Row { tok: Tok::WriteStar, alpha: WRITE, bravo: WRITE, charlie: WRITE_ABSENT },
];

// ---------------------------------------------------------------------------------------
// HS256 without a crypto crate: SHA-256 (FIPS 180-4) and HMAC (RFC 2104), so the test can
// sign tokens the CLI will not issue (expired, claims missing, several groups).

fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (wi, word) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (k, wi) in K.iter().zip(w) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(*k)
                .wrapping_add(wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(msg);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with this header and claims, signed HS256 with `secret`.
fn hs256_jwt(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = hmac_sha256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(&sig))
}

fn hs256_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

/// The claims of a JWT, decoded without checking anything.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn sha256_and_hmac_match_published_vectors() {
    assert_eq!(
        hex(&sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha256(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    // RFC 4231 test cases 2 and 6 (a key longer than the block).
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

// ---------------------------------------------------------------------------------------
// Processes and raw HTTP.

/// A scratch directory under the target's temporary folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "witness-auth-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `pdb-witness` with `args` and returns its stdout, trimmed.
fn cli(args: &[&str]) -> String {
    let out = Command::new(witness_bin())
        .args(args)
        .output()
        .expect("run pdb-witness");
    assert!(
        out.status.success(),
        "pdb-witness {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// `pdb-witness keygen --out FILE`; returns the public key's hex.
fn keygen(file: &Path) -> String {
    let out = cli(&["keygen", "--out", file.to_str().expect("utf8 path")]);
    out.strip_prefix("public key: ")
        .unwrap_or_else(|| panic!("keygen printed {out:?}"))
        .to_string()
}

/// `pdb-witness token --ed25519-key FILE ...`.
fn ed_token(key: &Path, sub: &str, group: &str, role: &str, ttl: u64) -> String {
    cli(&[
        "token",
        "--ed25519-key",
        key.to_str().expect("utf8 path"),
        "--sub",
        sub,
        "--group",
        group,
        "--role",
        role,
        "--ttl",
        &ttl.to_string(),
    ])
}

/// A request, built once so that it can be sent identically to several groups.
struct Req {
    method: reqwest::Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

/// An answer, with everything that could tell groups apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resp {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    /// The whole body, or for an event stream its first event.
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// Sends `req` with `Authorization: authorization`. A 2xx event stream is read up to the
/// end of its first event and then dropped: it would never end by itself.
fn send(
    http: &reqwest::blocking::Client,
    url: &str,
    req: &Req,
    authorization: Option<&str>,
) -> Resp {
    let mut rb = http.request(req.method.clone(), format!("{url}{}", req.path));
    if let Some(a) = authorization {
        rb = rb.header("Authorization", a);
    }
    for (k, v) in &req.headers {
        rb = rb.header(*k, v);
    }
    if let Some(b) = &req.body {
        rb = rb.body(b.clone());
    }
    let resp = rb.send().expect("witness reachable");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    };
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    let body = if content_type.starts_with("text/event-stream") {
        first_event(resp)
    } else {
        resp.bytes().expect("body").to_vec()
    };
    Resp {
        status,
        content_type,
        www_authenticate,
        body,
    }
}

/// The first event of a server-sent event stream (up to its blank line).
fn first_event(resp: reqwest::blocking::Response) -> Vec<u8> {
    let mut r = BufReader::new(resp);
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read the event stream");
        if n == 0 {
            return out;
        }
        let blank = line.trim_end_matches(['\r', '\n']).is_empty();
        let comment = line.starts_with(':');
        if !comment {
            out.extend_from_slice(line.as_bytes());
        }
        if blank && out.len() > n {
            return out;
        }
    }
}

/// Checks one answer against its cell.
fn check(resp: &Resp, want: Want, ctx: &str) {
    match want {
        Want::Json(status) => {
            assert_eq!(resp.status, status, "{ctx}: {}", resp.text());
            assert!(
                resp.content_type.starts_with("application/json"),
                "{ctx}: content type {}",
                resp.content_type
            );
            resp.json();
        }
        Want::Stream => {
            assert_eq!(resp.status, 200, "{ctx}: {}", resp.text());
            assert!(
                resp.content_type.starts_with("text/event-stream"),
                "{ctx}: content type {}",
                resp.content_type
            );
            let text = resp.text();
            assert!(
                text.contains("event: commit"),
                "{ctx}: first event {text:?}"
            );
        }
        Want::Problem(status, code) => {
            assert_eq!(resp.status, status, "{ctx}: {}", resp.text());
            assert_eq!(
                resp.content_type,
                "application/problem+json",
                "{ctx}: {}",
                resp.text()
            );
            let p = resp.json();
            assert_eq!(p["code"], code, "{ctx}: {p}");
            assert_eq!(p["status"], status, "{ctx}: {p}");
        }
    }
    if resp.status == 401 {
        assert_eq!(
            resp.www_authenticate.as_deref(),
            Some("Bearer"),
            "{ctx}: a 401 names the Bearer scheme"
        );
    } else {
        assert_eq!(resp.www_authenticate, None, "{ctx}");
    }
}

/// A witness with alpha and bravo created and one commit in each.
struct Fixture {
    w: WitnessProc,
    admin: Client,
    http: reqwest::blocking::Client,
    /// Row ids (and idempotency keys), unique across the test.
    next: AtomicU64,
}

impl Fixture {
    fn start(scratch: &Scratch, args: &[&str], admin_token: Option<String>) -> Fixture {
        let data = scratch.0.join("data");
        let w = WitnessProc::start_with(&data, args, &[]);
        let admin = Client::new(&w.url, admin_token.as_deref().or(w.admin.as_deref()));
        let fx = Fixture {
            w,
            admin,
            http: http(),
            next: AtomicU64::new(1),
        };
        for g in [&ALPHA, &BRAVO] {
            let r = fx.admin.create_group(g.name, g.ddl);
            assert_eq!(r.status, 201, "{:?}", r.body);
            let r = fx.send(&fx.commit_request(g, g.name), fx.admin.token.as_deref());
            check(&r, CREATED, "setup commit");
        }
        fx
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn send(&self, req: &Req, token: Option<&str>) -> Resp {
        send(
            &self.http,
            &self.w.url,
            req,
            token.map(Self::bearer).as_deref(),
        )
    }

    /// A valid commit to `name` in the schema of `shape`: a fresh row, a fresh key,
    /// the current head. It would be accepted if the token allowed it.
    fn commit_request(&self, shape: &Group, name: &str) -> Req {
        let ((seq, head), schema) = self.admin.head(shape.name);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let changeset = record(
            shape.ddl,
            "",
            &format!(
                "INSERT INTO {} VALUES ({id}, '{}-{id}')",
                shape.table, shape.value
            ),
        );
        Req {
            method: reqwest::Method::POST,
            path: format!("/v1/groups/{name}/commits"),
            headers: vec![
                ("Pdb-Base", format!("{seq}:{}", hex(&head))),
                ("Idempotency-Key", format!("key-{id}")),
                ("Pdb-Schema", hex(&schema)),
                ("Content-Type", "application/vnd.sqlite.changeset".into()),
            ],
            body: Some(changeset),
        }
    }

    fn request(&self, ep: Endpoint, t: Target) -> Req {
        let name = t.name();
        let get = |path: String| Req {
            method: reqwest::Method::GET,
            path,
            headers: Vec::new(),
            body: None,
        };
        match ep {
            Endpoint::PutGroup => Req {
                method: reqwest::Method::PUT,
                path: format!("/v1/groups/{name}"),
                headers: vec![("Content-Type", "application/json".into())],
                body: Some(json!({"ddl": t.shape().ddl}).to_string().into_bytes()),
            },
            Endpoint::GetGroup => get(format!("/v1/groups/{name}")),
            Endpoint::PostCommit => self.commit_request(t.shape(), name),
            Endpoint::Pull => get(format!("/v1/groups/{name}/commits?after=0")),
            Endpoint::Watch => get(format!("/v1/groups/{name}/watch?after=0")),
        }
    }

    /// Everything about `g` a token without a role on it must never see.
    fn secrets(&self, g: &Group) -> Vec<String> {
        let info = self.admin.info(g.name);
        assert_eq!(info.status, 200, "{:?}", info.body);
        let mut s = vec![
            g.name.to_string(),
            g.table.to_string(),
            g.ddl.to_string(),
            g.value.to_string(),
            info.body["head"].as_str().expect("head").to_string(),
            info.body["schema_hash"]
                .as_str()
                .expect("schema")
                .to_string(),
        ];
        for c in self.admin.history(g.name) {
            s.push(c["head"].as_str().expect("head").to_string());
            s.push(c["changeset_hash"].as_str().expect("hash").to_string());
            s.push(c["changeset"].as_str().expect("changeset").to_string());
        }
        s
    }

    /// A counter of `/metrics`.
    fn metric(&self, line_prefix: &str) -> u64 {
        let r = send(&self.http, &self.w.url, &get_req("/metrics"), None);
        assert_eq!(r.status, 200);
        let text = r.text();
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .unwrap_or_else(|| panic!("no {line_prefix} in {text}"))
            .trim()
            .parse()
            .expect("a number")
    }
}

fn get_req(path: &str) -> Req {
    Req {
        method: reqwest::Method::GET,
        path: path.to_string(),
        headers: Vec::new(),
        body: None,
    }
}

/// The `Authorization` header each kind of token sends to the HS256 witness.
fn authorization(tok: Tok, fx: &Fixture, secret: &[u8], ed_key: &Path) -> Option<String> {
    let later = now_s() + 3600;
    let signed = |claims: Value| hs256_jwt(&hs256_header(), &claims, secret);
    let bearer = |t: String| Some(Fixture::bearer(&t));
    match tok {
        Tok::Absent => None,
        Tok::NotBearer => Some("Basic YWRtaW46YWRtaW4=".into()),
        Tok::EmptyBearer => Some("Bearer ".into()),
        Tok::Garbage => Some("Bearer not.a.jwt".into()),
        Tok::AlgNone => {
            let claims = json!({"sub": "mallory", "exp": later, "groups": {"*": "admin"}});
            let header = json!({"alg": "none", "typ": "JWT"});
            bearer(format!(
                "{}.{}.",
                b64url(header.to_string().as_bytes()),
                b64url(claims.to_string().as_bytes())
            ))
        }
        Tok::BadSignature => bearer(cli(&[
            "token",
            "--jwt-secret",
            "not-the-witness-secret",
            "--sub",
            "mallory",
            "--group",
            ALPHA.name,
            "--role",
            "admin",
        ])),
        Tok::Tampered => {
            let real = fx.w.token("mallory", ALPHA.name, "read", 3600);
            let mut parts: Vec<String> = real.split('.').map(str::to_string).collect();
            let mut claims = claims_of(&real);
            claims["groups"] = json!({"*": "admin"});
            parts[1] = b64url(claims.to_string().as_bytes());
            bearer(parts.join("."))
        }
        Tok::WrongAlgorithm => bearer(ed_token(ed_key, "mallory", ALPHA.name, "admin", 3600)),
        Tok::Expired => bearer(signed(
            json!({"sub": "alice", "exp": now_s() - 3600, "groups": {"*": "admin"}}),
        )),
        Tok::NoSubject => bearer(signed(
            json!({"exp": later, "groups": {(ALPHA.name): "admin"}}),
        )),
        Tok::NoExpiry => bearer(signed(
            json!({"sub": "alice", "groups": {(ALPHA.name): "admin"}}),
        )),
        Tok::UnknownRole => bearer(signed(
            json!({"sub": "alice", "exp": later, "groups": {(ALPHA.name): "owner"}}),
        )),
        Tok::ReadAlpha => bearer(fx.w.token("alice", ALPHA.name, "read", 3600)),
        Tok::WriteAlpha => bearer(fx.w.token("alice", ALPHA.name, "write", 3600)),
        Tok::AdminAlpha => bearer(fx.w.token("alice", ALPHA.name, "admin", 3600)),
        Tok::AdminBravo => bearer(fx.w.token("bob", BRAVO.name, "admin", 3600)),
        Tok::ReadBravo => bearer(fx.w.token("bob", BRAVO.name, "read", 3600)),
        Tok::WriteAlphaReadBravo => bearer(signed(json!({
            "sub": "carol",
            "exp": later,
            "groups": {(ALPHA.name): "write", (BRAVO.name): "read"},
        }))),
        Tok::ReadStar => bearer(fx.w.token("dave", "*", "read", 3600)),
        Tok::WriteStar => bearer(fx.w.token("dave", "*", "write", 3600)),
    }
}

/// Checks that the pulled commits (or the streamed event) belong to `t` only.
fn check_payload(resp: &Resp, ep: Endpoint, t: Target, ctx: &str) {
    let commits = match ep {
        Endpoint::Pull => {
            let body = resp.json();
            assert_eq!(body["group"], t.name(), "{ctx}");
            body["commits"].as_array().expect("commits").clone()
        }
        Endpoint::Watch => {
            let text = resp.text();
            let data: String = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            vec![serde_json::from_str(&data).expect("event data is JSON")]
        }
        Endpoint::GetGroup => {
            let body = resp.json();
            assert_eq!(body["group"], t.name(), "{ctx}");
            assert_eq!(body["ddl"], t.shape().ddl, "{ctx}");
            return;
        }
        _ => return,
    };
    assert!(!commits.is_empty(), "{ctx}");
    for c in commits {
        assert_eq!(c["group"], t.name(), "{ctx}");
        let cs = changeset_of(&c);
        let tables: Vec<String> = pdb_client::changeset::parse(&cs)
            .expect("changeset parses")
            .iter()
            .map(|(h, _)| h.name.to_string())
            .collect();
        assert_eq!(tables, [t.shape().table], "{ctx}");
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn every_endpoint_and_token_kind_gets_its_status_and_learns_nothing_of_other_groups() {
    let scratch = Scratch::new("hs256");
    let fx = Fixture::start(&scratch, &[], None);
    let secret = std::fs::read_to_string(fx.w.data.join("jwt.secret")).expect("jwt.secret");
    let secret = parse_hash(secret.trim()).expect("jwt.secret is 64 hex digits");
    let ed_key = scratch.0.join("ed.key");
    keygen(&ed_key);

    // The crafted signer is the witness's own: a crafted token that should pass does.
    let crafted = hs256_jwt(
        &hs256_header(),
        &json!({"sub": "probe", "exp": now_s() + 600, "groups": {(ALPHA.name): "read"}}),
        &secret,
    );
    let r = fx.send(
        &fx.request(Endpoint::GetGroup, Target::Alpha),
        Some(&crafted),
    );
    check(&r, OK, "crafted HS256 token");

    let mut answers: Vec<(&Row, Endpoint, Target, Resp)> = Vec::new();
    let (mut unauthorized, mut forbidden, mut not_found) = (0, 0, 0);
    let mut created = [0usize; 3];
    for row in MATRIX {
        let auth = authorization(row.tok, &fx, &secret, &ed_key);
        for (col, &ep) in ENDPOINTS.iter().enumerate() {
            for (ti, &t) in TARGETS.iter().enumerate() {
                let want = row.cells(t)[col];
                let ctx = format!("{:?} {ep:?} on {}", row.tok, t.name());
                let resp = send(&fx.http, &fx.w.url, &fx.request(ep, t), auth.as_deref());
                check(&resp, want, &ctx);
                if matches!(want, Want::Json(_) | Want::Stream) {
                    check_payload(&resp, ep, t, &ctx);
                }
                match want {
                    UNAUTH => unauthorized += 1,
                    FORBID => forbidden += 1,
                    MISSING => not_found += 1,
                    CREATED => created[ti] += 1,
                    _ => {}
                }
                answers.push((row, ep, t, resp));
            }
        }
        // Health and metrics need no token and ignore any.
        for path in ["/healthz", "/metrics"] {
            let r = send(&fx.http, &fx.w.url, &get_req(path), auth.as_deref());
            assert_eq!(r.status, 200, "{:?} {path}: {}", row.tok, r.text());
            assert_eq!(r.www_authenticate, None);
        }
    }

    // A token's answers about a group it has no role on are exactly its answers about a
    // group that does not exist: existence is not revealed.
    let mut compared = [0usize; 2];
    for (row, ep, t, resp) in &answers {
        if *t == Target::Charlie || row.sees(*t) {
            continue;
        }
        compared[usize::from(resp.status == 403)] += 1;
        assert_eq!(row.cells(*t), row.cells(Target::Charlie), "{:?}", row.tok);
        let (.., absent) = answers
            .iter()
            .find(|(r, e, tt, _)| r.tok == row.tok && e == ep && *tt == Target::Charlie)
            .expect("charlie answered");
        assert_eq!(
            resp,
            absent,
            "{:?} {ep:?}: {} and {CHARLIE} must answer alike",
            row.tok,
            t.name()
        );
    }
    assert!(compared[0] > 0 && compared[1] > 0, "{compared:?}");

    // No answer to a token without a role on a group holds anything of that group.
    for (t, g) in [(Target::Alpha, &ALPHA), (Target::Bravo, &BRAVO)] {
        let secrets = fx.secrets(g);
        for (row, ep, target, resp) in &answers {
            if row.sees(t) {
                continue;
            }
            let text = resp.text();
            for s in &secrets {
                assert!(
                    !text.contains(s.as_str()),
                    "{:?} {ep:?} on {} leaks {s:?} of {}: {text}",
                    row.tok,
                    target.name(),
                    g.name
                );
            }
        }
    }
    // Nor does the unauthenticated /metrics name any group.
    let metrics = send(&fx.http, &fx.w.url, &get_req("/metrics"), None).text();
    for name in [ALPHA.name, BRAVO.name, CHARLIE] {
        assert!(!metrics.contains(name), "/metrics names {name}");
    }

    // Each refusal was a refusal: the histories hold exactly the accepted commits, and
    // charlie-void was never created.
    assert_eq!(fx.admin.history(ALPHA.name).len(), 1 + created[0]);
    assert_eq!(fx.admin.history(BRAVO.name).len(), 1 + created[1]);
    assert_eq!(created[2], 0);
    let r = fx.admin.info(CHARLIE);
    assert_eq!(
        (r.status, r.code()),
        (404, Some("not_found")),
        "{:?}",
        r.body
    );
    assert_eq!(
        fx.metric("pdb_rejections_total{code=\"unauthorized\"}"),
        unauthorized
    );
    assert_eq!(
        fx.metric("pdb_rejections_total{code=\"forbidden\"}"),
        forbidden
    );
    assert_eq!(
        fx.metric("pdb_rejections_total{code=\"not_found\"}"),
        not_found + 1
    );

    // Idempotency keys are per group: a key bravo used tells alpha's writer nothing (a
    // new commit, not bravo's certificate nor an idempotency conflict).
    let bravo_req = fx.commit_request(&BRAVO, BRAVO.name);
    let r = fx.send(&bravo_req, fx.admin.token.as_deref());
    check(&r, CREATED, "bravo commit");
    let bravo_cert = r.json();
    let shared_key = bravo_cert["idempotency_key"]
        .as_str()
        .expect("key")
        .to_string();
    let mut alpha_req = fx.commit_request(&ALPHA, ALPHA.name);
    for h in &mut alpha_req.headers {
        if h.0 == "Idempotency-Key" {
            h.1 = shared_key.clone();
        }
    }
    let writer = fx.w.token("alice", ALPHA.name, "write", 3600);
    let r = fx.send(&alpha_req, Some(&writer));
    check(&r, CREATED, "alpha commit under bravo's key");
    let cert = r.json();
    assert_eq!(cert["group"], ALPHA.name);
    assert_eq!(cert.get("duplicate"), None);
    for s in fx.secrets(&BRAVO) {
        assert!(!r.text().contains(&s), "leaks {s:?}: {}", r.text());
    }
}

#[test]
fn a_star_admin_token_works_on_every_group() {
    let scratch = Scratch::new("star");
    let w = WitnessProc::start(&scratch.0.join("data"));
    let http = http();
    let star = Fixture::bearer(&w.token("root", "*", "admin", 3600));
    let names = ["echo-one", "foxtrot-two"];
    for name in names {
        let put = Req {
            method: reqwest::Method::PUT,
            path: format!("/v1/groups/{name}"),
            headers: vec![("Content-Type", "application/json".into())],
            body: Some(json!({"ddl": ALPHA.ddl}).to_string().into_bytes()),
        };
        check(&send(&http, &w.url, &put, Some(&star)), CREATED, name);
        check(&send(&http, &w.url, &put, Some(&star)), OK, name);
        let client = Client::new(&w.url, w.admin.as_deref());
        let ((seq, head), schema) = client.head(name);
        let commit = Req {
            method: reqwest::Method::POST,
            path: format!("/v1/groups/{name}/commits"),
            headers: vec![
                ("Pdb-Base", format!("{seq}:{}", hex(&head))),
                ("Idempotency-Key", format!("star-{name}")),
                ("Pdb-Schema", hex(&schema)),
                ("Content-Type", "application/vnd.sqlite.changeset".into()),
            ],
            body: Some(record(
                ALPHA.ddl,
                "",
                "INSERT INTO notes_alpha VALUES (1, 'x')",
            )),
        };
        check(&send(&http, &w.url, &commit, Some(&star)), CREATED, name);
        let get = get_req(&format!("/v1/groups/{name}"));
        check(&send(&http, &w.url, &get, Some(&star)), OK, name);
        let pull = get_req(&format!("/v1/groups/{name}/commits?after=0"));
        check(&send(&http, &w.url, &pull, Some(&star)), OK, name);
        let watch = get_req(&format!("/v1/groups/{name}/watch?after=0"));
        check(&send(&http, &w.url, &watch, Some(&star)), SSE, name);
    }
    // A group that does not exist is simply not found for it.
    for path in [
        "/v1/groups/golf-none",
        "/v1/groups/golf-none/commits?after=0",
        "/v1/groups/golf-none/watch?after=0",
    ] {
        check(
            &send(&http, &w.url, &get_req(path), Some(&star)),
            MISSING,
            path,
        );
    }
    // The token the witness prints at start is the same kind.
    let printed = claims_of(w.admin.as_deref().expect("an admin token"));
    assert_eq!(printed["groups"], json!({"*": "admin"}));
}

#[test]
fn ed25519_mode_accepts_eddsa_tokens_by_role_and_refuses_everything_else() {
    let scratch = Scratch::new("ed25519");
    let key = scratch.0.join("tokens.key");
    let public = keygen(&key);
    assert!(parse_hash(&public).is_some(), "{public}");
    let other_key = scratch.0.join("other.key");
    keygen(&other_key);

    // Minted first: it expires (past the 5 s leeway) while the rest runs.
    let soon = ed_token(&key, "alice", ALPHA.name, "admin", 0);
    let soon_exp = claims_of(&soon)["exp"].as_u64().expect("exp");

    let star = ed_token(&key, "root", "*", "admin", 3600);
    let fx = Fixture::start(&scratch, &["--jwt-ed25519-public-key", &public], Some(star));
    assert_eq!(fx.w.admin, None, "no admin token without a signing secret");

    let hs_sub = |secret: &[u8]| {
        hs256_jwt(
            &hs256_header(),
            &json!({"sub": "mallory", "exp": now_s() + 3600, "groups": {"*": "admin"}}),
            secret,
        )
    };
    let public_bytes = parse_hash(&public).expect("hex");
    // What the token is, its `Authorization`, its cells on alpha and on bravo.
    type EdRow = (&'static str, Option<String>, [Want; 5], [Want; 5]);
    let rows: Vec<EdRow> = vec![
        ("no token", None, NO_AUTH, NO_AUTH),
        (
            "read",
            Some(ed_token(&key, "a", ALPHA.name, "read", 3600)),
            READ,
            NO_ROLE,
        ),
        (
            "write",
            Some(ed_token(&key, "a", ALPHA.name, "write", 3600)),
            WRITE,
            NO_ROLE,
        ),
        (
            "admin",
            Some(ed_token(&key, "a", ALPHA.name, "admin", 3600)),
            ADMIN,
            NO_ROLE,
        ),
        (
            "other group",
            Some(ed_token(&key, "b", BRAVO.name, "admin", 3600)),
            NO_ROLE,
            ADMIN,
        ),
        (
            "read on *",
            Some(ed_token(&key, "s", "*", "read", 3600)),
            READ,
            READ,
        ),
        (
            "another Ed25519 key",
            Some(ed_token(&other_key, "m", "*", "admin", 3600)),
            NO_AUTH,
            NO_AUTH,
        ),
        (
            "HS256 from the CLI",
            Some(cli(&[
                "token",
                "--jwt-secret",
                "some-secret",
                "--sub",
                "m",
                "--group",
                "*",
                "--role",
                "admin",
            ])),
            NO_AUTH,
            NO_AUTH,
        ),
        (
            "HS256 keyed with the public key's bytes",
            Some(hs_sub(&public_bytes)),
            NO_AUTH,
            NO_AUTH,
        ),
        (
            "HS256 keyed with the public key's hex",
            Some(hs_sub(public.as_bytes())),
            NO_AUTH,
            NO_AUTH,
        ),
    ];
    for (what, token, alpha, bravo) in &rows {
        for (col, &ep) in ENDPOINTS.iter().enumerate() {
            for (t, want) in [(Target::Alpha, alpha[col]), (Target::Bravo, bravo[col])] {
                let ctx = format!("Ed25519 mode, {what}, {ep:?} on {}", t.name());
                let resp = fx.send(&fx.request(ep, t), token.as_deref());
                check(&resp, want, &ctx);
                if matches!(want, Want::Json(_) | Want::Stream) {
                    check_payload(&resp, ep, t, &ctx);
                }
            }
        }
    }

    // The --ttl 0 token, once past exp + leeway, is refused as expired.
    while now_s() <= soon_exp + 6 {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = fx.send(&fx.request(Endpoint::GetGroup, Target::Alpha), Some(&soon));
    check(&r, UNAUTH, "expired EdDSA token");
    assert_eq!(r.json()["detail"], "the token has expired");
}

#[test]
fn the_jwt_leeway_is_how_long_past_exp_a_token_still_works() {
    // A token expired `ago` seconds ago, with read on alpha, signed by `w`'s secret.
    let expired = |w: &WitnessProc, ago: u64| {
        let secret = std::fs::read_to_string(w.data.join("jwt.secret")).expect("jwt.secret");
        let secret = parse_hash(secret.trim()).expect("jwt.secret is 64 hex digits");
        hs256_jwt(
            &hs256_header(),
            &json!({"sub": "late", "exp": now_s() - ago, "groups": {(ALPHA.name): "read"}}),
            &secret,
        )
    };
    let get = get_req(&format!("/v1/groups/{}", ALPHA.name));

    let strict = Scratch::new("leeway-0");
    let fx = Fixture::start(&strict, &["--jwt-leeway", "0"], None);
    let r = fx.send(&get, Some(&expired(&fx.w, 1)));
    check(&r, UNAUTH, "a second past exp, no leeway");
    assert_eq!(r.json()["detail"], "the token has expired");

    // The environment variable sets it too.
    let lenient = Scratch::new("leeway-30");
    let w = WitnessProc::start_with(&lenient.0.join("data"), &[], &[("PDB_JWT_LEEWAY", "30")]);
    let admin = Client::new(&w.url, w.admin.as_deref());
    assert_eq!(admin.create_group(ALPHA.name, ALPHA.ddl).status, 201);
    let http = http();
    let send = |token: &str| send(&http, &w.url, &get, Some(&Fixture::bearer(token)));
    check(&send(&expired(&w, 10)), OK, "10 s past exp, 30 s leeway");
    check(
        &send(&expired(&w, 60)),
        UNAUTH,
        "60 s past exp, 30 s leeway",
    );
}
