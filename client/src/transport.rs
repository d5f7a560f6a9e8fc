//! The witness's HTTP API as seen from a device (DESIGN §5): group info, commit, pull.
//!
//! Blocking calls with `ureq` (rustls): the extension runs inside someone else's
//! process, and a plain blocking client on the calling (or the worker's) thread needs
//! no async runtime and no thread of its own there.

use std::time::Duration;

use crate::cert::{hex, parse_hash, Certificate, Hash};
use crate::error::{Rejection, TransportError};
use crate::problem::Code;
use crate::snapshot::Manifest;

/// What the witness says about a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The durable head: seq and hash.
    pub head: (u64, Hash),
    /// State digest at the head.
    pub state: Hash,
    /// The group's schema hash.
    pub schema_hash: Hash,
    /// The witness's public key.
    pub witness_key: [u8; 32],
    /// The DDL the group was created with.
    pub ddl: String,
}

/// A local commit to submit.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The changeset.
    pub changeset: &'a [u8],
    /// The head it was made on.
    pub base: (u64, Hash),
    /// Idempotency key (the same on every retry).
    pub idempotency_key: &'a str,
    /// Schema hash of the tracked tables.
    pub schema_hash: Hash,
    /// This device's id.
    pub client: Option<&'a str>,
    /// Application metadata (JSON).
    pub meta: Option<&'a str>,
    /// Accept only on the current head (`fast-forward`), instead of the witness's
    /// default `rebase-if-clean`.
    pub fast_forward: bool,
}

/// A certified commit as pulled.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// Its certificate.
    pub cert: Certificate,
    /// Its payload.
    pub changeset: Vec<u8>,
}

/// One page of a pull.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The group's head when the page was read.
    pub head: (u64, Hash),
    /// Commits after the requested seq, in order (possibly fewer than exist).
    pub commits: Vec<Pulled>,
}

/// An object download under way: the body from `start` on.
pub struct Download {
    /// The offset the body starts at (0 when the witness sent the whole object).
    pub start: u64,
    /// The body.
    pub body: Box<dyn std::io::Read + Send>,
}

/// How long a device waits for the witness: no answer, however slow or absent, keeps
/// the host waiting for ever (DESIGN §7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// The whole of an ordinary request, its answer read (`PDB_REQUEST_TIMEOUT_MS`).
    /// A long-poll gets its wait on top.
    pub request: Duration,
    /// The longest silence while an object downloads (`PDB_IDLE_TIMEOUT_MS`): a slow
    /// download that keeps moving is never cut, however long it takes.
    pub idle: Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            request: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        }
    }
}

impl Deadlines {
    /// The defaults (30 s each), or what `PDB_REQUEST_TIMEOUT_MS` and
    /// `PDB_IDLE_TIMEOUT_MS` say (milliseconds, more than 0).
    pub fn from_env() -> Result<Deadlines, TransportError> {
        Deadlines::from_vars(|name| std::env::var_os(name))
    }

    /// [`Deadlines::from_env`] with the variables read by `var`.
    fn from_vars(
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Deadlines, TransportError> {
        let read = |name: &str, default: Duration| match var(name) {
            None => Ok(default),
            Some(v) => match v.to_str().and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                // A typo must not leave the host with no deadline, or a silent default.
                _ => Err(TransportError::Protocol(format!(
                    "{name} \"{}\" is not a number of milliseconds above 0",
                    v.to_string_lossy()
                ))),
            },
        };
        let d = Deadlines::default();
        Ok(Deadlines {
            request: read("PDB_REQUEST_TIMEOUT_MS", d.request)?,
            idle: read("PDB_IDLE_TIMEOUT_MS", d.idle)?,
        })
    }

    /// Setting up a connection: never longer than a whole request may take.
    fn connect(&self) -> Duration {
        self.request.min(Duration::from_secs(10))
    }

    /// Why a request timed out, in words naming the limit and how to change it.
    fn timed_out(&self, t: ureq::Timeout, total: Duration) -> String {
        match t {
            ureq::Timeout::Resolve | ureq::Timeout::Connect => format!(
                "timed out: no connection within {:?} (PDB_REQUEST_TIMEOUT_MS bounds it)",
                self.connect()
            ),
            ureq::Timeout::PerRead => format!(
                "timed out: nothing received for {:?} (PDB_IDLE_TIMEOUT_MS)",
                self.idle
            ),
            _ => format!("timed out: no complete answer within {total:?} (PDB_REQUEST_TIMEOUT_MS)"),
        }
    }

    /// A failed request as a transport error; `total` is the deadline it had.
    fn no_answer(&self, e: ureq::Error, total: Duration) -> TransportError {
        TransportError::Unreachable(match e {
            ureq::Error::Timeout(t) => self.timed_out(t, total),
            e => e.to_string(),
        })
    }
}

/// A witness and a group, as one device talks to them.
pub struct Remote {
    agent: ureq::Agent,
    deadlines: Deadlines,
    base: String,
    group: String,
    token: String,
}

/// An object's body, its read errors in words: a stalled read says it timed out.
struct Body {
    reader: ureq::BodyReader<'static>,
    deadlines: Deadlines,
}

impl std::io::Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf).map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            {
                Some(ureq::Error::Timeout(t)) => std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    self.deadlines.timed_out(*t, self.deadlines.request),
                ),
                _ => e,
            }
        })
    }
}

/// Largest answer read (a pull page is about 4 MiB of changesets, base64 in JSON).
const MAX_ANSWER: u64 = 64 << 20;

impl Remote {
    /// A client for `group` on the witness at `url` (http or https), sending `token`.
    ///
    /// https trusts Mozilla's root certificates, or only the PEM certificates in the
    /// file named by `PDB_CA_FILE` when that is set (a witness behind a private CA).
    /// Every request has a deadline ([`Deadlines::from_env`]).
    pub fn new(url: &str, group: &str, token: &str) -> Result<Remote, TransportError> {
        let deadlines = Deadlines::from_env()?;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(deadlines.connect()))
            .timeout_global(Some(deadlines.request));
        if let Some(file) = std::env::var_os("PDB_CA_FILE") {
            let bad = |why: String| {
                TransportError::Protocol(format!("PDB_CA_FILE {}: {why}", file.to_string_lossy()))
            };
            let pem = std::fs::read(&file).map_err(|e| bad(e.to_string()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Remote {
            agent: config.build().into(),
            deadlines,
            base: url.trim_end_matches('/').to_string(),
            group: group.to_string(),
            token: token.to_string(),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v1/groups/{}{tail}", self.base, self.group)
    }

    /// Reads an answer: `Ok(Ok(json))` on 2xx, `Ok(Err(rejection))` on a problem.
    /// `total` is the request's deadline, for the message when it passes.
    fn answer(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        total: Duration,
    ) -> Result<(u16, Result<serde_json::Value, Rejection>), TransportError> {
        let mut resp = result.map_err(|e| self.deadlines.no_answer(e, total))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| self.deadlines.no_answer(e, total))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
            TransportError::Protocol(format!(
                "status {status}, body is not JSON: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        if (200..300).contains(&status) {
            return Ok((status, Ok(json)));
        }
        let text = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let code = text("code").ok_or_else(|| {
            TransportError::Protocol(format!("status {status} without a problem code"))
        })?;
        Ok((
            status,
            Err(Rejection {
                status,
                code,
                detail: text("detail").unwrap_or_default(),
                body: json,
                retry_after,
            }),
        ))
    }

    fn get(
        &self,
        url: &str,
    ) -> Result<(u16, Result<serde_json::Value, Rejection>), TransportError> {
        self.answer(
            self.agent
                .get(url)
                .header("Authorization", &format!("Bearer {}", self.token))
                .call(),
            self.deadlines.request,
        )
    }

    /// `GET /v1/groups/{g}`.
    pub fn group_info(&self) -> Result<Result<GroupInfo, Rejection>, TransportError> {
        let (_, answer) = self.get(&self.url(""))?;
        match answer {
            Ok(json) => parse_info(&json).map(Ok),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `POST /v1/groups/{g}/commits`: the certificate (and whether it is the original
    /// one of an earlier submission with the same key), or the rejection.
    pub fn push(
        &self,
        s: &Submission<'_>,
    ) -> Result<Result<(Certificate, bool), Rejection>, TransportError> {
        let mut req = self
            .agent
            .post(&self.url("/commits"))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/vnd.sqlite.changeset")
            .header("Pdb-Base", &format!("{}:{}", s.base.0, hex(&s.base.1)))
            .header("Idempotency-Key", s.idempotency_key)
            .header("Pdb-Schema", &hex(&s.schema_hash));
        if let Some(c) = s.client {
            req = req.header("Pdb-Client", c);
        }
        if let Some(m) = s.meta {
            req = req.header("Pdb-Meta", m);
        }
        if s.fast_forward {
            req = req.header("Pdb-Policy", "fast-forward");
        }
        let (_, answer) = self.answer(req.send(s.changeset), self.deadlines.request)?;
        match answer {
            Ok(json) => {
                let cert = Certificate::from_json(&json)
                    .map_err(|e| TransportError::Protocol(format!("certificate: {e}")))?;
                let duplicate = json.get("duplicate").and_then(|d| d.as_bool()) == Some(true);
                Ok(Ok((cert, duplicate)))
            }
            Err(r) => Ok(Err(r)),
        }
    }

    /// `GET /v1/groups/{g}/certificates?key=..`: the certificate of the commit the
    /// witness certified under an idempotency key (`None`: no such commit). Not
    /// verified here.
    pub fn certificate(
        &self,
        key: &str,
    ) -> Result<Result<Option<Certificate>, Rejection>, TransportError> {
        let (status, answer) = self.answer(
            self.agent
                .get(&self.url("/certificates"))
                .query("key", key)
                .header("Authorization", &format!("Bearer {}", self.token))
                .call(),
            self.deadlines.request,
        )?;
        match answer {
            Ok(json) => Certificate::from_json(&json)
                .map(|c| Ok(Some(c)))
                .map_err(|e| TransportError::Protocol(format!("certificate: {e}"))),
            Err(r) if status == 404 && r.code() == Some(Code::NotFound) => Ok(Ok(None)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `GET /v1/groups/{g}/commits?after=..&limit=..&wait=..`. Certificates are not
    /// verified here: that is [`crate::history::verify_chain`]'s job, before applying.
    pub fn pull(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Result<Page, Rejection>, TransportError> {
        // Whole seconds, rounded up: a wait under a second must not become `wait=0`,
        // which would turn a long-poll loop into a busy one.
        let secs = wait.as_millis().div_ceil(1000) as u64;
        let url = format!(
            "{}?after={after}&limit={limit}&wait={secs}",
            self.url("/commits")
        );
        // The witness may hold a long-poll for the whole wait before it answers.
        let total = self.deadlines.request + Duration::from_secs(secs);
        let (_, answer) = self.answer(
            self.agent
                .get(&url)
                .header("Authorization", &format!("Bearer {}", self.token))
                .config()
                .timeout_global(Some(total))
                .build()
                .call(),
            total,
        )?;
        match answer {
            Ok(json) => parse_page(&json).map(Ok),
            Err(r) => Ok(Err(r)),
        }
    }
}

impl Remote {
    fn manifest(&self, url: &str) -> Result<Result<Option<Manifest>, Rejection>, TransportError> {
        let (status, answer) = self.get(url)?;
        match answer {
            Ok(json) => Manifest::from_json(&json)
                .map(|m| Ok(Some(m)))
                .map_err(|e| TransportError::Protocol(e.to_string())),
            Err(r) if status == 404 && r.code() == Some(Code::NotFound) => Ok(Ok(None)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// `GET /v1/groups/{g}/snapshots/latest`: the newest manifest (`None`: no snapshot
    /// yet). Not verified here.
    pub fn latest_snapshot(&self) -> Result<Result<Option<Manifest>, Rejection>, TransportError> {
        self.manifest(&self.url("/snapshots/latest"))
    }

    /// `GET /v1/groups/{g}/snapshots?at=<seq>`: a manifest of the group at `seq`.
    pub fn snapshot_at(
        &self,
        seq: u64,
    ) -> Result<Result<Option<Manifest>, Rejection>, TransportError> {
        self.manifest(&format!("{}?at={seq}", self.url("/snapshots")))
    }

    /// `GET <object>` from byte `from` on (a `Range` request when `from` > 0). The
    /// witness may answer with the whole object instead; [`Download::start`] says.
    pub fn download(
        &self,
        object: &str,
        from: u64,
    ) -> Result<Result<Download, Rejection>, TransportError> {
        let url = format!("{}{object}", self.base);
        let mut req = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token));
        if from > 0 {
            req = req.header("Range", &format!("bytes={from}-"));
        }
        // An object may be large and the link slow: no overall deadline (an
        // interrupted download resumes where it stopped), but the answer must start
        // within a request's deadline, and the body keep moving.
        let resp = req
            .config()
            .timeout_global(None)
            .timeout_recv_response(Some(self.deadlines.request))
            .timeout_recv_body(None)
            .timeout_per_read(Some(self.deadlines.idle))
            .build()
            .call()
            .map_err(|e| self.deadlines.no_answer(e, self.deadlines.request))?;
        let status = resp.status().as_u16();
        let start = match status {
            200 => 0,
            206 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let first = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|n| n.parse::<u64>().ok());
                if first != Some(from) {
                    return Err(TransportError::Protocol(format!(
                        "asked for bytes {from}- of {object}, got Content-Range \"{range}\""
                    )));
                }
                from
            }
            _ => {
                return match self.answer(Ok(resp), self.deadlines.request)?.1 {
                    Err(r) => Ok(Err(r)),
                    Ok(_) => Err(TransportError::Protocol(format!(
                        "status {status} for object {object}"
                    ))),
                }
            }
        };
        Ok(Ok(Download {
            start,
            body: Box::new(Body {
                reader: resp.into_body().into_reader(),
                deadlines: self.deadlines,
            }),
        }))
    }
}

/// The calls sync makes on a group's witness. [`Remote`] makes them over HTTP; a test
/// can answer them in-process from the witness library itself, so that rebase, sync and
/// bootstrap are exercised without starting a process. An implementation answers as the
/// HTTP API does: the same [`Rejection`]s (status, code, detail, problem document), and
/// `None` where HTTP answers `404 not_found` for a missing certificate or snapshot.
pub trait Witness {
    /// `GET /v1/groups/{g}`.
    fn group_info(&self) -> Result<Result<GroupInfo, Rejection>, TransportError>;
    /// `POST /v1/groups/{g}/commits`: the certificate and whether it is a duplicate.
    fn push(
        &self,
        s: &Submission<'_>,
    ) -> Result<Result<(Certificate, bool), Rejection>, TransportError>;
    /// `GET /v1/groups/{g}/certificates?key=..` (`None`: nothing under that key).
    fn certificate(
        &self,
        key: &str,
    ) -> Result<Result<Option<Certificate>, Rejection>, TransportError>;
    /// `GET /v1/groups/{g}/commits?after=..&limit=..&wait=..` (a long-poll if `wait` > 0).
    fn pull(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Result<Page, Rejection>, TransportError>;
    /// `GET /v1/groups/{g}/snapshots/latest` (`None`: no snapshot yet).
    fn latest_snapshot(&self) -> Result<Result<Option<Manifest>, Rejection>, TransportError>;
    /// `GET /v1/groups/{g}/snapshots?at=<seq>`.
    fn snapshot_at(&self, seq: u64) -> Result<Result<Option<Manifest>, Rejection>, TransportError>;
    /// `GET <object>` from byte `from` on.
    fn download(
        &self,
        object: &str,
        from: u64,
    ) -> Result<Result<Download, Rejection>, TransportError>;
}

impl Witness for Remote {
    fn group_info(&self) -> Result<Result<GroupInfo, Rejection>, TransportError> {
        Remote::group_info(self)
    }
    fn push(
        &self,
        s: &Submission<'_>,
    ) -> Result<Result<(Certificate, bool), Rejection>, TransportError> {
        Remote::push(self, s)
    }
    fn certificate(
        &self,
        key: &str,
    ) -> Result<Result<Option<Certificate>, Rejection>, TransportError> {
        Remote::certificate(self, key)
    }
    fn pull(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Result<Page, Rejection>, TransportError> {
        Remote::pull(self, after, limit, wait)
    }
    fn latest_snapshot(&self) -> Result<Result<Option<Manifest>, Rejection>, TransportError> {
        Remote::latest_snapshot(self)
    }
    fn snapshot_at(&self, seq: u64) -> Result<Result<Option<Manifest>, Rejection>, TransportError> {
        Remote::snapshot_at(self, seq)
    }
    fn download(
        &self,
        object: &str,
        from: u64,
    ) -> Result<Result<Download, Rejection>, TransportError> {
        Remote::download(self, object, from)
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (a date in the past is no wait).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn parse_info(j: &serde_json::Value) -> Result<GroupInfo, TransportError> {
    let bad = |k: &str| TransportError::Protocol(format!("group info: field \"{k}\""));
    let h = |k: &str| {
        j.get(k)
            .and_then(|v| v.as_str())
            .and_then(parse_hash)
            .ok_or_else(|| bad(k))
    };
    Ok(GroupInfo {
        head: (
            j.get("seq")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| bad("seq"))?,
            h("head")?,
        ),
        state: h("state")?,
        schema_hash: h("schema_hash")?,
        witness_key: h("witness_key")?,
        ddl: j
            .get("ddl")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("ddl"))?
            .to_string(),
    })
}

fn parse_page(j: &serde_json::Value) -> Result<Page, TransportError> {
    use base64::Engine;
    let bad = |what: &str| TransportError::Protocol(format!("pull page: {what}"));
    let head = j.get("head").ok_or_else(|| bad("no head"))?;
    let seq = head
        .get("seq")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("head seq"))?;
    let hash = head
        .get("head")
        .and_then(|v| v.as_str())
        .and_then(parse_hash)
        .ok_or_else(|| bad("head hash"))?;
    let mut commits = Vec::new();
    for c in j
        .get("commits")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("no commits"))?
    {
        let cert = Certificate::from_json(c).map_err(|e| bad(&e.to_string()))?;
        let changeset = c
            .get("changeset")
            .and_then(|v| v.as_str())
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .ok_or_else(|| bad("changeset is not base64"))?;
        commits.push(Pulled { cert, changeset });
    }
    Ok(Page {
        head: (seq, hash),
        commits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(60);
        let d = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        );
        let past = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(past, Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    fn from(vars: &[(&str, &str)]) -> Result<Deadlines, TransportError> {
        Deadlines::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).into())
        })
    }

    #[test]
    fn deadlines_default_to_30_s_and_read_milliseconds() {
        assert_eq!(from(&[]).unwrap(), Deadlines::default());
        assert_eq!(Deadlines::default().request, Duration::from_secs(30));
        assert_eq!(Deadlines::default().idle, Duration::from_secs(30));
        let d = from(&[
            ("PDB_REQUEST_TIMEOUT_MS", "1500"),
            ("PDB_IDLE_TIMEOUT_MS", " 250 "),
        ])
        .unwrap();
        assert_eq!(d.request, Duration::from_millis(1500));
        assert_eq!(d.idle, Duration::from_millis(250));
        assert_eq!(d.connect(), Duration::from_millis(1500));
        assert_eq!(Deadlines::default().connect(), Duration::from_secs(10));
    }

    #[test]
    fn a_deadline_that_is_not_a_positive_number_is_refused() {
        for bad in ["0", "-5", "30s", ""] {
            let err = from(&[("PDB_IDLE_TIMEOUT_MS", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("PDB_IDLE_TIMEOUT_MS"), "{bad}: {err}");
            assert!(err.contains("milliseconds above 0"), "{bad}: {err}");
        }
    }
}
