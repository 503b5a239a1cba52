//! Consent stage: TC string decode per event (target: well under the ≈0.8 µs a typed event parse
//! costs), the whole `context.consent` parse + category derivation for each form, the
//! enrichment output, and the IP policy. Inputs are the `@iabtcf/core` fixtures.
//! `baseline/borrowed_map_parse` parses the benches' ≈600-byte track event into a map of
//! borrowed raw values, a stand-in for the typed parse the target is relative to, measured in
//! the same run so the ratio holds on a busy machine.
//! `many_keys/*` sends client-chosen key counts (10,000 category booleans, and the 64 a valid
//! object may carry): their cost must grow with the bytes, like validating the same bytes
//! (`many_keys/baseline_raw_value/*`), not with the square of the key count.
//! Run: `cargo bench -p gateway-benches --bench consent`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gateway::consent::{self, ConsentPolicy, IpPolicy, PurposeMapping};
use gateway_benches::track_event;
use serde_json::value::RawValue;

const FIXTURES: &str = include_str!("../../gateway/tests/fixtures/tcf/iabtcf-core.json");

fn tc_string(name: &str) -> String {
    let f: serde_json::Value = serde_json::from_str(FIXTURES).unwrap();
    let case = f["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    case["tcString"].as_str().unwrap().to_owned()
}

fn tcf_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("consent");
    g.throughput(Throughput::Elements(1));
    // typical: 100 consented vendors (bit field over 1..1139) and 60 LI vendors (range).
    let event = track_event(0);
    g.bench_function("baseline/borrowed_map_parse", |b| {
        b.iter(|| serde_json::from_str::<BTreeMap<&str, &RawValue>>(black_box(&event)).unwrap().len())
    });
    for name in ["typical_100_vendors", "range_mixed_singles_and_runs", "for_vendors_all_segments"] {
        let s = tc_string(name);
        g.bench_function(format!("tcf_decode/{name}"), |b| {
            b.iter(|| consent::decode_tc_string(black_box(&s)).unwrap().purpose_consent(1))
        });
    }
    g.finish();
}

fn parse_forms(c: &mut Criterion) {
    let mapping = PurposeMapping::default();
    let policy: ConsentPolicy = serde_json::from_str(r#"{"required":["analytics"],"ip":"truncate"}"#).unwrap();
    let tcf = format!(r#"{{"tcfString":"{}"}}"#, tc_string("typical_100_vendors"));
    let forms = [
        ("tcf", tcf.as_str()),
        ("us_privacy", r#"{"usPrivacy":"1YYN"}"#),
        ("categories", r#"{"analytics":true,"marketing":false,"advertising":false,"functional":true}"#),
    ];
    let mut g = c.benchmark_group("consent");
    g.throughput(Throughput::Elements(1));
    for (name, raw) in forms {
        // What the handler does per event: parse + derive, decide, and build the enrichment.
        g.bench_function(format!("parse+evaluate+enrich/{name}"), |b| {
            b.iter(|| {
                let c = consent::parse_consent(black_box(raw), &mapping).unwrap();
                let keep = policy.evaluate(Some(&c));
                (keep, c.consent_object_json().len() + c.header_value().len())
            })
        });
    }
    g.bench_function("ip_truncate/v4", |b| b.iter(|| IpPolicy::Truncate.apply(black_box("203.0.113.42"))));
    g.bench_function("ip_truncate/v6", |b| {
        b.iter(|| IpPolicy::Truncate.apply(black_box("2001:db8:abcd:12:34:56:78:9a")))
    });
    g.finish();
}

/// `{"c0":true,"c1":true,…}` with `n` distinct category names.
fn categories_object(n: usize) -> String {
    let members: Vec<String> = (0..n).map(|i| format!("\"c{i}\":true")).collect();
    format!("{{{}}}", members.join(","))
}

fn many_keys(c: &mut Criterion) {
    let mapping = PurposeMapping::default();
    let mut g = c.benchmark_group("consent");
    g.throughput(Throughput::Elements(1));
    for n in [64, 10_000] {
        let raw = categories_object(n);
        // 64 categories is the most a valid object has; more is refused (`invalid_consent`).
        assert_eq!(consent::parse_consent(&raw, &mapping).is_ok(), n <= 64, "{n} keys");
        g.bench_function(format!("many_keys/parse/{n}_keys"), |b| {
            b.iter(|| consent::parse_consent(black_box(&raw), &mapping).is_ok())
        });
        g.bench_function(format!("many_keys/baseline_raw_value/{n}_keys"), |b| {
            b.iter(|| serde_json::from_str::<&RawValue>(black_box(&raw)).unwrap().get().len())
        });
    }
    g.finish();
}

criterion_group!(benches, tcf_decode, parse_forms, many_keys);
criterion_main!(benches);
