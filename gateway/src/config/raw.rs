//! The raw file format: the TOML file as written, plain serde data with
//! `deny_unknown_fields` everywhere (a typo must not silently fall back to a default).
//!
//! Owns: the shapes and their field docs. Defaults are in `defaults`, checks in `build`.
//! Must not: validate or build anything, open files or sockets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::defaults::*;
use crate::access::client_ip::ForwardedHeader;
use crate::access::keys::KeyKind;
use crate::access::ratelimit::{IpLimit, KeyLimits};
use crate::consent::ConsentPolicy;

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
    /// Bulk and CSV import jobs.
    #[serde(default)]
    pub import: RawImport,
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
    /// in one write for longer. At most [`MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS`](super::MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS).
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
    /// gets 503. Bounded by [`MAX_KAFKA_MESSAGE_TIMEOUT_MS`](super::MAX_KAFKA_MESSAGE_TIMEOUT_MS) so that a request always ends
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
    /// `security.protocol`: `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default = "default_kafka_security_protocol")]
    pub security_protocol: String,
    /// TLS to the brokers (with `ssl` / `sasl_ssl`).
    #[serde(default)]
    pub tls: Option<RawKafkaTls>,
    /// SASL credentials (with `sasl_plaintext` / `sasl_ssl`).
    #[serde(default)]
    pub sasl: Option<RawKafkaSasl>,
    /// Any librdkafka producer property, passed through as text and overriding our defaults,
    /// e.g. `"linger.ms" = 10` or `"compression.type" = "zstd"`. Numbers and booleans are
    /// turned into text; dotted keys may be quoted or not. The security properties have their
    /// own keys above.
    #[serde(default)]
    pub producer: BTreeMap<String, toml::Value>,
}

/// `[kafka.tls]`: PEM files librdkafka reads when the producer starts. Relative paths are
/// relative to the working directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaTls {
    /// `ssl.ca.location`: the CA bundle that signed the brokers' certificates; default: the
    /// system's trust store (what managed Kafka with public certificates needs).
    pub ca_file: Option<PathBuf>,
    /// `ssl.certificate.location` and `ssl.key.location`: the client certificate and its
    /// private key, for mutual TLS (both or neither).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `ssl.key.password`, when the private key is encrypted: at most one of the three.
    pub key_password: Option<Secret>,
    pub key_password_env: Option<String>,
    pub key_password_file: Option<PathBuf>,
    /// Check that a broker's certificate names the host we connected to
    /// (`ssl.endpoint.identification.algorithm = https`); default true.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

/// `[kafka.sasl]`: the mechanism and credentials. Each credential comes from the file itself,
/// an environment variable (`*_env`) or a file (`*_file`, e.g. a mounted Kubernetes secret):
/// exactly one of the three.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaSasl {
    /// `sasl.mechanism`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: Option<Secret>,
    pub username_env: Option<String>,
    pub username_file: Option<PathBuf>,
    pub password: Option<Secret>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// A credential from the file: its `Debug` never shows it, so a `{:?}` of the raw config in a
/// log or a test failure cannot leak it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
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

/// `[import]`: bulk (`/v1/events/bulk`) and CSV (`/v1/backfill/csv`) jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImport {
    /// Where jobs are kept (default: `jobs` in the data directory).
    #[serde(default)]
    pub jobs_dir: Option<PathBuf>,
    /// Jobs processed at once (the others wait their turn).
    #[serde(default = "default_import_max_running_jobs")]
    pub max_running_jobs: usize,
    /// Jobs queued or running before a new one gets 503 `too_many_jobs`.
    #[serde(default = "default_import_max_queued_jobs")]
    pub max_queued_jobs: usize,
    /// How long a finished job's status stays readable.
    #[serde(default = "default_import_retention_s")]
    pub retention_s: u64,
    /// Events per pipeline run of a job (the documents' 500).
    #[serde(default = "default_import_chunk_events")]
    pub chunk_events: usize,
    /// The longest a job's upload may take to arrive.
    #[serde(default = "default_import_upload_timeout_ms")]
    pub upload_timeout_ms: u64,
}
