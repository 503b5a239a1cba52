//! Contracts stage: one normalised 770-byte `Order Completed` event checked against the example
//! plan (`contracts/example`) under `block`/`omit` policies, per verdict, next to the
//! `serde_json::Value` parse the design avoids. `contracts-many-keys` sends the same event with
//! 10,000 undeclared properties under `unplanned_properties = "omit"`: client-chosen keys must
//! cost time linear in the event, like parsing it into a `Value` (the baseline next to it).
//! Run: `cargo bench -p gateway-benches --bench contracts`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gateway::validate::{Plan, Plans, Policies, UnplannedEvents, UnplannedProperties, Verdict, Violations};

fn plan() -> Arc<Plan> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts");
    Plans::load(&dir).unwrap().get("example").unwrap()
}

fn policies(unplanned_properties: UnplannedProperties, violations: Violations) -> Policies {
    Policies { unplanned_events: UnplannedEvents::Block, unplanned_properties, violations }
}

/// A normalised track event as decode writes it (field order included), 770 bytes: properties
/// order_id, total, currency, coupon, products[2]; context library, locale, page, userAgent, ip.
/// `total` and `extra` let the cases below make it pass, violate, or carry an unplanned key.
fn order_completed(i: usize, total: &str, extra: &str) -> String {
    format!(
        r#"{{"type":"track","messageId":"ajs-next-{i:013}-6021a5c6","sourceId":"web","userId":"user-{u}","event":"Order Completed","properties":{{"order_id":"o-{i}","total":{total},"currency":"EUR","coupon":"SUMMER20",{extra}"products":[{{"product_id":"p-1","name":"T-Shirt","price":29.99,"quantity":2}},{{"product_id":"p-2","name":"Stickers","price":9.99,"quantity":4}}]}},"integrations":{{}},"context":{{"library":{{"name":"analytics.js","version":"next-1.84.3"}},"locale":"en-US","page":{{"path":"/checkout/done","referrer":"https://shop.example.com/cart","title":"Thanks","url":"https://shop.example.com/checkout/done"}},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0","ip":"203.0.113.9"}},"timestamp":"2026-11-22T23:58:40.334Z","receivedAt":"2026-11-22T23:58:41.002Z"}}"#,
        u = i % 1000,
    )
}

fn contracts(c: &mut Criterion) {
    let plan = plan();
    let strict = policies(UnplannedProperties::Allow, Violations::Block);
    let omit = policies(UnplannedProperties::Omit, Violations::Omit);
    let pass = order_completed(7, "99.99", "");
    let bad = order_completed(7, "\"99.99\"", "");
    let omitted = order_completed(7, "99.99", r#""coupon_code":"X","#);
    eprintln!("event sizes: pass {} B, violation {} B, omit {} B", pass.len(), bad.len(), omitted.len());
    assert_eq!(plan.check(&strict, pass.as_bytes()).unwrap(), Verdict::Pass);
    assert!(matches!(plan.check(&strict, bad.as_bytes()).unwrap(), Verdict::Block { .. }));
    assert!(matches!(plan.check(&omit, omitted.as_bytes()).unwrap(), Verdict::Publish { payload: Some(_), .. }));

    let mut g = c.benchmark_group("contracts");
    g.throughput(Throughput::Elements(1));
    g.bench_function("order_completed/pass (block policies)", |b| {
        b.iter(|| plan.check(black_box(&strict), black_box(pass.as_bytes())).unwrap())
    });
    g.bench_function("order_completed/violation → block", |b| {
        b.iter(|| plan.check(black_box(&strict), black_box(bad.as_bytes())).unwrap())
    });
    g.bench_function("order_completed/unplanned property → omit", |b| {
        b.iter(|| plan.check(black_box(&omit), black_box(omitted.as_bytes())).unwrap())
    });
    g.bench_function("order_completed/serde_json::Value parse (baseline, not used)", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&pass)).unwrap())
    });
    g.finish();

    // 100 distinct events, as a batch would bring them.
    let batch: Vec<String> = (0..100).map(|i| order_completed(i, "99.99", "")).collect();
    let mut g = c.benchmark_group("contracts-batch");
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch100/pass", |b| {
        b.iter(|| batch.iter().filter(|e| plan.check(&strict, e.as_bytes()).unwrap() == Verdict::Pass).count())
    });
    g.finish();
}

fn many_keys(c: &mut Criterion) {
    let plan = plan();
    let omit = policies(UnplannedProperties::Omit, Violations::Block);
    let extra: String = (0..10_000).map(|i| format!(r#""unplanned_{i}":{i},"#)).collect();
    let event = order_completed(7, "99.99", &extra);
    eprintln!("many keys: {} B", event.len());
    let Verdict::Publish { payload: Some(payload), violations } = plan.check(&omit, event.as_bytes()).unwrap() else {
        panic!("10,000 unplanned properties under omit must publish the event without them");
    };
    assert_eq!(payload.len(), order_completed(7, "99.99", "").len(), "every unplanned property is removed");
    assert!(!violations.is_empty());

    let mut g = c.benchmark_group("contracts-many-keys");
    g.throughput(Throughput::Elements(1));
    g.bench_function("10000_unplanned_properties/omit", |b| {
        b.iter(|| plan.check(black_box(&omit), black_box(event.as_bytes())).unwrap())
    });
    g.bench_function("10000_unplanned_properties/serde_json::Value parse (baseline)", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(&event)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, contracts, many_keys);
criterion_main!(benches);
