//! The stable `code` of DESIGN §5 that the witness rejects a request with and a device
//! branches on: one list, so the two sides cannot spell a code differently.

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
    /// A projection spec names an unknown table or column, or an expression outside
    /// the allowed subset (422; `field` names the spec member at fault).
    InvalidProjection,
    /// A projection read's parameters: an undeclared field, a bad value, a limit out
    /// of range, a search the witness cannot take (400; `parameter` names it).
    InvalidQuery,
    /// A `next` cursor that this witness did not issue for this read (400).
    InvalidCursor,
    /// The projection is being built; retry later (503, with progress).
    ProjectionBuilding,
    /// The projection stopped (a build error, or derived state that did not match
    /// the certified history) and serves nothing until it is redefined (409).
    ProjectionFailed,
    /// `min_seq` was not reached within the wait (409, with the projection's `seq`).
    ProjectionLagging,
    /// A stream cursor `seq:head` whose head is not this group's head at that seq (409).
    CursorMismatch,
}

impl Code {
    /// Every code, in the order metrics list them.
    pub const ALL: [Code; 21] = [
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
        Code::InvalidProjection,
        Code::InvalidQuery,
        Code::InvalidCursor,
        Code::ProjectionBuilding,
        Code::ProjectionFailed,
        Code::ProjectionLagging,
        Code::CursorMismatch,
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
            Code::InvalidProjection => "invalid_projection",
            Code::InvalidQuery => "invalid_query",
            Code::InvalidCursor => "invalid_cursor",
            Code::ProjectionBuilding => "projection_building",
            Code::ProjectionFailed => "projection_failed",
            Code::ProjectionLagging => "projection_lagging",
            Code::CursorMismatch => "cursor_mismatch",
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
            Code::BadRequest | Code::InvalidSchema | Code::InvalidQuery | Code::InvalidCursor => {
                400
            }
            Code::InvalidProjection => 422,
            Code::ProjectionFailed | Code::ProjectionLagging | Code::CursorMismatch => 409,
            Code::Unavailable | Code::ProjectionBuilding => 503,
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
            Code::InvalidProjection => "The projection spec is not valid for this group",
            Code::InvalidQuery => "The projection read's parameters are not valid",
            Code::InvalidCursor => "The cursor was not issued for this read",
            Code::ProjectionBuilding => "The projection is being built",
            Code::ProjectionFailed => "The projection has stopped",
            Code::ProjectionLagging => "The projection has not reached the seq asked for",
            Code::CursorMismatch => "The cursor's head is not this group's head at its seq",
        }
    }
}

/// A `code` string that names no [`Code`] (a newer witness's, or not a witness at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown problem code \"{0}\"")]
pub struct UnknownCode(pub String);

impl Code {
    /// The code a problem document's `code` member names, if this version knows it.
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::str::FromStr for Code {
    type Err = UnknownCode;

    fn from_str(s: &str) -> Result<Code, UnknownCode> {
        Code::parse(s).ok_or_else(|| UnknownCode(s.to_string()))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_and_unknown_ones_do_not() {
        for c in Code::ALL {
            assert_eq!(Code::parse(c.as_str()), Some(c));
            assert_eq!(c.as_str().parse::<Code>(), Ok(c));
        }
        assert_eq!(Code::parse("rate_limited"), None);
        assert!("".parse::<Code>().is_err());
    }
}
