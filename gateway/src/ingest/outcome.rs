//! The outcome of one request's events: how many were received and accepted, and why each
//! refused one was refused.
//!
//! Owns: the per-request bookkeeping the pipeline fills in and `http::respond` renders.
//! Must not: choose HTTP statuses — a failure says what *kind* of failure it is
//! ([`FailureKind`]) and respond maps each kind to its status.

use serde::Serialize;

use crate::decode::{EventError, EventType};
use crate::publish::PublishError;
use crate::validate::Violation;

/// What kind of failure refused an event: the one fact respond needs for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The event itself is malformed or breaks the Segment spec.
    Invalid,
    /// The event is over a size limit (ours or the sink's).
    TooLarge,
    /// The key may not send this call type.
    NotAllowed,
    /// The tracking plan refused it, or it could not be checked against the plan.
    Contract,
    /// The source's monthly quota is used up.
    Quota,
    /// A copy with the same messageId is still being published: retry.
    InFlight,
    /// The sink could not take it now: retry.
    SinkRetriable,
    /// The sink refused it for good.
    SinkFatal,
}

impl FailureKind {
    /// The kind of a per-event decode failure.
    pub fn of_event_error(e: &EventError) -> FailureKind {
        match e {
            EventError::TooLarge { .. } => FailureKind::TooLarge,
            _ => FailureKind::Invalid,
        }
    }

    /// The kind of a sink failure.
    pub fn of_publish_error(e: &PublishError) -> FailureKind {
        match e {
            PublishError::TooLarge { .. } => FailureKind::TooLarge,
            PublishError::Fatal(_) => FailureKind::SinkFatal,
            _ => FailureKind::SinkRetriable,
        }
    }
}

/// One rejected event of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct EventFailure {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
    /// What failed (respond turns it into the status a single call would answer).
    #[serde(skip)]
    pub kind: FailureKind,
    /// Field-level reasons of a `contract_violation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<Violation>>,
    /// The event's call type when it is known (a metric label; not sent).
    #[serde(skip)]
    pub event_type: Option<EventType>,
}

/// What happened to the events of one request. `accepted` counts events published, answered
/// as duplicates, or dropped by consent policy: the client did nothing wrong with any of them.
#[derive(Debug, Default)]
pub struct Outcome {
    pub received: usize,
    pub accepted: usize,
    /// Of `accepted`: already published (same messageId), not published again.
    pub duplicates: usize,
    /// Of `accepted`: not published because the source requires consent they lack.
    pub consent_dropped: usize,
    pub errors: Vec<EventFailure>,
    /// The worst publish failure, if any event failed at the sink.
    pub publish_error: Option<PublishError>,
    /// Whether a failure asks the client to retry (besides sink failures).
    pub retry: bool,
}

impl Outcome {
    /// Records an event refused by a check (bad input, not allowed, over quota…).
    pub fn reject(
        &mut self,
        index: usize,
        event_type: Option<EventType>,
        kind: FailureKind,
        code: &'static str,
        message: String,
    ) {
        self.retry |= kind == FailureKind::InFlight;
        self.errors.push(EventFailure { index, code, message, kind, violations: None, event_type });
    }

    /// Records an event blocked by its tracking plan (422 `contract_violation`).
    pub fn reject_with_violations(
        &mut self,
        index: usize,
        event_type: EventType,
        message: String,
        violations: Vec<Violation>,
    ) {
        self.errors.push(EventFailure {
            index,
            code: "contract_violation",
            message,
            kind: FailureKind::Contract,
            violations: Some(violations),
            event_type: Some(event_type),
        });
    }

    /// The outcome of a reference-API body ([`crate::import`]): the pipeline's outcome over
    /// the Segment calls, with indices mapped back to the input events, the events refused by
    /// their shape added, and the counts per input event (a client event with a `user` block
    /// is two calls and succeeds only if both do).
    pub fn of_import(mut calls: Outcome, converted: &crate::import::Converted) -> Outcome {
        for e in &mut calls.errors {
            e.index = converted.origin.get(e.index).copied().unwrap_or(e.index);
        }
        for s in &converted.errors {
            calls.reject(s.index, None, FailureKind::Invalid, s.code, s.message.clone());
        }
        calls.errors.sort_by_key(|e| e.index);
        let failed = {
            let mut idx: Vec<usize> = calls.errors.iter().map(|e| e.index).collect();
            idx.dedup();
            idx.len()
        };
        let succeeded = converted.received - failed;
        // Keep the split of successes (duplicates, consent-dropped) where it is per event.
        let per_call = calls.accepted + calls.duplicates + calls.consent_dropped;
        if per_call != succeeded {
            calls.duplicates = calls.duplicates.min(succeeded);
            calls.consent_dropped = calls.consent_dropped.min(succeeded - calls.duplicates);
        }
        calls.accepted = succeeded - calls.duplicates - calls.consent_dropped;
        calls.received = converted.received;
        calls
    }

    /// Events answered success: published, duplicates, consent-dropped.
    pub fn succeeded(&self) -> usize {
        self.accepted + self.duplicates + self.consent_dropped
    }

    /// Records a publish failure, keeping the one that matters most for the status: a
    /// retriable failure wins, so that SDKs retry the request.
    pub fn add_publish_failure(&mut self, index: usize, event_type: EventType, e: PublishError) {
        self.errors.push(EventFailure {
            index,
            code: e.code(),
            message: e.to_string(),
            kind: FailureKind::of_publish_error(&e),
            violations: None,
            event_type: Some(event_type),
        });
        let replace = match &self.publish_error {
            None => true,
            Some(prev) => !prev.is_retriable() && e.is_retriable(),
        };
        if replace {
            self.publish_error = Some(e);
        }
    }
}
