//! Tests of the violations topic's record and of reading an event's name for it.
//! Must not: publish; the record is checked as bytes and as JSON.

use serde_json::{json, Value};

use crate::validate::{event_name, violation_record, Violation};

// ---- the violations topic -----------------------------------------------------------------

#[test]
fn violation_record_carries_source_event_reasons_and_original() {
    let violations = vec![Violation {
        pointer: "/properties/total".into(),
        keyword: "required".into(),
        message: "\"total\" is a required property".into(),
    }];
    let original = br#"{"type":"track","event":"Order Completed","properties":{"order_id":"o-1"}}"#;
    let record = violation_record("web", "m-1", Some("Order Completed"), "track", &violations, true, original);
    let v: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(
        v,
        json!({"sourceId": "web", "messageId": "m-1", "eventType": "track", "event": "Order Completed", "blocked": true,
               "violations": [{"pointer": "/properties/total", "keyword": "required", "message": "\"total\" is a required property"}],
               "originalEvent": {"type": "track", "event": "Order Completed", "properties": {"order_id": "o-1"}}})
    );
    assert_eq!(event_name(original).as_deref(), Some("Order Completed"));
    assert_eq!(event_name(br#"{"type":"track","event":"a\"b","properties":{"event":"no"}}"#).as_deref(), Some("a\"b"));
    assert_eq!(event_name(br#"{"type":"identify","traits":{"event":"no"}}"#), None);
    assert_eq!(event_name(b"not json"), None);
    // The original is embedded byte for byte.
    assert!(std::str::from_utf8(&record).unwrap().contains(std::str::from_utf8(original).unwrap()));
    // No event name for non-track calls; a non-JSON original still makes valid JSON.
    let record = violation_record("web", "m-2", None, "identify", &[], false, b"not json");
    let v: Value = serde_json::from_slice(&record).unwrap();
    assert!(v.get("event").is_none());
    assert_eq!(v["originalEvent"], "not json");
    assert_eq!(v["blocked"], false);
}
