//! The publisher: [`KafkaPublisher`] and what it shares with its metadata probe thread
//! (readiness and self-healing, see the module doc).
//!
//! Owns: creating and replacing the producer, enqueueing records with their key and headers,
//! waiting for a request's delivery reports, readiness, flush.
//! Must not: read or log event contents or keys, choose topics, or decide HTTP statuses.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::accounting::{RequestAcks, Ticket};
use super::context::{Context, Health};
use super::errors::{classify, error_class};
use super::settings::{KafkaConfig, RecordKey};
use super::{
    KafkaSinkError, DELIVERY_GRACE, HEADER_CONSENT, HEADER_CONTENT_TYPE, HEADER_EVENT_TYPE, HEADER_MESSAGE_ID,
    HEADER_SOURCE_ID, MIN_RESET_GAP, PROBE_INTERVAL, PROBE_RETRY, PROBE_STALE, PROBE_TIMEOUT, RECORD_OVERHEAD_BYTES,
};
use crate::publish::{BoxFuture, Late, OutEvent, PublishError, PublishResults, Published, Publisher, SinkStats};

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
