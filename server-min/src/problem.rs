//! Rejections: every way a request can fail, with the stable `code` of DESIGN §5 that
//! clients branch on, rendered as `application/problem+json` (RFC 9457) by `http`.

use serde_json::{Map, Value};

pub use pdb_core::problem::Code;

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
