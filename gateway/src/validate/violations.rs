//! The violations topic: the JSON record published for each event that departed from its plan
//! ([`violation_record`]), and the one field of the event it names ([`event_name`]).
//! Must not: publish (the caller hands the record to the sink), read a clock, or do I/O.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use super::tape::{self, Need};
use super::verdict::Violation;

/// The `event` name of a normalised event (what [`violation_record`] wants), or `None` when it
/// has none (every call type but track). Reads nothing else of the event.
pub fn event_name(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let doc = tape::parse(text, &Need::path(&["event"])).ok()?;
    doc.get(0, "event").and_then(|i| doc.str_at(i)).map(str::to_owned)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    source_id: &'a str,
    message_id: &'a str,
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    blocked: bool,
    violations: &'a [Violation],
    original_event: Original<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Original<'a> {
    Json(&'a RawValue),
    Text(Cow<'a, str>),
}

/// The JSON record published to the violations topic for one event:
/// `{"sourceId","messageId","eventType","event"?,"blocked","violations":[…],"originalEvent":{…}}`.
/// `originalEvent` is the event as it was before any `omit` (it carries its own `receivedAt`),
/// embedded as JSON (as a string if it were not JSON). Pure: no clock, no I/O.
pub fn violation_record(
    source_id: &str,
    message_id: &str,
    event_name: Option<&str>,
    event_type: &str,
    violations: &[Violation],
    blocked: bool,
    original_event: &[u8],
) -> Vec<u8> {
    let original = match serde_json::from_slice::<&RawValue>(original_event) {
        Ok(raw) => Original::Json(raw),
        Err(_) => Original::Text(String::from_utf8_lossy(original_event)),
    };
    let record =
        Record { source_id, message_id, event_type, event: event_name, blocked, violations, original_event: original };
    // Serialising strings and an already-valid raw value into a Vec cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}
