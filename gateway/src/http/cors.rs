//! CORS: the headers of ingest answers and the preflight answer.
//!
//! Owns: which origin is reflected, which headers a browser may send and read, the preflight's
//! max-age. Must not: decide which origins are allowed (access does, per key).

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;

use super::respond::Body;

/// Adds the CORS headers of an ingest answer: the caller's origin is reflected (with
/// credentials, which `*` would not allow).
pub fn add_cors(headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
    if let Some(o) = origin {
        headers.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        headers.insert(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    }
    headers.append(http::header::VARY, HeaderValue::from_static("Origin"));
}

/// Response headers a browser script may read: rate-limit standing, `Retry-After`, request id.
pub const EXPOSE_HEADERS: &str = "Retry-After, X-Request-Id, X-RateLimit-Limit, X-RateLimit-Remaining, \
X-RateLimit-Reset, X-RateLimit-Limit-short, X-RateLimit-Remaining-short, X-RateLimit-Reset-short, \
X-RateLimit-Limit-medium, X-RateLimit-Remaining-medium, X-RateLimit-Reset-medium";

/// Headers a browser may send on ingest calls: ours plus common tracing headers (a preflight
/// that refuses `baggage` or `sentry-trace` silently loses a page's events).
pub const ALLOWED_HEADERS: &str =
    "Content-Type, Content-Encoding, Authorization, X-Write-Key, baggage, sentry-trace, traceparent, tracestate";

/// The answer to a CORS preflight.
pub fn preflight(origin: Option<&HeaderValue>, max_age_s: u64) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    add_cors(h, origin);
    h.insert(http::header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    h.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
    h.insert(http::header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age_s));
    r
}
