//! Publish stage: the local log's group commit, 100-event requests, fsync off (the disk's fsync
//! latency is not ours to measure) and on. Run: `cargo bench -p gateway-benches --bench publish`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::decode::EventType;
use gateway::publish::local_log::LocalLog;
use gateway::publish::{OutEvent, Publisher};
use gateway_benches::track_event;

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

criterion_group!(benches, local_log);
criterion_main!(benches);
