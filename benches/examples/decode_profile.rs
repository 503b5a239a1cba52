//! Runs the decode stage in a loop, for profilers (`valgrind --tool=callgrind`):
//! `decode_profile [ITERATIONS]`, each a 100-event batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let body = gateway_benches::batch_body(100);
    let policy = gateway::consent::ConsentPolicy::default();
    let total: usize = (0..n).map(|_| gateway_benches::decode_batch(body.as_bytes(), &policy).unwrap()).sum();
    println!("{total}");
}
