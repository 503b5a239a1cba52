//! Writes the end-to-end benchmark's request bodies: `track.json` (one ≈600 B event) and
//! `batch.json` (100 of them). Usage: `gen_payloads DIR`.
//!
//! The events carry no messageId, so every request is new to the gateway (dedup, when on,
//! never matches) and each gets server-generated ids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn event_without_id(i: usize) -> String {
    gateway_benches::track_event(i).replace(&format!(r#","messageId":"bench-{i:08}-9a8e-4b5d-8f3c-2d1e0f9a8b7c""#), "")
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir).unwrap();
    let track = event_without_id(1);
    assert!(!track.contains("messageId"));
    std::fs::write(dir.join("track.json"), &track).unwrap();
    let events: Vec<String> = (0..100).map(event_without_id).collect();
    let batch = format!(r#"{{"batch":[{}],"sentAt":"2026-11-22T23:58:41.000Z"}}"#, events.join(","));
    std::fs::write(dir.join("batch.json"), &batch).unwrap();
    eprintln!("track.json {} B, batch.json {} B", track.len(), batch.len());
}
