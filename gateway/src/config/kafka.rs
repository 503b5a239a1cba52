//! Validation of `[kafka]` into the Kafka sink's own settings
//! ([`KafkaConfig`](crate::publish::kafka::KafkaConfig)): record key, bounds, and the
//! librdkafka properties (our defaults, `[kafka.producer]` over them, aliases folded).
//!
//! Owns: which properties are reserved or aliases, and the messages about them.
//! Must not: create a producer or connect to a broker (each property is only probed alone).

use std::collections::BTreeMap;

use super::defaults::{default_kafka_producer, DEFAULT_BATCH_BYTES};
use super::kafka_security::SECURITY_PROPERTIES;
use super::{RawKafka, MAX_KAFKA_MESSAGE_TIMEOUT_MS};
use crate::publish::kafka::{is_sensitive_property, KafkaConfig, RecordKey};

/// librdkafka's aliases, folded to the spelling on the right so that a file's alias replaces
/// our default instead of racing it (librdkafka applies properties in map order).
const KAFKA_ALIASES: &[(&str, &str)] = &[
    ("request.required.acks", "acks"),
    ("compression.codec", "compression.type"),
    ("queue.buffering.max.ms", "linger.ms"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("metadata.broker.list", "bootstrap.servers"),
    ("max.in.flight.requests.per.connection", "max.in.flight"),
    ("message.send.max.retries", "retries"),
    ("sasl.mechanisms", "sasl.mechanism"),
];

/// Properties that have their own `[kafka]` key (the hint says which), or that the sink
/// cannot honour.
const KAFKA_RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.brokers instead"),
    ("message.timeout.ms", "set kafka.message_timeout_ms instead"),
    ("message.max.bytes", "set kafka.max_message_bytes instead"),
    ("transactional.id", "transactions are not supported: each event is acknowledged on its own"),
];

/// Flattens `[kafka.producer]` into `name = text` pairs: an unquoted dotted key
/// (`linger.ms = 5`) is a nested table in TOML, so tables are joined back with dots.
fn flatten_producer(
    prefix: &str,
    table: &BTreeMap<String, toml::Value>,
    out: &mut Vec<(String, String)>,
    bad: &mut dyn FnMut(String),
) {
    for (k, v) in table {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::String(s) => out.push((name, s.clone())),
            toml::Value::Integer(i) => out.push((name, i.to_string())),
            toml::Value::Float(x) => out.push((name, x.to_string())),
            toml::Value::Boolean(b) => out.push((name, b.to_string())),
            toml::Value::Table(t) => {
                let t: BTreeMap<String, toml::Value> = t.clone().into_iter().collect();
                flatten_producer(&name, &t, out, bad);
            }
            toml::Value::Array(_) | toml::Value::Datetime(_) => {
                bad(format!("kafka.producer.{name}: must be a string, number or boolean"))
            }
        }
    }
}

impl RawKafka {
    /// Validates `[kafka]` (only called when the sink is Kafka).
    pub(super) fn validate(&self, bad: &mut dyn FnMut(String)) -> KafkaConfig {
        let brokers = self.brokers.clone().unwrap_or_default();
        if self.brokers.is_none() {
            bad("kafka.brokers is required with sink.kind = \"kafka\" (e.g. \"127.0.0.1:9092\")".into());
        } else if brokers.split(',').any(|b| b.trim().is_empty() || b.trim().contains(char::is_whitespace)) {
            bad(format!("kafka.brokers: '{brokers}' is not a comma-separated list of host:port"));
        }
        let message_timeout_ms = self.message_timeout_ms;
        if !(100..=MAX_KAFKA_MESSAGE_TIMEOUT_MS).contains(&message_timeout_ms) {
            bad(format!(
                "kafka.message_timeout_ms: {message_timeout_ms} is outside 100..={MAX_KAFKA_MESSAGE_TIMEOUT_MS}; a \
                 request waits this long for the broker at most and must end before the client's own timeout"
            ));
        }
        let max_message_bytes = self.max_message_bytes;
        if !(1000..=1_000_000_000).contains(&max_message_bytes) {
            bad(format!("kafka.max_message_bytes: {max_message_bytes} is outside librdkafka's 1000..=1000000000"));
        }
        let record_key = match self.record_key.as_str() {
            "user_or_anonymous_id" => RecordKey::UserOrAnonymousId,
            "message_id" => RecordKey::MessageId,
            "none" => RecordKey::None,
            other => {
                bad(format!("kafka.record_key: '{other}' is not one of user_or_anonymous_id, message_id, none"));
                RecordKey::UserOrAnonymousId
            }
        };

        let mut given = Vec::new();
        flatten_producer("", &self.producer, &mut given, bad);
        let mut properties: BTreeMap<String, String> =
            default_kafka_producer().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut spelled: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in given {
            let canonical = KAFKA_ALIASES.iter().find(|(alias, _)| *alias == name).map_or(name.as_str(), |(_, c)| *c);
            if let Some((_, hint)) = KAFKA_RESERVED.iter().chain(SECURITY_PROPERTIES).find(|(r, _)| *r == canonical) {
                bad(format!("kafka.producer.{name}: {hint}"));
                continue;
            }
            if let Some(first) = spelled.insert(canonical.to_string(), name.clone()) {
                bad(format!("kafka.producer: '{first}' and '{name}' are the same librdkafka property; delete one"));
                continue;
            }
            probe_property(&format!("kafka.producer.{name}"), canonical, &value, bad);
            properties.insert(canonical.to_string(), value);
        }
        for (name, value) in self.security_properties(bad) {
            probe_property(&format!("kafka: {name}"), name, &value, bad);
            properties.insert(name.to_string(), value);
        }
        properties.insert("bootstrap.servers".into(), brokers.clone());
        properties.insert("message.timeout.ms".into(), message_timeout_ms.to_string());
        properties.insert("message.max.bytes".into(), max_message_bytes.to_string());
        // Our batch.size yields to a smaller kafka.max_message_bytes (a value the operator set
        // is left to librdkafka to judge).
        if !spelled.contains_key("batch.size") {
            properties.insert("batch.size".into(), DEFAULT_BATCH_BYTES.min(max_message_bytes).to_string());
        }
        KafkaConfig { brokers, message_timeout_ms, max_message_bytes, record_key, properties }
    }
}

/// Sets one property alone on a throwaway librdkafka config, so that every bad one is reported
/// (and never its value: it may be a password). This is also where a build without a feature
/// says so (e.g. a codec librdkafka was built without).
fn probe_property(key: &str, name: &str, value: &str, bad: &mut dyn FnMut(String)) {
    let mut probe = rdkafka::ClientConfig::new();
    probe.set(name, value);
    if let Err(e) = probe.create_native_config() {
        let why = match e {
            _ if is_sensitive_property(name) => "librdkafka refused the value".to_string(),
            rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) => desc,
            other => other.to_string(),
        };
        bad(format!("{key}: {}", why.trim_end_matches('.')));
    }
}
