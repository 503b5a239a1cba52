//! The Kafka sink: publishes each event as one record with librdkafka (rdkafka), and resolves
//! a request only when the broker has acknowledged every event of it (`acks=all`, idempotent
//! producer) or each has failed.
//!
//! Owns: the producer and its delivery bookkeeping, the mapping of librdkafka errors to
//! [`PublishError`], record keys and headers, and readiness (fresh broker metadata).
//! Must not: read or log event contents or keys, choose topics (each [`OutEvent`] carries its
//! own), or decide HTTP statuses (respond does). Property defaults live in `config`, which
//! builds this sink's own settings type ([`KafkaConfig`], in `settings`).
//!
//! Delivery accounting: one [`RequestAcks`] per request, shared by every record of it through
//! the delivery opaque `Box<Ticket>`: an atomic countdown plus one wake-up, instead of one
//! `DeliveryFuture` per event (the prototype measured +23 % end to end this way, see
//! `shared/kafka-testing.md`). Delivery reports arrive on rdkafka's polling thread.
//!
//! Backpressure: librdkafka's local queue is bounded (`queue.buffering.max.*`). When it is full
//! the request fails at once with [`PublishError::QueueFull`] (503) rather than waiting, and
//! the rest of its events are not even enqueued. Its records already enqueued still go out:
//! they are answered 503 too, but reported as [`Late`], resolved by their delivery reports, so
//! that their messageIds stay reserved until then (a retry is `dedup_in_flight`, or a
//! duplicate once delivered, never a second record).
//!
//! Readiness: a background thread asks the cluster for metadata every few seconds (every
//! 250 ms while it has none, and at once when librdkafka reports all brokers down). `/ready` is
//! 200 only while the last answer is fresh, so the gateway starts without a broker, leaves the
//! load balancer's rotation during an outage and comes back by itself.
//!
//! Self-healing: the same thread replaces the producer with a new one when librdkafka declares
//! it unusable (a fatal idempotence error), or when no delivery has succeeded for a whole
//! `message.timeout.ms` after one timed out while the cluster was answering metadata (a broker
//! that lost our producer id answers `UNKNOWN_PRODUCER_ID` forever, e.g. a restarted in-memory
//! Tansu). Records still queued in the old producer fail (503): nothing acknowledged is lost,
//! and clients resend.
//!
//! Layout:
//! - `publisher`: [`KafkaPublisher`], its producer, readiness and the metadata probe thread;
//! - `accounting`: per-request delivery accounting (`RequestAcks`, the delivery `Ticket`);
//! - `context`: the producer context (delivery reports, librdkafka logs, statistics and
//!   errors) and the `Health` it shares with the probe;
//! - `errors`: librdkafka errors to [`PublishError`] ([`classify`], [`error_class`]);
//! - `reader`: reading a topic back ([`read_topic`]), for tests and tools;
//! - `settings`: [`KafkaConfig`], [`RecordKey`] and the redaction of secret properties.

mod accounting;
mod context;
mod errors;
mod publisher;
mod reader;
mod settings;
#[cfg(test)]
mod tests;

use std::time::Duration;

use rdkafka::error::KafkaError;

pub use errors::{classify, error_class, is_permanent};
pub use publisher::KafkaPublisher;
pub use reader::{read_topic, read_topic_with, ReadRecord};
pub(crate) use settings::redacted_properties;
pub use settings::{is_sensitive_property, KafkaConfig, RecordKey};

/// Room left in `message.max.bytes` for the record's framing, key and headers: the pipeline
/// compares only the payload with [`Publisher::max_event_bytes`]. A record that is still too
/// big (a huge key or messageId) is caught when it is enqueued, also as `TooLarge`.
const RECORD_OVERHEAD_BYTES: usize = 512;
/// How long a request waits past `message.timeout.ms` for delivery reports before it gives
/// up on them (librdkafka always reports within the timeout; this is a second line).
const DELIVERY_GRACE: Duration = Duration::from_secs(3);
/// Metadata probe: the timeout of one request, the pause between probes while ready and while
/// not, and how old the last good answer may be before `/ready` says no.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_INTERVAL: Duration = Duration::from_secs(3);
const PROBE_RETRY: Duration = Duration::from_millis(250);
const PROBE_STALE: Duration = Duration::from_secs(8);
/// The shortest time between two producer replacements.
const MIN_RESET_GAP: Duration = Duration::from_secs(1);

/// Record headers (names are part of the consumer contract; see `config/kafka.toml`).
pub const HEADER_EVENT_TYPE: &str = "event-type";
pub const HEADER_SOURCE_ID: &str = "source-id";
pub const HEADER_MESSAGE_ID: &str = "message-id";
/// Derived consent categories (`analytics=1;advertising=0`), when the event carried consent.
pub const HEADER_CONSENT: &str = "consent-categories";
pub const HEADER_CONTENT_TYPE: &str = "content-type";

/// Why the Kafka sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    // The source is not repeated in the message: `{:#}` prints the chain.
    #[error("creating the Kafka producer")]
    Create(#[source] KafkaError),
    #[error("starting the metadata probe thread")]
    Thread(#[source] std::io::Error),
}
