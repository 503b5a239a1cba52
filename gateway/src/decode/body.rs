//! The request body: the content-encoding rule, the size caps ([`Limits`]), reading the body
//! and inflating gzip.
//!
//! Every ingest body is read as JSON whatever its `Content-Type`: real SDKs post JSON as
//! `application/x-www-form-urlencoded` (their HTTP library's default), `application/octet-stream`,
//! `text/plain` (sendBeacon, a CORS-simple type) or with none at all, and a 415 would lose every
//! event they send. The type only appears in the message of a body that is not JSON
//! ([`DecodeError::sent_as`]). A `Content-Encoding` we cannot decode stays a 415.
//!
//! Owns: the caps, enforced while the body streams and again while gzip inflates, so a bomb
//! cannot make us allocate past the cap. Must not: parse JSON (see `parse`) or look at events.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};

use super::DecodeError;

/// Request size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
}

/// Checks the headers before a byte of the body is read.
pub fn check_headers(headers: &HeaderMap, limits: &Limits) -> Result<Encoding, DecodeError> {
    let encoding = match headers.get(http::header::CONTENT_ENCODING) {
        None => Encoding::Identity,
        Some(v) => {
            let v = v.to_str().unwrap_or("").trim();
            if v.is_empty() || v.eq_ignore_ascii_case("identity") {
                Encoding::Identity
            } else if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
                Encoding::Gzip
            } else {
                return Err(DecodeError::UnsupportedEncoding(truncate(v, 32)));
            }
        }
    };
    // Refuse at once when the client announces a body over the cap.
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        if let Ok(len) = len.trim().parse::<u64>() {
            if len > limits.max_request_bytes as u64 {
                return Err(DecodeError::PayloadTooLarge { what: "request body", limit: limits.max_request_bytes });
            }
        }
    }
    Ok(encoding)
}

/// The request's `Content-Type` as a message may quote it: at most 64 characters, `None`
/// when there is none (or it is not visible ASCII).
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?.trim();
    Some(truncate(ct, 64))
}

/// The body's content encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Reads the body, never buffering more than the cap, then inflates gzip under the same cap.
pub async fn read_body<B>(body: B, encoding: Encoding, limits: &Limits, timeout: Duration) -> Result<Bytes, DecodeError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limited = Limited::new(body, limits.max_request_bytes);
    let collected = match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => return Err(DecodeError::BodyTimeout(timeout.as_millis() as u64)),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return Err(DecodeError::PayloadTooLarge { what: "request body", limit: limits.max_request_bytes });
            }
            return Err(DecodeError::BodyRead(e.to_string()));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    match encoding {
        Encoding::Identity => Ok(collected),
        Encoding::Gzip => inflate_capped(&collected, limits.max_request_bytes).map(Bytes::from),
    }
}

/// Inflates gzip (all members) into a buffer whose capacity never exceeds `cap + 1` bytes.
pub fn inflate_capped(compressed: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 4).min(cap + 1));
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) => return Err(DecodeError::InvalidGzip(e.to_string())),
        };
        if out.len() + n > cap {
            return Err(DecodeError::PayloadTooLarge { what: "inflated request body", limit: cap });
        }
        if out.len() + n > out.capacity() {
            // Grow by doubling, but never past the cap: `reserve_exact` keeps the promise that
            // a bomb cannot make us allocate more than the limit.
            let want = (out.capacity() * 2).max(out.len() + n).min(cap + 1);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_bomb_stops_at_the_cap() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap(); // 64 MiB of zeros in ≈64 KiB
        assert!(bomb.len() < 100 * 1024);
        let err = inflate_capped(&bomb, 500 * 1024).unwrap_err();
        assert!(matches!(err, DecodeError::PayloadTooLarge { .. }), "{err:?}");
        // Under the cap it inflates exactly.
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"a\":1}").unwrap();
        assert_eq!(inflate_capped(&enc.finish().unwrap(), 100).unwrap(), b"{\"a\":1}");
        // Right at the cap: it inflates, and the buffer never grew past cap + 1.
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'x'; 100_000]).unwrap();
        let out = inflate_capped(&enc.finish().unwrap(), 100_000).unwrap();
        assert_eq!(out.len(), 100_000);
        assert!(out.capacity() <= 100_001, "capacity {}", out.capacity());
        assert!(matches!(inflate_capped(b"not gzip", 100), Err(DecodeError::InvalidGzip(_))));
    }
}
