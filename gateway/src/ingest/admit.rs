//! Admission: the write key of a request (from the head, else from the body), its origin and
//! rate checks, and the per-IP window of requests whose key did not resolve.
//!
//! Owns: the order of those checks and the rate decision kept for the `X-RateLimit-*` headers.
//! Must not: hold the rules themselves (auth resolves keys, access decides origins and rates).

use std::net::IpAddr;

use crate::access::auth::{self, AuthError, Credential};
use crate::access::ratelimit::Decision;
use crate::access::{self, AccessError};
use crate::decode::Body as Payload;
use crate::error::Error;

use super::state::{AppState, Runtime};

/// The credential of a key given in the request head, if one was: checked (and rate-limited,
/// by the caller) before a byte of the body is read.
pub(super) fn head_credential(rt: &Runtime, parts: &http::request::Parts) -> Result<Option<Credential>, Error> {
    match auth::key_from_head(parts)? {
        Some(key) => Ok(Some(rt.keys.resolve(&key)?)),
        None => Ok(None),
    }
}

/// The credential of the body's `writeKey`, admitted.
pub(super) fn body_credential(
    state: &AppState,
    rt: &Runtime,
    payload: &Payload<'_>,
    origin: Option<&str>,
    ip: IpAddr,
    rate: &mut Option<Decision>,
) -> Result<Credential, Error> {
    let key = payload.write_key().ok_or(AuthError::Missing)?;
    let cred = rt.keys.resolve(&key)?;
    admit(state, rt, &cred, origin, ip, rate)?;
    Ok(cred)
}

/// Origin and request-rate checks of a resolved key; the decision is kept for the headers.
pub(super) fn admit(
    state: &AppState,
    rt: &Runtime,
    cred: &Credential,
    origin: Option<&str>,
    ip: IpAddr,
    rate: &mut Option<Decision>,
) -> Result<(), Error> {
    let key = cred.key().ok_or(AuthError::Invalid)?;
    access::check_origin(key, origin)?;
    let decision = state.access.check_rate(key, ip, rt.config.per_ip_limit.as_ref());
    let result = decision.result();
    if let (Err(_), Some(w)) = (&result, decision.limited_by) {
        state.metrics.rate_limited.with_label_values(&[&cred.source.id, w.as_str()]).inc();
    }
    *rate = Some(decision);
    result.map_err(|e| Error::Access(AccessError::RateLimited(e)))
}

/// The per-IP window of a request whose key did not resolve: `Err` with the 429 to answer.
///
/// A request without a usable key is still a request from its IP: counting it means floods of
/// bad keys are limited too, and a limited client learns it with 429 instead of probing keys
/// at full speed.
pub(super) fn keyless(state: &AppState, rt: &Runtime, ip: IpAddr, rate: &mut Option<Decision>) -> Result<(), Error> {
    let decision = state.access.check_ip(ip, rt.config.per_ip_limit.as_ref());
    let result = decision.result();
    if result.is_err() {
        state.metrics.rate_limited.with_label_values(&["unknown", "ip"]).inc();
    }
    *rate = Some(decision);
    result.map_err(|e| Error::Access(AccessError::RateLimited(e)))
}
