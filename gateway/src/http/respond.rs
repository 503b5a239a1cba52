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
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::access::auth::AuthError;
use crate::access::AccessError;
use crate::decode::{DecodeError, EventError};
use crate::error::Error;
use crate::import::{ImportError, Shape};
use crate::ingest::{Answer, EventFailure, FailureKind, Outcome};
use crate::publish::PublishError;
use crate::validate::Violation;

/// The response body type of the whole server.
pub type Body = Full<Bytes>;

/// Seconds a client is asked to wait before submitting a job again when the queue is full.
pub const JOB_RETRY_AFTER_S: u64 = 30;

/// Seconds a client is asked to wait before retrying after a 503.
pub const RETRY_AFTER_S: u64 = 2;

// The status of each error lives here, beside every other status; the error and its code
// live in `crate::error`.
impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Auth(_) => StatusCode::UNAUTHORIZED,
            Error::Decode(d) => match d {
                DecodeError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
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
            Error::Import(i) => match i {
                ImportError::TooManyJobs(_) => StatusCode::SERVICE_UNAVAILABLE,
                ImportError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ImportError::TooManyRows(_) | ImportError::TooManyEvents { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ImportError::MissingColumn(_)
                | ImportError::InvalidCsv(_)
                | ImportError::InvalidMultipart(_)
                | ImportError::InvalidBody(_) => StatusCode::BAD_REQUEST,
                ImportError::JobNotFound(_) => StatusCode::NOT_FOUND,
            },
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// Every code of a whole-body [`DecodeError`] (its `Event` variant is [`EVENT_CODES`]), as
/// [`Error::code`] maps them.
pub const DECODE_CODES: &[&str] = &[
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
    "invalid_json",
    "event_too_large",
    "invalid_consent",
];

/// The codes of [`Error`]'s own variants.
pub const ROUTE_CODES: &[&str] = &["not_found", "method_not_allowed"];

/// Codes sent without an error enum behind them: written as literals by the pipeline (`ingest`)
/// (`event_type_not_allowed`, `dedup_in_flight`, `quota_exceeded`, `contract_check_failed`), the router (`not_ready`,
/// `origin_not_allowed` on a preflight) and this file (`contract_violation`,
/// `all_events_rejected`, `events_rejected`). A test scans the sources for `StatusCode::…, "code"` literals and
/// fails on one that is not listed.
pub const OTHER_CODES: &[&str] = &[
    "event_type_not_allowed",
    "dedup_in_flight",
    "quota_exceeded",
    "contract_violation",
    "contract_check_failed",
    "all_events_rejected",
    "events_rejected",
    "not_ready",
    "origin_not_allowed",
];

/// Every `code` the gateway can send, sorted: the union of the lists above and of the stage
/// enums' own lists.
pub fn all_codes() -> Vec<&'static str> {
    let mut all = [
        AuthError::CODES,
        AccessError::CODES,
        DECODE_CODES,
        EVENT_CODES,
        PUBLISH_CODES,
        ROUTE_CODES,
        OTHER_CODES,
        ImportError::CODES,
    ]
    .concat();
    all.sort_unstable();
    all.dedup();
    all
}

/// Status of a single event's rejection.
pub fn event_status(e: &EventError) -> StatusCode {
    failure_status(FailureKind::of_event_error(e))
}

fn publish_status(p: &PublishError) -> StatusCode {
    failure_status(FailureKind::of_publish_error(p))
}

/// What a failure of this kind answers, alone (a single call) or when every event of a batch
/// failed alike.
pub fn failure_status(kind: FailureKind) -> StatusCode {
    match kind {
        FailureKind::Invalid => StatusCode::BAD_REQUEST,
        FailureKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        FailureKind::NotAllowed => StatusCode::FORBIDDEN,
        FailureKind::Contract => StatusCode::UNPROCESSABLE_ENTITY,
        FailureKind::Quota => StatusCode::PAYMENT_REQUIRED,
        FailureKind::InFlight | FailureKind::SinkRetriable => StatusCode::SERVICE_UNAVAILABLE,
        FailureKind::SinkFatal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Every code [`PublishError::code`] returns.
pub const PUBLISH_CODES: &[&str] = PublishError::CODES;

pub fn publish_code(p: &PublishError) -> &'static str {
    p.code()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    violations: Option<&'a [Violation]>,
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
    match e {
        Error::MethodNotAllowed { allowed, .. } => {
            r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static(allowed));
        }
        // A full job queue drains as jobs finish: ask for a later retry, not a storm.
        Error::Import(ImportError::TooManyJobs(_)) => {
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(JOB_RETRY_AFTER_S));
        }
        _ => {}
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

/// The answer to an ingest request: its outcome or error, with the rate-limit headers.
pub fn answer(a: &Answer) -> Response<Body> {
    let mut r = match &a.result {
        Ok(outcome) if a.import.is_some() => imported(outcome, a.import.as_ref()),
        Ok(outcome) if a.batch => batch(outcome, a.no_content),
        Ok(outcome) => single(outcome, a.no_content),
        Err(e) => error(e),
    };
    rate_headers(&mut r, a.rate.as_ref());
    r
}

/// The key's standing in every window (`X-RateLimit-*`), and `Retry-After` when refused.
pub fn rate_headers(r: &mut Response<Body>, rate: Option<&crate::access::ratelimit::Decision>) {
    if let Some(rate) = rate {
        let headers = r.headers_mut();
        rate.for_each_header(|name, value| {
            headers.insert(name, HeaderValue::from(value));
        });
    }
}

/// The answer to a single call (one event).
pub fn single(outcome: &Outcome, no_content: bool) -> Response<Body> {
    match outcome.errors.first() {
        Some(f) => {
            let body =
                ErrorBody { success: false, code: f.code, message: &f.message, violations: f.violations.as_deref() };
            json_response(failure_status(f.kind), serde_json::to_vec(&body).unwrap_or_default())
        }
        None => ok(no_content),
    }
}

/// The answer to a reference-API body. `/v1/events`: 202 `{accepted, rejected, requestId,
/// eventIds, errors}` (the ids of the accepted events, in input order); `/api/client/events`:
/// 204 with no body when every event was accepted, else the indexed errors with 400 (or the
/// status a batch would get: 503 for a sink that cannot take them, 402 for the quota, …).
fn imported(outcome: &Outcome, import: Option<&(Shape, Vec<Option<String>>)>) -> Response<Body> {
    let Some((shape, ids)) = import else { return batch(outcome, false) };
    let (status, code, message) = batch_status(outcome);
    let rejected = outcome.received - outcome.succeeded();
    let (status, code, message) = match (shape, status) {
        (Shape::Client, StatusCode::OK) if rejected == 0 => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            return r;
        }
        (Shape::Client, StatusCode::OK) => (
            StatusCode::BAD_REQUEST,
            Some("events_rejected"),
            Some(format!(
                "{rejected} of {} events were rejected; see errors (the others were accepted)",
                outcome.received
            )),
        ),
        (_, StatusCode::OK) => (StatusCode::ACCEPTED, None, None),
        other => (other.1, code, message),
    };
    let body = ImportBody {
        success: status.is_success(),
        code,
        message,
        accepted: outcome.succeeded(),
        rejected,
        request_id: format!("req_{}", uuid::Uuid::new_v4().simple()),
        event_ids: ids.iter().flatten().map(String::as_str).collect(),
        errors: &outcome.errors,
    };
    json_response(status, serde_json::to_vec(&body).unwrap_or_default())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImportBody<'a> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    accepted: usize,
    rejected: usize,
    request_id: String,
    event_ids: Vec<&'a str>,
    errors: &'a [EventFailure],
}

/// The status of a batch's answer, with the code and message when it is not 200.
fn batch_status(outcome: &Outcome) -> (StatusCode, Option<&'static str>, Option<String>) {
    let succeeded = outcome.succeeded();
    if let Some(p) = outcome.publish_error.as_ref().filter(|p| p.is_retriable()) {
        // Retriable sink failure: the client must resend (events already stored are resent
        // too; messageId dedup absorbs them).
        (StatusCode::SERVICE_UNAVAILABLE, Some(publish_code(p)), Some(p.to_string()))
    } else if outcome.retry {
        let first = outcome.errors.iter().find(|f| failure_status(f.kind) == StatusCode::SERVICE_UNAVAILABLE);
        (StatusCode::SERVICE_UNAVAILABLE, first.map(|f| f.code), first.map(|f| f.message.clone()))
    } else if succeeded == 0 {
        // Nothing accepted: the status (and code) every failure shares, else 400.
        let first = outcome.errors.first();
        let shared = first.filter(|f| outcome.errors.iter().all(|e| failure_status(e.kind) == failure_status(f.kind)));
        match shared {
            Some(f) if outcome.errors.iter().all(|e| e.code == f.code) => (
                failure_status(f.kind),
                Some(f.code),
                Some(format!("all {} events were rejected: {}", outcome.received, f.message)),
            ),
            Some(f) => (
                failure_status(f.kind),
                Some("all_events_rejected"),
                Some(format!("all {} events were rejected; see errors", outcome.received)),
            ),
            None => (
                StatusCode::BAD_REQUEST,
                Some("all_events_rejected"),
                Some(format!("all {} events were rejected; see errors", outcome.received)),
            ),
        }
    } else {
        (StatusCode::OK, None, None)
    }
}

/// The answer to a batch: the summary, with a status that follows the worst outcome.
pub fn batch(outcome: &Outcome, no_content: bool) -> Response<Body> {
    let succeeded = outcome.succeeded();
    let rejected = outcome.received - succeeded;
    let (status, code, message) = batch_status(outcome);
    if status == StatusCode::OK && no_content && rejected == 0 {
        return ok(true);
    }
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

#[cfg(test)]
mod tests;
