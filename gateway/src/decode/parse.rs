//! The typed parse: a body → a single call or a batch of calls, each a [`RawEvent`] whose
//! values are borrowed `&RawValue` slices of the body.
//!
//! Owns: the structural parse (one pass, the event list allocated once), the per-event size,
//! the batch-level `context`/`integrations`/`sentAt` handed to each call, byte offsets of
//! syntax errors, and reading ids and strings out of raw slices. Must not: check an event
//! against the Segment spec or write its normalised form (see `normalise`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::fit::check_forwarded;
use super::members::object_members;
use super::{DecodeError, EventError, Limits};
use crate::json::Str;

/// One Segment call as sent: the interpreted fields as raw slices, the rest kept in order.
#[derive(Debug, Default)]
pub struct RawEvent<'a> {
    pub(super) ty: Option<&'a RawValue>,
    pub(super) user_id: Option<&'a RawValue>,
    pub(super) anonymous_id: Option<&'a RawValue>,
    pub(super) message_id: Option<&'a RawValue>,
    pub(super) timestamp: Option<&'a RawValue>,
    pub(super) original_timestamp: Option<&'a RawValue>,
    pub(super) sent_at: Option<&'a RawValue>,
    pub(super) context: Option<&'a RawValue>,
    write_key: Option<&'a RawValue>,
    pub(super) event: Option<&'a RawValue>,
    pub(super) group_id: Option<&'a RawValue>,
    pub(super) previous_id: Option<&'a RawValue>,
    /// Every other field, forwarded verbatim in the order sent (a repeated name keeps its
    /// first place and its last value, as the interpreted fields do: a record never has a
    /// duplicate key).
    pub(super) rest: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Size of the event's members as sent (keys and values, without insignificant
    /// whitespace): what the per-event cap is checked against.
    pub(super) size: usize,
    /// The first member name that holds a lone surrogate escape: the event is refused, but
    /// only it (serde_json would refuse the whole body if it decoded the name itself).
    pub(super) bad_name: Option<&'a RawValue>,
    /// What the batch around this event sets for all its calls (nothing on single calls).
    pub(super) batch: BatchFields<'a>,
}

/// A batch's own `context`, `integrations` and `sentAt`, which apply to each of its calls.
/// `context` and `integrations` are objects (checked once per batch in [`parse_body`]).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct BatchFields<'a> {
    pub(super) context: Option<&'a RawValue>,
    pub(super) integrations: Option<&'a RawValue>,
    pub(super) sent_at: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                // A single call's name that does not decode refuses the body, which is the
                // event: nothing to keep apart.
                visit_event::<A, false>(map)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads one event's members: the interpreted ones into their slots, the rest in order.
///
/// Names are decoded by serde_json, which refuses a lone surrogate escape in one by failing the
/// whole body. `LAX` reads them raw and decodes them here instead, so that such a name costs
/// only its own event: [`parse_body`] reparses a batch that way when the fast way fails
/// (reading names raw costs more, so only the bodies that need it pay).
fn visit_event<'de, A: MapAccess<'de>, const LAX: bool>(mut map: A) -> Result<RawEvent<'de>, A::Error> {
    let mut ev = RawEvent { size: 2, ..RawEvent::default() };
    loop {
        let key = if LAX {
            let Some(raw_key) = map.next_key::<&'de RawValue>()? else { break };
            member_name(raw_key).ok_or(raw_key)
        } else {
            let Some(Str(key)) = map.next_key::<Str<'de>>()? else { break };
            Ok(key)
        };
        let value: &'de RawValue = map.next_value()?;
        let key = match key {
            Ok(key) => key,
            Err(raw_key) => {
                ev.size += raw_key.get().len() + value.get().len() + 2;
                ev.bad_name.get_or_insert(raw_key);
                continue;
            }
        };
        ev.size += key.len() + value.get().len() + 4;
        let slot = match &*key {
            "type" => &mut ev.ty,
            "userId" => &mut ev.user_id,
            "anonymousId" => &mut ev.anonymous_id,
            "messageId" => &mut ev.message_id,
            "timestamp" => &mut ev.timestamp,
            "originalTimestamp" => &mut ev.original_timestamp,
            "sentAt" => &mut ev.sent_at,
            "context" => &mut ev.context,
            "writeKey" => &mut ev.write_key,
            "event" => &mut ev.event,
            "groupId" => &mut ev.group_id,
            "previousId" => &mut ev.previous_id,
            // Set by the gateway: a client's value is dropped, never trusted.
            "receivedAt" | "sourceId" => continue,
            _ => {
                match ev.rest.iter_mut().find(|(k, _)| *k == key) {
                    Some(member) => member.1 = value,
                    None => ev.rest.push((key, value)),
                }
                continue;
            }
        };
        *slot = Some(value);
    }
    Ok(ev)
}

/// One element of a batch: an event, or something that is not an object (a per-event error,
/// not a failed request).
// The size difference is fine: items live in one Vec per request, and boxing each event would
// cost an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum BatchItem<'a> {
    Event(RawEvent<'a>),
    NotAnObject,
}

/// Reads one batch element; `LAX` as in [`visit_event`].
struct ItemSeed<const LAX: bool>;

impl<'de, const LAX: bool> DeserializeSeed<'de> for ItemSeed<LAX> {
    type Value = BatchItem<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BatchItem<'de>, D::Error> {
        struct V<const LAX: bool>;
        impl<'de, const LAX: bool> Visitor<'de> for V<LAX> {
            type Value = BatchItem<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a batch element")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                visit_event::<A, LAX>(map).map(BatchItem::Event)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(BatchItem::NotAnObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(BatchItem::NotAnObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(BatchItem::NotAnObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(BatchItem::NotAnObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(BatchItem::NotAnObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(BatchItem::NotAnObject)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BatchItem::NotAnObject)
            }
        }
        d.deserialize_any(V::<LAX>)
    }
}

/// `null` → `None`; a string → its text; anything else → `Err`.
pub(super) fn opt_str<'a>(raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, ()> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => {
            let t = r.get();
            // Fast path: a string without escapes is its own text between the quotes.
            if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') && !t.as_bytes().contains(&b'\\') {
                return Ok(Some(Cow::Borrowed(&t[1..t.len() - 1])));
            }
            serde_json::from_str::<Str<'a>>(t).map(|s| Some(s.0)).map_err(|_| ())
        }
    }
}

/// An identifier: a non-empty string, or a number (analytics-python may send one), as text.
/// `null` and `""` count as absent.
pub(super) fn opt_id<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Option<Cow<'a, str>>, EventError> {
    let Some(r) = raw else { return Ok(None) };
    let text = r.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let s = opt_str(raw)
                .map_err(|_| EventError::InvalidField { field, expected: "must be a string or a number" })?;
            Ok(s.filter(|s| !s.is_empty()))
        }
        Some(b'-' | b'0'..=b'9') => Ok(Some(Cow::Borrowed(text))),
        _ if text == "null" => Ok(None),
        _ => Err(EventError::InvalidField { field, expected: "must be a string or a number" }),
    }
}

/// What the request body holds, after the structural parse.
#[derive(Debug)]
pub enum Body<'a> {
    /// One call (the whole body is the event).
    Single(RawEvent<'a>),
    /// `{"batch":[…]}` with the batch-level fields.
    Batch(Batch<'a>),
}

/// A batch body, parsed in one pass: each element is an event or a per-event error.
#[derive(Debug)]
pub struct Batch<'a> {
    pub events: Vec<BatchItem<'a>>,
    pub(super) sent_at: Option<&'a RawValue>,
    write_key: Option<&'a RawValue>,
    /// Merged into each call's own (the call's members win).
    context: Option<&'a RawValue>,
    integrations: Option<&'a RawValue>,
}

/// Reads a batch body; `capacity` is a guess at the number of events, so that the event list
/// is allocated once instead of doubling (and copying) its way up.
struct BatchSeed<const LAX: bool> {
    capacity: usize,
}

impl<'de, const LAX: bool> DeserializeSeed<'de> for BatchSeed<LAX> {
    type Value = Batch<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch<'de>, D::Error> {
        struct V<const LAX: bool>(usize);
        impl<'de, const LAX: bool> Visitor<'de> for V<LAX> {
            type Value = Batch<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object with a 'batch' array")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut events = None;
                let (mut sent_at, mut write_key, mut context, mut integrations) = (None, None, None, None);
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    match &*key {
                        "batch" => events = Some(map.next_value_seed(Items::<LAX> { capacity: self.0 })?),
                        "sentAt" => sent_at = Some(map.next_value()?),
                        "writeKey" => write_key = Some(map.next_value()?),
                        "context" => context = Some(map.next_value()?),
                        "integrations" => integrations = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let events = events.ok_or_else(|| de::Error::missing_field("batch"))?;
                Ok(Batch { events, sent_at, write_key, context, integrations })
            }
        }
        d.deserialize_map(V::<LAX>(self.capacity))
    }
}

/// The `batch` array, into a list allocated with the guessed capacity.
struct Items<const LAX: bool> {
    capacity: usize,
}

impl<'de, const LAX: bool> DeserializeSeed<'de> for Items<LAX> {
    type Value = Vec<BatchItem<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V<const LAX: bool>(usize);
        impl<'de, const LAX: bool> Visitor<'de> for V<LAX> {
            type Value = Vec<BatchItem<'de>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(self.0);
                while let Some(item) = seq.next_element_seed(ItemSeed::<LAX>)? {
                    items.push(item);
                }
                Ok(items)
            }
        }
        d.deserialize_seq(V::<LAX>(self.capacity))
    }
}

/// Events are rarely smaller than this many bytes of a batch body; the guess errs high.
const MIN_EVENT_BYTES_GUESS: usize = 384;

impl<'a> Body<'a> {
    /// The body's `writeKey`, the last place a key is looked for.
    pub fn write_key(&self) -> Option<Cow<'a, str>> {
        let raw = match self {
            Body::Single(e) => e.write_key,
            Body::Batch(b) => b.write_key,
        };
        opt_str(raw).ok().flatten().filter(|k| !k.is_empty())
    }
}

/// Where a JSON error happened, as a byte offset into the body.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    if line > 1 {
        let mut seen = 1;
        for (i, b) in body.iter().enumerate() {
            if *b == b'\n' {
                seen += 1;
                if seen == line {
                    start = i + 1;
                    break;
                }
            }
        }
    }
    (start + column.saturating_sub(1)).min(body.len())
}

fn json_error(body: &[u8], e: &serde_json::Error) -> DecodeError {
    let text = e.to_string();
    let detail = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    DecodeError::InvalidJson { offset: byte_offset(body, e.line(), e.column()), detail }
}

/// Parses a body structurally: a single call or a batch. Syntax errors name the byte offset.
pub fn parse_body<'a>(body: &'a [u8], batch: bool, limits: &Limits) -> Result<Body<'a>, DecodeError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| DecodeError::InvalidJson { offset: e.valid_up_to(), detail: "body is not valid UTF-8".into() })?;
    if text.trim().is_empty() {
        return Err(DecodeError::InvalidBody("the request body is empty"));
    }
    if batch {
        let capacity = (body.len() / MIN_EVENT_BYTES_GUESS + 1).min(limits.max_batch_events);
        let mut de = serde_json::Deserializer::from_str(text);
        let b = BatchSeed::<false> { capacity }.deserialize(&mut de).and_then(|b| de.end().map(|()| b));
        // A body that fails to parse is parsed again with event member names read raw: if
        // that succeeds, the failure was a name with a lone surrogate escape, which refuses
        // only its event. Anything else fails again, and the first error is reported.
        let b = b.or_else(|e| match e.classify() {
            serde_json::error::Category::Syntax => {
                let mut de = serde_json::Deserializer::from_str(text);
                BatchSeed::<true> { capacity }.deserialize(&mut de).and_then(|b| de.end().map(|()| b)).map_err(|_| e)
            }
            _ => Err(e),
        });
        let mut b: Batch<'a> = b.map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                DecodeError::InvalidBody("a batch body must be a JSON object with a 'batch' array")
            }
            _ => json_error(body, &e),
        })?;
        if b.events.is_empty() {
            return Err(DecodeError::InvalidBody("the batch is empty"));
        }
        if b.events.len() > limits.max_batch_events {
            return Err(DecodeError::TooManyEvents { count: b.events.len(), limit: limits.max_batch_events });
        }
        let fields = BatchFields {
            context: batch_object(text, b.context, "context", "the batch's 'context' must be an object")?,
            integrations: batch_object(
                text,
                b.integrations,
                "integrations",
                "the batch's 'integrations' must be an object",
            )?,
            sent_at: b.sent_at.filter(|r| r.get() != "null"),
        };
        if fields.context.is_some() || fields.integrations.is_some() || fields.sent_at.is_some() {
            for item in &mut b.events {
                if let BatchItem::Event(ev) = item {
                    ev.batch = fields;
                }
            }
        }
        Ok(Body::Batch(b))
    } else {
        if body.len() > limits.max_event_bytes {
            return Err(EventError::TooLarge { size: body.len(), limit: limits.max_event_bytes }.into());
        }
        let e: RawEvent<'a> = serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => DecodeError::Event(EventError::NotAnObject),
            _ => json_error(body, &e),
        })?;
        Ok(Body::Single(e))
    }
}

/// A batch-level object that applies to every call: `None` when absent, `null` or `{}`. It is
/// checked here once, as the calls' own members are in [`normalise`](fn@super::normalise), and
/// a bad one refuses the body: it would be wrong in every event.
fn batch_object<'a>(
    text: &'a str,
    raw: Option<&'a RawValue>,
    name: &str,
    not_an_object: &'static str,
) -> Result<Option<&'a RawValue>, DecodeError> {
    let Some(r) = raw.filter(|r| r.get() != "null") else { return Ok(None) };
    if !r.get().starts_with('{') {
        return Err(DecodeError::InvalidBody(not_an_object));
    }
    if let Err((at, reason)) = check_forwarded(r.get(), 1) {
        // The slice lies inside `text`: its distance from the start is its byte offset.
        let offset = (r.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize) + at;
        return Err(DecodeError::InvalidJson { offset, detail: format!("the batch's '{name}' {reason}") });
    }
    Ok(object_members(r.get()).next().is_some().then_some(r))
}

/// One event of a batch, checked against the per-event cap.
pub fn parse_event<'i, 'a>(item: &'i BatchItem<'a>, limits: &Limits) -> Result<&'i RawEvent<'a>, EventError> {
    match item {
        BatchItem::NotAnObject => Err(EventError::NotAnObject),
        BatchItem::Event(ev) if ev.size > limits.max_event_bytes => {
            Err(EventError::TooLarge { size: ev.size, limit: limits.max_event_bytes })
        }
        BatchItem::Event(ev) => Ok(ev),
    }
}

/// A member name as serde_json hands it over raw (quotes included), unescaped; `None` when an
/// escape does not decode (half a surrogate pair).
fn member_name(raw: &RawValue) -> Option<Cow<'_, str>> {
    let quoted = raw.get();
    let inner = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or("");
    if !inner.as_bytes().contains(&b'\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<Str<'_>>(quoted).ok().map(|s| s.0)
}
