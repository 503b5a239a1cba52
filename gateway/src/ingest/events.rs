//! The per-event stages, in order: decode checks and normalisation (with consent), the key's
//! call types, the source's consent policy, the tracking plan. What passes becomes a
//! [`Candidate`] for the sink; what does not is recorded in the [`Outcome`].
//!
//! Owns: the per-event bookkeeping of one request ([`Events`]). Must not: hold stage rules
//! (decode, access, consent and validate do), publish, or build answers.

use std::sync::Arc;

use crate::config::{Limits, Source, WriteKey};
use crate::decode::{self, Body as Payload, EventError, EventType, Normalised, RequestContext};
use crate::publish::OutEvent;
use crate::validate::{Plan, Policies};

use super::outcome::{FailureKind, Outcome};
use super::state::{AppState, Runtime};

/// An event on its way through the per-event stages.
pub(super) struct Candidate {
    pub index: usize,
    pub event: OutEvent,
    /// Position in the dedup reservation, when its messageId is deduplicated.
    pub dedup_slot: Option<usize>,
}

/// One request's events between decode and the sink.
pub(super) struct Events<'r> {
    pub state: &'r AppState,
    pub rt: &'r Runtime,
    pub source: &'r Arc<Source>,
    key: &'r WriteKey,
    path_type: Option<EventType>,
    contract: Option<(Arc<Plan>, Policies)>,
    pub outcome: Outcome,
    /// Events that passed every per-event stage, in request order.
    pub candidates: Vec<Candidate>,
    /// Violation records for the violations topic: published with the events, but their
    /// delivery does not decide the answer.
    pub aux: Vec<OutEvent>,
}

impl<'r> Events<'r> {
    pub fn new(state: &'r AppState, rt: &'r Runtime, source: &'r Arc<Source>, key: &'r WriteKey) -> Events<'r> {
        let contract = rt.contracts.get(&source.id).cloned();
        Events {
            state,
            rt,
            source,
            key,
            path_type: None,
            contract,
            outcome: Outcome::default(),
            candidates: Vec::new(),
            aux: Vec::new(),
        }
    }

    /// Runs every event of the body through the per-event stages.
    pub fn consider_all(&mut self, payload: &Payload<'_>, cx: &RequestContext<'_>, limits: &Limits) {
        self.path_type = cx.path_type;
        match payload {
            Payload::Single(ev) => {
                self.outcome.received = 1;
                self.consider(0, decode::normalise(ev, cx));
            }
            Payload::Batch(b) => {
                self.outcome.received = b.events.len();
                self.candidates.reserve(b.events.len());
                for (i, item) in b.events.iter().enumerate() {
                    let result = decode::parse_event(item, limits).and_then(|ev| decode::normalise(ev, cx));
                    self.consider(i, result);
                }
            }
        }
    }

    fn consider(&mut self, index: usize, result: Result<Normalised, EventError>) {
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                let kind = FailureKind::of_event_error(&e);
                return self.outcome.reject(index, self.path_type, kind, e.code(), e.to_string());
            }
        };
        if !crate::access::type_allowed(self.key, n.event_type) {
            let msg = format!("this write key may not send {} calls", n.event_type);
            let t = Some(n.event_type);
            return self.outcome.reject(index, t, FailureKind::NotAllowed, "event_type_not_allowed", msg);
        }
        if n.consent_drop {
            self.outcome.consent_dropped += 1;
            let labels = [&*self.source.id, n.event_type.as_str()];
            self.state.metrics.consent_dropped.with_label_values(&labels).inc();
            return;
        }
        let Some(n) = self.check_contract(index, n) else { return };
        let dedup = !n.message_id_generated && self.source.dedup_ttl.is_some();
        let event = out_event(self.source, n);
        self.candidates.push(Candidate { index, event, dedup_slot: dedup.then_some(0) });
    }

    /// The source's tracking plan, when it has one: `None` when the event is refused.
    fn check_contract(&mut self, index: usize, n: Normalised) -> Option<Normalised> {
        let Some((plan, policies)) = self.contract.clone() else { return Some(n) };
        super::contracts::check(self, &plan, &policies, index, n)
    }
}

/// The sink's record of an event that passed.
fn out_event(source: &Arc<Source>, n: Normalised) -> OutEvent {
    OutEvent {
        topic: source.topics[n.event_type.index()].clone(),
        key: n.key,
        event_type: n.event_type,
        source_id: source.id.clone(),
        message_id: n.message_id,
        payload: n.payload,
        consent_header: n.consent_header,
    }
}
