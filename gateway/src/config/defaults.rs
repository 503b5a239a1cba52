//! Every default value of the file format: the named `default_*` functions the raw shapes'
//! `#[serde(default = "…")]` point at, and `impl Default` of each raw section (so that an
//! absent section equals an empty one).
//!
//! Owns: the default values, in one place. Must not: validate anything (`build` does).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::raw::*;
use crate::access::client_ip::ForwardedHeader;

pub(super) fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
pub(super) fn default_max_connections() -> usize {
    10_000
}
pub(super) fn default_header_read_timeout_ms() -> u64 {
    10_000
}
pub(super) fn default_idle_timeout_ms() -> u64 {
    60_000
}
pub(super) fn default_http2_keep_alive_interval_ms() -> u64 {
    20_000
}
pub(super) fn default_http2_keep_alive_timeout_ms() -> u64 {
    10_000
}
pub(super) fn default_max_header_bytes() -> usize {
    64 * 1024
}
pub(super) fn default_body_read_timeout_ms() -> u64 {
    30_000
}
pub(super) fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
pub(super) fn default_cors_max_age_s() -> u64 {
    86_400
}
pub(super) fn default_max_request_bytes() -> usize {
    500 * 1024
}
pub(super) fn default_max_event_bytes() -> usize {
    32 * 1024
}
pub(super) fn default_max_batch_events() -> usize {
    2_500
}
pub(super) fn default_sink_kind() -> String {
    "local_log".into()
}
pub(super) fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
pub(super) fn default_segment_max_bytes() -> u64 {
    64 * 1024 * 1024
}
pub(super) fn default_local_log_publish_timeout_ms() -> u64 {
    5_000
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_topic() -> String {
    "events".into()
}
pub(super) fn default_kafka_message_timeout_ms() -> u64 {
    10_000
}
pub(super) fn default_kafka_max_message_bytes() -> usize {
    1_000_000
}
pub(super) fn default_kafka_record_key() -> String {
    "user_or_anonymous_id".into()
}
pub(super) fn default_kafka_security_protocol() -> String {
    "plaintext".into()
}
/// Our default `batch.size`, set after the other defaults because it may not exceed
/// `message.max.bytes`. Under load a partition's batch is sent once it holds 256 KiB instead of
/// librdkafka's 1 MB: batches then fill (and leave) before linger.ms, and the copy + lz4 pass
/// over a batch stays within a core's 1 MiB L2. benches/e2e.sh, 100-event requests, 3 rounds:
/// median 600,674 vs 519,142 events/s, 2.26 vs 2.66 µs gateway CPU per event.
pub(super) const DEFAULT_BATCH_BYTES: usize = 262_144;

/// The producer properties we set unless `[kafka.producer]` does (see [`RawKafka`]).
pub(super) fn default_kafka_producer() -> [(&'static str, &'static str); 9] {
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
pub(super) fn default_usage_persist_interval_ms() -> u64 {
    5_000
}
pub(super) fn default_dedup_capacity() -> usize {
    crate::dedup::DEFAULT_CAPACITY
}
pub(super) fn default_dedup_wait_timeout_ms() -> u64 {
    5_000
}
pub(super) fn default_dedup_sweep_interval_ms() -> u64 {
    60_000
}
pub(super) fn default_dedup_ttl_s() -> u64 {
    86_400
}
pub(super) fn default_contracts_dir() -> PathBuf {
    PathBuf::from("contracts")
}
pub(super) fn default_violations_topic() -> String {
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
pub(super) fn default_import_max_running_jobs() -> usize {
    1
}
pub(super) fn default_import_max_queued_jobs() -> usize {
    16
}
pub(super) fn default_import_retention_s() -> u64 {
    7 * 24 * 3600
}
pub(super) fn default_import_chunk_events() -> usize {
    500
}
pub(super) fn default_import_upload_timeout_ms() -> u64 {
    300_000
}
impl Default for RawImport {
    fn default() -> Self {
        Self {
            jobs_dir: None,
            max_running_jobs: default_import_max_running_jobs(),
            max_queued_jobs: default_import_max_queued_jobs(),
            retention_s: default_import_retention_s(),
            chunk_events: default_import_chunk_events(),
            upload_timeout_ms: default_import_upload_timeout_ms(),
        }
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
pub(super) fn default_log_format() -> String {
    "auto".into()
}
pub(super) fn default_log_level() -> String {
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
            security_protocol: default_kafka_security_protocol(),
            tls: None,
            sasl: None,
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
