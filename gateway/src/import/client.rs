//! `POST /api/client/events` (client-events-with-profile-api): a JSON array of `{name,
//! anonymous_id, external_id, data, user, created_at}` → a Segment `track` each, preceded by an
//! `identify` when the event has a `user` block.
//!
//! Owns: the mapping (README, "Reference APIs"): `name` → `event`; `external_id` → `userId`;
//! `anonymous_id` → `anonymousId` (both on one call is how Segment links the two ids);
//! `data` → `properties`; `created_at` → `timestamp` (default: the receipt time). A `user`
//! block becomes an `identify` with the same ids and timestamp whose traits are `email`,
//! `phone`, `timezone`, `locale` and the block's `data`. Every call gets a fresh messageId.
//! Must not: publish.

use serde_json::{json, Map, Value};

use super::{field, name, new_event_id, opt_object, opt_str, take_events, Builder};
use crate::decode::DecodeError;

/// `user.timezone`'s limit (an IANA name) and `user.locale`'s (a BCP-47 tag), in characters.
const MAX_TIMEZONE_CHARS: usize = 50;
const MAX_LOCALE_CHARS: usize = 255;
/// `data` and `user.data`: as many keys as a Segment event may carry (decode's caps apply).
const MAX_DATA_KEYS: usize = usize::MAX;

pub(super) fn convert(value: Value, now: &str, out: &mut Builder) -> Result<(), DecodeError> {
    let events = take_events(Some(value), "the body must be a JSON array of 1 to 100 events")?;
    for (index, event) in events.into_iter().enumerate() {
        match calls(&event, now) {
            Ok((id, identify, track)) => {
                out.event_ids.push(Some(id));
                if let Some(identify) = identify {
                    out.call(index, identify);
                }
                out.call(index, track);
            }
            Err((code, message)) => {
                out.event_ids.push(None);
                out.refuse(index, code, message);
            }
        }
    }
    // All or nothing: the answer is 204 or a 400 with the indexed errors, and a client that
    // fixes its events resends them all (they carry no id that dedup could recognise).
    if !out.errors.is_empty() {
        out.calls.clear();
        out.origin.clear();
        out.event_ids.iter_mut().for_each(|id| *id = None);
    }
    Ok(())
}

type Calls = (String, Option<Value>, Value);

fn calls(event: &Value, now: &str) -> Result<Calls, (&'static str, String)> {
    if !event.is_object() {
        return Err(("invalid_event", "event is not a JSON object".into()));
    }
    let event_name = name(event, "name")?;
    let anonymous_id = field(opt_str(event, "anonymous_id"))?;
    let external_id = field(opt_str(event, "external_id"))?;
    if anonymous_id.is_none() && external_id.is_none() {
        return Err(("missing_identity", "'anonymous_id' or 'external_id' is required (a non-empty string)".into()));
    }
    let timestamp = field(opt_str(event, "created_at"))?.unwrap_or(now);
    let data = field(opt_object(event, "data", MAX_DATA_KEYS))?.cloned().unwrap_or_default();
    let ids = |call: &mut Value| {
        if let Some(u) = external_id {
            call["userId"] = json!(u);
        }
        if let Some(a) = anonymous_id {
            call["anonymousId"] = json!(a);
        }
    };
    let identify = match event.get("user") {
        None | Some(Value::Null) => None,
        Some(user @ Value::Object(_)) => {
            let mut traits = field(opt_object(user, "data", MAX_DATA_KEYS))?.cloned().unwrap_or_else(Map::new);
            for (key, limit) in [
                ("email", None),
                ("phone", None),
                ("timezone", Some(MAX_TIMEZONE_CHARS)),
                ("locale", Some(MAX_LOCALE_CHARS)),
            ] {
                if let Some(v) = field(opt_str(user, key))? {
                    if let Some(limit) = limit.filter(|l| v.chars().count() > *l) {
                        return Err(("invalid_field", format!("'user.{key}' is longer than {limit} characters")));
                    }
                    traits.insert(key.to_string(), json!(v));
                }
            }
            let mut call = json!({
                "type": "identify",
                "messageId": new_event_id(),
                "timestamp": timestamp,
                "traits": traits,
            });
            ids(&mut call);
            Some(call)
        }
        Some(_) => return Err(("invalid_field", "'user' must be an object".into())),
    };
    let id = new_event_id();
    let mut track = json!({
        "type": "track",
        "event": event_name,
        "messageId": id,
        "timestamp": timestamp,
        "properties": data,
    });
    ids(&mut track);
    Ok((id, identify, track))
}
