//! Reading a topic back, for tests and tools (the `kafka_dump` example); never on the request
//! path.
//!
//! Owns: [`ReadRecord`], [`read_topic`] and [`read_topic_with`] (the same, with the
//! producer's security properties, for a TLS or SASL broker).
//! Must not: be used by the publisher, or commit offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

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
    read_topic_with(brokers, topic, timeout, &BTreeMap::new())
}

/// [`read_topic`] with the security properties (`security.protocol`, `ssl.*`, `sasl.*`) of
/// `properties`, e.g. a producer's [`KafkaConfig::properties`](super::KafkaConfig); the
/// others are producer settings a consumer does not take, and are left out.
pub fn read_topic_with(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    properties: &BTreeMap<String, String>,
) -> Result<Vec<ReadRecord>, KafkaError> {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        if k == "security.protocol" || k.starts_with("ssl.") || k.starts_with("sasl.") {
            config.set(k, v);
        }
    }
    let consumer: BaseConsumer = config
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
