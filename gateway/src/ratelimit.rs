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

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::mapref::one::RefMut;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

const NANOS_PER_SEC: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// A point on a [`Clock`]: nanoseconds since the clock's own origin. Only differences matter,
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
// Config
// ---------------------------------------------------------------------------------------------

/// One rolling window: at most `limit` requests per `period_s` seconds, as a burst of `limit`
/// that refills one request every `period_s / limit` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Requests allowed per period (≥ 1).
    pub limit: u32,
    /// Length of the window in seconds (≥ 1).
    pub period_s: u32,
}

impl Window {
    /// Reports each problem as `at.field: message`.
    pub fn validate(&self, at: &str, bad: &mut dyn FnMut(String)) {
        if self.limit < 1 {
            bad(format!("{at}.limit must be at least 1 (got {}); remove the window to disable it", self.limit));
        }
        if self.period_s < 1 {
            bad(format!("{at}.period_s must be at least 1 (got {})", self.period_s));
        }
    }
}

/// The request limits of one write key (or of a source, which its keys inherit). Each window is
/// optional; with neither, the key is not limited (the per-IP limit may still apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// The short window, e.g. `{ limit = 600, period_s = 60 }`.
    #[serde(default)]
    pub short: Option<Window>,
    /// The medium window, e.g. `{ limit = 5000, period_s = 3600 }`; longer than `short`.
    #[serde(default)]
    pub medium: Option<Window>,
}

impl KeyLimits {
    /// No window: nothing is limited.
    pub const NONE: KeyLimits = KeyLimits { short: None, medium: None };

    /// Each window from `self` when set, else from `parent` (a key inheriting its source's).
    pub fn inherit(self, parent: &KeyLimits) -> KeyLimits {
        KeyLimits { short: self.short.or(parent.short), medium: self.medium.or(parent.medium) }
    }

    /// Reports each problem as `at.window.field: message` (e.g. `at` = `sources[0].rate_limits`).
    pub fn validate(&self, at: &str, bad: &mut dyn FnMut(String)) {
        if let Some(w) = &self.short {
            w.validate(&format!("{at}.short"), bad);
        }
        if let Some(w) = &self.medium {
            w.validate(&format!("{at}.medium"), bad);
        }
        // Swapped windows would label the hour "short" in every response header.
        if let (Some(s), Some(m)) = (&self.short, &self.medium) {
            if m.period_s <= s.period_s {
                bad(format!(
                    "{at}.medium.period_s ({}) must be longer than {at}.short.period_s ({})",
                    m.period_s, s.period_s
                ));
            }
        }
    }

    /// [`KeyLimits::validate`] collected into a list.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.validate(at, &mut |m| out.push(m));
        out
    }
}

/// The per-client-IP limit, shared by every key (default: 120 requests per minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpLimit {
    /// Requests allowed per period (≥ 1).
    #[serde(default = "default_ip_limit")]
    pub limit: u32,
    /// Length of the window in seconds (≥ 1).
    #[serde(default = "default_ip_period_s")]
    pub period_s: u32,
    /// IPv6 clients are counted per prefix of this length (1–128): one subscriber usually holds
    /// a whole /64, so counting per /128 would let a single client rotate addresses freely and
    /// grow the state without bound.
    #[serde(default = "default_ipv6_prefix_len")]
    pub ipv6_prefix_len: u8,
}

fn default_ip_limit() -> u32 {
    120
}
fn default_ip_period_s() -> u32 {
    60
}
fn default_ipv6_prefix_len() -> u8 {
    64
}

impl Default for IpLimit {
    fn default() -> Self {
        IpLimit {
            limit: default_ip_limit(),
            period_s: default_ip_period_s(),
            ipv6_prefix_len: default_ipv6_prefix_len(),
        }
    }
}

impl IpLimit {
    /// The window this limit applies to each client.
    pub fn window(&self) -> Window {
        Window { limit: self.limit, period_s: self.period_s }
    }

    /// Reports each problem as `at.field: message`.
    pub fn validate(&self, at: &str, bad: &mut dyn FnMut(String)) {
        self.window().validate(at, bad);
        if !(1..=128).contains(&self.ipv6_prefix_len) {
            bad(format!("{at}.ipv6_prefix_len must be between 1 and 128 (got {})", self.ipv6_prefix_len));
        }
    }

    /// [`IpLimit::validate`] collected into a list.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.validate(at, &mut |m| out.push(m));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions and headers
// ---------------------------------------------------------------------------------------------

/// Which window a standing or a refusal is about. Also a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// The key's short window.
    Short,
    /// The key's medium window.
    Medium,
    /// The client IP's window.
    Ip,
}

impl WindowKind {
    /// `short`, `medium` or `ip`.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Short => "short",
            WindowKind::Medium => "medium",
            WindowKind::Ip => "ip",
        }
    }
}

/// The standing of one window after a decision, in `X-RateLimit-*` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The window's configured limit.
    pub limit: u32,
    /// Requests that would be allowed right now (after this one, if it was allowed).
    pub remaining: u32,
    /// Seconds until the window is fully replenished, rounded up (0 when it already is).
    pub reset_s: u64,
}

/// The outcome of [`RateLimiter::check`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed. When false, no window was charged.
    pub allowed: bool,
    /// When refused: seconds (≥ 1, rounded up) until every refusing window would allow it.
    pub retry_after_s: Option<u64>,
    /// When refused: the window that made the client wait longest (a bounded metric label).
    pub limited_by: Option<WindowKind>,
    /// The key's short window, when configured.
    pub short: Option<Standing>,
    /// The key's medium window, when configured.
    pub medium: Option<Standing>,
    /// The client's IP window, when configured.
    pub ip: Option<Standing>,
}

/// A refused request. `respond` maps it to 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// A window refused the request; nothing was charged.
    #[error("rate limit exceeded ({} window); retry after {retry_after_s} s", .window.as_str())]
    Limited { window: WindowKind, retry_after_s: u64 },
}

impl RateLimitError {
    /// Every code [`RateLimitError::code`] returns.
    pub const CODES: &'static [&'static str] = &["rate_limited"];

    /// The stable code in the error body and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            RateLimitError::Limited { .. } => "rate_limited",
        }
    }

    /// One value of every variant, for the tests that hold `code` against
    /// [`RateLimitError::CODES`].
    #[cfg(test)]
    pub(crate) fn samples() -> Vec<RateLimitError> {
        let all = vec![RateLimitError::Limited { window: WindowKind::Short, retry_after_s: 1 }];
        // No `_` arm: a new variant does not compile until it is named here (and added above).
        all.iter().for_each(|e| match e {
            RateLimitError::Limited { .. } => {}
        });
        all
    }

    /// The `Retry-After` value in seconds.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            RateLimitError::Limited { retry_after_s, .. } => *retry_after_s,
        }
    }
}

/// Every header [`Decision::headers`] can emit, for `Access-Control-Expose-Headers` (browsers
/// hide response headers from scripts unless they are listed there).
pub const EXPOSE_HEADERS: [&str; 10] = [
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Limit-short",
    "X-RateLimit-Remaining-short",
    "X-RateLimit-Reset-short",
    "X-RateLimit-Limit-medium",
    "X-RateLimit-Remaining-medium",
    "X-RateLimit-Reset-medium",
    "Retry-After",
];

/// [`EXPOSE_HEADERS`] as one header value.
pub const EXPOSE_HEADERS_VALUE: &str = "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, \
     X-RateLimit-Limit-short, X-RateLimit-Remaining-short, X-RateLimit-Reset-short, \
     X-RateLimit-Limit-medium, X-RateLimit-Remaining-medium, X-RateLimit-Reset-medium, Retry-After";

impl Decision {
    /// A decision with no window configured: allowed, no headers.
    pub const UNLIMITED: Decision =
        Decision { allowed: true, retry_after_s: None, limited_by: None, short: None, medium: None, ip: None };

    /// `Err` when refused, for `?` in the handler.
    pub fn result(&self) -> Result<(), RateLimitError> {
        match (self.allowed, self.limited_by) {
            (false, Some(window)) => {
                Err(RateLimitError::Limited { window, retry_after_s: self.retry_after_s.unwrap_or(1) })
            }
            _ => Ok(()),
        }
    }

    /// The most restrictive window (lowest `remaining`, ties to the longer `reset_s`; short
    /// before medium before IP when still tied): what the unsuffixed headers show.
    pub fn headline(&self) -> Option<Standing> {
        let mut best: Option<Standing> = None;
        for s in [self.short, self.medium, self.ip].into_iter().flatten() {
            best = match best {
                Some(b)
                    if (b.remaining, std::cmp::Reverse(b.reset_s)) <= (s.remaining, std::cmp::Reverse(s.reset_s)) =>
                {
                    Some(b)
                }
                _ => Some(s),
            };
        }
        best
    }

    /// Calls `f` with each header name and its integer value, in [`EXPOSE_HEADERS`] order,
    /// without allocating (e.g. into `http::HeaderValue::from(u64)`).
    pub fn for_each_header(&self, mut f: impl FnMut(&'static str, u64)) {
        if let Some(h) = self.headline() {
            f("X-RateLimit-Limit", u64::from(h.limit));
            f("X-RateLimit-Remaining", u64::from(h.remaining));
            f("X-RateLimit-Reset", h.reset_s);
        }
        if let Some(s) = self.short {
            f("X-RateLimit-Limit-short", u64::from(s.limit));
            f("X-RateLimit-Remaining-short", u64::from(s.remaining));
            f("X-RateLimit-Reset-short", s.reset_s);
        }
        if let Some(m) = self.medium {
            f("X-RateLimit-Limit-medium", u64::from(m.limit));
            f("X-RateLimit-Remaining-medium", u64::from(m.remaining));
            f("X-RateLimit-Reset-medium", m.reset_s);
        }
        if !self.allowed {
            f("Retry-After", self.retry_after_s.unwrap_or(1).max(1));
        }
    }

    /// The headers as `(name, value)` pairs; empty when no window is configured.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(EXPOSE_HEADERS.len());
        self.for_each_header(|name, v| out.push((name, v.to_string())));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// GCRA
// ---------------------------------------------------------------------------------------------

/// A window in nanoseconds. Built per check: a division per window, cheaper than caching and
/// invalidating on config reloads.
#[derive(Clone, Copy)]
struct Gcra {
    limit: u32,
    period: u64,
    /// Emission interval `period / limit`, rounded down so `limit` requests always fit.
    interval: u64,
}

/// What one window says about one request. Standings are derived only for the outcome that
/// happened (each costs a division).
#[derive(Clone, Copy)]
struct Verdict {
    gcra: Gcra,
    ok: bool,
    /// How far the window is from fully replenished before this request, in nanoseconds.
    backlog: u64,
    /// The same after this request, if it is charged.
    after: u64,
}

impl Verdict {
    /// Nanoseconds until this window would allow the request (0 when `ok`).
    fn wait(&self) -> u64 {
        self.after.saturating_sub(self.gcra.period)
    }

    fn standing(&self, charged: bool) -> Standing {
        self.gcra.standing(if charged { self.after } else { self.backlog })
    }
}

impl Gcra {
    fn new(w: &Window) -> Gcra {
        // Validation refuses 0; clamping keeps a bad value from dividing by zero here.
        let limit = w.limit.max(1);
        let period = u64::from(w.period_s.max(1)) * NANOS_PER_SEC;
        Gcra { limit, period, interval: (period / u64::from(limit)).max(1) }
    }

    fn judge(self, tat: u64, now: u64) -> Verdict {
        let backlog = tat.saturating_sub(now);
        let after = backlog.saturating_add(self.interval);
        Verdict { gcra: self, ok: after <= self.period, backlog, after }
    }

    fn standing(&self, backlog: u64) -> Standing {
        let room = self.period.saturating_sub(backlog) / self.interval;
        Standing {
            limit: self.limit,
            remaining: u32::try_from(room).unwrap_or(u32::MAX).min(self.limit),
            reset_s: backlog.div_ceil(NANOS_PER_SEC),
        }
    }
}

/// The bucket a client IP is counted in: IPv4 (incl. IPv4-mapped IPv6) per address, IPv6 per
/// `prefix_len` prefix.
fn ip_bucket(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let keep = u32::from(prefix_len.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Limiter
// ---------------------------------------------------------------------------------------------

/// TATs of a key's windows: `[short, medium]`, nanoseconds on the limiter's clock.
type KeyTats = [u64; 2];

/// How much [`RateLimiter::sweep`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Key entries dropped.
    pub keys: usize,
    /// Client IP entries dropped.
    pub ips: usize,
}

/// The limiter state: one entry per key id and per client IP bucket that has been seen and is
/// not yet fully replenished. `K` is a stable, non-secret key id: e.g. `Arc<str>` of
/// `"source_id/label"`, or an index. State survives config reloads: new limits apply to the
/// stored TATs at once.
pub struct RateLimiter<K> {
    keys: DashMap<K, KeyTats>,
    ips: DashMap<IpAddr, u64>,
}

impl<K: Eq + Hash + Clone> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter::new()
    }
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// An empty limiter: every window starts full.
    pub fn new() -> RateLimiter<K> {
        RateLimiter { keys: DashMap::new(), ips: DashMap::new() }
    }

    /// Decides one request of `key` from `ip` at `now`, and charges every window only when all
    /// of them allow it. `ip_limit: None` disables the per-IP window.
    pub fn check(&self, key: &K, limits: &KeyLimits, ip: IpAddr, ip_limit: Option<&IpLimit>, now: Nanos) -> Decision {
        let short = limits.short.as_ref().map(Gcra::new);
        let medium = limits.medium.as_ref().map(Gcra::new);
        let per_ip = ip_limit.map(|l| (Gcra::new(&l.window()), ip_bucket(ip, l.ipv6_prefix_len)));
        if short.is_none() && medium.is_none() && per_ip.is_none() {
            return Decision::UNLIMITED;
        }
        let now = now.0;

        // Lock order: key entry, then IP entry (see the module doc).
        let mut key_entry = if short.is_some() || medium.is_some() { Some(self.key_entry(key)) } else { None };
        let tats = key_entry.as_ref().map(|e| *e.value()).unwrap_or_default();
        let v_short = short.map(|g| g.judge(tats[0], now));
        let v_medium = medium.map(|g| g.judge(tats[1], now));
        let mut ip_entry = per_ip.map(|(_, bucket)| self.ip_entry(bucket));
        let v_ip = per_ip.map(|(g, _)| g.judge(ip_entry.as_ref().map(|e| *e.value()).unwrap_or(0), now));

        let verdicts = [(WindowKind::Short, v_short), (WindowKind::Medium, v_medium), (WindowKind::Ip, v_ip)];
        let allowed = verdicts.iter().all(|(_, v)| v.is_none_or(|v| v.ok));
        if allowed {
            if let Some(e) = key_entry.as_mut() {
                let t = e.value_mut();
                // New TAT = max(TAT, now) + T = now + after.
                if let Some(v) = v_short {
                    t[0] = now.saturating_add(v.after);
                }
                if let Some(v) = v_medium {
                    t[1] = now.saturating_add(v.after);
                }
            }
            if let (Some(e), Some(v)) = (ip_entry.as_mut(), v_ip) {
                *e.value_mut() = now.saturating_add(v.after);
            }
        }
        drop(ip_entry);
        drop(key_entry);

        let standing = |v: Option<Verdict>| v.map(|v| v.standing(allowed));
        let (retry_after_s, limited_by) = if allowed {
            (None, None)
        } else {
            // The longest wait among the refusing windows: only then do all of them allow it.
            let worst = verdicts.iter().filter_map(|(kind, v)| v.filter(|v| !v.ok).map(|v| (v.wait(), *kind))).fold(
                None,
                |acc: Option<(u64, WindowKind)>, (w, k)| match acc {
                    Some((aw, _)) if aw >= w => acc,
                    _ => Some((w, k)),
                },
            );
            match worst {
                Some((wait, kind)) => (Some(wait.div_ceil(NANOS_PER_SEC).max(1)), Some(kind)),
                None => (Some(1), None),
            }
        };
        Decision {
            allowed,
            retry_after_s,
            limited_by,
            short: standing(v_short),
            medium: standing(v_medium),
            ip: standing(v_ip),
        }
    }

    /// Drops every key and IP whose windows are all fully replenished at `now`: forgetting them
    /// changes no future decision (a missing entry is a full window). Run it periodically (e.g.
    /// every minute) so per-IP state does not grow forever. Takes each shard's write lock in
    /// turn, one map at a time.
    pub fn sweep(&self, now: Nanos) -> Swept {
        let mut swept = Swept::default();
        self.keys.retain(|_, tats| {
            let keep = tats.iter().any(|&t| t > now.0);
            swept.keys += usize::from(!keep);
            keep
        });
        self.ips.retain(|_, tat| {
            let keep = *tat > now.0;
            swept.ips += usize::from(!keep);
            keep
        });
        swept
    }

    /// Keys with state (a gauge for `/metrics`).
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }

    /// Client IP buckets with state (a gauge for `/metrics`).
    pub fn tracked_ips(&self) -> usize {
        self.ips.len()
    }

    fn key_entry(&self, key: &K) -> RefMut<'_, K, KeyTats> {
        // `get_mut` first: `entry` needs an owned key, i.e. a clone on every request.
        match self.keys.get_mut(key) {
            Some(e) => e,
            None => self.keys.entry(key.clone()).or_default(),
        }
    }

    fn ip_entry(&self, bucket: IpAddr) -> RefMut<'_, IpAddr, u64> {
        self.ips.entry(bucket).or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    const IP1: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));

    fn w(limit: u32, period_s: u32) -> Window {
        Window { limit, period_s }
    }

    fn short(limit: u32, period_s: u32) -> KeyLimits {
        KeyLimits { short: Some(w(limit, period_s)), medium: None }
    }

    fn st(limit: u32, remaining: u32, reset_s: u64) -> Option<Standing> {
        Some(Standing { limit, remaining, reset_s })
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn short_window_exact_standing_and_retry_after() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos::from_secs(1000));
        let lim = short(3, 60); // T = 20 s
        let mut seen = Vec::new();
        for _ in 0..3 {
            let d = rl.check(&1, &lim, IP1, None, clock.now());
            assert!(d.allowed);
            assert_eq!(d.retry_after_s, None);
            seen.push(d.short.unwrap());
        }
        assert_eq!(
            seen,
            vec![
                Standing { limit: 3, remaining: 2, reset_s: 20 },
                Standing { limit: 3, remaining: 1, reset_s: 40 },
                Standing { limit: 3, remaining: 0, reset_s: 60 },
            ]
        );
        let d = rl.check(&1, &lim, IP1, None, clock.now());
        assert!(!d.allowed);
        assert_eq!(d.retry_after_s, Some(20));
        assert_eq!(d.limited_by, Some(WindowKind::Short));
        assert_eq!(d.short, st(3, 0, 60));
        assert_eq!(d.result(), Err(RateLimitError::Limited { window: WindowKind::Short, retry_after_s: 20 }));
        assert_eq!(d.result().unwrap_err().code(), "rate_limited");
        let h = d.headers();
        let expected: Vec<(&str, String)> = vec![
            ("X-RateLimit-Limit", "3".into()),
            ("X-RateLimit-Remaining", "0".into()),
            ("X-RateLimit-Reset", "60".into()),
            ("X-RateLimit-Limit-short", "3".into()),
            ("X-RateLimit-Remaining-short", "0".into()),
            ("X-RateLimit-Reset-short", "60".into()),
            ("Retry-After", "20".into()),
        ];
        assert_eq!(h, expected);

        // Half a second before the retry time: still refused, Retry-After rounds up to 1.
        clock.advance(Duration::from_millis(19_500));
        let d = rl.check(&1, &lim, IP1, None, clock.now());
        assert!(!d.allowed);
        assert_eq!(d.retry_after_s, Some(1));
        assert_eq!(d.short, st(3, 0, 41)); // 40.5 s backlog, rounded up
                                           // At exactly Retry-After: allowed again, and the window is full again.
        clock.advance(Duration::from_millis(500));
        let d = rl.check(&1, &lim, IP1, None, clock.now());
        assert!(d.allowed);
        assert_eq!(d.short, st(3, 0, 60));
    }

    #[test]
    fn refused_requests_do_not_consume() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos(0));
        let lim = short(2, 10); // T = 5 s
        assert!(rl.check(&7, &lim, IP1, None, clock.now()).allowed);
        assert!(rl.check(&7, &lim, IP1, None, clock.now()).allowed);
        for _ in 0..100 {
            assert_eq!(rl.check(&7, &lim, IP1, None, clock.now()).retry_after_s, Some(5));
        }
        clock.advance(Duration::from_secs(5));
        let d = rl.check(&7, &lim, IP1, None, clock.now());
        assert!(d.allowed, "the hammering must not have pushed the TAT further");
        assert_eq!(d.short, st(2, 0, 10));
    }

    #[test]
    fn replenishes_one_request_per_interval() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos(0));
        let lim = short(3, 60);
        for _ in 0..3 {
            assert!(rl.check(&1, &lim, IP1, None, clock.now()).allowed);
        }
        clock.advance(Duration::from_secs(20));
        let d = rl.check(&1, &lim, IP1, None, clock.now());
        assert!(d.allowed);
        assert_eq!(d.short, st(3, 0, 60));
        clock.advance(Duration::from_secs(50)); // backlog 10 s: two requests of room
        let d = rl.check(&1, &lim, IP1, None, clock.now());
        assert_eq!(d.short, st(3, 1, 30));
        clock.advance(Duration::from_secs(3600)); // long idle: full burst again, not more
        for expected in [2, 1, 0] {
            assert_eq!(rl.check(&1, &lim, IP1, None, clock.now()).short.unwrap().remaining, expected);
        }
        assert!(!rl.check(&1, &lim, IP1, None, clock.now()).allowed);
    }

    #[test]
    fn medium_window_trips_while_short_is_fine() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos(0));
        // short 10/min (T = 6 s), medium 4/hour (T = 900 s).
        let lim = KeyLimits { short: Some(w(10, 60)), medium: Some(w(4, 3600)) };
        let mut last = None;
        for i in 0..4u32 {
            let d = rl.check(&1, &lim, IP1, None, clock.now());
            assert!(d.allowed);
            assert_eq!(d.medium.unwrap().remaining, 3 - i);
            last = Some(d);
            clock.advance(Duration::from_secs(10));
        }
        let d = last.unwrap();
        // After the 4th (t = 30 s): short backlog 6 s → 9 left; medium TAT 3600 s → 0 left.
        assert_eq!(d.short, st(10, 9, 6));
        assert_eq!(d.medium, st(4, 0, 3570));
        let h = d.headers();
        assert_eq!(header(&h, "X-RateLimit-Limit"), Some("4"), "the headline is the most restrictive window");
        assert_eq!(header(&h, "X-RateLimit-Remaining"), Some("0"));
        assert_eq!(header(&h, "X-RateLimit-Reset"), Some("3570"));
        assert_eq!(header(&h, "X-RateLimit-Remaining-short"), Some("9"));
        assert_eq!(header(&h, "X-RateLimit-Limit-medium"), Some("4"));
        assert_eq!(header(&h, "X-RateLimit-Remaining-medium"), Some("0"));
        assert_eq!(header(&h, "X-RateLimit-Reset-medium"), Some("3570"));
        assert_eq!(header(&h, "Retry-After"), None);

        // t = 40 s: short has room, medium refuses. Medium TAT = 3600 s, wait = 3600 + 900 − 3600 − 40.
        let d = rl.check(&1, &lim, IP1, None, clock.now());
        assert!(!d.allowed);
        assert_eq!(d.limited_by, Some(WindowKind::Medium));
        assert_eq!(d.retry_after_s, Some(860));
        assert_eq!(d.short, st(10, 10, 0), "the refused request did not charge the short window");
        assert_eq!(d.medium, st(4, 0, 3560));
        assert_eq!(header(&d.headers(), "Retry-After"), Some("860"));

        clock.advance(Duration::from_secs(860));
        assert!(rl.check(&1, &lim, IP1, None, clock.now()).allowed);
    }

    #[test]
    fn short_refusal_does_not_charge_medium() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos(0));
        let lim = KeyLimits { short: Some(w(2, 60)), medium: Some(w(100, 3600)) };
        assert!(rl.check(&1, &lim, IP1, None, clock.now()).allowed);
        assert!(rl.check(&1, &lim, IP1, None, clock.now()).allowed);
        for _ in 0..50 {
            assert!(!rl.check(&1, &lim, IP1, None, clock.now()).allowed);
        }
        clock.advance(Duration::from_secs(30));
        let d = rl.check(&1, &lim, IP1, None, clock.now());
        assert!(d.allowed);
        // Three charges of 36 s each, minus 30 s elapsed: 78 s backlog → 97 left.
        assert_eq!(d.medium, st(100, 97, 78));
    }

    #[test]
    fn per_ip_limit_is_independent_of_keys() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos(0));
        let ip_limit = IpLimit { limit: 2, period_s: 60, ipv6_prefix_len: 64 };
        let generous = short(1000, 60);
        // Two different keys from one IP share the IP's budget.
        let d = rl.check(&1, &generous, IP1, Some(&ip_limit), clock.now());
        assert!(d.allowed);
        assert_eq!(d.ip, st(2, 1, 30));
        assert!(rl.check(&2, &generous, IP1, Some(&ip_limit), clock.now()).allowed);
        let d = rl.check(&3, &KeyLimits::NONE, IP1, Some(&ip_limit), clock.now());
        assert!(!d.allowed);
        assert_eq!(d.limited_by, Some(WindowKind::Ip));
        assert_eq!(d.retry_after_s, Some(30));
        // The headline follows the IP window; no per-window key headers for a key without limits.
        let h = d.headers();
        assert_eq!(header(&h, "X-RateLimit-Limit"), Some("2"));
        assert_eq!(header(&h, "X-RateLimit-Remaining"), Some("0"));
        assert_eq!(header(&h, "X-RateLimit-Reset"), Some("60"));
        assert_eq!(header(&h, "X-RateLimit-Limit-short"), None);
        assert_eq!(header(&h, "Retry-After"), Some("30"));
        // A refused-by-IP request does not charge the key.
        let d = rl.check(&1, &generous, IP1, Some(&ip_limit), clock.now());
        assert!(!d.allowed);
        assert_eq!(d.short, st(1000, 999, 1), "key 1 was charged once only");
        // Another IP, same key: unaffected.
        let d = rl.check(&1, &generous, IP2, Some(&ip_limit), clock.now());
        assert!(d.allowed);
        assert_eq!(d.ip, st(2, 1, 30));
        // Without the IP limit the key's own window is all that counts.
        assert!(rl.check(&1, &generous, IP1, None, clock.now()).allowed);
    }

    #[test]
    fn ipv6_counted_per_prefix_and_mapped_v4_as_v4() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos(0));
        let ip_limit = IpLimit { limit: 1, period_s: 60, ipv6_prefix_len: 64 };
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(rl.check(&1, &KeyLimits::NONE, a, Some(&ip_limit), clock.now()).allowed);
        assert!(!rl.check(&1, &KeyLimits::NONE, b, Some(&ip_limit), clock.now()).allowed, "same /64");
        assert!(rl.check(&1, &KeyLimits::NONE, c, Some(&ip_limit), clock.now()).allowed, "other /64");
        let mapped: IpAddr = "::ffff:203.0.113.1".parse().unwrap();
        assert!(rl.check(&1, &KeyLimits::NONE, IP1, Some(&ip_limit), clock.now()).allowed);
        assert!(!rl.check(&1, &KeyLimits::NONE, mapped, Some(&ip_limit), clock.now()).allowed);
        let full = IpLimit { ipv6_prefix_len: 128, ..ip_limit };
        assert!(rl.check(&1, &KeyLimits::NONE, b, Some(&full), clock.now()).allowed);
    }

    #[test]
    fn unlimited_has_no_headers_and_no_state() {
        let rl = RateLimiter::<u32>::new();
        let d = rl.check(&1, &KeyLimits::NONE, IP1, None, Nanos(0));
        assert_eq!(d, Decision::UNLIMITED);
        assert!(d.headers().is_empty());
        assert_eq!((rl.tracked_keys(), rl.tracked_ips()), (0, 0));
    }

    #[test]
    fn sweep_drops_only_replenished_state() {
        let rl = RateLimiter::<Arc<str>>::new();
        let clock = ManualClock::new(Nanos(0));
        let ip_limit = IpLimit { limit: 10, period_s: 10, ipv6_prefix_len: 64 }; // T = 1 s
        let a: Arc<str> = Arc::from("src/a");
        let b: Arc<str> = Arc::from("src/b");
        assert!(rl.check(&a, &short(2, 10), IP1, Some(&ip_limit), clock.now()).allowed); // TAT 5 s
        let b_limits = KeyLimits { short: None, medium: Some(w(2, 100)) };
        assert!(rl.check(&b, &b_limits, IP2, Some(&ip_limit), clock.now()).allowed); // TAT 50 s
        assert_eq!((rl.tracked_keys(), rl.tracked_ips()), (2, 2));
        assert_eq!(rl.sweep(clock.now()), Swept { keys: 0, ips: 0 });
        clock.advance(Duration::from_secs(5));
        assert_eq!(rl.sweep(clock.now()), Swept { keys: 1, ips: 2 });
        assert_eq!((rl.tracked_keys(), rl.tracked_ips()), (1, 0));
        // b's medium window is still draining: its state must survive.
        let d = rl.check(&b, &KeyLimits { short: None, medium: Some(w(2, 100)) }, IP2, None, clock.now());
        assert_eq!(d.medium, st(2, 0, 95));
        clock.advance(Duration::from_secs(95));
        assert_eq!(rl.sweep(clock.now()), Swept { keys: 1, ips: 0 });
        assert_eq!(rl.tracked_keys(), 0);
        // A swept key starts from a full window.
        assert_eq!(rl.check(&a, &short(2, 10), IP1, None, clock.now()).short, st(2, 1, 5));
    }

    #[test]
    fn tightened_limits_apply_to_existing_state() {
        let rl = RateLimiter::<u32>::new();
        let clock = ManualClock::new(Nanos(0));
        for _ in 0..5 {
            assert!(rl.check(&1, &short(100, 100), IP1, None, clock.now()).allowed);
            // TAT 5 s
        }
        // Reloaded to 2 per 10 s (T = 5 s): backlog 5 s + 5 s fits exactly once more.
        let d = rl.check(&1, &short(2, 10), IP1, None, clock.now());
        assert!(d.allowed);
        assert_eq!(d.short, st(2, 0, 10));
        assert_eq!(rl.check(&1, &short(2, 10), IP1, None, clock.now()).retry_after_s, Some(5));
    }

    #[test]
    fn uneven_interval_allows_exactly_the_limit() {
        // 7 per minute: T is not a whole number of nanoseconds.
        let rl = RateLimiter::<u32>::new();
        let lim = short(7, 60);
        let allowed = (0..20).filter(|_| rl.check(&1, &lim, IP1, None, Nanos(0)).allowed).count();
        assert_eq!(allowed, 7);
    }

    #[test]
    fn headline_tie_prefers_longer_reset() {
        let d = Decision {
            allowed: true,
            retry_after_s: None,
            limited_by: None,
            short: st(10, 3, 5),
            medium: st(100, 3, 900),
            ip: st(120, 50, 10),
        };
        assert_eq!(d.headline(), st(100, 3, 900));
        let names: Vec<&str> = d.headers().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, EXPOSE_HEADERS[..9].to_vec());
        let joined = EXPOSE_HEADERS.join(", ");
        assert_eq!(EXPOSE_HEADERS_VALUE, joined);
    }

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_fields() {
        let k: KeyLimits =
            serde_json::from_str(r#"{"short":{"limit":600,"period_s":60},"medium":{"limit":5000,"period_s":3600}}"#)
                .unwrap();
        assert_eq!(k.short, Some(w(600, 60)));
        assert!(k.problems("rate_limits").is_empty());
        let none: KeyLimits = serde_json::from_str("{}").unwrap();
        assert_eq!(none, KeyLimits::NONE);
        assert!(serde_json::from_str::<KeyLimits>(r#"{"shrot":{"limit":1,"period_s":1}}"#).is_err());
        assert!(serde_json::from_str::<Window>(r#"{"limit":1,"period_s":1,"burst":3}"#).is_err());
        let ip: IpLimit = serde_json::from_str("{}").unwrap();
        assert_eq!(ip, IpLimit { limit: 120, period_s: 60, ipv6_prefix_len: 64 });
        assert_eq!(ip, IpLimit::default());
        assert!(ip.problems("rate_limits.per_ip").is_empty());
        // The usage API shows the settings in the same shape as the config.
        assert_eq!(
            serde_json::to_value(KeyLimits { short: Some(w(600, 60)), medium: None }).unwrap(),
            serde_json::json!({"short": {"limit": 600, "period_s": 60}, "medium": null})
        );
    }

    #[test]
    fn validation_names_each_problem() {
        let k = KeyLimits { short: Some(w(0, 60)), medium: Some(w(10, 0)) };
        assert_eq!(
            k.problems("sources[1].rate_limits"),
            vec![
                "sources[1].rate_limits.short.limit must be at least 1 (got 0); remove the window to disable it",
                "sources[1].rate_limits.medium.period_s must be at least 1 (got 0)",
                "sources[1].rate_limits.medium.period_s (0) must be longer than sources[1].rate_limits.short.period_s (60)",
            ]
        );
        let ip = IpLimit { limit: 0, period_s: 60, ipv6_prefix_len: 0 };
        assert_eq!(
            ip.problems("rate_limits.per_ip"),
            vec![
                "rate_limits.per_ip.limit must be at least 1 (got 0); remove the window to disable it",
                "rate_limits.per_ip.ipv6_prefix_len must be between 1 and 128 (got 0)",
            ]
        );
    }

    #[test]
    fn inherit_takes_each_window_from_the_source_when_unset() {
        let source = KeyLimits { short: Some(w(10, 60)), medium: Some(w(100, 3600)) };
        let key = KeyLimits { short: Some(w(5, 60)), medium: None };
        assert_eq!(key.inherit(&source), KeyLimits { short: Some(w(5, 60)), medium: Some(w(100, 3600)) });
        assert_eq!(KeyLimits::NONE.inherit(&source), source);
    }

    #[test]
    fn manual_and_monotonic_clocks() {
        let c = ManualClock::new(Nanos::from_millis(1500));
        c.advance(Duration::from_millis(500));
        assert_eq!(c.now(), Nanos::from_secs(2));
        c.set(Nanos(7));
        assert_eq!(c.now(), Nanos(7));
        assert_eq!(Nanos(1).after(Duration::from_nanos(2)), Nanos(3));
        let m = MonotonicClock::new();
        let a = m.now();
        let b = m.now();
        assert!(b >= a);
    }

    #[test]
    fn concurrent_checks_never_exceed_the_limit() {
        let rl = Arc::new(RateLimiter::<u32>::new());
        let lim = KeyLimits { short: Some(w(500, 60)), medium: Some(w(800, 3600)) };
        let ip_limit = IpLimit { limit: 10_000, period_s: 60, ipv6_prefix_len: 64 };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let rl = rl.clone();
                std::thread::spawn(move || {
                    (0..400).filter(|_| rl.check(&1, &lim, IP1, Some(&ip_limit), Nanos(0)).allowed).count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 500);
        // The IP window was charged exactly for the allowed requests.
        let d = rl.check(&2, &KeyLimits::NONE, IP1, Some(&ip_limit), Nanos(0));
        assert_eq!(d.ip.unwrap().remaining, 10_000 - 501);
    }
}
