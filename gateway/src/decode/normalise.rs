//! Normalise: one call checked against the Segment spec and written as the event to publish.
//!
//! Owns: the call type (path or body), the required fields per type, messageId, timestamps and
//! clock skew, the order and escaping of what is written, `sourceId`, dropping `writeKey` and
//! the client's `receivedAt`. Must not: look up write keys (auth does), apply contracts
//! (validate does) or publish; the `context` rewrite itself lives in `context`.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::consent::{ConsentPolicy, Decision as ConsentDecision, IpPolicy};

use super::body::truncate;
use super::context::{member_value, merge_objects, one_string_member, write_context_rewritten, FIND_CONSENT, FIND_IP};
use super::fit::check_event_json;
use super::parse::{opt_id, opt_str, Body, RawEvent};
use super::timestamp::Timestamp;
use super::{EventError, EventType};

/// What every event of one request shares.
pub struct RequestContext<'a> {
    /// The call type fixed by the path (`/v1/track`…), if any.
    pub path_type: Option<EventType>,
    pub received_at: Timestamp,
    /// `received_at` formatted once per request.
    pub received_at_text: &'a str,
    /// The batch's `sentAt` (used when an event has none).
    pub batch_sent_at: Option<Timestamp>,
    /// Client IP (peer, or X-Forwarded-For from a trusted proxy), as text.
    pub client_ip: &'a str,
    pub source_id: &'a str,
    /// The source's consent policy (required categories, IP policy, purpose mapping).
    pub consent: &'a ConsentPolicy,
}

/// An event ready to publish.
#[derive(Debug, Clone)]
pub struct Normalised {
    pub event_type: EventType,
    pub message_id: String,
    /// True when the client sent no messageId (such events cannot be deduplicated).
    pub message_id_generated: bool,
    /// `userId`, else `anonymousId`: the record key.
    pub key: Option<String>,
    /// The normalised event as JSON.
    pub payload: Vec<u8>,
    /// Derived consent categories, compact (`analytics=1;advertising=0`), for a record header.
    pub consent_header: Option<String>,
    /// The source's consent policy says: answer 200 but do not publish.
    pub consent_drop: bool,
}

/// Parses `sentAt` of a batch body (an unparsable one is ignored, like a missing one: it only
/// serves clock-skew correction and must not cost the client its events).
pub fn batch_sent_at(body: &Body<'_>) -> Option<Timestamp> {
    match body {
        Body::Batch(b) => opt_str(b.sent_at).ok().flatten().and_then(|s| Timestamp::parse(&s)),
        Body::Single(_) => None,
    }
}

/// Checks one call against the Segment spec and writes its normalised form.
pub fn normalise(ev: &RawEvent<'_>, cx: &RequestContext<'_>) -> Result<Normalised, EventError> {
    check_event_json(ev)?;
    // Type: from the path on single-call paths (a body without `type` is valid there).
    let body_type = opt_str(ev.ty).map_err(|_| EventError::InvalidType("'type' must be a string".into()))?;
    let event_type = match (cx.path_type, body_type.as_deref()) {
        (Some(t), None) => t,
        (Some(t), Some(b)) if b == t.as_str() => t,
        (Some(t), Some(b)) => {
            return Err(EventError::InvalidType(format!(
                "type '{}' does not match the path's call type '{t}'",
                truncate(b, 32)
            )))
        }
        (None, None) => return Err(EventError::InvalidType("'type' is required".into())),
        (None, Some(b)) => EventType::parse(b).ok_or_else(|| {
            EventError::InvalidType(format!(
                "type '{}' is not one of track, identify, page, screen, group, alias",
                truncate(b, 32)
            ))
        })?,
    };

    let user_id = opt_id(ev.user_id, "userId")?;
    let anonymous_id = opt_id(ev.anonymous_id, "anonymousId")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(EventError::MissingIdentity);
    }
    match event_type {
        EventType::Track => {
            let name = opt_str(ev.event)
                .map_err(|_| EventError::InvalidField { field: "event", expected: "must be a string" })?;
            if name.as_deref().is_none_or(|n| n.trim().is_empty()) {
                return Err(EventError::MissingEvent);
            }
        }
        EventType::Group if opt_id(ev.group_id, "groupId")?.is_none() => return Err(EventError::MissingGroupId),
        EventType::Alias => {
            if opt_id(ev.previous_id, "previousId")?.is_none() {
                return Err(EventError::MissingPreviousId);
            }
            if user_id.is_none() {
                return Err(EventError::MissingUserId);
            }
        }
        _ => {}
    }

    let client_message_id = opt_id(ev.message_id, "messageId")?;
    if client_message_id.as_ref().is_some_and(|m| m.len() > 256) {
        return Err(EventError::InvalidField { field: "messageId", expected: "must be at most 256 bytes" });
    }

    // Timestamps. Segment's rule: `originalTimestamp` is the device's clock when the call
    // happened and `sentAt` the device's clock when it was sent, so the event happened at
    // receivedAt − (sentAt − originalTimestamp) by the server's clock. A call that carries only
    // `timestamp` (what most SDKs send) means the device time by it, so it stands in for a
    // missing originalTimestamp; a client's originalTimestamp is kept as sent.
    let client_ts = client_time(ev.timestamp, "timestamp")?;
    let original_ts = client_time(ev.original_timestamp, "originalTimestamp")?;
    // `sentAt` only serves the correction: one that is not a date-time is ignored (as a bad
    // batch-level one is) rather than costing the client its event, and the batch's applies.
    let own_sent_at = opt_str(ev.sent_at).ok().flatten().and_then(|s| Timestamp::parse(&s));
    let (sent_at, sent_at_raw) = match own_sent_at {
        Some(t) => (Some(t), ev.sent_at),
        None => (cx.batch_sent_at, ev.batch.sent_at),
    };
    let uncorrected = client_ts.or(original_ts);
    let timestamp = match (original_ts.or(client_ts), sent_at) {
        // An absurd sentAt could push the corrected time out of range: keep the client's then.
        (Some(device), Some(sent)) => Timestamp(cx.received_at.0 - (sent - device)).checked().or(uncorrected),
        _ => uncorrected,
    };

    let own_context = match ev.context {
        Some(r) if r.get() == "null" => None,
        Some(r) if r.get().starts_with('{') => Some(r.get()),
        Some(_) => return Err(EventError::InvalidField { field: "context", expected: "must be an object" }),
        None => None,
    };
    // A batch's context applies to each of its calls; the call's own members win.
    let merged;
    let context = match (own_context, ev.batch.context) {
        (Some(own), Some(shared)) => {
            merged = merge_objects(own, shared.get());
            Some(merged.as_str())
        }
        (None, Some(shared)) => Some(shared.get()),
        (own, None) => own,
    };
    // Member names with escapes (`"\u0069p"` is `ip`) are rare; without a backslash in the
    // context, names can be compared as written and substring searches rule members out.
    let escaped = context.is_some_and(|c| memchr::memchr(b'\\', c.as_bytes()).is_some());
    let consent_raw = context.and_then(|c| member_value(c, "consent", &FIND_CONSENT, escaped));
    let consent = match consent_raw {
        Some(raw) => Some(
            crate::consent::parse_consent(raw, &cx.consent.mapping)
                .map_err(|e| EventError::InvalidConsent(e.to_string()))?,
        ),
        None => None,
    };
    let consent_drop = cx.consent.evaluate(consent.as_ref()) == ConsentDecision::Drop;

    // ---- write the normalised event ------------------------------------------------------
    let (message_id, generated) = match &client_message_id {
        Some(m) => (m.to_string(), false),
        None => (uuid::Uuid::new_v4().to_string(), true),
    };
    let mut out = Vec::with_capacity(out_len_hint(ev, cx));
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type.as_str().as_bytes());
    out.extend_from_slice(b"\",\"messageId\":");
    write_json_str(&mut out, &message_id);
    out.extend_from_slice(b",\"sourceId\":");
    write_json_str(&mut out, cx.source_id);
    if let Some(u) = &user_id {
        out.extend_from_slice(b",\"userId\":");
        write_json_str(&mut out, u);
    }
    if let Some(a) = &anonymous_id {
        out.extend_from_slice(b",\"anonymousId\":");
        write_json_str(&mut out, a);
    }
    if let Some(v) = ev.event.filter(|v| v.get() != "null") {
        write_ours(&mut out, b",\"event\":", v.get());
    }
    // Ids sent as numbers are forwarded as strings, like userId (downstream schemas type them
    // as strings).
    for (name, value) in [("groupId", ev.group_id), ("previousId", ev.previous_id)] {
        match value.map(RawValue::get) {
            None | Some("null") => {}
            Some(n) if n.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                out.push(b',');
                write_json_str(&mut out, name);
                // A JSON number's text needs no escaping.
                out.extend_from_slice(b":\"");
                out.extend_from_slice(n.as_bytes());
                out.push(b'"');
            }
            Some(v) => write_field(&mut out, name, v),
        }
    }
    // A batch's integrations are merged like its context; a call's own that is not an object
    // (nothing to merge into) is kept as sent.
    let shared_integrations = ev.batch.integrations.map(RawValue::get);
    let mut integrations_written = shared_integrations.is_none();
    for (name, value) in &ev.rest {
        match shared_integrations {
            Some(shared) if name == "integrations" => {
                integrations_written = true;
                match value.get() {
                    "null" => write_field(&mut out, name, shared),
                    own if own.starts_with('{') => write_field(&mut out, name, &merge_objects(own, shared)),
                    own => write_field(&mut out, name, own),
                }
            }
            _ => write_field(&mut out, name, value.get()),
        }
    }
    if let (false, Some(shared)) = (integrations_written, shared_integrations) {
        write_ours(&mut out, b",\"integrations\":", shared);
    }
    // context: the client IP added unless the client set one; consent enriched; IP policy.
    out.extend_from_slice(b",\"context\":");
    if consent.is_none() && cx.consent.ip == IpPolicy::Keep && !escaped {
        match context {
            None => {
                out.extend_from_slice(b"{\"ip\":");
                write_json_str(&mut out, cx.client_ip);
                out.push(b'}');
            }
            // Most contexts have no `ip` (analytics.js sends none): add ours at the end.
            Some(c) if FIND_IP.find(c.as_bytes()).is_none() => {
                let c = c.trim_end();
                let inner = c[1..c.len() - 1].trim();
                out.extend_from_slice(c[..c.len() - 1].trim_end().as_bytes());
                if !inner.is_empty() {
                    out.push(b',');
                }
                out.extend_from_slice(b"\"ip\":");
                write_json_str(&mut out, cx.client_ip);
                out.push(b'}');
            }
            // The client set its IP once, as a string: the context is forwarded as sent.
            Some(c) if one_string_member(c, "ip") => out.extend_from_slice(c.as_bytes()),
            // `null`, repeated, or not a string: rewritten (and checked) member by member.
            Some(_) => write_context_rewritten(&mut out, context, None, cx)?,
        }
    } else {
        write_context_rewritten(&mut out, context, consent.as_ref(), cx)?;
    }
    out.extend_from_slice(b",\"timestamp\":\"");
    match timestamp {
        Some(t) => out.extend_from_slice(t.format().as_bytes()),
        None => out.extend_from_slice(cx.received_at_text.as_bytes()),
    }
    out.push(b'"');
    let original = [ev.original_timestamp, ev.timestamp].into_iter().flatten().find(|r| r.get() != "null");
    if let Some(orig) = original {
        write_ours(&mut out, b",\"originalTimestamp\":", orig.get());
    }
    // The sentAt the timestamp was corrected with, as the client wrote it (the batch's for a
    // call without a valid one of its own).
    match (sent_at_raw.filter(|r| r.get() != "null"), sent_at) {
        (Some(raw), Some(_)) => write_ours(&mut out, b",\"sentAt\":", raw.get()),
        (None, Some(t)) => write_ours(&mut out, b",\"sentAt\":", &format!("\"{}\"", t.format())),
        (_, None) => {}
    }
    out.extend_from_slice(b",\"receivedAt\":\"");
    out.extend_from_slice(cx.received_at_text.as_bytes());
    out.extend_from_slice(b"\"}");

    let key = user_id.or(anonymous_id).map(Cow::into_owned);
    Ok(Normalised {
        event_type,
        message_id,
        message_id_generated: generated,
        key,
        payload: out,
        consent_header: consent.as_ref().map(|c| c.header_value()),
        consent_drop,
    })
}

/// A client timestamp field: absent or `null` → `None`; a string that parses → its instant;
/// anything else refuses the event.
fn client_time(raw: Option<&RawValue>, field: &'static str) -> Result<Option<Timestamp>, EventError> {
    match opt_str(raw).map_err(|_| EventError::InvalidTimestamp { field })? {
        None => Ok(None),
        Some(s) => Timestamp::parse(&s).map(Some).ok_or(EventError::InvalidTimestamp { field }),
    }
}

/// The normalised event's size, so that its buffer is allocated once: the members as sent,
/// plus what the gateway adds (messageId, sourceId, context.ip, timestamp, receivedAt).
fn out_len_hint(ev: &RawEvent<'_>, cx: &RequestContext<'_>) -> usize {
    ev.size + 224 + cx.source_id.len() + cx.client_ip.len()
}

/// `,"name":<raw json>` — `name` is a key from the body or one of ours; keys from the body are
/// re-escaped because `Str` holds their unescaped text.
fn write_field(out: &mut Vec<u8>, name: &str, raw: &str) {
    out.push(b',');
    write_json_str(out, name);
    out.push(b':');
    out.extend_from_slice(raw.as_bytes());
}

/// `,"name":<raw json>` for a name of ours, given already quoted (`b",\"sentAt\":"`): nothing
/// to escape.
fn write_ours(out: &mut Vec<u8>, quoted_name: &[u8], raw: &str) {
    out.extend_from_slice(quoted_name);
    out.extend_from_slice(raw.as_bytes());
}

pub(super) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // A branch-free fold (no early exit) lets the compiler vectorise the check.
    let needs_escape = s.bytes().fold(false, |acc, b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail; a str always serialises.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}
