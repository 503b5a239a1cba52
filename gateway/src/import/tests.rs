//! The shapes' mapping onto Segment calls, and each field's limits.

use serde_json::{json, Value};

use super::*;

const NOW: &str = "2026-12-04T10:00:00.000Z";

fn calls(c: &Converted) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&c.body).unwrap();
    v["batch"].as_array().unwrap().clone()
}

#[test]
fn reference_events_map_email_and_domain_and_keep_given_ids() {
    let body = json!({"events": [
        {"eventName": "feature_used", "email": "user@example.com", "timestamp": "2026-03-12T10:30:00Z",
         "properties": {"feature": "dashboard", "duration_seconds": 120}, "eventId": "evt_given"},
        {"eventName": "signup", "domain": "acme.com"},
        {"eventName": "both", "email": "a@acme.com", "domain": "acme.com"},
    ]});
    let c = convert(Shape::Events, body.to_string().as_bytes(), NOW).unwrap();
    assert_eq!((c.received, c.errors.len(), c.origin.clone()), (3, 0, vec![0, 1, 2]));
    let calls = calls(&c);
    assert_eq!(
        calls[0],
        json!({"type": "track", "event": "feature_used", "messageId": "evt_given", "timestamp": "2026-03-12T10:30:00Z",
               "properties": {"feature": "dashboard", "duration_seconds": 120}, "userId": "user@example.com",
               "context": {"traits": {"email": "user@example.com"}}})
    );
    // No email: the domain is the identity and the group; the timestamp defaults to receipt.
    assert_eq!(calls[1]["anonymousId"], "domain:acme.com");
    assert_eq!(calls[1]["context"], json!({"groupId": "acme.com"}));
    assert_eq!(calls[1]["timestamp"], NOW);
    assert!(calls[1].get("userId").is_none());
    assert_eq!(calls[2]["userId"], "a@acme.com");
    assert_eq!(calls[2]["context"]["groupId"], "acme.com");
    // Generated ids are returned, in input order.
    assert_eq!(c.event_ids[0].as_deref(), Some("evt_given"));
    let generated = c.event_ids[1].clone().unwrap();
    assert!(generated.starts_with("evt_") && generated.len() == 36, "{generated}");
    assert_eq!(calls[1]["messageId"], generated.as_str());
}

#[test]
fn reference_event_limits_refuse_only_their_event() {
    let long = "x".repeat(MAX_NAME_CHARS + 1);
    let ok_name = "é".repeat(MAX_NAME_CHARS); // characters, not bytes
    let props: serde_json::Map<String, Value> = (0..=MAX_PROPERTIES).map(|i| (format!("p{i}"), json!(i))).collect();
    let fifty: serde_json::Map<String, Value> = (0..MAX_PROPERTIES).map(|i| (format!("p{i}"), json!(i))).collect();
    let body = json!({"events": [
        {"eventName": long, "email": "a@b.c"},
        {"eventName": ok_name, "email": "a@b.c", "properties": fifty},
        {"eventName": "e", "email": "a@b.c", "properties": props},
        {"eventName": "e"},
        {"email": "a@b.c"},
        {"eventName": "e", "email": 7},
        "not an object",
    ]});
    let c = convert(Shape::Events, body.to_string().as_bytes(), NOW).unwrap();
    let errors: Vec<(usize, &str)> = c.errors.iter().map(|e| (e.index, e.code)).collect();
    assert_eq!(
        errors,
        vec![
            (0, "invalid_field"),
            (2, "invalid_field"),
            (3, "missing_identity"),
            (4, "missing_event"),
            (5, "invalid_field"),
            (6, "invalid_event")
        ]
    );
    assert!(c.errors[0].message.contains("256 characters; the limit is 255"), "{:?}", c.errors[0]);
    assert!(c.errors[1].message.contains("51 keys; the limit is 50"), "{:?}", c.errors[1]);
    assert_eq!(c.origin, vec![1]);
    assert_eq!(c.event_ids.iter().filter(|i| i.is_some()).count(), 1);
}

#[test]
fn more_than_a_hundred_events_or_no_events_refuse_the_body() {
    let many: Vec<Value> = (0..=MAX_EVENTS).map(|_| json!({"eventName": "e", "email": "a@b.c"})).collect();
    let err = convert(Shape::Events, json!({ "events": many }).to_string().as_bytes(), NOW).unwrap_err();
    assert!(matches!(err, DecodeError::TooManyEvents { count: 101, limit: 100 }), "{err:?}");
    let hundred: Vec<Value> = (0..MAX_EVENTS).map(|_| json!({"eventName": "e", "email": "a@b.c"})).collect();
    assert_eq!(convert(Shape::Events, json!({ "events": hundred }).to_string().as_bytes(), NOW).unwrap().received, 100);
    for bad in [r#"{"events":[]}"#, r#"{"batch":[{}]}"#, "[]", r#"{"events":{}}"#] {
        let shape = if bad.starts_with('[') { Shape::Client } else { Shape::Events };
        assert!(matches!(convert(shape, bad.as_bytes(), NOW), Err(DecodeError::InvalidBody(_))), "{bad}");
    }
    match convert(Shape::Events, b"{\"events\": [}", NOW) {
        Err(DecodeError::InvalidJson { offset, .. }) => assert_eq!(offset, 12),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_client_event_with_a_user_block_is_an_identify_then_a_track_with_both_ids() {
    let body = json!([{
        "name": "product_viewed", "anonymous_id": "anon-2c8a3e", "external_id": "cust-9f4b21",
        "data": {"product_id": "sku-1024", "value": 49.95, "currency": "AUD"},
        "user": {"email": "jane@example.com", "phone": "+61400123456", "timezone": "Australia/Sydney",
                 "locale": "en-AU", "data": {"plan": "pro"}},
        "created_at": "2026-04-28T05:14:00.000Z"
    }, {"name": "opened", "anonymous_id": "anon-1"}]);
    let c = convert(Shape::Client, body.to_string().as_bytes(), NOW).unwrap();
    assert_eq!(c.origin, vec![0, 0, 1]);
    let calls = calls(&c);
    let identify = &calls[0];
    assert_eq!(identify["type"], "identify");
    assert_eq!(
        (identify["userId"].as_str(), identify["anonymousId"].as_str()),
        (Some("cust-9f4b21"), Some("anon-2c8a3e"))
    );
    assert_eq!(
        identify["traits"],
        json!({"plan": "pro", "email": "jane@example.com", "phone": "+61400123456", "timezone": "Australia/Sydney",
               "locale": "en-AU"})
    );
    assert_eq!(identify["timestamp"], "2026-04-28T05:14:00.000Z");
    let track = &calls[1];
    assert_eq!(track["type"], "track");
    assert_eq!(track["event"], "product_viewed");
    assert_eq!(track["properties"], json!({"product_id": "sku-1024", "value": 49.95, "currency": "AUD"}));
    assert_eq!((track["userId"].as_str(), track["anonymousId"].as_str()), (Some("cust-9f4b21"), Some("anon-2c8a3e")));
    assert_ne!(identify["messageId"], track["messageId"]);
    assert_eq!(c.event_ids[0].as_deref(), track["messageId"].as_str());
    // Without a user block: the track alone, the receipt time, one id.
    assert_eq!(calls[2]["anonymousId"], "anon-1");
    assert!(calls[2].get("userId").is_none());
    assert_eq!(calls[2]["timestamp"], NOW);
}

#[test]
fn one_bad_client_event_refuses_the_request_with_its_index() {
    let body = json!([
        {"name": "ok", "external_id": "u"},
        {"name": "no ids"},
        {"name": "bad user", "external_id": "u", "user": {"timezone": "x".repeat(51)}},
        {"name": "bad user", "external_id": "u", "user": "jane"},
    ]);
    let c = convert(Shape::Client, body.to_string().as_bytes(), NOW).unwrap();
    let errors: Vec<(usize, &str)> = c.errors.iter().map(|e| (e.index, e.code)).collect();
    assert_eq!(errors, vec![(1, "missing_identity"), (2, "invalid_field"), (3, "invalid_field")]);
    // All or nothing: not even the good one goes on.
    assert!(c.origin.is_empty() && calls(&c).is_empty());
    assert!(c.event_ids.iter().all(Option::is_none));
    assert_eq!(c.received, 4);
}

#[test]
fn csv_cells_become_numbers_and_booleans_only_by_the_rule() {
    use super::csv::typed;
    for (cell, want) in [
        ("true", json!(true)),
        ("false", json!(false)),
        ("0", json!(0)),
        ("-42", json!(-42)),
        ("123456789012345", json!(123_456_789_012_345_i64)),
        ("3.25", json!(3.25)),
        ("-0.5", json!(-0.5)),
        ("007", json!("007")),
        ("1234567890123456", json!("1234567890123456")),
        ("1e5", json!("1e5")),
        ("1,000", json!("1,000")),
        ("TRUE", json!("TRUE")),
        ("3.", json!("3.")),
        (".5", json!(".5")),
        ("-", json!("-")),
        ("01.5", json!("01.5")),
        (" 7", json!(" 7")),
    ] {
        assert_eq!(typed(cell), want, "{cell:?}");
    }
}
