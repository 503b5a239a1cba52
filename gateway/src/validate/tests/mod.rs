//! Unit tests of `validate`, by area: `check` (policies, the policy matrix, versions, what each
//! call type is checked against), `tape` (the parser, the projection and the bridge against
//! serde_json), `plans` (loading, refusing, the example plan) and `violations` (the topic's
//! record). This file holds the fixtures and helpers they share.
//! Must not: reach outside `validate` (no server, no sink); plans come from
//! `tests/fixtures/contracts` and `../contracts`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{Plan, Plans, Policies, Verdict, Violation};

mod check;
mod plans;
mod tape;
mod violations;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/contracts")
}

fn shop() -> Arc<Plan> {
    Plans::load(&fixtures().join("valid")).unwrap().get("shop").unwrap()
}

fn example() -> Arc<Plan> {
    let plans = Plans::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts")).unwrap();
    plans.get("example").unwrap()
}

fn pol(events: &str, props: &str, violations: &str) -> Policies {
    toml::from_str(&format!(
        "unplanned_events = \"{events}\"\nunplanned_properties = \"{props}\"\nviolations = \"{violations}\""
    ))
    .unwrap()
}

fn ev(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn context() -> Value {
    json!({"library": {"name": "analytics.js", "version": "1.0"}, "locale": "en-US", "ip": "203.0.113.9"})
}

fn track(name: &str, properties: Value) -> Value {
    json!({"type": "track", "messageId": "m-1", "userId": "u-1", "event": name, "properties": properties,
           "context": context(), "receivedAt": "2026-01-01T00:00:00.000Z"})
}

fn with_version(mut event: Value, version: Value) -> Value {
    event["context"]["protocols"] = json!({"event_version": version});
    event
}

fn pointers(v: &[Violation]) -> Vec<(&str, &str)> {
    v.iter().map(|v| (v.pointer.as_str(), v.keyword.as_str())).collect()
}

/// The published payload of a verdict that changed the event.
fn payload(verdict: &Verdict) -> Value {
    match verdict {
        Verdict::Publish { payload: Some(p), .. } => serde_json::from_slice(p).unwrap(),
        other => panic!("expected a modified publish, got {other:?}"),
    }
}

fn is_block(v: &Verdict) -> bool {
    matches!(v, Verdict::Block { .. })
}

const ALLOW: (&str, &str, &str) = ("allow", "allow", "allow");
const BLOCK: (&str, &str, &str) = ("block", "allow", "block");

fn check(plan: &Plan, (e, p, v): (&str, &str, &str), event: &Value) -> Verdict {
    plan.check(&pol(e, p, v), &ev(event)).unwrap()
}
