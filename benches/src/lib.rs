//! Fixtures shared by the benchmarks: Segment events shaped like what real SDKs send
//! (see `../shared/clients/wire/`), sized like the prototype's (≈600 B per event).
//!
//! Owns: payload generation only. Must not: measure anything itself.

/// One `track` event of about 600 bytes, distinct per `i`.
pub fn track_event(i: usize) -> String {
    format!(
        r#"{{"type":"track","event":"Order Completed","userId":"user-{u}","anonymousId":"5c4e7a52-0b54-4a40-9d3c-{i:012}","messageId":"bench-{i:08}-9a8e-4b5d-8f3c-2d1e0f9a8b7c","timestamp":"2026-11-22T23:58:40.334Z","properties":{{"order_id":"o-{i}","total":42.5,"currency":"EUR","products":[{{"product_id":"p-1","name":"T-Shirt","price":29.99,"quantity":2}}]}},"context":{{"library":{{"name":"analytics.js","version":"next-1.84.3"}},"locale":"en-US","page":{{"path":"/checkout/confirmation","title":"Thanks","url":"https://shop.example.com/checkout/confirmation"}},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0"}},"integrations":{{"Segment.io":true}}}}"#,
        u = i % 1000,
    )
}

/// A `/v1/batch` body of `n` events.
pub fn batch_body(n: usize) -> String {
    let events: Vec<String> = (0..n).map(track_event).collect();
    format!(r#"{{"batch":[{}],"sentAt":"2026-11-22T23:58:41.000Z","writeKey":"bench-key"}}"#, events.join(","))
}

/// The decode stage of one batch request, as the handler runs it (parse, per-event checks,
/// normalise), without HTTP or a sink: returns the bytes written. Shared by the criterion
/// bench and the profiling example, so both measure the same code.
pub fn decode_batch(body: &[u8], policy: &gateway::consent::ConsentPolicy) -> Option<usize> {
    use gateway::decode::{self, Body, RequestContext};
    let limits =
        gateway::config::Limits { max_request_bytes: 1 << 20, max_event_bytes: 32 * 1024, max_batch_events: 2500 };
    let now = gateway::decode::timestamp::Timestamp::now();
    let now_text = now.format();
    let parsed = decode::parse_body(body, true, &limits).ok()?;
    let cx = RequestContext {
        path_type: None,
        received_at: now,
        received_at_text: &now_text,
        batch_sent_at: decode::batch_sent_at(&parsed),
        client_ip: "203.0.113.9",
        source_id: "bench",
        consent: policy,
    };
    let Body::Batch(batch) = &parsed else { return None };
    let mut bytes = 0;
    for item in &batch.events {
        let ev = decode::parse_event(item, &limits).ok()?;
        bytes += decode::normalise(ev, &cx).ok()?.payload.len();
    }
    Some(bytes)
}
