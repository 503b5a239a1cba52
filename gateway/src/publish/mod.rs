//! Publish: the [`Publisher`] trait every sink implements, and the sinks.
//!
//! Owns: the promise behind a 2xx. `publish` resolves only when each event is durable (fsync'ed
//! on disk, or acknowledged by the broker) or has failed, and it reports per event.
//! Must not: build HTTP responses (respond does), decide routing policy beyond what each event
//! already carries, or look at event contents.
//!
//! Sinks:
//! - [`local_log::LocalLog`]: the embedded default, NDJSON segment files per topic;
//! - [`kafka::KafkaPublisher`]: one record per event, answered once the broker acknowledged it;
//! - [`memory::MemoryPublisher`]: for tests, can be told to fail.
//!
//! Late outcomes: a sink may have to answer a request before it knows what became of some of
//! its events (a full Kafka queue answers at once although earlier records of the request are
//! still queued; a local-log job past its deadline may still be written). It then answers those
//! events with an error *and* lists them in a [`Late`], whose future resolves to their final
//! outcomes, so that the caller can settle what depends on them (the dedup reservation: a
//! record that entered the queue keeps it until its delivery report) after the answer.

pub mod kafka;
pub mod local_log;
pub mod memory;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::decode::EventType;

/// One event on its way to a sink.
#[derive(Debug, Clone)]
pub struct OutEvent {
    pub topic: Arc<str>,
    /// Record key: `userId`, else `anonymousId`.
    pub key: Option<String>,
    pub event_type: EventType,
    pub source_id: Arc<str>,
    pub message_id: String,
    /// The normalised event, JSON.
    pub payload: Vec<u8>,
    /// Derived consent categories (`analytics=1;advertising=0`), sent as a record header.
    pub consent_header: Option<String>,
}

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the sink's queue is full")]
    QueueFull,
    #[error("delivery timed out")]
    Timeout,
    #[error("the sink is unavailable: {0}")]
    Unavailable(String),
    #[error("the sink refused the event: {0}")]
    Fatal(String),
    #[error("event is {size} bytes; the sink accepts at most {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl PublishError {
    /// Every code [`PublishError::code`] returns.
    pub const CODES: &'static [&'static str] =
        &["event_too_large", "publish_failed", "publish_timeout", "publish_unavailable"];

    /// The stable snake_case code of this failure (the error body's `code`, a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            PublishError::TooLarge { .. } => "event_too_large",
            PublishError::Fatal(_) => "publish_failed",
            PublishError::Timeout => "publish_timeout",
            PublishError::QueueFull | PublishError::Unavailable(_) | PublishError::ShuttingDown => {
                "publish_unavailable"
            }
        }
    }

    /// Whether the client should retry the same request later.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, PublishError::Fatal(_) | PublishError::TooLarge { .. })
    }
}

/// Per-event outcomes, in the order the events were given.
pub type PublishResults = Vec<Result<(), PublishError>>;
/// Events answered before their outcome was known, and the way to learn it (see the module
/// doc).
pub struct Late {
    /// Indices, into the published events, of the events answered early.
    pub indices: Vec<usize>,
    /// Resolves to the final outcome of each of them, in the order of `indices`, once the sink
    /// knows it; within the sink's own delivery bound (an outcome still unknown by then is
    /// [`PublishError::Timeout`]).
    pub outcome: BoxFuture<'static, PublishResults>,
}

impl std::fmt::Debug for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Late").field("indices", &self.indices).finish_non_exhaustive()
    }
}

/// What [`Publisher::publish_tracked`] answers: per-event results, and the events among them
/// whose result is not their final outcome.
#[derive(Debug)]
pub struct Published {
    pub results: PublishResults,
    pub late: Option<Late>,
}

/// A boxed future, so that `Arc<dyn Publisher>` works.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A sink. Implementations are shared by every request (`Arc<dyn Publisher>`).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes the events; resolves once every one is durable or failed. Must not hang past
    /// the sink's own delivery timeout.
    fn publish(&self, events: Vec<OutEvent>) -> BoxFuture<'_, PublishResults>;

    /// Like [`Publisher::publish`], and also says which failed events may still become durable
    /// ([`Late`]). Sinks whose answers are always final keep this default.
    fn publish_tracked(&self, events: Vec<OutEvent>) -> BoxFuture<'_, Published> {
        Box::pin(async move { Published { results: self.publish(events).await, late: None } })
    }

    /// `Ok` when the sink can take events now; `Err` says why not (for `/ready`).
    fn readiness(&self) -> Result<(), String>;

    /// Makes everything accepted so far durable, within `timeout` (called at shutdown).
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), PublishError>>;

    /// The largest event this sink takes, if it has a limit of its own.
    fn max_event_bytes(&self) -> Option<usize> {
        None
    }

    /// The sink's own statistics (queue depth, brokers), for `/metrics`.
    fn stats(&self) -> Option<SinkStats> {
        None
    }

    /// Which of `ids` (messageIds) the sink holds in records written at or after `since_ms`
    /// (milliseconds since the epoch): how an import job resumed after a crash skips the events
    /// of the chunk that was in flight, since the dedup cache did not survive. `None` when the
    /// sink cannot tell; that chunk is then published again (each of its events at most twice,
    /// with the same messageId, for consumers to drop).
    fn find_published(&self, _ids: HashSet<String>, _since_ms: u64) -> BoxFuture<'_, Option<HashSet<String>>> {
        Box::pin(async { None })
    }
}

/// A snapshot of a sink's internals, surfaced as gauges.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    /// Messages waiting in the producer's local queue, and their bytes.
    pub queue_messages: u64,
    pub queue_bytes: u64,
    /// The queue's bounds.
    pub queue_max_messages: u64,
    pub queue_max_bytes: u64,
    pub brokers: Vec<BrokerStats>,
}

/// One broker as the producer sees it.
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    /// `host:port/id`, from the cluster's metadata (a bounded set).
    pub name: String,
    /// Connected and usable (`UP`).
    pub up: bool,
    /// 99th percentile round-trip time of requests, seconds.
    pub rtt_p99_s: f64,
    /// Transmission errors since the producer started.
    pub tx_errors: u64,
}
