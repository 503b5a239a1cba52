//! Rate limiting: per write key, two rolling windows counted in requests (`short`, e.g. per
//! minute, and `medium`, e.g. per hour), plus an optional per-client-IP window; the standing of
//! each window as `X-RateLimit-*` headers; `Retry-After` when a request is refused.
//!
//! Owns: the GCRA arithmetic, the limiter state (two `DashMap`s), the rate-limit config types and
//! their validation, the header names and values, and the injectable monotonic [`Clock`].
//! Must not: know HTTP statuses or build responses (`respond` maps [`RateLimitError`] to 429),
//! read write keys (the caller passes a stable key id, never the secret), log anything, or do I/O.
//!
//! # Algorithm
//! GCRA (the generic cell rate algorithm) keeps one number per window: the *theoretical arrival
//! time* (TAT), the instant at which the window would be fully replenished. A window of `limit`
//! requests per `period` has an emission interval `T = period / limit`. A request at `now` is
//! allowed when `max(TAT, now) + T − now ≤ period`, and then sets `TAT = max(TAT, now) + T`.
//! That is a rolling window with a burst of `limit`, refilling one request every `T`, in O(1)
//! memory per key (16 bytes for both windows) and without timers: a window whose TAT is in the
//! past is simply full, which is also what [`RateLimiter::sweep`] uses to drop idle state.
//!
//! # All windows or none
//! A request counts against a window only if *every* window (short, medium and the client IP)
//! allows it. Both key windows live in one map entry and are decided under that entry's lock;
//! the IP entry is locked while the key entry is still held, always in that order (key map, then
//! IP map; `sweep` never holds both), so there is no lock-order cycle. The choice matters: if a
//! refused request still consumed the other windows, a client hammering a full `short` window
//! would drain its `medium` (hour) budget with requests that were never served, and a noisy
//! neighbour behind one IP could burn a key's budget while being refused by the IP limit.
//!
//! # Standing reported to clients
//! Per window: `remaining` = how many more requests would be allowed right now (after this one,
//! when it was allowed); `reset_s` = seconds until the window is fully replenished (TAT − now,
//! rounded up). The unsuffixed `X-RateLimit-*` headers show the most restrictive window (lowest
//! `remaining`; ties go to the longer `reset_s`), the per-client-IP window included, so a 429
//! caused by the IP limit does not advertise a key window with room left.

mod clock;
mod decision;
mod limiter;
#[cfg(test)]
mod tests;
mod window;

pub use clock::{Clock, ManualClock, MonotonicClock, Nanos};
pub use decision::{Decision, RateLimitError, Standing, WindowKind, EXPOSE_HEADERS, EXPOSE_HEADERS_VALUE};
pub use limiter::{RateLimiter, Swept};
pub use window::{IpLimit, KeyLimits, Window};

const NANOS_PER_SEC: u64 = 1_000_000_000;
