//! The `context` of a normalised event: the client IP added or passed through the source's IP
//! policy, `consent` replaced by its normalised form, and a batch's `context`/`integrations`
//! merged into a call's.
//!
//! Owns: the member-by-member rewrite and the searches that rule most contexts out before it.
//! Must not: decode consent strings (consent does) or decide what else an event holds.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;
use serde_json::value::RawValue;

use crate::consent::Consent;

use super::members::{name_text, object_members};
use super::normalise::{write_json_str, RequestContext};
use super::parse::opt_str;
use super::EventError;

/// Writes `context` member by member: `ip` (the client's, else the peer's) passed through the
/// source's IP policy and `consent` replaced by its normalised form with derived `categories`,
/// each in the place of the client's member (the first one, when a name is repeated: a record
/// never has a duplicate key), else at the end; `ip` is left out when the policy removes it.
pub(super) fn write_context_rewritten(
    out: &mut Vec<u8>,
    context: Option<&str>,
    consent: Option<&Consent>,
    cx: &RequestContext<'_>,
) -> Result<(), EventError> {
    let members = || context.map(object_members).into_iter().flatten();
    // The client's IP is its last `ip` member (as JSON readers take it), unless that is null.
    let mut client_ip: Option<Cow<'_, str>> = None;
    for (_, v) in members().filter(|(k, _)| name_text(k) == "ip") {
        client_ip = opt_str(serde_json::from_str::<&RawValue>(v).ok())
            .map_err(|_| EventError::InvalidField { field: "context.ip", expected: "must be a string" })?;
    }
    let ip = cx.consent.ip.apply(client_ip.as_deref().unwrap_or(cx.client_ip));
    let consent_json = consent.map(Consent::consent_object_json);
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    let (mut ip_done, mut consent_done) = (false, false);
    for (k, v) in members() {
        match &*name_text(k) {
            "ip" => {
                if let (false, Some(ip)) = (std::mem::replace(&mut ip_done, true), &ip) {
                    sep(out);
                    out.extend_from_slice(b"\"ip\":");
                    write_json_str(out, ip);
                }
            }
            "consent" if consent_json.is_some() => {
                if let (false, Some(c)) = (std::mem::replace(&mut consent_done, true), &consent_json) {
                    sep(out);
                    out.extend_from_slice(b"\"consent\":");
                    out.extend_from_slice(c.as_bytes());
                }
            }
            _ => {
                sep(out);
                out.push(b'"');
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
    if let (false, Some(c)) = (consent_done, &consent_json) {
        sep(out);
        out.extend_from_slice(b"\"consent\":");
        out.extend_from_slice(c.as_bytes());
    }
    if let (false, Some(ip)) = (ip_done, &ip) {
        sep(out);
        out.extend_from_slice(b"\"ip\":");
        write_json_str(out, ip);
    }
    out.push(b'}');
    Ok(())
}

/// `own` with the members of `shared` it does not have (by unescaped name), appended in
/// `shared`'s order: how a batch's `context` and `integrations` apply to each call. Both are
/// JSON objects.
pub(super) fn merge_objects(own: &str, shared: &str) -> String {
    let names: Vec<Cow<'_, str>> = object_members(own).map(|(k, _)| name_text(k)).collect();
    let own = own.trim_end();
    let body = own[..own.len() - 1].trim_end();
    let mut out = String::with_capacity(own.len() + shared.len());
    out.push_str(body);
    let mut empty = object_members(own).next().is_none();
    for (k, v) in object_members(shared) {
        if names.iter().any(|n| *n == name_text(k)) {
            continue;
        }
        if !std::mem::take(&mut empty) {
            out.push(',');
        }
        out.push('"');
        out.push_str(k);
        out.push_str("\":");
        out.push_str(v);
    }
    out.push('}');
    out
}

/// Substring searches for `"ip"` and `"consent"`, which rule most contexts out before a scan of
/// their members. Built once: building a searcher costs more than most searches.
pub(super) static FIND_IP: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"ip\""));
pub(super) static FIND_CONSENT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"consent\""));

/// The value of member `name` of the object `obj` (the last one when it is repeated, as JSON
/// readers take it), unless it is `null`. Without escapes in `obj` (`!escaped`), `quoted` (a
/// search for the name in quotes) rules most objects out before a scan of the members.
pub(super) fn member_value<'o>(
    obj: &'o str,
    name: &str,
    quoted: &memmem::Finder<'_>,
    escaped: bool,
) -> Option<&'o str> {
    if !escaped && quoted.find(obj.as_bytes()).is_none() {
        return None;
    }
    object_members(obj).filter(|(k, _)| name_text(k) == name).last().map(|(_, v)| v).filter(|v| *v != "null")
}

/// Whether `obj` (without escaped names) has exactly one member `name`, and it is a string.
pub(super) fn one_string_member(obj: &str, name: &str) -> bool {
    let mut found = object_members(obj).filter(|(k, _)| *k == name);
    matches!((found.next(), found.next()), (Some((_, v)), None) if v.starts_with('"'))
}
