//! Decode stage: typed parse + per-event checks + normalisation, against the `serde_json::Value`
//! baseline the design rejected. Run: `cargo bench -p gateway-benches --bench decode`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gateway::config::Limits;
use gateway::decode::{self, Body, RequestContext};
use gateway_benches::{batch_body, track_event};

// The allocator the gateway binary ships with: decode allocates per event, and that cost is
// part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn limits() -> Limits {
    Limits { max_request_bytes: 1 << 20, max_event_bytes: 32 * 1024, max_batch_events: 2500 }
}

fn decode_batch(c: &mut Criterion) {
    let body = batch_body(100);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(100));
    let policy = gateway::consent::ConsentPolicy::default();
    let now = gateway::decode::timestamp::Timestamp::now();
    let now_text = now.format();
    g.bench_function("batch100/typed+normalise", |b| {
        b.iter(|| gateway_benches::decode_batch(black_box(body.as_bytes()), &policy).unwrap())
    });
    g.bench_function("batch100/serde_json::Value (baseline)", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(body.as_bytes())).unwrap();
            v["batch"].as_array().map(|a| a.len())
        })
    });
    g.finish();

    let single = track_event(7);
    let mut g = c.benchmark_group("decode-single");
    g.throughput(Throughput::Elements(1));
    g.bench_function("track/typed+normalise", |b| {
        b.iter(|| {
            let parsed = decode::parse_body(black_box(single.as_bytes()), false, &limits()).unwrap();
            let cx = RequestContext {
                path_type: None,
                received_at: now,
                received_at_text: &now_text,
                batch_sent_at: None,
                client_ip: "203.0.113.9",
                source_id: "bench",
                consent: &policy,
            };
            let Body::Single(ev) = &parsed else { unreachable!() };
            decode::normalise(ev, &cx).unwrap().payload.len()
        })
    });
    g.finish();
}

criterion_group!(benches, decode_batch);
criterion_main!(benches);
