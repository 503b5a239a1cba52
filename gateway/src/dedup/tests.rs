//! Unit tests of the dedup cache: verdicts, waiting, settling, bounds, sweeping, the snapshot
//! file and the config checks.
//! Must not: reach outside `dedup` (no server, no sink); time moves through `ManualClock`.

use super::cache::shard_count;
use super::key::{is_confirmed, Key, Map};
use super::snapshot::HEADER_BYTES;
use super::*;
use std::fs;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(60);

fn config(capacity: usize, shards: usize) -> DedupConfig {
    DedupConfig { capacity, shards, wait_timeout: Duration::from_secs(5), reservation_ttl: Duration::from_secs(600) }
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
    let bad =
        DedupConfig { capacity: 0, shards: 0, wait_timeout: Duration::from_secs(9), reservation_ttl: Duration::ZERO };
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
