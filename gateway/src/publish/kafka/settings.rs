//! The Kafka sink's own settings: [`KafkaConfig`] (built and validated by `config` from
//! `[kafka]`), [`RecordKey`], and the redaction of secret librdkafka properties.
//!
//! Owns: the settings type the publisher is created from, and which property values are
//! secrets. Must not: parse or validate the file (config does), or create a producer.

use std::collections::BTreeMap;

/// The validated Kafka sink settings.
#[derive(Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub message_timeout_ms: u64,
    pub max_message_bytes: usize,
    pub record_key: RecordKey,
    /// Every librdkafka property the producer gets: our defaults, `[kafka.producer]` over them,
    /// then `bootstrap.servers`, `message.timeout.ms` and `message.max.bytes` from `[kafka]`.
    /// Aliases are folded into one spelling, so no property is set twice.
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    // Passwords in `[kafka.producer]` (SASL) never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("record_key", &self.record_key)
            .field("properties", &redacted_properties(&self.properties))
            .finish()
    }
}

/// What a Kafka record's key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKey {
    /// `userId`, else `anonymousId`.
    UserOrAnonymousId,
    MessageId,
    None,
}

/// librdkafka property names whose values are secrets.
pub fn is_sensitive_property(name: &str) -> bool {
    // A SASL username is often half of an API key pair (Confluent Cloud's key and secret).
    name.contains("password")
        || name == "sasl.username"
        || name.contains("secret")
        || name.contains("keystore")
        || name.ends_with("key.pem")
        || name == "ssl_key"
        || name == "sasl.oauthbearer.config"
}

/// `name=value, …` with secret values replaced.
pub(crate) fn redacted_properties(props: &BTreeMap<String, String>) -> String {
    let shown: Vec<String> = props
        .iter()
        .map(|(k, v)| if is_sensitive_property(k) { format!("{k}=<redacted>") } else { format!("{k}={v}") })
        .collect();
    shown.join(", ")
}
