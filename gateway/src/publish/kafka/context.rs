//! The producer context: delivery reports, librdkafka's logs, statistics and error events,
//! and the [`Health`] they, and the metadata probe, feed.
//!
//! Owns: what librdkafka calls back into, on its own threads.
//! Must not: block, replace the producer (it only wakes the probe thread), or read event
//! contents.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::statistics::Statistics;

use super::accounting::Ticket;
use super::errors::{classify, error_class};
use super::PROBE_STALE;
use crate::publish::{BrokerStats, PublishError, SinkStats};

/// What the metadata probe, delivery reports and librdkafka's error events learn.
pub(super) struct Health {
    started: Instant,
    /// Milliseconds after `started` of the last good metadata answer, plus one; 0 = never.
    last_ok_ms: AtomicU64,
    /// Set by librdkafka's "all brokers down" until the next good probe.
    pub(super) all_down: AtomicBool,
    /// When (ms after `started`, plus one) a delivery timed out with no delivery succeeding
    /// since; 0 = none. Cleared by a success, and by a failed probe (an outage explains it).
    pub(super) stuck_since_ms: AtomicU64,
    last_problem: Mutex<String>,
    /// The last TLS or SASL failure, until the next good metadata answer: "all brokers are
    /// down" follows it and would otherwise hide why (a wrong CA, a wrong password).
    security_problem: Mutex<Option<String>>,
    /// The last statistics librdkafka emitted (`statistics.interval.ms`).
    pub(super) stats: Mutex<Option<SinkStats>>,
}

impl Health {
    pub(super) fn new() -> Health {
        Health {
            started: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
            all_down: AtomicBool::new(false),
            stuck_since_ms: AtomicU64::new(0),
            last_problem: Mutex::new("no metadata answer yet".into()),
            security_problem: Mutex::new(None),
            stats: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Records a good metadata answer; true when that makes the sink ready again.
    pub(super) fn ok(&self) -> bool {
        let was_ready = self.ready();
        self.last_ok_ms.store(self.now_ms(), Ordering::Relaxed);
        self.all_down.store(false, Ordering::Relaxed);
        if let Ok(mut s) = self.security_problem.lock() {
            *s = None;
        }
        !was_ready
    }

    pub(super) fn ready(&self) -> bool {
        self.fresh().is_some_and(|age| age <= PROBE_STALE) && !self.all_down.load(Ordering::Relaxed)
    }

    pub(super) fn problem(&self, why: String) {
        if let Ok(mut p) = self.last_problem.lock() {
            *p = why;
        }
    }

    /// Age of the last good metadata answer.
    pub(super) fn fresh(&self) -> Option<Duration> {
        match self.last_ok_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.started.elapsed().saturating_sub(Duration::from_millis(ms - 1))),
        }
    }

    pub(super) fn last_problem(&self) -> String {
        let last = self.last_problem.lock().map(|p| p.clone()).unwrap_or_default();
        match self.security_problem.lock().ok().and_then(|s| s.clone()) {
            Some(why) if !last.contains(&why) => format!("{last} (the connection failed: {why})"),
            _ => last,
        }
    }

    fn security(&self, why: String) {
        if let Ok(mut s) = self.security_problem.lock() {
            *s = Some(why.clone());
        }
        self.problem(why);
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
    pub(super) fn stuck_for(&self) -> Option<Duration> {
        match self.stuck_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.started.elapsed().saturating_sub(Duration::from_millis(ms - 1))),
        }
    }
}

/// The producer's context: one per producer (a reset makes a new one).
pub(super) struct Context {
    pub(super) health: Arc<Health>,
    /// Wakes the probe thread (all brokers down, fatal error).
    pub(super) wake: mpsc::Sender<()>,
    /// The last error event, to drop rdkafka's second call for the same event (0.39 calls
    /// `error` twice per producer error event).
    pub(super) last_error: Mutex<Option<(RDKafkaErrorCode, String, Instant)>>,
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
            // A wrong CA, a certificate the broker refuses, a wrong password: a setting to
            // fix, not an outage to wait out, so it is what /ready says.
            RDKafkaErrorCode::SSL => {
                tracing::error!(class, reason, "kafka: TLS with the broker failed");
                self.health.security(format!("TLS failed: {reason}"));
            }
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::IllegalSASLState => {
                tracing::error!(class, reason, "kafka: SASL authentication failed");
                self.health.security(format!("SASL authentication failed: {reason}"));
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
