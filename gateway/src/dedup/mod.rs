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
//!
//! # Layout
//! - `settings`: [`DedupConfig`] and its defaults, the [`Clock`]s, [`DedupError`].
//! - `key`: the 128-bit `Key` of an id and the packed value (expiry, state bits).
//! - `shards`: one shard's bounded table — reserve, confirm, release, make room, evict, rebuild.
//! - `cache`: [`Dedup`] itself — building and sizing, hashing, [`Dedup::reserve`] and its
//!   waits, stats, the sweeper — and the per-id [`Verdict`].
//! - `reservation`: one request's [`Reservations`], [`VerdictCounts`] and [`Deferred`].
//! - `snapshot`: the snapshot file ([`Dedup::snapshot`], [`Dedup::load`]).
//! - `tests`: the unit tests.

mod cache;
mod key;
mod reservation;
mod settings;
mod shards;
mod snapshot;
#[cfg(test)]
mod tests;

pub use cache::{Dedup, DedupStats, Verdict};
pub use reservation::{Deferred, Reservations, VerdictCounts};
pub use settings::{Clock, DedupConfig, DedupError, ManualClock, SystemClock, DEFAULT_CAPACITY, DEFAULT_TTL, MAX_TTL};
pub use snapshot::{LoadReport, SnapshotReport};
