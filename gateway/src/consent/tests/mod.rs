//! Unit tests of consent, one file per area: `tcf` (the decoder against the IAB's own, hand-built
//! and broken strings, the bit reader), `usp`, `context` (the three forms, key caps and
//! duplicates, categories and the mapping), `ip` and `policy`. Shared here: the `@iabtcf/core`
//! fixtures and `parse`.
//!
//! Must not: touch the network or the file system (the fixtures are included at compile time).

use serde_json::Value;

use super::*;

mod context;
mod ip;
mod policy;
mod tcf;
mod usp;

const FIXTURES: &str = include_str!("../../../tests/fixtures/tcf/iabtcf-core.json");

fn fixtures() -> Value {
    serde_json::from_str(FIXTURES).unwrap()
}

fn fixture(name: &str) -> String {
    let f = fixtures();
    let case = f["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    case["tcString"].as_str().unwrap().to_owned()
}

fn id_set(v: &Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

fn parse(raw: &str) -> Result<Consent, ConsentError> {
    parse_consent(raw, &PurposeMapping::default())
}

fn cats(c: &Consent) -> Vec<(String, bool)> {
    c.categories().map(|(n, g)| (n.to_owned(), g)).collect()
}

#[test]
fn reasons_are_bounded_snake_case() {
    let errs = [
        parse("[]").unwrap_err(),
        parse(r#"{"a":1}"#).unwrap_err(),
        decode_tc_string("").unwrap_err(),
        decode_us_privacy("2YNN").unwrap_err(),
    ];
    for e in errs {
        assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", e.reason());
        assert_eq!(e.code(), "invalid_consent");
    }
}
