//! One request's reservations: the [`Reservations`] a reserve call returns (its verdicts, and
//! confirm / release / hold / defer of each `Fresh` id, released or held on drop), their
//! [`VerdictCounts`], and the [`Deferred`] reservation settled after the request was answered.
//! Must not: look ids up or wait on other requests (that is `cache`), or touch a table except
//! through its shard's confirm and release.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cache::{Dedup, Slot, State, Verdict};
use super::key::{expiry, Key};

/// The verdicts of one [`Dedup::reserve`] call and the reservations it holds. Dropping it
/// releases every `Fresh` id that was neither confirmed nor held — or, after
/// [`Reservations::begin_publish`], holds them.
#[derive(Debug)]
pub struct Reservations<'a> {
    pub(super) dedup: &'a Dedup,
    pub(super) ttl_secs: u64,
    pub(super) slots: Vec<Slot>,
    /// Set by `begin_publish`: an unsettled id may be on its way to the sink.
    pub(super) publishing: bool,
}

/// How many ids got each verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerdictCounts {
    pub fresh: usize,
    pub duplicate: usize,
    pub in_flight: usize,
    pub untracked: usize,
}

impl Reservations<'_> {
    /// Number of ids (as passed in).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no id was passed in.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The verdict of the `i`-th id; `None` past the end.
    pub fn verdict(&self, i: usize) -> Option<Verdict> {
        self.slots.get(i).map(|s| verdict_of(s.state))
    }

    /// Every verdict, in order.
    pub fn verdicts(&self) -> impl Iterator<Item = Verdict> + '_ {
        self.slots.iter().map(|s| verdict_of(s.state))
    }

    /// How many ids got each verdict (`duplicate` is the batch response's `duplicates`).
    pub fn counts(&self) -> VerdictCounts {
        let mut c = VerdictCounts::default();
        for v in self.verdicts() {
            match v {
                Verdict::Fresh => c.fresh += 1,
                Verdict::Duplicate => c.duplicate += 1,
                Verdict::InFlight => c.in_flight += 1,
                Verdict::Untracked => c.untracked += 1,
            }
        }
        c
    }

    /// The `i`-th id was acknowledged by the sink: its copies are duplicates for the TTL.
    /// No-op unless it is `Fresh` and unsettled.
    pub fn confirm(&mut self, i: usize) {
        let (dedup, ttl) = (self.dedup, self.ttl_secs);
        if let Some(slot) = self.slots.get_mut(i).filter(|s| s.state == State::Held) {
            let now = dedup.now();
            let key = slot.key;
            dedup.shard(key).with(|m| m.confirm(key, expiry(now, ttl), now));
            slot.state = State::Confirmed;
        }
    }

    /// The `i`-th id failed for good: free it so the client's retry is published. No-op
    /// unless it is `Fresh` and unsettled.
    pub fn release(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i).filter(|s| s.state == State::Held) {
            release_slot(self.dedup, slot);
        }
    }

    /// The `i`-th id's outcome is unknown (the sink timed out; the event may still land): keep
    /// it reserved until the reservation TTL, so a retry is answered `InFlight` rather than
    /// published twice. No-op unless it is `Fresh` and unsettled.
    pub fn hold(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i).filter(|s| s.state == State::Held) {
            slot.state = State::Kept;
        }
    }

    /// Takes the `i`-th id's reservation out of this request, to be settled later by whoever
    /// learns the outcome after the request has been answered (a record still in the sink's
    /// queue; see [`Deferred`]). `dedup` must be the cache this came from (else the id is
    /// held, as [`Reservations::hold`], and `None` returned). `None` unless it is `Fresh` and
    /// unsettled.
    pub fn defer(&mut self, i: usize, dedup: &Arc<Dedup>) -> Option<Deferred> {
        let ours = std::ptr::eq(Arc::as_ptr(dedup), self.dedup);
        let slot = self.slots.get_mut(i).filter(|s| s.state == State::Held)?;
        slot.state = State::Kept;
        ours.then(|| Deferred { dedup: dedup.clone(), ttl_secs: self.ttl_secs, key: slot.key, res_exp: slot.res_exp })
    }

    /// Call right before handing the `Fresh` events to the sink: from then on, dropping this
    /// without settling an id holds it (as [`Reservations::hold`]) instead of releasing it.
    /// A request future dropped mid-publish (the client went away) or a panic leaves an
    /// outcome nobody knows — the event may still be delivered — so a retry must not publish
    /// it again before the reservation TTL. Before this call, a drop (an early return: a
    /// rejected batch, a failed check) releases: nothing was sent.
    pub fn begin_publish(&mut self) {
        self.publishing = true;
    }

    /// Confirms every unsettled `Fresh` id.
    pub fn confirm_all(&mut self) {
        for i in 0..self.slots.len() {
            self.confirm(i);
        }
    }

    /// Waits for the `Pending` ids, all against one deadline.
    pub(super) async fn wait(&mut self) {
        let dedup = self.dedup;
        let deadline = tokio::time::Instant::now() + dedup.wait_timeout;
        for slot in self.slots.iter_mut().filter(|s| s.state == State::Pending) {
            let (state, res_exp) = dedup.wait_for(slot.key, deadline).await;
            slot.state = state;
            slot.res_exp = res_exp;
        }
    }

    /// Marks ids that repeat an earlier id of this batch (found reserved — by us, or by the
    /// request the earlier one waits on) as duplicates of it. Runs only when some id was found
    /// reserved; sorts a copy of the keys instead of comparing pairs.
    pub(super) fn mark_batch_duplicates(&mut self) {
        let mut order: Vec<(Key, u32)> = self.slots.iter().zip(0u32..).map(|(s, i)| (s.key, i)).collect();
        order.sort_unstable();
        for (slot, i) in self.slots.iter_mut().zip(0u32..) {
            if slot.state != State::Pending {
                continue;
            }
            // Sorted by (key, index): the first entry with this key is its first occurrence.
            let first = order.partition_point(|(k, _)| *k < slot.key);
            if let Some(&(k, j)) = order.get(first) {
                if k == slot.key && j < i {
                    slot.state = State::DupOf(j);
                }
            }
        }
    }

    /// A repeat shares its first occurrence's fate: `InFlight` if that timed out, otherwise
    /// `Duplicate`.
    pub(super) fn resolve_batch_duplicates(&mut self) {
        for i in 0..self.slots.len() {
            if let Some(&Slot { state: State::DupOf(j), .. }) = self.slots.get(i) {
                let first = self.slots.get(j as usize).map(|s| s.state);
                let state = if first == Some(State::InFlight) { State::InFlight } else { State::Duplicate };
                if let Some(slot) = self.slots.get_mut(i) {
                    slot.state = state;
                }
            }
        }
    }

    pub(super) fn count(&self) {
        let c = self.counts();
        let k = &self.dedup.counters;
        for (counter, n) in [
            (&k.fresh, c.fresh),
            (&k.duplicates, c.duplicate),
            (&k.in_flight, c.in_flight),
            (&k.untracked, c.untracked),
        ] {
            if n > 0 {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

/// One reservation taken out of its request by [`Reservations::defer`]: the request was
/// answered, its event may still become durable. Settle it with [`Deferred::confirm`] or
/// [`Deferred::release`] once the sink knows; dropping it unsettled keeps the id reserved
/// until the reservation TTL (the outcome stayed unknown).
#[derive(Debug)]
pub struct Deferred {
    dedup: Arc<Dedup>,
    ttl_secs: u64,
    key: Key,
    res_exp: u32,
}

impl Deferred {
    /// The event became durable after all: its copies are duplicates for the TTL.
    pub fn confirm(self) {
        let now = self.dedup.now();
        let key = self.key;
        self.dedup.shard(key).with(|m| m.confirm(key, expiry(now, self.ttl_secs), now));
    }

    /// The event failed for good: free the id so the client's retry is published (a no-op if
    /// the reservation expired and another request took the id over meanwhile).
    pub fn release(self) {
        let (key, res_exp) = (self.key, self.res_exp);
        self.dedup.shard(key).with(|m| m.release(key, res_exp));
    }
}

fn verdict_of(state: State) -> Verdict {
    match state {
        State::Held | State::Confirmed | State::Released | State::Kept => Verdict::Fresh,
        State::Duplicate | State::DupOf(_) => Verdict::Duplicate,
        State::InFlight | State::Pending => Verdict::InFlight,
        State::Untracked => Verdict::Untracked,
    }
}

fn release_slot(dedup: &Dedup, slot: &mut Slot) {
    let (key, res_exp) = (slot.key, slot.res_exp);
    dedup.shard(key).with(|m| m.release(key, res_exp));
    slot.state = State::Released;
}

impl Drop for Reservations<'_> {
    fn drop(&mut self) {
        if self.publishing {
            // Unsettled ids stay reserved until the reservation TTL (see `begin_publish`).
            return;
        }
        let dedup = self.dedup;
        for slot in self.slots.iter_mut().filter(|s| s.state == State::Held) {
            release_slot(dedup, slot);
        }
    }
}
