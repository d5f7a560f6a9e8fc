//! `GET /v1/groups/{g}/watch`: the commit stream as server-sent events, for devices and
//! for builders of derived data outside the witness. Each event's id is the cursor
//! `seq:head`, so a reconnect resumes where it stopped and a cursor from another
//! history (another witness, a restore) is refused before anything is sent.
//! `format=rows` sends each changeset decoded to rows, for builders that do not parse
//! changesets.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use pdb_core::cert::{genesis, hex, Hash};
use pdb_core::changeset::{self, value_json, Op};
use pdb_core::schema::TableInfo;
use pdb_core::value::decode_field;
use serde::Deserialize;

use super::{
    authorize, blocking, commit_fields, commit_json, compacted, expiry, find, number, read_commits,
    respond, App, MAX_LIMIT,
};
use crate::auth::Role;
use crate::group::{Group, Head};
use crate::log::{Log, StoredCommit};
use crate::problem::{Code, Problem};
use crate::replica::check_ddl;
use crate::request::parse_base;

/// How long an idle stream goes without a keep-alive comment; proxies cut silent ones.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The query of a watch request.
#[derive(Deserialize)]
pub(super) struct WatchQuery {
    after: Option<String>,
    format: Option<String>,
}

/// Where a stream starts: after `seq`, whose head the client holds if it says so.
struct Cursor {
    seq: u64,
    head: Option<Hash>,
}

/// Reads `<seq>` or `<seq>:<head hex>` from the parameter or header `name`.
fn cursor(name: &str, v: Option<&str>) -> Result<Cursor, Problem> {
    let bad = || {
        Problem::new(
            Code::BadRequest,
            format!("{name} must be <seq> or <seq>:<64 hex digits of the head at seq>"),
        )
    };
    match v.map(str::trim) {
        Some(s) if s.contains(':') => {
            let (seq, head) = parse_base(s).ok_or_else(bad)?;
            Ok(Cursor {
                seq,
                head: Some(head),
            })
        }
        v => Ok(Cursor {
            seq: number(name, v, 0).map_err(|_| bad())?,
            head: None,
        }),
    }
}

/// What each event's data holds.
enum Format {
    /// The certificate, submitter and base64 changeset, as a pull page's commits.
    Commits,
    /// The certificate and submitter with the changeset decoded against these tables.
    Rows(Vec<TableInfo>),
}

/// `?after=<cursor>&format=rows`, or `Last-Event-ID: <cursor>` on a reconnect: every
/// commit after the cursor, then each new one as it becomes durable, until the token
/// expires.
pub(super) async fn watch(
    State(app): State<Arc<App>>,
    Path(g): Path<String>,
    headers: HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Response {
    let r = async {
        let claims = authorize(&app, &headers, &g, Role::Read)?;
        let group = find(&app, &g)?;
        // A reconnecting EventSource resumes from the last id it saw; one that saw
        // none may send the header empty.
        let from = match headers.get("Last-Event-ID").filter(|v| !v.is_empty()) {
            // A value that is not text is as malformed as a cursor that does not parse.
            Some(id) => cursor("Last-Event-ID", Some(id.to_str().unwrap_or("?")))?,
            None => cursor("after", q.after.as_deref())?,
        };
        let format = match q.format.as_deref() {
            None | Some("") => Format::Commits,
            Some("rows") => {
                let ddl = group.info.ddl.clone();
                let name = g.clone();
                Format::Rows(
                    blocking(move || {
                        check_ddl(&ddl).map(|(t, _)| t).map_err(|e| {
                            Problem::new(Code::Unavailable, format!("group \"{name}\": {e}"))
                        })
                    })
                    .await?,
                )
            }
            Some(other) => {
                return Err(Problem::new(
                    Code::BadRequest,
                    format!("query parameter format must be rows or absent, not \"{other}\""),
                ))
            }
        };
        check(&app, &group, &from).await?;
        let follow = Follow {
            rx: group.info.head.subscribe(),
            app: app.clone(),
            group,
            after: from.seq,
            buf: VecDeque::new(),
            format,
            deadline: expiry(&claims),
            done: false,
        };
        let stream = futures_util::stream::unfold(follow, |mut f| async move {
            let ev = f.next().await?;
            Some((Ok::<_, Infallible>(ev), f))
        });
        Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
            .into_response())
    }
    .await;
    respond(&app, r)
}

/// Refuses a cursor the stream cannot continue: `410 compacted` when the commits after
/// it are gone, `409 cursor_mismatch` when its head is not this history's at its seq.
async fn check(app: &Arc<App>, group: &Arc<Group>, from: &Cursor) -> Result<(), Problem> {
    if from.seq < group.info.oldest_head() {
        return Err(compacted(app, group, from.seq).await);
    }
    let Some(want) = from.head else {
        return Ok(());
    };
    let now = group.head();
    let have = if from.seq == 0 {
        Some(genesis(&group.info.name))
    } else if from.seq == now.seq {
        Some(now.head)
    } else if from.seq > now.seq {
        None
    } else {
        let (w, id, seq) = (app.witness.clone(), group.info.id, from.seq);
        blocking(move || {
            w.store()
                .head_at(id, seq)
                .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))
        })
        .await?
    };
    if have == Some(want) {
        return Ok(());
    }
    // Compacted between the check above and the lookup: the lookup found nothing.
    if have.is_none() && from.seq < group.info.oldest_head() {
        return Err(compacted(app, group, from.seq).await);
    }
    Err(Problem::new(
        Code::CursorMismatch,
        format!(
            "the cursor {}:{} is not in this group's history (its head is seq {}): \
             another witness or a restored history; rebuild from a snapshot",
            from.seq,
            hex(&want),
            now.seq
        ),
    )
    .with("seq", now.seq)
    .with("head", hex(&now.head))
    .with("head_at_seq", have.map(|h| hex(&h))))
}

/// One stream's position: the commits read ahead and the last one sent.
struct Follow {
    app: Arc<App>,
    group: Arc<Group>,
    after: u64,
    rx: tokio::sync::watch::Receiver<Head>,
    buf: VecDeque<StoredCommit>,
    format: Format,
    deadline: tokio::time::Instant,
    done: bool,
}

impl Follow {
    /// The next event; `None` ends the stream (token expired, or an error was sent).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.done {
                return None;
            }
            if let Some(c) = self.buf.pop_front() {
                // A gap means the commits in between were compacted while this
                // stream was behind: sending on would hide them from the client.
                if c.cert.seq != self.after + 1 {
                    return Some(self.fail(compacted(&self.app, &self.group, self.after).await));
                }
                return Some(match event(&c, &self.format) {
                    Ok(ev) => {
                        self.after = c.cert.seq;
                        ev
                    }
                    Err(p) => self.fail(p),
                });
            }
            if self.group.head().seq > self.after {
                if self.after < self.group.info.oldest_head() {
                    return Some(self.fail(compacted(&self.app, &self.group, self.after).await));
                }
                match read_commits(&self.app, &self.group, self.after, MAX_LIMIT).await {
                    Ok(c) if !c.is_empty() => {
                        self.buf.extend(c);
                        continue;
                    }
                    // The head is published only after the history holds it, so
                    // this cannot last; do not spin meanwhile.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(p) => return Some(self.fail(p)),
                }
            }
            // The stream ends when the token expires; the client reconnects with a
            // fresh one (and Last-Event-ID).
            let after = self.after;
            let woke =
                tokio::time::timeout_at(self.deadline, self.rx.wait_for(|h| h.seq > after)).await;
            if !matches!(woke, Ok(Ok(_))) {
                return None;
            }
        }
    }

    /// The `error` event that ends the stream.
    fn fail(&mut self, p: Problem) -> Event {
        self.done = true;
        self.app.witness.metrics().rejected(p.code);
        Event::default()
            .event("error")
            .data(p.to_json().to_string())
    }
}

/// One commit as an event in `format`.
fn event(c: &StoredCommit, format: &Format) -> Result<Event, Problem> {
    let data = match format {
        Format::Commits => commit_json(c).to_string(),
        Format::Rows(tables) => {
            let changes = rows(tables, &c.changeset).map_err(|e| {
                Problem::new(
                    Code::Unavailable,
                    format!("commit {} cannot be decoded to rows: {e}", c.cert.seq),
                )
            })?;
            // Spliced as text rather than parsed into a `Value`: a re-parse would not
            // keep every REAL to the last bit.
            let mut s = serde_json::Value::Object(commit_fields(c)).to_string();
            s.pop();
            s.push_str(",\"changes\":");
            s.push_str(&changes);
            s.push('}');
            s
        }
    };
    Ok(Event::default()
        .event("commit")
        .id(format!("{}:{}", c.cert.seq, hex(&c.cert.head)))
        .data(data))
}

/// A changeset as a JSON array of `{"table", "op", "pk", "old", "new"}`, records as
/// objects by column name holding only the columns the change defines.
fn rows(tables: &[TableInfo], cs: &[u8]) -> Result<String, String> {
    let parsed = changeset::parse(cs).map_err(|e| e.to_string())?;
    let mut s = String::from("[");
    for (header, changes) in &parsed {
        let table = tables
            .iter()
            .find(|t| t.name == header.name && t.columns.len() == header.n_col())
            .ok_or_else(|| format!("no table \"{}\" of that shape", header.name))?;
        let name = json_text(&table.name);
        let columns: Vec<String> = table.columns.iter().map(|c| json_text(&c.name)).collect();
        let pk = header.pk_columns();
        for change in changes {
            if s.len() > 1 {
                s.push(',');
            }
            s.push_str("{\"table\":");
            s.push_str(&name);
            s.push_str(match change.op {
                Op::Insert => ",\"op\":\"insert\",\"pk\":[",
                Op::Update => ",\"op\":\"update\",\"pk\":[",
                Op::Delete => ",\"op\":\"delete\",\"pk\":[",
            });
            let key = change.key_record();
            for (i, &c) in pk.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                match key.get(c).and_then(|f| decode_field(f)) {
                    Some(v) => value_json(&mut s, v),
                    None => s.push_str("null"),
                }
            }
            s.push_str("],\"old\":");
            record(&mut s, &columns, change.op != Op::Insert, &change.old);
            s.push_str(",\"new\":");
            record(&mut s, &columns, change.op != Op::Delete, &change.new);
            s.push('}');
        }
    }
    s.push(']');
    Ok(s)
}

/// A record as an object of its defined fields, or `null` when the op has none.
fn record(s: &mut String, columns: &[String], present: bool, fields: &[&[u8]]) {
    if !present {
        s.push_str("null");
        return;
    }
    s.push('{');
    let mut first = true;
    for (name, field) in columns.iter().zip(fields) {
        let Some(v) = decode_field(field) else {
            continue;
        };
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(name);
        s.push(':');
        value_json(s, v);
    }
    s.push('}');
}

/// A name as a JSON string.
fn json_text(name: &str) -> String {
    serde_json::Value::from(name).to_string()
}
