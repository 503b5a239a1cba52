//! Dedup: drops repeated client `messageId`s at the edge, per source, within a time window.
//!
//! Owns: the in-memory window of recently published ids (a sharded hash map of fixed-size
//! hashes, bounded by TTL and by a hard capacity), the reserve → confirm / release lifecycle of
//! an id while its event is being published, the background sweep of expired entries, and the
//! snapshot file that carries the window across a graceful restart.
//! Must not: know about HTTP, Kafka or event bodies (it sees `(source id, messageId)` pairs and
//! nothing else), decide status codes (the caller maps [`Verdict`]s), log ids or keys, or do
//! blocking I/O on the request path (only [`Dedup::snapshot`] and [`Dedup::load`] touch the
//! disk, at shutdown and start).
//!
//! # One request
//! 1. [`Dedup::reserve`]`(source_id, client_ids, ttl)` gives a [`Verdict`] per id, in order:
//!    [`Verdict::Fresh`] (reserved for this request: publish it), [`Verdict::Duplicate`]
//!    (published within the window, or earlier in this batch: skip it, answer success),
//!    [`Verdict::InFlight`] (another request is still publishing it: answer a retriable error),
//!    or [`Verdict::Untracked`] (no room to track it: publish it without dedup).
//!    Server-generated ids must not be passed in: nothing can repeat them.
//! 2. After the sink answers, per event: [`Reservations::confirm`] on a broker ack,
//!    [`Reservations::release`] on a definite failure (the client's retry must go through), or
//!    [`Reservations::hold`] when the outcome is unknown (a timeout: the event may still land).
//!    An id whose event the sink may still deliver after the request has been answered (it
//!    entered a queue that then filled up) is taken out with [`Reservations::defer`] and
//!    settled later through its [`Deferred`].
//!    Dropping the [`Reservations`] releases whatever was neither confirmed nor held, so an
//!    early return cannot leave ids reserved — unless [`Reservations::begin_publish`] was
//!    called: once events are handed to the sink, a dropped request (client gone, panic) has an
//!    unknown outcome, so its ids are held until the reservation TTL instead.
//!
//! While an id is reserved, a concurrent copy is never answered "duplicate" (the first may
//! still fail): it waits, up to `wait_timeout`, for the outcome — confirmed → `Duplicate`,
//! released → it takes the reservation over (`Fresh`), neither → `InFlight`. So two requests
//! never both publish one id within the window, and a failed publish never swallows a retry.
//! The two ways the window is cut short are counted: an entry evicted because its shard was
//! full ([`DedupStats::evictions`]), and a reservation older than `reservation_ttl` (which
//! must exceed the sink's delivery timeout).
//!
//! # Memory
//! An entry is a 128-bit key and a 32-bit value, 20 bytes, in a std `HashMap` (SwissTable: one
//! control byte per slot, power-of-two slot counts). The shard count is picked so that each
//! table is ≈70 % full at its bound: ≈30 bytes per entry at the capacity bound, and less than
//! twice that while the cache fills (tables grow on demand; measured in
//! `benches/benches/dedup.rs`). No per-entry heap allocation: waiters cost one bit in the value
//! plus one `Notify` per shard.
//! - **Key**: SipHash-1-3-128 of `(len(source id), source id, messageId)` under a random
//!   per-process key (kept in the snapshot). Keyed, so a client cannot craft ids that collide
//!   with another source's ids or flood one shard. 128 bits because a false match silently
//!   drops a distinct event: with 10 M ids in the window the chance that a new id matches one of
//!   them is 10⁷/2¹²⁸ ≈ 3·10⁻³², against 10⁷/2⁶⁴ ≈ 5·10⁻¹³ for 64 bits — which at 600 k
//!   events/s (5·10¹⁰ a day) is one lost event a month per instance.
//! - **Value**: expiry (seconds since the cache's start on a monotonic clock, 30 bits: 34 years)
//!   and two state bits: confirmed (else reserved) and "someone waits on this id".
//!
//! # Bounds
//! The map is cut into shards (a mutex, a `Notify` and a table each); a shard never holds more
//! than its share of `capacity` (so with ids spread by hash, evictions start at ≈97 % of it). Its table grows on demand up to the size that share needs and
//! never past it: deleted slots (tombstones) would otherwise make std's table double in place,
//! so when a full-size table runs out of free slots it is rebuilt at the same size instead.
//! When a shard is at its bound, an insert first drops its expired entries; if it is still
//! full, it evicts the 1/16 of its confirmed entries closest to expiry (counted in
//! [`DedupStats::evictions`]). Eviction, not refusal, because retries follow the original send
//! closely: the newest ids are the ones worth protecting, the oldest the least. Reservations are
//! never evicted (they guard a publish in progress); a shard holding nothing else answers
//! `Untracked` (counted).
//!
//! Expired entries never count (expiry is checked on every lookup); the sweeper
//! ([`Dedup::spawn_sweeper`]) only frees their room, one shard at a time, so a sweep never
//! stalls more than one shard's requests, for well under a millisecond.
//!
//! # Restarts and several instances
//! The window lives in one process's memory. Without a snapshot a restart empties it: a client
//! retry of an event acknowledged just before the restart is published again.
//! [`Dedup::snapshot`] at graceful shutdown (after the drain, when no publish is in flight) and
//! [`Dedup::load`] at start carry it over: confirmed, unexpired entries and the hash key (the
//! file is created `0600`: the key lets its reader predict the cache's hashing). After a crash
//! the last snapshot is still valid, only older. A corrupt snapshot is refused with
//! [`DedupError::Corrupt`]; start empty and move the file aside.
//!
//! Several instances each keep their own window: a retry that reaches another instance is not
//! caught. Operators who need dedup across instances should route by write key at the load
//! balancer (consistent hashing on `X-Write-Key` / `Authorization` / `?writeKey=`; an SDK retries
//! a batch with the same key and the same `messageId`s) and give each instance a persistent data
//! directory for its snapshot; scaling in or out then moves some sources to a cold window.
//! Otherwise accept per-instance scope and dedup downstream by `messageId` (as Segment's
//! warehouses do).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::sync::Notify;

/// Default window: Segment's own dedup window.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default capacity: ids tracked per instance (≈300 MB when full, see the module doc).
pub const DEFAULT_CAPACITY: usize = 10_000_000;
/// Longest TTL accepted; longer ones are clamped (the expiry field has 30 bits of seconds).
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Below this many ids per shard, fewer shards are used (eviction works per shard and wants
/// room to choose from).
const MIN_SHARD_ENTRIES: usize = 256;
/// A full shard evicts this fraction (1/16) of its entries at once, so the two passes over the
/// shard it needs are paid once per many inserts.
const EVICT_DIVISOR: usize = 16;
/// Highest fill of a table at its shard's bound that the shard count is chosen for: above it,
/// removals leave many tombstones (so many rebuilds) and probes get long.
const MAX_FILL_PERCENT: usize = 70;
/// Histogram buckets used to find the eviction cut without sorting.
const EVICT_BUCKETS: usize = 64;

// ---------------------------------------------------------------------------------------------
// Config, clock, errors
// ---------------------------------------------------------------------------------------------

/// Sizing and timing of the cache. The per-source TTL is not here: it is passed to each
/// [`Dedup::reserve`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// Hard bound on tracked ids (reservations included). Default [`DEFAULT_CAPACITY`].
    pub capacity: usize,
    /// Least number of shards (small capacities use fewer); up to twice as many are used when
    /// that makes the tables smaller. Default 128: 10 M ids get 218 shards of ≈46 k entries,
    /// each swept in ≈0.1 ms.
    pub shards: usize,
    /// How long a request waits for another request that is publishing the same id. Default
    /// 5 s; keep it below the clients' request timeout.
    pub wait_timeout: Duration,
    /// Lifetime of a reservation that is never confirmed or released (a request stuck in
    /// publish, or an outcome [`Reservations::hold`]): after it, the id may be published again.
    /// Must exceed the sink's delivery timeout. Default 10 min (librdkafka's default
    /// `message.timeout.ms` is 5 min).
    pub reservation_ttl: Duration,
}

impl Default for DedupConfig {
    fn default() -> DedupConfig {
        DedupConfig {
            capacity: DEFAULT_CAPACITY,
            shards: 128,
            wait_timeout: Duration::from_secs(5),
            reservation_ttl: Duration::from_secs(600),
        }
    }
}

impl DedupConfig {
    /// Every problem, one message each (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.capacity == 0 {
            p.push("dedup capacity must be at least 1".to_string());
        }
        if self.capacity > u32::MAX as usize {
            p.push(format!("dedup capacity {} is above the limit of {}", self.capacity, u32::MAX));
        }
        if self.shards == 0 || self.shards > 65536 {
            p.push(format!("dedup shards {} must be between 1 and 65536", self.shards));
        }
        if self.reservation_ttl < Duration::from_secs(1) || self.reservation_ttl > MAX_TTL {
            p.push(format!("dedup reservation ttl {:?} must be between 1 s and {:?}", self.reservation_ttl, MAX_TTL));
        }
        if self.wait_timeout > self.reservation_ttl {
            p.push("dedup wait timeout must not exceed the reservation ttl".to_string());
        }
        p
    }
}

/// Time as the cache sees it: whole seconds. Injected so tests move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Seconds on a monotonic clock (arbitrary origin, never goes back): drives expiry.
    fn monotonic_secs(&self) -> u64;
    /// Seconds since the Unix epoch: only used to carry expiries through a snapshot file.
    fn unix_secs(&self) -> u64;
}

/// The real clock: `Instant` for expiry (immune to wall-clock steps), `SystemTime` for
/// snapshots.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// Monotonic seconds count from now.
    pub fn new() -> SystemClock {
        SystemClock { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_secs(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }
    fn unix_secs(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// A clock that moves only when told (tests, here and in the gateway's integration tests).
#[derive(Debug)]
pub struct ManualClock {
    secs: AtomicU64,
    unix_origin: u64,
}

impl ManualClock {
    /// Starts at monotonic 0 and at the given Unix time.
    pub fn new(unix_origin: u64) -> ManualClock {
        ManualClock { secs: AtomicU64::new(0), unix_origin }
    }
    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        self.secs.fetch_add(by.as_secs(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic_secs(&self) -> u64 {
        self.secs.load(Ordering::SeqCst)
    }
    fn unix_secs(&self) -> u64 {
        self.unix_origin.saturating_add(self.secs.load(Ordering::SeqCst))
    }
}

/// Why the cache could not be built, saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("invalid dedup config: {0}")]
    Config(String),
    #[error("dedup snapshot {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("dedup snapshot {} is corrupt ({reason}); move it aside to start with an empty window", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl DedupError {
    /// The stable snake_case code of this error (also a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            DedupError::Config(_) => "invalid_dedup_config",
            DedupError::Io { .. } => "dedup_snapshot_io",
            DedupError::Corrupt { .. } => "dedup_snapshot_corrupt",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and values
// ---------------------------------------------------------------------------------------------

/// The 128-bit hash of `(source id, messageId)`. Four `u32`s rather than a `u128` so that a
/// map slot is 20 bytes (alignment 4) instead of 32 (a `u128` is 16-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key([u32; 4]);

impl Key {
    fn from_hash(lo: u64, hi: u64) -> Key {
        Key([lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32])
    }
    fn lo(&self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
    fn hi(&self) -> u64 {
        u64::from(self.0[2]) | (u64::from(self.0[3]) << 32)
    }
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (chunk, word) in b.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        b
    }
    fn from_bytes(b: &[u8; 16]) -> Key {
        let mut k = [0u32; 4];
        for (word, chunk) in k.iter_mut().zip(b.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Key(k)
    }
}

impl Hash for Key {
    // The key is already a keyed hash: hand its low half to the table as is (the high half
    // picks the shard, so the two choices are independent).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.lo());
    }
}

/// Pass-through hasher for [`Key`]s.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached (Key hashes through write_u64); kept correct for any other input.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Map = HashMap<Key, u32, BuildHasherDefault<KeyHasher>>;

/// Value bits: `expiry << 2 | WAITED | CONFIRMED`.
const CONFIRMED: u32 = 1;
const WAITED: u32 = 2;
const EXP_MAX: u64 = (u32::MAX >> 2) as u64;

fn expiry_of(v: u32) -> u32 {
    v >> 2
}

fn pack(expiry: u32, confirmed: bool) -> u32 {
    (expiry << 2) | if confirmed { CONFIRMED } else { 0 }
}

fn is_confirmed(v: u32) -> bool {
    v & CONFIRMED != 0
}

fn ttl_secs(ttl: Duration) -> u64 {
    ttl.clamp(Duration::from_secs(1), MAX_TTL).as_secs()
}

fn expiry(now: u32, secs: u64) -> u32 {
    // Both terms are below 2^30 + 2^25; the sum is clamped to the 30-bit field.
    (u64::from(now) + secs).min(EXP_MAX) as u32
}

// ---------------------------------------------------------------------------------------------
// Shards
// ---------------------------------------------------------------------------------------------

/// What a lookup-and-reserve found.
enum Probe {
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
struct ShardMap {
    map: Map,
    /// Most entries this shard may hold (its share of the capacity).
    limit: usize,
    /// Slots of a table sized for `limit` (`Map::with_capacity(limit).capacity()`): the
    /// table never grows past this.
    max_slots: usize,
    /// Slots of the current table when it has no tombstones (its capacity after its last
    /// growth or rebuild). `map.capacity()` is lower by the tombstones.
    table_slots: usize,
    /// Set when an entry some request waits on changed; the shard wakes its waiters after
    /// unlocking.
    wake: bool,
    evicted: u64,
    expired: u64,
    rebuilds: u64,
}

impl ShardMap {
    fn new(limit: usize, max_slots: usize) -> ShardMap {
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
    fn try_reserve(&mut self, key: Key, now: u32, res_exp: u32, waiting: bool) -> Probe {
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
    fn confirm(&mut self, key: Key, exp: u32, now: u32) {
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
    fn release(&mut self, key: Key, res_exp: u32) {
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
    fn rebuild(&mut self) {
        let mut fresh = Map::with_capacity_and_hasher(self.limit, BuildHasherDefault::default());
        fresh.extend(self.map.drain());
        self.map = fresh;
        self.table_slots = self.map.capacity();
        self.rebuilds += 1;
    }

    /// Removes expired entries; describes the live confirmed ones (for eviction).
    fn remove_expired(&mut self, now: u32) -> LiveRange {
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
struct LiveRange {
    lo: u32,
    hi: u32,
    confirmed: usize,
}

/// A shard: its table, and the `Notify` its waiters sleep on. Aligned so that two shards'
/// mutexes never share a cache line.
#[repr(align(128))]
struct Shard {
    map: Mutex<ShardMap>,
    notify: Notify,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardMap> {
        // Nothing under this lock panics; if something ever did, the table is still coherent
        // (every operation leaves it valid between statements), so keep using it.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` under the lock, then wakes the waiters if `f` settled an id one waits on.
    fn with<R>(&self, f: impl FnOnce(&mut ShardMap) -> R) -> R {
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

// ---------------------------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------------------------

/// The dedup window of one gateway instance. Share it as `Arc<Dedup>`.
pub struct Dedup {
    shards: Box<[Shard]>,
    /// SipHash key of the id hashes (random per process, or the loaded snapshot's).
    seed: (u64, u64),
    clock: Arc<dyn Clock>,
    /// `clock.monotonic_secs()` at creation: cache time is seconds since then.
    origin: u64,
    capacity: usize,
    wait_timeout: Duration,
    reservation_secs: u64,
    /// Next shard the sweeper visits.
    cursor: AtomicUsize,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    fresh: AtomicU64,
    duplicates: AtomicU64,
    in_flight: AtomicU64,
    untracked: AtomicU64,
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
enum State {
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
struct Slot {
    key: Key,
    /// Expiry of our reservation (identifies it at release).
    res_exp: u32,
    state: State,
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

    fn build(config: &DedupConfig, clock: Arc<dyn Clock>, seed: (u64, u64)) -> Result<Dedup, DedupError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(DedupError::Config(problems.join("; ")));
        }
        Ok(Dedup::build_with_shards(config, clock, seed, shard_count(config.capacity, config.shards)))
    }

    fn build_with_shards(config: &DedupConfig, clock: Arc<dyn Clock>, seed: (u64, u64), n: usize) -> Dedup {
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
    fn now(&self) -> u32 {
        let secs = self.clock.monotonic_secs().saturating_sub(self.origin);
        // Saturates after 34 years of uptime: entries then stop expiring, the bound still holds.
        secs.min(EXP_MAX) as u32
    }

    fn shard(&self, key: Key) -> &Shard {
        // Multiply-shift maps the uniform high half onto 0..len, so the index is in bounds.
        let i = ((u128::from(key.hi()) * self.shards.len() as u128) >> 64) as usize;
        &self.shards[i]
    }

    /// The hash state after `source`: each id of a batch continues from a copy of it.
    fn source_hasher(&self, source: &str) -> SipHasher13 {
        let mut h = SipHasher13::new_with_keys(self.seed.0, self.seed.1);
        // Length first, so that (source, id) pairs cannot run into each other.
        h.write_u64(source.len() as u64);
        h.write(source.as_bytes());
        h
    }

    fn key(prefix: &SipHasher13, id: &str) -> Key {
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
    async fn wait_for(&self, key: Key, deadline: tokio::time::Instant) -> (State, u32) {
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
fn shard_count(capacity: usize, wanted: usize) -> usize {
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

// ---------------------------------------------------------------------------------------------
// One request's reservations
// ---------------------------------------------------------------------------------------------

/// The verdicts of one [`Dedup::reserve`] call and the reservations it holds. Dropping it
/// releases every `Fresh` id that was neither confirmed nor held — or, after
/// [`Reservations::begin_publish`], holds them.
#[derive(Debug)]
pub struct Reservations<'a> {
    dedup: &'a Dedup,
    ttl_secs: u64,
    slots: Vec<Slot>,
    /// Set by `begin_publish`: an unsettled id may be on its way to the sink.
    publishing: bool,
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
    async fn wait(&mut self) {
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
    fn mark_batch_duplicates(&mut self) {
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
    fn resolve_batch_duplicates(&mut self) {
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

    fn count(&self) {
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

// ---------------------------------------------------------------------------------------------
// Snapshot file
// ---------------------------------------------------------------------------------------------
//
// Little-endian, fixed layout:
//   header  "gwdedup\0" | version u32 = 1 | reserved u32 = 0 | hash key k0 u64, k1 u64 |
//           written_at u64 (Unix seconds)                                     (40 bytes)
//   entries key [u8; 16] | seconds left at written_at u32                     (20 bytes each)
//   trailer entry count u64 | SipHash-1-3 (fixed key) of every byte before it (16 bytes)

const MAGIC: &[u8; 8] = b"gwdedup\0";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 40;
const ENTRY_BYTES: u64 = 20;
const TRAILER_BYTES: u64 = 16;
const CHECKSUM_KEY: (u64, u64) = (0x6777_6465_6475_7031, 0x736e_6170_7368_6f74);

/// What [`Dedup::snapshot`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotReport {
    pub entries: u64,
    pub bytes: u64,
}

/// What [`Dedup::load`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// False when there was no snapshot (a first start): the cache starts empty.
    pub found: bool,
    /// Entries restored.
    pub loaded: u64,
    /// Entries that had expired since the snapshot.
    pub expired: u64,
}

/// Writes through to a checksum.
struct Summed<W> {
    inner: W,
    sum: siphasher::sip::SipHasher13,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sum.write(bytes);
        self.inner.write_all(bytes)
    }
}

fn checksum_hasher() -> siphasher::sip::SipHasher13 {
    siphasher::sip::SipHasher13::new_with_keys(CHECKSUM_KEY.0, CHECKSUM_KEY.1)
}

impl Dedup {
    /// Writes the confirmed, unexpired entries and the hash key to `path`, atomically (a
    /// temporary file beside it, fsync, rename, fsync of the folder). Blocking I/O: call it
    /// from `spawn_blocking` or after the runtime stops serving, once in-flight requests have
    /// drained (reservations are not written). Locks one shard at a time, copying it out.
    pub fn snapshot(&self, path: &Path) -> Result<SnapshotReport, DedupError> {
        let io_err = |source| DedupError::Io { path: path.to_path_buf(), source };
        let name = path.file_name().ok_or_else(|| io_err(io::Error::other("the path names no file")))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let result = self.write_snapshot(&tmp).and_then(|report| {
            fs::rename(&tmp, path)?;
            sync_parent(path)?;
            Ok(report)
        });
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(e)
        })
    }

    fn write_snapshot(&self, tmp: &Path) -> io::Result<SnapshotReport> {
        // A leftover from an interrupted snapshot would keep its permissions through `create`.
        match fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(tmp)?;
        let mut out = Summed { inner: BufWriter::with_capacity(1 << 20, file), sum: checksum_hasher() };
        let written_at = self.clock.unix_secs();
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&self.seed.0.to_le_bytes());
        header.extend_from_slice(&self.seed.1.to_le_bytes());
        header.extend_from_slice(&written_at.to_le_bytes());
        out.put(&header)?;
        let mut entries = 0u64;
        let mut buf = Vec::new();
        for shard in self.shards.iter() {
            buf.clear();
            {
                let m = shard.lock();
                let now = self.now();
                for (key, &v) in m.map.iter() {
                    if is_confirmed(v) && expiry_of(v) > now {
                        buf.extend_from_slice(&key.to_bytes());
                        buf.extend_from_slice(&(expiry_of(v) - now).to_le_bytes());
                    }
                }
            }
            entries += buf.len() as u64 / ENTRY_BYTES;
            out.put(&buf)?;
        }
        out.put(&entries.to_le_bytes())?;
        let sum = out.sum.finish();
        out.inner.write_all(&sum.to_le_bytes())?;
        let file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(SnapshotReport { entries, bytes: HEADER_BYTES + entries * ENTRY_BYTES + TRAILER_BYTES })
    }

    /// Builds the cache from the snapshot at `path`: its hash key, and its entries that are
    /// still unexpired by `clock`'s Unix time (evicting, closest to expiry first, if they no
    /// longer fit `config.capacity`). A missing file gives an empty cache
    /// (`LoadReport::found == false`); an unreadable or corrupt one an error — the caller then
    /// starts with [`Dedup::new`]. Blocking I/O: call it at start, before serving.
    pub fn load(path: &Path, config: &DedupConfig, clock: Arc<dyn Clock>) -> Result<(Dedup, LoadReport), DedupError> {
        let io_err = |source| DedupError::Io { path: path.to_path_buf(), source };
        let corrupt = |reason: &str| DedupError::Corrupt { path: path.to_path_buf(), reason: reason.to_string() };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((Dedup::with_clock(config, clock)?, LoadReport::default()));
            }
            Err(e) => return Err(io_err(e)),
        };
        let len = file.metadata().map_err(io_err)?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut sum = checksum_hasher();
        let mut read = |buf: &mut [u8]| -> Result<(), DedupError> {
            input.read_exact(buf).map_err(io_err)?;
            sum.write(buf);
            Ok(())
        };
        let mut header = [0u8; HEADER_BYTES as usize];
        if len < HEADER_BYTES {
            return Err(corrupt("truncated"));
        }
        read(&mut header)?;
        let word = |at: usize| header.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        if header.get(..8) != Some(MAGIC.as_slice()) {
            return Err(corrupt("not a dedup snapshot"));
        }
        let version = header.get(8..12).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes);
        if version != VERSION {
            return Err(corrupt(&format!("unsupported version {version}")));
        }
        let body = len - HEADER_BYTES;
        if body < TRAILER_BYTES || (body - TRAILER_BYTES) % ENTRY_BYTES != 0 {
            return Err(corrupt("truncated"));
        }
        let count = (body - TRAILER_BYTES) / ENTRY_BYTES;
        let (seed, written_at) = ((word(16), word(24)), word(32));
        let dedup = Dedup::build(config, clock, seed)?;
        let elapsed = dedup.clock.unix_secs().saturating_sub(written_at);
        let now = dedup.now();
        let mut report = LoadReport { found: true, ..LoadReport::default() };
        let mut entry = [0u8; ENTRY_BYTES as usize];
        for _ in 0..count {
            read(&mut entry)?;
            let (key_bytes, left_bytes) = entry.split_at(16);
            let key = key_bytes.try_into().map(Key::from_bytes).map_err(|_| corrupt("bad entry"))?;
            let left = left_bytes.try_into().map(u32::from_le_bytes).map_err(|_| corrupt("bad entry"))?;
            let Some(left) = u64::from(left).checked_sub(elapsed).filter(|&l| l > 0) else {
                report.expired += 1;
                continue;
            };
            let exp = expiry(now, left.min(MAX_TTL.as_secs()));
            dedup.shard(key).with(|m| m.confirm(key, exp, now));
            report.loaded += 1;
        }
        let mut trailer = [0u8; 8];
        read(&mut trailer)?;
        if u64::from_le_bytes(trailer) != count {
            return Err(corrupt("entry count mismatch"));
        }
        let expected = sum.finish();
        let mut stored = [0u8; 8];
        input.read_exact(&mut stored).map_err(io_err)?;
        if u64::from_le_bytes(stored) != expected {
            return Err(corrupt("checksum mismatch"));
        }
        Ok((dedup, report))
    }
}

/// Makes a rename durable: fsync of the folder that holds `path`.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn config(capacity: usize, shards: usize) -> DedupConfig {
        DedupConfig {
            capacity,
            shards,
            wait_timeout: Duration::from_secs(5),
            reservation_ttl: Duration::from_secs(600),
        }
    }

    fn manual(capacity: usize, shards: usize) -> (Arc<Dedup>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let d = Dedup::with_clock(&config(capacity, shards), clock.clone()).unwrap();
        (Arc::new(d), clock)
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    }

    async fn one(d: &Dedup, source: &str, id: &str) -> Verdict {
        let mut r = d.reserve(source, [id], TTL).await;
        let v = r.verdict(0).unwrap();
        r.confirm(0);
        v
    }

    #[tokio::test]
    async fn fresh_then_duplicate_per_source() {
        let (d, _) = manual(1000, 4);
        assert_eq!(one(&d, "s1", "m1").await, Verdict::Fresh);
        assert_eq!(one(&d, "s1", "m1").await, Verdict::Duplicate);
        // Scope is the source: the same id from another source is new.
        assert_eq!(one(&d, "s2", "m1").await, Verdict::Fresh);
        // (source, id) pairs do not run into each other.
        assert_eq!(one(&d, "s1m", "1").await, Verdict::Fresh);
        let s = d.stats();
        assert_eq!((s.fresh, s.duplicates, s.len), (3, 1, 3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_copies_publish_once() {
        let (d, _) = manual(1000, 4);
        let published = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (d, published) = (d.clone(), published.clone());
                tokio::spawn(async move {
                    let mut r = d.reserve("src", ["same-id"], TTL).await;
                    let v = r.verdict(0).unwrap();
                    if v == Verdict::Fresh {
                        published.fetch_add(1, Ordering::SeqCst);
                        // Slow publish: the others must wait, not answer "duplicate" early.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        r.confirm(0);
                    }
                    v
                })
            })
            .collect();
        let mut verdicts = Vec::new();
        for t in tasks {
            verdicts.push(t.await.unwrap());
        }
        assert_eq!(published.load(Ordering::SeqCst), 1);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Fresh).count(), 1);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Duplicate).count(), 49);
        assert!(d.stats().waits > 0, "the copies should have waited for the first");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn released_id_goes_to_exactly_one_waiter() {
        let (d, _) = manual(1000, 4);
        let mut first = d.reserve("src", ["m"], TTL).await;
        assert_eq!(first.verdict(0), Some(Verdict::Fresh));
        let winners = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (d, winners) = (d.clone(), winners.clone());
                tokio::spawn(async move {
                    let mut r = d.reserve("src", ["m"], TTL).await;
                    let v = r.verdict(0).unwrap();
                    if v == Verdict::Fresh {
                        winners.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        r.confirm(0);
                    }
                    v
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.release(0); // the publish failed: the retry must go through
        let mut verdicts = Vec::new();
        for w in waiters {
            verdicts.push(w.await.unwrap());
        }
        assert_eq!(winners.load(Ordering::SeqCst), 1);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Fresh).count(), 1);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Duplicate).count(), 9);
        assert!(d.stats().waits >= 10, "the copies should have waited for the first");
        assert_eq!(one(&d, "src", "m").await, Verdict::Duplicate);
    }

    #[tokio::test]
    async fn waiter_times_out_in_flight() {
        let clock = Arc::new(ManualClock::new(0));
        let cfg = DedupConfig { wait_timeout: Duration::from_millis(50), ..config(1000, 4) };
        let d = Dedup::with_clock(&cfg, clock).unwrap();
        let held = d.reserve("src", ["a", "b"], TTL).await;
        let started = Instant::now();
        let r = d.reserve("src", ["b", "c"], TTL).await;
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [Verdict::InFlight, Verdict::Fresh]);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(d.stats().in_flight_timeouts, 1);
        drop((r, held));
    }

    #[tokio::test]
    async fn duplicates_within_one_batch() {
        let (d, _) = manual(1000, 4);
        let mut r = d.reserve("src", ["x", "y", "x", "z", "y", "x"], TTL).await;
        use Verdict::*;
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [Fresh, Fresh, Duplicate, Fresh, Duplicate, Duplicate]);
        assert_eq!(r.counts(), VerdictCounts { fresh: 3, duplicate: 3, in_flight: 0, untracked: 0 });
        r.confirm_all();
        drop(r);
        assert_eq!(d.len(), 3);
        assert_eq!(d.stats().duplicates, 3);
    }

    #[tokio::test]
    async fn batch_repeat_of_an_id_in_flight_elsewhere_shares_its_fate() {
        let clock = Arc::new(ManualClock::new(0));
        let cfg = DedupConfig { wait_timeout: Duration::from_millis(30), ..config(1000, 4) };
        let d = Dedup::with_clock(&cfg, clock).unwrap();
        let held = d.reserve("src", ["busy"], TTL).await;
        let r = d.reserve("src", ["busy", "new", "busy"], TTL).await;
        // The repeat neither waits a second time nor claims "duplicate" of an unknown outcome.
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [Verdict::InFlight, Verdict::Fresh, Verdict::InFlight]);
        drop((r, held));
    }

    #[tokio::test]
    async fn ttl_expiry_with_fake_clock() {
        let (d, clock) = manual(1000, 4);
        assert_eq!(one(&d, "src", "m").await, Verdict::Fresh);
        clock.advance(Duration::from_secs(59));
        assert_eq!(one(&d, "src", "m").await, Verdict::Duplicate);
        clock.advance(Duration::from_secs(2));
        // Expired but not swept: the lookup itself must not count it.
        assert_eq!(d.len(), 1);
        assert_eq!(one(&d, "src", "m").await, Verdict::Fresh);
        // Per-source TTL: a longer window passed by the caller.
        let mut r = d.reserve("long", ["m"], Duration::from_secs(3600)).await;
        r.confirm_all();
        drop(r);
        clock.advance(Duration::from_secs(600));
        assert_eq!(d.reserve("long", ["m"], TTL).await.verdict(0), Some(Verdict::Duplicate));
    }

    #[tokio::test]
    async fn guard_drop_releases_unsettled_ids() {
        let (d, _) = manual(1000, 4);
        {
            let mut r = d.reserve("src", ["a", "b", "c", "d"], TTL).await;
            r.confirm(0);
            r.hold(2);
            // b and d dropped unsettled (an early return, a panic unwinding)
        }
        let r = d.reserve("src", ["a", "b", "d"], TTL).await;
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [Verdict::Duplicate, Verdict::Fresh, Verdict::Fresh]);
        drop(r);
        // The held id stays reserved: a retry waits, then is in flight.
        let clock = Arc::new(ManualClock::new(0));
        let cfg = DedupConfig { wait_timeout: Duration::from_millis(20), ..config(1000, 4) };
        let d = Dedup::with_clock(&cfg, clock.clone()).unwrap();
        d.reserve("src", ["c"], TTL).await.hold(0);
        assert_eq!(d.reserve("src", ["c"], TTL).await.verdict(0), Some(Verdict::InFlight));
        // ... until the reservation TTL passes.
        clock.advance(Duration::from_secs(601));
        assert_eq!(d.reserve("src", ["c"], TTL).await.verdict(0), Some(Verdict::Fresh));
    }

    #[tokio::test]
    async fn drop_after_begin_publish_holds_unsettled_ids() {
        let clock = Arc::new(ManualClock::new(0));
        let cfg = DedupConfig { wait_timeout: Duration::from_millis(20), ..config(1000, 4) };
        let d = Dedup::with_clock(&cfg, clock.clone()).unwrap();
        {
            let mut r = d.reserve("src", ["sent", "failed", "unknown"], TTL).await;
            r.begin_publish();
            r.confirm(0);
            r.release(1);
            // "unknown" is dropped unsettled: the request future went away mid-publish.
        }
        let r = d.reserve("src", ["sent", "failed", "unknown"], TTL).await;
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [Verdict::Duplicate, Verdict::Fresh, Verdict::InFlight]);
        drop(r);
        clock.advance(Duration::from_secs(601));
        assert_eq!(d.reserve("src", ["unknown"], TTL).await.verdict(0), Some(Verdict::Fresh));
    }

    #[tokio::test]
    async fn deferred_reservations_are_settled_after_the_request() {
        let clock = Arc::new(ManualClock::new(0));
        let cfg = DedupConfig { wait_timeout: Duration::from_millis(20), ..config(1000, 4) };
        let d = Arc::new(Dedup::with_clock(&cfg, clock.clone()).unwrap());
        let (delivered, failed, unknown) = {
            let mut r = d.reserve("src", ["delivered", "failed", "unknown"], TTL).await;
            r.begin_publish();
            let deferred = (0..3).map(|i| r.defer(i, &d).unwrap()).collect::<Vec<_>>();
            // Settled already: deferring again gives nothing, and confirm is a no-op.
            assert!(r.defer(0, &d).is_none());
            r.confirm(0);
            let mut it = deferred.into_iter();
            (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
        };
        // The request is gone; its ids are still reserved: retries are in flight.
        let r = d.reserve("src", ["delivered", "failed", "unknown"], TTL).await;
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [Verdict::InFlight; 3]);
        drop(r);
        delivered.confirm();
        failed.release();
        drop(unknown);
        let r = d.reserve("src", ["delivered", "failed", "unknown"], TTL).await;
        assert_eq!(r.verdicts().collect::<Vec<_>>(), [Verdict::Duplicate, Verdict::Fresh, Verdict::InFlight]);
        drop(r);
        clock.advance(Duration::from_secs(601));
        assert_eq!(d.reserve("src", ["unknown"], TTL).await.verdict(0), Some(Verdict::Fresh));

        // Another cache's Arc: the id is held, not handed out.
        let other = Arc::new(Dedup::with_clock(&cfg, clock.clone()).unwrap());
        let mut r = d.reserve("src", ["x"], TTL).await;
        assert!(r.defer(0, &other).is_none());
        drop(r);
        assert_eq!(d.reserve("src", ["x"], TTL).await.verdict(0), Some(Verdict::InFlight));
    }

    #[test]
    fn reserve_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let d = Dedup::new(&config(1000, 4)).unwrap();
        let ids = ["a".to_string()];
        let fut = d.reserve("src", ids.iter().map(String::as_str), TTL);
        assert_send(&fut);
    }

    #[tokio::test]
    async fn late_release_does_not_drop_a_newer_reservation() {
        let (d, clock) = manual(1000, 1);
        let mut old = d.reserve("src", ["m"], TTL).await;
        clock.advance(Duration::from_secs(601)); // the first reservation expired
        let mut new = d.reserve("src", ["m"], TTL).await;
        assert_eq!(new.verdict(0), Some(Verdict::Fresh));
        old.release(0);
        // Still reserved by `new`: the stale release matched nothing.
        let key = Dedup::key(&d.source_hasher("src"), "m");
        let v = d.shard(key).lock().map.get(&key).copied().unwrap();
        assert!(!is_confirmed(v));
        new.confirm(0);
        drop((old, new));
        assert_eq!(one(&d, "src", "m").await, Verdict::Duplicate);
    }

    #[tokio::test]
    async fn capacity_bound_holds_and_evicts_closest_to_expiry() {
        let (d, clock) = manual(1000, 4);
        // Long-lived ids first, then many short-lived ones, well past the capacity.
        for chunk in ids("keep", 500).chunks(100) {
            let mut r = d.reserve("src", chunk.iter().map(String::as_str), Duration::from_secs(7200)).await;
            r.confirm_all();
        }
        for chunk in ids("churn", 5000).chunks(100) {
            clock.advance(Duration::from_secs(1));
            let mut r = d.reserve("src", chunk.iter().map(String::as_str), Duration::from_secs(600)).await;
            assert_eq!(r.counts().fresh, chunk.len());
            r.confirm_all();
            assert!(d.len() <= d.capacity(), "{} > {}", d.len(), d.capacity());
        }
        let s = d.stats();
        assert!(s.evictions >= 4000, "evictions {}", s.evictions);
        // The entries closest to expiry went first: the long-lived ones all survived.
        let r = d.reserve("src", ids("keep", 500).iter().map(String::as_str), TTL).await;
        assert_eq!(r.counts().duplicate, 500);
    }

    #[tokio::test]
    async fn full_shard_of_reservations_answers_untracked() {
        let (d, _) = manual(10, 1);
        let held = d.reserve("src", ids("a", 10).iter().map(String::as_str), TTL).await;
        assert_eq!(held.counts().fresh, 10);
        let r = d.reserve("src", ["one-more"], TTL).await;
        assert_eq!(r.verdict(0), Some(Verdict::Untracked));
        assert_eq!(d.len(), 10);
        assert_eq!(d.stats().untracked, 1);
        drop((r, held));
    }

    #[tokio::test]
    async fn table_never_grows_past_its_bound_under_churn() {
        // Inserts and removals at the bound leave tombstones; std's table would double. A share
        // of 7168 fills its 8192-slot table to 7/8, where many removals leave tombstones.
        let clock = Arc::new(ManualClock::new(0));
        let d = Dedup::build_with_shards(&config(2 * 7168, 2), clock.clone(), (1, 2), 2);
        let max_slots: usize = d.shards.iter().map(|s| s.lock().max_slots).sum();
        for round in 0..20 {
            // 4000 new ids a second living 4 s: 16 000 live ids want room in 14 336 slots.
            let batch = ids(&format!("r{round}"), 4000);
            for chunk in batch.chunks(500) {
                let mut r = d.reserve("src", chunk.iter().map(String::as_str), Duration::from_secs(4)).await;
                r.confirm_all();
            }
            clock.advance(Duration::from_secs(1));
            d.sweep_some(1);
            let s = d.stats();
            assert!(s.len <= s.capacity);
            assert!(s.table_slots <= max_slots, "round {round}: {} slots > {max_slots}", s.table_slots);
        }
        let s = d.stats();
        assert!(s.evictions > 0 && s.rebuilds > 0, "{s:?}");
    }

    #[tokio::test]
    async fn sweeper_removes_expired_and_keeps_live() {
        let (d, clock) = manual(10_000, 8);
        let short = ids("short", 300);
        let long = ids("long", 200);
        let mut r = d.reserve("src", short.iter().map(String::as_str), Duration::from_secs(10)).await;
        r.confirm_all();
        drop(r);
        let mut r = d.reserve("src", long.iter().map(String::as_str), Duration::from_secs(1000)).await;
        r.confirm_all();
        drop(r);
        clock.advance(Duration::from_secs(11));
        assert_eq!(d.len(), 500);
        // One shard per call: one call leaves the other shards untouched.
        let first = d.sweep_some(1);
        assert!(first < 300 && d.len() == 500 - first);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = d.clone().spawn_sweeper(Duration::from_millis(80), async move {
            let _ = stop_rx.await;
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(d.len(), 200);
        let r = d.reserve("src", long.iter().map(String::as_str), TTL).await;
        assert_eq!(r.counts().duplicate, 200);
        drop(r);
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), handle).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn snapshot_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup.snapshot");
        let (d, clock) = manual(10_000, 8);
        let mut r = d.reserve("src", ids("short", 100).iter().map(String::as_str), Duration::from_secs(30)).await;
        r.confirm_all();
        drop(r);
        let mut r = d.reserve("src", ids("long", 150).iter().map(String::as_str), Duration::from_secs(3600)).await;
        r.confirm_all();
        drop(r);
        let in_flight = d.reserve("src", ["reserved-only"], TTL).await;
        let report = d.snapshot(&path).unwrap();
        assert_eq!(report.entries, 250);
        assert_eq!(fs::metadata(&path).unwrap().len(), report.bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        drop(in_flight);

        // Restart 60 s later: the short window is over, the long one is not.
        clock.advance(Duration::from_secs(60));
        let (loaded, report) = Dedup::load(&path, &config(10_000, 16), clock.clone()).unwrap();
        assert_eq!(report, LoadReport { found: true, loaded: 150, expired: 100 });
        let r = loaded.reserve("src", ids("long", 150).iter().map(String::as_str), TTL).await;
        assert_eq!(r.counts().duplicate, 150);
        drop(r);
        assert_eq!(loaded.reserve("src", ["short-0"], TTL).await.verdict(0), Some(Verdict::Fresh));
        assert_eq!(loaded.reserve("src", ["reserved-only"], TTL).await.verdict(0), Some(Verdict::Fresh));
        // The remaining time carried over: the long entries expire 3600 s after they were set.
        clock.advance(Duration::from_secs(3600 - 60 + 1));
        assert_eq!(loaded.reserve("src", ["long-0"], TTL).await.verdict(0), Some(Verdict::Fresh));
        assert!(!dir.path().join("dedup.snapshot.tmp").exists());
    }

    #[tokio::test]
    async fn missing_snapshot_is_fine_and_corrupt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup.snapshot");
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let (d, report) = Dedup::load(&path, &config(1000, 4), clock.clone()).unwrap();
        assert_eq!(report, LoadReport::default());
        let mut r = d.reserve("src", ids("m", 50).iter().map(String::as_str), TTL).await;
        r.confirm_all();
        drop(r);
        d.snapshot(&path).unwrap();
        let good = fs::read(&path).unwrap();

        let refused = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            let e = Dedup::load(&path, &config(1000, 4), clock.clone()).unwrap_err();
            assert_eq!(e.code(), "dedup_snapshot_corrupt", "{e}");
            e.to_string()
        };
        let mut flipped = good.clone();
        flipped[HEADER_BYTES as usize + 3] ^= 1;
        assert!(refused(&flipped).contains("checksum mismatch"));
        assert!(refused(&good[..good.len() - 7]).contains("truncated"));
        assert!(refused(b"not a snapshot at all, just some text.........................").contains("not a dedup"));
        let mut version = good.clone();
        version[8] = 9;
        assert!(refused(&version).contains("unsupported version 9"));
        assert!(refused(&[]).contains("truncated"));
        // The intact file still loads.
        fs::write(&path, &good).unwrap();
        assert_eq!(Dedup::load(&path, &config(1000, 4), clock).unwrap().1.loaded, 50);
    }

    #[test]
    fn config_problems_are_reported() {
        assert!(DedupConfig::default().problems().is_empty());
        let bad = DedupConfig {
            capacity: 0,
            shards: 0,
            wait_timeout: Duration::from_secs(9),
            reservation_ttl: Duration::ZERO,
        };
        assert_eq!(bad.problems().len(), 4);
        assert_eq!(Dedup::new(&bad).unwrap_err().code(), "invalid_dedup_config");
        // Small capacities use fewer shards, each with a usable share.
        let d = Dedup::new(&config(1000, 128)).unwrap();
        assert!((4..=8).contains(&d.shards.len()), "{}", d.shards.len());
        assert_eq!(d.shards.iter().map(|s| s.lock().limit).sum::<usize>(), 1000);
    }

    #[test]
    fn shard_count_keeps_tables_at_most_70_percent_full() {
        for capacity in [1000, 14_336, 100_000, 1_000_000, 10_000_000] {
            let n = shard_count(capacity, 128);
            let limit = capacity.div_ceil(n);
            let slots = Map::with_capacity_and_hasher(limit, BuildHasherDefault::default()).capacity();
            // std's usable slots are 7/8 of the allocated ones.
            let fill = limit as f64 / (slots as f64 * 8.0 / 7.0);
            assert!(fill <= 0.70 && fill > 0.5, "capacity {capacity}: {n} shards, fill {fill:.2}");
        }
    }

    #[test]
    fn key_bytes_round_trip() {
        let k = Key::from_hash(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(Key::from_bytes(&k.to_bytes()), k);
        assert_eq!((k.lo(), k.hi()), (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210));
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 20);
    }
}
