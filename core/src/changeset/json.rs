//! JSON views of changes, for `pdb_changeset_rows`.
//!
//! Values map to JSON as follows, so that every SQLite value survives:
//! - NULL → `null`; INTEGER → a JSON integer; TEXT → a JSON string (invalid UTF-8 is
//!   replaced by U+FFFD);
//! - REAL → a JSON number that always has a fraction or exponent (`1.0`, `-0.0`,
//!   `1e300`); the non-finite values, which JSON cannot spell, → `{"real":"inf"}`,
//!   `{"real":"-inf"}` or `{"real":"nan"}`;
//! - BLOB → `{"blob":"<lower-case hex>"}`;
//! - undefined (a column that is not part of this change, in an UPDATE) → the marker
//!   `{"undefined":true}`, so that it is never confused with NULL.

use std::fmt::Write;

use super::{Change, Op, TableHeader};
use crate::value::{decode_field, ValueRef};

/// One change rendered for SQL: the columns of `pdb_changeset_rows`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeJson {
    /// Table name.
    pub tbl: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub op: &'static str,
    /// Whether the change was indirect.
    pub indirect: bool,
    /// JSON array of the primary key values, in primary-key order.
    pub pk: String,
    /// JSON array of the old record; `None` for INSERT.
    pub old: Option<String>,
    /// JSON array of the new record; `None` for DELETE.
    pub new: Option<String>,
}

/// Renders one change.
pub fn change_to_json(table: &TableHeader<'_>, change: &Change<'_>) -> ChangeJson {
    let rec = change.key_record();
    let pk: Vec<&[u8]> = table.pk_columns().into_iter().map(|i| rec[i]).collect();
    ChangeJson {
        tbl: table.name.to_string(),
        op: change.op.name(),
        indirect: change.indirect,
        pk: record_json(&pk),
        old: (change.op != Op::Insert).then(|| record_json(&change.old)),
        new: (change.op != Op::Delete).then(|| record_json(&change.new)),
    }
}

fn record_json(fields: &[&[u8]]) -> String {
    let mut s = String::from("[");
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match decode_field(f) {
            None => s.push_str(r#"{"undefined":true}"#),
            Some(v) => value_json(&mut s, v),
        }
    }
    s.push(']');
    s
}

/// Appends one value as JSON, per the mapping in the module documentation.
pub fn value_json(s: &mut String, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => s.push_str("null"),
        ValueRef::Integer(i) => write!(s, "{i}").unwrap(),
        ValueRef::Real(r) if r.is_nan() => s.push_str(r#"{"real":"nan"}"#),
        ValueRef::Real(r) if r.is_infinite() => s.push_str(if r > 0.0 {
            r#"{"real":"inf"}"#
        } else {
            r#"{"real":"-inf"}"#
        }),
        // Debug keeps a fraction or exponent (1.0, -0.0, 1e300) and round-trips exactly.
        ValueRef::Real(r) => write!(s, "{r:?}").unwrap(),
        ValueRef::Text(t) => json_string(s, &String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => {
            s.push_str(r#"{"blob":""#);
            for byte in b {
                write!(s, "{byte:02x}").unwrap();
            }
            s.push_str("\"}");
        }
    }
}

fn json_string(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => write!(s, "\\u{:04x}", c as u32).unwrap(),
            c => s.push(c),
        }
    }
    s.push('"');
}
