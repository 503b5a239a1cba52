//! Decode: request body → typed Segment calls → normalised events ready to publish.
//!
//! Owns: the content-type and content-encoding rules, the body caps (enforced while the body
//! streams, and again while gzip inflates, so a bomb cannot make us allocate past the cap), the
//! typed parse, the per-event checks of the Segment spec, the JSON limits every forwarded
//! subtree must meet ([`MAX_DEPTH`], paired surrogate escapes), and normalisation (messageId,
//! timestamps and clock skew, a batch's own `context`/`integrations`/`sentAt` merged into its
//! calls, `context.ip`, `sourceId`, dropping `writeKey`).
//! Must not: look up write keys (auth does), apply contracts (validate does) or publish.
//!
//! Why the parse looks the way it does: events are parsed into a typed struct whose values are
//! borrowed `&RawValue` slices of the request body. The fields the gateway interprets (type,
//! ids, timestamps, context) are read from those slices; everything else (`properties`,
//! `traits`, `integrations`, …) is forwarded byte for byte. This is ≈4× cheaper than building a
//! `serde_json::Value` (measured in `../shared/kafka-testing.md`, and in `benches/`), and it
//! means we never reorder or reformat what the client sent.
//!
//! The price of forwarding slices is that serde_json does not look inside them: a `RawValue`
//! is skipped without a depth limit and without checking that `\u` escapes pair up. The contract
//! checker parses the event again and refuses both, so [`normalise`] checks each forwarded
//! subtree itself (`check_forwarded`): what decode accepts, the checker can always read.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use memchr::memmem;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Limits;
use crate::consent::{Consent, ConsentPolicy, Decision as ConsentDecision, IpPolicy};
use crate::timestamp::Timestamp;

/// How many JSON containers may nest in one event, the event object counting as the first.
/// serde_json's parser stops at 128 for what it parses, but not inside the `RawValue` slices we
/// forward; decode checks those against this, and the contract checker's parser
/// (`validate::tape`) refuses anything deeper, so both must read this one constant.
pub const MAX_DEPTH: u32 = 128;

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
    /// Every other field, forwarded verbatim in the order sent (a repeated name keeps its
    /// first place and its last value, as the interpreted fields do: a record never has a
    /// duplicate key).
    rest: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// Size of the event's members as sent (keys and values, without insignificant
    /// whitespace): what the per-event cap is checked against.
    size: usize,
    /// The first member name that holds a lone surrogate escape: the event is refused, but
    /// only it (serde_json would refuse the whole body if it decoded the name itself).
    bad_name: Option<&'a RawValue>,
    /// What the batch around this event sets for all its calls (nothing on single calls).
    batch: BatchFields<'a>,
}

/// A batch's own `context`, `integrations` and `sentAt`, which apply to each of its calls.
/// `context` and `integrations` are objects (checked once per batch in [`parse_body`]).
#[derive(Debug, Default, Clone, Copy)]
struct BatchFields<'a> {
    context: Option<&'a RawValue>,
    integrations: Option<&'a RawValue>,
    sent_at: Option<&'a RawValue>,
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
/// checked here once, as the calls' own members are in [`normalise`], and a bad one refuses the
/// body: it would be wrong in every event.
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

/// Writes `context` member by member: `ip` (the client's, else the peer's) passed through the
/// source's IP policy and `consent` replaced by its normalised form with derived `categories`,
/// each in the place of the client's member (the first one, when a name is repeated: a record
/// never has a duplicate key), else at the end; `ip` is left out when the policy removes it.
fn write_context_rewritten(
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
fn merge_objects(own: &str, shared: &str) -> String {
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
static FIND_IP: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"ip\""));
static FIND_CONSENT: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"consent\""));

/// The value of member `name` of the object `obj` (the last one when it is repeated, as JSON
/// readers take it), unless it is `null`. Without escapes in `obj` (`!escaped`), `quoted` (a
/// search for the name in quotes) rules most objects out before a scan of the members.
fn member_value<'o>(obj: &'o str, name: &str, quoted: &memmem::Finder<'_>, escaped: bool) -> Option<&'o str> {
    if !escaped && quoted.find(obj.as_bytes()).is_none() {
        return None;
    }
    object_members(obj).filter(|(k, _)| name_text(k) == name).last().map(|(_, v)| v).filter(|v| *v != "null")
}

/// Whether `obj` (without escaped names) has exactly one member `name`, and it is a string.
fn one_string_member(obj: &str, name: &str) -> bool {
    let mut found = object_members(obj).filter(|(k, _)| *k == name);
    matches!((found.next(), found.next()), (Some((_, v)), None) if v.starts_with('"'))
}

/// A member name as [`object_members`] returns it (between the quotes, escapes as written),
/// unescaped. Names with a backslash are rare; one that does not decode (which
/// [`check_forwarded`] has already refused) is compared as written.
fn name_text(raw: &str) -> Cow<'_, str> {
    if !raw.as_bytes().contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    serde_json::from_str::<String>(&format!("\"{raw}\"")).map_or(Cow::Borrowed(raw), Cow::Owned)
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

// ---------------------------------------------------------------------------------------------
// JSON limits of forwarded subtrees
// ---------------------------------------------------------------------------------------------

/// Refuses an event whose forwarded JSON the contract checker (or any strict reader) could not
/// read: a member name with a lone surrogate escape, or a forwarded value nested deeper than
/// [`MAX_DEPTH`] or holding one. The interpreted fields are decoded by serde_json, which
/// already refuses both; the slices forwarded as sent are checked here.
fn check_event_json(ev: &RawEvent<'_>) -> Result<(), EventError> {
    if let Some(name) = ev.bad_name {
        return Err(unfit(name.get().trim_matches('"'), Unfit::LoneSurrogate));
    }
    let slots =
        [("context", ev.context), ("event", ev.event), ("groupId", ev.group_id), ("previousId", ev.previous_id)];
    for (name, value) in slots {
        if let Some(v) = value {
            check_forwarded(v.get(), 1).map_err(|(_, reason)| unfit(name, reason))?;
        }
    }
    for (name, value) in &ev.rest {
        check_forwarded(value.get(), 1).map_err(|(_, reason)| unfit(name, reason))?;
    }
    Ok(())
}

#[cold]
fn unfit(member: &str, reason: Unfit) -> EventError {
    EventError::InvalidJson { member: truncate(member, 64), reason }
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

/// Checks one JSON value (valid JSON: serde_json has matched its brackets and strings) that
/// sits `depth` containers deep in the event (1 for a member of the event object): on failure,
/// the byte offset in `text` and why. As in the checker's parser, a container `MAX_DEPTH` or
/// more containers deep is refused.
fn check_forwarded(text: &str, depth: u32) -> Result<(), (usize, Unfit)> {
    let b = text.as_bytes();
    // Shorter than `"\ud800"`, and than four levels of brackets: nothing to find (most ids,
    // numbers and flags).
    if b.len() < 8 {
        return Ok(());
    }
    // Escapes only occur in strings, and most values have none: one memchr rules them out.
    if memchr::memchr(b'\\', b).is_some() {
        if let Some(at) = lone_surrogate(b) {
            return Err((at, Unfit::LoneSurrogate));
        }
    }
    // The nesting cannot exceed half the length (a level takes two brackets), nor the number
    // of opening brackets (in strings or not): most values are ruled out by their length, the
    // rest by a vectorised search that stops at the budget. Only a value with that many
    // brackets needs the exact walk.
    let budget = MAX_DEPTH.saturating_sub(depth) as usize;
    if b.len() > 2 * budget && memchr::memchr2_iter(b'{', b'[', b).nth(budget).is_some() {
        if let Some(at) = too_deep(b, budget) {
            return Err((at, Unfit::TooDeep));
        }
    }
    Ok(())
}

/// Offset of the first `\u` escape of an unpaired surrogate in valid JSON text `b`: a high
/// half (D800–DBFF) not directly followed by an escaped low half (DC00–DFFF), or a low half
/// on its own. serde_json refuses exactly these when it decodes a string.
fn lone_surrogate(b: &[u8]) -> Option<usize> {
    let hex4 = |at: usize| -> Option<u16> {
        let s = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    };
    let mut i = 0;
    // From escape to escape: each is consumed whole, so `\\u` (an escaped backslash, then
    // `u`) is never read as a `\u` escape.
    while let Some(at) = b.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)).map(|off| i + off) {
        if b.get(at + 1) != Some(&b'u') {
            i = at + 2;
            continue;
        }
        match hex4(at + 2) {
            Some(0xD800..=0xDBFF) => {
                let paired = b.get(at + 6..at + 8) == Some(b"\\u".as_slice())
                    && hex4(at + 8).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo));
                if !paired {
                    return Some(at);
                }
                i = at + 12;
            }
            Some(0xDC00..=0xDFFF) => return Some(at),
            _ => i = at + 6,
        }
    }
    None
}

/// Offset of the first bracket that opens level `budget + 1` of valid JSON text `b` (strings
/// skipped whole), if any.
fn too_deep(b: &[u8], budget: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(at) = b
        .get(i..)
        .and_then(|rest| rest.iter().position(|c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']')))
        .map(|off| i + off)
    {
        match b[at] {
            b'"' => {
                i = string_end(b, at);
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > budget {
                    return Some(at);
                }
            }
            _ => depth = depth.saturating_sub(1),
        }
        i = at + 1;
    }
    None
}

/// Index just past the JSON string that starts at `b[i]` (a quote).
fn string_end(b: &[u8], mut i: usize) -> usize {
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
    fn string_end(&self, i: usize) -> usize {
        string_end(self.s.as_bytes(), i)
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
        let raw = norm_raw(body, path_type)?;
        Ok(serde_json::from_str(&raw).unwrap())
    }

    /// The normalised event as the bytes a sink gets, checked to have no duplicate key.
    fn norm_raw(body: &str, path_type: Option<EventType>) -> Result<String, EventError> {
        let Body::Single(ev) = parse_body(body.as_bytes(), false, &limits()).unwrap() else { unreachable!() };
        let n = normalise(&ev, &cx(path_type))?;
        let text = String::from_utf8(n.payload).unwrap();
        assert_no_duplicate_keys(&text);
        Ok(text)
    }

    /// The raw text of top-level member `name` of a normalised event.
    fn member<'t>(event: &'t str, name: &str) -> &'t str {
        object_members(event).find(|(k, _)| *k == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no {name}: {event}"))
    }

    /// Each event of a batch body, normalised (with the batch's sentAt, as the handler does).
    fn norm_batch(body: &str) -> Vec<Result<String, EventError>> {
        let b = parse_body(body.as_bytes(), true, &limits()).unwrap();
        let mut c = cx(None);
        c.batch_sent_at = batch_sent_at(&b);
        let Body::Batch(batch) = &b else { unreachable!() };
        batch
            .events
            .iter()
            .map(|item| {
                let n = parse_event(item, &limits()).and_then(|ev| normalise(ev, &c))?;
                let text = String::from_utf8(n.payload).unwrap();
                assert_no_duplicate_keys(&text);
                Ok(text)
            })
            .collect()
    }

    /// What a strict reader (Jackson with duplicate detection, Snowflake's PARSE_JSON) checks:
    /// no object anywhere repeats a member name. Independent of decode's own scanner.
    fn assert_no_duplicate_keys(text: &str) {
        struct Strict;
        impl<'de> Deserialize<'de> for Strict {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(StrictVisitor)
            }
        }
        struct StrictVisitor;
        impl<'de> Visitor<'de> for StrictVisitor {
            type Value = Strict;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = map.next_key::<String>()? {
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    map.next_value::<Strict>()?;
                }
                Ok(Strict)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
                while seq.next_element::<Strict>()?.is_some() {}
                Ok(Strict)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
                Ok(Strict)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
                Ok(Strict)
            }
        }
        if let Err(e) = serde_json::from_str::<Strict>(text) {
            panic!("{e}: {text}");
        }
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
        // Raw bytes, not a parsed value: a parser that keeps the last of two `ip` keys would
        // hide a duplicate.
        let context = |c: &str| {
            let e = norm_raw(&format!(r#"{{"type":"page","anonymousId":"a","context":{c}}}"#), None).unwrap();
            member(&e, "context").to_string()
        };
        assert_eq!(context(r#"{"ip":"1.2.3.4","locale":"en"}"#), r#"{"ip":"1.2.3.4","locale":"en"}"#);
        assert_eq!(context(r#"{"locale":"en"}"#), r#"{"locale":"en","ip":"203.0.113.9"}"#);
        assert_eq!(context("{ }"), r#"{"ip":"203.0.113.9"}"#);
        assert_eq!(norm_raw(r#"{"type":"page","anonymousId":"a"}"#, None).unwrap().matches(r#""ip":"#).count(), 1);
        // A null ip is the peer's, in the client's place.
        assert_eq!(context(r#"{"ip":null,"x":1}"#), r#"{"ip":"203.0.113.9","x":1}"#);
    }

    #[test]
    fn context_ip_is_replaced_in_place_never_duplicated() {
        let context = |c: &str| {
            let e = norm_raw(&format!(r#"{{"type":"page","anonymousId":"a","context":{c}}}"#), None).unwrap();
            member(&e, "context").to_string()
        };
        // A name spelled with escapes is the same name.
        assert_eq!(context(r#"{"\u0069p":"1.2.3.4","x":1}"#), r#"{"ip":"1.2.3.4","x":1}"#);
        assert_eq!(context(r#"{"x":"a\"b","\u0069p":null}"#), r#"{"x":"a\"b","ip":"203.0.113.9"}"#);
        // Repeated: one member, in the first one's place, with the last value (as JSON readers
        // take it).
        assert_eq!(context(r#"{"ip":"1.1.1.1","x":1,"ip":"2.2.2.2"}"#), r#"{"ip":"2.2.2.2","x":1}"#);
        assert_eq!(context(r#"{"ip":"1.1.1.1","ip":null}"#), r#"{"ip":"203.0.113.9"}"#);
        // With consent (the member-by-member path): both stay where the client put them.
        let c = context(r#"{"ip":null,"consent":{"analytics":true},"x":1}"#);
        assert!(c.starts_with(r#"{"ip":"203.0.113.9","consent":{"#), "{c}");
        assert!(c.ends_with(r#","x":1}"#), "{c}");
        let c = context(r#"{"con\u0073ent":{"analytics":false},"ip":"1.2.3.4"}"#);
        assert!(c.starts_with(r#"{"consent":{"#) && c.ends_with(r#","ip":"1.2.3.4"}"#), "{c}");
        assert!(c.contains(r#""analytics":false"#), "{c}");
        // Still refused when it is not a string.
        let err = norm(r#"{"type":"page","anonymousId":"a","context":{"ip":5}}"#, None).unwrap_err();
        assert_eq!(err.code(), "invalid_field");
    }

    #[test]
    fn repeated_top_level_members_are_written_once() {
        let e =
            norm_raw(r#"{"type":"track","userId":"u","event":"e","properties":{"a":1},"properties":{"b":2}}"#, None)
                .unwrap();
        assert_eq!(member(&e, "properties"), r#"{"b":2}"#);
        let e = norm_raw(r#"{"type":"track","userId":"u","event":"e","\u0074raits":{"a":1},"traits":{"b":2}}"#, None)
            .unwrap();
        assert_eq!(member(&e, "traits"), r#"{"b":2}"#);
    }

    #[test]
    fn batch_context_and_integrations_apply_to_each_call() {
        let body = r#"{"batch":[
            {"type":"track","userId":"u","event":"e"},
            {"type":"track","userId":"u","event":"e","context":{"device":{"id":"d-1"},"locale":"fr"},"integrations":{"Mixpanel":false,"All":true}},
            {"type":"track","userId":"u","event":"e","context":null,"integrations":null},
            {"type":"track","userId":"u","event":"e","context":{"\u0064evice":{"type":"tablet"}},"integrations":"none"},
            {"type":"track","userId":"u","event":"e","context":{ },"integrations":{}}
        ],"context":{"device":{"type":"phone"},"library":{"name":"analytics-python"}},"integrations":{"All":false}}"#;
        let events: Vec<String> = norm_batch(body).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            member(&events[0], "context"),
            r#"{"device":{"type":"phone"},"library":{"name":"analytics-python"},"ip":"203.0.113.9"}"#
        );
        assert_eq!(member(&events[0], "integrations"), r#"{"All":false}"#);
        // The call's own members win, whole (not merged deeper).
        assert_eq!(
            member(&events[1], "context"),
            r#"{"device":{"id":"d-1"},"locale":"fr","library":{"name":"analytics-python"},"ip":"203.0.113.9"}"#
        );
        assert_eq!(member(&events[1], "integrations"), r#"{"Mixpanel":false,"All":true}"#);
        assert_eq!(member(&events[2], "integrations"), r#"{"All":false}"#);
        let v: serde_json::Value = serde_json::from_str(&events[2]).unwrap();
        assert_eq!(v["context"]["device"]["type"], "phone");
        // Names compare unescaped; a call's integrations that is not an object is its own.
        let v: serde_json::Value = serde_json::from_str(&events[3]).unwrap();
        assert_eq!(v["context"]["device"], serde_json::json!({"type":"tablet"}));
        assert_eq!(v["integrations"], "none");
        assert_eq!(
            member(&events[4], "context"),
            r#"{"device":{"type":"phone"},"library":{"name":"analytics-python"},"ip":"203.0.113.9"}"#
        );
        assert_eq!(member(&events[4], "integrations"), r#"{"All":false}"#);

        // A batch-level one that is not an object refuses the body; null and {} are nothing.
        for bad in [r#""context":"x""#, r#""integrations":[1]"#] {
            let body = format!(r#"{{"batch":[{{"type":"track","userId":"u","event":"e"}}],{bad}}}"#);
            assert!(matches!(parse_body(body.as_bytes(), true, &limits()), Err(DecodeError::InvalidBody(_))), "{bad}");
        }
        let body = r#"{"batch":[{"type":"track","userId":"u","event":"e","context":{"a":1}}],"context":{},"integrations":null}"#;
        let e = norm_batch(body).remove(0).unwrap();
        assert_eq!(member(&e, "context"), r#"{"a":1,"ip":"203.0.113.9"}"#);
        assert!(object_members(&e).all(|(k, _)| k != "integrations"), "{e}");
        // A batch-level consent is the call's consent.
        let body = r#"{"batch":[{"type":"track","userId":"u","event":"e"}],"context":{"consent":{"analytics":true}}}"#;
        let v: serde_json::Value = serde_json::from_str(&norm_batch(body).remove(0).unwrap()).unwrap();
        assert_eq!(v["context"]["consent"]["categories"]["analytics"], true, "{v}");
    }

    #[test]
    fn batch_sent_at_is_carried_onto_its_calls() {
        let body = r#"{"batch":[
            {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z"},
            {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z","sentAt":"2025-03-15T13:29:30.5Z"},
            {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z","sentAt":"soon"},
            {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z","sentAt":7}
        ],"sentAt":"2025-03-15T13:30:00.500Z"}"#;
        let events: Vec<String> = norm_batch(body).into_iter().map(Result::unwrap).collect();
        // Each call carries the sentAt its timestamp was corrected with, as the client wrote it.
        assert_eq!(member(&events[0], "sentAt"), r#""2025-03-15T13:30:00.500Z""#);
        assert_eq!(member(&events[0], "timestamp"), r#""2025-03-15T14:29:10.000Z""#);
        assert_eq!(member(&events[1], "sentAt"), r#""2025-03-15T13:29:30.5Z""#);
        assert_eq!(member(&events[1], "timestamp"), r#""2025-03-15T14:29:40.000Z""#);
        // A call's own sentAt that is not a date-time is ignored: the batch's applies.
        for e in &events[2..] {
            assert_eq!(member(e, "sentAt"), r#""2025-03-15T13:30:00.500Z""#, "{e}");
            assert_eq!(member(e, "timestamp"), r#""2025-03-15T14:29:10.000Z""#, "{e}");
        }
        // Without a batch sentAt, nothing is invented.
        let body = r#"{"batch":[{"type":"track","userId":"u","event":"e","sentAt":"soon"}],"sentAt":"later"}"#;
        let e = norm_batch(body).remove(0).unwrap();
        assert!(object_members(&e).all(|(k, _)| k != "sentAt"), "{e}");
    }

    #[test]
    fn sent_at_that_does_not_parse_is_ignored() {
        for sent in [r#""yesterday""#, "12", "{}", r#""2025-03-15""#] {
            let body = format!(
                r#"{{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T15:30:00Z","sentAt":{sent}}}"#
            );
            let e = norm_raw(&body, None).unwrap();
            // Uncorrected, and the unusable sentAt is not forwarded.
            assert_eq!(member(&e, "timestamp"), r#""2025-03-15T15:30:00.000Z""#, "{sent}");
            assert!(object_members(&e).all(|(k, _)| k != "sentAt"), "{e}");
        }
    }

    #[test]
    fn original_timestamp_is_the_device_time() {
        // The issue's example: device clock 1 h ahead; the client's `timestamp` is not the
        // device time and must not drive the correction.
        let e = norm_raw(
            r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","timestamp":"2025-03-15T14:30:00Z","sentAt":"2025-03-15T15:30:05Z"}"#,
            None,
        )
        .unwrap();
        assert_eq!(member(&e, "timestamp"), r#""2025-03-15T14:30:05.000Z""#);
        assert_eq!(member(&e, "originalTimestamp"), r#""2025-03-15T15:30:00Z""#);
        // Without sentAt there is nothing to correct: the client's timestamp stands, and its
        // originalTimestamp is kept.
        let e = norm_raw(
            r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","timestamp":"2025-03-15T14:30:00Z"}"#,
            None,
        )
        .unwrap();
        assert_eq!(member(&e, "timestamp"), r#""2025-03-15T14:30:00.000Z""#);
        assert_eq!(member(&e, "originalTimestamp"), r#""2025-03-15T15:30:00Z""#);
        // Only originalTimestamp: it is corrected the same way.
        let e = norm_raw(
            r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","sentAt":"2025-03-15T15:30:05Z"}"#,
            None,
        )
        .unwrap();
        assert_eq!(member(&e, "timestamp"), r#""2025-03-15T14:30:05.000Z""#);
        assert_eq!(member(&e, "originalTimestamp"), r#""2025-03-15T15:30:00Z""#);
        // Each is still checked.
        let err = norm(
            r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","timestamp":"then"}"#,
            None,
        )
        .unwrap_err();
        assert_eq!(err, EventError::InvalidTimestamp { field: "timestamp" });
    }

    #[test]
    fn iso8601_timestamps_are_accepted() {
        for ts in ["2025-03-15T15:30:00+0100", "2025-03-15T14:30Z", "2025-03-15t14:30:00.1234z", "2025-03-15T15:30+01"]
        {
            let body = format!(r#"{{"type":"track","userId":"u","event":"e","timestamp":"{ts}"}}"#);
            let e = norm_raw(&body, None).unwrap_or_else(|e| panic!("{ts}: {e}"));
            assert!(member(&e, "timestamp").starts_with(r#""2025-03-15T14:30:00."#), "{e}");
            assert_eq!(member(&e, "originalTimestamp"), format!("\"{ts}\""));
        }
        let body = r#"{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T14:30:00","sentAt":"2025-03-15T14:30+0000"}"#;
        assert_eq!(norm(body, None).unwrap_err(), EventError::InvalidTimestamp { field: "timestamp" });
    }

    #[test]
    fn deep_or_unpaired_surrogate_json_is_refused_per_event() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let track = |extra: &str| format!(r#"{{"type":"track","userId":"u","event":"e",{extra}}}"#);
        // The event is level 1, `properties` level 2: 126 arrays inside it reach level 128, the
        // checker's limit (serde_json's default reader, used by `norm`, stops at 127).
        let deepest = track(&format!(r#""properties":{{"pad":{}}}"#, nest(126)));
        let Body::Single(ev) = parse_body(deepest.as_bytes(), false, &limits()).unwrap() else { unreachable!() };
        assert!(normalise(&ev, &cx(None)).is_ok());
        let err = norm(&track(&format!(r#""properties":{{"pad":{}}}"#, nest(127))), None).unwrap_err();
        assert_eq!(err.code(), "invalid_json");
        assert_eq!(err.to_string(), "'properties' is nested more than 128 levels deep (counting the event itself)");
        // Brackets inside strings are not nesting.
        assert!(norm(&track(&format!(r#""properties":{{"s":"{}"}}"#, "[".repeat(300))), None).is_ok());
        // Every forwarded member is checked, the gateway's own slots included.
        for member in ["context", "traits", "integrations"] {
            let err = norm(&track(&format!(r#""{member}":{{"pad":{}}}"#, nest(200))), None).unwrap_err();
            assert_eq!(err.code(), "invalid_json", "{member}");
            assert!(err.to_string().starts_with(&format!("'{member}' is nested")), "{err}");
        }
        let err = norm(&format!(r#"{{"type":"page","userId":"u","groupId":{}}}"#, nest(200)), None).unwrap_err();
        assert_eq!(err.code(), "invalid_json");

        for bad in [
            r#""properties":{"\ud800":1}"#,
            r#""properties":{"a":"\udc00"}"#,
            r#""properties":{"a":["x\uD83D"]}"#,
            r#""properties":{"a":"\ud83d\u0041"}"#,
            r#""properties":{"a":"\ud83d\n"}"#,
            r#""context":{"page":{"title":"\uDBFF\uDBFF"}}"#,
        ] {
            let err = norm(&track(bad), None).unwrap_err();
            assert_eq!(err.code(), "invalid_json", "{bad}");
            assert!(err.to_string().contains("surrogate"), "{bad}: {err}");
        }
        // In a single call's own member names, serde_json refuses the body (which is the event).
        for bad in [r#""\ud800":1"#, r#""prop\ud800erties":{}"#] {
            let body = track(bad);
            let err = parse_body(body.as_bytes(), false, &limits()).unwrap_err();
            assert!(matches!(err, DecodeError::InvalidJson { .. }), "{bad}: {err:?}");
        }
        for good in [
            r#""properties":{"a":"\ud83d\ude00"}"#,
            r#""properties":{"\uD83D\uDE00":"\u00e9\\ud800"}"#,
            r#""properties":{"a":"\\ud800"}"#,
        ] {
            let v = norm(&track(good), None).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(v["properties"].is_object(), "{good}");
        }

        // In a batch, only the bad events are refused.
        let body = format!(
            r#"{{"batch":[{},{},{},{}]}}"#,
            track(&format!(r#""properties":{{"pad":{}}}"#, nest(200))),
            track(r#""properties":{"ok":1}"#),
            track(r#""properties":{"\ud800":1}"#),
            track(r#""\udfff":1"#),
        );
        let codes: Vec<_> = norm_batch(&body).iter().map(|r| r.as_ref().err().map(EventError::code)).collect();
        assert_eq!(codes, [Some("invalid_json"), None, Some("invalid_json"), Some("invalid_json")]);
        // The reparse that keeps such names apart accepts nothing else: a real syntax error, or
        // a bad name outside the events, still refuses the body with the first error.
        let body = format!(r#"{{"batch":[{},{{"type":"track",}}]}}"#, track(r#""\ud800":1"#));
        match parse_body(body.as_bytes(), true, &limits()) {
            Err(DecodeError::InvalidJson { offset, .. }) => assert_eq!(offset, body.find("\\ud800").unwrap() + 6),
            other => panic!("{other:?}"),
        }
        let body = format!(r#"{{"batch":[{}],"\udc00":1}}"#, track(r#""a":1"#));
        assert!(matches!(parse_body(body.as_bytes(), true, &limits()), Err(DecodeError::InvalidJson { .. })));
        // A batch-level context that is unfit would be unfit in every call: the body is refused.
        let body = format!(r#"{{"batch":[{}],"context":{{"pad":{}}}}}"#, track(r#""a":1"#), nest(200));
        match parse_body(body.as_bytes(), true, &limits()) {
            Err(DecodeError::InvalidJson { offset, detail }) => {
                // The call is level 1 and the context level 2: its 127th array would open level 129.
                assert_eq!(offset, body.find("[[").unwrap() + 126, "{detail}");
                assert!(detail.contains("context"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The surrogate rule is serde_json's own: every string it refuses to decode is refused,
    /// every one it decodes passes.
    #[test]
    fn surrogate_check_agrees_with_serde_json() {
        let units = ["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud7ff", "\\ue000", "\\u0041", "\\n", "\\\\", "x"];
        for a in units {
            for b in units {
                for c in units {
                    let s = format!("\"{a}{b}{c}\"");
                    let serde_ok = serde_json::from_str::<String>(&s).is_ok();
                    assert_eq!(lone_surrogate(s.as_bytes()).is_none(), serde_ok, "{s}");
                }
            }
        }
    }

    #[test]
    fn depth_limit_is_the_checker_limit() {
        // A value `depth` containers deep may open MAX_DEPTH - depth more.
        let nest = |n: usize| format!("{}{}", "[{\"a\":".repeat(n / 2), "}]".repeat(n / 2));
        assert!(check_forwarded(&nest(126), 1).is_ok());
        assert!(check_forwarded(&nest(128), 1).is_err());
        assert!(check_forwarded(&nest(128), 0).is_ok());
        assert!(check_forwarded(&nest(130), 0).is_err());
        assert_eq!(MAX_DEPTH, 128);
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
        assert_eq!(v["previousId"], "7");
        let v = norm(r#"{"type":"group","anonymousId":"a","groupId":"g"}"#, None).unwrap();
        assert_eq!(v["groupId"], "g");
        let v = norm(r#"{"type":"group","anonymousId":"a","groupId":-1.5e3}"#, None).unwrap();
        assert_eq!(v["groupId"], "-1.5e3");
        let v = norm(r#"{"type":"track","anonymousId":"a","event":"e","groupId":12,"previousId":"p"}"#, None).unwrap();
        assert_eq!((&v["groupId"], &v["previousId"]), (&serde_json::json!("12"), &serde_json::json!("p")));
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
