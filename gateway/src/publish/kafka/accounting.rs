//! Per-request delivery accounting: one [`RequestAcks`] per request, shared by every record of
//! it through the delivery opaque `Box<Ticket>` (an atomic countdown plus one wake-up).
//!
//! Owns: the countdown, each event's state and the failures of one request.
//! Must not: talk to librdkafka, classify errors (`errors` does) or log.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::publish::{PublishError, PublishResults};

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const FAILED: u8 = 2;

/// What one request's records share: how many reports are still due, each event's state, the
/// failures, and the wake-up the last report fires.
pub(super) struct RequestAcks {
    /// Reports still due, plus one held by `publish` while it is enqueueing, so that fast
    /// reports cannot fire the wake-up before every record is in.
    pub(super) remaining: AtomicUsize,
    states: Box<[AtomicU8]>,
    /// Only written on failure: the success path takes no lock.
    failures: Mutex<Vec<(u32, PublishError)>>,
    pub(super) done: Notify,
}

impl RequestAcks {
    pub(super) fn new(n: usize) -> RequestAcks {
        RequestAcks {
            remaining: AtomicUsize::new(n + 1),
            states: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            failures: Mutex::new(Vec::new()),
            done: Notify::new(),
        }
    }

    /// Records the outcome of event `index` (a delivery report, or a failure to enqueue).
    pub(super) fn settle(&self, index: u32, outcome: Result<(), PublishError>) {
        let state = match outcome {
            Ok(()) => DELIVERED,
            Err(e) => {
                if let Ok(mut f) = self.failures.lock() {
                    f.push((index, e));
                }
                FAILED
            }
        };
        if let Some(s) = self.states.get(index as usize) {
            s.store(state, Ordering::Release);
        }
        self.release(1);
    }

    pub(super) fn release(&self, n: usize) {
        // The one that takes the count to zero wakes the request. `notify_one` keeps a permit
        // when nobody waits yet, so the wake-up is not lost if it comes first.
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.done.notify_one();
        }
    }

    /// Per-event results; events with no outcome yet get `unsettled`.
    pub(super) fn results(&self, unsettled: &PublishError) -> PublishResults {
        self.results_and_pending(unsettled).0
    }

    /// Per-event results as of now, and the indices of the events with no outcome yet (they
    /// got `unsettled`). Each state is read once, so the two agree.
    pub(super) fn results_and_pending(&self, unsettled: &PublishError) -> (PublishResults, Vec<usize>) {
        let mut pending = Vec::new();
        let mut out: PublishResults = Vec::with_capacity(self.states.len());
        for (i, s) in self.states.iter().enumerate() {
            if s.load(Ordering::Acquire) == DELIVERED {
                out.push(Ok(()));
            } else {
                out.push(Err(unsettled.clone()));
                pending.push(i);
            }
        }
        // A failure is listed before its state is stored: whatever is listed is settled.
        if let Some(failures) = self.failures.lock().ok().filter(|f| !f.is_empty()) {
            let mut failed = vec![false; out.len()];
            for (i, e) in failures.iter() {
                if let Some(slot) = out.get_mut(*i as usize) {
                    *slot = Err(e.clone());
                }
                if let Some(f) = failed.get_mut(*i as usize) {
                    *f = true;
                }
            }
            pending.retain(|&p| !failed.get(p).copied().unwrap_or(false));
        }
        (out, pending)
    }
}

/// The delivery opaque of one record: its request and its place in it.
pub(super) struct Ticket {
    pub(super) acks: Arc<RequestAcks>,
    pub(super) index: u32,
}
