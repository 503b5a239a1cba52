//! Dedup stage: reserve + confirm per event for 100-event batches (fresh ids, duplicate ids, and
//! fresh ids into a full cache that must evict), then memory per entry at 1 M and 10 M ids.
//! Run: `cargo bench -p gateway-benches --bench dedup` (memory figures print first; skip them
//! with `DEDUP_BENCH_MEMORY=0`). Every iteration checks its verdicts with `assert!` (a
//! `debug_assert!` would vanish in bench builds); the timed cases check outside the timed part.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use gateway::dedup::{Dedup, DedupConfig, ManualClock, DEFAULT_TTL};

/// Counts live heap bytes, so the memory figures are the cache's own allocations.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A UUID-shaped id (36 characters, like analytics.js's), unique per `n`.
fn id(n: u64) -> String {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", h >> 32, (h >> 16) & 0xffff, n & 0xfff, (n >> 12) & 0xfff, n)
}

fn batch(start: u64, n: usize) -> Vec<String> {
    (start..start + n as u64).map(id).collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
}

fn cache(capacity: usize) -> Dedup {
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    Dedup::with_clock(&DedupConfig { capacity, ..DedupConfig::default() }, clock).unwrap()
}

/// Fills `d` with `n` confirmed ids in 100-id batches.
fn fill(rt: &tokio::runtime::Runtime, d: &Dedup, start: u64, n: usize) {
    for chunk_start in (start..start + n as u64).step_by(100) {
        let ids = batch(chunk_start, 100);
        rt.block_on(async {
            let mut r = d.reserve("bench-source", ids.iter().map(String::as_str), DEFAULT_TTL).await;
            r.confirm_all();
        });
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn memory_report() {
    let rt = rt();
    println!("dedup memory (live heap bytes from a counting allocator; RSS delta for reference)");
    // Each cache is sized to the ids it holds (full), then 1 M ids in the default 10 M cache.
    for (capacity, n) in [(1_000_000usize, 1_000_000usize), (10_000_000, 10_000_000), (10_000_000, 1_000_000)] {
        let (heap0, rss0) = (LIVE_BYTES.load(Ordering::Relaxed), rss_bytes());
        let started = Instant::now();
        let d = cache(capacity);
        fill(&rt, &d, 0, n);
        let took = started.elapsed();
        let (heap, rss) = (LIVE_BYTES.load(Ordering::Relaxed) - heap0, rss_bytes().saturating_sub(rss0));
        // A shard evicts once its own share is full, so a cache filled to its capacity holds a
        // little less (ids spread by hash do not fill every shard evenly).
        let s = d.stats();
        let held = s.len;
        println!(
            "  capacity {capacity:>10}, {n:>10} ids sent, {held:>10} held: heap {:>6.1} MB = {:>5.1} B/entry, \
             RSS +{:>6.1} MB = {:>5.1} B/entry (table slots {}, evictions {}, {:.0} ns/id to fill)",
            heap as f64 / 1e6,
            heap as f64 / held as f64,
            rss as f64 / 1e6,
            rss as f64 / held as f64,
            s.table_slots,
            s.evictions,
            took.as_nanos() as f64 / n as f64,
        );
        if capacity == 10_000_000 && n == capacity {
            // What a full cache costs the sweeper (per shard: the longest a request can stall
            // behind it) and a graceful restart.
            let started = Instant::now();
            d.sweep_all();
            let swept = started.elapsed();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("dedup.snapshot");
            let started = Instant::now();
            let written = d.snapshot(&path).unwrap();
            let saved = started.elapsed();
            let started = Instant::now();
            let clock = Arc::new(ManualClock::new(1_700_000_000));
            let config = DedupConfig { capacity, ..DedupConfig::default() };
            let (_, report) = Dedup::load(&path, &config, clock).unwrap();
            let loaded = started.elapsed();
            let shards = d.shard_count() as f64;
            println!(
                "  full 10 M cache: sweep of all {shards} shards {:.1} ms ({:.2} ms per shard); snapshot {} entries, \
                 {:.0} MB in {:.2} s; load {} entries in {:.2} s",
                swept.as_secs_f64() * 1e3,
                swept.as_secs_f64() * 1e3 / shards,
                written.entries,
                written.bytes as f64 / 1e6,
                saved.as_secs_f64(),
                report.loaded,
                loaded.as_secs_f64()
            );
        }
        drop(d);
    }
}

fn reserve_confirm(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(100));

    // Fresh ids: a new cache every 2 M ids, so the measured path is "insert below the bound".
    g.bench_function("reserve_confirm/batch100/fresh", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut d = cache(10_000_000);
            let mut next = 0u64;
            for _ in 0..iters {
                if next >= 2_000_000 {
                    d = cache(10_000_000);
                    next = 0;
                }
                let ids = batch(next, 100);
                next += 100;
                let started = Instant::now();
                let counts = rt.block_on(async {
                    let mut r = d.reserve("bench-source", ids.iter().map(String::as_str), DEFAULT_TTL).await;
                    let counts = r.counts();
                    r.confirm_all();
                    counts
                });
                total += started.elapsed();
                assert_eq!(counts.fresh, 100, "fresh ids below the bound: {counts:?}");
            }
            total
        })
    });

    // Duplicate ids: the same confirmed 100 ids again (a client retrying a delivered batch).
    let d = cache(10_000_000);
    fill(&rt, &d, 0, 1_000_000);
    let dup_ids = batch(500_000, 100);
    g.bench_function("reserve/batch100/duplicate", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = d.reserve("bench-source", dup_ids.iter().map(String::as_str), DEFAULT_TTL).await;
                let counts = r.counts();
                assert_eq!(counts.duplicate, 100, "confirmed ids sent again: {counts:?}");
                black_box(counts)
            })
        })
    });
    drop(d);

    // Fresh ids into a full cache (1 M ids, nothing expired): every insert may have to evict.
    let d = cache(1_000_000);
    fill(&rt, &d, 0, 1_000_000);
    let mut next = 1_000_000u64;
    g.bench_function("reserve_confirm/batch100/fresh_at_capacity", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let ids = batch(next, 100);
                next += 100;
                let started = Instant::now();
                let counts = rt.block_on(async {
                    let mut r = d.reserve("bench-source", ids.iter().map(String::as_str), DEFAULT_TTL).await;
                    let counts = r.counts();
                    r.confirm_all();
                    counts
                });
                total += started.elapsed();
                assert_eq!(counts.fresh, 100, "fresh ids into a full cache evict, never refuse: {counts:?}");
            }
            total
        });
    });
    g.finish();
    let s = d.stats();
    println!(
        "at capacity: {} ids held of {}, {} evictions, {} table rebuilds",
        s.len, s.capacity, s.evictions, s.rebuilds
    );
}

fn main() {
    if std::env::var("DEDUP_BENCH_MEMORY").map_or(true, |v| v != "0") {
        memory_report();
    }
    let mut c = Criterion::default().configure_from_args();
    reserve_confirm(&mut c);
    c.final_summary();
}
