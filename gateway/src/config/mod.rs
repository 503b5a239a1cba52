//! Configuration: reads one TOML file into [`RawConfig`] (plain serde data, every default in one place)
//! and validates it into [`Config`] (built objects the server uses).
//!
//! Owns: the file format, every default value, and the list of problems a file can have.
//! Must not: open sockets, create directories or touch the sink — startup does that with the
//! validated [`Config`].
//!
//! Two stages, so that `gateway --check` can report *every* problem of a file at once (one line
//! each, prefixed with the file path) instead of stopping at the first.
//!
//! Layout:
//! - `mod.rs`: the validated [`Config`] and its parts ([`ServerConfig`], [`Limits`],
//!   [`SinkConfig`], [`Topics`], …), loading ([`Config::load`], [`Config::from_toml`],
//!   [`Overrides`]), [`ConfigError`], and the re-exports below;
//! - `raw`: the raw serde shapes ([`RawConfig`] and its sections, `deny_unknown_fields`);
//! - `defaults`: every `default_*` function and `impl Default` of the raw shapes;
//! - `build`: [`RawConfig::validate`], raw → validated, gathering every problem;
//! - `kafka`: the `[kafka]` part of that validation (librdkafka properties, aliases);
//! - `kafka_security`: `kafka.security_protocol`, `[kafka.tls]` and `[kafka.sasl]` (files that
//!   must be readable, credentials from the file, an env var or a file);
//! - `tests`: the unit tests.
//!
//! Each stage owns its own settings type and config only builds it: the key and source types
//! live in [`crate::access::keys`], the Kafka sink's in [`crate::publish::kafka`]. They are
//! re-exported here so that `crate::config::Source` etc. keep working for startup, `ingest`,
//! `http` and the tests; stages import them from their own module, never from `config`.

mod build;
mod defaults;
mod kafka;
mod kafka_security;
mod raw;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::access::client_ip::ClientIpRule;
use crate::access::ratelimit::IpLimit;
use crate::decode::EventType;
use crate::publish::kafka::redacted_properties;

pub use crate::access::keys::{KeyKind, OriginPattern, Source, TypeSet, WriteKey};
pub use crate::publish::kafka::{is_sensitive_property, KafkaConfig, RecordKey};
pub use raw::{
    RawConfig, RawContracts, RawDedup, RawImport, RawKafka, RawKafkaSasl, RawKafkaTls, RawKey, RawLimits, RawLocalLog,
    RawLog, RawRateLimits, RawServer, RawSink, RawSource, RawSourceContracts, RawTopics, RawUsage, Secret,
};

/// The embedded default configuration (`config/gateway.toml`): local log, one demo source.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/gateway.toml");
/// Name used for the embedded default in messages.
pub const EMBEDDED_NAME: &str = "<embedded config/gateway.toml>";

/// A validated configuration. Cheap to clone (sources are behind `Arc`).
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: Limits,
    pub sink: SinkConfig,
    pub topics: Topics,
    pub log: RawLog,
    pub per_ip_limit: Option<IpLimit>,
    /// Where usage counts persist, and how often.
    pub usage_dir: PathBuf,
    pub usage_persist_interval_ms: u64,
    pub dedup: DedupSettings,
    /// Import jobs (`[import]`).
    pub jobs: crate::import::jobs::JobSettings,
    pub contracts_dir: PathBuf,
    pub violations_topic: Arc<str>,
    pub sources: Vec<Arc<Source>>,
}

/// Validated `[dedup]`.
#[derive(Debug, Clone)]
pub struct DedupSettings {
    pub cache: crate::dedup::DedupConfig,
    pub sweep_interval_ms: u64,
    pub snapshot_path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Trusted proxies and their header: how the client address is found.
    pub client_ip: ClientIpRule,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub http2_keep_alive_interval_ms: u64,
    pub http2_keep_alive_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub body_read_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub cors_max_age_s: u64,
    pub admin_listen: Option<SocketAddr>,
    /// `None`: chosen from the CPU count and the sink ([`Config::worker_threads`]).
    pub worker_threads: Option<usize>,
}

/// Request size limits (decode's own settings type, built here).
pub use crate::decode::Limits;

#[derive(Debug, Clone)]
pub enum SinkConfig {
    LocalLog { data_dir: PathBuf, segment_max_bytes: u64, fsync: bool, publish_timeout_ms: u64 },
    Kafka(KafkaConfig),
    Memory,
}

/// Upper bound of `sink.local_log.publish_timeout_ms`, for the same reason as
/// [`MAX_KAFKA_MESSAGE_TIMEOUT_MS`]: the gateway answers before a client gives up.
pub const MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS: u64 = 15_000;

/// Upper bound of `kafka.message_timeout_ms`: below the usual SDK request timeouts
/// (analytics-python 15 s, analytics-node 10 s), so the gateway answers before a client gives up.
pub const MAX_KAFKA_MESSAGE_TIMEOUT_MS: u64 = 15_000;

/// Where each event goes: `[topics]` defaults, per-type overrides, per-source templates.
#[derive(Debug, Clone)]
pub struct Topics {
    pub default: String,
    /// Indexed by [`EventType::index`].
    pub by_type: [Option<String>; EventType::COUNT],
}

/// Every problem found in a file, each a line `path: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// Command-line / environment overrides applied on top of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Replaces `kafka.brokers` (so one config file serves several environments).
    pub kafka_brokers: Option<String>,
    /// Replaces `contracts.dir`.
    pub contracts_dir: Option<PathBuf>,
}

impl Config {
    /// Reads and validates a file. `None` loads the embedded default.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (name, text) = match path {
            Some(p) => {
                let name = p.display().to_string();
                match std::fs::read_to_string(p) {
                    Ok(t) => (name, t),
                    Err(e) => return Err(ConfigError { problems: vec![format!("{name}: cannot read: {e}")] }),
                }
            }
            None => (EMBEDDED_NAME.to_string(), EMBEDDED_DEFAULT.to_string()),
        };
        Self::from_toml(&name, &text, overrides)
    }

    /// Parses and validates TOML text; `name` prefixes every problem.
    pub fn from_toml(name: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError { problems: vec![format!("{name}: {}", e.to_string().trim_end())] })?;
        if let Some(listen) = &overrides.listen {
            raw.server.listen = listen.clone();
        }
        if let Some(dir) = &overrides.data_dir {
            raw.sink.local_log.data_dir = dir.clone();
        }
        if let Some(b) = &overrides.kafka_brokers {
            raw.kafka.brokers = Some(b.clone());
        }
        if let Some(d) = &overrides.contracts_dir {
            raw.contracts.dir = d.clone();
        }
        raw.validate(name)
    }
}

/// Topic names the local log and Kafka both accept: Kafka's legal characters, bounded length.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Config {
    /// The request threads to start on a machine with `cpus` CPUs (see `server.worker_threads`).
    pub fn worker_threads(&self, cpus: usize) -> usize {
        self.server.worker_threads.unwrap_or(match self.sink {
            SinkConfig::Kafka(_) => cpus.saturating_sub(1).max(1),
            SinkConfig::LocalLog { .. } | SinkConfig::Memory => cpus.max(1),
        })
    }

    /// The effective configuration as a log-safe summary (keys redacted).
    pub fn summary(&self) -> String {
        let sink = match &self.sink {
            SinkConfig::LocalLog { data_dir, segment_max_bytes, fsync, publish_timeout_ms } => format!(
                "local_log(data_dir={}, segment_max_bytes={segment_max_bytes}, fsync={fsync}, \
                 publish_timeout_ms={publish_timeout_ms})",
                data_dir.display()
            ),
            SinkConfig::Kafka(k) => format!(
                "kafka(brokers={}, record_key={:?}, properties=[{}])",
                k.brokers,
                k.record_key,
                redacted_properties(&k.properties)
            ),
            SinkConfig::Memory => "memory".into(),
        };
        let sources: Vec<String> = self.sources.iter().map(|s| format!("{}({} keys)", s.id, s.keys.len())).collect();
        format!(
            "listen={} sink={} default_topic={} max_request_bytes={} max_event_bytes={} max_batch_events={} sources=[{}]",
            self.server.listen,
            sink,
            self.topics.default,
            self.limits.max_request_bytes,
            self.limits.max_event_bytes,
            self.limits.max_batch_events,
            sources.join(", ")
        )
    }
}
