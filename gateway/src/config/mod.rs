//! Configuration: reads one TOML file into [`RawConfig`] (plain serde data, every default in one place)
//! and validates it into [`Config`] (built objects the server uses).
//!
//! Owns: the file format, every default value, and the list of problems a file can have.
//! Must not: open sockets, create directories or touch the sink — startup does that with the
//! validated [`Config`].
//!
//! Two stages, so that `gateway --check` can report *every* problem of a file at once (one line
//! each, prefixed with the file path) instead of stopping at the first.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use crate::client_ip::{ClientIpRule, ForwardedHeader};
use crate::consent::ConsentPolicy;
use crate::decode::EventType;
use crate::ratelimit::{IpLimit, KeyLimits};

/// The embedded default configuration (`config/gateway.toml`): local log, one demo source.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/gateway.toml");
/// Name used for the embedded default in messages.
pub const EMBEDDED_NAME: &str = "<embedded config/gateway.toml>";

// ---------------------------------------------------------------------------------------------
// Raw file format
// ---------------------------------------------------------------------------------------------

/// The TOML file as written. Unknown keys are errors everywhere: a typo must not silently fall
/// back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub sink: RawSink,
    #[serde(default)]
    pub topics: RawTopics,
    /// The Kafka sink (`[sink] kind = "kafka"`); ignored by the other sinks.
    #[serde(default)]
    pub kafka: RawKafka,
    #[serde(default)]
    pub log: RawLog,
    /// Limits shared by every key (the per-key windows live on sources and keys).
    #[serde(default)]
    pub rate_limits: RawRateLimits,
    /// Usage counters (quotas, `GET /v1/usage`).
    #[serde(default)]
    pub usage: RawUsage,
    /// messageId deduplication.
    #[serde(default)]
    pub dedup: RawDedup,
    /// Tracking plans.
    #[serde(default)]
    pub contracts: RawContracts,
    /// Sources: who may send events, and under which write keys.
    #[serde(default)]
    pub sources: Vec<RawSource>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    /// Per client IP, across all keys (e.g. `{ limit = 120, period_s = 60 }`). Absent: off.
    #[serde(default)]
    pub per_ip: Option<IpLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    /// Where `usage.json` (accepted/rejected/duplicate counts, quota state) is kept.
    /// Default: the local log's data directory (`GATEWAY_DATA_DIR` / `--data-dir` apply).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// How often changed counts are written (a crash loses at most this much).
    #[serde(default = "default_usage_persist_interval_ms")]
    pub persist_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContracts {
    /// Folder of tracking plans, one sub-folder per plan (`GATEWAY_CONTRACTS_DIR` /
    /// `--contracts-dir` override it). Only read when a source names a plan.
    #[serde(default = "default_contracts_dir")]
    pub dir: PathBuf,
    /// Topic that receives a record for every violation, blocked or allowed.
    #[serde(default = "default_violations_topic")]
    pub violations_topic: String,
}

/// A source's tracking plan and what to do with events that do not follow it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceContracts {
    /// Plan name: a folder of `contracts.dir`.
    pub plan: String,
    #[serde(default)]
    pub unplanned_events: Option<crate::validate::UnplannedEvents>,
    #[serde(default)]
    pub unplanned_properties: Option<crate::validate::UnplannedProperties>,
    #[serde(default)]
    pub violations: Option<crate::validate::Violations>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedup {
    /// Most messageIds remembered (all sources together); ≈31 bytes each when full.
    #[serde(default = "default_dedup_capacity")]
    pub capacity: usize,
    /// How long a copy waits for an in-flight request publishing the same id (then 503).
    #[serde(default = "default_dedup_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
    /// How often expired ids are swept (one shard at a time, never all at once).
    #[serde(default = "default_dedup_sweep_interval_ms")]
    pub sweep_interval_ms: u64,
    /// Snapshot written at shutdown and loaded at start. Default: `dedup.snapshot` in the data
    /// directory. Set to "" to disable.
    #[serde(default)]
    pub snapshot_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address the public listener binds (`GATEWAY_LISTEN` / `--listen` override it).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Proxies whose forwarding header is believed (IPs or CIDRs), as the peer and as hops
    /// of the chain. Empty: never believed; the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header those proxies write: `x-forwarded-for` (default) or `forwarded` (RFC 7239).
    /// Only that one is read.
    #[serde(default)]
    pub forwarded_header: ForwardedHeader,
    /// Concurrent connections; the accept loop waits when the cap is reached, and connections
    /// with no request in flight close to make room for the waiting client.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A client must finish sending its request headers within this time (slowloris guard):
    /// from accept to the first complete request head on every protocol (HTTP/1.1 and HTTP/2,
    /// including the bytes that tell them apart), and for every later HTTP/1.1 head, counted
    /// from the end of the previous answer.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed (HTTP/2 with GOAWAY).
    /// HTTP/1.1 keep-alive connections are already closed after `header_read_timeout_ms` without
    /// a new head, so this bounds them only when it is the shorter of the two.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// HTTP/2: a PING is sent after this long without a frame from the client…
    #[serde(default = "default_http2_keep_alive_interval_ms")]
    pub http2_keep_alive_interval_ms: u64,
    /// …and the connection is closed when its answer takes longer than this (a dead peer holds
    /// no slot, even with a request in flight).
    #[serde(default = "default_http2_keep_alive_timeout_ms")]
    pub http2_keep_alive_timeout_ms: u64,
    /// Largest request head hyper buffers (HTTP/1 `max_buf_size`).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// How long the whole body may take to arrive once headers are read.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// How long in-flight requests get to finish after SIGTERM/SIGINT.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// `Access-Control-Max-Age` of CORS preflight answers.
    #[serde(default = "default_cors_max_age_s")]
    pub cors_max_age_s: u64,
    /// A second listener for `/metrics`, `/health` and `/ready` only (e.g. `0.0.0.0:9090`), so
    /// metrics are not exposed on the public port. When set, the public port has no `/metrics`.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// Threads that serve requests (the async runtime's workers). Default: one per CPU for the
    /// local log; one per CPU less one (at least one) for Kafka, whose own threads (one per
    /// broker, plus delivery reports) do ≈40 % of the work at full load and need a core.
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Cap on a request body, checked while it streams and again after gzip inflation.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Cap on one event (its JSON text as sent).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Cap on the number of events of one batch.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `local_log` (the embedded default), `kafka` (see `[kafka]`) or `memory` (tests only:
    /// events vanish on exit).
    #[serde(default = "default_sink_kind")]
    pub kind: String,
    #[serde(default)]
    pub local_log: RawLocalLog,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocalLog {
    /// Directory holding one folder per topic (`GATEWAY_DATA_DIR` / `--data-dir` override it).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A segment file is closed and a new one started once it exceeds this size.
    #[serde(default = "default_segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// `fsync` before answering. Only turn off for throwaway benchmarks: a 2xx then no longer
    /// means the event survives a power loss.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// How long a request waits for its events to be written (queueing for the writer
    /// included) before it gets 503 `publish_timeout`; `/ready` is 503 while the writer has been
    /// in one write for longer. At most [`MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS`].
    #[serde(default = "default_local_log_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
}

/// `[kafka]`: the Kafka sink. A 2xx means every accepted event of the request is on the
/// broker, acknowledged by all in-sync replicas to an idempotent producer.
///
/// The producer gets these librdkafka properties unless `[kafka.producer]` sets them:
/// `acks = all`, `enable.idempotence = true`, `compression.type = lz4`, `linger.ms = 5`,
/// `batch.size = 262144` (at most `kafka.max_message_bytes`),
/// `queue.buffering.max.messages = 500000`, `queue.buffering.max.kbytes = 262144` (a bounded
/// local queue: when it is full requests get 503 at once instead of waiting),
/// `reconnect.backoff.max.ms = 1000` (reconnect within a second after an outage) and
/// `client.id = segment-gateway`; plus `bootstrap.servers`, `message.timeout.ms` and
/// `message.max.bytes` from the keys below.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// `bootstrap.servers`: comma-separated `host:port` list. Required with `kind = "kafka"`.
    #[serde(default)]
    pub brokers: Option<String>,
    /// `message.timeout.ms`: how long librdkafka tries to deliver an event before the request
    /// gets 503. Bounded by [`MAX_KAFKA_MESSAGE_TIMEOUT_MS`] so that a request always ends
    /// before a client's own timeout.
    #[serde(default = "default_kafka_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// `message.max.bytes`: the largest record the producer sends (keep it at or below the
    /// topics' `max.message.bytes`). Larger events get 413 `event_too_large` before producing.
    #[serde(default = "default_kafka_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The record key: `user_or_anonymous_id` (default: `userId`, else `anonymousId`, so one
    /// user's events stay in order on one partition), `message_id`, or `none` (round robin).
    #[serde(default = "default_kafka_record_key")]
    pub record_key: String,
    /// Any librdkafka producer property, passed through as text and overriding our defaults,
    /// e.g. `"linger.ms" = 10` or `"sasl.mechanisms" = "PLAIN"`. Numbers and booleans are
    /// turned into text; dotted keys may be quoted or not.
    #[serde(default)]
    pub producer: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopics {
    /// Topic for every event unless overridden.
    #[serde(default = "default_topic")]
    pub default: String,
    /// Per call type overrides, e.g. `identify = "identities"`.
    #[serde(default)]
    pub by_type: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `auto` (default: text when stderr is a terminal, JSON otherwise), `json` or `text`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A `tracing` filter directive, e.g. `info` or `gateway=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Stable id, carried by every published event as `sourceId`.
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// Topic for this source's events, overriding `[topics]` (may use `{type}`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Call types this source's keys may send (default: all six). Keys may narrow it.
    #[serde(default)]
    pub allowed_types: Option<Vec<String>>,
    /// Browser origins allowed to send with this source's keys, e.g. `https://shop.example.com`
    /// or `https://*.example.com` (default: any). Requests without `Origin` (servers) pass.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Request rate windows for each key of this source (keys may override each window).
    #[serde(default)]
    pub rate_limits: KeyLimits,
    /// Accepted events per calendar month (UTC); over it, 402 `quota_exceeded`.
    #[serde(default)]
    pub monthly_event_quota: Option<u64>,
    /// Consent enforcement: required categories, IP policy, purpose mapping.
    #[serde(default)]
    pub consent: ConsentPolicy,
    /// Drop events whose client-sent messageId was already published within `dedup_ttl_s`.
    #[serde(default = "default_true")]
    pub dedup: bool,
    #[serde(default = "default_dedup_ttl_s")]
    pub dedup_ttl_s: u64,
    /// The source's tracking plan and policies (default: none, nothing checked).
    #[serde(default)]
    pub contracts: Option<RawSourceContracts>,
    /// Write keys that map to this source.
    #[serde(default)]
    pub keys: Vec<RawKey>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// The write key itself. Never logged.
    pub key: String,
    /// A label for operators, unique within the source (logs and metrics never show the key).
    #[serde(default)]
    pub label: String,
    /// `publishable` (browser-safe: ingest only) or `secret` (server-side: ingest and the read
    /// endpoints such as `GET /v1/usage`).
    #[serde(default)]
    pub kind: KeyKind,
    /// A revoked key gets 401 `revoked_write_key` (reload the config to revoke at once).
    #[serde(default)]
    pub revoked: bool,
    /// Narrows the source's `allowed_types` for this key.
    #[serde(default)]
    pub allowed_types: Option<Vec<String>>,
    /// Replaces the source's `allowed_origins` for this key.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Overrides the source's rate windows, window by window.
    #[serde(default)]
    pub rate_limits: KeyLimits,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Ships in browser JavaScript: ingest only.
    #[default]
    Publishable,
    /// Kept on servers: ingest and read endpoints.
    Secret,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_connections() -> usize {
    10_000
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_http2_keep_alive_interval_ms() -> u64 {
    20_000
}
fn default_http2_keep_alive_timeout_ms() -> u64 {
    10_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_body_read_timeout_ms() -> u64 {
    30_000
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
fn default_cors_max_age_s() -> u64 {
    86_400
}
fn default_max_request_bytes() -> usize {
    500 * 1024
}
fn default_max_event_bytes() -> usize {
    32 * 1024
}
fn default_max_batch_events() -> usize {
    2_500
}
fn default_sink_kind() -> String {
    "local_log".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_segment_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_local_log_publish_timeout_ms() -> u64 {
    5_000
}
fn default_true() -> bool {
    true
}
fn default_topic() -> String {
    "events".into()
}
fn default_kafka_message_timeout_ms() -> u64 {
    10_000
}
fn default_kafka_max_message_bytes() -> usize {
    1_000_000
}
fn default_kafka_record_key() -> String {
    "user_or_anonymous_id".into()
}
/// Our default `batch.size`, set after the other defaults because it may not exceed
/// `message.max.bytes`. Under load a partition's batch is sent once it holds 256 KiB instead of
/// librdkafka's 1 MB: batches then fill (and leave) before linger.ms, and the copy + lz4 pass
/// over a batch stays within a core's 1 MiB L2. benches/e2e.sh, 100-event requests, 3 rounds:
/// median 600,674 vs 519,142 events/s, 2.26 vs 2.66 µs gateway CPU per event.
const DEFAULT_BATCH_BYTES: usize = 262_144;

/// The producer properties we set unless `[kafka.producer]` does (see [`RawKafka`]).
fn default_kafka_producer() -> [(&'static str, &'static str); 9] {
    [
        // librdkafka's statistics feed the gateway_kafka_* gauges of /metrics.
        ("statistics.interval.ms", "5000"),
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
        ("queue.buffering.max.messages", "500000"),
        ("queue.buffering.max.kbytes", "262144"),
        ("reconnect.backoff.max.ms", "1000"),
        ("client.id", "segment-gateway"),
    ]
}
fn default_usage_persist_interval_ms() -> u64 {
    5_000
}
fn default_dedup_capacity() -> usize {
    crate::dedup::DEFAULT_CAPACITY
}
fn default_dedup_wait_timeout_ms() -> u64 {
    5_000
}
fn default_dedup_sweep_interval_ms() -> u64 {
    60_000
}
fn default_dedup_ttl_s() -> u64 {
    86_400
}
fn default_contracts_dir() -> PathBuf {
    PathBuf::from("contracts")
}
fn default_violations_topic() -> String {
    "violations".into()
}
impl Default for RawContracts {
    fn default() -> Self {
        Self { dir: default_contracts_dir(), violations_topic: default_violations_topic() }
    }
}
impl Default for RawUsage {
    fn default() -> Self {
        Self { data_dir: None, persist_interval_ms: default_usage_persist_interval_ms() }
    }
}
impl Default for RawDedup {
    fn default() -> Self {
        Self {
            capacity: default_dedup_capacity(),
            wait_timeout_ms: default_dedup_wait_timeout_ms(),
            sweep_interval_ms: default_dedup_sweep_interval_ms(),
            snapshot_path: None,
        }
    }
}
fn default_log_format() -> String {
    "auto".into()
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            max_connections: default_max_connections(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            http2_keep_alive_interval_ms: default_http2_keep_alive_interval_ms(),
            http2_keep_alive_timeout_ms: default_http2_keep_alive_timeout_ms(),
            max_header_bytes: default_max_header_bytes(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            cors_max_age_s: default_cors_max_age_s(),
            admin_listen: None,
            worker_threads: None,
        }
    }
}
impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: default_max_request_bytes(),
            max_event_bytes: default_max_event_bytes(),
            max_batch_events: default_max_batch_events(),
        }
    }
}
impl Default for RawSink {
    fn default() -> Self {
        Self { kind: default_sink_kind(), local_log: RawLocalLog::default() }
    }
}
impl Default for RawLocalLog {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            segment_max_bytes: default_segment_max_bytes(),
            fsync: true,
            publish_timeout_ms: default_local_log_publish_timeout_ms(),
        }
    }
}
impl Default for RawKafka {
    fn default() -> Self {
        Self {
            brokers: None,
            message_timeout_ms: default_kafka_message_timeout_ms(),
            max_message_bytes: default_kafka_max_message_bytes(),
            record_key: default_kafka_record_key(),
            producer: BTreeMap::new(),
        }
    }
}
impl Default for RawTopics {
    fn default() -> Self {
        Self { default: default_topic(), by_type: BTreeMap::new() }
    }
}
impl Default for RawLog {
    fn default() -> Self {
        Self { format: default_log_format(), level: default_log_level() }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------------

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

/// Request size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_event_bytes: usize,
    pub max_batch_events: usize,
}

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
    name.contains("password")
        || name.contains("secret")
        || name.contains("keystore")
        || name.ends_with("key.pem")
        || name == "ssl_key"
        || name == "sasl.oauthbearer.config"
}

/// `name=value, …` with secret values replaced.
fn redacted_properties(props: &BTreeMap<String, String>) -> String {
    let shown: Vec<String> = props
        .iter()
        .map(|(k, v)| if is_sensitive_property(k) { format!("{k}=<redacted>") } else { format!("{k}={v}") })
        .collect();
    shown.join(", ")
}

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
    fn validate(&self, bad: &mut dyn FnMut(String)) -> KafkaConfig {
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
            if let Some((_, hint)) = KAFKA_RESERVED.iter().find(|(r, _)| *r == canonical) {
                bad(format!("kafka.producer.{name}: {hint}"));
                continue;
            }
            if let Some(first) = spelled.insert(canonical.to_string(), name.clone()) {
                bad(format!("kafka.producer: '{first}' and '{name}' are the same librdkafka property; delete one"));
                continue;
            }
            // Each property alone, so that every bad one is reported (and never its value:
            // it may be a password).
            let mut probe = rdkafka::ClientConfig::new();
            probe.set(canonical, value.as_str());
            if let Err(e) = probe.create_native_config() {
                let why = match e {
                    _ if is_sensitive_property(canonical) => "librdkafka refused the value".to_string(),
                    rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) => desc,
                    other => other.to_string(),
                };
                bad(format!("kafka.producer.{name}: {}", why.trim_end_matches('.')));
            }
            properties.insert(canonical.to_string(), value);
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

/// Where each event goes: `[topics]` defaults, per-type overrides, per-source templates.
#[derive(Debug, Clone)]
pub struct Topics {
    pub default: String,
    /// Indexed by [`EventType::index`].
    pub by_type: [Option<String>; EventType::COUNT],
}

/// A source: where events come from, named by its id on every published event.
#[derive(Debug)]
pub struct Source {
    pub id: Arc<str>,
    pub name: String,
    /// Resolved topic per event type for this source (templates expanded at startup).
    pub topics: [Arc<str>; EventType::COUNT],
    pub monthly_event_quota: Option<u64>,
    pub consent: ConsentPolicy,
    /// `Some(ttl)` when client messageIds are deduplicated.
    pub dedup_ttl: Option<std::time::Duration>,
    pub rate_limits: KeyLimits,
    /// Plan name and policies, when the source's events are checked against a tracking plan.
    pub contracts: Option<(String, crate::validate::Policies)>,
    pub keys: Vec<WriteKey>,
}

/// One write key of a source, with its settings resolved (inherited from the source).
pub struct WriteKey {
    pub key: String,
    pub label: String,
    /// Stable across reloads while source id and label stay: `source_id/label`. Rate-limit
    /// state is keyed by it.
    pub id: Arc<str>,
    pub kind: KeyKind,
    pub revoked: bool,
    pub allowed_types: TypeSet,
    /// `None`: any origin.
    pub allowed_origins: Option<Vec<OriginPattern>>,
    pub rate_limits: KeyLimits,
}

impl std::fmt::Debug for WriteKey {
    // Keys never reach a log line, not even through `{:?}` of the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKey")
            .field("key", &"<redacted>")
            .field("label", &self.label)
            .field("kind", &self.kind)
            .field("revoked", &self.revoked)
            .finish()
    }
}

/// A set of call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeSet(u8);

impl TypeSet {
    pub const ALL: TypeSet = TypeSet((1 << EventType::COUNT) - 1);

    pub fn contains(self, t: EventType) -> bool {
        self.0 & (1 << t.index()) != 0
    }

    fn parse(names: &[String], at: &str, bad: &mut dyn FnMut(String)) -> TypeSet {
        let mut set = 0u8;
        for n in names {
            match EventType::parse(n) {
                Some(t) => set |= 1 << t.index(),
                None => bad(format!("{at}: '{n}' is not a call type (track, identify, page, screen, group, alias)")),
            }
        }
        TypeSet(set)
    }

    fn intersect(self, other: TypeSet) -> TypeSet {
        TypeSet(self.0 & other.0)
    }

    /// The type names, for the usage API.
    pub fn names(self) -> Vec<&'static str> {
        EventType::ALL.iter().filter(|t| self.contains(**t)).map(|t| t.as_str()).collect()
    }
}

/// An allowed browser origin: exact (`https://shop.example.com`), a subdomain wildcard
/// (`https://*.example.com`, which does not match the bare domain), or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    Exact(String),
    /// Scheme, `://`, and the domain suffix starting with '.'.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

impl OriginPattern {
    fn parse(p: &str) -> Result<OriginPattern, String> {
        let p = p.trim().trim_end_matches('/').to_ascii_lowercase();
        if p == "*" {
            return Ok(OriginPattern::Any);
        }
        let Some((scheme, host)) = p.split_once("://") else {
            return Err(format!("'{p}' is not an origin like https://shop.example.com"));
        };
        if scheme != "http" && scheme != "https" || host.is_empty() || host.contains('/') {
            return Err(format!("'{p}' is not an origin like https://shop.example.com"));
        }
        match host.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') && rest.len() > 1 && !rest.contains('*') => {
                Ok(OriginPattern::Subdomains { scheme: scheme.to_string(), suffix: rest.to_string() })
            }
            Some(_) => Err(format!("'{p}': a wildcard must be a whole leading label, as in https://*.example.com")),
            None if host.contains('*') => Err(format!("'{p}': a wildcard must be a whole leading label")),
            None => Ok(OriginPattern::Exact(p)),
        }
    }

    /// Whether an `Origin` header value matches (ASCII case-insensitive).
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginPattern::Subdomains { scheme, suffix } => {
                let Some((s, host)) = origin.split_once("://") else { return false };
                let host = host.to_ascii_lowercase();
                s.eq_ignore_ascii_case(scheme) && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
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

impl RawConfig {
    /// Validates everything, collecting every problem before failing.
    pub fn validate(self, name: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |msg: String| problems.push(format!("{name}: {msg}"));

        let listen = match self.server.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                bad(format!("server.listen: '{}' is not an address like 127.0.0.1:8080", self.server.listen));
                None
            }
        };
        let admin_listen = match &self.server.admin_listen {
            None => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    bad(format!("server.admin_listen: '{a}' is not an address like 127.0.0.1:9090"));
                    None
                }
            },
        };
        let mut trusted_proxies = Vec::new();
        for p in &self.server.trusted_proxies {
            if let Ok(net) = p.parse::<IpNet>() {
                trusted_proxies.push(net);
            } else if let Ok(ip) = p.parse::<IpAddr>() {
                trusted_proxies.push(IpNet::from(ip));
            } else {
                bad(format!("server.trusted_proxies: '{p}' is neither an IP nor a CIDR"));
            }
        }
        if self.server.worker_threads == Some(0) {
            bad("server.worker_threads must be at least 1 (leave it out for the default)".into());
        }
        if self.server.max_connections == 0 {
            bad("server.max_connections must be at least 1".into());
        }
        for (name, ms) in [
            ("header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("idle_timeout_ms", self.server.idle_timeout_ms),
            ("http2_keep_alive_interval_ms", self.server.http2_keep_alive_interval_ms),
            ("http2_keep_alive_timeout_ms", self.server.http2_keep_alive_timeout_ms),
        ] {
            if ms == 0 {
                bad(format!("server.{name} must be at least 1"));
            }
        }
        if self.server.max_header_bytes < 8192 {
            bad("server.max_header_bytes must be at least 8192 (hyper's minimum)".into());
        }
        let l = &self.limits;
        if l.max_request_bytes == 0 {
            bad("limits.max_request_bytes must be at least 1".into());
        }
        if l.max_event_bytes == 0 || l.max_event_bytes > l.max_request_bytes {
            bad("limits.max_event_bytes must be between 1 and limits.max_request_bytes".into());
        }
        if l.max_batch_events == 0 {
            bad("limits.max_batch_events must be at least 1".into());
        }

        let sink = match self.sink.kind.as_str() {
            "local_log" => {
                if self.sink.local_log.segment_max_bytes < 1024 {
                    bad("sink.local_log.segment_max_bytes must be at least 1024".into());
                }
                if self.sink.local_log.data_dir.as_os_str().is_empty() {
                    bad("sink.local_log.data_dir must not be empty".into());
                }
                let publish_timeout_ms = self.sink.local_log.publish_timeout_ms;
                if !(1..=MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS).contains(&publish_timeout_ms) {
                    bad(format!(
                        "sink.local_log.publish_timeout_ms: {publish_timeout_ms} is outside \
                         1..={MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS}; a request waits this long for the disk at most"
                    ));
                }
                SinkConfig::LocalLog {
                    data_dir: self.sink.local_log.data_dir.clone(),
                    segment_max_bytes: self.sink.local_log.segment_max_bytes,
                    fsync: self.sink.local_log.fsync,
                    publish_timeout_ms,
                }
            }
            "kafka" => SinkConfig::Kafka(self.kafka.validate(&mut bad)),
            "memory" => SinkConfig::Memory,
            other => {
                bad(format!("sink.kind: '{other}' is not one of local_log, kafka, memory"));
                SinkConfig::Memory
            }
        };

        if !is_valid_topic(&self.topics.default) {
            bad(format!(
                "topics.default: '{}' is not a valid topic name (letters, digits, '.', '_', '-')",
                self.topics.default
            ));
        }
        let mut by_type: [Option<String>; EventType::COUNT] = Default::default();
        for (ty, topic) in &self.topics.by_type {
            match EventType::parse(ty) {
                Some(t) => {
                    if !is_valid_topic(topic) {
                        bad(format!("topics.by_type.{ty}: '{topic}' is not a valid topic name"));
                    }
                    by_type[t.index()] = Some(topic.clone());
                }
                None => bad(format!(
                    "topics.by_type: '{ty}' is not a call type (track, identify, page, screen, group, alias)"
                )),
            }
        }
        let topics = Topics { default: self.topics.default.clone(), by_type };

        match self.log.format.as_str() {
            "auto" | "json" | "text" => {}
            other => bad(format!("log.format: '{other}' is not one of auto, json, text")),
        }

        if self.sources.is_empty() {
            bad("no [[sources]]: declare at least one source with a write key".into());
        }
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        let mut sources = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.id.is_empty() || !s.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                bad(format!("sources[{i}].id: '{}' must be non-empty letters, digits, '.', '_', '-'", s.id));
            }
            if !ids.insert(s.id.clone()) {
                bad(format!("sources[{i}].id: '{}' is declared twice", s.id));
            }
            if s.keys.is_empty() {
                bad(format!("sources[{i}] ('{}'): no keys; add a [[sources.keys]] with a key", s.id));
            }
            for (k, key) in s.keys.iter().enumerate() {
                if key.key.trim().is_empty() || key.key.trim() != key.key {
                    bad(format!("sources[{i}].keys[{k}]: key must be non-empty without surrounding spaces"));
                } else if !keys.insert(key.key.clone()) {
                    // Never print the key itself: say where the copy is.
                    bad(format!("sources[{i}].keys[{k}]: this key is already used by another key entry"));
                }
            }
            let topic_of = |t: EventType| -> String {
                match &s.topic {
                    Some(tpl) => tpl.replace("{type}", t.as_str()),
                    None => topics.by_type[t.index()].clone().unwrap_or_else(|| topics.default.clone()),
                }
            };
            if let Some(tpl) = &s.topic {
                for t in EventType::ALL {
                    let topic = topic_of(t);
                    if !is_valid_topic(&topic) {
                        bad(format!("sources[{i}].topic: '{tpl}' gives '{topic}', not a valid topic name"));
                        break;
                    }
                }
            }
            let at = format!("sources[{i}]");
            let source_types = match &s.allowed_types {
                Some(names) => TypeSet::parse(names, &format!("{at}.allowed_types"), &mut bad),
                None => TypeSet::ALL,
            };
            let parse_origins = |list: &Option<Vec<String>>, at: &str, bad: &mut dyn FnMut(String)| {
                list.as_ref().map(|l| {
                    l.iter()
                        .filter_map(|o| OriginPattern::parse(o).map_err(|e| bad(format!("{at}: {e}"))).ok())
                        .collect::<Vec<_>>()
                })
            };
            let source_origins = parse_origins(&s.allowed_origins, &format!("{at}.allowed_origins"), &mut bad);
            s.rate_limits.validate(&format!("{at}.rate_limits"), &mut bad);
            s.consent.validate(&format!("{at}.consent"), &mut bad);
            if s.monthly_event_quota == Some(0) {
                bad(format!("{at}.monthly_event_quota must be at least 1; remove it for no quota"));
            }
            if s.dedup && s.dedup_ttl_s == 0 {
                bad(format!("{at}.dedup_ttl_s must be at least 1 (or set dedup = false)"));
            }
            let mut labels = HashSet::new();
            let mut write_keys = Vec::new();
            for (k, key) in s.keys.iter().enumerate() {
                let kat = format!("{at}.keys[{k}]");
                let label = if key.label.is_empty() { format!("key{k}") } else { key.label.clone() };
                if !labels.insert(label.clone()) {
                    bad(format!(
                        "{kat}.label: '{label}' is used twice in this source (labels name keys in logs and limits)"
                    ));
                }
                key.rate_limits.validate(&format!("{kat}.rate_limits"), &mut bad);
                let types = match &key.allowed_types {
                    Some(names) => {
                        TypeSet::parse(names, &format!("{kat}.allowed_types"), &mut bad).intersect(source_types)
                    }
                    None => source_types,
                };
                let origins = match &key.allowed_origins {
                    Some(_) => parse_origins(&key.allowed_origins, &format!("{kat}.allowed_origins"), &mut bad),
                    None => source_origins.clone(),
                };
                write_keys.push(WriteKey {
                    key: key.key.clone(),
                    id: Arc::from(format!("{}/{label}", s.id)),
                    label,
                    kind: key.kind,
                    revoked: key.revoked,
                    allowed_types: types,
                    allowed_origins: origins,
                    rate_limits: key.rate_limits.inherit(&s.rate_limits),
                });
            }
            sources.push(Arc::new(Source {
                id: Arc::from(s.id.as_str()),
                name: if s.name.is_empty() { s.id.clone() } else { s.name.clone() },
                topics: EventType::ALL.map(|t| Arc::<str>::from(topic_of(t))),
                monthly_event_quota: s.monthly_event_quota,
                consent: s.consent.clone(),
                dedup_ttl: s.dedup.then(|| std::time::Duration::from_secs(s.dedup_ttl_s)),
                rate_limits: s.rate_limits,
                contracts: s.contracts.as_ref().map(|c| {
                    let d = crate::validate::Policies::default();
                    let policies = crate::validate::Policies {
                        unplanned_events: c.unplanned_events.unwrap_or(d.unplanned_events),
                        unplanned_properties: c.unplanned_properties.unwrap_or(d.unplanned_properties),
                        violations: c.violations.unwrap_or(d.violations),
                    };
                    (c.plan.clone(), policies)
                }),
                keys: write_keys,
            }));
        }

        if let Some(ip) = &self.rate_limits.per_ip {
            ip.validate("rate_limits.per_ip", &mut bad);
        }
        if self.usage.persist_interval_ms == 0 {
            bad("usage.persist_interval_ms must be at least 1".into());
        }
        let data_dir = self.sink.local_log.data_dir.clone();
        let usage_dir = self.usage.data_dir.clone().unwrap_or_else(|| data_dir.clone());
        let dedup_cache = crate::dedup::DedupConfig {
            capacity: self.dedup.capacity,
            wait_timeout: std::time::Duration::from_millis(self.dedup.wait_timeout_ms),
            ..crate::dedup::DedupConfig::default()
        };
        for p in dedup_cache.problems() {
            bad(format!("dedup: {p}"));
        }
        if self.dedup.sweep_interval_ms == 0 {
            bad("dedup.sweep_interval_ms must be at least 1".into());
        }
        let snapshot_path = match &self.dedup.snapshot_path {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(data_dir.join("dedup.snapshot")),
        };
        let dedup =
            DedupSettings { cache: dedup_cache, sweep_interval_ms: self.dedup.sweep_interval_ms, snapshot_path };

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let Some(listen) = listen else {
            return Err(ConfigError { problems: vec![format!("{name}: server.listen is invalid")] });
        };
        Ok(Config {
            server: ServerConfig {
                listen,
                client_ip: ClientIpRule { trusted: trusted_proxies, header: self.server.forwarded_header },
                max_connections: self.server.max_connections,
                header_read_timeout_ms: self.server.header_read_timeout_ms,
                idle_timeout_ms: self.server.idle_timeout_ms,
                http2_keep_alive_interval_ms: self.server.http2_keep_alive_interval_ms,
                http2_keep_alive_timeout_ms: self.server.http2_keep_alive_timeout_ms,
                max_header_bytes: self.server.max_header_bytes,
                body_read_timeout_ms: self.server.body_read_timeout_ms,
                shutdown_timeout_ms: self.server.shutdown_timeout_ms,
                cors_max_age_s: self.server.cors_max_age_s,
                admin_listen,
                worker_threads: self.server.worker_threads,
            },
            limits: Limits {
                max_request_bytes: self.limits.max_request_bytes,
                max_event_bytes: self.limits.max_event_bytes,
                max_batch_events: self.limits.max_batch_events,
            },
            sink,
            topics,
            log: self.log,
            per_ip_limit: self.rate_limits.per_ip,
            usage_dir,
            usage_persist_interval_ms: self.usage.persist_interval_ms,
            dedup,
            contracts_dir: self.contracts.dir.clone(),
            violations_topic: Arc::from(self.contracts.violations_topic.as_str()),
            sources,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.sources.len(), 1);
        assert_eq!(&*c.sources[0].id, "demo");
        assert!(matches!(c.sink, SinkConfig::LocalLog { .. }));
        assert_eq!(c.limits.max_batch_events, 2500);
    }

    #[test]
    fn local_log_publish_timeout_is_bounded() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert!(matches!(c.sink, SinkConfig::LocalLog { publish_timeout_ms: 5000, .. }));
        for bad in [0, MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS + 1] {
            let text = format!("[sink.local_log]\npublish_timeout_ms = {bad}\n");
            let err = Config::from_toml("f.toml", &text, &Overrides::default()).unwrap_err();
            assert!(err.problems.iter().any(|p| p.contains("sink.local_log.publish_timeout_ms")), "{err:?}");
        }
    }

    #[test]
    fn shipped_configs_are_valid() {
        // Every file in config/ must validate, not only the embedded one.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1);
    }

    #[test]
    fn every_problem_is_reported_with_the_path() {
        let text = r#"
            [server]
            listen = "nowhere"
            trusted_proxies = ["10.0.0.0/8", "bogus"]
            [topics]
            default = "bad topic"
            by_type = { purchase = "x" }
            [[sources]]
            id = "a"
            keys = [{ key = "k1" }]
            [[sources]]
            id = "a"
            keys = [{ key = "k1" }]
        "#;
        let err = Config::from_toml("f.toml", text, &Overrides::default()).unwrap_err();
        let all = err.problems.join("\n");
        assert!(err.problems.iter().all(|p| p.starts_with("f.toml: ")), "{all}");
        for needle in ["server.listen", "'bogus'", "topics.default", "'purchase'", "declared twice", "already used"] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(!all.contains("k1"), "a key leaked into a message:\n{all}");
    }

    #[test]
    fn worker_threads_leave_a_core_to_kafka_unless_set() {
        let source = "[[sources]]\nid = \"s\"\nkeys = [{ key = \"k\" }]\n";
        let load = |text: &str| Config::from_toml("f.toml", &format!("{text}{source}"), &Overrides::default());
        let kafka = "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\n";
        let k = load(kafka).unwrap();
        assert_eq!((k.worker_threads(1), k.worker_threads(2), k.worker_threads(8)), (1, 1, 7));
        let local = load("").unwrap();
        assert_eq!((local.worker_threads(1), local.worker_threads(2), local.worker_threads(8)), (1, 2, 8));
        let set = load(&format!("[server]\nworker_threads = 3\n{kafka}")).unwrap();
        assert_eq!(set.worker_threads(2), 3);
        let err = load("[server]\nworker_threads = 0\n").unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("server.worker_threads")), "{:?}", err.problems);
    }

    #[test]
    fn connection_timeouts_have_defaults_and_must_be_positive() {
        let source = "[[sources]]\nid = \"s\"\nkeys = [{ key = \"k\" }]\n";
        let load = |text: &str| Config::from_toml("f.toml", &format!("{text}{source}"), &Overrides::default());
        let d = load("").unwrap().server;
        assert_eq!(
            (
                d.header_read_timeout_ms,
                d.idle_timeout_ms,
                d.http2_keep_alive_interval_ms,
                d.http2_keep_alive_timeout_ms
            ),
            (10_000, 60_000, 20_000, 10_000)
        );
        let zero = "[server]\nheader_read_timeout_ms = 0\nidle_timeout_ms = 0\nhttp2_keep_alive_interval_ms = 0\nhttp2_keep_alive_timeout_ms = 0\n";
        let err = load(zero).unwrap_err();
        for key in
            ["header_read_timeout_ms", "idle_timeout_ms", "http2_keep_alive_interval_ms", "http2_keep_alive_timeout_ms"]
        {
            assert!(
                err.problems.iter().any(|p| p.contains(&format!("server.{key} must be at least 1"))),
                "{key}: {:?}",
                err.problems
            );
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Config::from_toml("f.toml", "[server]\nlisten_addr = \"x\"\n", &Overrides::default()).unwrap_err();
        assert!(err.problems[0].contains("listen_addr"), "{:?}", err.problems);
    }

    #[test]
    fn overrides_win_and_templates_expand() {
        let text = r#"
            [topics]
            default = "events"
            by_type = { identify = "identities" }
            [[sources]]
            id = "web"
            keys = [{ key = "k" }]
            [[sources]]
            id = "srv"
            topic = "srv.{type}"
            keys = [{ key = "k2" }]
        "#;
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some("/tmp/x".into()),
            kafka_brokers: None,
            contracts_dir: None,
        };
        let c = Config::from_toml("f", text, &o).unwrap();
        assert_eq!(c.server.listen.port(), 0);
        assert!(matches!(&c.sink, SinkConfig::LocalLog { data_dir, .. } if data_dir == Path::new("/tmp/x")));
        assert_eq!(&*c.sources[0].topics[EventType::Identify.index()], "identities");
        assert_eq!(&*c.sources[0].topics[EventType::Track.index()], "events");
        assert_eq!(&*c.sources[1].topics[EventType::Page.index()], "srv.page");
    }

    const KAFKA_SOURCE: &str = "[[sources]]\nid = \"s\"\nkeys = [{ key = \"k\" }]\n";

    fn kafka(text: &str) -> Result<KafkaConfig, ConfigError> {
        let c = Config::from_toml(
            "f.toml",
            &format!("[sink]\nkind = \"kafka\"\n{text}\n{KAFKA_SOURCE}"),
            &Overrides::default(),
        )?;
        match c.sink {
            SinkConfig::Kafka(k) => Ok(k),
            other => panic!("not kafka: {other:?}"),
        }
    }

    #[test]
    fn kafka_defaults_and_pass_through() {
        let k = kafka(
            "[kafka]\nbrokers = \"b1:9092,b2:9092\"\n[kafka.producer]\nlinger.ms = 20\n\"compression.codec\" = \"snappy\"\n\"socket.keepalive.enable\" = true\n",
        )
        .unwrap();
        assert_eq!(k.message_timeout_ms, 10_000);
        assert_eq!(k.max_message_bytes, 1_000_000);
        assert_eq!(k.record_key, RecordKey::UserOrAnonymousId);
        let p = |n: &str| k.properties.get(n).map(String::as_str);
        assert_eq!(p("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(p("acks"), Some("all"));
        assert_eq!(p("enable.idempotence"), Some("true"));
        assert_eq!(p("message.timeout.ms"), Some("10000"));
        assert_eq!(p("message.max.bytes"), Some("1000000"));
        // An unquoted dotted key and an alias both replace our default, in one spelling.
        assert_eq!(p("linger.ms"), Some("20"));
        assert_eq!(p("compression.type"), Some("snappy"));
        assert_eq!(p("compression.codec"), None);
        assert_eq!(p("socket.keepalive.enable"), Some("true"));
        assert_eq!(p("batch.size"), Some("262144"));
        // Our batch.size yields to a smaller message limit; an operator's value is kept.
        let small = kafka("[kafka]\nbrokers = \"b:9092\"\nmax_message_bytes = 100000\n").unwrap();
        assert_eq!(small.properties.get("batch.size").map(String::as_str), Some("100000"));
        let set = kafka("[kafka]\nbrokers = \"b:9092\"\n[kafka.producer]\n\"batch.size\" = 65536\n").unwrap();
        assert_eq!(set.properties.get("batch.size").map(String::as_str), Some("65536"));
    }

    #[test]
    fn kafka_problems_are_all_reported() {
        let err = kafka(
            "[kafka]\nmessage_timeout_ms = 60000\nmax_message_bytes = 10\nrecord_key = \"userId\"\n[kafka.producer]\n\"lingr.ms\" = 5\n\"acks\" = \"maybe\"\n\"delivery.timeout.ms\" = 1\n\"bootstrap.servers\" = \"x:1\"\n\"linger.ms\" = 1\n\"queue.buffering.max.ms\" = 2\n\"sasl.password\" = [1]\n",
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "kafka.brokers is required",
            "kafka.message_timeout_ms: 60000",
            "kafka.max_message_bytes: 10",
            "kafka.record_key: 'userId'",
            "kafka.producer.lingr.ms",
            "kafka.producer.acks",
            "kafka.producer.delivery.timeout.ms: set kafka.message_timeout_ms instead",
            "kafka.producer.bootstrap.servers: set kafka.brokers instead",
            "are the same librdkafka property",
            "kafka.producer.sasl.password: must be a string",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(err.problems.iter().all(|p| p.starts_with("f.toml: ")), "{all}");
    }

    #[test]
    fn kafka_secrets_are_redacted() {
        let k = kafka("[kafka]\nbrokers = \"b:1\"\n[kafka.producer]\n\"sasl.password\" = \"hunter2\"\n").unwrap();
        assert_eq!(k.properties["sasl.password"], "hunter2");
        assert!(!format!("{k:?}").contains("hunter2"));
        let c = Config::from_toml(
            "f",
            &format!("[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"b:1\"\n[kafka.producer]\n\"sasl.password\" = \"hunter2\"\n{KAFKA_SOURCE}"),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!c.summary().contains("hunter2"), "{}", c.summary());
    }

    #[test]
    fn debug_output_redacts_keys() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(&c.sources[0].keys[0].key));
        assert!(!c.summary().contains(&c.sources[0].keys[0].key));
    }
}
