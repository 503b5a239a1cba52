//! Decode: request body → typed Segment calls → normalised events ready to publish.
//!
//! Owns: the content-type and content-encoding rules, the body caps (enforced while the body
//! streams, and again while gzip inflates, so a bomb cannot make us allocate past the cap), the
//! typed parse, the per-event checks of the Segment spec, and normalisation (messageId,
//! timestamps and clock skew, `context.ip`, `sourceId`, dropping `writeKey`).
//! Must not: look up write keys (auth does), apply contracts (validate does) or publish.
//!
//! Why the parse looks the way it does: events are parsed into a typed struct whose values are
//! borrowed `&RawValue` slices of the request body. The fields the gateway interprets (type,
//! ids, timestamps, context) are read from those slices; everything else (`properties`,
//! `traits`, `integrations`, …) is forwarded byte for byte. This is ≈4× cheaper than building a
//! `serde_json::Value` (measured in `../shared/kafka-testing.md`, and in `benches/`), and it
//! means we never reorder or reformat what the client sent.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Limits;
use crate::consent::{Consent, ConsentPolicy, Decision as ConsentDecision, IpPolicy};
use crate::timestamp::Timestamp;

// ---------------------------------------------------------------------------------------------
// Call types
// ---------------------------------------------------------------------------------------------

/// The six Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl EventType {
    pub const COUNT: usize = 6;
    pub const ALL: [EventType; 6] =
        [EventType::Track, EventType::Identify, EventType::Page, EventType::Screen, EventType::Group, EventType::Alias];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Some(match s {
            "track" => EventType::Track,
            "identify" => EventType::Identify,
            "page" => EventType::Page,
            "screen" => EventType::Screen,
            "group" => EventType::Group,
            "alias" => EventType::Alias,
            _ => return None,
        })
    }

    /// Position in [`EventType::ALL`], for per-type tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a whole request body was refused. `respond` maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("content type '{0}' is not supported; send application/json or text/plain")]
    UnsupportedMediaType(String),
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
    #[error("'{field}' is not an RFC 3339 date-time (e.g. 2025-03-15T14:30:00.000Z)")]
    InvalidTimestamp { field: &'static str },
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
            EventError::TooLarge { .. } => "event_too_large",
            EventError::InvalidConsent(_) => "invalid_consent",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Body: content type, encoding, caps
// ---------------------------------------------------------------------------------------------

/// Checks the headers before a byte of the body is read.
pub fn check_headers(headers: &HeaderMap, limits: &Limits) -> Result<Encoding, DecodeError> {
    if let Some(ct) = headers.get(http::header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        // sendBeacon and analytics.js send text/plain (a CORS-simple type: no preflight).
        if !(essence.eq_ignore_ascii_case("application/json") || essence.eq_ignore_ascii_case("text/plain")) {
            return Err(DecodeError::UnsupportedMediaType(truncate(ct, 64)));
        }
    }
    let encoding = match headers.get(http::header::CONTENT_ENCODING) {
        None => Encoding::Identity,
        Some(v) => {
            let v = v.to_str().unwrap_or("").trim();
            if v.is_empty() || v.eq_ignore_ascii_case("identity") {
                Encoding::Identity
            } else if v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip") {
                Encoding::Gzip
            } else {
                return Err(DecodeError::UnsupportedEncoding(truncate(v, 32)));
            }
        }
    };
    // Refuse at once when the client announces a body over the cap.
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()) {
        if let Ok(len) = len.trim().parse::<u64>() {
            if len > limits.max_request_bytes as u64 {
                return Err(DecodeError::PayloadTooLarge { what: "request body", limit: limits.max_request_bytes });
            }
        }
    }
    Ok(encoding)
}

/// The body's content encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Reads the body, never buffering more than the cap, then inflates gzip under the same cap.
pub async fn read_body<B>(body: B, encoding: Encoding, limits: &Limits, timeout: Duration) -> Result<Bytes, DecodeError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limited = Limited::new(body, limits.max_request_bytes);
    let collected = match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => return Err(DecodeError::BodyTimeout(timeout.as_millis() as u64)),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return Err(DecodeError::PayloadTooLarge { what: "request body", limit: limits.max_request_bytes });
            }
            return Err(DecodeError::BodyRead(e.to_string()));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    match encoding {
        Encoding::Identity => Ok(collected),
        Encoding::Gzip => inflate_capped(&collected, limits.max_request_bytes).map(Bytes::from),
    }
}

/// Inflates gzip (all members) into a buffer whose capacity never exceeds `cap + 1` bytes.
pub fn inflate_capped(compressed: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out: Vec<u8> = Vec::with_capacity((compressed.len() * 4).min(cap + 1));
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) => return Err(DecodeError::InvalidGzip(e.to_string())),
        };
        if out.len() + n > cap {
            return Err(DecodeError::PayloadTooLarge { what: "inflated request body", limit: cap });
        }
        if out.len() + n > out.capacity() {
            // Grow by doubling, but never past the cap: `reserve_exact` keeps the promise that
            // a bomb cannot make us allocate more than the limit.
            let want = (out.capacity() * 2).max(out.len() + n).min(cap + 1);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// Parse
// ---------------------------------------------------------------------------------------------

/// A string borrowed from the body when it has no escapes, owned otherwise.
#[derive(Debug)]
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One Segment call as sent: the interpreted fields as raw slices, the rest kept in order.
#[derive(Debug, Default)]
pub struct RawEvent<'a> {
    ty: Option<&'a RawValue>,
    user_id: Option<&'a RawValue>,
    anonymous_id: Option<&'a RawValue>,
    message_id: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    original_timestamp: Option<&'a RawValue>,
    sent_at: Option<&'a RawValue>,
    context: Option<&'a RawValue>,
    write_key: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    group_id: Option<&'a RawValue>,
    previous_id: Option<&'a RawValue>,
    /// Every other field, forwarded verbatim in the order sent.
    rest: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Size of the event's members as sent (keys and values, without insignificant
    /// whitespace): what the per-event cap is checked against.
    size: usize,
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
                visit_event(map)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads one event's members: the interpreted ones into their slots, the rest in order.
fn visit_event<'de, A: MapAccess<'de>>(mut map: A) -> Result<RawEvent<'de>, A::Error> {
    let mut ev = RawEvent { size: 2, ..RawEvent::default() };
    while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
        let value: &'de RawValue = map.next_value()?;
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
                ev.rest.push((key, value));
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

impl<'de> Deserialize<'de> for BatchItem<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BatchItem<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a batch element")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                visit_event(map).map(BatchItem::Event)
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
        d.deserialize_any(V)
    }
}

/// `null` → `None`; a string → its text; anything else → `Err`.
fn opt_str<'a>(raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, ()> {
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
fn opt_id<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Option<Cow<'a, str>>, EventError> {
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
    sent_at: Option<&'a RawValue>,
    write_key: Option<&'a RawValue>,
}

/// Reads a batch body; `capacity` is a guess at the number of events, so that the event list
/// is allocated once instead of doubling (and copying) its way up.
struct BatchSeed {
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for BatchSeed {
    type Value = Batch<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch<'de>, D::Error> {
        struct V(usize);
        impl<'de> Visitor<'de> for V {
            type Value = Batch<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object with a 'batch' array")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut events = None;
                let mut sent_at = None;
                let mut write_key = None;
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    match &*key {
                        "batch" => events = Some(map.next_value_seed(Items { capacity: self.0 })?),
                        "sentAt" => sent_at = Some(map.next_value()?),
                        "writeKey" => write_key = Some(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let events = events.ok_or_else(|| de::Error::missing_field("batch"))?;
                Ok(Batch { events, sent_at, write_key })
            }
        }
        d.deserialize_map(V(self.capacity))
    }
}

/// The `batch` array, into a list allocated with the guessed capacity.
struct Items {
    capacity: usize,
}

impl<'de> DeserializeSeed<'de> for Items {
    type Value = Vec<BatchItem<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V(usize);
        impl<'de> Visitor<'de> for V {
            type Value = Vec<BatchItem<'de>>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(self.0);
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(items)
            }
        }
        d.deserialize_seq(V(self.capacity))
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
        let b = BatchSeed { capacity }.deserialize(&mut de).and_then(|b| de.end().map(|()| b));
        let b: Batch<'a> = b.map_err(|e| match e.classify() {
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

// ---------------------------------------------------------------------------------------------
// Normalise
// ---------------------------------------------------------------------------------------------

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

    // Timestamps. `timestamp` (or `originalTimestamp`, which some SDKs send instead) is the
    // client's clock; `sentAt` is the client's clock at send time. Segment corrects skew as
    // timestamp = receivedAt − (sentAt − timestamp).
    let ts_field = if ev.timestamp.is_some_and(|r| r.get() != "null") { "timestamp" } else { "originalTimestamp" };
    let ts_raw = if ts_field == "timestamp" { ev.timestamp } else { ev.original_timestamp };
    let ts_text = opt_str(ts_raw).map_err(|_| EventError::InvalidTimestamp { field: ts_field })?;
    let client_ts = match ts_text.as_deref() {
        None => None,
        Some(s) => Some(Timestamp::parse(s).ok_or(EventError::InvalidTimestamp { field: ts_field })?),
    };
    let sent_text = opt_str(ev.sent_at).map_err(|_| EventError::InvalidTimestamp { field: "sentAt" })?;
    let sent_at = match sent_text.as_deref() {
        None => cx.batch_sent_at,
        Some(s) => Some(Timestamp::parse(s).ok_or(EventError::InvalidTimestamp { field: "sentAt" })?),
    };
    let timestamp = match (client_ts, sent_at) {
        // An absurd sentAt could push the corrected time out of range: keep the client's then.
        (Some(ts), Some(sent)) => Some(Timestamp(cx.received_at.0 - (sent - ts)).checked().unwrap_or(ts)),
        (Some(ts), None) => Some(ts),
        (None, _) => None,
    };

    let context = match ev.context {
        Some(r) if r.get() == "null" => None,
        Some(r) if r.get().starts_with('{') => Some(r.get()),
        Some(_) => return Err(EventError::InvalidField { field: "context", expected: "must be an object" }),
        None => None,
    };
    // Most contexts carry neither `ip` nor `consent`: a substring search rules each out before
    // a scan of the members.
    let has_member = |c: &str, quoted: &[u8], name: &str| {
        memchr::memmem::find(c.as_bytes(), quoted).is_some() && object_members(c).any(|(k, v)| k == name && v != "null")
    };
    let context_has_ip = context.is_some_and(|c| has_member(c, b"\"ip\"", "ip"));
    let consent_raw = context
        .filter(|c| memchr::memmem::find(c.as_bytes(), b"\"consent\"").is_some())
        .and_then(|c| object_members(c).find(|(k, v)| *k == "consent" && *v != "null").map(|(_, v)| v));
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
    for (name, value) in [("event", ev.event), ("groupId", ev.group_id), ("previousId", ev.previous_id)] {
        if let Some(v) = value.filter(|v| v.get() != "null") {
            write_field(&mut out, name, v.get());
        }
    }
    for (name, value) in &ev.rest {
        write_field(&mut out, name, value.get());
    }
    // context: the client IP added unless the client set one; consent enriched; IP policy.
    out.extend_from_slice(b",\"context\":");
    if consent.is_none() && cx.consent.ip == IpPolicy::Keep {
        match (context, context_has_ip) {
            (Some(c), true) => out.extend_from_slice(c.as_bytes()),
            (Some(c), false) => {
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
            (None, _) => {
                out.extend_from_slice(b"{\"ip\":");
                write_json_str(&mut out, cx.client_ip);
                out.push(b'}');
            }
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
    if let Some(orig) = ts_raw.filter(|r| r.get() != "null") {
        write_field(&mut out, "originalTimestamp", orig.get());
    }
    if let Some(sent) = ev.sent_at.filter(|r| r.get() != "null") {
        write_field(&mut out, "sentAt", sent.get());
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

/// Writes `context` member by member: `consent` replaced by its normalised form with derived
/// `categories`, and `ip` (the client's, else the peer's) passed through the source's IP policy
/// (left out when the policy removes it or it cannot be truncated).
fn write_context_rewritten(
    out: &mut Vec<u8>,
    context: Option<&str>,
    consent: Option<&Consent>,
    cx: &RequestContext<'_>,
) -> Result<(), EventError> {
    let mut client_ip: Option<String> = None;
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    for (k, v) in context.map(object_members).into_iter().flatten() {
        match k {
            "ip" => {
                if v != "null" {
                    let ip = opt_str(serde_json::from_str::<&RawValue>(v).ok())
                        .map_err(|_| EventError::InvalidField { field: "context.ip", expected: "must be a string" })?;
                    client_ip = ip.map(Cow::into_owned);
                }
            }
            "consent" if consent.is_some() => {}
            _ => {
                sep(out);
                out.push(b'"');
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
    if let Some(c) = consent {
        sep(out);
        out.extend_from_slice(b"\"consent\":");
        out.extend_from_slice(c.consent_object_json().as_bytes());
    }
    let ip = client_ip.as_deref().unwrap_or(cx.client_ip);
    if let Some(ip) = cx.consent.ip.apply(ip) {
        sep(out);
        out.extend_from_slice(b"\"ip\":");
        write_json_str(out, &ip);
    }
    out.push(b'}');
    Ok(())
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

fn write_json_str(out: &mut Vec<u8>, s: &str) {
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

/// The top-level members of a JSON object, as (key, value) text slices. The input must be
/// valid JSON (it comes from a `RawValue`, which serde_json has validated), so this scanner only
/// tracks strings and nesting. Keys are returned as written (escapes not decoded).
pub fn object_members(obj: &str) -> Members<'_> {
    let b = obj.as_bytes();
    let start = b.iter().position(|c| *c == b'{').map_or(b.len(), |p| p + 1);
    Members { s: obj, i: start }
}

/// Iterator of [`object_members`].
pub struct Members<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Members<'a> {
    fn skip_ws_and(&mut self, extra: u8) {
        let b = self.s.as_bytes();
        while self.i < b.len() && (b[self.i].is_ascii_whitespace() || b[self.i] == extra) {
            self.i += 1;
        }
    }

    /// Index just past the string starting at `i` (which is a quote).
    fn string_end(&self, mut i: usize) -> usize {
        let b = self.s.as_bytes();
        i += 1;
        // Jump from escape to escape: most strings have none, so this is one memchr.
        while let Some(off) = b.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
            let at = i + off;
            if b[at] == b'"' {
                return at + 1;
            }
            i = at + 2;
        }
        b.len()
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.s.as_bytes();
        self.skip_ws_and(b',');
        if self.i >= b.len() || b[self.i] != b'"' {
            return None;
        }
        let key_end = self.string_end(self.i);
        let key = self.s.get(self.i + 1..key_end.saturating_sub(1))?;
        self.i = key_end;
        self.skip_ws_and(b':');
        let value_start = self.i;
        let mut depth = 0usize;
        // Only structural bytes matter: jump between them (strings are skipped whole).
        while let Some(off) = b
            .get(self.i..)
            .and_then(|rest| rest.iter().position(|c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']' | b',')))
        {
            self.i += off;
            match b[self.i] {
                b'"' => {
                    self.i = self.string_end(self.i);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            self.i += 1;
        }
        if self.i > b.len() {
            self.i = b.len();
        }
        let value = self.s.get(value_start..self.i)?.trim_end();
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_request_bytes: 500 * 1024, max_event_bytes: 32 * 1024, max_batch_events: 2500 }
    }

    static DEFAULT_POLICY: std::sync::LazyLock<ConsentPolicy> = std::sync::LazyLock::new(ConsentPolicy::default);

    fn cx(path_type: Option<EventType>) -> RequestContext<'static> {
        RequestContext {
            path_type,
            received_at: Timestamp::parse("2025-03-15T14:30:10.000Z").unwrap(),
            received_at_text: "2025-03-15T14:30:10.000Z",
            batch_sent_at: None,
            client_ip: "203.0.113.9",
            source_id: "src-1",
            consent: &DEFAULT_POLICY,
        }
    }

    fn norm(body: &str, path_type: Option<EventType>) -> Result<serde_json::Value, EventError> {
        let Body::Single(ev) = parse_body(body.as_bytes(), false, &limits()).unwrap() else { unreachable!() };
        let n = normalise(&ev, &cx(path_type))?;
        Ok(serde_json::from_slice(&n.payload).unwrap())
    }

    #[test]
    fn track_is_normalised() {
        let v = norm(
            r#"{"type":"track","userId":"u1","event":"Signed Up","properties":{"plan":"pro"},"writeKey":"secret","receivedAt":"x","sourceId":"evil"}"#,
            None,
        )
        .unwrap();
        assert_eq!(v["type"], "track");
        assert_eq!(v["event"], "Signed Up");
        assert_eq!(v["properties"]["plan"], "pro");
        assert_eq!(v["sourceId"], "src-1");
        assert_eq!(v["context"]["ip"], "203.0.113.9");
        assert_eq!(v["timestamp"], "2025-03-15T14:30:10.000Z");
        assert_eq!(v["receivedAt"], "2025-03-15T14:30:10.000Z");
        assert!(v.get("writeKey").is_none());
        assert_eq!(uuid::Uuid::parse_str(v["messageId"].as_str().unwrap()).unwrap().get_version_num(), 4);
    }

    #[test]
    fn clock_skew_is_corrected() {
        // The client's clock is 1 h ahead: it says it sent at 15:30:05 an event from 15:30:00;
        // we received it at 14:30:10, so the event happened at 14:30:05.
        let v = norm(
            r#"{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T15:30:00Z","sentAt":"2025-03-15T15:30:05.000Z"}"#,
            None,
        )
        .unwrap();
        assert_eq!(v["timestamp"], "2025-03-15T14:30:05.000Z");
        assert_eq!(v["originalTimestamp"], "2025-03-15T15:30:00Z");
        assert_eq!(v["sentAt"], "2025-03-15T15:30:05.000Z");
    }

    #[test]
    fn batch_sent_at_applies_to_events_without_one() {
        let body = br#"{"batch":[{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T14:29:00.500+01:00"}],"sentAt":"2025-03-15T13:30:00.500Z"}"#;
        let b = parse_body(body, true, &limits()).unwrap();
        let mut c = cx(None);
        c.batch_sent_at = batch_sent_at(&b);
        let Body::Batch(batch) = b else { unreachable!() };
        let ev = parse_event(&batch.events[0], &limits()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&normalise(ev, &c).unwrap().payload).unwrap();
        // 13:29:00.5Z sent at 13:30:00.5Z → 60 s before receipt.
        assert_eq!(v["timestamp"], "2025-03-15T14:29:10.000Z");
    }

    #[test]
    fn client_ip_kept_and_empty_context_gets_ip() {
        let v = norm(r#"{"type":"page","anonymousId":"a","context":{"ip":"1.2.3.4","locale":"en"}}"#, None).unwrap();
        assert_eq!(v["context"]["ip"], "1.2.3.4");
        let v = norm(r#"{"type":"page","anonymousId":"a","context":{ }}"#, None).unwrap();
        assert_eq!(v["context"], serde_json::json!({"ip":"203.0.113.9"}));
        let v = norm(r#"{"type":"page","anonymousId":"a","context":{"ip":null,"x":1}}"#, None).unwrap();
        assert_eq!(v["context"]["ip"], "203.0.113.9");
    }

    #[test]
    fn path_type_and_body_type() {
        assert_eq!(norm(r#"{"userId":"u","traits":{}}"#, Some(EventType::Identify)).unwrap()["type"], "identify");
        assert_eq!(norm(r#"{"userId":"u","type":"identify"}"#, Some(EventType::Identify)).unwrap()["type"], "identify");
        assert_eq!(
            norm(r#"{"userId":"u","type":"track","event":"x"}"#, Some(EventType::Identify)).unwrap_err().code(),
            "invalid_type"
        );
        assert_eq!(norm(r#"{"userId":"u"}"#, None).unwrap_err().code(), "invalid_type");
        assert_eq!(norm(r#"{"userId":"u","type":"purchase"}"#, None).unwrap_err().code(), "invalid_type");
        assert_eq!(norm(r#"{"userId":"u","type":7}"#, None).unwrap_err().code(), "invalid_type");
    }

    #[test]
    fn required_fields_per_type() {
        let cases = [
            (r#"{"type":"track","event":"x"}"#, "missing_identity"),
            (r#"{"type":"track","userId":"","anonymousId":null,"event":"x"}"#, "missing_identity"),
            (r#"{"type":"track","userId":"u"}"#, "missing_event"),
            (r#"{"type":"track","userId":"u","event":"  "}"#, "missing_event"),
            (r#"{"type":"track","userId":"u","event":5}"#, "invalid_field"),
            (r#"{"type":"group","userId":"u"}"#, "missing_group_id"),
            (r#"{"type":"alias","userId":"u"}"#, "missing_previous_id"),
            (r#"{"type":"alias","anonymousId":"a","previousId":"p"}"#, "missing_user_id"),
            (r#"{"type":"identify","userId":{"a":1}}"#, "invalid_field"),
            (r#"{"type":"identify","userId":"u","timestamp":"yesterday"}"#, "invalid_timestamp"),
            (r#"{"type":"identify","userId":"u","context":"x"}"#, "invalid_field"),
        ];
        for (body, code) in cases {
            assert_eq!(norm(body, None).unwrap_err().code(), code, "{body}");
        }
        // Numbers are valid ids (analytics-python may send them) and are forwarded as strings.
        let v = norm(r#"{"type":"alias","userId":42,"previousId":7}"#, None).unwrap();
        assert_eq!(v["userId"], "42");
        assert_eq!(v["previousId"], 7);
        let v = norm(r#"{"type":"group","anonymousId":"a","groupId":"g"}"#, None).unwrap();
        assert_eq!(v["groupId"], "g");
    }

    #[test]
    fn escaped_keys_and_values_survive() {
        let v = norm(r#"{"type":"track","userId":"u\"1","event":"a\nb","prop\"s":{"k":"\u00e9"}}"#, None).unwrap();
        assert_eq!(v["userId"], "u\"1");
        assert_eq!(v["event"], "a\nb");
        assert_eq!(v["prop\"s"]["k"], "é");
    }

    #[test]
    fn invalid_json_names_byte_offset() {
        let err = parse_body(b"{\"type\":\"track\",\n \"userId\": }", false, &limits()).unwrap_err();
        match err {
            DecodeError::InvalidJson { offset, .. } => assert_eq!(offset, 28),
            e => panic!("{e:?}"),
        }
        assert!(matches!(parse_body(b"[1,2]", false, &limits()), Err(DecodeError::Event(EventError::NotAnObject))));
        assert!(matches!(parse_body(b"{\"batch\":3}", true, &limits()), Err(DecodeError::InvalidBody(_))));
        assert!(matches!(parse_body(b"{\"batch\":[]}", true, &limits()), Err(DecodeError::InvalidBody(_))));
        assert!(matches!(parse_body(b"  ", true, &limits()), Err(DecodeError::InvalidBody(_))));
    }

    #[test]
    fn caps() {
        let mut l = limits();
        l.max_batch_events = 2;
        l.max_event_bytes = 40;
        let body = br#"{"batch":[{"type":"track"},{"type":"track"},{"type":"track"}]}"#;
        assert!(matches!(parse_body(body, true, &l), Err(DecodeError::TooManyEvents { count: 3, limit: 2 })));
        let big = format!(r#"{{"type":"track","userId":"u","event":"{}"}}"#, "x".repeat(50));
        assert!(matches!(parse_body(big.as_bytes(), false, &l), Err(DecodeError::Event(EventError::TooLarge { .. }))));
        let body = format!(r#"{{"batch":[{big},{{"a":1}}]}}"#);
        let Body::Batch(b) = parse_body(body.as_bytes(), true, &l).unwrap() else { unreachable!() };
        assert_eq!(parse_event(&b.events[0], &l).unwrap_err().code(), "event_too_large");
        assert!(parse_event(&b.events[1], &l).is_ok());
        let Body::Batch(b) = parse_body(br#"{"batch":[1,"x",[1,[2]],null,true,{"a":1}]}"#, true, &limits()).unwrap()
        else {
            unreachable!()
        };
        let codes: Vec<_> = b.events.iter().map(|i| parse_event(i, &l).err().map(|e| e.code())).collect();
        assert_eq!(codes, vec![Some("invalid_event"); 5].into_iter().chain([None]).collect::<Vec<_>>());
    }

    #[test]
    fn gzip_bomb_stops_at_the_cap() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap(); // 64 MiB of zeros in ≈64 KiB
        assert!(bomb.len() < 100 * 1024);
        let err = inflate_capped(&bomb, 500 * 1024).unwrap_err();
        assert!(matches!(err, DecodeError::PayloadTooLarge { .. }), "{err:?}");
        // Under the cap it inflates exactly.
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"{\"a\":1}").unwrap();
        assert_eq!(inflate_capped(&enc.finish().unwrap(), 100).unwrap(), b"{\"a\":1}");
        // Right at the cap: it inflates, and the buffer never grew past cap + 1.
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'x'; 100_000]).unwrap();
        let out = inflate_capped(&enc.finish().unwrap(), 100_000).unwrap();
        assert_eq!(out.len(), 100_000);
        assert!(out.capacity() <= 100_001, "capacity {}", out.capacity());
        assert!(matches!(inflate_capped(b"not gzip", 100), Err(DecodeError::InvalidGzip(_))));
    }

    #[test]
    fn object_members_scans_top_level_only() {
        let obj = r#"{ "a" : 1, "b\"q": {"ip":"x","n":[1,{"c":"}"}]}, "ip":"1.2.3.4" ,"e":[],"f":"a,b"}"#;
        let m: Vec<(&str, &str)> = object_members(obj).collect();
        assert_eq!(
            m,
            vec![
                ("a", "1"),
                ("b\\\"q", r#"{"ip":"x","n":[1,{"c":"}"}]}"#),
                ("ip", "\"1.2.3.4\""),
                ("e", "[]"),
                ("f", "\"a,b\""),
            ]
        );
        assert_eq!(object_members("{}").count(), 0);
        assert_eq!(object_members("{ }").count(), 0);
    }
}
