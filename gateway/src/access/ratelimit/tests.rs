//! Tests of the rate limiter: GCRA arithmetic, standings and headers, sweeping.

use super::*;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

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
fn keyless_requests_share_the_ip_window() {
    let rl = RateLimiter::<u32>::new();
    let clock = ManualClock::new(Nanos::from_secs(1000));
    let ip = IpLimit { limit: 2, period_s: 60, ipv6_prefix_len: 64 };
    assert!(rl.check_ip(IP1, Some(&ip), clock.now()).allowed);
    assert!(rl.check(&1, &KeyLimits::default(), IP1, Some(&ip), clock.now()).allowed);
    let refused = rl.check_ip(IP1, Some(&ip), clock.now());
    assert!(!refused.allowed);
    assert_eq!(refused.limited_by, Some(WindowKind::Ip));
    assert!(rl.check_ip(IP2, Some(&ip), clock.now()).allowed);
    assert_eq!(rl.check_ip(IP1, None, clock.now()), Decision::UNLIMITED);
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
