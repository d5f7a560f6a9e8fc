//! The projection routes: declaring (admin), status and list (read), and reading rows
//! (read, or a token granted only that projection, whose scope then applies).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{authorize, blocking, find, number, read_body, respond, App, MAX_WAIT};
use crate::auth::Role;
use crate::problem::{Code, Problem};
use crate::projection::read::{Params, Viewer};

/// The rows route, whose `min_seq` makes it wait.
pub(super) const ROWS: &str = "/v1/groups/{g}/projections/{name}";
/// How long a read waits for `min_seq` unless `wait` says otherwise.
const DEFAULT_WAIT: u64 = 10;

/// The projection routes.
pub(super) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/groups/{g}/projections", get(list))
        .route(ROWS, get(rows).put(define).delete(remove))
        .route("/v1/groups/{g}/projections/{name}/status", get(status))
}

async fn define(
    State(app): State<Arc<App>>,
    Path((g, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Admin)?;
        let group = find(&app, &g)?;
        let body = read_body(&app, &headers, body).await?;
        let w = app.witness.clone();
        let (status, created) =
            blocking(move || w.projections().define(&group, &name, &body)).await?;
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((code, Json(status.to_json())).into_response())
    }
    .await;
    respond(&app, r)
}

async fn remove(
    State(app): State<Arc<App>>,
    Path((g, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Admin)?;
        let group = find(&app, &g)?;
        let w = app.witness.clone();
        blocking(move || w.projections().remove(&group, &name)).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    respond(&app, r)
}

async fn list(State(app): State<Arc<App>>, Path(g): Path<String>, headers: HeaderMap) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        let w = app.witness.clone();
        let all = blocking(move || w.projections().list(&group)).await?;
        let items: Vec<Value> = all.iter().map(|s| s.to_json()).collect();
        Ok(Json(json!({ "group": g, "projections": items })).into_response())
    }
    .await;
    respond(&app, r)
}

async fn status(
    State(app): State<Arc<App>>,
    Path((g, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        let w = app.witness.clone();
        let s = blocking(move || w.projections().status(&group, &name)).await?;
        Ok(Json(s.to_json()).into_response())
    }
    .await;
    respond(&app, r)
}

/// Who is reading `name` of `g`: a member with the read role sees every row; a token
/// granted only this projection sees the rows its scope claim selects.
fn viewer(app: &App, headers: &HeaderMap, g: &str, name: &str) -> Result<(Viewer, bool), Problem> {
    let h = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = app.auth.authenticate(h)?;
    if claims.role(g).is_some_and(|r| r >= Role::Read) {
        return Ok((Viewer::default(), false));
    }
    if claims.projection_only(g, name) {
        return Ok((Viewer::default(), true));
    }
    // The same answer as every other route gives a token without a role here.
    app.auth
        .check(h, g, Role::Read)
        .map(|_| (Viewer::default(), false))
}

async fn rows(
    State(app): State<Arc<App>>,
    Path((g, name)): Path<(String, String)>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let r = async {
        let (mut viewer, scoped) = viewer(&app, &headers, &g, &name)?;
        let group = find(&app, &g)?;
        let params = Params::from_pairs(&pairs)?;
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let min_seq = get("min_seq")
            .map(|v| number("min_seq", Some(v), 0))
            .transpose()?;
        let wait = number("wait", get("wait"), DEFAULT_WAIT)?.min(MAX_WAIT);
        let w = app.witness.clone();
        if scoped {
            // Which claim scopes the rows is the serving version's business (`read`).
            let h = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let claims = app.auth.authenticate(h)?;
            let mut text = std::collections::BTreeMap::new();
            for k in claims.extra.keys().map(String::as_str).chain(["sub"]) {
                if let Some(v) = claims.claim(k) {
                    text.insert(k.to_string(), v);
                }
            }
            viewer.claims = Some(text);
        }
        // A projection that does not exist is 404 at once, not after a `min_seq` wait.
        {
            let (w, grp, n) = (w.clone(), group.clone(), name.clone());
            blocking(move || w.projections().status(&grp, &n)).await?;
        }
        if let Some(n) = min_seq {
            let mut reached = 0;
            if let Some(mut rx) = w.projections().watch_cursor(&group) {
                let until = tokio::time::Instant::now() + Duration::from_secs(wait);
                let _ = tokio::time::timeout_at(until, rx.wait_for(|c| c.seq >= n)).await;
                reached = rx.borrow().seq;
            }
            if reached < n {
                return Err(Problem::new(
                    Code::ProjectionLagging,
                    format!("projection \"{name}\" is at seq {reached}, not yet at min_seq {n}"),
                )
                .with("seq", reached));
            }
        }
        let text = blocking(move || w.projections().read(&group, &name, &params, &viewer)).await?;
        Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
    }
    .await;
    respond(&app, r)
}

/// How long a projection read at `uri` may wait for `min_seq`, as `rows` caps it.
pub(super) fn read_wait(uri: &axum::http::Uri) -> Duration {
    let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(uri) else {
        return Duration::ZERO;
    };
    if !pairs.iter().any(|(n, _)| n == "min_seq") {
        return Duration::ZERO;
    }
    let wait = pairs
        .iter()
        .find(|(n, _)| n == "wait")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_WAIT);
    Duration::from_secs(wait.min(MAX_WAIT))
}
