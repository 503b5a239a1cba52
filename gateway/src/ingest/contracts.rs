//! The contracts step of the pipeline: an event checked against its source's tracking plan,
//! and the violation records that go to the violations topic.
//!
//! Owns: what the pipeline does with each verdict (publish, publish changed, refuse) and the
//! fail-closed rule. Must not: judge events itself (validate does) or publish.

use std::sync::Arc;

use crate::config::Source;
use crate::decode::Normalised;
use crate::ops::metrics::LogSampler;
use crate::publish::OutEvent;
use crate::validate::{self, Plan, Policies, Verdict};

use super::events::Events;
use super::outcome::FailureKind;
use super::state::Runtime;

/// Sampling of the log line for events the contract checker could not read.
static CHECK_FAILED_LOG: LogSampler = LogSampler::new();

/// Checks `n` against `plan`: `Some` with the event to publish (maybe changed by `omit`), or
/// `None` when it was refused (recorded in the outcome).
pub(super) fn check(
    ev: &mut Events<'_>,
    plan: &Plan,
    policies: &Policies,
    index: usize,
    mut n: Normalised,
) -> Option<Normalised> {
    let source = ev.source;
    let violations_metric = |action: &str| {
        ev.state.metrics.contract_violations.with_label_values(&[&source.id, action]).inc();
    };
    match plan.check(policies, &n.payload) {
        Ok(Verdict::Pass) => Some(n),
        Ok(Verdict::Publish { payload, violations }) => {
            violations_metric(if payload.is_some() { "omitted" } else { "allowed" });
            ev.aux.push(violation_event(ev.rt, source, &n, &violations, false));
            if let Some(p) = payload {
                n.payload = p;
            }
            Some(n)
        }
        Ok(Verdict::Block { violations }) => {
            violations_metric("blocked");
            ev.aux.push(violation_event(ev.rt, source, &n, &violations, true));
            let msg = violation_summary(&violations);
            ev.outcome.reject_with_violations(index, n.event_type, msg, violations);
            None
        }
        // Decode only forwards what the checker can read, so this should not happen; if it
        // does, the plan's promise wins: an event that could not be checked is not published
        // (fail closed). Counted per event, logged at most once a second — a client that found
        // such an input must not be able to flood the log.
        Err(e) => {
            violations_metric("check_failed");
            if let Some(suppressed) = CHECK_FAILED_LOG.admit() {
                tracing::error!(code = e.code(), error = %e, suppressed, "contract check failed; event rejected");
            }
            let msg = format!("the event could not be checked against its tracking plan: {e}");
            let t = Some(n.event_type);
            ev.outcome.reject(index, t, FailureKind::Contract, "contract_check_failed", msg);
            None
        }
    }
}

/// The violations-topic record of one event.
fn violation_event(
    rt: &Runtime,
    source: &Arc<Source>,
    n: &Normalised,
    violations: &[validate::Violation],
    blocked: bool,
) -> OutEvent {
    let name = validate::event_name(&n.payload);
    let payload = validate::violation_record(
        &source.id,
        &n.message_id,
        name.as_deref(),
        n.event_type.as_str(),
        violations,
        blocked,
        &n.payload,
    );
    OutEvent {
        topic: rt.config.violations_topic.clone(),
        key: Some(n.message_id.clone()),
        event_type: n.event_type,
        source_id: source.id.clone(),
        message_id: n.message_id.clone(),
        payload,
        consent_header: None,
    }
}

/// A one-line reason for a blocked event (the full list goes in `violations`).
fn violation_summary(violations: &[validate::Violation]) -> String {
    let first: Vec<String> =
        violations.iter().take(3).map(|v| format!("{} ({}): {}", v.pointer, v.keyword, v.message)).collect();
    let more = violations.len().saturating_sub(3);
    let tail = if more > 0 { format!("; and {more} more") } else { String::new() };
    format!("the event breaks its tracking plan: {}{tail}", first.join("; "))
}
