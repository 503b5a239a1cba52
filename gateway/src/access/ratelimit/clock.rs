//! The limiter's clock: monotonic nanoseconds, injectable so tests move time by hand.

use super::NANOS_PER_SEC;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// so the origin is arbitrary (a `u64` of nanoseconds lasts 584 years).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nanos(pub u64);

impl Nanos {
    /// `s` seconds after the origin.
    pub const fn from_secs(s: u64) -> Nanos {
        Nanos(s.saturating_mul(NANOS_PER_SEC))
    }

    /// `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms.saturating_mul(1_000_000))
    }

    /// This point moved forward by `d` (saturating).
    pub fn after(self, d: Duration) -> Nanos {
        Nanos(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
}

/// The limiter's time source: monotonic (never jumps back with the wall clock). Injectable so
/// tests, including the server's integration tests, drive time by hand instead of sleeping.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Nanos;
}

/// The production clock: [`Instant`] since the clock was created (≈20 ns per read, a vDSO call).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock { origin: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        Nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to; shareable (`Arc<ManualClock>`) between a test and the
/// server it drives.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Nanos) -> ManualClock {
        ManualClock { nanos: AtomicU64::new(start.0) }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let step = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self.nanos.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_add(step)));
    }

    /// Sets the clock to `t` (tests only ever move it forward; the limiter tolerates either).
    pub fn set(&self, t: Nanos) {
        self.nanos.store(t.0, Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        Nanos(self.nanos.load(Ordering::Acquire))
    }
}

// ---------------------------------------------------------------------------------------------
