//! The GCRA arithmetic and the limiter state (two `DashMap`s: key ids and client IP buckets).

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};

use dashmap::mapref::one::RefMut;
use dashmap::DashMap;

use super::{Decision, IpLimit, KeyLimits, Nanos, Standing, Window, WindowKind, NANOS_PER_SEC};

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
        self.decide(Some((key, limits)), ip, ip_limit, now)
    }

    /// Decides a request that has no (valid) key — a missing or unknown write key — against the
    /// client IP's window only, so that floods of bad keys are limited like any other traffic.
    pub fn check_ip(&self, ip: IpAddr, ip_limit: Option<&IpLimit>, now: Nanos) -> Decision {
        self.decide(None, ip, ip_limit, now)
    }

    fn decide(&self, key: Option<(&K, &KeyLimits)>, ip: IpAddr, ip_limit: Option<&IpLimit>, now: Nanos) -> Decision {
        let short = key.and_then(|(_, l)| l.short.as_ref()).map(Gcra::new);
        let medium = key.and_then(|(_, l)| l.medium.as_ref()).map(Gcra::new);
        let per_ip = ip_limit.map(|l| (Gcra::new(&l.window()), ip_bucket(ip, l.ipv6_prefix_len)));
        if short.is_none() && medium.is_none() && per_ip.is_none() {
            return Decision::UNLIMITED;
        }
        let now = now.0;

        // Lock order: key entry, then IP entry (see the module doc).
        let mut key_entry = match key {
            Some((k, _)) if short.is_some() || medium.is_some() => Some(self.key_entry(k)),
            _ => None,
        };
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
