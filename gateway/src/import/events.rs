//! `POST /v1/events` (events-bulk-and-csv-backfill-api): `{"events":[{eventName, email,
//! domain, timestamp, eventId, properties}]}` → one Segment `track` per event.
//!
//! Owns: the mapping (README, "Reference APIs"): `eventName` → `event`; `email` → `userId` and
//! `context.traits.email` (contact matching); `domain` → `context.groupId` (company matching)
//! and, without an email, `anonymousId = "domain:<domain>"` so that the call has an identity;
//! `timestamp` → `timestamp` (default: the receipt time); `eventId` → `messageId` (generated
//! `evt_…` when absent, and returned); `properties` → `properties`. Must not: publish.

use serde_json::{json, Map, Value};

use super::{field, name, new_event_id, opt_object, opt_str, take_events, Builder, MAX_PROPERTIES};
use crate::decode::DecodeError;

pub(super) fn convert(value: Value, now: &str, out: &mut Builder) -> Result<(), DecodeError> {
    let events = match value {
        Value::Object(mut body) => take_events(body.remove("events"), "the body must be {\"events\":[…]} with events")?,
        _ => return Err(DecodeError::InvalidBody("the body must be {\"events\":[…]} with events")),
    };
    for (index, event) in events.into_iter().enumerate() {
        match track(&event, now) {
            Ok((id, call)) => {
                out.event_ids.push(Some(id));
                out.call(index, call);
            }
            Err((code, message)) => {
                out.event_ids.push(None);
                out.refuse(index, code, message);
            }
        }
    }
    Ok(())
}

pub(super) fn track(event: &Value, now: &str) -> Result<(String, Value), (&'static str, String)> {
    if !event.is_object() {
        return Err(("invalid_event", "event is not a JSON object".into()));
    }
    let event_name = name(event, "eventName")?;
    let email = field(opt_str(event, "email"))?;
    let domain = field(opt_str(event, "domain"))?;
    let timestamp = field(opt_str(event, "timestamp"))?.unwrap_or(now);
    let id = field(opt_str(event, "eventId"))?.map_or_else(new_event_id, str::to_string);
    let properties = field(opt_object(event, "properties", MAX_PROPERTIES))?.cloned().unwrap_or_default();
    let mut context = Map::new();
    let mut call = json!({
        "type": "track",
        "event": event_name,
        "messageId": id,
        "timestamp": timestamp,
        "properties": properties,
    });
    match (email, domain) {
        (None, None) => {
            return Err(("missing_identity", "'email' or 'domain' is required (a non-empty string)".into()));
        }
        (Some(email), _) => {
            call["userId"] = json!(email);
            context.insert("traits".into(), json!({ "email": email }));
        }
        (None, Some(domain)) => call["anonymousId"] = json!(format!("domain:{domain}")),
    }
    if let Some(domain) = domain {
        context.insert("groupId".into(), json!(domain));
    }
    call["context"] = Value::Object(context);
    Ok((id, call))
}
