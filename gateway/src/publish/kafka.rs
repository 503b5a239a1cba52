//! The Kafka sink: publishes each event as one record with librdkafka (rdkafka), and resolves
//! a request only when the broker has acknowledged every event of it (`acks=all`, idempotent
//! producer) or each has failed.
//!
//! Owns: the producer and its delivery bookkeeping, the mapping of librdkafka errors to
//! [`PublishError`], record keys and headers, and readiness (fresh broker metadata).
//! Must not: read or log event contents or keys, choose topics (each [`OutEvent`] carries its
//! own), or decide HTTP statuses (respond does). Property defaults live in `config`.
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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use super::{BoxFuture, BrokerStats, Late, OutEvent, PublishError, PublishResults, Published, Publisher, SinkStats};
use crate::config::{KafkaConfig, RecordKey};

/// Room left in `message.max.bytes` for the record's framing, key and headers: the handler
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

// ---------------------------------------------------------------------------------------------
// Per-request delivery accounting
// ---------------------------------------------------------------------------------------------

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

/// What one request's records share: how many reports are still due, each event's state, the
/// failures, and the wake-up the last report fires.
struct RequestAcks {
    /// Reports still due, plus one held by `publish` while it is enqueueing, so that fast
    /// reports cannot fire the wake-up before every record is in.
    remaining: AtomicUsize,
    states: Box<[AtomicU8]>,
    /// Only written on failure: the success path takes no lock.
    failures: Mutex<Vec<(u32, PublishError)>>,
    done: Notify,
}

impl RequestAcks {
    fn new(n: usize) -> RequestAcks {
        RequestAcks {
            remaining: AtomicUsize::new(n + 1),
            states: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            failures: Mutex::new(Vec::new()),
            done: Notify::new(),
        }
    }

    /// Records the outcome of event `index` (a delivery report, or a failure to enqueue).
    fn settle(&self, index: u32, outcome: Result<(), PublishError>) {
        let state = match outcome {
            Ok(()) => DELIVERED,
            Err(e) => {
                if let Ok(mut f) = self.failures.lock() {
                    f.push((index, e));
                }
                FAILED
            }
        };
        if let Some(s) = self.states.get(index as usize) {
            s.store(state, Ordering::Release);
        }
        self.release(1);
    }

    fn release(&self, n: usize) {
        // The one that takes the count to zero wakes the request. `notify_one` keeps a permit
        // when nobody waits yet, so the wake-up is not lost if it comes first.
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.done.notify_one();
        }
    }

    /// Per-event results; events with no outcome yet get `unsettled`.
    fn results(&self, unsettled: &PublishError) -> PublishResults {
        self.results_and_pending(unsettled).0
    }

    /// Per-event results as of now, and the indices of the events with no outcome yet (they
    /// got `unsettled`). Each state is read once, so the two agree.
    fn results_and_pending(&self, unsettled: &PublishError) -> (PublishResults, Vec<usize>) {
        let mut pending = Vec::new();
        let mut out: PublishResults = Vec::with_capacity(self.states.len());
        for (i, s) in self.states.iter().enumerate() {
            if s.load(Ordering::Acquire) == DELIVERED {
                out.push(Ok(()));
            } else {
                out.push(Err(unsettled.clone()));
                pending.push(i);
            }
        }
        // A failure is listed before its state is stored: whatever is listed is settled.
        if let Some(failures) = self.failures.lock().ok().filter(|f| !f.is_empty()) {
            let mut failed = vec![false; out.len()];
            for (i, e) in failures.iter() {
                if let Some(slot) = out.get_mut(*i as usize) {
                    *slot = Err(e.clone());
                }
                if let Some(f) = failed.get_mut(*i as usize) {
                    *f = true;
                }
            }
            pending.retain(|&p| !failed.get(p).copied().unwrap_or(false));
        }
        (out, pending)
    }
}

/// The delivery opaque of one record: its request and its place in it.
struct Ticket {
    acks: Arc<RequestAcks>,
    index: u32,
}

// ---------------------------------------------------------------------------------------------
// Producer context: delivery reports, librdkafka logs and errors
// ---------------------------------------------------------------------------------------------

/// What the metadata probe, delivery reports and librdkafka's error events learn.
struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last good metadata answer, plus one; 0 = never.
    last_ok_ms: AtomicU64,
    /// Set by librdkafka's "all brokers down" until the next good probe.
    all_down: AtomicBool,
    /// When (ms after `started`, plus one) a delivery timed out with no delivery succeeding
    /// since; 0 = none. Cleared by a success, and by a failed probe (an outage explains it).
    stuck_since_ms: AtomicU64,
    last_problem: Mutex<String>,
    /// The last statistics librdkafka emitted (`statistics.interval.ms`).
    stats: Mutex<Option<SinkStats>>,
}

impl Health {
    fn new() -> Health {
        Health {
            started: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            all_down: AtomicBool::new(false),
            stuck_since_ms: AtomicU64::new(0),
            last_problem: Mutex::new("no metadata answer yet".into()),
            stats: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Records a good metadata answer; true when that makes the sink ready again.
    fn ok(&self) -> bool {
        let was_ready = self.ready();
        self.last_ok_ms.store(self.now_ms(), Ordering::Relaxed);
        self.all_down.store(false, Ordering::Relaxed);
        !was_ready
    }

    fn ready(&self) -> bool {
        self.fresh().is_some_and(|age| age <= PROBE_STALE) && !self.all_down.load(Ordering::Relaxed)
    }

    fn problem(&self, why: String) {
        if let Ok(mut p) = self.last_problem.lock() {
            *p = why;
        }
    }

    /// Age of the last good metadata answer.
    fn fresh(&self) -> Option<Duration> {
        match self.last_ok_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.started.elapsed().saturating_sub(Duration::from_millis(ms - 1))),
        }
    }

    fn last_problem(&self) -> String {
        self.last_problem.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn delivered(&self, ok: bool) {
        if ok {
            // Load first: the common case writes nothing to the shared line.
            if self.stuck_since_ms.load(Ordering::Relaxed) != 0 {
                self.stuck_since_ms.store(0, Ordering::Relaxed);
            }
        } else {
            let _ = self.stuck_since_ms.compare_exchange(0, self.now_ms(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// How long deliveries have been timing out with none succeeding.
    fn stuck_for(&self) -> Option<Duration> {
        match self.stuck_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.started.elapsed().saturating_sub(Duration::from_millis(ms - 1))),
        }
    }
}

/// The producer's context: one per producer (a reset makes a new one).
struct Context {
    health: Arc<Health>,
    /// Wakes the probe thread (all brokers down, fatal error).
    wake: mpsc::Sender<()>,
    /// The last error event, to drop rdkafka's second call for the same event (0.39 calls
    /// `error` twice per producer error event).
    last_error: Mutex<Option<(RDKafkaErrorCode, String, Instant)>>,
}

impl Context {
    fn repeated(&self, code: RDKafkaErrorCode, reason: &str) -> bool {
        let Ok(mut last) = self.last_error.lock() else { return false };
        let now = Instant::now();
        let same = last
            .as_ref()
            .is_some_and(|(c, r, at)| *c == code && r == reason && now.duration_since(*at) < Duration::from_millis(50));
        *last = Some((code, reason.to_string(), now));
        same
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let mut brokers: Vec<BrokerStats> = statistics
            .brokers
            .values()
            // Bootstrap entries (`nodeid` -1) duplicate the real brokers under another name.
            .filter(|b| b.nodeid >= 0)
            .map(|b| BrokerStats {
                name: b.name.clone(),
                up: b.state == "UP",
                rtt_p99_s: b.rtt.as_ref().map_or(0.0, |w| w.p99 as f64 / 1e6),
                tx_errors: b.txerrs,
            })
            .collect();
        brokers.sort_by(|a, b| a.name.cmp(&b.name));
        let snapshot = SinkStats {
            queue_messages: statistics.msg_cnt,
            queue_bytes: statistics.msg_size,
            queue_max_messages: statistics.msg_max,
            queue_max_bytes: statistics.msg_size_max,
            brokers,
        };
        if let Ok(mut s) = self.health.stats.lock() {
            *s = Some(snapshot);
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Unknown);
        if self.repeated(code, reason) {
            return;
        }
        let class = error_class(code);
        match code {
            RDKafkaErrorCode::AllBrokersDown => {
                // Leave the rotation now rather than at the next probe, and let the probe
                // confirm at once (librdkafka also reports "0/2 brokers are down" sometimes).
                if !self.health.all_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(class, reason, "kafka: all brokers are down");
                }
                self.health.problem(format!("all brokers are down: {reason}"));
                let _ = self.wake.send(());
            }
            // librdkafka's own log line (facility FAIL) already says which broker and why.
            RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve => {
                tracing::debug!(class, reason, "kafka: broker connection failed")
            }
            RDKafkaErrorCode::Fatal => {
                tracing::error!(class, reason, "kafka: the producer failed for good; replacing it");
                let _ = self.wake.send(());
            }
            _ => tracing::error!(class, reason, "kafka: client error"),
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(classify(e)),
        };
        match &outcome {
            Ok(()) => self.health.delivered(true),
            Err(PublishError::Timeout) => self.health.delivered(false),
            Err(_) => {}
        }
        ticket.acks.settle(ticket.index, outcome);
    }
}

// ---------------------------------------------------------------------------------------------
// Error classification
// ---------------------------------------------------------------------------------------------

/// A stable snake_case name of a librdkafka error code, for logs and `Fatal(class)`:
/// `TopicAuthorizationFailed` → `topic_authorization_failed`.
pub fn error_class(code: RDKafkaErrorCode) -> String {
    let name = format!("{code:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.char_indices() {
        if ch.is_ascii_uppercase() {
            let prev_lower = name[..i].chars().last().is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            let next_lower = name[i + 1..].chars().next().is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = name[..i].chars().last().is_some_and(|p| p.is_ascii_uppercase());
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Whether a broker or client error can never succeed by retrying the same event: the
/// broker refuses it (authorization, invalid topic or record, size) or the configuration is
/// wrong. librdkafka's own "retriable" flag exists only on `rd_kafka_error_t` (admin and
/// transactional calls), not on delivery reports, so this list stands in for it, as in Vector.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::SecurityDisabled
            | C::InvalidTopic
            | C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::InvalidRequiredAcks
            | C::InvalidRequest
            | C::InvalidConfig
            | C::PolicyViolation
            | C::UnsupportedForMessageFormat
            | C::UnsupportedVersion
            | C::UnsupportedCompressionType
            | C::InvalidArgument
            | C::BadMessage
            | C::BadCompression
    )
}

/// Maps a librdkafka error (on enqueue or in a delivery report) to a [`PublishError`].
pub fn classify(error: &KafkaError) -> PublishError {
    let Some(code) = error.rdkafka_error_code() else {
        // Not a broker answer (e.g. a NUL in a topic name): the event can never go out.
        return PublishError::Fatal("invalid_record".into());
    };
    match code {
        RDKafkaErrorCode::QueueFull => PublishError::QueueFull,
        RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::RequestTimedOut | RDKafkaErrorCode::OperationTimedOut => {
            PublishError::Timeout
        }
        // Purged: only when a producer is closed (replaced, or at exit) before delivery.
        RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight => {
            PublishError::Unavailable("kafka: the producer was closed before delivery".into())
        }
        c if is_permanent(c) => PublishError::Fatal(error_class(c)),
        // Everything else (leader elections, unknown topic, fatal idempotence state, transport
        // errors): retriable for the client; another attempt or another instance may succeed.
        c => PublishError::Unavailable(format!("kafka: {}", error_class(c))),
    }
}

// ---------------------------------------------------------------------------------------------
// The publisher
// ---------------------------------------------------------------------------------------------

/// The producer type: rdkafka's polling thread serves delivery reports into [`Context`].
type SinkProducer = ThreadedProducer<Context>;

/// What the publisher and its probe thread share.
struct Shared {
    /// The current producer; replaced whole by [`Shared::reset`]. A request uses the one it
    /// found when it started.
    producer: RwLock<Arc<SinkProducer>>,
    client: ClientConfig,
    health: Arc<Health>,
    wake: mpsc::Sender<()>,
    message_timeout: Duration,
}

impl Shared {
    fn producer(&self) -> Result<Arc<SinkProducer>, PublishError> {
        self.producer.read().map(|p| p.clone()).map_err(|_| PublishError::Unavailable("kafka: poisoned lock".into()))
    }

    fn create(
        client: &ClientConfig,
        health: &Arc<Health>,
        wake: &mpsc::Sender<()>,
    ) -> Result<SinkProducer, KafkaError> {
        let context = Context { health: health.clone(), wake: wake.clone(), last_error: Mutex::new(None) };
        client.create_with_context(context)
    }

    /// Replaces the producer with a new one. The old one is closed on its own thread: closing
    /// purges its queue (those requests get 503) and waits up to 0.5 s for the reports.
    fn reset(&self, why: &str) {
        let fresh = match Self::create(&self.client, &self.health, &self.wake) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(error = %e, why, "kafka: could not create a new producer; keeping the old one");
                return;
            }
        };
        let old = match self.producer.write() {
            Ok(mut current) => std::mem::replace(&mut *current, fresh),
            Err(_) => return,
        };
        self.health.stuck_since_ms.store(0, Ordering::Relaxed);
        tracing::warn!(why, "kafka: replaced the producer");
        let closer = std::thread::Builder::new().name("kafka-producer-close".into()).spawn(move || drop(old));
        if let Err(e) = closer {
            tracing::error!(error = %e, "kafka: could not start a thread to close the old producer");
        }
    }
}

/// The Kafka sink.
pub struct KafkaPublisher {
    shared: Arc<Shared>,
    record_key: RecordKey,
    max_message_bytes: usize,
    /// The longest a request waits for its delivery reports.
    wait_limit: Duration,
    brokers: String,
    /// `queue.buffering.max.messages`, for readiness.
    queue_max_messages: Option<u64>,
}

impl KafkaPublisher {
    /// Creates the producer and starts the metadata probe. Does not wait for a broker: the
    /// gateway starts (and `/ready` answers 503) while the cluster is unreachable.
    pub fn new(config: &KafkaConfig) -> Result<KafkaPublisher, KafkaSinkError> {
        let mut client = ClientConfig::new();
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        // librdkafka filters its logs by this level; debug logs only exist with `debug` set.
        let level =
            if config.properties.contains_key("debug") { RDKafkaLogLevel::Debug } else { RDKafkaLogLevel::Info };
        client.set_log_level(level);
        let prop = |k: &str| config.properties.get(k).map(String::as_str);
        if !matches!(prop("acks"), Some("all" | "-1")) {
            tracing::warn!(
                acks = prop("acks"),
                "kafka: acks is not 'all': a 2xx no longer means every replica has the event"
            );
        }
        if prop("enable.idempotence") != Some("true") {
            tracing::warn!("kafka: enable.idempotence is off: broker retries may duplicate or reorder events");
        }

        let health = Arc::new(Health::new());
        let (wake, wake_rx) = mpsc::channel();
        let producer = Shared::create(&client, &health, &wake).map_err(KafkaSinkError::Create)?;
        let shared = Arc::new(Shared {
            producer: RwLock::new(Arc::new(producer)),
            client,
            health,
            wake,
            message_timeout: Duration::from_millis(config.message_timeout_ms),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("kafka-metadata-probe".into())
            .spawn(move || probe_loop(&weak, &wake_rx))
            .map_err(KafkaSinkError::Thread)?;

        tracing::info!(brokers = %config.brokers, "kafka: producer created; waiting for broker metadata");
        Ok(KafkaPublisher {
            shared,
            record_key: config.record_key,
            max_message_bytes: config.max_message_bytes,
            wait_limit: Duration::from_millis(config.message_timeout_ms) + DELIVERY_GRACE,
            brokers: config.brokers.clone(),
            queue_max_messages: prop("queue.buffering.max.messages").and_then(|v| v.parse().ok()),
        })
    }

    /// Enqueues one record (never blocks: librdkafka answers `QueueFull` instead).
    fn enqueue(&self, producer: &SinkProducer, ev: &OutEvent, ticket: Box<Ticket>) -> Result<(), PublishError> {
        let mut headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: HEADER_EVENT_TYPE, value: Some(ev.event_type.as_str()) })
            .insert(Header { key: HEADER_SOURCE_ID, value: Some(&*ev.source_id) })
            .insert(Header { key: HEADER_MESSAGE_ID, value: Some(ev.message_id.as_str()) })
            .insert(Header { key: HEADER_CONTENT_TYPE, value: Some("application/json") });
        if let Some(c) = &ev.consent_header {
            headers = headers.insert(Header { key: HEADER_CONSENT, value: Some(c.as_str()) });
        }
        let key = match self.record_key {
            RecordKey::UserOrAnonymousId => ev.key.as_deref(),
            RecordKey::MessageId => Some(ev.message_id.as_str()),
            RecordKey::None => None,
        };
        let mut record = BaseRecord::<str, [u8], Box<Ticket>>::with_opaque_to(&ev.topic, ticket)
            .payload(&ev.payload)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        match producer.send(record) {
            Ok(()) => Ok(()),
            Err((e, _record)) => match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::MessageSizeTooLarge) => Err(PublishError::TooLarge {
                    size: ev.payload.len() + key.map_or(0, str::len),
                    limit: self.max_message_bytes,
                }),
                _ => Err(classify(&e)),
            },
        }
    }

    /// The final outcomes of a request's `pending` records: waits (within the delivery bound)
    /// for the last report of the request, which fires `acks.done` whether or not anybody
    /// waited for it yet.
    fn late(&self, acks: Arc<RequestAcks>, pending: Vec<usize>) -> Late {
        let wait_limit = self.wait_limit;
        let indices = pending.clone();
        let outcome = Box::pin(async move {
            if tokio::time::timeout(wait_limit, acks.done.notified()).await.is_err() {
                tracing::warn!(events = pending.len(), "kafka: delivery reports of queued records overdue");
            }
            let results = acks.results(&PublishError::Timeout);
            pending.iter().map(|&i| results.get(i).cloned().unwrap_or(Err(PublishError::Timeout))).collect()
        });
        Late { indices, outcome }
    }

    /// Logs each permanent failure class of a request once, with its topic (never a key or
    /// payload).
    fn log_failures(&self, events: &[OutEvent], results: &PublishResults) {
        let mut logged: Vec<&str> = Vec::new();
        for (ev, r) in events.iter().zip(results) {
            if let Err(PublishError::Fatal(class)) = r {
                if !logged.contains(&class.as_str()) {
                    logged.push(class);
                    tracing::error!(class = %class, topic = %ev.topic, source_id = %ev.source_id, "kafka refused events");
                }
            }
        }
    }
}

impl Publisher for KafkaPublisher {
    fn publish(&self, events: Vec<OutEvent>) -> BoxFuture<'_, PublishResults> {
        Box::pin(async move { self.publish_tracked(events).await.results })
    }

    fn publish_tracked(&self, events: Vec<OutEvent>) -> BoxFuture<'_, Published> {
        Box::pin(async move {
            let n = events.len();
            if n == 0 {
                return Published { results: Vec::new(), late: None };
            }
            let producer = match self.shared.producer() {
                Ok(p) => p,
                Err(e) => return Published { results: vec![Err(e); n], late: None },
            };
            let acks = Arc::new(RequestAcks::new(n));
            let mut queue_full = false;
            for (i, ev) in events.iter().enumerate() {
                let index = i as u32;
                if queue_full {
                    // Not even tried: the queue is full, and this request is answered 503 now.
                    acks.settle(index, Err(PublishError::QueueFull));
                    continue;
                }
                if let Err(e) = self.enqueue(&producer, ev, Box::new(Ticket { acks: acks.clone(), index })) {
                    queue_full = e == PublishError::QueueFull;
                    acks.settle(index, Err(e));
                }
            }
            drop(producer);
            acks.release(1);
            let (results, late) = if queue_full {
                // Answer now: records already enqueued still go out (their reports land in
                // `acks`, kept alive by their tickets), but this request does not wait for them.
                // They are answered 503 like the rest, and listed as late: whoever holds their
                // messageIds must keep them until the reports say what happened.
                let (results, pending) = acks.results_and_pending(&PublishError::QueueFull);
                (results, (!pending.is_empty()).then(|| self.late(acks, pending)))
            } else {
                if tokio::time::timeout(self.wait_limit, acks.done.notified()).await.is_err() {
                    tracing::warn!(events = n, "kafka: delivery reports overdue; answering timeout");
                }
                (acks.results(&PublishError::Timeout), None)
            };
            self.log_failures(&events, &results);
            Published { results, late }
        })
    }

    fn stats(&self) -> Option<SinkStats> {
        self.shared.health.stats.lock().ok().and_then(|s| s.clone())
    }

    fn readiness(&self) -> Result<(), String> {
        let health = &self.shared.health;
        // A nearly full local queue means 503s are imminent: take the instance out of rotation.
        if let (Ok(p), Some(max)) = (self.shared.producer(), self.queue_max_messages) {
            let queued = p.in_flight_count().max(0) as u64;
            if queued * 10 >= max * 9 {
                return Err(format!("kafka: the producer queue is {queued}/{max} messages full"));
            }
        }
        if let Some((code, reason)) = self.shared.producer().ok().and_then(|p| p.client().fatal_error()) {
            return Err(format!("kafka: the producer failed ({}: {reason}); replacing it", error_class(code)));
        }
        if health.all_down.load(Ordering::Relaxed) {
            return Err(format!("kafka: {}", health.last_problem()));
        }
        match health.fresh() {
            None => Err(format!("kafka: no broker metadata yet from {}: {}", self.brokers, health.last_problem())),
            Some(age) if age > PROBE_STALE => {
                Err(format!("kafka: no broker metadata for {} s: {}", age.as_secs(), health.last_problem()))
            }
            Some(_) => Ok(()),
        }
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(async move {
            let producer = self.shared.producer()?;
            // librdkafka's flush blocks its thread until the queue drains.
            match tokio::task::spawn_blocking(move || producer.flush(timeout)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => match classify(&e) {
                    PublishError::Timeout => Err(PublishError::Timeout),
                    _ => Err(PublishError::Unavailable(format!("kafka flush: {e}"))),
                },
                Err(e) => Err(PublishError::Unavailable(format!("kafka flush task: {e}"))),
            }
        })
    }

    fn max_event_bytes(&self) -> Option<usize> {
        Some(self.max_message_bytes.saturating_sub(RECORD_OVERHEAD_BYTES))
    }
}

/// Asks for cluster metadata until the publisher is dropped (every sender of `wake` gone);
/// records each answer, and replaces a producer that is broken or stuck.
fn probe_loop(shared: &Weak<Shared>, wake: &mpsc::Receiver<()>) {
    let mut last_reset: Option<Instant> = None;
    loop {
        let Some(sh) = shared.upgrade() else { return };
        let health = &sh.health;
        let good = match sh.producer() {
            Ok(producer) => {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    drop(producer);
                    // At most one new producer a second, should creating one keep failing.
                    if last_reset.is_none_or(|at| at.elapsed() >= MIN_RESET_GAP) {
                        sh.reset(&format!("fatal error {}: {reason}", error_class(code)));
                        last_reset = Some(Instant::now());
                    }
                    false
                } else {
                    probe(&producer, health)
                }
            }
            Err(_) => false,
        };
        if good {
            // Deliveries time out although the cluster answers: give librdkafka one whole
            // message timeout to sort it out, then start over with a new producer.
            let stuck = health.stuck_for().is_some_and(|d| d >= sh.message_timeout);
            if stuck && last_reset.is_none_or(|at| at.elapsed() >= sh.message_timeout) {
                sh.reset("no delivery succeeded for a whole message timeout while the cluster answers");
                last_reset = Some(Instant::now());
            }
        } else {
            // An outage explains any timeouts so far.
            health.stuck_since_ms.store(0, Ordering::Relaxed);
        }
        drop(sh);
        match wake.recv_timeout(if good { PROBE_INTERVAL } else { PROBE_RETRY }) {
            // Drain extra wake-ups (one probe answers them all).
            Ok(()) => while wake.try_recv().is_ok() {},
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One metadata request; true when it listed brokers.
fn probe(producer: &SinkProducer, health: &Health) -> bool {
    // All topics: librdkafka offers no "brokers only" request, and naming a topic could create
    // it on brokers with auto-creation on.
    match producer.client().fetch_metadata(None, PROBE_TIMEOUT) {
        Ok(md) if !md.brokers().is_empty() => {
            if health.ok() {
                tracing::info!(brokers = md.brokers().len(), "kafka: broker metadata received; ready");
            }
            true
        }
        Ok(_) => {
            health.problem("the metadata lists no brokers".into());
            false
        }
        Err(e) => {
            if health.ready() {
                tracing::warn!(error = %e, "kafka: metadata request failed; not ready");
            }
            health.problem(format!("metadata request failed: {e}"));
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a topic back (tests and tools)
// ---------------------------------------------------------------------------------------------

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl ReadRecord {
    /// The value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Reads every partition of `topic` from the beginning up to (at least) its high watermark
/// at the time of the call, and returns the records ordered by partition, then offset.
/// Blocking; for tests and tools (the `kafka_dump` example), not the request path.
///
/// The watermark is only a lower bound here: Tansu 0.6 answers ListOffsets(latest) with the
/// *first* offset of the partition's last batch plus one, so after reaching it the reader
/// drains whatever the fetches already brought (the rest of that batch, and records produced
/// since), until a poll comes back empty.
pub fn read_topic(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<ReadRecord>, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "segment-gateway-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let deadline = Instant::now() + timeout;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    // (partition, next offset seen, high watermark)
    let mut progress: Vec<(i32, i64, i64)> = Vec::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        if let Some(e) = t.error() {
            return Err(KafkaError::MetadataFetch(e.into()));
        }
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            if high > low {
                progress.push((p.id(), low, high));
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            }
        }
    }
    let mut out = Vec::new();
    if progress.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    loop {
        let reached = progress.iter().all(|(_, next, high)| next >= high);
        let wait = if reached { Duration::from_millis(300) } else { Duration::from_millis(200) };
        match consumer.poll(wait) {
            Some(m) => {
                let m = m?;
                if let Some(slot) = progress.iter_mut().find(|(p, _, _)| *p == m.partition()) {
                    slot.1 = slot.1.max(m.offset() + 1);
                }
                let headers = m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                    .unwrap_or_default();
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    headers,
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
            None if reached => break,
            None => {}
        }
        if Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut));
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out.dedup_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_snake_case() {
        assert_eq!(error_class(RDKafkaErrorCode::TopicAuthorizationFailed), "topic_authorization_failed");
        assert_eq!(error_class(RDKafkaErrorCode::QueueFull), "queue_full");
        assert_eq!(error_class(RDKafkaErrorCode::ISRInsufficient), "isr_insufficient");
        assert_eq!(error_class(RDKafkaErrorCode::UnsupportedSASLMechanism), "unsupported_sasl_mechanism");
        assert_eq!(error_class(RDKafkaErrorCode::SSL), "ssl");
    }

    #[test]
    fn errors_map_to_publish_errors() {
        let p = |c| classify(&KafkaError::MessageProduction(c));
        assert_eq!(p(RDKafkaErrorCode::QueueFull), PublishError::QueueFull);
        assert_eq!(p(RDKafkaErrorCode::MessageTimedOut), PublishError::Timeout);
        assert_eq!(p(RDKafkaErrorCode::RequestTimedOut), PublishError::Timeout);
        for (code, class) in [
            (RDKafkaErrorCode::TopicAuthorizationFailed, "topic_authorization_failed"),
            (RDKafkaErrorCode::ClusterAuthorizationFailed, "cluster_authorization_failed"),
            (RDKafkaErrorCode::InvalidTopic, "invalid_topic"),
            (RDKafkaErrorCode::MessageSizeTooLarge, "message_size_too_large"),
            (RDKafkaErrorCode::MessageBatchTooLarge, "message_batch_too_large"),
            (RDKafkaErrorCode::InvalidRecord, "invalid_record"),
            (RDKafkaErrorCode::UnsupportedCompressionType, "unsupported_compression_type"),
        ] {
            assert_eq!(p(code), PublishError::Fatal(class.into()), "{code:?}");
            assert!(!p(code).is_retriable());
        }
        for code in [
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
        ] {
            assert!(matches!(p(code), PublishError::Unavailable(_)), "{code:?} → {:?}", p(code));
            assert!(p(code).is_retriable());
        }
        assert!(matches!(p(RDKafkaErrorCode::PurgeQueue), PublishError::Unavailable(_)));
        assert!(matches!(classify(&KafkaError::Canceled), PublishError::Fatal(_)));
    }

    #[test]
    fn acks_wake_once_every_event_has_settled() {
        let acks = RequestAcks::new(3);
        acks.settle(2, Ok(()));
        acks.settle(0, Err(PublishError::Timeout));
        acks.settle(1, Ok(()));
        // The enqueueing guard is still held: no wake-up yet.
        assert_eq!(acks.remaining.load(Ordering::Relaxed), 1);
        acks.release(1);
        assert_eq!(acks.remaining.load(Ordering::Relaxed), 0);
        assert_eq!(acks.results(&PublishError::QueueFull), vec![Err(PublishError::Timeout), Ok(()), Ok(())]);
    }

    #[tokio::test]
    async fn a_wake_up_before_the_wait_is_not_lost() {
        let acks = Arc::new(RequestAcks::new(1));
        acks.settle(0, Ok(()));
        acks.release(1);
        tokio::time::timeout(Duration::from_secs(1), acks.done.notified()).await.unwrap();
    }

    #[test]
    fn unsettled_events_get_the_given_error() {
        let acks = RequestAcks::new(3);
        acks.settle(0, Ok(()));
        acks.settle(2, Err(PublishError::QueueFull));
        let r = acks.results(&PublishError::QueueFull);
        assert_eq!(r, vec![Ok(()), Err(PublishError::QueueFull), Err(PublishError::QueueFull)]);
    }

    #[test]
    fn pending_events_are_those_without_an_outcome() {
        let acks = RequestAcks::new(4);
        acks.settle(0, Ok(()));
        acks.settle(2, Err(PublishError::QueueFull));
        let (results, pending) = acks.results_and_pending(&PublishError::QueueFull);
        assert_eq!(
            results,
            vec![Ok(()), Err(PublishError::QueueFull), Err(PublishError::QueueFull), Err(PublishError::QueueFull)]
        );
        // 1 and 3 were enqueued and have no report yet: their outcome comes later.
        assert_eq!(pending, vec![1, 3]);
        acks.settle(3, Err(PublishError::Timeout));
        assert_eq!(acks.results_and_pending(&PublishError::QueueFull).1, vec![1]);
    }

    #[tokio::test]
    async fn starts_without_a_broker_and_is_not_ready() {
        // Nothing listens on port 1: creation must still succeed, readiness must say why not,
        // and a publish must end with a retriable error within the message timeout.
        let mut properties: std::collections::BTreeMap<String, String> = [
            ("bootstrap.servers", "127.0.0.1:1"),
            ("message.timeout.ms", "300"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        properties.insert("linger.ms".into(), "1".into());
        let config = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            message_timeout_ms: 300,
            max_message_bytes: 1_000_000,
            record_key: RecordKey::UserOrAnonymousId,
            properties,
        };
        let k = KafkaPublisher::new(&config).unwrap();
        let why = k.readiness().unwrap_err();
        assert!(why.contains("no broker metadata yet"), "{why}");
        assert_eq!(k.max_event_bytes(), Some(1_000_000 - RECORD_OVERHEAD_BYTES));
        let ev = OutEvent {
            topic: "t".into(),
            key: Some("u".into()),
            event_type: crate::decode::EventType::Track,
            source_id: "s".into(),
            message_id: "m".into(),
            payload: b"{}".to_vec(),
            consent_header: None,
        };
        let started = Instant::now();
        let r = k.publish(vec![ev.clone(), ev]).await;
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(r.iter().all(|r| r.as_ref().is_err_and(PublishError::is_retriable)), "{r:?}");
    }
}
