//! Metrics: the Prometheus registry, every metric the gateway exports, and the `/metrics` text.
//!
//! Owns: metric names, label sets and buckets. Names follow `gateway_<noun>_<unit>[_total]`;
//! labels only come from bounded sets (route names, status codes, error codes, call types and
//! source ids from config) — never from what a client sent.
//! Must not: hold business rules; stages only call the `record_*`/`inc` helpers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::publish::SinkStats;

/// Lets one log line through per second for a kind of event a client can cause at will, and
/// counts the ones held back (reported with the next line that gets through). The metric
/// counts every occurrence; the log only shows that it happens.
pub struct LogSampler {
    /// Second (Unix time) of the last line let through.
    last_s: AtomicU64,
    suppressed: AtomicU64,
}

impl LogSampler {
    pub const fn new() -> LogSampler {
        LogSampler { last_s: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(held back since the last line)` when this occurrence may be logged.
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, now_s: u64) -> Option<u64> {
        let last = self.last_s.load(Ordering::Relaxed);
        if now_s > last && self.last_s.compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogSampler {
    fn default() -> Self {
        LogSampler::new()
    }
}

/// Every metric, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub request_body_bytes: HistogramVec,
    pub events_received: IntCounterVec,
    pub events_accepted: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub publish_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub open_connections: IntGauge,
    pub config_reloads: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub consent_dropped: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub dedup_entries: IntGauge,
    pub ready: IntGauge,
    pub contract_violations: IntCounterVec,
    kafka_queue_messages: IntGauge,
    kafka_queue_bytes: IntGauge,
    kafka_queue_max_messages: IntGauge,
    kafka_broker_up: IntGaugeVec,
    kafka_broker_rtt_p99: GaugeVec,
    kafka_broker_tx_errors: IntCounterVec,
    /// Last cumulative tx error count seen per broker (librdkafka reports totals).
    tx_errors_seen: Arc<Mutex<HashMap<String, u64>>>,
}

impl Metrics {
    /// Builds the registry. Runs once at startup.
    // The `expect`s hold by construction: metric names, help texts, label names and buckets
    // are constants of this file, valid per Prometheus' rules; a test builds them.
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("gateway_http_requests_total", "HTTP requests by route and status code"),
            &["route", "status"],
        )
        .expect("constant metric definition");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("gateway_http_request_duration_seconds", "Time from request head to response")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["route"],
        )
        .expect("constant metric definition");
        let request_body_bytes = HistogramVec::new(
            HistogramOpts::new("gateway_http_request_body_bytes", "Request body size as received (before inflation)")
                .buckets(prometheus::exponential_buckets(256.0, 4.0, 8).expect("constant buckets")),
            &["route"],
        )
        .expect("constant metric definition");
        let events_received = IntCounterVec::new(
            Opts::new("gateway_events_received_total", "Events received, by source"),
            &["source_id"],
        )
        .expect("constant metric definition");
        let events_accepted = IntCounterVec::new(
            Opts::new("gateway_events_accepted_total", "Events durably published, by source and call type"),
            &["source_id", "type"],
        )
        .expect("constant metric definition");
        let events_rejected = IntCounterVec::new(
            Opts::new(
                "gateway_events_rejected_total",
                "Events rejected, by source, call type (unknown when unreadable) and error code",
            ),
            &["source_id", "type", "code"],
        )
        .expect("constant metric definition");
        let publish_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_publish_duration_seconds",
                "Time from handing events to the sink to its acknowledgement",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["sink"],
        )
        .expect("constant metric definition");
        let in_flight = IntGauge::new("gateway_http_requests_in_flight", "Requests being handled")
            .expect("constant metric definition");
        let open_connections =
            IntGauge::new("gateway_open_connections", "Open client connections").expect("constant metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new("gateway_config_reloads_total", "Config reloads by result (ok, error)"),
            &["result"],
        )
        .expect("constant metric definition");
        let duplicates = IntCounterVec::new(
            Opts::new(
                "gateway_events_duplicated_total",
                "Events answered 200 but not published: messageId seen before",
            ),
            &["source_id", "type"],
        )
        .expect("constant metric definition");
        let consent_dropped = IntCounterVec::new(
            Opts::new("gateway_events_consent_dropped_total", "Events answered 200 but not published: consent missing"),
            &["source_id", "type"],
        )
        .expect("constant metric definition");
        let rate_limited = IntCounterVec::new(
            Opts::new("gateway_rate_limited_total", "Requests refused with 429, by source and window"),
            &["source_id", "window"],
        )
        .expect("constant metric definition");
        let dedup_entries = IntGauge::new("gateway_dedup_entries", "messageIds held by the dedup cache")
            .expect("constant metric definition");
        let ready = IntGauge::new("gateway_ready", "1 when /ready answers 200 (sink usable, not draining)")
            .expect("constant metric definition");
        let contract_violations = IntCounterVec::new(
            Opts::new(
                "gateway_contract_violations_total",
                "Events that broke their tracking plan, by source and action",
            ),
            &["source_id", "action"],
        )
        .expect("constant metric definition");
        let kafka_queue_messages =
            IntGauge::new("gateway_kafka_queue_messages", "Messages in the Kafka producer's local queue")
                .expect("constant metric definition");
        let kafka_queue_bytes = IntGauge::new("gateway_kafka_queue_bytes", "Bytes in the Kafka producer's local queue")
            .expect("constant metric definition");
        let kafka_queue_max_messages =
            IntGauge::new("gateway_kafka_queue_max_messages", "Capacity of the Kafka producer's local queue")
                .expect("constant metric definition");
        let kafka_broker_up =
            IntGaugeVec::new(Opts::new("gateway_kafka_broker_up", "1 when the broker connection is UP"), &["broker"])
                .expect("constant metric definition");
        let kafka_broker_rtt_p99 = GaugeVec::new(
            Opts::new("gateway_kafka_broker_rtt_p99_seconds", "99th percentile request round trip to the broker"),
            &["broker"],
        )
        .expect("constant metric definition");
        let kafka_broker_tx_errors = IntCounterVec::new(
            Opts::new("gateway_kafka_broker_tx_errors_total", "Transmission errors to the broker"),
            &["broker"],
        )
        .expect("constant metric definition");
        for c in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(request_body_bytes.clone()),
            Box::new(events_received.clone()),
            Box::new(events_accepted.clone()),
            Box::new(events_rejected.clone()),
            Box::new(publish_duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(open_connections.clone()),
            Box::new(config_reloads.clone()),
            Box::new(duplicates.clone()),
            Box::new(consent_dropped.clone()),
            Box::new(rate_limited.clone()),
            Box::new(dedup_entries.clone()),
            Box::new(ready.clone()),
            Box::new(contract_violations.clone()),
            Box::new(kafka_queue_messages.clone()),
            Box::new(kafka_queue_bytes.clone()),
            Box::new(kafka_queue_max_messages.clone()),
            Box::new(kafka_broker_up.clone()),
            Box::new(kafka_broker_rtt_p99.clone()),
            Box::new(kafka_broker_tx_errors.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "metric registration failed");
            }
        }
        Metrics {
            registry,
            http_requests,
            http_duration,
            request_body_bytes,
            events_received,
            events_accepted,
            events_rejected,
            publish_duration,
            in_flight,
            open_connections,
            config_reloads,
            duplicates,
            consent_dropped,
            rate_limited,
            dedup_entries,
            ready,
            contract_violations,
            kafka_queue_messages,
            kafka_queue_bytes,
            kafka_queue_max_messages,
            kafka_broker_up,
            kafka_broker_rtt_p99,
            kafka_broker_tx_errors,
            tx_errors_seen: Arc::default(),
        }
    }

    /// Copies a sink's statistics into the `gateway_kafka_*` gauges (at scrape time).
    pub fn record_sink_stats(&self, stats: &SinkStats) {
        self.kafka_queue_messages.set(stats.queue_messages as i64);
        self.kafka_queue_bytes.set(stats.queue_bytes as i64);
        self.kafka_queue_max_messages.set(stats.queue_max_messages as i64);
        let Ok(mut seen) = self.tx_errors_seen.lock() else { return };
        for b in &stats.brokers {
            self.kafka_broker_up.with_label_values(&[&b.name]).set(i64::from(b.up));
            self.kafka_broker_rtt_p99.with_label_values(&[&b.name]).set(b.rtt_p99_s);
            let last = seen.entry(b.name.clone()).or_insert(0);
            // A replaced producer starts counting from zero again.
            let delta = if b.tx_errors >= *last { b.tx_errors - *last } else { b.tx_errors };
            self.kafka_broker_tx_errors.with_label_values(&[&b.name]).inc_by(delta);
            *last = b.tx_errors;
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_our_names() {
        let m = Metrics::new();
        m.http_requests.with_label_values(&["track", "200"]).inc();
        m.events_accepted.with_label_values(&["demo", "track"]).inc_by(3);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("gateway_http_requests_total{route=\"track\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("gateway_events_accepted_total{source_id=\"demo\",type=\"track\"} 3"), "{text}");
    }

    #[test]
    fn log_sampler_lets_one_line_a_second_through() {
        let s = LogSampler::new();
        assert_eq!(s.admit_at(100), Some(0));
        for _ in 0..1000 {
            assert_eq!(s.admit_at(100), None);
        }
        assert_eq!(s.admit_at(101), Some(1000));
        assert_eq!(s.admit_at(101), None);
    }
}
