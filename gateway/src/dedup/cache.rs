//! The cache: [`Dedup`] (its shards, hash key, clock and counters), how it is built and sized
//! (the shard count), how ids are hashed and reserved (waiting on another request's outcome),
//! its stats, and the sweeper; the per-id [`Verdict`] and the state of each id of a batch.
//! Must not: settle a request's ids (that is `reservation`), read or write the snapshot file
//! (`snapshot`), or do blocking I/O.

use std::collections::hash_map::RandomState;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::sync::Notify;

use super::key::{expiry, ttl_secs, Key, Map, EXP_MAX};
use super::reservation::Reservations;
use super::settings::{Clock, DedupConfig, DedupError, SystemClock};
use super::shards::{Probe, Shard, ShardMap};

#[cfg(doc)]
use super::MAX_TTL;

/// Below this many ids per shard, fewer shards are used (eviction works per shard and wants
/// room to choose from).
const MIN_SHARD_ENTRIES: usize = 256;
/// Highest fill of a table at its shard's bound that the shard count is chosen for: above it,
/// removals leave many tombstones (so many rebuilds) and probes get long.
const MAX_FILL_PERCENT: usize = 70;

/// The dedup window of one gateway instance. Share it as `Arc<Dedup>`.
pub struct Dedup {
    pub(super) shards: Box<[Shard]>,
    /// SipHash key of the id hashes (random per process, or the loaded snapshot's).
    pub(super) seed: (u64, u64),
    pub(super) clock: Arc<dyn Clock>,
    /// `clock.monotonic_secs()` at creation: cache time is seconds since then.
    origin: u64,
    capacity: usize,
    pub(super) wait_timeout: Duration,
    reservation_secs: u64,
    /// Next shard the sweeper visits.
    cursor: AtomicUsize,
    pub(super) counters: Counters,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) fresh: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) untracked: AtomicU64,
    waits: AtomicU64,
}

/// Counters and sizes for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DedupStats {
    /// Entries held now (reservations, and expired ones not swept yet, included).
    pub len: usize,
    /// The hard bound on `len`.
    pub capacity: usize,
    /// Entries the allocated tables hold without reallocating (≈ memory / 24 bytes).
    pub table_slots: usize,
    /// Ids answered `Fresh` (reserved), `Duplicate`, `InFlight` (wait timed out), `Untracked`.
    pub fresh: u64,
    pub duplicates: u64,
    pub in_flight_timeouts: u64,
    pub untracked: u64,
    /// Ids that had to wait for another request's outcome.
    pub waits: u64,
    /// Confirmed entries evicted before expiry because their shard was full.
    pub evictions: u64,
    /// Expired entries removed (by the sweeper or to make room).
    pub expired_removed: u64,
    /// Tables rebuilt to clear tombstones.
    pub rebuilds: u64,
}

/// What happened to one id of a [`Dedup::reserve`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reserved for this request: publish it, then confirm (or release) it.
    Fresh,
    /// Already published within the window, or earlier in the same batch: do not publish;
    /// answer success and count it.
    Duplicate,
    /// Another request is publishing it and did not finish within the wait timeout: answer a
    /// retriable error (503).
    InFlight,
    /// The cache had no room for it: publish it without dedup.
    Untracked,
}

/// Where one id of a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Reserved by us, not settled yet: released on drop.
    Held,
    Confirmed,
    Released,
    /// Left to expire at the reservation TTL (outcome unknown).
    Kept,
    Duplicate,
    InFlight,
    Untracked,
    /// Reserved by another request: waiting (only inside `reserve`).
    Pending,
    /// Same id as the given earlier index of this batch (only inside `reserve`).
    DupOf(u32),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) key: Key,
    /// Expiry of our reservation (identifies it at release).
    pub(super) res_exp: u32,
    pub(super) state: State,
}

impl Dedup {
    /// An empty cache on the system clock with a random hash key.
    pub fn new(config: &DedupConfig) -> Result<Dedup, DedupError> {
        Dedup::with_clock(config, Arc::new(SystemClock::new()))
    }

    /// An empty cache on the given clock with a random hash key.
    pub fn with_clock(config: &DedupConfig, clock: Arc<dyn Clock>) -> Result<Dedup, DedupError> {
        Dedup::build(config, clock, random_seed())
    }

    pub(super) fn build(config: &DedupConfig, clock: Arc<dyn Clock>, seed: (u64, u64)) -> Result<Dedup, DedupError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(DedupError::Config(problems.join("; ")));
        }
        Ok(Dedup::build_with_shards(config, clock, seed, shard_count(config.capacity, config.shards)))
    }

    pub(super) fn build_with_shards(config: &DedupConfig, clock: Arc<dyn Clock>, seed: (u64, u64), n: usize) -> Dedup {
        // Shares differ by at most one; the table size each needs is learned from std itself
        // (one probe allocation per distinct share) rather than from its growth policy.
        let (base, extra) = (config.capacity / n, config.capacity % n);
        let slots_for = |limit: usize| Map::with_capacity_and_hasher(limit, BuildHasherDefault::default()).capacity();
        let (small, large) = (slots_for(base), if extra > 0 { slots_for(base + 1) } else { 0 });
        let shards = (0..n)
            .map(|i| {
                let (limit, max_slots) = if i < extra { (base + 1, large) } else { (base, small) };
                Shard { map: Mutex::new(ShardMap::new(limit, max_slots)), notify: Notify::new() }
            })
            .collect();
        Dedup {
            shards,
            seed,
            origin: clock.monotonic_secs(),
            clock,
            capacity: config.capacity,
            wait_timeout: config.wait_timeout,
            reservation_secs: ttl_secs(config.reservation_ttl),
            cursor: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    /// Cache time: seconds since creation.
    pub(super) fn now(&self) -> u32 {
        let secs = self.clock.monotonic_secs().saturating_sub(self.origin);
        // Saturates after 34 years of uptime: entries then stop expiring, the bound still holds.
        secs.min(EXP_MAX) as u32
    }

    pub(super) fn shard(&self, key: Key) -> &Shard {
        // Multiply-shift maps the uniform high half onto 0..len, so the index is in bounds.
        let i = ((u128::from(key.hi()) * self.shards.len() as u128) >> 64) as usize;
        &self.shards[i]
    }

    /// The hash state after `source`: each id of a batch continues from a copy of it.
    pub(super) fn source_hasher(&self, source: &str) -> SipHasher13 {
        let mut h = SipHasher13::new_with_keys(self.seed.0, self.seed.1);
        // Length first, so that (source, id) pairs cannot run into each other.
        h.write_u64(source.len() as u64);
        h.write(source.as_bytes());
        h
    }

    pub(super) fn key(prefix: &SipHasher13, id: &str) -> Key {
        let mut h = *prefix;
        h.write(id.as_bytes());
        let out = h.finish128();
        Key::from_hash(out.h1, out.h2)
    }

    /// Reserves the client-sent `ids` of one request of `source` (the source's id, not its
    /// write key), to be confirmed with a window of `ttl` (clamped to 1 s ..= [`MAX_TTL`]).
    /// Ids another request is publishing are waited for, all within one `wait_timeout`.
    /// The answer has one [`Verdict`] per id, in order; dropping it releases every `Fresh` id
    /// not confirmed or held.
    pub async fn reserve<'i, I>(&self, source: &str, ids: I, ttl: Duration) -> Reservations<'_>
    where
        I: IntoIterator<Item = &'i str>,
    {
        let mut r = self.reserve_now(source, ids, ttl);
        if r.slots.iter().any(|s| s.state == State::Pending) {
            r.wait().await;
        }
        r.resolve_batch_duplicates();
        r.count();
        r
    }

    /// Everything `reserve` decides without waiting.
    fn reserve_now<'i, I>(&self, source: &str, ids: I, ttl: Duration) -> Reservations<'_>
    where
        I: IntoIterator<Item = &'i str>,
    {
        let prefix = self.source_hasher(source);
        let mut slots: Vec<Slot> = ids
            .into_iter()
            .map(|id| Slot { key: Dedup::key(&prefix, id), res_exp: 0, state: State::Pending })
            .collect();
        let now = self.now();
        let res_exp = expiry(now, self.reservation_secs);
        let mut found_reserved = false;
        for slot in &mut slots {
            slot.state = match self.shard(slot.key).with(|m| m.try_reserve(slot.key, now, res_exp, false)) {
                Probe::Acquired(exp) => {
                    slot.res_exp = exp;
                    State::Held
                }
                Probe::Confirmed => State::Duplicate,
                Probe::Full => State::Untracked,
                Probe::Reserved => {
                    found_reserved = true;
                    State::Pending
                }
            };
        }
        let mut r = Reservations { dedup: self, ttl_secs: ttl_secs(ttl), slots, publishing: false };
        if found_reserved {
            r.mark_batch_duplicates();
        }
        r
    }

    /// Waits until `key`'s reservation is settled or `deadline` passes, taking the reservation
    /// over if it is released.
    pub(super) async fn wait_for(&self, key: Key, deadline: tokio::time::Instant) -> (State, u32) {
        let shard = self.shard(key);
        self.counters.waits.fetch_add(1, Ordering::Relaxed);
        loop {
            // Created before the check: a `notify_waiters` after it is never missed.
            let notified = shard.notify.notified();
            let now = self.now();
            match shard.with(|m| m.try_reserve(key, now, expiry(now, self.reservation_secs), true)) {
                Probe::Acquired(exp) => return (State::Held, exp),
                Probe::Confirmed => return (State::Duplicate, 0),
                Probe::Full => return (State::Untracked, 0),
                Probe::Reserved => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return (State::InFlight, 0);
            }
        }
    }

    /// Entries held now (locks each shard in turn).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hard bound on [`Dedup::len`].
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of shards in use (see [`DedupConfig::shards`]).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Counters and sizes (locks each shard in turn).
    pub fn stats(&self) -> DedupStats {
        let c = &self.counters;
        let mut s = DedupStats {
            capacity: self.capacity,
            fresh: c.fresh.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            in_flight_timeouts: c.in_flight.load(Ordering::Relaxed),
            untracked: c.untracked.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            ..DedupStats::default()
        };
        for shard in self.shards.iter() {
            let m = shard.lock();
            s.len += m.map.len();
            s.table_slots += m.table_slots;
            s.evictions += m.evicted;
            s.expired_removed += m.expired;
            s.rebuilds += m.rebuilds;
        }
        s
    }

    /// Sweeps the next `shards` shards (round robin): removes their expired entries and
    /// rebuilds a table whose tombstones took half its free room. Holds one shard at a time.
    /// Returns the entries removed.
    pub fn sweep_some(&self, shards: usize) -> usize {
        let n = self.shards.len();
        let mut removed = 0;
        for _ in 0..shards.min(n) {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
            let now = self.now();
            if let Some(shard) = self.shards.get(i) {
                removed += shard.with(|m| {
                    let before = m.map.len();
                    m.remove_expired(now);
                    let r = before - m.map.len();
                    let tombstones = m.table_slots.saturating_sub(m.map.capacity());
                    let free = m.table_slots.saturating_sub(m.map.len());
                    if m.table_slots >= m.max_slots && tombstones > 0 && tombstones * 2 >= free {
                        m.rebuild();
                    }
                    r
                });
            }
        }
        removed
    }

    /// Sweeps every shard once, one at a time.
    pub fn sweep_all(&self) -> usize {
        self.sweep_some(self.shards.len())
    }

    /// Spawns the background sweeper: one shard every `every / shards`, so each shard is swept
    /// once per `every`, until `shutdown` resolves. Expired entries are already ignored by
    /// lookups; sweeping only frees their room, so `every` can be long (a minute).
    pub fn spawn_sweeper<F>(self: Arc<Self>, every: Duration, shutdown: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            let n = u32::try_from(self.shards.len()).unwrap_or(u32::MAX).max(1);
            let step = (every / n).max(Duration::from_millis(1));
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut shutdown = pin!(shutdown);
            loop {
                let stop = poll_fn(|cx| {
                    if shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(true);
                    }
                    ticker.poll_tick(cx).map(|_| false)
                })
                .await;
                if stop {
                    break;
                }
                self.sweep_some(1);
            }
        })
    }
}

impl std::fmt::Debug for Dedup {
    // Never prints the hash key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup").field("shards", &self.shards.len()).field("capacity", &self.capacity).finish()
    }
}

/// The number of shards for `capacity`: between `wanted` and twice as many (fewer for small
/// capacities), the count whose tables take the least memory while each stays at most
/// [`MAX_FILL_PERCENT`] full at its bound. Tables have power-of-two slot counts, so the share
/// per shard decides how full they get: 10 M ids in 128 shards would fill their tables to 60 %
/// (35 bytes per entry), in the 218 chosen to 70 % (30 bytes). Only memory depends on this
/// estimate of std's table sizes (7/8 of a power of two usable); the bounds are enforced with
/// std's own figures.
pub(super) fn shard_count(capacity: usize, wanted: usize) -> usize {
    let low = wanted.min(capacity.div_ceil(MIN_SHARD_ENTRIES)).max(1);
    let high = (low * 2).min(capacity).max(low);
    let buckets = |limit: usize| (limit.saturating_mul(8) / 7).next_power_of_two();
    (low..=high)
        .filter(|&n| {
            let limit = capacity.div_ceil(n);
            limit * 100 <= buckets(limit) * MAX_FILL_PERCENT
        })
        .min_by_key(|&n| n.saturating_mul(buckets(capacity.div_ceil(n))))
        .unwrap_or(low)
}

/// A hash key from std's `RandomState`, which the standard library seeds from the operating
/// system's random source: unpredictable, and no extra dependency.
fn random_seed() -> (u64, u64) {
    let s = RandomState::new();
    (s.hash_one(0x5eed_u64), s.hash_one(0xdeda_u64))
}
