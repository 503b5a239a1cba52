//! The stages after the per-event checks, in order: the sink's size limit, dedup reservations,
//! the monthly quota, publish, and settling what publish reported (dedup confirm / release /
//! hold, quota counts, metrics).
//!
//! Owns: how a sink's per-event results settle the dedup reservations and the quota.
//! Must not: decide dedup, quota or delivery rules (dedup, access and publish do) or build
//! answers.

use std::time::Instant;

use crate::access::quota::{EventCounts, QuotaDecision};
use crate::access::AccessError;
use crate::config::{Config, SinkConfig};
use crate::decode::timestamp::Timestamp;
use crate::decode::EventType;
use crate::dedup::{self, Reservations, Verdict};
use crate::publish::{Late, PublishError};

use super::events::Events;
use super::outcome::{FailureKind, Outcome};

/// Sends the request's surviving events to the sink and settles everything that depends on
/// the result; returns the request's outcome.
pub(super) async fn commit(mut ev: Events<'_>, received_at: Timestamp) -> Outcome {
    drop_too_large(&mut ev);
    let mut reservations = reserve(&mut ev).await;
    let now = received_at.to_offset_date_time();
    let quota = apply_quota(&mut ev, &mut reservations, now);
    let accepted_by_type = publish(&mut ev, &mut reservations).await;
    drop(reservations);
    let o = &ev.outcome;
    let counts =
        EventCounts { accepted: o.accepted as u64, rejected: o.errors.len() as u64, duplicates: o.duplicates as u64 };
    quota.settle(counts, now);
    record_events(&ev, &accepted_by_type);
    let mut outcome = ev.outcome;
    outcome.errors.sort_by_key(|f| f.index);
    outcome
}

/// The sink's own size limit (e.g. the broker's message.max.bytes) is checked before
/// producing: such an event could never be delivered, so it is not retriable.
fn drop_too_large(ev: &mut Events<'_>) {
    let Some(max) = ev.state.publisher.max_event_bytes() else { return };
    let outcome = &mut ev.outcome;
    ev.candidates.retain(|c| {
        let size = c.event.payload.len();
        if size > max {
            outcome.add_publish_failure(c.index, c.event.event_type, PublishError::TooLarge { size, limit: max });
        }
        size <= max
    });
}

/// Reserves the client messageIds; duplicates are answered 200 and not published, copies still
/// being published elsewhere get 503 `dedup_in_flight`.
async fn reserve<'r>(ev: &mut Events<'r>) -> Reservations<'r> {
    let ttl = ev.source.dedup_ttl.unwrap_or_default();
    for (slot, c) in ev.candidates.iter_mut().filter(|c| c.dedup_slot.is_some()).enumerate() {
        c.dedup_slot = Some(slot);
    }
    let ids = ev.candidates.iter().filter(|c| c.dedup_slot.is_some()).map(|c| c.event.message_id.as_str());
    let reservations = ev.state.dedup.reserve(&ev.source.id, ids, ttl).await;
    let (outcome, metrics, source) = (&mut ev.outcome, &ev.state.metrics, ev.source);
    ev.candidates.retain(|c| match c.dedup_slot.and_then(|s| reservations.verdict(s)) {
        Some(Verdict::Duplicate) => {
            outcome.duplicates += 1;
            metrics.duplicates.with_label_values(&[&source.id, c.event.event_type.as_str()]).inc();
            false
        }
        Some(Verdict::InFlight) => {
            let msg = "a request with the same messageId is still being published; retry".to_string();
            let t = Some(c.event.event_type);
            outcome.reject(c.index, t, FailureKind::InFlight, "dedup_in_flight", msg);
            false
        }
        _ => true,
    });
    reservations
}

/// The monthly quota: the events that fit are published, the rest get 402.
fn apply_quota<'r>(
    ev: &mut Events<'r>,
    reservations: &mut Reservations<'_>,
    now: time::OffsetDateTime,
) -> QuotaDecision<'r> {
    let source = ev.source;
    let quota =
        ev.state.access.quotas.try_consume(&source.id, ev.candidates.len() as u64, source.monthly_event_quota, now);
    let granted = quota.granted() as usize;
    if granted < ev.candidates.len() {
        for c in ev.candidates.drain(granted..) {
            if let Some(s) = c.dedup_slot {
                reservations.release(s);
            }
            let msg = AccessError::QuotaExceeded.to_string();
            ev.outcome.reject(c.index, Some(c.event.event_type), FailureKind::Quota, "quota_exceeded", msg);
        }
    }
    quota
}

/// Publishes the candidates (and the violation records) and settles each one's reservation
/// by its result. Returns the published count per call type.
async fn publish(ev: &mut Events<'_>, reservations: &mut Reservations<'_>) -> [u64; EventType::COUNT] {
    let mut accepted_by_type = [0u64; EventType::COUNT];
    if ev.candidates.is_empty() && ev.aux.is_empty() {
        return accepted_by_type;
    }
    let candidates = std::mem::take(&mut ev.candidates);
    let aux = std::mem::take(&mut ev.aux);
    let mut meta_of = Vec::with_capacity(candidates.len());
    let mut events = Vec::with_capacity(candidates.len() + aux.len());
    for c in candidates {
        meta_of.push((c.index, c.dedup_slot, c.event.event_type));
        events.push(c.event);
    }
    let aux_count = aux.len();
    events.extend(aux);
    reservations.begin_publish();
    let started = Instant::now();
    let published = ev.state.publisher.publish_tracked(events).await;
    let (mut results, late) = (published.results, published.late);
    let sink = sink_label(&ev.rt.config);
    ev.state.metrics.publish_duration.with_label_values(&[sink]).observe(started.elapsed().as_secs_f64());
    let aux_results = results.split_off(results.len().saturating_sub(aux_count));
    for e in aux_results.iter().filter_map(|r| r.as_ref().err()) {
        tracing::warn!(code = e.code(), error = %e, "publishing a violation record failed");
    }
    // Events answered before their outcome was known keep their ids reserved until then.
    let mut late_at: Vec<Option<usize>> = Vec::new();
    if let Some(l) = &late {
        late_at.resize(results.len(), None);
        for (at, &i) in l.indices.iter().enumerate() {
            if let Some(slot) = late_at.get_mut(i) {
                *slot = Some(at);
            }
        }
    }
    let mut deferred = Vec::new();
    let outcome = &mut ev.outcome;
    for (i, (result, (index, slot, t))) in results.into_iter().zip(meta_of).enumerate() {
        match result {
            Ok(()) => {
                outcome.accepted += 1;
                accepted_by_type[t.index()] += 1;
                if let Some(s) = slot {
                    reservations.confirm(s);
                }
            }
            Err(e) => {
                if let Some(s) = slot {
                    // A late event (still queued) keeps its id until the sink knows. A
                    // timed-out delivery may still land: keep the id reserved (until the
                    // reservation TTL) so a retry cannot publish it twice.
                    if let Some(at) = late_at.get(i).copied().flatten() {
                        deferred.extend(reservations.defer(s, &ev.state.dedup).map(|d| (at, d)));
                    } else if e == PublishError::Timeout {
                        reservations.hold(s);
                    } else {
                        reservations.release(s);
                    }
                }
                outcome.add_publish_failure(index, t, e);
            }
        }
    }
    if let (Some(late), false) = (late, deferred.is_empty()) {
        tokio::spawn(settle_late(late, deferred));
    }
    if let Some(e) = &outcome.publish_error {
        tracing::warn!(source_id = %ev.source.id, code = e.code(), error = %e, "publish failed");
    }
    accepted_by_type
}

/// Settles the reservations of events answered before the sink knew their outcome, once it
/// does: confirmed if the event became durable after all, released if it failed for good, held
/// (until the reservation TTL) if the outcome is still unknown.
async fn settle_late(late: Late, deferred: Vec<(usize, dedup::Deferred)>) {
    let outcomes = late.outcome.await;
    for (at, d) in deferred {
        match outcomes.get(at) {
            Some(Ok(())) => d.confirm(),
            Some(Err(PublishError::Timeout)) | None => drop(d),
            Some(Err(_)) => d.release(),
        }
    }
}

fn sink_label(config: &Config) -> &'static str {
    match config.sink {
        SinkConfig::LocalLog { .. } => "local_log",
        SinkConfig::Kafka(_) => "kafka",
        SinkConfig::Memory => "memory",
    }
}

fn record_events(ev: &Events<'_>, accepted: &[u64; EventType::COUNT]) {
    let (m, source, outcome) = (&ev.state.metrics, ev.source, &ev.outcome);
    m.events_received.with_label_values(&[&source.id]).inc_by(outcome.received as u64);
    for t in EventType::ALL {
        if accepted[t.index()] > 0 {
            m.events_accepted.with_label_values(&[&source.id, t.as_str()]).inc_by(accepted[t.index()]);
        }
    }
    for f in &outcome.errors {
        let t = f.event_type.map_or("unknown", EventType::as_str);
        m.events_rejected.with_label_values(&[&source.id, t, f.code]).inc();
    }
}
