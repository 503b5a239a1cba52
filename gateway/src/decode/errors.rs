//! Decode's errors: [`DecodeError`] refuses a whole request body, [`EventError`] one event,
//! and [`Unfit`] says why forwarded JSON is refused.
//!
//! Owns: the messages and the stable snake_case codes of events (`EventError::code`). Must
//! not: choose HTTP statuses (`respond` maps these) or run any check itself.

use std::fmt;

use super::MAX_DEPTH;

/// Why a whole request body was refused. `respond` maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("content encoding '{0}' is not supported; send gzip or no encoding")]
    UnsupportedEncoding(String),
    #[error("{what} exceeds the limit of {limit} bytes")]
    PayloadTooLarge { what: &'static str, limit: usize },
    #[error("batch has {count} events; the limit is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    #[error("the body is not valid gzip: {0}")]
    InvalidGzip(String),
    #[error("malformed JSON at byte {offset}: {detail}")]
    InvalidJson { offset: usize, detail: String },
    #[error("{0}")]
    InvalidBody(&'static str),
    /// A single-call request whose one event failed its checks.
    #[error(transparent)]
    Event(#[from] EventError),
}

impl DecodeError {
    /// Names the request's `Content-Type` in the message of a body that is not JSON, so that a
    /// client sending form data or a file learns why (every ingest body is read as JSON).
    /// Other errors are returned as they are.
    pub fn sent_as(self, content_type: Option<&str>) -> Self {
        match self {
            DecodeError::InvalidJson { offset, detail } => {
                let sent = match content_type {
                    Some(ct) => format!("Content-Type '{ct}'"),
                    None => "no Content-Type".to_string(),
                };
                let detail =
                    format!("{detail} (the body came with {sent}; every body is read as JSON, whatever its type)");
                DecodeError::InvalidJson { offset, detail }
            }
            other => other,
        }
    }
}

/// Why one event was refused. In a batch this becomes an entry of `errors`; on a single-call
/// path it is the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("{0}")]
    InvalidType(String),
    #[error("userId or anonymousId is required (a non-empty string or a number)")]
    MissingIdentity,
    #[error("a track call needs a non-empty 'event' name")]
    MissingEvent,
    #[error("a group call needs a 'groupId'")]
    MissingGroupId,
    #[error("an alias call needs a 'previousId'")]
    MissingPreviousId,
    #[error("an alias call needs a 'userId'")]
    MissingUserId,
    #[error("field '{field}' {expected}")]
    InvalidField { field: &'static str, expected: &'static str },
    #[error("'{field}' is not an ISO 8601 date-time with an offset (e.g. 2025-03-15T14:30:00.000Z)")]
    InvalidTimestamp { field: &'static str },
    /// JSON the gateway does not forward: nested deeper than [`MAX_DEPTH`], or a `\u` escape
    /// of half a surrogate pair (which no UTF-8 reader can decode).
    #[error("'{member}' {reason}")]
    InvalidJson { member: String, reason: Unfit },
    #[error("event is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("context.consent: {0}")]
    InvalidConsent(String),
}

impl EventError {
    /// The stable snake_case code of this error (also a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            EventError::NotAnObject => "invalid_event",
            EventError::InvalidType(_) => "invalid_type",
            EventError::MissingIdentity => "missing_identity",
            EventError::MissingEvent => "missing_event",
            EventError::MissingGroupId => "missing_group_id",
            EventError::MissingPreviousId => "missing_previous_id",
            EventError::MissingUserId => "missing_user_id",
            EventError::InvalidField { .. } => "invalid_field",
            EventError::InvalidTimestamp { .. } => "invalid_timestamp",
            // The same code as a body serde_json refuses for the same reasons (too deep, lone
            // surrogate): only where it sits differs.
            EventError::InvalidJson { .. } => "invalid_json",
            EventError::TooLarge { .. } => "event_too_large",
            EventError::InvalidConsent(_) => "invalid_consent",
        }
    }
}

/// Why JSON text is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    TooDeep,
    LoneSurrogate,
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::TooDeep => write!(f, "is nested more than {MAX_DEPTH} levels deep (counting the event itself)"),
            Unfit::LoneSurrogate => f.write_str(
                "holds a \\u escape of half a UTF-16 surrogate pair; send the pair, or the character itself",
            ),
        }
    }
}
