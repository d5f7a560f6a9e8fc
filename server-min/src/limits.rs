//! What one client can hold of the witness: a connection slot out of
//! `max_connections`, a connection without a request in flight for `idle_timeout`, a
//! request for `request_timeout` (long-polls for their `wait` on top). The accept loop
//! replaces `axum::serve`, which offers none of these settings.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::problem::{Code, Problem};

/// The bounds, as the command line sets them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a connection may go without a request in flight: from accept, or from
    /// the end of its last answer, to the end of the next request's header. `None`: no
    /// limit.
    pub idle_timeout: Option<Duration>,
    /// How long a request may take until its answer starts (reading its body
    /// included); a long-poll gets its `wait` on top. `None`: no limit.
    pub request_timeout: Option<Duration>,
}

/// Serves `app` on `listener` within `limits` until `stop` resolves, then lets the
/// requests in flight finish, as `axum::serve`'s graceful shutdown does.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) {
    let app = match limits.request_timeout {
        Some(timeout) => app.layer(middleware::from_fn_with_state((timeout, metrics), deadline)),
        None => app,
    };
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper's header read timer starts when it waits for a request head: right after
    // accept and after each answer on a kept-alive connection, so the one setting
    // closes silent sockets, half-sent headers and idle keep-alives alike.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        // A slot before a socket: at the cap the witness does not accept, so the
        // sockets it holds stay bounded and the kernel's backlog queues the rest.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A failed accept: the peer gave up (go on), or the process is out of file descriptors
/// or memory, which retrying at once would only spin on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answers `503 unavailable` for a request still unanswered after the timeout (plus a
/// long-poll's wait). Dropping the handler is safe: a commit already handed to its
/// sequencer is certified or not as if the client had gone, and a retry with the same
/// key learns which.
async fn deadline(
    State((timeout, metrics)): State<(Duration, Arc<Metrics>)>,
    req: Request,
    next: Next,
) -> Response {
    let allowed = timeout + crate::http::long_poll_wait(&req);
    match tokio::time::timeout(allowed, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics.rejected(Code::Unavailable);
            Problem::new(
                Code::Unavailable,
                format!(
                    "the request was not done within the witness's {} s request timeout",
                    timeout.as_secs()
                ),
            )
            .with("timeout_s", timeout.as_secs())
            .into_response()
        }
    }
}
