//! Publish stage, 100-event requests of ≈600 B events:
//! - the local log's group commit, fsync off (the disk's fsync latency is not ours to measure)
//!   and on;
//! - the Kafka publisher against an in-process `MockCluster` (acks=all, idempotence, lz4,
//!   linger 5 ms: the shipped defaults), with 64 requests in flight as in the end-to-end
//!   benchmark, measured twice: wall time (`kafka_mock/…`), and the process's CPU time
//!   (`kafka_mock_cpu/…`: the "time" it prints is CPU time, and the throughput events per CPU
//!   second). CPU is what the end-to-end benchmark runs out of, since the gateway shares two
//!   cores with the broker and the load generator. Both include the mock broker, which runs in
//!   this process: compare runs, not absolute numbers.
//!
//! Run: `cargo bench -p gateway-benches --bench publish`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::config::{Config, Overrides, SinkConfig};
use gateway::decode::EventType;
use gateway::publish::kafka::KafkaPublisher;
use gateway::publish::local_log::LocalLog;
use gateway::publish::{OutEvent, Publisher};
use gateway_benches::track_event;

// The allocator the gateway binary ships with (it also serves librdkafka's mallocs), so that the
// producer's allocation costs are the ones measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn events(n: usize) -> Vec<OutEvent> {
    (0..n)
        .map(|i| OutEvent {
            topic: Arc::from("events"),
            key: Some(format!("user-{}", i % 1000)),
            event_type: EventType::Track,
            source_id: Arc::from("bench"),
            message_id: format!("m-{i}"),
            payload: track_event(i).into_bytes(),
            consent_header: None,
        })
        .collect()
}

fn local_log(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let batch = events(100);
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(100));
    for fsync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = LocalLog::open(dir.path(), 256 << 20, fsync).unwrap();
        g.bench_function(format!("local_log/batch100/fsync={fsync}"), |b| {
            b.iter(|| rt.block_on(log.publish(batch.clone())))
        });
        log.close();
    }
    g.finish();
}

/// Requests in flight at once: as many as the end-to-end benchmark's connections, so that the
/// producer (not linger.ms) is the limit.
const IN_FLIGHT: usize = 64;

/// The CPU time of the whole process (every thread: tokio's, librdkafka's, the mock broker's).
struct ProcessCpu;

fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

static WALL: WallTime = WallTime;

impl Measurement for ProcessCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        process_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        process_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

fn kafka_mock(c: &mut Criterion) {
    kafka_mock_with(c, "kafka_mock");
}

fn kafka_mock_cpu(c: &mut Criterion<ProcessCpu>) {
    kafka_mock_with(c, "kafka_mock_cpu");
}

fn kafka_mock_with<M: Measurement>(c: &mut Criterion<M>, name: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("events", 3, 1).unwrap();
    let toml = format!(
        "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"{}\"\n[[sources]]\nid = \"bench\"\nkeys = [{{ key = \"k\" }}]\n",
        mock.bootstrap_servers()
    );
    let config = Config::from_toml("bench.toml", &toml, &Overrides::default()).unwrap();
    let SinkConfig::Kafka(k) = &config.sink else { panic!("not a kafka config") };
    let publisher = Arc::new(KafkaPublisher::new(k).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.readiness().is_err() {
        assert!(Instant::now() < deadline, "mock cluster not ready: {:?}", publisher.readiness());
        std::thread::sleep(Duration::from_millis(20));
    }
    let batch = events(100);
    // The first idempotent delivery waits for a producer id.
    assert!(rt.block_on(publisher.publish(batch.clone())).iter().all(Result::is_ok));

    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements((100 * IN_FLIGHT) as u64));
    g.bench_function(format!("{name}/batch100x{IN_FLIGHT}"), |b| {
        b.iter(|| {
            rt.block_on(async {
                let requests: Vec<_> = (0..IN_FLIGHT)
                    .map(|_| {
                        let (p, events) = (publisher.clone(), batch.clone());
                        tokio::spawn(async move { p.publish(events).await })
                    })
                    .collect();
                for r in requests {
                    assert!(r.await.unwrap().iter().all(Result::is_ok));
                }
            })
        })
    });
    g.finish();
    rt.block_on(publisher.flush(Duration::from_secs(5))).unwrap();
}

criterion_group!(benches, local_log, kafka_mock);
criterion_group! {
    name = cpu;
    config = Criterion::default().with_measurement(ProcessCpu);
    targets = kafka_mock_cpu
}
criterion_main!(benches, cpu);
