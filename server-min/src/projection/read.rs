//! Reading a projection: query parameters turned into typed filters on declared
//! fields (values bound, never spliced), keyset pagination with a tamper-evident
//! cursor, full-text queries made of quoted FTS5 strings, and the answer as JSON text.
//! No text of a request becomes SQL.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use base64::Engine;
use pdb_core::cert::hex;
use pdb_core::changeset::value_json;
use pdb_core::db::rusqlite_impl::{from_rusqlite, to_rusqlite};
use pdb_core::value::{decode_field, field_len, Value};
use rusqlite::types::ToSqlOutput;
use rusqlite::Connection;

use super::builder::{built, plan_of, Built};
use super::compile::{measure_sql, prefix};
use super::expr::Kind;
use super::spec::{Plan, PlanBody};
use crate::problem::{Code, Problem};

/// Rows per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Most rows per page.
pub const MAX_LIMIT: usize = 1000;
/// Longest search text.
pub const MAX_QUERY: usize = 4096;
/// Most words in a search.
const MAX_WORDS: usize = 64;
/// Deepest page of a search (its cursor is an offset).
const MAX_OFFSET: u64 = 10_000;
/// Longest a read may run before it is refused.
const BUDGET: Duration = Duration::from_secs(2);
/// Marks around a match in a snippet before it is escaped (private-use characters).
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

/// Who reads: a token granted only this projection sees the rows its scope selects.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// The token's claims as text (`sub` and the others), when it is projection-only;
    /// `None` for a member with the read role, who sees every row.
    pub claims: Option<std::collections::BTreeMap<String, String>>,
}

impl Viewer {
    /// The value the scope column must equal for this reader of `plan`, from the
    /// version that serves (not the newest definition, which may scope otherwise).
    fn scope(&self, plan: &Plan) -> Result<Option<String>, Problem> {
        let (Some(claims), Some((_, claim))) = (&self.claims, &plan.scope) else {
            return Ok(None);
        };
        claims.get(claim).cloned().map(Some).ok_or_else(|| {
            Problem::new(
                Code::Forbidden,
                format!(
                    "the projection is scoped by claim \"{claim}\", which the token does not have"
                ),
            )
        })
    }
}

/// A read's parameters, as parsed from the query string (before the plan is known).
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// `name[.op]=value` pairs, in order.
    pub filters: Vec<(String, String)>,
    /// `q`
    pub q: Option<String>,
    /// `limit`
    pub limit: Option<String>,
    /// `next`
    pub next: Option<String>,
}

fn bad(param: &str, detail: impl Into<String>) -> Problem {
    Problem::new(Code::InvalidQuery, detail).with("parameter", param)
}

impl Params {
    /// Sorts raw query pairs into parameters; `min_seq` and `wait` are the caller's.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Params, Problem> {
        let mut p = Params::default();
        for (k, v) in pairs {
            let slot = match k.as_str() {
                "q" => &mut p.q,
                "limit" => &mut p.limit,
                "next" => &mut p.next,
                "min_seq" | "wait" => continue,
                _ => {
                    p.filters.push((k.clone(), v.clone()));
                    continue;
                }
            };
            if slot.is_some() {
                return Err(bad(k, format!("{k} is given twice")));
            }
            *slot = Some(v.clone());
        }
        Ok(p)
    }

    fn limit(&self) -> Result<usize, Problem> {
        match self.limit.as_deref() {
            None => Ok(DEFAULT_LIMIT),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(bad(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )),
            },
        }
    }
}

/// The comparison of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// Converts filter text to a value of `kind`.
fn typed(param: &str, kind: Kind, text: &str) -> Result<Value, Problem> {
    let int = || text.parse::<i64>().ok().map(Value::Integer);
    let real = || {
        text.parse::<f64>()
            .ok()
            .filter(|r| r.is_finite())
            .map(Value::Real)
    };
    let v = match kind {
        Kind::Integer => int(),
        Kind::Real => real(),
        Kind::Numeric => int().or_else(real),
        Kind::Text => Some(Value::Text(text.as_bytes().to_vec())),
        Kind::Blob => (text.len() % 2 == 0)
            .then(|| {
                (0..text.len())
                    .step_by(2)
                    .map(|i| {
                        text.get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    })
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
            .map(Value::Blob),
        Kind::Any => Some(
            int()
                .or_else(real)
                .unwrap_or_else(|| Value::Text(text.as_bytes().to_vec())),
        ),
    };
    v.ok_or_else(|| {
        bad(
            param,
            format!(
                "{param} must be {} ({text:?} is not)",
                match kind {
                    Kind::Integer => "an integer",
                    Kind::Real => "a number",
                    Kind::Numeric => "a number",
                    Kind::Blob => "hex bytes",
                    _ => "a value",
                }
            ),
        )
    })
}

/// The filters of a read on fields (`names`, with their kinds and output columns).
fn filters(
    params: &Params,
    fields: &[(String, Kind, String)],
) -> Result<Vec<(String, Op, Value)>, Problem> {
    let mut out = Vec::new();
    for (k, v) in &params.filters {
        let (name, op) = match k.rsplit_once('.') {
            Some((n, "eq")) => (n, Op::Eq),
            Some((n, "lt")) => (n, Op::Lt),
            Some((n, "lte")) => (n, Op::Le),
            Some((n, "gt")) => (n, Op::Gt),
            Some((n, "gte")) => (n, Op::Ge),
            Some((_, other)) if fields.iter().all(|f| f.0 != *k) => {
                return Err(bad(
                    k,
                    format!("\"{other}\" is not a comparison: use eq, lt, lte, gt or gte"),
                ))
            }
            _ => (k.as_str(), Op::Eq),
        };
        let Some((_, kind, col)) = fields.iter().find(|f| f.0 == name) else {
            return Err(bad(
                k,
                if fields.is_empty() {
                    format!(
                        "\"{name}\" is not a parameter of this projection (it takes no filters)"
                    )
                } else {
                    format!(
                        "\"{name}\" is not a filterable field (filter by {})",
                        fields
                            .iter()
                            .map(|f| f.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            ));
        };
        out.push((col.clone(), op, typed(k, *kind, v)?));
    }
    Ok(out)
}

/// Adds the read's filters on `fields` (stored as `<table>k<i>`) to the conditions,
/// their values bound as parameters.
fn filter_on(
    params: &Params,
    fields: &[super::spec::Field],
    table: &str,
    args: &mut Vec<Value>,
    conds: &mut Vec<String>,
) -> Result<(), Problem> {
    let named: Vec<(String, Kind, String)> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.clone(), f.kind, format!("{table}k{i}")))
        .collect();
    for (col, op, v) in filters(params, &named)? {
        args.push(v);
        conds.push(format!("{col} {} ?{}", op.sql(), args.len()));
    }
    Ok(())
}

/// A next-page cursor: the version it is for and where the page ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// The projection version.
    pub version: u64,
    /// Rows already returned (search).
    pub offset: u64,
    /// The sort values of the last row returned (index, aggregate).
    pub after: Vec<Value>,
}

/// Issues and checks cursors: keyed BLAKE3 over the position and everything the read
/// was for, so a cursor is good for the same read only.
pub struct Cursors {
    key: [u8; 32],
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

impl Cursors {
    /// Cursors keyed by `key`.
    pub fn new(key: [u8; 32]) -> Cursors {
        Cursors { key }
    }

    fn mac(&self, context: &str, payload: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"pdb/v1 projection cursor\0");
        h.update(&(context.len() as u64).to_be_bytes());
        h.update(context.as_bytes());
        h.update(payload);
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    /// The token of `pos` for reads of `context`.
    pub fn issue(&self, context: &str, pos: &Position) -> String {
        let mut payload = Vec::new();
        payload.extend_from_slice(&pos.version.to_be_bytes());
        payload.extend_from_slice(&pos.offset.to_be_bytes());
        for v in &pos.after {
            v.as_ref().encode(&mut payload);
        }
        format!(
            "{}.{}",
            b64().encode(&payload),
            b64().encode(self.mac(context, &payload))
        )
    }

    /// The position of a token issued for `context`.
    pub fn check(&self, context: &str, token: &str) -> Result<Position, Problem> {
        let refused = || {
            Problem::new(
                Code::InvalidCursor,
                "next is not a cursor this witness issued for this read",
            )
            .with("parameter", "next")
        };
        let (p, m) = token.split_once('.').ok_or_else(refused)?;
        let payload = b64().decode(p).map_err(|_| refused())?;
        let mac = b64().decode(m).map_err(|_| refused())?;
        // Constant time: the comparison must not tell a forger how close it came.
        let want = self.mac(context, &payload);
        if mac.len() != want.len() || mac.iter().zip(&want).fold(0u8, |a, (x, y)| a | (x ^ y)) != 0
        {
            return Err(refused());
        }
        let (head, mut rest) = payload.split_at_checked(16).ok_or_else(refused)?;
        let version = u64::from_be_bytes(head[..8].try_into().map_err(|_| refused())?);
        let offset = u64::from_be_bytes(head[8..].try_into().map_err(|_| refused())?);
        let mut after = Vec::new();
        while !rest.is_empty() {
            let n = field_len(rest);
            let v = decode_field(&rest[..n]).ok_or_else(refused)?;
            after.push(v.to_owned());
            rest = &rest[n..];
        }
        Ok(Position {
            version,
            offset,
            after,
        })
    }
}

/// Writes a value as typed JSON (blobs as `{"blob": hex}`).
fn json_value(out: &mut String, v: rusqlite::types::ValueRef<'_>) {
    value_json(out, from_rusqlite(v));
}

fn json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

fn bind(v: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(to_rusqlite(v.as_ref()))
}

/// `(c0, c1, ...) > (x0, x1, ...)` in ORDER BY's order, where NULL sorts first and
/// compares as nothing: written out, since row values compare NULLs as unknown.
fn after_sql(cols: &[String], vals: &[Value], args: &mut Vec<Value>) -> String {
    let mut terms = Vec::new();
    for i in 0..cols.len() {
        let mut t = Vec::new();
        for j in 0..i {
            args.push(vals[j].clone());
            t.push(format!("{} IS ?{}", cols[j], args.len()));
        }
        if matches!(vals[i], Value::Null) {
            t.push(format!("{} IS NOT NULL", cols[i]));
        } else {
            args.push(vals[i].clone());
            t.push(format!("{} > ?{}", cols[i], args.len()));
        }
        terms.push(format!("({})", t.join(" AND ")));
    }
    format!("({})", terms.join(" OR "))
}

/// Quotes each word of `q` as an FTS5 string, so none of FTS5's syntax reaches
/// SQLite; a word ending in `*` searches by prefix. Words are ANDed.
pub fn fts_query(q: &str) -> Result<String, Problem> {
    if q.len() > MAX_QUERY {
        return Err(bad("q", format!("q is longer than {MAX_QUERY} bytes")));
    }
    // FTS5 ends a string at NUL and then reports it unterminated.
    if q.contains('\0') {
        return Err(bad("q", "q holds a NUL character"));
    }
    let mut parts = Vec::new();
    for word in q.split_whitespace() {
        let stem = word.trim_end_matches('*');
        if stem.is_empty() {
            continue;
        }
        let mut s = format!("\"{}\"", stem.replace('"', "\"\""));
        if stem.len() != word.len() {
            s.push('*');
        }
        parts.push(s);
    }
    if parts.is_empty() {
        return Err(bad("q", "q has no words to search for"));
    }
    if parts.len() > MAX_WORDS {
        return Err(bad("q", format!("q has more than {MAX_WORDS} words")));
    }
    Ok(parts.join(" "))
}

/// Escapes a snippet for HTML and turns its match marks into `<mark>` elements.
fn snippet_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            MARK_OPEN => out.push_str("<mark>"),
            MARK_CLOSE => out.push_str("</mark>"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The answer to a read of projection `name`: JSON text, or why there is none.
pub fn read(
    conn: &Connection,
    cursors: &Cursors,
    group: &str,
    tables: &[pdb_core::schema::TableInfo],
    name: &str,
    params: &Params,
    viewer: &Viewer,
) -> rusqlite::Result<Result<String, Problem>> {
    let pos = crate::replica::read_position(conn, "main")?;
    let versions = built(conn)?;
    let Some(serving) = versions
        .iter()
        .filter(|b| b.name == name && b.ready)
        .max_by_key(|b| b.version)
    else {
        return Ok(Err(not_serving(name, &versions)));
    };
    let plan = match plan_of(&serving.spec, tables) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Err(Problem::new(
                Code::ProjectionFailed,
                format!("projection \"{name}\" no longer fits the group: {e}"),
            )))
        }
    };
    let start = Instant::now();
    conn.progress_handler(10_000, Some(move || start.elapsed() > BUDGET));
    let body = rows(
        conn, cursors, group, serving, &plan, params, viewer, pos.seq, &pos.head,
    );
    conn.progress_handler(0, None::<fn() -> bool>);
    body
}

fn not_serving(name: &str, versions: &[Built]) -> Problem {
    match versions
        .iter()
        .filter(|b| b.name == name)
        .max_by_key(|b| b.version)
    {
        Some(b) => Problem::new(
            Code::ProjectionFailed,
            format!(
                "projection \"{name}\" has stopped: {}",
                b.error.as_deref().unwrap_or("no reason recorded")
            ),
        ),
        None => Problem::new(
            Code::ProjectionBuilding,
            format!("projection \"{name}\" is being built"),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn rows(
    conn: &Connection,
    cursors: &Cursors,
    group: &str,
    serving: &Built,
    plan: &Plan,
    params: &Params,
    viewer: &Viewer,
    seq: u64,
    head: &pdb_core::cert::Hash,
) -> rusqlite::Result<Result<String, Problem>> {
    let limit = match params.limit() {
        Ok(l) => l,
        Err(p) => return Ok(Err(p)),
    };
    let p = prefix(&serving.name, serving.version);
    let t = &plan.table;
    let scope_value = match viewer.scope(plan) {
        Ok(v) => v,
        Err(p) => return Ok(Err(p)),
    };
    let scope = scope_value
        .as_ref()
        .map(|v| Value::Text(v.as_bytes().to_vec()));
    // What the cursor is for: the same read, by the same scope.
    let mut context = format!("{group}\0{}\0{}\0", serving.name, serving.version);
    for (k, v) in &params.filters {
        let _ = write!(context, "{k}={v}\0");
    }
    let _ = write!(
        context,
        "q={}\0scope={}",
        params.q.as_deref().unwrap_or(""),
        scope_value.as_deref().unwrap_or("")
    );
    let resume = match params
        .next
        .as_deref()
        .map(|n| cursors.check(&context, n))
        .transpose()
    {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let mut args: Vec<Value> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    if let Some(s) = &scope {
        args.push(s.clone());
        conds.push(format!("sc = ?{}", args.len()));
    }
    // Output: (json name, sql) per field, then the sort columns.
    let mut out: Vec<(String, String)> = Vec::new();
    let sort: Vec<String>;
    let from: String;
    let mut search = false;
    match &plan.body {
        PlanBody::Index { key, columns } => {
            if let Err(e) = filter_on(params, key, "", &mut args, &mut conds) {
                return Ok(Err(e));
            }
            for (i, f) in key.iter().enumerate() {
                out.push((f.name.clone(), format!("k{i}")));
            }
            for (i, &c) in columns.iter().enumerate() {
                out.push((t.columns[c].name.clone(), format!("v{i}")));
            }
            let mut s: Vec<String> = (0..key.len()).map(|i| format!("k{i}")).collect();
            s.extend((0..t.pk_columns().len()).map(|i| format!("s{i}")));
            sort = s;
            from = p.clone();
        }
        PlanBody::Aggregate { group_by, measures } => {
            if let Err(e) = filter_on(params, group_by, "a.", &mut args, &mut conds) {
                return Ok(Err(e));
            }
            let mut keycols: Vec<String> = (0..group_by.len()).map(|i| format!("k{i}")).collect();
            for (i, f) in group_by.iter().enumerate() {
                out.push((f.name.clone(), format!("a.k{i}")));
            }
            if let Some(c) = plan.scope_column() {
                out.push((c.name.clone(), "a.sc".into()));
                keycols.push("sc".into());
            }
            for (j, m) in measures.iter().enumerate() {
                out.push((m.name.clone(), measure_sql(&p, j, &m.measure, &keycols)));
            }
            sort = keycols.iter().map(|k| format!("a.{k}")).collect();
            from = format!("{p} AS a");
            if let Some(c) = conds.iter_mut().find(|c| c.starts_with("sc = ")) {
                *c = format!("a.{c}");
            }
        }
        PlanBody::Search { columns, .. } => {
            if !params.filters.is_empty() {
                let k = &params.filters[0].0;
                return Ok(Err(bad(
                    k,
                    format!("\"{k}\" is not a parameter of a search (use q, limit, next)"),
                )));
            }
            let Some(q) = params.q.as_deref() else {
                return Ok(Err(bad("q", "a search needs q=<words>")));
            };
            let fts = match fts_query(q) {
                Ok(f) => f,
                Err(e) => return Ok(Err(e)),
            };
            args.push(Value::Text(fts.into_bytes()));
            conds.push(format!("{p}_f MATCH ?{}", args.len()));
            if let Some(c) = conds.iter_mut().find(|c| c.starts_with("sc = ")) {
                *c = format!("d.{c}");
            }
            for (i, &c) in t.pk_columns().iter().enumerate() {
                out.push((t.columns[c].name.clone(), format!("d.s{i}")));
            }
            for (i, &c) in columns.iter().enumerate() {
                if t.columns[c].pk != 0 {
                    continue;
                }
                out.push((t.columns[c].name.clone(), format!("d.v{i}")));
            }
            out.push((
                "snippet".into(),
                format!(
                    "snippet({p}_f, -1, char({}), char({}), '…', 16)",
                    MARK_OPEN as u32, MARK_CLOSE as u32
                ),
            ));
            out.push(("rank".into(), format!("bm25({p}_f)")));
            sort = Vec::new();
            from = format!("{p}_f JOIN {p}_d AS d ON d.docid = {p}_f.rowid");
            search = true;
        }
    }
    if params.q.is_some() && !search {
        return Ok(Err(bad("q", "q is for search projections")));
    }
    let mut offset = 0;
    if let Some(r) = &resume {
        if r.version != serving.version {
            return Ok(Err(Problem::new(
                Code::InvalidCursor,
                "the projection was redefined since this cursor was issued: start again without next",
            )
            .with("parameter", "next")));
        }
        if search {
            offset = r.offset;
        } else if r.after.len() == sort.len() {
            let cond = after_sql(&sort, &r.after, &mut args);
            conds.push(cond);
        } else {
            return Ok(Err(Problem::new(
                Code::InvalidCursor,
                "next does not fit this projection",
            )
            .with("parameter", "next")));
        }
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let order = if search {
        format!(" ORDER BY {p}_f.rank")
    } else if sort.is_empty() {
        String::new()
    } else {
        format!(" ORDER BY {}", sort.join(", "))
    };
    let select: Vec<String> = out
        .iter()
        .map(|(_, s)| s.clone())
        .chain(sort.iter().cloned())
        .collect();
    let sql = format!(
        "SELECT {} FROM {from}{where_}{order} LIMIT {} OFFSET {offset}",
        select.join(", "),
        limit + 1
    );
    let mut stmt = conn.prepare(&sql)?;
    for (i, v) in args.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, bind(v))?;
    }
    let mut rows = stmt.raw_query();
    let mut body = String::from("[");
    let mut n = 0;
    let mut last: Vec<Value> = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next()? {
        if n == limit {
            more = true;
            break;
        }
        if n > 0 {
            body.push(',');
        }
        body.push('{');
        for (i, (name, _)) in out.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            json_str(&mut body, name);
            body.push(':');
            let v = row.get_ref(i)?;
            if search && name == "snippet" {
                let s = match v {
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    _ => String::new(),
                };
                json_str(&mut body, &snippet_html(&s));
            } else {
                json_value(&mut body, v);
            }
        }
        body.push('}');
        last = (0..sort.len())
            .map(|j| {
                row.get_ref(out.len() + j)
                    .map(|v| from_rusqlite(v).to_owned())
            })
            .collect::<rusqlite::Result<_>>()?;
        n += 1;
    }
    body.push(']');
    let next = if more && (!search || offset + (n as u64) < MAX_OFFSET) {
        let pos = Position {
            version: serving.version,
            offset: offset + n as u64,
            after: if search { Vec::new() } else { last },
        };
        serde_json::Value::from(cursors.issue(&context, &pos)).to_string()
    } else {
        "null".into()
    };
    let mut doc = String::with_capacity(body.len() + 200);
    doc.push_str("{\"projection\":");
    json_str(&mut doc, &serving.name);
    let _ = write!(
        doc,
        ",\"version\":{},\"seq\":{seq},\"head\":\"{}\",\"rows\":{body},\"next\":{next}}}",
        serving.version,
        hex(head)
    );
    Ok(Ok(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_good_for_their_read_only() {
        let c = Cursors::new([7; 32]);
        let pos = Position {
            version: 3,
            offset: 0,
            after: vec![
                Value::Text(b"2026-11".to_vec()),
                Value::Integer(9),
                Value::Null,
            ],
        };
        let t = c.issue("g\0p\0x", &pos);
        assert_eq!(c.check("g\0p\0x", &t).unwrap(), pos);
        assert_eq!(
            c.check("g\0p\0y", &t).unwrap_err().code,
            Code::InvalidCursor
        );
        assert_eq!(
            Cursors::new([8; 32]).check("g\0p\0x", &t).unwrap_err().code,
            Code::InvalidCursor
        );
        for forged in ["", ".", "abc", "abc.def", &t[1..], &format!("{t}x")] {
            assert_eq!(
                c.check("g\0p\0x", forged).unwrap_err().code,
                Code::InvalidCursor,
                "{forged}"
            );
        }
    }

    #[test]
    fn searches_quote_every_word() {
        assert_eq!(fts_query("milk eggs").unwrap(), "\"milk\" \"eggs\"");
        assert_eq!(fts_query("mil*").unwrap(), "\"mil\"*");
        assert_eq!(
            fts_query("a\"b NEAR(x) OR").unwrap(),
            "\"a\"\"b\" \"NEAR(x)\" \"OR\""
        );
        assert_eq!(fts_query("title:secret").unwrap(), "\"title:secret\"");
        assert_eq!(fts_query("  * ** ").unwrap_err().code, Code::InvalidQuery);
        assert_eq!(
            fts_query(&"x".repeat(MAX_QUERY + 1)).unwrap_err().code,
            Code::InvalidQuery
        );
    }

    #[test]
    fn snippets_are_escaped_html_with_marks() {
        assert_eq!(
            snippet_html("<b>\u{E000}milk\u{E001} & \"eggs\"</b>"),
            "&lt;b&gt;<mark>milk</mark> &amp; &quot;eggs&quot;&lt;/b&gt;"
        );
    }
}
