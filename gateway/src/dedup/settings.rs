//! Dedup settings and the inputs the cache is built from: the sizing and timing config
//! ([`DedupConfig`], its defaults and its validation), the injectable [`Clock`] (the real
//! [`SystemClock`] and the tests' [`ManualClock`]), and [`DedupError`].
//! Must not: touch the table, the shards, the reservations or the snapshot format; the per-source
//! TTL is not config here (it is passed to each reserve call).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(doc)]
use super::{Dedup, Reservations};

/// Default window: Segment's own dedup window.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default capacity: ids tracked per instance (≈300 MB when full, see the module doc).
pub const DEFAULT_CAPACITY: usize = 10_000_000;
/// Longest TTL accepted; longer ones are clamped (the expiry field has 30 bits of seconds).
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

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
