//! Rejections: every way a request can fail, with the stable `code` of DESIGN §5 that
//! clients branch on, rendered as `application/problem+json` (RFC 9457) by `http`.

use serde_json::{Map, Value};

/// A stable rejection code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The base is not the head and the policy does not allow a rebase (409).
    StaleBase,
    /// The changeset does not apply cleanly to the head (409).
    Conflict,
    /// `Pdb-Schema` differs from the group's schema, or a group exists with another (409).
    SchemaMismatch,
    /// No valid bearer token (401).
    Unauthorized,
    /// The token grants no sufficient role on this group (403).
    Forbidden,
    /// The body is not a changeset of this group's tables (422).
    InvalidChangeset,
    /// The idempotency key was used before with another changeset (422).
    IdempotencyConflict,
    /// The body exceeds the configured limit (413).
    TooLarge,
    /// No such group, or no such route (404).
    NotFound,
    /// A malformed header, query or body that is not a changeset (400).
    BadRequest,
    /// Storage failed; nothing was certified, retry later (503).
    Unavailable,
    /// The commits asked for were compacted away: start from a snapshot (410).
    Compacted,
    /// A `Range` header no byte of the object satisfies (416).
    RangeNotSatisfiable,
    /// A group's DDL is not a schema: it does something other than create tables and
    /// indexes in `main`, or does not run (400).
    InvalidSchema,
}

impl Code {
    /// Every code, in the order metrics list them.
    pub const ALL: [Code; 14] = [
        Code::StaleBase,
        Code::Conflict,
        Code::SchemaMismatch,
        Code::Unauthorized,
        Code::Forbidden,
        Code::InvalidChangeset,
        Code::IdempotencyConflict,
        Code::TooLarge,
        Code::NotFound,
        Code::BadRequest,
        Code::Unavailable,
        Code::Compacted,
        Code::RangeNotSatisfiable,
        Code::InvalidSchema,
    ];

    /// The `code` member of the problem document.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::StaleBase => "stale_base",
            Code::Conflict => "conflict",
            Code::SchemaMismatch => "schema_mismatch",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::InvalidChangeset => "invalid_changeset",
            Code::IdempotencyConflict => "idempotency_conflict",
            Code::TooLarge => "too_large",
            Code::NotFound => "not_found",
            Code::BadRequest => "bad_request",
            Code::Unavailable => "unavailable",
            Code::Compacted => "compacted",
            Code::RangeNotSatisfiable => "range_not_satisfiable",
            Code::InvalidSchema => "invalid_schema",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Code::StaleBase | Code::Conflict | Code::SchemaMismatch => 409,
            Code::Unauthorized => 401,
            Code::Forbidden => 403,
            Code::InvalidChangeset | Code::IdempotencyConflict => 422,
            Code::TooLarge => 413,
            Code::NotFound => 404,
            Code::BadRequest | Code::InvalidSchema => 400,
            Code::Unavailable => 503,
            Code::Compacted => 410,
            Code::RangeNotSatisfiable => 416,
        }
    }

    /// A short human summary (the problem's `title`).
    pub fn title(self) -> &'static str {
        match self {
            Code::StaleBase => "The commit's base is not the group's head",
            Code::Conflict => "The changeset conflicts with the group's head",
            Code::SchemaMismatch => "The schema differs from the group's",
            Code::Unauthorized => "Missing or invalid bearer token",
            Code::Forbidden => "The token grants no sufficient role on this group",
            Code::InvalidChangeset => "The body is not a valid changeset for this group",
            Code::IdempotencyConflict => "The idempotency key was used with another changeset",
            Code::TooLarge => "The request body is too large",
            Code::NotFound => "Not found",
            Code::BadRequest => "Malformed request",
            Code::Unavailable => "The witness cannot store commits right now",
            Code::Compacted => "Those commits were compacted; bootstrap from a snapshot",
            Code::RangeNotSatisfiable => "The requested range is outside the object",
            Code::InvalidSchema => "The DDL is not a group schema",
        }
    }
}

/// A rejection: a code, a human `detail`, and extension members (for example the
/// current head on `stale_base` and `conflict`).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The stable code.
    pub code: Code,
    /// What exactly was wrong, naming the header, table or row at fault.
    pub detail: String,
    /// Extra members of the problem document.
    pub extra: Map<String, Value>,
}

impl Problem {
    /// A rejection with no extension members.
    pub fn new(code: Code, detail: impl Into<String>) -> Problem {
        Problem {
            code,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// The problem document.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "type".into(),
            format!("https://personaldb.dev/problems/{}", self.code.as_str()).into(),
        );
        m.insert("title".into(), self.code.title().into());
        m.insert("status".into(), self.code.status().into());
        m.insert("code".into(), self.code.as_str().into());
        m.insert("detail".into(), self.detail.clone().into());
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}
