//! Parsing the headers of a commit request (outside input, so it has a fuzz target).

use pdb_core::cert::{parse_hash, Hash};

use crate::problem::{Code, Problem};

/// How a stale base is treated (`Pdb-Policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The base must be the head.
    FastForward,
    /// A stale base is fine if the changeset applies to the head without conflict.
    RebaseIfClean,
}

/// The headers of `POST /v1/groups/{g}/commits`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitHeaders {
    /// `Pdb-Base: <seq>:<head hex>`.
    pub base: (u64, Hash),
    /// `Idempotency-Key`.
    pub idempotency_key: String,
    /// `Pdb-Schema: <schema hash hex>`.
    pub schema_hash: Hash,
    /// `Pdb-Client`.
    pub client: Option<String>,
    /// `Pdb-Meta`.
    pub meta: Option<String>,
    /// `Pdb-Policy`, default `rebase-if-clean`.
    pub policy: Policy,
}

/// Longest accepted `Pdb-Meta`.
pub const MAX_META: usize = 8 * 1024;

fn bad(detail: String) -> Problem {
    Problem::new(Code::BadRequest, detail)
}

fn text<'a>(name: &str, raw: Option<&'a [u8]>) -> Result<Option<&'a str>, Problem> {
    raw.map(|b| std::str::from_utf8(b).map_err(|_| bad(format!("{name}: not UTF-8"))))
        .transpose()
}

/// Parses `Pdb-Base`.
pub fn parse_base(s: &str) -> Option<(u64, Hash)> {
    let (seq, head) = s.trim().split_once(':')?;
    if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq.parse().ok()?, parse_hash(head)?))
}

/// Checks the commit headers; `header` returns a header's raw value by name.
pub fn commit_headers<'a>(
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<CommitHeaders, Problem> {
    let required = |name: &str| -> Result<&'a str, Problem> {
        text(name, header(name))?.ok_or_else(|| bad(format!("missing header {name}")))
    };
    let base_raw = required("Pdb-Base")?;
    let base = parse_base(base_raw).ok_or_else(|| {
        bad(format!(
            "Pdb-Base \"{}\" is not <seq>:<64 hex digits of the head>",
            base_raw.escape_default()
        ))
    })?;
    let key = required("Idempotency-Key")?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(bad(
            "Idempotency-Key must be 1-255 visible ASCII characters".to_string(),
        ));
    }
    let schema_raw = required("Pdb-Schema")?;
    let schema_hash = parse_hash(schema_raw.trim())
        .ok_or_else(|| bad("Pdb-Schema is not 64 hex digits".to_string()))?;
    let client = text("Pdb-Client", header("Pdb-Client"))?;
    if let Some(c) = client {
        if c.is_empty()
            || c.len() > 64
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("Pdb-Client must be 1-64 of A-Z a-z 0-9 - _".to_string()));
        }
    }
    let policy = match text("Pdb-Policy", header("Pdb-Policy"))?.map(str::trim) {
        None | Some("rebase-if-clean") => Policy::RebaseIfClean,
        Some("fast-forward") => Policy::FastForward,
        Some(p) => {
            return Err(bad(format!(
                "Pdb-Policy \"{}\" is neither fast-forward nor rebase-if-clean",
                p.escape_default()
            )))
        }
    };
    let meta = text("Pdb-Meta", header("Pdb-Meta"))?;
    if let Some(m) = meta {
        if m.len() > MAX_META || serde_json::from_str::<serde_json::Value>(m).is_err() {
            return Err(bad(format!(
                "Pdb-Meta must be JSON of at most {MAX_META} bytes"
            )));
        }
    }
    Ok(CommitHeaders {
        base,
        idempotency_key: key.to_string(),
        schema_hash,
        client: client.map(str::to_string),
        meta: meta.map(str::to_string),
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(h: &[(&str, &str)]) -> Result<CommitHeaders, Problem> {
        let owned: Vec<(String, Vec<u8>)> = h
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        commit_headers(|name| {
            owned
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
        })
    }

    const H: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn good_headers_parse_with_defaults() {
        let base = format!("7:{H}");
        let c = parse(&[
            ("Pdb-Base", &base),
            ("Idempotency-Key", "k1"),
            ("Pdb-Schema", H),
        ])
        .unwrap();
        assert_eq!(c.base.0, 7);
        assert_eq!(c.policy, Policy::RebaseIfClean);
        assert_eq!(c.client, None);
    }

    #[test]
    fn each_malformed_header_is_named() {
        let base = format!("7:{H}");
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("Idempotency-Key", "k"), ("Pdb-Schema", H)],
                "missing header Pdb-Base",
            ),
            (
                vec![
                    ("Pdb-Base", "7"),
                    ("Idempotency-Key", "k"),
                    ("Pdb-Schema", H),
                ],
                "Pdb-Base",
            ),
            (
                vec![
                    ("Pdb-Base", "-1:00"),
                    ("Idempotency-Key", "k"),
                    ("Pdb-Schema", H),
                ],
                "Pdb-Base",
            ),
            (
                vec![("Pdb-Base", &base), ("Pdb-Schema", H)],
                "missing header Idempotency-Key",
            ),
            (
                vec![
                    ("Pdb-Base", &base),
                    ("Idempotency-Key", "a b"),
                    ("Pdb-Schema", H),
                ],
                "Idempotency-Key",
            ),
            (
                vec![
                    ("Pdb-Base", &base),
                    ("Idempotency-Key", "k"),
                    ("Pdb-Schema", "xyz"),
                ],
                "Pdb-Schema",
            ),
            (
                vec![
                    ("Pdb-Base", &base),
                    ("Idempotency-Key", "k"),
                    ("Pdb-Schema", H),
                    ("Pdb-Policy", "yolo"),
                ],
                "Pdb-Policy",
            ),
            (
                vec![
                    ("Pdb-Base", &base),
                    ("Idempotency-Key", "k"),
                    ("Pdb-Schema", H),
                    ("Pdb-Meta", "{"),
                ],
                "Pdb-Meta",
            ),
        ];
        for (h, what) in cases {
            let e = parse(&h).unwrap_err();
            assert_eq!(e.code, Code::BadRequest);
            assert!(e.detail.contains(what), "{} should name {what}", e.detail);
        }
    }
}
