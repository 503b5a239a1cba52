//! The request path's error: one enum joining each stage's own (auth, decode, access, publish)
//! and the router's, with the stable `code` of each.
//!
//! Owns: which failures end a request, and their snake_case codes (the error body's `code` and
//! a metric label). Must not: know HTTP statuses — `http::respond` maps an [`Error`] to one.

use crate::access::auth::AuthError;
use crate::access::AccessError;
use crate::decode::DecodeError;
use crate::import::ImportError;
use crate::publish::PublishError;

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
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed { method: String, path: String, allowed: &'static str },
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::Auth(a) => a.code(),
            Error::Decode(d) => match d {
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
            Error::Publish(p) => p.code(),
            Error::Import(i) => i.code(),
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }
}
