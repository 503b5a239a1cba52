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
//! checker parses the event again and refuses both, so [`normalise`](fn@normalise) checks each
//! forwarded subtree itself (`check_forwarded`, in `fit`): what decode accepts, the checker can
//! always read.
//!
//! # Layout (data-flow order)
//! - `body`: content encoding (any content type is read as JSON), the caps ([`Limits`]),
//!   reading the body and inflating gzip under the cap.
//! - `parse`: the typed borrowed parse of a single call or a batch ([`parse_body`],
//!   [`parse_event`]).
//! - `fit`: the JSON limits of forwarded subtrees ([`MAX_DEPTH`], paired surrogate escapes).
//! - `normalise`: the per-event checks and the normalised event ([`normalise`](fn@normalise)).
//! - `context`: the `context` rewrite (`ip`, `consent`) and merging a batch's objects into a
//!   call's.
//! - `members`: the scanner of an object's top-level members ([`object_members`]).
//! - `errors`: [`DecodeError`] (a whole body) and [`EventError`] (one event).
//! - [`timestamp`]: ISO 8601 parse and format on the hot path.
//!
//! This file holds the call types ([`EventType`]) and the re-exports; the rest of the crate
//! names everything as `decode::…`.

mod body;
mod context;
mod errors;
mod fit;
mod members;
mod normalise;
mod parse;
#[cfg(test)]
mod tests;
pub mod timestamp;

use std::fmt;

pub use body::{check_headers, content_type, inflate_capped, read_body, Encoding, Limits};
pub use errors::{DecodeError, EventError, Unfit};
pub use fit::MAX_DEPTH;
pub use members::{object_members, Members};
pub use normalise::{batch_sent_at, normalise, Normalised, RequestContext};
pub use parse::{parse_body, parse_event, Batch, BatchItem, Body, RawEvent};

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
