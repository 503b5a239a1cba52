//! Shards: one shard's bounded table ([`ShardMap`]: lookup-and-reserve, confirm, release,
//! making room by dropping expired entries and evicting those closest to expiry, rebuilding a
//! table full of tombstones) and the [`Shard`] that wraps it in a mutex with its waiters'
//! `Notify`.
//! Must not: hash ids, read the clock (callers pass `now`), count verdicts or know requests.

use std::hash::BuildHasherDefault;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::key::{expiry_of, is_confirmed, pack, Key, Map, WAITED};

/// A full shard evicts this fraction (1/16) of its entries at once, so the two passes over the
/// shard it needs are paid once per many inserts.
const EVICT_DIVISOR: usize = 16;
/// Histogram buckets used to find the eviction cut without sorting.
const EVICT_BUCKETS: usize = 64;

/// What a lookup-and-reserve found.
pub(super) enum Probe {
    /// The id was free (or expired): it is now reserved until the given expiry.
    Acquired(u32),
    /// Confirmed and unexpired: a duplicate.
    Confirmed,
    /// Reserved by a request in flight.
    Reserved,
    /// No room and nothing evictable.
    Full,
}

/// One shard's table and its bookkeeping; always used under the shard's mutex.
pub(super) struct ShardMap {
    pub(super) map: Map,
    /// Most entries this shard may hold (its share of the capacity).
    pub(super) limit: usize,
    /// Slots of a table sized for `limit` (`Map::with_capacity(limit).capacity()`): the
    /// table never grows past this.
    pub(super) max_slots: usize,
    /// Slots of the current table when it has no tombstones (its capacity after its last
    /// growth or rebuild). `map.capacity()` is lower by the tombstones.
    pub(super) table_slots: usize,
    /// Set when an entry some request waits on changed; the shard wakes its waiters after
    /// unlocking.
    wake: bool,
    pub(super) evicted: u64,
    pub(super) expired: u64,
    pub(super) rebuilds: u64,
}

impl ShardMap {
    pub(super) fn new(limit: usize, max_slots: usize) -> ShardMap {
        ShardMap {
            map: Map::default(),
            limit,
            max_slots,
            table_slots: 0,
            wake: false,
            evicted: 0,
            expired: 0,
            rebuilds: 0,
        }
    }

    /// Looks `key` up and reserves it when free. `waiting` marks a found reservation so that
    /// its outcome wakes this shard's waiters.
    pub(super) fn try_reserve(&mut self, key: Key, now: u32, res_exp: u32, waiting: bool) -> Probe {
        if let Some(v) = self.map.get_mut(&key) {
            if expiry_of(*v) > now {
                if is_confirmed(*v) {
                    return Probe::Confirmed;
                }
                if waiting {
                    *v |= WAITED;
                }
                return Probe::Reserved;
            }
            // Expired (a stale confirmation, or a reservation whose request vanished): take it
            // over in place. Keep WAITED: whoever waited on the old reservation waits on ours.
            *v = pack(res_exp, false) | (*v & WAITED);
            return Probe::Acquired(res_exp);
        }
        if !self.make_room(now) {
            return Probe::Full;
        }
        self.insert(key, pack(res_exp, false));
        Probe::Acquired(res_exp)
    }

    /// Marks `key` confirmed until at least `exp` (inserting it if its reservation was swept
    /// meanwhile: the event was published, so its retries must be caught).
    pub(super) fn confirm(&mut self, key: Key, exp: u32, now: u32) {
        match self.map.get_mut(&key) {
            Some(v) => {
                self.wake |= *v & WAITED != 0;
                let keep = if is_confirmed(*v) && expiry_of(*v) > now { expiry_of(*v).max(exp) } else { exp };
                *v = pack(keep, true);
            }
            None => {
                if self.make_room(now) {
                    self.insert(key, pack(exp, true));
                }
            }
        }
    }

    /// Drops `key` if it is still the reservation that expires at `res_exp` — not a
    /// confirmation, and not a newer reservation by another request.
    pub(super) fn release(&mut self, key: Key, res_exp: u32) {
        if let Some(&v) = self.map.get(&key) {
            if !is_confirmed(v) && expiry_of(v) == res_exp {
                self.map.remove(&key);
                self.wake |= v & WAITED != 0;
            }
        }
    }

    fn insert(&mut self, key: Key, value: u32) {
        self.map.insert(key, value);
        // A growth (or std's in-place rehash) shows up as a larger capacity.
        self.table_slots = self.table_slots.max(self.map.capacity());
    }

    /// Ensures one more entry fits within `limit` and without growing the table past
    /// `max_slots`. False when the shard holds nothing that may be dropped.
    fn make_room(&mut self, now: u32) -> bool {
        if self.fits() {
            return true;
        }
        let live = self.remove_expired(now);
        if self.map.len() >= self.limit {
            let want = (self.limit / EVICT_DIVISOR).max(1);
            if self.evict_closest_to_expiry(now, want, live) == 0 {
                return false;
            }
        }
        if !self.fits() {
            self.rebuild();
        }
        self.fits()
    }

    /// Whether an insert stays within the bounds: below `limit`, and either a free slot is left
    /// or the table may still grow (a growth doubles it, at most up to `max_slots`).
    fn fits(&self) -> bool {
        let len = self.map.len();
        len < self.limit && (len < self.map.capacity() || self.table_slots < self.max_slots)
    }

    /// Rebuilds the table at full size without its tombstones (std's table would double
    /// instead once they use up its free slots).
    pub(super) fn rebuild(&mut self) {
        let mut fresh = Map::with_capacity_and_hasher(self.limit, BuildHasherDefault::default());
        fresh.extend(self.map.drain());
        self.map = fresh;
        self.table_slots = self.map.capacity();
        self.rebuilds += 1;
    }

    /// Removes expired entries; describes the live confirmed ones (for eviction).
    pub(super) fn remove_expired(&mut self, now: u32) -> LiveRange {
        let before = self.map.len();
        let (mut wake, mut live) = (false, LiveRange { lo: u32::MAX, hi: 0, confirmed: 0 });
        self.map.retain(|_, v| {
            let e = expiry_of(*v);
            if e <= now {
                wake |= *v & WAITED != 0;
                return false;
            }
            if is_confirmed(*v) {
                live.lo = live.lo.min(e);
                live.hi = live.hi.max(e);
                live.confirmed += 1;
            }
            true
        });
        self.wake |= wake;
        self.expired += (before - self.map.len()) as u64;
        live
    }

    /// Evicts up to `want` live confirmed entries, those closest to expiry first: a histogram
    /// of their expiries over `live`'s range finds the cut, a second pass removes up to it.
    /// No allocation, no sort.
    fn evict_closest_to_expiry(&mut self, now: u32, want: usize, live: LiveRange) -> usize {
        if live.confirmed == 0 {
            return 0;
        }
        let want = want.min(live.confirmed);
        let lo = live.lo;
        let span = u64::from(live.hi.saturating_sub(lo)) + 1;
        let live_confirmed = |v: u32| is_confirmed(v) && expiry_of(v) > now;
        // Always < EVICT_BUCKETS for a live confirmed value: lo <= its expiry <= hi.
        let bucket = |v: u32| (u64::from(expiry_of(v).saturating_sub(lo)) * EVICT_BUCKETS as u64 / span) as usize;
        let mut hist = [0usize; EVICT_BUCKETS];
        for &v in self.map.values().filter(|&&v| live_confirmed(v)) {
            if let Some(h) = hist.get_mut(bucket(v)) {
                *h += 1;
            }
        }
        // The cut bucket: everything below it goes, and `quota` entries of it.
        let (mut cut, mut below) = (EVICT_BUCKETS - 1, 0usize);
        for (b, &n) in hist.iter().enumerate() {
            if below + n >= want {
                cut = b;
                break;
            }
            below += n;
        }
        let mut quota = want.saturating_sub(below);
        let mut removed = 0usize;
        self.map.retain(|_, v| {
            if !live_confirmed(*v) {
                return true;
            }
            let b = bucket(*v);
            let drop = b < cut || (b == cut && quota > 0);
            if drop {
                if b == cut {
                    quota -= 1;
                }
                removed += 1;
            }
            !drop
        });
        self.evicted += removed as u64;
        removed
    }
}

/// The live confirmed entries of a shard, as seen by its last expiry pass.
#[derive(Clone, Copy)]
pub(super) struct LiveRange {
    lo: u32,
    hi: u32,
    confirmed: usize,
}

/// A shard: its table, and the `Notify` its waiters sleep on. Aligned so that two shards'
/// mutexes never share a cache line.
#[repr(align(128))]
pub(super) struct Shard {
    pub(super) map: Mutex<ShardMap>,
    pub(super) notify: Notify,
}

impl Shard {
    pub(super) fn lock(&self) -> MutexGuard<'_, ShardMap> {
        // Nothing under this lock panics; if something ever did, the table is still coherent
        // (every operation leaves it valid between statements), so keep using it.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` under the lock, then wakes the waiters if `f` settled an id one waits on.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut ShardMap) -> R) -> R {
        let mut m = self.lock();
        let r = f(&mut m);
        let wake = std::mem::take(&mut m.wake);
        drop(m);
        if wake {
            self.notify.notify_waiters();
        }
        r
    }
}
