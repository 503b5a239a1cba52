//! Respond: the one place that turns errors and outcomes into an HTTP status and a JSON body.
//!
//! Owns: every status code the gateway sends, the `{"success":false,"code","message"}` error
//! body, the batch summary body, `Retry-After`, and the CORS headers of ingest answers.
//! Must not: decide *whether* something failed — the stages do; this only says how it looks.
//!
//! The `code` strings form a closed set (they double as metric labels). [`all_codes`] derives it
//! from one list per error enum (`AuthError::CODES`, `AccessError::CODES`, [`DECODE_CODES`],
//! [`EVENT_CODES`], [`PUBLISH_CODES`], …), each kept next to the `code()` it describes and checked
//! against it by a test; a test here holds the whole set against the README's list of codes.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::access::AccessError;
use crate::auth::AuthError;
use crate::decode::{DecodeError, EventError, EventType};
use crate::publish::PublishError;
use crate::validate::Violation;

/// The response body type of the whole server.
pub type Body = Full<Bytes>;

/// Seconds a client is asked to wait before retrying after a 503.
pub const RETRY_AFTER_S: u64 = 2;

/// Everything that can end a request with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed { method: String, path: String, allowed: &'static str },
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Auth(_) => StatusCode::UNAUTHORIZED,
            Error::Decode(d) => match d {
                DecodeError::UnsupportedMediaType(_) | DecodeError::UnsupportedEncoding(_) => {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                }
                DecodeError::PayloadTooLarge { .. } | DecodeError::TooManyEvents { .. } => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                DecodeError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
                DecodeError::BodyRead(_)
                | DecodeError::InvalidGzip(_)
                | DecodeError::InvalidJson { .. }
                | DecodeError::InvalidBody(_) => StatusCode::BAD_REQUEST,
                DecodeError::Event(e) => event_status(e),
            },
            Error::Access(a) => match a {
                AccessError::OriginNotAllowed(_) | AccessError::SecretKeyRequired => StatusCode::FORBIDDEN,
                AccessError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                AccessError::QuotaExceeded => StatusCode::PAYMENT_REQUIRED,
            },
            Error::Publish(p) => publish_status(p),
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::Auth(a) => a.code(),
            Error::Decode(d) => match d {
                DecodeError::UnsupportedMediaType(_) => "unsupported_media_type",
                DecodeError::UnsupportedEncoding(_) => "unsupported_encoding",
                DecodeError::PayloadTooLarge { .. } | DecodeError::TooManyEvents { .. } => "payload_too_large",
                DecodeError::BodyTimeout(_) => "request_timeout",
                DecodeError::BodyRead(_) => "body_read_failed",
                DecodeError::InvalidGzip(_) => "invalid_gzip",
                DecodeError::InvalidJson { .. } => "invalid_json",
                DecodeError::InvalidBody(_) => "invalid_body",
                DecodeError::Event(e) => e.code(),
            },
            Error::Access(a) => a.code(),
            Error::Publish(p) => publish_code(p),
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }
}

/// Every code of a whole-body [`DecodeError`] (its `Event` variant is [`EVENT_CODES`]), as
/// [`Error::code`] maps them.
pub const DECODE_CODES: &[&str] = &[
    "unsupported_media_type",
    "unsupported_encoding",
    "payload_too_large",
    "request_timeout",
    "body_read_failed",
    "invalid_gzip",
    "invalid_json",
    "invalid_body",
];

/// Every code [`EventError::code`] returns (in `decode`, which owns the enum). A new variant
/// there fails to compile the sample list of this file's tests until it is added to it; its
/// code then goes here and into the README.
pub const EVENT_CODES: &[&str] = &[
    "invalid_event",
    "invalid_type",
    "missing_identity",
    "missing_event",
    "missing_group_id",
    "missing_previous_id",
    "missing_user_id",
    "invalid_field",
    "invalid_timestamp",
    "event_too_large",
    "invalid_consent",
];

/// The codes of [`Error`]'s own variants.
pub const ROUTE_CODES: &[&str] = &["not_found", "method_not_allowed"];

/// Codes sent without an error enum behind them: written as literals by the handler
/// (`event_type_not_allowed`, `dedup_in_flight`, `quota_exceeded`, `contract_check_failed`), the router (`not_ready`,
/// `origin_not_allowed` on a preflight) and this file (`contract_violation`,
/// `all_events_rejected`). A test scans the sources for `StatusCode::…, "code"` literals and
/// fails on one that is not listed.
pub const OTHER_CODES: &[&str] = &[
    "event_type_not_allowed",
    "dedup_in_flight",
    "quota_exceeded",
    "contract_violation",
    "contract_check_failed",
    "all_events_rejected",
    "not_ready",
    "origin_not_allowed",
];

/// Every `code` the gateway can send, sorted: the union of the lists above and of the stage
/// enums' own lists.
pub fn all_codes() -> Vec<&'static str> {
    let mut all =
        [AuthError::CODES, AccessError::CODES, DECODE_CODES, EVENT_CODES, PUBLISH_CODES, ROUTE_CODES, OTHER_CODES]
            .concat();
    all.sort_unstable();
    all.dedup();
    all
}

/// Status of a single event's rejection.
pub fn event_status(e: &EventError) -> StatusCode {
    match e {
        EventError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn publish_status(p: &PublishError) -> StatusCode {
    match p {
        PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        PublishError::Fatal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Every code [`publish_code`] returns.
pub const PUBLISH_CODES: &[&str] = &["event_too_large", "publish_failed", "publish_timeout", "publish_unavailable"];

pub fn publish_code(p: &PublishError) -> &'static str {
    match p {
        PublishError::TooLarge { .. } => "event_too_large",
        PublishError::Fatal(_) => "publish_failed",
        PublishError::Timeout => "publish_timeout",
        PublishError::QueueFull | PublishError::Unavailable(_) | PublishError::ShuttingDown => "publish_unavailable",
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<&'a [Violation]>,
}

/// One rejected event of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct EventFailure {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
    /// What this failure alone would answer (the status of a single call).
    #[serde(skip)]
    pub status: StatusCode,
    /// Field-level reasons of a `contract_violation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<Violation>>,
    /// The event's call type when it is known (a metric label; not sent).
    #[serde(skip)]
    pub event_type: Option<EventType>,
}

/// What happened to the events of one request. `accepted` counts events published, answered
/// as duplicates, or dropped by consent policy: the client did nothing wrong with any of them.
#[derive(Debug, Default)]
pub struct Outcome {
    pub received: usize,
    pub accepted: usize,
    /// Of `accepted`: already published (same messageId), not published again.
    pub duplicates: usize,
    /// Of `accepted`: not published because the source requires consent they lack.
    pub consent_dropped: usize,
    pub errors: Vec<EventFailure>,
    /// The worst publish failure, if any event failed at the sink.
    pub publish_error: Option<PublishError>,
    /// Whether any event failed its own checks (as opposed to the sink failing).
    pub any_invalid: bool,
    /// Whether a failure asks the client to retry (besides sink failures).
    pub retry: bool,
}

impl Outcome {
    /// Records an event refused by a check (bad input, not allowed, over quota…).
    pub fn reject(
        &mut self,
        index: usize,
        event_type: Option<EventType>,
        status: StatusCode,
        code: &'static str,
        message: String,
    ) {
        self.any_invalid |= !status.is_server_error();
        self.errors.push(EventFailure { index, code, message, status, violations: None, event_type });
    }

    /// Records an event blocked by its tracking plan (422 `contract_violation`).
    pub fn reject_with_violations(
        &mut self,
        index: usize,
        event_type: EventType,
        message: String,
        violations: Vec<Violation>,
    ) {
        self.any_invalid = true;
        self.errors.push(EventFailure {
            index,
            code: "contract_violation",
            message,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            violations: Some(violations),
            event_type: Some(event_type),
        });
    }

    /// Events answered success: published, duplicates, consent-dropped.
    fn succeeded(&self) -> usize {
        self.accepted + self.duplicates + self.consent_dropped
    }

    /// Records a publish failure, keeping the one that matters most for the status: a
    /// retriable failure wins, so that SDKs retry the request.
    pub fn add_publish_failure(&mut self, index: usize, event_type: EventType, e: PublishError) {
        self.errors.push(EventFailure {
            index,
            code: publish_code(&e),
            message: e.to_string(),
            status: publish_status(&e),
            violations: None,
            event_type: Some(event_type),
        });
        let replace = match &self.publish_error {
            None => true,
            Some(prev) => !prev.is_retriable() && e.is_retriable(),
        };
        if replace {
            self.publish_error = Some(e);
        }
    }
}

#[derive(Serialize)]
struct BatchBody<'a> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    received: usize,
    accepted: usize,
    rejected: usize,
    duplicates: usize,
    consent_dropped: usize,
    errors: &'a [EventFailure],
}

/// A JSON answer (`Retry-After` is added to every 503).
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    r
}

/// `{"success":false,"code":…,"message":…}` with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody { success: false, code, message, violations: None }).unwrap_or_default();
    json_response(status, body)
}

/// The answer to an error.
pub fn error(e: &Error) -> Response<Body> {
    let mut r = error_response(e.status(), e.code(), &e.to_string());
    if let Error::MethodNotAllowed { allowed, .. } = e {
        r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allowed));
    }
    r
}

/// `{"success":true}`, or 204 for a beacon that asked for no body.
pub fn ok(no_content: bool) -> Response<Body> {
    if no_content {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NO_CONTENT;
        return r;
    }
    json_response(StatusCode::OK, br#"{"success":true}"#.to_vec())
}

/// The answer to a single call (one event).
pub fn single(outcome: &Outcome, no_content: bool) -> Response<Body> {
    match outcome.errors.first() {
        Some(f) => {
            let body =
                ErrorBody { success: false, code: f.code, message: &f.message, violations: f.violations.as_deref() };
            json_response(f.status, serde_json::to_vec(&body).unwrap_or_default())
        }
        None => ok(no_content),
    }
}

/// The answer to a batch: the summary, with a status that follows the worst outcome.
pub fn batch(outcome: &Outcome, no_content: bool) -> Response<Body> {
    let succeeded = outcome.succeeded();
    let rejected = outcome.received - succeeded;
    let (status, code, message) = if let Some(p) = outcome.publish_error.as_ref().filter(|p| p.is_retriable()) {
        // Retriable sink failure: the client must resend (events already stored are resent
        // too; messageId dedup absorbs them).
        (StatusCode::SERVICE_UNAVAILABLE, Some(publish_code(p)), Some(p.to_string()))
    } else if outcome.retry {
        let first = outcome.errors.iter().find(|f| f.status == StatusCode::SERVICE_UNAVAILABLE);
        (StatusCode::SERVICE_UNAVAILABLE, first.map(|f| f.code), first.map(|f| f.message.clone()))
    } else if succeeded == 0 {
        // Nothing accepted: the status (and code) every failure shares, else 400.
        let first = outcome.errors.first();
        let shared = first.filter(|f| outcome.errors.iter().all(|e| e.status == f.status));
        match shared {
            Some(f) if outcome.errors.iter().all(|e| e.code == f.code) => {
                (f.status, Some(f.code), Some(format!("all {} events were rejected: {}", outcome.received, f.message)))
            }
            Some(f) => (
                f.status,
                Some("all_events_rejected"),
                Some(format!("all {} events were rejected; see errors", outcome.received)),
            ),
            None => (
                StatusCode::BAD_REQUEST,
                Some("all_events_rejected"),
                Some(format!("all {} events were rejected; see errors", outcome.received)),
            ),
        }
    } else if no_content && rejected == 0 {
        return ok(true);
    } else {
        (StatusCode::OK, None, None)
    };
    let body = BatchBody {
        success: status == StatusCode::OK,
        code,
        message,
        received: outcome.received,
        accepted: succeeded,
        rejected,
        duplicates: outcome.duplicates,
        consent_dropped: outcome.consent_dropped,
        errors: &outcome.errors,
    };
    json_response(status, serde_json::to_vec(&body).unwrap_or_default())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;
    use std::path::Path;

    /// One value of every variant of the enums whose codes this file lists. The matches have
    /// no `_` arm: a new variant does not compile until it is named there and added to `all`.
    fn event_samples() -> Vec<EventError> {
        use EventError::*;
        let all = vec![
            NotAnObject,
            InvalidType("x".into()),
            MissingIdentity,
            MissingEvent,
            MissingGroupId,
            MissingPreviousId,
            MissingUserId,
            InvalidField { field: "context", expected: "must be an object" },
            InvalidTimestamp { field: "timestamp" },
            TooLarge { size: 2, limit: 1 },
            InvalidConsent("x".into()),
        ];
        all.iter().for_each(|e| match e {
            NotAnObject
            | InvalidType(_)
            | MissingIdentity
            | MissingEvent
            | MissingGroupId
            | MissingPreviousId
            | MissingUserId
            | InvalidField { .. }
            | InvalidTimestamp { .. }
            | TooLarge { .. }
            | InvalidConsent(_) => {}
        });
        all
    }

    /// Every whole-body variant of [`DecodeError`] (not `Event`: see [`event_samples`]).
    fn decode_samples() -> Vec<DecodeError> {
        use DecodeError::*;
        let all = vec![
            UnsupportedMediaType("x".into()),
            UnsupportedEncoding("br".into()),
            PayloadTooLarge { what: "request body", limit: 1 },
            TooManyEvents { count: 2, limit: 1 },
            BodyTimeout(1),
            BodyRead("x".into()),
            InvalidGzip("x".into()),
            InvalidJson { offset: 1, detail: "x".into() },
            InvalidBody("x"),
        ];
        all.iter().for_each(|e| match e {
            UnsupportedMediaType(_)
            | UnsupportedEncoding(_)
            | PayloadTooLarge { .. }
            | TooManyEvents { .. }
            | BodyTimeout(_)
            | BodyRead(_)
            | InvalidGzip(_)
            | InvalidJson { .. }
            | InvalidBody(_) => {}
            Event(_) => unreachable!("event errors are in event_samples"),
        });
        all
    }

    fn publish_samples() -> Vec<PublishError> {
        use PublishError::*;
        let all = vec![
            QueueFull,
            Timeout,
            Unavailable("x".into()),
            Fatal("x".into()),
            TooLarge { size: 2, limit: 1 },
            ShuttingDown,
        ];
        all.iter().for_each(|e| match e {
            QueueFull | Timeout | Unavailable(_) | Fatal(_) | TooLarge { .. } | ShuttingDown => {}
        });
        all
    }

    /// Every [`Error`] the request path can end with, one per variant of every stage enum.
    fn error_samples() -> Vec<Error> {
        let mut all: Vec<Error> = Vec::new();
        all.extend(AuthError::samples().into_iter().map(Error::Auth));
        all.extend(decode_samples().into_iter().map(Error::Decode));
        all.extend(event_samples().into_iter().map(|e| Error::Decode(DecodeError::Event(e))));
        all.extend(AccessError::samples().into_iter().map(Error::Access));
        all.extend(publish_samples().into_iter().map(Error::Publish));
        all.push(Error::NotFound("/x".into()));
        all.push(Error::MethodNotAllowed { method: "GET".into(), path: "/v1/t".into(), allowed: "POST, OPTIONS" });
        all.iter().for_each(|e| match e {
            Error::Auth(_)
            | Error::Decode(_)
            | Error::Access(_)
            | Error::Publish(_)
            | Error::NotFound(_)
            | Error::MethodNotAllowed { .. } => {}
        });
        all
    }

    fn set<'a>(codes: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
        codes.into_iter().collect()
    }

    #[test]
    fn each_code_list_is_what_its_mapping_returns() {
        assert_eq!(set(event_samples().iter().map(EventError::code)), set(EVENT_CODES.iter().copied()));
        let whole_body = decode_samples().into_iter().map(|d| Error::Decode(d).code()).collect::<Vec<_>>();
        assert_eq!(set(whole_body), set(DECODE_CODES.iter().copied()));
        assert_eq!(set(publish_samples().iter().map(publish_code)), set(PUBLISH_CODES.iter().copied()));
        let own = [Error::NotFound("/x".into()), error_samples().pop().unwrap()];
        assert_eq!(set(own.iter().map(Error::code)), set(ROUTE_CODES.iter().copied()));
        // What respond sends for every error and every per-event failure is in the set.
        let all = all_codes();
        for e in error_samples() {
            assert!(all.contains(&e.code()), "{} ({e:?}) is not in all_codes()", e.code());
        }
        let mut o = Outcome::default();
        for (i, p) in publish_samples().into_iter().enumerate() {
            o.add_publish_failure(i, EventType::Track, p);
        }
        for f in &o.errors {
            assert!(all.contains(&f.code), "{} is not in all_codes()", f.code);
        }
        for c in &all {
            assert!(!c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{c} is not snake_case");
        }
    }

    /// The backquoted snake_case words of `text`.
    fn backquoted(text: &str) -> impl Iterator<Item = &str> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    }

    /// The codes the README documents: in its "Answers" section, the `code` column of the table
    /// and the "Event codes:" sentence.
    fn documented_codes() -> BTreeSet<&'static str> {
        let readme = include_str!("../../README.md");
        let start = readme.find("### Answers").expect("README has an \"### Answers\" section");
        let section = &readme[start..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let lines: Vec<&str> = section.lines().collect();
        let mut out = BTreeSet::new();
        for (i, line) in lines.iter().enumerate() {
            let header = lines.get(i + 1).is_some_and(|next| next.starts_with("|-") || next.starts_with("| -"));
            if line.starts_with('|') && !header {
                out.extend(line.split('|').nth(2).into_iter().flat_map(backquoted));
            }
        }
        let events = section.find("Event codes:").expect("README lists the \"Event codes:\"");
        let sentence = &section[events..];
        let sentence = &sentence[..sentence.find(". ").unwrap_or(sentence.len())];
        out.extend(backquoted(sentence));
        out
    }

    #[test]
    fn every_code_is_documented_in_the_readme_and_nothing_else_is() {
        let documented = documented_codes();
        let all = set(all_codes());
        let undocumented: Vec<_> = all.difference(&documented).collect();
        assert!(undocumented.is_empty(), "codes missing from the README's Answers section: {undocumented:?}");
        let unknown: Vec<_> = documented.difference(&all).collect();
        assert!(unknown.is_empty(), "the README documents codes the gateway does not send: {unknown:?}");
    }

    /// `"code"` literals right after a `StatusCode::NAME,` in the `.rs` files under `dir`.
    fn literal_codes(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                literal_codes(&path, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut rest = text.as_str();
            while let Some(i) = rest.find("StatusCode::") {
                rest = &rest[i + "StatusCode::".len()..];
                let after = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
                let Some(arg) = after.strip_prefix(',').map(str::trim_start).and_then(|a| a.strip_prefix('"')) else {
                    continue;
                };
                if let Some(end) = arg.find('"') {
                    out.push((path.display().to_string(), arg[..end].to_string()));
                }
            }
        }
    }

    #[test]
    fn codes_written_as_literals_in_the_sources_are_listed() {
        let mut found = Vec::new();
        literal_codes(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
        // The handler and the router write some codes as literals today; if they stop, drop this.
        assert!(!found.is_empty(), "the scan found no `StatusCode::…, \"code\"` literal at all");
        let all = all_codes();
        for (file, code) in &found {
            assert!(all.contains(&code.as_str()), "{file}: code {code:?} is not in respond's lists");
        }
    }

    #[test]
    fn retriable_publish_failure_wins() {
        let mut o = Outcome { received: 3, accepted: 1, ..Default::default() };
        assert_eq!(batch(&o, false).status(), StatusCode::OK);
        o.add_publish_failure(1, EventType::Track, PublishError::Fatal("auth".into()));
        o.add_publish_failure(2, EventType::Track, PublishError::Timeout);
        let r = batch(&o, false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "2");
        let mut o = Outcome { received: 2, accepted: 0, ..Default::default() };
        o.add_publish_failure(0, EventType::Track, PublishError::Fatal("auth".into()));
        o.add_publish_failure(1, EventType::Track, PublishError::Fatal("auth".into()));
        assert_eq!(batch(&o, false).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
