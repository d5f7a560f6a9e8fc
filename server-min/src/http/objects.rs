//! Serving a snapshot object over HTTP: the whole file or one byte range, streamed in
//! pieces, so an interrupted download resumes where it stopped and a large file never
//! sits in memory. Who may read an object is decided before, by the caller.

use std::path::Path;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::problem::{Code, Problem};

/// The answer to `GET /v1/objects/{name}` for the object file at `path`, honouring a
/// single `Range`. An unsatisfiable range is an answer (416 with the size), not an
/// error: only a missing or unreadable file is.
pub(crate) async fn serve(
    path: &Path,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|_| Problem::new(Code::NotFound, format!("no object {name}")))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| Problem::new(Code::Unavailable, e.to_string()))?
        .len();
    let range = match byte_range(headers, size) {
        Ok(r) => r,
        Err(p) => {
            let mut resp = p.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let (first, last) = range.unwrap_or((0, size.saturating_sub(1)));
    let length = if size == 0 { 0 } else { last - first + 1 };
    let body = Body::from_stream(file_stream(file, first, length));
    let mut resp = if range.is_some() {
        let mut r = (StatusCode::PARTIAL_CONTENT, body).into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        r
    } else {
        (StatusCode::OK, body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.sqlite3"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\"")) {
        h.insert(header::ETAG, v);
    }
    // Content-addressed: the bytes behind a name never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(resp)
}

/// A `Range: bytes=...` header resolved against an object of `size` bytes:
/// `Ok(None)` serves the whole object (no header, or one this server ignores, as RFC
/// 9110 allows: several ranges, other units, bad syntax).
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, Problem> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let unsatisfiable = || {
        Problem::new(
            Code::RangeNotSatisfiable,
            format!("range {spec} is outside the object's {size} bytes"),
        )
        .with("size", size)
    };
    let (first, last) = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(first), Some(last)) if first <= last => (first, last.min(size.saturating_sub(1))),
        (Some(first), None) if b.is_empty() => (first, size.saturating_sub(1)),
        (None, Some(n)) if a.is_empty() => {
            if n == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        _ => return Ok(None),
    };
    if first >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((first, last)))
}

/// `length` bytes of `file` from `first`, in pieces.
fn file_stream(
    file: tokio::fs::File,
    first: u64,
    length: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    futures_util::stream::unfold(
        (file, first, length, false),
        |(mut file, pos, left, seeked)| async move {
            if left == 0 {
                return None;
            }
            if !seeked {
                if let Err(e) = file.seek(std::io::SeekFrom::Start(pos)).await {
                    return Some((Err(e), (file, pos, 0, true)));
                }
            }
            let mut buf = vec![0u8; left.min(256 << 10) as usize];
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "object shorter than its size",
                    )),
                    (file, pos, 0, true),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok(Bytes::from(buf)),
                        (file, pos + n as u64, left - n as u64, true),
                    ))
                }
                Err(e) => Some((Err(e), (file, pos, 0, true))),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, Problem> {
        let mut h = HeaderMap::new();
        if let Some(v) = v {
            h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        }
        byte_range(&h, size)
    }

    #[test]
    fn single_ranges_resolve_against_the_size() {
        assert_eq!(range(None, 10).unwrap(), None);
        assert_eq!(range(Some("bytes=2-5"), 10).unwrap(), Some((2, 5)));
        assert_eq!(range(Some("bytes=2-99"), 10).unwrap(), Some((2, 9)));
        assert_eq!(range(Some("bytes=4-"), 10).unwrap(), Some((4, 9)));
        assert_eq!(range(Some("bytes=-3"), 10).unwrap(), Some((7, 9)));
        assert_eq!(range(Some("bytes=-30"), 10).unwrap(), Some((0, 9)));
    }

    #[test]
    fn ignored_ranges_serve_the_whole_object() {
        for v in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=5-2",
            "bytes=x-",
            "bytes=3",
        ] {
            assert_eq!(range(Some(v), 10).unwrap(), None, "{v}");
        }
    }

    #[test]
    fn a_start_past_the_end_is_unsatisfiable() {
        for v in ["bytes=10-", "bytes=10-20", "bytes=-0"] {
            let p = range(Some(v), 10).unwrap_err();
            assert_eq!(p.code, Code::RangeNotSatisfiable, "{v}");
        }
    }
}
