//! Rate limiting and quota accounting per request, with limits that never trigger: what the
//! issue-6 controls add to every ingest request (budget: ≤ 5 % of a 100-event batch request,
//! ≈240 µs of CPU, i.e. ≤ 12 µs). Run: `cargo bench -p gateway-benches --bench ratelimit`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::access::quota::{EventCounts, Quotas};
use gateway::access::ratelimit::{Clock, IpLimit, KeyLimits, MonotonicClock, RateLimiter, Window};
use time::OffsetDateTime;

/// Production-like windows, sized so nothing is ever refused during the bench.
fn generous() -> (KeyLimits, IpLimit) {
    let limits = KeyLimits {
        short: Some(Window { limit: u32::MAX, period_s: 60 }),
        medium: Some(Window { limit: u32::MAX, period_s: 3600 }),
    };
    (limits, IpLimit { limit: u32::MAX, period_s: 60, ipv6_prefix_len: 64 })
}

fn keys(n: usize) -> Vec<(Arc<str>, IpAddr)> {
    (0..n)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32));
            (Arc::from(format!("source-{}/key-{i}", i % 100)), ip)
        })
        .collect()
}

fn check(c: &mut Criterion) {
    let clock = MonotonicClock::new();
    let (limits, ip_limit) = generous();
    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));
    for n in [1usize, 10_000] {
        let ks = keys(n);
        let rl = RateLimiter::<Arc<str>>::new();
        for (k, ip) in &ks {
            assert!(rl.check(k, &limits, *ip, Some(&ip_limit), clock.now()).allowed);
        }
        let mut i = 0usize;
        g.bench_function(format!("check/keys={n}/key+ip"), |b| {
            b.iter(|| {
                let (k, ip) = &ks[i % n];
                i = i.wrapping_add(1);
                let d = rl.check(black_box(k), &limits, *ip, Some(&ip_limit), clock.now());
                assert!(d.allowed);
                d
            })
        });
        g.bench_function(format!("check/keys={n}/key-only"), |b| {
            b.iter(|| {
                let (k, ip) = &ks[i % n];
                i = i.wrapping_add(1);
                rl.check(black_box(k), &limits, *ip, None, clock.now())
            })
        });
        g.bench_function(format!("check+headers/keys={n}/key+ip"), |b| {
            b.iter(|| {
                let (k, ip) = &ks[i % n];
                i = i.wrapping_add(1);
                rl.check(black_box(k), &limits, *ip, Some(&ip_limit), clock.now()).headers()
            })
        });
    }
    // An index as the key id instead of a string label: no key bytes to hash or compare.
    let n = 10_000usize;
    let ks = keys(n);
    let rl = RateLimiter::<u32>::new();
    for (i, (_, ip)) in ks.iter().enumerate() {
        assert!(rl.check(&(i as u32), &limits, *ip, Some(&ip_limit), clock.now()).allowed);
    }
    let mut i = 0usize;
    g.bench_function(format!("check/keys={n}/u32-id/key+ip"), |b| {
        b.iter(|| {
            let ip = ks[i % n].1;
            let id = (i % n) as u32;
            i = i.wrapping_add(1);
            rl.check(black_box(&id), &limits, ip, Some(&ip_limit), clock.now())
        })
    });

    let rl = RateLimiter::<Arc<str>>::new();
    let k: Arc<str> = Arc::from("source/key");
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    g.bench_function("check/unlimited", |b| {
        b.iter(|| rl.check(black_box(&k), &KeyLimits::NONE, ip, None, clock.now()))
    });
    g.bench_function("clock/monotonic_now", |b| b.iter(|| clock.now()));
    let d = rl.check(&k, &limits, ip, Some(&ip_limit), clock.now());
    g.bench_function("headers", |b| b.iter(|| black_box(&d).headers()));
    g.bench_function("for_each_header", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            black_box(&d).for_each_header(|_, v| sum = sum.wrapping_add(v));
            sum
        })
    });
    g.finish();
}

fn quota(c: &mut Criterion) {
    let q = Quotas::new();
    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(1));
    g.bench_function("try_consume+settle/batch100", |b| {
        b.iter(|| {
            let now = OffsetDateTime::now_utc();
            let d = q.try_consume(black_box("source-1"), 100, Some(u64::MAX), now);
            let granted = d.granted();
            d.settle(EventCounts { accepted: granted, rejected: 0, duplicates: 0 }, now);
        })
    });
    let dir = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        q.record(
            &format!("source-{i}"),
            EventCounts { accepted: 1, rejected: 1, duplicates: 1 },
            OffsetDateTime::now_utc(),
        );
    }
    g.throughput(Throughput::Elements(1000));
    g.bench_function("persist/sources=1000", |b| b.iter(|| q.persist(dir.path()).unwrap()));
    g.finish();
}

criterion_group!(benches, check, quota);
criterion_main!(benches);
