//! Runs the decode stage in a loop, for profilers (`valgrind --tool=callgrind`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gateway::config::Limits;
use gateway::decode::{self, Body, RequestContext};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let body = gateway_benches::batch_body(100);
    let limits = Limits { max_request_bytes: 1 << 20, max_event_bytes: 32 * 1024, max_batch_events: 2500 };
    let policy = gateway::consent::ConsentPolicy::default();
    let now = gateway::timestamp::Timestamp::now();
    let now_text = now.format();
    let mut total = 0;
    for _ in 0..n {
        let parsed = decode::parse_body(body.as_bytes(), true, &limits).unwrap();
        let cx = RequestContext {
            path_type: None,
            received_at: now,
            received_at_text: &now_text,
            batch_sent_at: decode::batch_sent_at(&parsed),
            client_ip: "203.0.113.9",
            source_id: "bench",
            consent: &policy,
        };
        let Body::Batch(batch) = &parsed else { unreachable!() };
        for item in &batch.events {
            let ev = decode::parse_event(item, &limits).unwrap();
            total += decode::normalise(ev, &cx).unwrap().payload.len();
        }
    }
    println!("{total}");
}
