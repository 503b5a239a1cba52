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
