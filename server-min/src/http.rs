//! The HTTP API of DESIGN §5 over [`Witness`]: routes, authorisation, request parsing
//! and JSON, nothing else; `objects` serves object bodies (byte ranges, streaming),
//! `watch` the commit stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use base64::Engine;
use pdb_core::cert::hex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Auth, Claims, Role};
use crate::group::{Accepted, CommitRequest, Group};
use crate::log::{Log, StoredCommit};
use crate::problem::{Code, Problem};
use crate::witness::Witness;

mod objects;
mod projections;
mod watch;

/// Everything a request handler needs.
pub struct App {
    /// The witness core.
    pub witness: Arc<Witness>,
    /// Token checking.
    pub auth: Auth,
    /// Largest accepted request body, bytes.
    pub max_body: usize,
}

/// Most commits one pull returns.
const MAX_LIMIT: usize = 1000;
/// Changeset bytes one pull returns at most (but always at least one commit).
const PAGE_BYTES: usize = 4 << 20;
/// Longest long-poll.
const MAX_WAIT: u64 = 60;
/// The pull route, whose `wait` makes it a long-poll.
const COMMITS: &str = "/v1/groups/{g}/commits";

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = (status, self.to_json().to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.code == Code::Unauthorized {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.code == Code::ProjectionBuilding {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/groups/{g}", put(put_group).get(get_group))
        .route(COMMITS, get(get_commits).post(post_commit))
        .route("/v1/groups/{g}/certificates", get(get_certificate))
        .route("/v1/groups/{g}/watch", get(watch::watch))
        .route(
            "/v1/groups/{g}/snapshots",
            get(get_snapshot_at).post(post_snapshot),
        )
        .route("/v1/groups/{g}/snapshots/latest", get(get_latest_snapshot))
        .route("/v1/objects/{hash}", get(get_object))
        .merge(projections::routes())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { Problem::new(Code::NotFound, "no such endpoint") })
        // Bodies are read by the handlers, after authorisation, with `max_body`.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// Counts rejections on their way out.
fn respond(app: &App, r: Result<Response, Problem>) -> Response {
    match r {
        Ok(resp) => resp,
        Err(p) => {
            app.witness.metrics().rejected(p.code);
            tracing::debug!(code = p.code.as_str(), detail = %p.detail, "rejected");
            p.into_response()
        }
    }
}

fn authorize(app: &App, headers: &HeaderMap, group: &str, need: Role) -> Result<Claims, Problem> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    app.auth.check(h, group, need)
}

/// When a token stops being valid: long-polls and watch streams end there.
fn expiry(claims: &Claims) -> tokio::time::Instant {
    let left = claims.exp.saturating_sub(crate::now_ms() as u64 / 1000);
    tokio::time::Instant::now() + Duration::from_secs(left.min(365 * 24 * 3600))
}

fn find(app: &App, name: &str) -> Result<Arc<Group>, Problem> {
    app.witness
        .group(name)
        .ok_or_else(|| Problem::new(Code::NotFound, format!("no group \"{name}\"")))
}

async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            Code::TooLarge,
            format!("the body exceeds {} bytes", app.max_body),
        )
        .with("limit", app.max_body)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, app.max_body).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            source = s.source();
        }
        Problem::new(Code::BadRequest, format!("cannot read the body: {e}"))
    })
}

fn group_json(app: &App, g: &Group) -> Value {
    let head = g.head();
    json!({
        "group": g.info.name,
        "seq": head.seq,
        "head": hex(&head.head),
        "state": hex(&head.state),
        "schema_hash": hex(&g.info.schema_hash),
        "witness_key": hex(&app.witness.public_key()),
        "ddl": g.info.ddl,
        "tables": g.info.tables,
    })
}

#[derive(Deserialize)]
struct CreateGroup {
    ddl: String,
}

async fn put_group(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Admin)?;
        let body = read_body(&app, &headers, body).await?;
        let req: CreateGroup = serde_json::from_slice(&body).map_err(|e| {
            Problem::new(
                Code::BadRequest,
                format!("body must be {{\"ddl\": \"CREATE TABLE ...\"}}: {e}"),
            )
        })?;
        let w = app.witness.clone();
        let (group, created) = tokio::task::spawn_blocking(move || w.create_group(&g, &req.ddl))
            .await
            .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))??;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(group_json(&app, &group))).into_response())
    }
    .await;
    respond(&app, r)
}

async fn get_group(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = (|| {
        authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        Ok(Json(group_json(&app, &group)).into_response())
    })();
    respond(&app, r)
}

/// A certificate with the commit's payload and submitter, as pulls return it.
pub fn commit_json(c: &StoredCommit) -> Value {
    let mut m = commit_fields(c);
    m.insert(
        "changeset".into(),
        base64::engine::general_purpose::STANDARD
            .encode(&c.changeset)
            .into(),
    );
    Value::Object(m)
}

/// A certificate with the commit's submitter: a commit as served, but for its payload.
fn commit_fields(c: &StoredCommit) -> serde_json::Map<String, Value> {
    let mut m = c.cert.to_json();
    m.insert("client".into(), c.client.clone().into());
    m.insert(
        "meta".into(),
        c.meta
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null),
    );
    m
}

async fn post_commit(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let r = async {
        authorize(&app, &headers, &g, Role::Write)?;
        let group = find(&app, &g)?;
        let h = crate::request::commit_headers(|name| headers.get(name).map(|v| v.as_bytes()))?;
        let changeset = read_body(&app, &headers, body).await?;
        let outcome = group
            .commit(CommitRequest {
                headers: h,
                changeset,
            })
            .await?;
        tracing::debug!(group = %g, seq = outcome_seq(&outcome), "certified");
        Ok(match outcome {
            Accepted::New(c) => {
                (StatusCode::CREATED, Json(Value::Object(c.cert.to_json()))).into_response()
            }
            Accepted::Duplicate(c) => {
                app.witness
                    .metrics()
                    .duplicates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut m = c.cert.to_json();
                m.insert("duplicate".into(), true.into());
                (StatusCode::OK, Json(Value::Object(m))).into_response()
            }
        })
    }
    .await;
    app.witness.metrics().observe_commit(started.elapsed());
    respond(&app, r)
}

fn outcome_seq(a: &Accepted) -> u64 {
    match a {
        Accepted::New(c) | Accepted::Duplicate(c) => c.cert.seq,
    }
}

#[derive(Deserialize)]
struct PullQuery {
    after: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

fn number(name: &str, v: Option<&str>, default: u64) -> Result<u64, Problem> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => s.parse().map_err(|_| {
            Problem::new(
                Code::BadRequest,
                format!("query parameter {name} must be a non-negative integer"),
            )
        }),
    }
}

/// How long `req` may wait for commits before its answer starts: a pull's `wait`, capped
/// as `get_commits` caps it; zero for any other request (and for a `wait` that
/// `get_commits` refuses at once).
pub(crate) fn long_poll_wait(req: &Request) -> Duration {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    if req.method() == Method::GET && route == Some(projections::ROWS) {
        return projections::read_wait(req.uri());
    }
    let pull = req.method() == Method::GET && route == Some(COMMITS);
    if !pull {
        return Duration::ZERO;
    }
    let wait = Query::<PullQuery>::try_from_uri(req.uri())
        .ok()
        .and_then(|Query(q)| number("wait", q.wait.as_deref(), 0).ok())
        .unwrap_or(0);
    Duration::from_secs(wait.min(MAX_WAIT))
}

async fn read_commits(
    app: &Arc<App>,
    group: &Arc<Group>,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredCommit>, Problem> {
    let (w, g) = (app.witness.clone(), group.clone());
    tokio::task::spawn_blocking(move || w.commits_after(&g, after, limit, PAGE_BYTES))
        .await
        .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))?
}

async fn get_commits(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
    Query(q): Query<PullQuery>,
) -> Response {
    let r = async {
        let claims = authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        let after = number("after", q.after.as_deref(), 0)?;
        let limit = number("limit", q.limit.as_deref(), 100)?.clamp(1, MAX_LIMIT as u64) as usize;
        let wait = number("wait", q.wait.as_deref(), 0)?.min(MAX_WAIT);
        if wait > 0 && group.head().seq <= after {
            let mut rx = group.info.head.subscribe();
            let until =
                expiry(&claims).min(tokio::time::Instant::now() + Duration::from_secs(wait));
            let _ = tokio::time::timeout_at(until, rx.wait_for(|h| h.seq > after)).await;
        }
        // The head first: every commit up to a published head is already in the
        // history, so the page below it is complete. Read the other way round, a commit
        // landing in between made a pull at the head look compacted (410) and sent the
        // device into a needless bootstrap. Commits past the head are left to the next
        // page, so that a page never runs ahead of the head it names.
        let head = group.head();
        let mut commits = read_commits(&app, &group, after, limit).await?;
        commits.retain(|c| c.cert.seq <= head.seq);
        if after < head.seq && commits.first().map(|c| c.cert.seq) != Some(after + 1) {
            return Err(compacted(&app, &group, after).await);
        }
        Ok(Json(json!({
            "group": group.info.name,
            "head": {"seq": head.seq, "head": hex(&head.head), "state": hex(&head.state)},
            "commits": commits.iter().map(commit_json).collect::<Vec<_>>(),
        }))
        .into_response())
    }
    .await;
    respond(&app, r)
}

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

/// `GET /v1/groups/{g}/certificates?key=<idempotency key>`: the certificate of the
/// commit certified under that key, compacted or not. A device that lost the answer to
/// a push asks here before it installs a snapshot over the commit.
async fn get_certificate(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
    Query(q): Query<KeyQuery>,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        let key = q
            .key
            .ok_or_else(|| Problem::new(Code::BadRequest, "the query must name a key"))?;
        let w = app.witness.clone();
        let name = key.clone();
        let found = blocking(move || {
            w.store()
                .by_key(group.info.id, &group.info.name, w.public_key(), &name)
                .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))
        })
        .await?;
        let c = found.ok_or_else(|| {
            Problem::new(
                Code::NotFound,
                format!("no commit of group \"{g}\" was certified under key \"{key}\""),
            )
        })?;
        Ok(Json(Value::Object(c.cert.to_json())).into_response())
    }
    .await;
    respond(&app, r)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.witness.metrics().render(
        app.witness.group_count(),
        app.witness
            .store()
            .syncs
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The `410 compacted` answer for a device whose head is older than the history kept:
/// it names the oldest head still served and the newest snapshot to start from, with
/// its manifest so that a builder outside the witness bootstraps without asking again.
async fn compacted(app: &Arc<App>, group: &Arc<Group>, after: u64) -> Problem {
    let (w, g) = (app.witness.clone(), group.clone());
    let oldest = group.info.oldest_head();
    let latest = tokio::task::spawn_blocking(move || w.snapshots().latest(&g).ok().flatten())
        .await
        .unwrap_or(None);
    Problem::new(
        Code::Compacted,
        format!(
            "commits after seq {after} were compacted (the oldest head kept is seq {oldest}): \
             bootstrap from a snapshot"
        ),
    )
    .with("oldest_seq", oldest)
    .with("snapshot_seq", latest.as_ref().map(|m| m.seq))
    .with("snapshot", latest.map(|m| Value::Object(m.to_json())))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))?
}

fn manifest_response(status: StatusCode, m: &pdb_core::snapshot::Manifest) -> Response {
    (status, Json(Value::Object(m.to_json()))).into_response()
}

async fn get_latest_snapshot(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        let w = app.witness.clone();
        let m = blocking(move || w.snapshots().latest(&group)).await?;
        let m = m.ok_or_else(|| {
            Problem::new(Code::NotFound, format!("group \"{g}\" has no snapshot yet"))
        })?;
        Ok(manifest_response(StatusCode::OK, &m))
    }
    .await;
    respond(&app, r)
}

#[derive(Deserialize)]
struct AtQuery {
    at: Option<String>,
}

/// `?at=<seq>`: the group's state at any seq the history still holds.
async fn get_snapshot_at(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
    Query(q): Query<AtQuery>,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        let Some(at) = q.at.as_deref().filter(|a| !a.is_empty()) else {
            return Err(Problem::new(
                Code::BadRequest,
                "query parameter at=<seq> is required (or GET .../snapshots/latest)",
            ));
        };
        let at = number("at", Some(at), 0)?;
        let w = app.witness.clone();
        let m = blocking(move || w.snapshots().at(&group, at)).await?;
        Ok(manifest_response(StatusCode::OK, &m))
    }
    .await;
    respond(&app, r)
}

/// An admin's request for a snapshot at the current head.
async fn post_snapshot(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Admin)?;
        let group = find(&app, &g)?;
        let w = app.witness.clone();
        let m = blocking(move || w.snapshots().make(&group, crate::snapshot::Kind::Admin)).await?;
        Ok(manifest_response(StatusCode::CREATED, &m))
    }
    .await;
    respond(&app, r)
}

/// A snapshot file, by its BLAKE3, to anyone who may read a group holding it; with
/// single byte ranges so an interrupted download resumes.
async fn get_object(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let hash = pdb_core::cert::parse_hash(&name)
            .ok_or_else(|| Problem::new(Code::NotFound, format!("no object {name}")))?;
        let claims = app.auth.authenticate(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )?;
        let w = app.witness.clone();
        let path = blocking(move || {
            w.snapshots().object_readable(&hash, |g| {
                if claims.role(g).is_some_and(|r| r >= Role::Read) {
                    Ok(())
                } else {
                    Err(Problem::new(
                        Code::Forbidden,
                        format!(
                            "the token grants no read role on a group holding object {}",
                            hex(&hash)
                        ),
                    ))
                }
            })?;
            Ok(w.snapshots().object_path(&hash))
        })
        .await?;
        objects::serve(&path, &name, &headers).await
    }
    .await;
    respond(&app, r)
}
