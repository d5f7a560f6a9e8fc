//! A projection's spec: the JSON an admin PUTs, checked against the group's tables and
//! turned into a [`Plan`] whose expressions are our own trees. Every refusal names
//! the field at fault as a JSON pointer (`/key/month`).

use std::fmt::Write as _;

use pdb_core::schema::{Column, TableInfo};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::expr::{self, Expr, Kind, Measure};

/// Query parameters of the read API; no field of a spec may take one of these names.
pub const RESERVED: &[&str] = &[
    "q", "limit", "next", "after", "min_seq", "wait", "syntax", "offset", "status", "format",
    "select", "order",
];
/// Tokenizers a search projection may name.
pub const TOKENIZERS: &[&str] = &[
    "unicode61",
    "unicode61 remove_diacritics 0",
    "unicode61 remove_diacritics 1",
    "unicode61 remove_diacritics 2",
    "porter unicode61",
    "porter unicode61 remove_diacritics 2",
    "ascii",
    "porter ascii",
    "trigram",
];
/// Most key fields, columns or measures in one spec.
const MAX_FIELDS: usize = 64;

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct SpecError {
    /// JSON pointer of the field at fault (`""` for the whole spec).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `name` can name a projection: `[a-z][a-z0-9_]{0,62}`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// JSON with object members in the order written: the order of key fields is the
/// order rows are sorted in, and serde_json's own map sorts its keys.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
                Ok(Json::Num(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
                Ok(Json::Num(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(v)
                    .map(Json::Num)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json, E> {
                Ok(Json::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Json, E> {
                Ok(Json::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Json::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Json, A::Error> {
                let mut v: Vec<(String, Json)> = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Json>()? {
                    if v.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("member \"{k}\" appears twice")));
                    }
                    v.push((k, x));
                }
                Ok(Json::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The row source common to every kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// The table column compared.
    pub column: String,
    /// The token claim it must equal.
    pub claim: String,
}

/// What a projection computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Full-text search over text columns.
    Search {
        /// Indexed (and returned) columns.
        columns: Vec<String>,
        /// FTS5 tokenizer.
        tokenizer: String,
    },
    /// One output row per source row, ordered by derived key fields.
    Index {
        /// Key fields: name and expression.
        key: Vec<(String, String)>,
        /// Returned columns.
        columns: Vec<String>,
    },
    /// Rows grouped by derived fields, with measures.
    Aggregate {
        /// Group fields: name and expression.
        group_by: Vec<(String, String)>,
        /// Measures: name and `count(*)`, `sum(x)`, ...
        measures: Vec<(String, String)>,
    },
}

/// A spec as written, structurally checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The source table, as written.
    pub table: String,
    /// What is computed.
    pub body: Body,
    /// Optional row filter (`"where"`).
    pub filter: Option<String>,
    /// Optional row scope for projection-only tokens.
    pub scope: Option<Scope>,
}

fn string(v: &Json, field: &str) -> Result<String, SpecError> {
    match v {
        Json::Str(s) => Ok(s.clone()),
        _ => Err(err(field, "must be a string")),
    }
}

fn strings(v: &Json, field: &str) -> Result<Vec<String>, SpecError> {
    let Json::Arr(items) = v else {
        return Err(err(field, "must be an array of strings"));
    };
    if items.is_empty() || items.len() > MAX_FIELDS {
        return Err(err(field, format!("must list 1 to {MAX_FIELDS} columns")));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, x)| string(x, &format!("{field}/{i}")))
        .collect()
}

/// An object of `name: expression` members, in the order written; or, for JSON
/// writers that sort an object's members, a list of one-member objects.
fn pairs(v: &Json, field: &str, min: usize) -> Result<Vec<(String, String)>, SpecError> {
    let shape = || {
        err(
            field,
            "must be an object of name: expression (or a list of one-member objects)",
        )
    };
    let listed: Vec<(String, Json)>;
    let members = match v {
        Json::Obj(m) => m,
        Json::Arr(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Json::Obj(m) if m.len() == 1 => {
                        if out.iter().any(|(k, _): &(String, Json)| *k == m[0].0) {
                            return Err(err(
                                format!("{field}/{i}"),
                                format!("\"{}\" appears twice", m[0].0),
                            ));
                        }
                        out.push(m[0].clone());
                    }
                    _ => {
                        return Err(err(
                            format!("{field}/{i}"),
                            "must be an object with one member",
                        ))
                    }
                }
            }
            listed = out;
            &listed
        }
        _ => return Err(shape()),
    };
    if members.len() < min || members.len() > MAX_FIELDS {
        return Err(err(
            field,
            format!("must have {min} to {MAX_FIELDS} members"),
        ));
    }
    members
        .iter()
        .map(|(k, x)| Ok((k.clone(), string(x, &format!("{field}/{}", pointer(k)))?)))
        .collect()
}

/// A JSON pointer token (RFC 6901).
fn pointer(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

impl Spec {
    /// Parses the JSON of a PUT body.
    pub fn from_json(body: &[u8]) -> Result<Spec, SpecError> {
        let doc: Json = serde_json::from_slice(body)
            .map_err(|e| err("", format!("the body is not JSON: {e}")))?;
        let Json::Obj(members) = doc else {
            return Err(err("", "the spec must be a JSON object"));
        };
        let get = |k: &str| members.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let kind = string(
            get("kind").ok_or_else(|| err("/kind", "is required"))?,
            "/kind",
        )?;
        let allowed: &[&str] = match kind.as_str() {
            "search" => &["kind", "table", "columns", "tokenizer", "where", "scope"],
            "index" => &["kind", "table", "key", "columns", "where", "scope"],
            "aggregate" => &["kind", "table", "group_by", "measures", "where", "scope"],
            other => {
                return Err(err(
                    "/kind",
                    format!("\"{other}\" is not a kind: use search, index or aggregate"),
                ))
            }
        };
        if let Some((k, _)) = members.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(err(
                format!("/{}", pointer(k)),
                format!(
                    "is not a member of a {kind} spec (it has {})",
                    allowed.join(", ")
                ),
            ));
        }
        let need = |k: &str| get(k).ok_or_else(|| err(format!("/{k}"), "is required"));
        let table = string(need("table")?, "/table")?;
        let body = match kind.as_str() {
            "search" => Body::Search {
                columns: strings(need("columns")?, "/columns")?,
                tokenizer: match get("tokenizer") {
                    None => "unicode61 remove_diacritics 2".into(),
                    Some(t) => {
                        let t = string(t, "/tokenizer")?;
                        if !TOKENIZERS.contains(&t.as_str()) {
                            return Err(err(
                                "/tokenizer",
                                format!("\"{t}\" is not one of: {}", TOKENIZERS.join(", ")),
                            ));
                        }
                        t
                    }
                },
            },
            "index" => Body::Index {
                key: pairs(need("key")?, "/key", 1)?,
                columns: strings(need("columns")?, "/columns")?,
            },
            _ => Body::Aggregate {
                group_by: match get("group_by") {
                    None => Vec::new(),
                    Some(g) => pairs(g, "/group_by", 0)?,
                },
                measures: pairs(need("measures")?, "/measures", 1)?,
            },
        };
        let filter = get("where").map(|w| string(w, "/where")).transpose()?;
        let scope = match get("scope") {
            None => None,
            Some(Json::Obj(m)) => {
                let field = |k: &str| {
                    m.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| string(v, &format!("/scope/{k}")))
                        .unwrap_or_else(|| Err(err(format!("/scope/{k}"), "is required")))
                };
                if let Some((k, _)) = m.iter().find(|(k, _)| k != "column" && k != "claim") {
                    return Err(err(
                        format!("/scope/{}", pointer(k)),
                        "is not a member of a scope (column, claim)",
                    ));
                }
                Some(Scope {
                    column: field("column")?,
                    claim: field("claim")?,
                })
            }
            Some(_) => return Err(err("/scope", "must be {\"column\": ..., \"claim\": ...}")),
        };
        Ok(Spec {
            table,
            body,
            filter,
            scope,
        })
    }

    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Search { .. } => "search",
            Body::Index { .. } => "index",
            Body::Aggregate { .. } => "aggregate",
        }
    }

    /// The spec as canonical JSON text: members in a fixed order, key fields and
    /// measures in the order written. Equal specs have equal text.
    pub fn canonical(&self) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let list =
            |v: &[String]| format!("[{}]", v.iter().map(|s| q(s)).collect::<Vec<_>>().join(","));
        let obj = |v: &[(String, String)]| {
            format!(
                "{{{}}}",
                v.iter()
                    .map(|(k, e)| format!("{}:{}", q(k), q(e)))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let mut s = format!("{{\"kind\":{},\"table\":{}", q(self.kind()), q(&self.table));
        match &self.body {
            Body::Search { columns, tokenizer } => {
                let _ = write!(
                    s,
                    ",\"columns\":{},\"tokenizer\":{}",
                    list(columns),
                    q(tokenizer)
                );
            }
            Body::Index { key, columns } => {
                let _ = write!(s, ",\"key\":{},\"columns\":{}", obj(key), list(columns));
            }
            Body::Aggregate { group_by, measures } => {
                let _ = write!(
                    s,
                    ",\"group_by\":{},\"measures\":{}",
                    obj(group_by),
                    obj(measures)
                );
            }
        }
        if let Some(w) = &self.filter {
            let _ = write!(s, ",\"where\":{}", q(w));
        }
        if let Some(sc) = &self.scope {
            let _ = write!(
                s,
                ",\"scope\":{{\"column\":{},\"claim\":{}}}",
                q(&sc.column),
                q(&sc.claim)
            );
        }
        s.push('}');
        s
    }
}

/// A key or group field of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Its name in rows and filters.
    pub name: String,
    /// Its expression.
    pub expr: Expr,
    /// What filter text is converted to.
    pub kind: Kind,
}

/// A measure of an aggregate plan.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedMeasure {
    /// Its name in rows.
    pub name: String,
    /// What it measures.
    pub measure: Measure,
}

/// What a plan computes, with its expressions parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanBody {
    /// FTS5 over the columns (indexes into the table).
    Search {
        /// Indexed columns.
        columns: Vec<usize>,
        /// FTS5 tokenizer.
        tokenizer: String,
    },
    /// Rows by key.
    Index {
        /// Key fields, in sort order.
        key: Vec<Field>,
        /// Returned columns.
        columns: Vec<usize>,
    },
    /// Groups and measures.
    Aggregate {
        /// Group fields.
        group_by: Vec<Field>,
        /// Measures.
        measures: Vec<NamedMeasure>,
    },
}

/// A spec checked against its table: everything needed to build and read it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The table, as the group has it.
    pub table: TableInfo,
    /// What is computed.
    pub body: PlanBody,
    /// Rows that count.
    pub filter: Option<Expr>,
    /// Scope column index and claim name.
    pub scope: Option<(usize, String)>,
}

fn column_index(t: &TableInfo, name: &str, field: &str) -> Result<usize, SpecError> {
    t.columns
        .iter()
        .position(|c| c.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            err(
                field,
                format!(
                    "no column \"{name}\" in table \"{}\" (it has {})",
                    t.name,
                    t.columns
                        .iter()
                        .map(|c| format!("\"{}\"", c.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

/// Checks that the output names of a spec are names a client can filter and read by,
/// and that none is used twice.
struct Names(Vec<String>);

impl Names {
    fn add(&mut self, name: &str, field: &str) -> Result<(), SpecError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.as_bytes()[0].is_ascii_alphabetic()
            && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !ok {
            return Err(err(
                field,
                format!("\"{name}\" is not a field name: use a letter then letters, digits or _"),
            ));
        }
        if RESERVED.contains(&name.to_ascii_lowercase().as_str())
            || name.eq_ignore_ascii_case("snippet")
            || name.eq_ignore_ascii_case("rank")
        {
            return Err(err(
                field,
                format!("\"{name}\" is reserved for the read API"),
            ));
        }
        if self.0.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(err(field, format!("\"{name}\" is used twice")));
        }
        self.0.push(name.to_string());
        Ok(())
    }
}

impl Spec {
    /// Checks the spec against the group's tables.
    pub fn plan(&self, tables: &[TableInfo]) -> Result<Plan, SpecError> {
        let table = tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&self.table))
            .ok_or_else(|| {
                err(
                    "/table",
                    format!(
                        "the group has no table \"{}\" (it has {})",
                        self.table,
                        tables
                            .iter()
                            .map(|t| format!("\"{}\"", t.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?
            .clone();
        let t = &table;
        let row_expr = |src: &str, field: &str| expr::parse(src, t).map_err(|e| err(field, e));
        let mut names = Names(Vec::new());
        let cols = |list: &[String], names: &mut Names| -> Result<Vec<usize>, SpecError> {
            let mut out = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let field = format!("/columns/{i}");
                let idx = column_index(t, c, &field)?;
                names.add(&t.columns[idx].name, &field)?;
                out.push(idx);
            }
            Ok(out)
        };
        let fields = |list: &[(String, String)],
                      at: &str,
                      names: &mut Names|
         -> Result<Vec<Field>, SpecError> {
            list.iter()
                .map(|(name, src)| {
                    let field = format!("{at}/{}", pointer(name));
                    names.add(name, &field)?;
                    let e = row_expr(src, &field)?;
                    Ok(Field {
                        name: name.clone(),
                        kind: e.kind(t),
                        expr: e,
                    })
                })
                .collect()
        };
        let body = match &self.body {
            Body::Search { columns, tokenizer } => PlanBody::Search {
                columns: cols(columns, &mut names)?,
                tokenizer: tokenizer.clone(),
            },
            Body::Index { key, columns } => {
                let key = fields(key, "/key", &mut names)?;
                PlanBody::Index {
                    key,
                    columns: cols(columns, &mut names)?,
                }
            }
            Body::Aggregate { group_by, measures } => {
                let group_by = fields(group_by, "/group_by", &mut names)?;
                let measures = measures
                    .iter()
                    .map(|(name, src)| {
                        let field = format!("/measures/{}", pointer(name));
                        names.add(name, &field)?;
                        let measure = expr::parse_measure(src, t).map_err(|e| err(&field, e))?;
                        Ok(NamedMeasure {
                            name: name.clone(),
                            measure,
                        })
                    })
                    .collect::<Result<Vec<_>, SpecError>>()?;
                PlanBody::Aggregate { group_by, measures }
            }
        };
        let filter = self
            .filter
            .as_deref()
            .map(|w| row_expr(w, "/where"))
            .transpose()?;
        let scope = match &self.scope {
            None => None,
            Some(s) => {
                let c = column_index(t, &s.column, "/scope/column")?;
                let claim_ok = !s.claim.is_empty()
                    && s.claim.len() <= 64
                    && s.claim
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !claim_ok || matches!(s.claim.as_str(), "exp" | "groups" | "iat" | "nbf") {
                    return Err(err(
                        "/scope/claim",
                        format!("\"{}\" cannot scope rows: name a claim that identifies the reader, such as sub", s.claim),
                    ));
                }
                if let PlanBody::Aggregate { group_by, .. } = &body {
                    // A scoped aggregate is grouped by the scope column too, and shows it.
                    if group_by
                        .iter()
                        .any(|f| f.name.eq_ignore_ascii_case(&t.columns[c].name))
                    {
                        return Err(err(
                            "/scope/column",
                            format!("\"{}\" is also a group field", t.columns[c].name),
                        ));
                    }
                }
                Some((c, s.claim.clone()))
            }
        };
        Ok(Plan {
            body,
            filter,
            scope,
            table,
        })
    }
}

impl Plan {
    /// The scope column, if any.
    pub fn scope_column(&self) -> Option<&Column> {
        self.scope.as_ref().map(|(c, _)| &self.table.columns[*c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pdb_core::schema::Column;

    fn tables() -> Vec<TableInfo> {
        let col = |name: &str, ty: &str, pk: u8| Column {
            name: name.into(),
            decl_type: ty.into(),
            pk,
            notnull: false,
            default: None,
        };
        vec![
            TableInfo {
                name: "events".into(),
                columns: vec![
                    col("id", "INTEGER", 1),
                    col("title", "TEXT", 0),
                    col("starts_at", "TEXT", 0),
                    col("duration", "INTEGER", 0),
                    col("owner", "TEXT", 0),
                ],
                integer_pk: true,
                unique: vec![],
            },
            TableInfo {
                name: "notes".into(),
                columns: vec![
                    col("id", "TEXT", 1),
                    col("title", "TEXT", 0),
                    col("body", "TEXT", 0),
                ],
                integer_pk: false,
                unique: vec![],
            },
        ]
    }

    fn refusal(json: &str) -> SpecError {
        let spec = match Spec::from_json(json.as_bytes()) {
            Err(e) => return e,
            Ok(s) => s,
        };
        spec.plan(&tables()).expect_err("refused")
    }

    #[test]
    fn the_three_kinds_of_the_issue_are_accepted() {
        for json in [
            r#"{"kind": "search", "table": "notes", "columns": ["title", "body"]}"#,
            r#"{"kind": "index", "table": "events", "key": {"month": "substr(starts_at, 1, 7)"}, "columns": ["id", "title", "starts_at"]}"#,
            r#"{"kind": "aggregate", "table": "events", "group_by": {"month": "substr(starts_at, 1, 7)"}, "measures": {"n": "count(*)", "minutes": "sum(duration)", "longest": "max(duration)"}}"#,
            r#"{"kind": "index", "table": "events", "key": {"owner": "owner"}, "columns": ["title"], "where": "duration > 0", "scope": {"column": "owner", "claim": "sub"}}"#,
        ] {
            let spec = Spec::from_json(json.as_bytes()).unwrap();
            spec.plan(&tables()).unwrap();
            // The canonical text parses back to the same spec.
            assert_eq!(Spec::from_json(spec.canonical().as_bytes()).unwrap(), spec);
        }
    }

    #[test]
    fn key_fields_keep_the_order_written() {
        let spec = Spec::from_json(
            br#"{"kind": "index", "table": "events", "key": {"z": "title", "a": "owner"}, "columns": ["id"]}"#,
        )
        .unwrap();
        let Body::Index { key, .. } = &spec.body else {
            panic!()
        };
        assert_eq!(key[0].0, "z");
        assert!(spec
            .canonical()
            .contains(r#""key":{"z":"title","a":"owner"}"#));
    }

    #[test]
    fn each_refusal_names_its_field() {
        let cases = [
            (r#"[1]"#, ""),
            (r#"{"table": "notes"}"#, "/kind"),
            (r#"{"kind": "graph", "table": "notes"}"#, "/kind"),
            (
                r#"{"kind": "search", "table": "nope", "columns": ["title"]}"#,
                "/table",
            ),
            (
                r#"{"kind": "search", "table": "notes", "columns": ["nope"]}"#,
                "/columns/0",
            ),
            (
                r#"{"kind": "search", "table": "notes", "columns": []}"#,
                "/columns",
            ),
            (
                r#"{"kind": "search", "table": "notes", "columns": ["title"], "tokenizer": "icu"}"#,
                "/tokenizer",
            ),
            (
                r#"{"kind": "search", "table": "notes", "columns": ["title"], "extra": 1}"#,
                "/extra",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "random()"}, "columns": ["id"]}"#,
                "/key/m",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "datetime('now')"}, "columns": ["id"]}"#,
                "/key/m",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "(SELECT 1)"}, "columns": ["id"]}"#,
                "/key/m",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "notes.title"}, "columns": ["id"]}"#,
                "/key/m",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "nope"}, "columns": ["id"]}"#,
                "/key/m",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"limit": "title"}, "columns": ["id"]}"#,
                "/key/limit",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"title": "title"}, "columns": ["title"]}"#,
                "/columns/0",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {}, "columns": ["id"]}"#,
                "/key",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "title"}, "columns": ["id"], "where": "random() > 0"}"#,
                "/where",
            ),
            (
                r#"{"kind": "aggregate", "table": "events", "measures": {"n": "median(duration)"}}"#,
                "/measures/n",
            ),
            (
                r#"{"kind": "aggregate", "table": "events", "measures": {}}"#,
                "/measures",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "title"}, "columns": ["id"], "scope": {"column": "nope", "claim": "sub"}}"#,
                "/scope/column",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "title"}, "columns": ["id"], "scope": {"column": "owner", "claim": "exp"}}"#,
                "/scope/claim",
            ),
            (
                r#"{"kind": "index", "table": "events", "key": {"m": "title", "m": "owner"}, "columns": ["id"]}"#,
                "",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(refusal(json).field, field, "{json}: {}", refusal(json));
        }
    }
}
