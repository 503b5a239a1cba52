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

pub mod kafka;
pub mod local_log;
pub mod memory;

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
    /// Whether the client should retry the same request later.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, PublishError::Fatal(_) | PublishError::TooLarge { .. })
    }
}

/// Per-event outcomes, in the order the events were given.
pub type PublishResults = Vec<Result<(), PublishError>>;
/// A boxed future, so that `Arc<dyn Publisher>` works.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A sink. Implementations are shared by every request (`Arc<dyn Publisher>`).
pub trait Publisher: Send + Sync + 'static {
    /// Publishes the events; resolves once every one is durable or failed. Must not hang past
    /// the sink's own delivery timeout.
    fn publish(&self, events: Vec<OutEvent>) -> BoxFuture<'_, PublishResults>;

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
