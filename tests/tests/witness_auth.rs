//! Witness authorisation (DESIGN §5): bearer JWTs verified with an HS256 secret or an
//! Ed25519 public key, a role per group ordered `read` < `write` < `admin`.
//!
//! The core is a matrix, written out as data: every endpoint × every kind of token ×
//! {the token's own group, another existing group, a group that does not exist}, each
//! cell the expected status and problem `code`. On top of the statuses the matrix checks
//! that a token learns nothing about a group it has no role on: the answers are byte for
//! byte those for a group that does not exist, and no answer to such a token ever holds
//! that group's name, DDL, heads, schema hash or changesets.
//!
//! A second matrix does the same for the projection routes (issue 13), adding the
//! projection-only grants `project:<name>`: such a token reads that projection's rows
//! and is refused everything else of its group, without learning which other
//! projections exist. A scoped projection shows it only the rows whose scope column
//! equals its claim, whatever filters, limits and cursors it sends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use pdb_client::cert::{hex, parse_hash};
use pdb_tests::witness::{changeset_of, record, witness_bin, Client, Commit, WitnessProc};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The groups.

/// A group the tests create (or, for `charlie-void`, never create).
struct Group {
    name: &'static str,
    ddl: &'static str,
    table: &'static str,
    /// Its text column.
    column: &'static str,
    /// A value only this group's rows hold.
    value: &'static str,
}

const ALPHA: Group = Group {
    name: "alpha-notes",
    ddl: "CREATE TABLE notes_alpha(id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    table: "notes_alpha",
    column: "body",
    value: "kumquat-alpha-only",
};

const BRAVO: Group = Group {
    name: "bravo-ledger",
    ddl: "CREATE TABLE ledger_bravo(id INTEGER PRIMARY KEY, secret TEXT NOT NULL)",
    table: "ledger_bravo",
    column: "secret",
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
    /// `GET /v1/groups/{g}/snapshots/latest` (read).
    SnapshotLatest,
    /// `GET /v1/groups/{g}/snapshots?at=1` (read).
    SnapshotAt,
    /// `POST /v1/groups/{g}/snapshots` (admin).
    PostSnapshot,
    /// `GET /v1/groups/{g}/certificates?key=<its first commit's key>` (read).
    Certificate,
    /// `GET /v1/objects/{hash}` of alpha's snapshot (read on a group holding it).
    Object,
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
    /// This 2xx status with an empty body.
    Empty(u16),
    /// 200 with a body of bytes that is not a problem (a snapshot object).
    Bytes,
    /// An `application/problem+json` with this status and `code`.
    Problem(u16, &'static str),
}

const OK: Want = Want::Json(200);
const CREATED: Want = Want::Json(201);
const SSE: Want = Want::Stream;
const GONE: Want = Want::Empty(204);
const OBJECT: Want = Want::Bytes;
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
    /// `admin` on `*`. Only in the projection matrix: in the group matrix its `PUT` would
    /// create `charlie-void`.
    AdminStar,
    /// `project:listing` on alpha, from the CLI.
    ProjectAlpha,
    /// `project:other` on alpha: another projection of the same group.
    ProjectAlphaOther,
    /// `["project:listing", "project:other"]` on alpha.
    ProjectAlphaBoth,
    /// `project:listing` on bravo: the other group's projection-only token.
    ProjectBravo,
    /// `project:listing` on `*`.
    ProjectStar,
    /// `project:listing` on alpha and `read` on bravo.
    ProjectAlphaReadBravo,
    /// `project:listing` on alpha and `admin` on `*`: a group's own entry wins over `*`.
    ProjectAlphaAdminStar,
    /// `project:listing` on alpha, correctly signed, expired an hour ago.
    ProjectExpired,
    /// `project:listing` on alpha, signed with another secret.
    ProjectBadSignature,
    /// A real `project:listing` token on alpha whose claims were rewritten to admin.
    ProjectTampered,
    /// Correctly signed, `project:` with no projection name.
    ProjectNoName,
    /// Correctly signed, `["project:listing", "read"]`: a list holds projection grants only.
    ProjectListWithRole,
}

/// One row of a matrix: a token and its expected answers on each group, a cell per
/// endpoint.
#[derive(Clone, Copy)]
struct Row<const N: usize> {
    tok: Tok,
    alpha: [Want; N],
    bravo: [Want; N],
    charlie: [Want; N],
}

impl<const N: usize> Row<N> {
    fn cells(&self, t: Target) -> &[Want; N] {
        match t {
            Target::Alpha => &self.alpha,
            Target::Bravo => &self.bravo,
            Target::Charlie => &self.charlie,
        }
    }

    /// Whether this token may learn anything about the group `t`: it is neither
    /// refused as invalid nor forbidden everywhere.
    fn sees(&self, t: Target) -> bool {
        let c = self.cells(t);
        *c != [UNAUTH; N] && *c != [FORBID; N]
    }
}

/// The matrix. Star-admin is tested on its own witness: its `PUT` on `charlie-void`
/// would create it.
#[rustfmt::skip]
const MATRIX: &[Row<5>] = &[
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

/// The HS256 secret a witness made on its first start.
fn jwt_secret(w: &WitnessProc) -> [u8; 32] {
    let text = std::fs::read_to_string(w.data.join("jwt.secret")).expect("jwt.secret");
    parse_hash(text.trim()).expect("jwt.secret is 64 hex digits")
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

impl Req {
    /// `PUT path` with `body` as JSON.
    fn put_json(path: String, body: &Value) -> Req {
        Req {
            method: reqwest::Method::PUT,
            path,
            headers: vec![("Content-Type", "application/json".into())],
            body: Some(body.to_string().into_bytes()),
        }
    }
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
        Want::Empty(status) => {
            assert_eq!(resp.status, status, "{ctx}: {}", resp.text());
            assert!(resp.body.is_empty(), "{ctx}: {}", resp.text());
        }
        Want::Bytes => {
            assert_eq!(resp.status, 200, "{ctx}: {}", resp.text());
            assert!(
                !resp.content_type.contains("problem") && !resp.body.is_empty(),
                "{ctx}: {} {}",
                resp.content_type,
                resp.text()
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
    /// The path of alpha's snapshot object, once a test made one.
    object: std::sync::OnceLock<String>,
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
            object: std::sync::OnceLock::new(),
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
            Endpoint::PutGroup => {
                Req::put_json(format!("/v1/groups/{name}"), &json!({"ddl": t.shape().ddl}))
            }
            Endpoint::GetGroup => get(format!("/v1/groups/{name}")),
            Endpoint::PostCommit => self.commit_request(t.shape(), name),
            Endpoint::Pull => get(format!("/v1/groups/{name}/commits?after=0")),
            Endpoint::Watch => get(format!("/v1/groups/{name}/watch?after=0")),
            Endpoint::SnapshotLatest => get(format!("/v1/groups/{name}/snapshots/latest")),
            Endpoint::SnapshotAt => get(format!("/v1/groups/{name}/snapshots?at=1")),
            Endpoint::PostSnapshot => Req {
                method: reqwest::Method::POST,
                ..get(format!("/v1/groups/{name}/snapshots"))
            },
            // Each group's setup commit took the key its first row id made.
            Endpoint::Certificate => get(format!(
                "/v1/groups/{name}/certificates?key=key-{}",
                if t == Target::Alpha { 1 } else { 2 }
            )),
            Endpoint::Object => get(self
                .object
                .get()
                .expect("alpha's snapshot was made")
                .clone()),
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

    /// Checks that no answer of `answers` (what was asked, whether its token may see
    /// alpha and bravo, the answer) holds anything of a group its token may not see.
    fn assert_nothing_leaks<'a>(
        &self,
        answers: impl Iterator<Item = (String, [bool; 2], &'a Resp)>,
    ) {
        let secrets = [self.secrets(&ALPHA), self.secrets(&BRAVO)];
        for (what, sees, resp) in answers {
            let text = resp.text();
            for (i, g) in [&ALPHA, &BRAVO].into_iter().enumerate() {
                if sees[i] {
                    continue;
                }
                for s in &secrets[i] {
                    assert!(
                        !text.contains(s.as_str()),
                        "{what} leaks {s:?} of {}: {text}",
                        g.name
                    );
                }
            }
        }
    }

    /// Checks that charlie-void still does not exist (one more `not_found`), and that
    /// `/metrics` counted exactly these refusals and that one.
    fn assert_absent_and_counted(&self, unauthorized: u64, forbidden: u64, not_found: u64) {
        let r = self.admin.info(CHARLIE);
        assert_eq!(
            (r.status, r.code()),
            (404, Some("not_found")),
            "{:?}",
            r.body
        );
        let count = |code: &str| self.metric(&format!("pdb_rejections_total{{code=\"{code}\"}}"));
        assert_eq!(count("unauthorized"), unauthorized);
        assert_eq!(count("forbidden"), forbidden);
        assert_eq!(count("not_found"), not_found + 1);
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

/// A token for `role` on alpha, from the CLI, signed HS256 with another secret.
fn foreign_signed(sub: &str, role: &str) -> String {
    cli(&[
        "token",
        "--jwt-secret",
        "not-the-witness-secret",
        "--sub",
        sub,
        "--group",
        ALPHA.name,
        "--role",
        role,
    ])
}

/// A real token for `role` on alpha whose `groups` claim was rewritten to `groups`,
/// the signature kept.
fn tampered(fx: &Fixture, role: &str, groups: Value) -> String {
    let real = fx.w.token("mallory", ALPHA.name, role, 3600);
    let mut parts: Vec<String> = real.split('.').map(str::to_string).collect();
    let mut claims = claims_of(&real);
    assert_eq!(claims["groups"], json!({(ALPHA.name): role}));
    claims["groups"] = groups;
    parts[1] = b64url(claims.to_string().as_bytes());
    parts.join(".")
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
        Tok::BadSignature => bearer(foreign_signed("mallory", "admin")),
        Tok::Tampered => bearer(tampered(fx, "read", json!({"*": "admin"}))),
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
        Tok::AdminStar => bearer(fx.w.token("root", "*", "admin", 3600)),
        Tok::ProjectAlpha => bearer(fx.w.token("pat", ALPHA.name, "project:listing", 3600)),
        Tok::ProjectAlphaOther => bearer(fx.w.token("pat", ALPHA.name, "project:other", 3600)),
        Tok::ProjectAlphaBoth => bearer(signed(json!({
            "sub": "pat",
            "exp": later,
            "groups": {(ALPHA.name): ["project:listing", "project:other"]},
        }))),
        Tok::ProjectBravo => bearer(fx.w.token("pat", BRAVO.name, "project:listing", 3600)),
        Tok::ProjectStar => bearer(fx.w.token("pat", "*", "project:listing", 3600)),
        Tok::ProjectAlphaReadBravo => bearer(signed(json!({
            "sub": "pat",
            "exp": later,
            "groups": {(ALPHA.name): "project:listing", (BRAVO.name): "read"},
        }))),
        Tok::ProjectAlphaAdminStar => bearer(signed(json!({
            "sub": "pat",
            "exp": later,
            "groups": {(ALPHA.name): "project:listing", "*": "admin"},
        }))),
        Tok::ProjectExpired => bearer(signed(json!({
            "sub": "pat",
            "exp": now_s() - 3600,
            "groups": {(ALPHA.name): "project:listing"},
        }))),
        Tok::ProjectBadSignature => bearer(foreign_signed("pat", "project:listing")),
        Tok::ProjectTampered => bearer(tampered(
            fx,
            "project:listing",
            json!({(ALPHA.name): "admin"}),
        )),
        Tok::ProjectNoName => bearer(signed(
            json!({"sub": "pat", "exp": later, "groups": {(ALPHA.name): "project:"}}),
        )),
        Tok::ProjectListWithRole => bearer(signed(json!({
            "sub": "pat",
            "exp": later,
            "groups": {(ALPHA.name): ["project:listing", "read"]},
        }))),
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
    let secret = jwt_secret(&fx.w);
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

    let mut answers: Vec<(&Row<5>, Endpoint, Target, Resp)> = Vec::new();
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
    fx.assert_nothing_leaks(answers.iter().map(|(row, ep, t, resp)| {
        let what = format!("{:?} {ep:?} on {}", row.tok, t.name());
        (
            what,
            [row.sees(Target::Alpha), row.sees(Target::Bravo)],
            resp,
        )
    }));
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
    fx.assert_absent_and_counted(unauthorized, forbidden, not_found);

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
        let put = Req::put_json(format!("/v1/groups/{name}"), &json!({"ddl": ALPHA.ddl}));
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
        let secret = jwt_secret(w);
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

// ---------------------------------------------------------------------------------------
// Projections (issue 13): the same matrix over the projection routes, with the grants
// `project:<name>` that read one projection's rows and nothing else of a group.

/// The projection of each group that projection-only tokens are granted.
const LISTING: &str = "listing";
/// A second projection of each group, granted to other projection-only tokens.
const OTHER: &str = "other";
/// Deleted by every cell that may delete, and put back after each.
const DOOMED: &str = "doomed";
/// Never defined in any group.
const NOPE: &str = "nope";

impl Group {
    /// The spec of projection `name` over this group's table.
    fn spec(&self, name: &str) -> Value {
        let (t, c) = (self.table, self.column);
        match name {
            LISTING => json!({"kind": "index", "table": t, "key": {"n": "id"}, "columns": [c]}),
            OTHER => json!({"kind": "aggregate", "table": t,
                            "group_by": {"len": format!("length({c})")},
                            "measures": {"n": "count(*)"}}),
            _ => json!({"kind": "index", "table": t, "key": {"v": c}, "columns": ["id"]}),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProjEndpoint {
    /// `PUT .../projections/listing` with the spec it has (admin): 200, unchanged.
    Put,
    /// `DELETE .../projections/doomed` (admin).
    Delete,
    /// `DELETE .../projections/nope` (admin).
    DeleteAbsent,
    /// `GET .../projections` (read).
    List,
    /// `GET .../projections/listing/status` (read).
    Status,
    /// `GET .../projections/nope/status` (read).
    StatusAbsent,
    /// `GET .../projections/listing` (read, or `project:listing`).
    Rows,
    /// `GET .../projections/other` (read, or `project:other`).
    RowsOther,
    /// `GET .../projections/nope` (read).
    RowsAbsent,
}

/// In the order of the projection matrix's columns.
const PROJ_ENDPOINTS: [ProjEndpoint; 9] = [
    ProjEndpoint::Put,
    ProjEndpoint::Delete,
    ProjEndpoint::DeleteAbsent,
    ProjEndpoint::List,
    ProjEndpoint::Status,
    ProjEndpoint::StatusAbsent,
    ProjEndpoint::Rows,
    ProjEndpoint::RowsOther,
    ProjEndpoint::RowsAbsent,
];

// Rows of a group's nine cells: PUT, DELETE, DELETE absent, list, status, status absent,
// rows, rows of other, rows absent.
/// An invalid token: 401 everywhere.
const P_NO_AUTH: [Want; 9] = [UNAUTH; 9];
/// A valid token with no grant on the group: 403 everywhere, whether the group or the
/// projection exists.
const P_NO_ROLE: [Want; 9] = [FORBID; 9];
/// `read` (and `write`, which adds nothing here): everything but declaring.
#[rustfmt::skip]
const P_READ: [Want; 9] = [FORBID, FORBID, FORBID, OK, OK, MISSING, OK, OK, MISSING];
#[rustfmt::skip]
const P_ADMIN: [Want; 9] = [OK, GONE, MISSING, OK, OK, MISSING, OK, OK, MISSING];
/// `project:listing`: those rows and nothing else, not even whether another projection
/// exists (`other` and `nope` answer alike).
#[rustfmt::skip]
const P_LISTING: [Want; 9] = [FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, OK, FORBID, FORBID];
#[rustfmt::skip]
const P_OTHER: [Want; 9] = [FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, OK, FORBID];
#[rustfmt::skip]
const P_BOTH: [Want; 9] = [FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, OK, OK, FORBID];
/// `read` or `write` on every group, asked about one that does not exist: the role
/// check comes first (declaring is forbidden), then the group is not found.
#[rustfmt::skip]
const P_READ_ABSENT: [Want; 9] =
    [FORBID, FORBID, FORBID, MISSING, MISSING, MISSING, MISSING, MISSING, MISSING];
/// `admin` on every group, asked about one that does not exist: not found, and not
/// created by a projection's `PUT`.
const P_ADMIN_ABSENT: [Want; 9] = [MISSING; 9];
/// `project:listing` on every group, asked about one that does not exist.
#[rustfmt::skip]
const P_LISTING_ABSENT: [Want; 9] =
    [FORBID, FORBID, FORBID, FORBID, FORBID, FORBID, MISSING, FORBID, FORBID];

/// One row of the projection matrix.
type ProjRow = Row<9>;

/// The rows of the projection matrix beyond the group matrix's invalid tokens, which
/// [`proj_matrix`] adds.
#[rustfmt::skip]
const PROJ_ROWS: &[ProjRow] = &[
    Row { tok: Tok::ProjectExpired, alpha: P_NO_AUTH, bravo: P_NO_AUTH, charlie: P_NO_AUTH },
    Row { tok: Tok::ProjectBadSignature, alpha: P_NO_AUTH, bravo: P_NO_AUTH, charlie: P_NO_AUTH },
    Row { tok: Tok::ProjectTampered, alpha: P_NO_AUTH, bravo: P_NO_AUTH, charlie: P_NO_AUTH },
    Row { tok: Tok::ProjectNoName, alpha: P_NO_AUTH, bravo: P_NO_AUTH, charlie: P_NO_AUTH },
    Row { tok: Tok::ProjectListWithRole, alpha: P_NO_AUTH, bravo: P_NO_AUTH, charlie: P_NO_AUTH },
    Row { tok: Tok::ReadAlpha, alpha: P_READ, bravo: P_NO_ROLE, charlie: P_NO_ROLE },
    Row { tok: Tok::WriteAlpha, alpha: P_READ, bravo: P_NO_ROLE, charlie: P_NO_ROLE },
    Row { tok: Tok::AdminAlpha, alpha: P_ADMIN, bravo: P_NO_ROLE, charlie: P_NO_ROLE },
    Row { tok: Tok::AdminBravo, alpha: P_NO_ROLE, bravo: P_ADMIN, charlie: P_NO_ROLE },
    Row { tok: Tok::ReadBravo, alpha: P_NO_ROLE, bravo: P_READ, charlie: P_NO_ROLE },
    Row { tok: Tok::WriteAlphaReadBravo, alpha: P_READ, bravo: P_READ, charlie: P_NO_ROLE },
    Row { tok: Tok::ReadStar, alpha: P_READ, bravo: P_READ, charlie: P_READ_ABSENT },
    Row { tok: Tok::WriteStar, alpha: P_READ, bravo: P_READ, charlie: P_READ_ABSENT },
    Row { tok: Tok::AdminStar, alpha: P_ADMIN, bravo: P_ADMIN, charlie: P_ADMIN_ABSENT },
    Row { tok: Tok::ProjectAlpha, alpha: P_LISTING, bravo: P_NO_ROLE, charlie: P_NO_ROLE },
    Row { tok: Tok::ProjectAlphaOther, alpha: P_OTHER, bravo: P_NO_ROLE, charlie: P_NO_ROLE },
    Row { tok: Tok::ProjectAlphaBoth, alpha: P_BOTH, bravo: P_NO_ROLE, charlie: P_NO_ROLE },
    Row { tok: Tok::ProjectBravo, alpha: P_NO_ROLE, bravo: P_LISTING, charlie: P_NO_ROLE },
    Row { tok: Tok::ProjectStar, alpha: P_LISTING, bravo: P_LISTING, charlie: P_LISTING_ABSENT },
    Row { tok: Tok::ProjectAlphaReadBravo, alpha: P_LISTING, bravo: P_READ, charlie: P_NO_ROLE },
    Row { tok: Tok::ProjectAlphaAdminStar, alpha: P_LISTING, bravo: P_ADMIN, charlie: P_ADMIN_ABSENT },
];

/// The projection matrix: every invalid kind of token of the group matrix (401
/// everywhere), then [`PROJ_ROWS`].
fn proj_matrix() -> Vec<ProjRow> {
    MATRIX
        .iter()
        .filter(|r| r.alpha == NO_AUTH)
        .map(|r| Row {
            tok: r.tok,
            alpha: P_NO_AUTH,
            bravo: P_NO_AUTH,
            charlie: P_NO_AUTH,
        })
        .chain(PROJ_ROWS.iter().copied())
        .collect()
}

impl Fixture {
    /// A witness with alpha and bravo as in [`Fixture::start`], each with the
    /// projections `listing`, `other` and `doomed` (the first two ready to read), and a
    /// snapshot of alpha whose object `Endpoint::Object` asks for.
    fn with_projections(scratch: &Scratch) -> Fixture {
        let fx = Fixture::start(scratch, &[], None);
        for g in [&ALPHA, &BRAVO] {
            for name in [LISTING, OTHER, DOOMED] {
                let r = fx.define(g.name, g, name);
                check(&r, CREATED, &format!("define {name} in {}", g.name));
            }
            for name in [LISTING, OTHER] {
                fx.wait_ready(g.name, name);
            }
        }
        let r = fx.admin.snapshot_make(ALPHA.name);
        assert_eq!(r.status, 201, "{:?}", r.body);
        let object = r.body["object"].as_str().expect("object").to_string();
        fx.object.set(object).expect("set once");
        fx
    }

    /// `PUT` of projection `name` of `shape` into group `group`, as the admin.
    fn define(&self, group: &str, shape: &Group, name: &str) -> Resp {
        let req = Req::put_json(
            format!("/v1/groups/{group}/projections/{name}"),
            &shape.spec(name),
        );
        self.send(&req, self.admin.token.as_deref())
    }

    /// Waits until projection `name` of `group` serves reads.
    fn wait_ready(&self, group: &str, name: &str) {
        let req = get_req(&format!("/v1/groups/{group}/projections/{name}/status"));
        let until = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.send(&req, self.admin.token.as_deref());
            check(&r, OK, "status");
            let s = r.json();
            match s["state"].as_str() {
                Some("ready") => return,
                Some("building") => {}
                _ => panic!("{name} of {group}: {s}"),
            }
            assert!(std::time::Instant::now() < until, "{name} not ready: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn proj_request(&self, ep: ProjEndpoint, t: Target) -> Req {
        let base = format!("/v1/groups/{}/projections", t.name());
        let delete = |name: &str| Req {
            method: reqwest::Method::DELETE,
            ..get_req(&format!("{base}/{name}"))
        };
        match ep {
            ProjEndpoint::Put => {
                Req::put_json(format!("{base}/{LISTING}"), &t.shape().spec(LISTING))
            }
            ProjEndpoint::Delete => delete(DOOMED),
            ProjEndpoint::DeleteAbsent => delete(NOPE),
            ProjEndpoint::List => get_req(&base),
            ProjEndpoint::Status => get_req(&format!("{base}/{LISTING}/status")),
            ProjEndpoint::StatusAbsent => get_req(&format!("{base}/{NOPE}/status")),
            ProjEndpoint::Rows => get_req(&format!("{base}/{LISTING}")),
            ProjEndpoint::RowsOther => get_req(&format!("{base}/{OTHER}")),
            ProjEndpoint::RowsAbsent => get_req(&format!("{base}/{NOPE}")),
        }
    }
}

/// Checks that an accepted projection answer is about `t`'s projection only.
fn check_proj_payload(resp: &Resp, ep: ProjEndpoint, t: Target, ctx: &str) {
    let g = t.shape();
    if ep == ProjEndpoint::Delete {
        return;
    }
    let body = resp.json();
    match ep {
        ProjEndpoint::Put | ProjEndpoint::Status => {
            assert_eq!(body["name"], LISTING, "{ctx}: {body}");
            assert_eq!(body["spec"], g.spec(LISTING), "{ctx}: {body}");
        }
        ProjEndpoint::List => {
            assert_eq!(body["group"], t.name(), "{ctx}: {body}");
            let names: Vec<&str> = body["projections"]
                .as_array()
                .expect("projections")
                .iter()
                .map(|p| p["name"].as_str().expect("name"))
                .collect();
            assert_eq!(names, [DOOMED, LISTING, OTHER], "{ctx}");
        }
        ProjEndpoint::Rows => {
            assert_eq!(body["projection"], LISTING, "{ctx}: {body}");
            let rows = body["rows"].as_array().expect("rows");
            assert!(!rows.is_empty(), "{ctx}");
            for r in rows {
                let v = r[g.column].as_str().expect("the text column");
                assert!(v.starts_with(g.value), "{ctx}: {r}");
            }
        }
        ProjEndpoint::RowsOther => {
            assert_eq!(body["projection"], OTHER, "{ctx}: {body}");
            let rows = body["rows"].as_array().expect("rows");
            assert!(!rows.is_empty() && rows.iter().all(|r| r["n"].as_u64() > Some(0)));
        }
        _ => {}
    }
}

#[test]
fn every_projection_route_and_token_kind_gets_its_status_and_learns_nothing_of_other_groups() {
    let scratch = Scratch::new("projections");
    let fx = Fixture::with_projections(&scratch);
    let secret = jwt_secret(&fx.w);
    let ed_key = scratch.0.join("ed.key");
    keygen(&ed_key);

    let matrix = proj_matrix();
    let mut answers: Vec<(&ProjRow, ProjEndpoint, Target, Resp)> = Vec::new();
    let (mut unauthorized, mut forbidden, mut not_found) = (0, 0, 0);
    for row in &matrix {
        let auth = authorization(row.tok, &fx, &secret, &ed_key);
        for (col, &ep) in PROJ_ENDPOINTS.iter().enumerate() {
            for &t in &TARGETS {
                let want = row.cells(t)[col];
                let ctx = format!("{:?} {ep:?} on {}", row.tok, t.name());
                let resp = send(
                    &fx.http,
                    &fx.w.url,
                    &fx.proj_request(ep, t),
                    auth.as_deref(),
                );
                check(&resp, want, &ctx);
                match want {
                    Want::Json(_) => check_proj_payload(&resp, ep, t, &ctx),
                    // Put back for the next row: every DELETE is of a projection that
                    // exists, so the refusals above were refusals of a real one.
                    GONE => check(&fx.define(t.name(), t.shape(), DOOMED), CREATED, &ctx),
                    UNAUTH => unauthorized += 1,
                    FORBID => forbidden += 1,
                    MISSING => not_found += 1,
                    _ => {}
                }
                answers.push((row, ep, t, resp));
            }
        }
    }
    let answer = |row: &ProjRow, ep: ProjEndpoint, t: Target| {
        &answers
            .iter()
            .find(|(r, e, tt, _)| r.tok == row.tok && *e == ep && *tt == t)
            .expect("answered")
            .3
    };

    // A token's answers about a group it has no grant on are exactly its answers about
    // a group that does not exist, and are the same on every route: neither the group
    // nor any of its projections is revealed.
    let mut compared = [0usize; 2];
    for (row, ep, t, resp) in &answers {
        if row.sees(*t) {
            continue;
        }
        compared[usize::from(resp.status == 403)] += 1;
        assert_eq!(
            resp,
            answer(row, *ep, Target::Charlie),
            "{:?} {ep:?}: {} and {CHARLIE} must answer alike",
            row.tok,
            t.name()
        );
        assert_eq!(
            resp,
            answer(row, ProjEndpoint::Rows, *t),
            "{:?} on {}: {ep:?} and Rows must answer alike",
            row.tok,
            t.name()
        );
    }
    assert!(compared[0] > 0 && compared[1] > 0, "{compared:?}");
    // Within a group a token does see, every refusal of one token is the same answer: a
    // projection-only token cannot tell `other` (defined) from `nope` (never), nor a
    // read token the DELETE of a projection that exists from one that does not.
    for (row, ep, t, resp) in &answers {
        if resp.status != 403 {
            continue;
        }
        for other in PROJ_ENDPOINTS {
            let a = answer(row, other, *t);
            if a.status == 403 {
                assert_eq!(
                    resp,
                    a,
                    "{:?} on {}: {ep:?} and {other:?}",
                    row.tok,
                    t.name()
                );
            }
        }
    }

    // No answer to a token without a grant on a group holds anything of that group.
    fx.assert_nothing_leaks(answers.iter().map(|(row, ep, t, resp)| {
        let what = format!("{:?} {ep:?} on {}", row.tok, t.name());
        (
            what,
            [row.sees(Target::Alpha), row.sees(Target::Bravo)],
            resp,
        )
    }));

    // Each refusal was counted as one, and a star admin's PUT of a projection into
    // charlie-void did not create the group.
    fx.assert_absent_and_counted(unauthorized, forbidden, not_found);

    // Authorisation comes before the spec is looked at: a spec that names a table the
    // group lacks is invalid for its admin, and forbidden to everyone else, in the same
    // words as a valid spec, so a spec's refusal never probes a group's schema.
    let bogus = |group: &str, body: &[u8]| Req {
        body: Some(body.to_vec()),
        ..Req::put_json(
            format!("/v1/groups/{group}/projections/fresh"),
            &Value::Null,
        )
    };
    let no_table =
        json!({"kind": "index", "table": "no_such_table", "key": {"n": "id"}, "columns": ["id"]})
            .to_string();
    let auth = |tok| authorization(tok, &fx, &secret, &ed_key);
    let put = |tok, group: &str, body: &[u8]| {
        send(
            &fx.http,
            &fx.w.url,
            &bogus(group, body),
            auth(tok).as_deref(),
        )
    };
    check(
        &put(Tok::AdminAlpha, ALPHA.name, no_table.as_bytes()),
        Want::Problem(422, "invalid_projection"),
        "admin, a spec for another schema",
    );
    check(
        &put(Tok::AdminAlpha, ALPHA.name, b"{not json"),
        Want::Problem(422, "invalid_projection"),
        "admin, not JSON",
    );
    for tok in [Tok::ReadAlpha, Tok::WriteAlpha, Tok::ProjectAlpha] {
        let valid = send(
            &fx.http,
            &fx.w.url,
            &fx.proj_request(ProjEndpoint::Put, Target::Alpha),
            auth(tok).as_deref(),
        );
        for body in [no_table.as_bytes(), b"{not json"] {
            let r = put(tok, ALPHA.name, body);
            check(&r, FORBID, &format!("{tok:?}, a bad spec"));
            assert_eq!(r, valid, "{tok:?}");
        }
    }
    for tok in [Tok::AdminBravo, Tok::ProjectBravo] {
        let absent = put(tok, CHARLIE, no_table.as_bytes());
        check(&absent, FORBID, &format!("{tok:?} on {CHARLIE}"));
        assert_eq!(put(tok, ALPHA.name, no_table.as_bytes()), absent, "{tok:?}");
    }
    // A name outside [a-z][a-z0-9_]{0,62} is refused to the admin only.
    let bad_name = Req {
        path: format!("/v1/groups/{}/projections/Not-A-Name", ALPHA.name),
        ..bogus(ALPHA.name, ALPHA.spec(LISTING).to_string().as_bytes())
    };
    let r = send(
        &fx.http,
        &fx.w.url,
        &bad_name,
        auth(Tok::AdminAlpha).as_deref(),
    );
    check(&r, Want::Problem(400, "bad_request"), "a bad name");
    let r = send(
        &fx.http,
        &fx.w.url,
        &bad_name,
        auth(Tok::ReadAlpha).as_deref(),
    );
    check(&r, FORBID, "a bad name, read");
    // A new name is created (201), the same spec again changes nothing (200, the same
    // version), another spec is a new version (201).
    let fresh = |spec: &Value| put(Tok::AdminStar, ALPHA.name, spec.to_string().as_bytes());
    let first = fresh(&ALPHA.spec(LISTING));
    check(&first, CREATED, "fresh");
    let again = fresh(&ALPHA.spec(LISTING));
    check(&again, OK, "fresh again");
    assert_eq!(again.json()["version"], first.json()["version"]);
    let redefined = fresh(&ALPHA.spec(DOOMED));
    check(&redefined, CREATED, "fresh redefined");
    assert!(redefined.json()["version"].as_u64() > first.json()["version"].as_u64());
}

#[test]
fn a_projection_only_token_reaches_nothing_else_of_its_group() {
    let scratch = Scratch::new("project-only");
    let fx = Fixture::with_projections(&scratch);
    let secret = jwt_secret(&fx.w);
    let ed_key = scratch.0.join("ed.key");
    keygen(&ed_key);

    // Every route of the group that is not a projection read, in the order of the rows.
    const ROUTES: [Endpoint; 10] = [
        Endpoint::PutGroup,
        Endpoint::GetGroup,
        Endpoint::PostCommit,
        Endpoint::Pull,
        Endpoint::Watch,
        Endpoint::SnapshotLatest,
        Endpoint::SnapshotAt,
        Endpoint::PostSnapshot,
        Endpoint::Certificate,
        Endpoint::Object,
    ];
    // The read and write tokens show that each request is one the group answers; the
    // projection-only ones, with or without other grants elsewhere, are refused each.
    #[rustfmt::skip]
    let rows: [(Tok, [Want; 10]); 6] = [
        (Tok::ReadAlpha, [FORBID, OK, FORBID, OK, SSE, OK, OK, FORBID, OK, OBJECT]),
        (Tok::WriteAlpha, [FORBID, OK, CREATED, OK, SSE, OK, OK, FORBID, OK, OBJECT]),
        (Tok::ProjectAlpha, [FORBID; 10]),
        (Tok::ProjectAlphaBoth, [FORBID; 10]),
        (Tok::ProjectStar, [FORBID; 10]),
        (Tok::ProjectAlphaAdminStar, [FORBID; 10]),
    ];
    let commits_before = fx.admin.history(ALPHA.name).len();
    let latest_before = fx.admin.snapshot_latest(ALPHA.name).body;
    let mut created = 0;
    for (tok, wants) in &rows {
        let auth = authorization(*tok, &fx, &secret, &ed_key);
        for (ep, want) in ROUTES.iter().zip(wants) {
            let ctx = format!("{tok:?} {ep:?} on {}", ALPHA.name);
            let resp = send(
                &fx.http,
                &fx.w.url,
                &fx.request(*ep, Target::Alpha),
                auth.as_deref(),
            );
            check(&resp, *want, &ctx);
            if matches!(want, Want::Json(_) | Want::Stream) {
                check_payload(&resp, *ep, Target::Alpha, &ctx);
            }
            if *want == CREATED {
                created += 1;
            }
            if *want == FORBID && !matches!(tok, Tok::ReadAlpha | Tok::WriteAlpha) {
                // Said in the words of a grant, not a role, and naming nothing of the
                // group beyond what the token already names.
                let text = resp.text();
                for s in &fx.secrets(&ALPHA) {
                    assert!(!text.contains(s.as_str()), "{ctx} leaks {s:?}: {text}");
                }
            }
        }
        // The projection it was granted is what it can read.
        let r = send(
            &fx.http,
            &fx.w.url,
            &fx.proj_request(ProjEndpoint::Rows, Target::Alpha),
            auth.as_deref(),
        );
        check(&r, OK, &format!("{tok:?} rows"));
        check_proj_payload(&r, ProjEndpoint::Rows, Target::Alpha, &format!("{tok:?}"));
    }
    // Nothing the projection-only tokens sent took effect: only the writer's commit is
    // new, and the latest snapshot is the one made before.
    assert_eq!(fx.admin.history(ALPHA.name).len(), commits_before + created);
    assert_eq!(created, 1);
    assert_eq!(fx.admin.snapshot_latest(ALPHA.name).body, latest_before);
}

// ---------------------------------------------------------------------------------------
// Scoped projections: a projection-only token sees the rows whose scope column equals
// its claim, whatever it sends; a read token sees them all.

const DOCS_GROUP: &str = "scoped-docs";
const DOCS_DDL: &str =
    "CREATE TABLE docs(id INTEGER PRIMARY KEY, owner TEXT, team TEXT, title TEXT NOT NULL, n INTEGER)";

/// A row of `docs`.
struct Doc {
    id: i64,
    owner: Option<&'static str>,
    team: &'static str,
    title: &'static str,
}

/// Rows of two owners, ann and bob, sharing titles, and a few whose owner is only
/// nearly ann (case, a trailing space, an injection) or none at all.
fn docs() -> Vec<Doc> {
    const TITLES: [&str; 7] = [
        "alpha note",
        "beta note",
        "gamma",
        "x' OR '1'='1",
        "delta%00",
        "epsilon",
        "alpha",
    ];
    const ODD: [Option<&str>; 5] = [
        None,
        Some(""),
        Some("ANN"),
        Some("ann "),
        Some("ann' OR '1'='1"),
    ];
    (1..=60)
        .map(|id: i64| Doc {
            id,
            owner: match id % 5 {
                0 | 1 => Some("ann"),
                2 | 3 => Some("bob"),
                _ => ODD[(id / 5) as usize % ODD.len()],
            },
            team: if id % 3 == 0 { "blue" } else { "red" },
            title: TITLES[id as usize % TITLES.len()],
        })
        .collect()
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `n`: small integers, some NULL, so that integer filters and sums have work.
fn doc_n(id: i64) -> Option<i64> {
    (id % 13 != 0).then_some(id * 3 % 11)
}

fn scoped_specs() -> [(&'static str, Value); 4] {
    let by_sub = json!({"column": "owner", "claim": "sub"});
    [
        (
            "mine",
            json!({"kind": "index", "table": "docs", "key": {"t": "title", "m": "n"},
                   "columns": ["id", "owner", "n"], "scope": by_sub}),
        ),
        (
            "tally",
            json!({"kind": "aggregate", "table": "docs", "group_by": {"t": "title"},
                   "measures": {"c": "count(*)", "total": "sum(n)"}, "scope": by_sub}),
        ),
        (
            "find",
            json!({"kind": "search", "table": "docs", "columns": ["title"], "scope": by_sub}),
        ),
        (
            "byteam",
            json!({"kind": "index", "table": "docs", "key": {"t": "title"},
                   "columns": ["id", "team"], "scope": {"column": "team", "claim": "team"}}),
        ),
    ]
}

/// Creates `group` with `ddl` and commits the rows `sql` inserts, as the admin.
fn seed(admin: &Client, group: &str, ddl: &str, sql: &str) {
    assert_eq!(admin.create_group(group, ddl).status, 201);
    let ((seq, head), schema) = admin.head(group);
    let changeset = record(ddl, "", sql);
    let r = admin.commit(
        group,
        &Commit {
            changeset: &changeset,
            base_seq: seq,
            base_head: head,
            key: "seed",
            schema,
            policy: None,
        },
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// `PUT` of projection `name` as the admin; its version, once defined anew (201).
fn put_projection(admin: &Client, group: &str, name: &str, spec: &Value) -> u64 {
    let r = admin
        .send(
            "PUT",
            &format!("/v1/groups/{group}/projections/{name}"),
            &[],
            Some(spec.to_string().into_bytes()),
        )
        .expect("witness reachable");
    assert_eq!(r.status, 201, "{name}: {:?}", r.body);
    r.body["version"].as_u64().expect("version")
}

/// The status of projection `name` once its `version` is no longer building.
fn settled(admin: &Client, group: &str, name: &str, version: u64) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = admin
            .send(
                "GET",
                &format!("/v1/groups/{group}/projections/{name}/status"),
                &[],
                None,
            )
            .expect("witness reachable");
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.body["version"] == version && r.body["state"] != "building" {
            return r.body;
        }
        assert!(std::time::Instant::now() < until, "{:?}", r.body);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A witness with `scoped-docs` holding [`docs`] and its four scoped projections ready.
struct Scoped {
    w: WitnessProc,
    http: reqwest::blocking::Client,
    secret: Vec<u8>,
}

impl Scoped {
    fn start(scratch: &Scratch) -> Scoped {
        let w = WitnessProc::start(&scratch.0.join("data"));
        let secret = jwt_secret(&w).to_vec();
        let s = Scoped {
            w,
            http: http(),
            secret,
        };
        let admin = Client::new(&s.w.url, s.w.admin.as_deref());
        let mut sql = String::new();
        for d in docs() {
            sql.push_str(&format!(
                "INSERT INTO docs VALUES ({}, {}, '{}', {}, {});",
                d.id,
                d.owner.map_or("NULL".into(), sql_text),
                d.team,
                sql_text(d.title),
                doc_n(d.id).map_or("NULL".into(), |n| n.to_string())
            ));
        }
        seed(&admin, DOCS_GROUP, DOCS_DDL, &sql);
        let versions: Vec<(&str, u64)> = scoped_specs()
            .iter()
            .map(|(name, spec)| (*name, put_projection(&admin, DOCS_GROUP, name, spec)))
            .collect();
        for (name, version) in versions {
            let s = settled(&admin, DOCS_GROUP, name, version);
            assert_eq!(s["state"], "ready", "{s}");
        }
        s
    }

    /// A token signed by the witness's secret with these claims (an hour to live, and
    /// `sub` unless `claims` sets it).
    fn token(&self, claims: Value) -> String {
        let mut c = json!({"sub": "nobody", "exp": now_s() + 3600});
        for (k, v) in claims.as_object().expect("claims object") {
            c[k] = v.clone();
        }
        hs256_jwt(&hs256_header(), &c, &self.secret)
    }

    /// A projection-only token granting every scoped projection, with these claims.
    fn project_token(&self, claims: Value) -> String {
        let mut c = claims;
        c["groups"] = json!({DOCS_GROUP: ["project:mine", "project:tally", "project:find", "project:byteam"]});
        self.token(c)
    }

    fn get(&self, token: &str, name: &str, query: &str) -> Resp {
        let path = format!("/v1/groups/{DOCS_GROUP}/projections/{name}?{query}");
        send(
            &self.http,
            &self.w.url,
            &get_req(&path),
            Some(&Fixture::bearer(token)),
        )
    }

    /// Every page of a read of `name` with `query`, following `next`: the rows, or the
    /// status and problem code of the first refusal.
    fn pages(&self, token: &str, name: &str, query: &str) -> Result<Vec<Value>, (u16, String)> {
        let mut rows = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..200 {
            let q = match &next {
                Some(n) if query.is_empty() => format!("next={n}"),
                Some(n) => format!("{query}&next={n}"),
                None => query.to_string(),
            };
            let r = self.get(token, name, &q);
            if r.status != 200 {
                assert_eq!(
                    r.content_type,
                    "application/problem+json",
                    "{name}?{q}: {} {}",
                    r.status,
                    r.text()
                );
                let code = r.json()["code"].as_str().expect("code").to_string();
                return Err((r.status, code));
            }
            let body = r.json();
            assert_eq!(body["projection"], name, "{body}");
            rows.extend(body["rows"].as_array().expect("rows").iter().cloned());
            match body["next"].as_str() {
                Some(n) => next = Some(n.to_string()),
                None => return Ok(rows),
            }
        }
        panic!("{name}?{query}: more than 200 pages");
    }
}

/// Query strings: `fixed` as written, then `built` (long ones).
fn queries(fixed: &[&str], built: impl IntoIterator<Item = String>) -> Vec<String> {
    fixed.iter().map(|q| q.to_string()).chain(built).collect()
}

impl Scoped {
    /// Reads `name` with each of `queries` as `reader` and as each of `scoped` (who,
    /// token), and checks [`same_but_scoped`] with `theirs(who, row)` telling their rows:
    /// how many rows the scoped tokens were shown, and how many of their reads refused.
    fn scoped_like_reader(
        &self,
        reader: &str,
        scoped: &[(&str, &str)],
        name: &str,
        queries: &[String],
        theirs: impl Fn(&str, &Value) -> bool,
    ) -> (usize, usize) {
        let (mut shown, mut refused) = (0, 0);
        for q in queries {
            let r = self.pages(reader, name, q);
            for (who, token) in scoped {
                let ctx = format!("{who} {name}?{}", &q[..q.len().min(80)]);
                let got = self.pages(token, name, q);
                refused += usize::from(got.is_err());
                shown += same_but_scoped(&got, &r, |v| theirs(who, v), &ctx);
            }
        }
        (shown, refused)
    }
}

/// Rows as a sorted list of their JSON texts, to compare as multisets.
fn multiset(rows: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(Value::to_string).collect();
    v.sort();
    v
}

/// Checks that `scoped` read `name?query` as exactly the rows `reader` read that `mine`
/// keeps, or was refused as the reader was: the scope removes rows, never adds or
/// changes one, and never decides whether a request is valid.
fn same_but_scoped(
    scoped: &Result<Vec<Value>, (u16, String)>,
    reader: &Result<Vec<Value>, (u16, String)>,
    mine: impl Fn(&Value) -> bool,
    ctx: &str,
) -> usize {
    match (scoped, reader) {
        (Ok(s), Ok(r)) => {
            let kept: Vec<Value> = r.iter().filter(|v| mine(v)).cloned().collect();
            assert_eq!(multiset(s), multiset(&kept), "{ctx}");
            s.len()
        }
        (Err(s), Err(r)) => {
            assert_eq!(s, r, "{ctx}");
            assert_eq!(s.0, 400, "{ctx}: {s:?}");
            0
        }
        _ => panic!("{ctx}: scoped {scoped:?}, reader {reader:?}"),
    }
}

#[test]
fn a_scoped_projection_shows_a_projection_only_token_its_own_rows_whatever_it_sends() {
    let scratch = Scratch::new("scoped");
    let s = Scoped::start(&scratch);
    let all = docs();
    let ids_of = |owner: &str| -> Vec<i64> {
        all.iter()
            .filter(|d| d.owner == Some(owner))
            .map(|d| d.id)
            .collect()
    };
    let (ann_ids, bob_ids) = (ids_of("ann"), ids_of("bob"));
    assert!(ann_ids.len() >= 20 && bob_ids.len() >= 20);

    // A read token sees every row, whatever its own sub; the CLI's project:mine token
    // for ann sees exactly ann's.
    let reader = s.w.token("ann", DOCS_GROUP, "read", 3600);
    let ann_cli = s.w.token("ann", DOCS_GROUP, "project:mine", 3600);
    let ann = s.project_token(json!({"sub": "ann"}));
    let bob = s.project_token(json!({"sub": "bob"}));
    let ids = |rows: &[Value]| -> Vec<i64> {
        let mut v: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().expect("id")).collect();
        v.sort_unstable();
        v
    };
    let everything = s.pages(&reader, "mine", "limit=7").expect("reader reads");
    assert_eq!(ids(&everything), (1..=60).collect::<Vec<_>>());
    for token in [&ann_cli, &ann] {
        let rows = s.pages(token, "mine", "limit=7").expect("ann reads");
        assert_eq!(ids(&rows), ann_ids);
        assert!(rows.iter().all(|r| r["owner"] == "ann"), "{rows:?}");
    }
    assert_eq!(ids(&s.pages(&bob, "mine", "").expect("bob reads")), bob_ids);
    // ann's CLI token names one projection: the others are refused to it.
    for name in ["tally", "find", "byteam"] {
        check(&s.get(&ann_cli, name, "q=alpha"), FORBID, name);
    }

    // Whatever filters, limits and cursors ann and bob send, each answer is a refusal
    // the reader gets too, or the reader's rows of that read that are theirs.
    let long = |c: &str, n: usize| c.repeat(n);
    let index_queries = queries(
        &[
            "",
            "limit=1",
            "limit=1000",
            "t=alpha",
            "t=alpha%20note",
            "t=x%27%20OR%20%271%27%3D%271",
            "t=x%27%20OR%20%271%27%3D%271%27--",
            "t=%27%20OR%201%3D1%20--",
            "t=%00",
            "t=delta%00",
            "t=delta%2500",
            "t.gt=a&t.lt=c",
            "t.gte=&limit=3",
            "m=3",
            "m.gt=2&m.lt=9&limit=2",
            "m=1%20OR%201%3D1",
            "m=3.5",
            "m=99999999999999999999",
            "m.gte=-9223372036854775808",
            "t=alpha&t=beta",
            "t=alpha&t.eq=alpha",
            "t%2Egt=b",
            "%74=alpha",
            "owner=bob",
            "owner.eq=bob",
            "sc=bob",
            "id=1",
            "sub=bob",
            "scope=bob",
            "t.neq=alpha",
            "t.like=%25",
            "T=alpha",
            "limit=0",
            "limit=-1",
            "limit=1001",
            "limit=1e2",
            "limit=1&limit=2",
            "next=",
            "next=garbage",
            "next=AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
            "q=alpha",
            "min_seq=abc",
            "min_seq=1&wait=0",
        ],
        [
            format!("t={}", long("a", 5000)),
            format!("t={}", long("%27", 3000)),
            format!("t.gt={}&limit=5", long("z", 20_000)),
            format!("m={}", long("9", 5000)),
        ],
    );
    let by_owner = |who: &str, row: &Value| row["owner"] == who;
    let (answered, refused) = s.scoped_like_reader(
        &reader,
        &[("ann", &ann), ("bob", &bob)],
        "mine",
        &index_queries,
        by_owner,
    );
    assert!(answered > 0 && refused > 0, "{answered} {refused}");
    // The filters that should narrow do.
    let x = s
        .pages(&ann, "mine", "t=x%27%20OR%20%271%27%3D%271")
        .expect("x");
    let want: Vec<i64> = all
        .iter()
        .filter(|d| d.owner == Some("ann") && d.title == "x' OR '1'='1")
        .map(|d| d.id)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(ids(&x), want);

    // The scoped aggregate is grouped by owner too: ann's rows are her counts only; the
    // reader's hold a row per (title, owner).
    let tally = s.pages(&ann, "tally", "").expect("tally");
    for row in &tally {
        let t = row["t"].as_str().expect("t");
        let n = all
            .iter()
            .filter(|d| d.owner == Some("ann") && d.title == t)
            .count();
        assert_eq!(row["owner"], "ann", "{row}");
        assert_eq!(row["c"].as_u64(), Some(n as u64), "{row}");
    }
    let titles: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|d| d.owner == Some("ann"))
        .map(|d| d.title)
        .collect();
    assert_eq!(tally.len(), titles.len());
    let every = s.pages(&reader, "tally", "").expect("reader tally");
    let pairs: std::collections::BTreeSet<(&str, Option<&str>)> =
        all.iter().map(|d| (d.title, d.owner)).collect();
    assert_eq!(every.len(), pairs.len());
    let tally_queries = queries(
        &[
            "",
            "limit=2",
            "t=alpha",
            "t=x%27%20OR%20%271%27%3D%271",
            "t.gt=b",
            "t=%00",
            "owner=bob",
            "sc=bob",
            "c=1",
            "q=alpha",
            "next=garbage",
        ],
        [format!("t={}", long("b", 5000))],
    );
    s.scoped_like_reader(
        &reader,
        &[("ann", &ann), ("bob", &bob)],
        "tally",
        &tally_queries,
        by_owner,
    );

    // Search: hostile text is searched for literally or refused, never widened.
    let search_queries = queries(
        &[
            "q=alpha",
            "q=alpha*",
            "q=note&limit=1",
            "q=x%27%20OR%20%271%27%3D%271",
            "q=owner%3Abob",
            "q=sc%3Abob",
            "q=title%3Aalpha",
            "q=alpha%20OR%20beta",
            "q=NEAR(alpha%20note)",
            "q=*",
            "q=%22",
            "q=delta%2500",
            "q=alpha&t=x",
            "q=alpha&q=beta",
            "q=alpha&next=x",
            "",
        ],
        [
            format!("q={}", long("a%20", 70)),
            format!("q={}", long("a", 5000)),
        ],
    );
    let hit_of =
        |who: &str, row: &Value| row["id"].as_i64().is_some_and(|i| ids_of(who).contains(&i));
    s.scoped_like_reader(
        &reader,
        &[("ann", &ann), ("bob", &bob)],
        "find",
        &search_queries,
        hit_of,
    );
    let hits = s.pages(&ann, "find", "q=alpha").expect("search");
    let want: Vec<i64> = all
        .iter()
        .filter(|d| d.owner == Some("ann") && d.title.starts_with("alpha"))
        .map(|d| d.id)
        .collect();
    assert_eq!(ids(&hits), want);

    // A cursor is good for the read and the scope it was issued for: not for another
    // sub, nor for the reader (nor the reader's for ann), nor for other filters. The
    // same sub with another token of the same grant resumes.
    let next_of = |token: &str, name: &str, q: &str| -> String {
        let r = s.get(token, name, q);
        check(&r, OK, &format!("{name}?{q}"));
        r.json()["next"].as_str().expect("a next page").to_string()
    };
    let invalid = Want::Problem(400, "invalid_cursor");
    for (name, q) in [
        ("mine", "limit=3"),
        ("tally", "limit=1"),
        ("find", "q=alpha&limit=1"),
    ] {
        let cursor = next_of(&ann, name, q);
        let resume = format!("{q}&next={cursor}");
        check(
            &s.get(&bob, name, &resume),
            invalid,
            &format!("bob, ann's {name}"),
        );
        check(
            &s.get(&reader, name, &resume),
            invalid,
            &format!("reader, ann's {name}"),
        );
        check(
            &s.get(&ann, name, &resume),
            OK,
            &format!("ann, ann's {name}"),
        );
        let theirs = next_of(&reader, name, q);
        let resume_reader = format!("{q}&next={theirs}");
        check(
            &s.get(&ann, name, &resume_reader),
            invalid,
            &format!("ann, reader's {name}"),
        );
        if name == "mine" {
            check(
                &s.get(&ann, name, &format!("t=alpha&{resume}")),
                invalid,
                "other filter",
            );
            // The page size is not part of the read: another limit resumes.
            check(
                &s.get(&ann, name, &format!("limit=2&next={cursor}")),
                OK,
                "another limit",
            );
        }
    }
    let cursor = next_of(&ann, "mine", "limit=3");
    check(
        &s.get(&ann_cli, "mine", &format!("limit=3&next={cursor}")),
        OK,
        "ann's CLI token, ann's cursor",
    );

    // The scope compares text with text: subs that are nearly ann, or SQL, see exactly
    // the rows whose owner is that very text; nobody scoped sees a row without owner.
    let mut seen_scoped: Vec<i64> = Vec::new();
    for sub in ["ann", "bob", "", "ANN", "ann ", "ann' OR '1'='1"] {
        let t = s.project_token(json!({"sub": sub}));
        let rows = s.pages(&t, "mine", "").expect("scoped read");
        assert_eq!(ids(&rows), ids_of(sub), "sub {sub:?}");
        seen_scoped.extend(ids(&rows));
    }
    seen_scoped.sort_unstable();
    let owned: Vec<i64> = all
        .iter()
        .filter(|d| d.owner.is_some())
        .map(|d| d.id)
        .collect();
    assert_eq!(seen_scoped, owned);
    assert!(owned.len() < all.len());

    // A spec scoped by another claim: a token without it (the CLI mints only sub), or
    // with one that is not text or a number, is refused; one with it sees its rows.
    let team_ids = |team: &str| -> Vec<i64> {
        all.iter()
            .filter(|d| d.team == team)
            .map(|d| d.id)
            .collect()
    };
    let team_token = |team: Value| s.project_token(json!({"sub": "ann", "team": team}));
    for token in [
        s.w.token("ann", DOCS_GROUP, "project:byteam", 3600),
        ann.clone(),
        team_token(json!(true)),
        team_token(json!(["blue"])),
        team_token(json!({"name": "blue"})),
        team_token(Value::Null),
    ] {
        let r = s.get(&token, "byteam", "");
        check(&r, FORBID, "no usable team claim");
        assert!(
            r.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains("\"team\"")),
            "{}",
            r.text()
        );
    }
    let blue = s
        .pages(&team_token(json!("blue")), "byteam", "limit=4")
        .expect("blue");
    assert_eq!(ids(&blue), team_ids("blue"));
    assert!(blue.iter().all(|r| r["team"] == "blue"));
    let red = s
        .pages(&team_token(json!("red")), "byteam", "")
        .expect("red");
    assert_eq!(ids(&red), team_ids("red"));
    for team in [json!(7), json!("blue' OR '1'='1"), json!("")] {
        let none = s
            .pages(&team_token(team.clone()), "byteam", "")
            .expect("team");
        assert!(none.is_empty(), "team {team}: {none:?}");
    }
    assert_eq!(
        ids(&s.pages(&reader, "byteam", "").expect("reader")),
        (1..=60).collect::<Vec<_>>()
    );
    // A read token's scope claim does not matter: it is not scoped.
    let reader_blue = s.token(json!({"sub": "x", "team": "blue", "groups": {DOCS_GROUP: "read"}}));
    assert_eq!(
        ids(&s.pages(&reader_blue, "byteam", "").expect("reader")).len(),
        60
    );
}

// ---------------------------------------------------------------------------------------
// Defects this matrix found in the first projection increment, each fixed since.

/// Found by this matrix (fixed): a NUL byte in a search's `q` reaches FTS5,
/// which ends the quoted string there ("unterminated string"); the SQLite error comes
/// back as 503 `unavailable` ("the witness cannot store commits right now"), which a
/// client retries forever. Search text is the client's: it must be searched literally
/// (200) or refused as 400 `invalid_query` on `q`, for a scoped token as for a reader.
#[test]
fn a_nul_byte_in_search_text_is_refused_or_searched_not_a_503() {
    let scratch = Scratch::new("nul");
    let s = Scoped::start(&scratch);
    let reader = s.w.token("ann", DOCS_GROUP, "read", 3600);
    let ann = s.project_token(json!({"sub": "ann"}));
    for q in ["q=%00", "q=alpha%00", "q=%00alpha%20note", "q=alpha%20%00*"] {
        for (who, token) in [("reader", &reader), ("ann", &ann)] {
            let r = s.get(token, "find", q);
            let ctx = format!("{who} find?{q}: {} {}", r.status, r.text());
            match r.status {
                200 => {
                    let rows = r.json()["rows"].as_array().expect("rows").clone();
                    assert!(rows.is_empty(), "{ctx}: no title holds a NUL");
                }
                400 => {
                    check(&r, Want::Problem(400, "invalid_query"), &ctx);
                    assert_eq!(r.json()["parameter"], "q", "{ctx}");
                }
                _ => panic!("{ctx}"),
            }
        }
    }
}

/// Found by this matrix (fixed): the rows route takes the scope's claim from
/// the projection's newest definition (`Projections::scope_claim`, which reads
/// `definitions::get`), but the rows from the version that serves, which is an older
/// one while a redefinition builds, and for good when it failed. So after a scoped
/// projection is redefined, a projection-only token is scoped by the new spec's claim
/// against the old version's column, or not scoped at all if the new spec has no
/// scope, and reads other owners' rows. The scope in force must be the serving
/// version's.
#[test]
fn a_redefinition_does_not_unscope_the_version_that_still_serves() {
    let scratch = Scratch::new("rescope");
    let w = WitnessProc::start(&scratch.0.join("data"));
    let secret = jwt_secret(&w);
    let admin = Client::new(&w.url, w.admin.as_deref());
    let g = "rescoped";
    let ddl = "CREATE TABLE docs(id INTEGER PRIMARY KEY, owner TEXT, team TEXT, n INTEGER)";
    // ann's two rows sum past 64 bits: any aggregate summing them fails to build, so
    // the version before it serves for good (deterministic, unlike a race with a build).
    let big = i64::MAX;
    seed(
        &admin,
        g,
        ddl,
        &format!(
            "INSERT INTO docs VALUES (1, 'ann', 'bob', {big}), (2, 'ann', 'bob', {big}), \
             (3, 'bob', 'red', 1), (4, 'bob', 'red', 1)"
        ),
    );
    let put = |spec: Value| put_projection(&admin, g, "view", &spec);
    let settled = |version: u64| settled(&admin, g, "view", version);
    let v1 = put(
        json!({"kind": "index", "table": "docs", "key": {"o": "owner"},
                        "columns": ["id"], "scope": {"column": "owner", "claim": "sub"}}),
    );
    assert_eq!(settled(v1)["state"], "ready");
    // ann's token also carries a team claim, whose value happens to be bob's sub.
    let ann = hs256_jwt(
        &hs256_header(),
        &json!({"sub": "ann", "team": "bob", "exp": now_s() + 3600,
                "groups": {g: "project:view"}}),
        &secret,
    );
    let ann_plain = w.token("ann", g, "project:view", 3600);
    let http = http();
    // What a token reads: the status, and the ids of the rows of v1 it was shown.
    let ids = |token: &str| -> (u16, Vec<i64>) {
        let path = format!("/v1/groups/{g}/projections/view");
        let r = send(
            &http,
            &w.url,
            &get_req(&path),
            Some(&Fixture::bearer(token)),
        );
        if r.status != 200 {
            return (r.status, Vec::new());
        }
        let body = r.json();
        assert_eq!(body["version"], v1, "{body}");
        let mut v: Vec<i64> = body["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["id"].as_i64().expect("id"))
            .collect();
        v.sort_unstable();
        (r.status, v)
    };
    let hers = (200, vec![1, 2]);
    assert_eq!(ids(&ann), hers);
    assert_eq!(ids(&ann_plain), hers);

    // Redefined scoped by team (and failing to build): v1 still serves, so ann still
    // reads v1 scoped by owner = her sub, with or without a team claim.
    let v2 = put(
        json!({"kind": "aggregate", "table": "docs", "group_by": {"o": "owner"},
               "measures": {"s": "sum(n)"}, "scope": {"column": "team", "claim": "team"}}),
    );
    let s = settled(v2);
    assert_eq!(
        (&s["state"], &s["serving_version"]),
        (&json!("failed"), &json!(v1)),
        "{s}"
    );
    let mut seen = vec![
        ("v2 scoped by team, ann with team=bob", ids(&ann)),
        ("v2 scoped by team, ann without team", ids(&ann_plain)),
    ];

    // Redefined without a scope (and failing): v1 still serves, still scoped.
    let v3 = put(
        json!({"kind": "aggregate", "table": "docs", "group_by": {"o": "owner"},
                        "measures": {"s": "sum(n)"}}),
    );
    let s = settled(v3);
    assert_eq!(
        (&s["state"], &s["serving_version"]),
        (&json!("failed"), &json!(v1)),
        "{s}"
    );
    seen.push(("v3 unscoped, ann", ids(&ann_plain)));
    // Today: [3, 4] (bob's rows, through ann's team claim), 403 (a claim v1 does not
    // use), and [1, 2, 3, 4] (every row of a scoped version).
    assert!(
        seen.iter().all(|(_, got)| *got == hers),
        "ann must read only her rows of v1 while it serves: {seen:?}"
    );
}

/// Found by this matrix (fixed): a read of a projection that does not exist,
/// with a `min_seq` the group's projections have not reached, waits out `wait` (10 s
/// unless given, up to 60) and answers 409 `projection_lagging`, which tells a client
/// to retry, instead of 404 `not_found` as the same read without `min_seq` answers:
/// `rows` in server-min/src/http/projections.rs waits for `min_seq` before
/// `Projections::read` looks the projection up.
#[test]
fn min_seq_on_a_projection_that_does_not_exist_is_not_found() {
    let scratch = Scratch::new("lagging");
    let s = Scoped::start(&scratch);
    let reader = s.w.token("rita", DOCS_GROUP, "read", 3600);
    check(&s.get(&reader, "nope", ""), MISSING, "without min_seq");
    check(
        &s.get(&reader, "nope", "min_seq=1000&wait=0"),
        MISSING,
        "with a min_seq ahead",
    );
}
