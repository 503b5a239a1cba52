//! Decode's tests through its public steps: `parse_body` → `parse_event` → `normalise`, as
//! the pipeline calls them. Unit tests of one part (gzip, the JSON limits, the member scanner)
//! sit beside it.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::timestamp::Timestamp;
use super::*;
use crate::consent::ConsentPolicy;

fn limits() -> Limits {
    Limits { max_request_bytes: 500 * 1024, max_event_bytes: 32 * 1024, max_batch_events: 2500 }
}

static DEFAULT_POLICY: std::sync::LazyLock<ConsentPolicy> = std::sync::LazyLock::new(ConsentPolicy::default);

fn cx(path_type: Option<EventType>) -> RequestContext<'static> {
    RequestContext {
        path_type,
        received_at: Timestamp::parse("2025-03-15T14:30:10.000Z").unwrap(),
        received_at_text: "2025-03-15T14:30:10.000Z",
        batch_sent_at: None,
        client_ip: "203.0.113.9",
        source_id: "src-1",
        consent: &DEFAULT_POLICY,
    }
}

fn norm(body: &str, path_type: Option<EventType>) -> Result<serde_json::Value, EventError> {
    let raw = norm_raw(body, path_type)?;
    Ok(serde_json::from_str(&raw).unwrap())
}

/// The normalised event as the bytes a sink gets, checked to have no duplicate key.
fn norm_raw(body: &str, path_type: Option<EventType>) -> Result<String, EventError> {
    let Body::Single(ev) = parse_body(body.as_bytes(), false, &limits()).unwrap() else { unreachable!() };
    let n = normalise(&ev, &cx(path_type))?;
    let text = String::from_utf8(n.payload).unwrap();
    assert_no_duplicate_keys(&text);
    Ok(text)
}

/// The raw text of top-level member `name` of a normalised event.
fn member<'t>(event: &'t str, name: &str) -> &'t str {
    object_members(event).find(|(k, _)| *k == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no {name}: {event}"))
}

/// Each event of a batch body, normalised (with the batch's sentAt, as the pipeline does).
fn norm_batch(body: &str) -> Vec<Result<String, EventError>> {
    let b = parse_body(body.as_bytes(), true, &limits()).unwrap();
    let mut c = cx(None);
    c.batch_sent_at = batch_sent_at(&b);
    let Body::Batch(batch) = &b else { unreachable!() };
    batch
        .events
        .iter()
        .map(|item| {
            let n = parse_event(item, &limits()).and_then(|ev| normalise(ev, &c))?;
            let text = String::from_utf8(n.payload).unwrap();
            assert_no_duplicate_keys(&text);
            Ok(text)
        })
        .collect()
}

/// What a strict reader (Jackson with duplicate detection, Snowflake's PARSE_JSON) checks:
/// no object anywhere repeats a member name. Independent of decode's own scanner.
fn assert_no_duplicate_keys(text: &str) {
    struct Strict;
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(StrictVisitor)
        }
    }
    struct StrictVisitor;
    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Strict;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                if !seen.insert(k.clone()) {
                    return Err(de::Error::custom(format!("duplicate key {k:?}")));
                }
                map.next_value::<Strict>()?;
            }
            Ok(Strict)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
            while seq.next_element::<Strict>()?.is_some() {}
            Ok(Strict)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
            Ok(Strict)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
            Ok(Strict)
        }
    }
    if let Err(e) = serde_json::from_str::<Strict>(text) {
        panic!("{e}: {text}");
    }
}

#[test]
fn track_is_normalised() {
    let v = norm(
        r#"{"type":"track","userId":"u1","event":"Signed Up","properties":{"plan":"pro"},"writeKey":"secret","receivedAt":"x","sourceId":"evil"}"#,
        None,
    )
    .unwrap();
    assert_eq!(v["type"], "track");
    assert_eq!(v["event"], "Signed Up");
    assert_eq!(v["properties"]["plan"], "pro");
    assert_eq!(v["sourceId"], "src-1");
    assert_eq!(v["context"]["ip"], "203.0.113.9");
    assert_eq!(v["timestamp"], "2025-03-15T14:30:10.000Z");
    assert_eq!(v["receivedAt"], "2025-03-15T14:30:10.000Z");
    assert!(v.get("writeKey").is_none());
    assert_eq!(uuid::Uuid::parse_str(v["messageId"].as_str().unwrap()).unwrap().get_version_num(), 4);
}

#[test]
fn clock_skew_is_corrected() {
    // The client's clock is 1 h ahead: it says it sent at 15:30:05 an event from 15:30:00;
    // we received it at 14:30:10, so the event happened at 14:30:05.
    let v = norm(
        r#"{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T15:30:00Z","sentAt":"2025-03-15T15:30:05.000Z"}"#,
        None,
    )
    .unwrap();
    assert_eq!(v["timestamp"], "2025-03-15T14:30:05.000Z");
    assert_eq!(v["originalTimestamp"], "2025-03-15T15:30:00Z");
    assert_eq!(v["sentAt"], "2025-03-15T15:30:05.000Z");
}

#[test]
fn batch_sent_at_applies_to_events_without_one() {
    let body = br#"{"batch":[{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T14:29:00.500+01:00"}],"sentAt":"2025-03-15T13:30:00.500Z"}"#;
    let b = parse_body(body, true, &limits()).unwrap();
    let mut c = cx(None);
    c.batch_sent_at = batch_sent_at(&b);
    let Body::Batch(batch) = b else { unreachable!() };
    let ev = parse_event(&batch.events[0], &limits()).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&normalise(ev, &c).unwrap().payload).unwrap();
    // 13:29:00.5Z sent at 13:30:00.5Z → 60 s before receipt.
    assert_eq!(v["timestamp"], "2025-03-15T14:29:10.000Z");
}

#[test]
fn client_ip_kept_and_empty_context_gets_ip() {
    // Raw bytes, not a parsed value: a parser that keeps the last of two `ip` keys would
    // hide a duplicate.
    let context = |c: &str| {
        let e = norm_raw(&format!(r#"{{"type":"page","anonymousId":"a","context":{c}}}"#), None).unwrap();
        member(&e, "context").to_string()
    };
    assert_eq!(context(r#"{"ip":"1.2.3.4","locale":"en"}"#), r#"{"ip":"1.2.3.4","locale":"en"}"#);
    assert_eq!(context(r#"{"locale":"en"}"#), r#"{"locale":"en","ip":"203.0.113.9"}"#);
    assert_eq!(context("{ }"), r#"{"ip":"203.0.113.9"}"#);
    assert_eq!(norm_raw(r#"{"type":"page","anonymousId":"a"}"#, None).unwrap().matches(r#""ip":"#).count(), 1);
    // A null ip is the peer's, in the client's place.
    assert_eq!(context(r#"{"ip":null,"x":1}"#), r#"{"ip":"203.0.113.9","x":1}"#);
}

#[test]
fn context_ip_is_replaced_in_place_never_duplicated() {
    let context = |c: &str| {
        let e = norm_raw(&format!(r#"{{"type":"page","anonymousId":"a","context":{c}}}"#), None).unwrap();
        member(&e, "context").to_string()
    };
    // A name spelled with escapes is the same name.
    assert_eq!(context(r#"{"\u0069p":"1.2.3.4","x":1}"#), r#"{"ip":"1.2.3.4","x":1}"#);
    assert_eq!(context(r#"{"x":"a\"b","\u0069p":null}"#), r#"{"x":"a\"b","ip":"203.0.113.9"}"#);
    // Repeated: one member, in the first one's place, with the last value (as JSON readers
    // take it).
    assert_eq!(context(r#"{"ip":"1.1.1.1","x":1,"ip":"2.2.2.2"}"#), r#"{"ip":"2.2.2.2","x":1}"#);
    assert_eq!(context(r#"{"ip":"1.1.1.1","ip":null}"#), r#"{"ip":"203.0.113.9"}"#);
    // With consent (the member-by-member path): both stay where the client put them.
    let c = context(r#"{"ip":null,"consent":{"analytics":true},"x":1}"#);
    assert!(c.starts_with(r#"{"ip":"203.0.113.9","consent":{"#), "{c}");
    assert!(c.ends_with(r#","x":1}"#), "{c}");
    let c = context(r#"{"con\u0073ent":{"analytics":false},"ip":"1.2.3.4"}"#);
    assert!(c.starts_with(r#"{"consent":{"#) && c.ends_with(r#","ip":"1.2.3.4"}"#), "{c}");
    assert!(c.contains(r#""analytics":false"#), "{c}");
    // Still refused when it is not a string.
    let err = norm(r#"{"type":"page","anonymousId":"a","context":{"ip":5}}"#, None).unwrap_err();
    assert_eq!(err.code(), "invalid_field");
}

#[test]
fn repeated_top_level_members_are_written_once() {
    let e = norm_raw(r#"{"type":"track","userId":"u","event":"e","properties":{"a":1},"properties":{"b":2}}"#, None)
        .unwrap();
    assert_eq!(member(&e, "properties"), r#"{"b":2}"#);
    let e =
        norm_raw(r#"{"type":"track","userId":"u","event":"e","\u0074raits":{"a":1},"traits":{"b":2}}"#, None).unwrap();
    assert_eq!(member(&e, "traits"), r#"{"b":2}"#);
}

#[test]
fn batch_context_and_integrations_apply_to_each_call() {
    let body = r#"{"batch":[
        {"type":"track","userId":"u","event":"e"},
        {"type":"track","userId":"u","event":"e","context":{"device":{"id":"d-1"},"locale":"fr"},"integrations":{"Mixpanel":false,"All":true}},
        {"type":"track","userId":"u","event":"e","context":null,"integrations":null},
        {"type":"track","userId":"u","event":"e","context":{"\u0064evice":{"type":"tablet"}},"integrations":"none"},
        {"type":"track","userId":"u","event":"e","context":{ },"integrations":{}}
    ],"context":{"device":{"type":"phone"},"library":{"name":"analytics-python"}},"integrations":{"All":false}}"#;
    let events: Vec<String> = norm_batch(body).into_iter().map(Result::unwrap).collect();
    assert_eq!(
        member(&events[0], "context"),
        r#"{"device":{"type":"phone"},"library":{"name":"analytics-python"},"ip":"203.0.113.9"}"#
    );
    assert_eq!(member(&events[0], "integrations"), r#"{"All":false}"#);
    // The call's own members win, whole (not merged deeper).
    assert_eq!(
        member(&events[1], "context"),
        r#"{"device":{"id":"d-1"},"locale":"fr","library":{"name":"analytics-python"},"ip":"203.0.113.9"}"#
    );
    assert_eq!(member(&events[1], "integrations"), r#"{"Mixpanel":false,"All":true}"#);
    assert_eq!(member(&events[2], "integrations"), r#"{"All":false}"#);
    let v: serde_json::Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(v["context"]["device"]["type"], "phone");
    // Names compare unescaped; a call's integrations that is not an object is its own.
    let v: serde_json::Value = serde_json::from_str(&events[3]).unwrap();
    assert_eq!(v["context"]["device"], serde_json::json!({"type":"tablet"}));
    assert_eq!(v["integrations"], "none");
    assert_eq!(
        member(&events[4], "context"),
        r#"{"device":{"type":"phone"},"library":{"name":"analytics-python"},"ip":"203.0.113.9"}"#
    );
    assert_eq!(member(&events[4], "integrations"), r#"{"All":false}"#);

    // A batch-level one that is not an object refuses the body; null and {} are nothing.
    for bad in [r#""context":"x""#, r#""integrations":[1]"#] {
        let body = format!(r#"{{"batch":[{{"type":"track","userId":"u","event":"e"}}],{bad}}}"#);
        assert!(matches!(parse_body(body.as_bytes(), true, &limits()), Err(DecodeError::InvalidBody(_))), "{bad}");
    }
    let body =
        r#"{"batch":[{"type":"track","userId":"u","event":"e","context":{"a":1}}],"context":{},"integrations":null}"#;
    let e = norm_batch(body).remove(0).unwrap();
    assert_eq!(member(&e, "context"), r#"{"a":1,"ip":"203.0.113.9"}"#);
    assert!(object_members(&e).all(|(k, _)| k != "integrations"), "{e}");
    // A batch-level consent is the call's consent.
    let body = r#"{"batch":[{"type":"track","userId":"u","event":"e"}],"context":{"consent":{"analytics":true}}}"#;
    let v: serde_json::Value = serde_json::from_str(&norm_batch(body).remove(0).unwrap()).unwrap();
    assert_eq!(v["context"]["consent"]["categories"]["analytics"], true, "{v}");
}

#[test]
fn batch_sent_at_is_carried_onto_its_calls() {
    let body = r#"{"batch":[
        {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z"},
        {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z","sentAt":"2025-03-15T13:29:30.5Z"},
        {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z","sentAt":"soon"},
        {"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T13:29:00.500Z","sentAt":7}
    ],"sentAt":"2025-03-15T13:30:00.500Z"}"#;
    let events: Vec<String> = norm_batch(body).into_iter().map(Result::unwrap).collect();
    // Each call carries the sentAt its timestamp was corrected with, as the client wrote it.
    assert_eq!(member(&events[0], "sentAt"), r#""2025-03-15T13:30:00.500Z""#);
    assert_eq!(member(&events[0], "timestamp"), r#""2025-03-15T14:29:10.000Z""#);
    assert_eq!(member(&events[1], "sentAt"), r#""2025-03-15T13:29:30.5Z""#);
    assert_eq!(member(&events[1], "timestamp"), r#""2025-03-15T14:29:40.000Z""#);
    // A call's own sentAt that is not a date-time is ignored: the batch's applies.
    for e in &events[2..] {
        assert_eq!(member(e, "sentAt"), r#""2025-03-15T13:30:00.500Z""#, "{e}");
        assert_eq!(member(e, "timestamp"), r#""2025-03-15T14:29:10.000Z""#, "{e}");
    }
    // Without a batch sentAt, nothing is invented.
    let body = r#"{"batch":[{"type":"track","userId":"u","event":"e","sentAt":"soon"}],"sentAt":"later"}"#;
    let e = norm_batch(body).remove(0).unwrap();
    assert!(object_members(&e).all(|(k, _)| k != "sentAt"), "{e}");
}

#[test]
fn sent_at_that_does_not_parse_is_ignored() {
    for sent in [r#""yesterday""#, "12", "{}", r#""2025-03-15""#] {
        let body = format!(
            r#"{{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T15:30:00Z","sentAt":{sent}}}"#
        );
        let e = norm_raw(&body, None).unwrap();
        // Uncorrected, and the unusable sentAt is not forwarded.
        assert_eq!(member(&e, "timestamp"), r#""2025-03-15T15:30:00.000Z""#, "{sent}");
        assert!(object_members(&e).all(|(k, _)| k != "sentAt"), "{e}");
    }
}

#[test]
fn original_timestamp_is_the_device_time() {
    // The issue's example: device clock 1 h ahead; the client's `timestamp` is not the
    // device time and must not drive the correction.
    let e = norm_raw(
        r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","timestamp":"2025-03-15T14:30:00Z","sentAt":"2025-03-15T15:30:05Z"}"#,
        None,
    )
    .unwrap();
    assert_eq!(member(&e, "timestamp"), r#""2025-03-15T14:30:05.000Z""#);
    assert_eq!(member(&e, "originalTimestamp"), r#""2025-03-15T15:30:00Z""#);
    // Without sentAt there is nothing to correct: the client's timestamp stands, and its
    // originalTimestamp is kept.
    let e = norm_raw(
        r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","timestamp":"2025-03-15T14:30:00Z"}"#,
        None,
    )
    .unwrap();
    assert_eq!(member(&e, "timestamp"), r#""2025-03-15T14:30:00.000Z""#);
    assert_eq!(member(&e, "originalTimestamp"), r#""2025-03-15T15:30:00Z""#);
    // Only originalTimestamp: it is corrected the same way.
    let e = norm_raw(
        r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","sentAt":"2025-03-15T15:30:05Z"}"#,
        None,
    )
    .unwrap();
    assert_eq!(member(&e, "timestamp"), r#""2025-03-15T14:30:05.000Z""#);
    assert_eq!(member(&e, "originalTimestamp"), r#""2025-03-15T15:30:00Z""#);
    // Each is still checked.
    let err = norm(
        r#"{"type":"track","userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","timestamp":"then"}"#,
        None,
    )
    .unwrap_err();
    assert_eq!(err, EventError::InvalidTimestamp { field: "timestamp" });
}

#[test]
fn iso8601_timestamps_are_accepted() {
    for ts in ["2025-03-15T15:30:00+0100", "2025-03-15T14:30Z", "2025-03-15t14:30:00.1234z", "2025-03-15T15:30+01"] {
        let body = format!(r#"{{"type":"track","userId":"u","event":"e","timestamp":"{ts}"}}"#);
        let e = norm_raw(&body, None).unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert!(member(&e, "timestamp").starts_with(r#""2025-03-15T14:30:00."#), "{e}");
        assert_eq!(member(&e, "originalTimestamp"), format!("\"{ts}\""));
    }
    let body = r#"{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T14:30:00","sentAt":"2025-03-15T14:30+0000"}"#;
    assert_eq!(norm(body, None).unwrap_err(), EventError::InvalidTimestamp { field: "timestamp" });
}

#[test]
fn deep_or_unpaired_surrogate_json_is_refused_per_event() {
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let track = |extra: &str| format!(r#"{{"type":"track","userId":"u","event":"e",{extra}}}"#);
    // The event is level 1, `properties` level 2: 126 arrays inside it reach level 128, the
    // checker's limit (serde_json's default reader, used by `norm`, stops at 127).
    let deepest = track(&format!(r#""properties":{{"pad":{}}}"#, nest(126)));
    let Body::Single(ev) = parse_body(deepest.as_bytes(), false, &limits()).unwrap() else { unreachable!() };
    assert!(normalise(&ev, &cx(None)).is_ok());
    let err = norm(&track(&format!(r#""properties":{{"pad":{}}}"#, nest(127))), None).unwrap_err();
    assert_eq!(err.code(), "invalid_json");
    assert_eq!(err.to_string(), "'properties' is nested more than 128 levels deep (counting the event itself)");
    // Brackets inside strings are not nesting.
    assert!(norm(&track(&format!(r#""properties":{{"s":"{}"}}"#, "[".repeat(300))), None).is_ok());
    // Every forwarded member is checked, the gateway's own slots included.
    for member in ["context", "traits", "integrations"] {
        let err = norm(&track(&format!(r#""{member}":{{"pad":{}}}"#, nest(200))), None).unwrap_err();
        assert_eq!(err.code(), "invalid_json", "{member}");
        assert!(err.to_string().starts_with(&format!("'{member}' is nested")), "{err}");
    }
    let err = norm(&format!(r#"{{"type":"page","userId":"u","groupId":{}}}"#, nest(200)), None).unwrap_err();
    assert_eq!(err.code(), "invalid_json");

    for bad in [
        r#""properties":{"\ud800":1}"#,
        r#""properties":{"a":"\udc00"}"#,
        r#""properties":{"a":["x\uD83D"]}"#,
        r#""properties":{"a":"\ud83d\u0041"}"#,
        r#""properties":{"a":"\ud83d\n"}"#,
        r#""context":{"page":{"title":"\uDBFF\uDBFF"}}"#,
    ] {
        let err = norm(&track(bad), None).unwrap_err();
        assert_eq!(err.code(), "invalid_json", "{bad}");
        assert!(err.to_string().contains("surrogate"), "{bad}: {err}");
    }
    // In a single call's own member names, serde_json refuses the body (which is the event).
    for bad in [r#""\ud800":1"#, r#""prop\ud800erties":{}"#] {
        let body = track(bad);
        let err = parse_body(body.as_bytes(), false, &limits()).unwrap_err();
        assert!(matches!(err, DecodeError::InvalidJson { .. }), "{bad}: {err:?}");
    }
    for good in [
        r#""properties":{"a":"\ud83d\ude00"}"#,
        r#""properties":{"\uD83D\uDE00":"\u00e9\\ud800"}"#,
        r#""properties":{"a":"\\ud800"}"#,
    ] {
        let v = norm(&track(good), None).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert!(v["properties"].is_object(), "{good}");
    }

    // In a batch, only the bad events are refused.
    let body = format!(
        r#"{{"batch":[{},{},{},{}]}}"#,
        track(&format!(r#""properties":{{"pad":{}}}"#, nest(200))),
        track(r#""properties":{"ok":1}"#),
        track(r#""properties":{"\ud800":1}"#),
        track(r#""\udfff":1"#),
    );
    let codes: Vec<_> = norm_batch(&body).iter().map(|r| r.as_ref().err().map(EventError::code)).collect();
    assert_eq!(codes, [Some("invalid_json"), None, Some("invalid_json"), Some("invalid_json")]);
    // The reparse that keeps such names apart accepts nothing else: a real syntax error, or
    // a bad name outside the events, still refuses the body with the first error.
    let body = format!(r#"{{"batch":[{},{{"type":"track",}}]}}"#, track(r#""\ud800":1"#));
    match parse_body(body.as_bytes(), true, &limits()) {
        Err(DecodeError::InvalidJson { offset, .. }) => assert_eq!(offset, body.find("\\ud800").unwrap() + 6),
        other => panic!("{other:?}"),
    }
    let body = format!(r#"{{"batch":[{}],"\udc00":1}}"#, track(r#""a":1"#));
    assert!(matches!(parse_body(body.as_bytes(), true, &limits()), Err(DecodeError::InvalidJson { .. })));
    // A batch-level context that is unfit would be unfit in every call: the body is refused.
    let body = format!(r#"{{"batch":[{}],"context":{{"pad":{}}}}}"#, track(r#""a":1"#), nest(200));
    match parse_body(body.as_bytes(), true, &limits()) {
        Err(DecodeError::InvalidJson { offset, detail }) => {
            // The call is level 1 and the context level 2: its 127th array would open level 129.
            assert_eq!(offset, body.find("[[").unwrap() + 126, "{detail}");
            assert!(detail.contains("context"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn path_type_and_body_type() {
    assert_eq!(norm(r#"{"userId":"u","traits":{}}"#, Some(EventType::Identify)).unwrap()["type"], "identify");
    assert_eq!(norm(r#"{"userId":"u","type":"identify"}"#, Some(EventType::Identify)).unwrap()["type"], "identify");
    assert_eq!(
        norm(r#"{"userId":"u","type":"track","event":"x"}"#, Some(EventType::Identify)).unwrap_err().code(),
        "invalid_type"
    );
    assert_eq!(norm(r#"{"userId":"u"}"#, None).unwrap_err().code(), "invalid_type");
    assert_eq!(norm(r#"{"userId":"u","type":"purchase"}"#, None).unwrap_err().code(), "invalid_type");
    assert_eq!(norm(r#"{"userId":"u","type":7}"#, None).unwrap_err().code(), "invalid_type");
}

#[test]
fn required_fields_per_type() {
    let cases = [
        (r#"{"type":"track","event":"x"}"#, "missing_identity"),
        (r#"{"type":"track","userId":"","anonymousId":null,"event":"x"}"#, "missing_identity"),
        (r#"{"type":"track","userId":"u"}"#, "missing_event"),
        (r#"{"type":"track","userId":"u","event":"  "}"#, "missing_event"),
        (r#"{"type":"track","userId":"u","event":5}"#, "invalid_field"),
        (r#"{"type":"group","userId":"u"}"#, "missing_group_id"),
        (r#"{"type":"alias","userId":"u"}"#, "missing_previous_id"),
        (r#"{"type":"alias","anonymousId":"a","previousId":"p"}"#, "missing_user_id"),
        (r#"{"type":"identify","userId":{"a":1}}"#, "invalid_field"),
        (r#"{"type":"identify","userId":"u","timestamp":"yesterday"}"#, "invalid_timestamp"),
        (r#"{"type":"identify","userId":"u","context":"x"}"#, "invalid_field"),
    ];
    for (body, code) in cases {
        assert_eq!(norm(body, None).unwrap_err().code(), code, "{body}");
    }
    // Numbers are valid ids (analytics-python may send them) and are forwarded as strings.
    let v = norm(r#"{"type":"alias","userId":42,"previousId":7}"#, None).unwrap();
    assert_eq!(v["userId"], "42");
    assert_eq!(v["previousId"], "7");
    let v = norm(r#"{"type":"group","anonymousId":"a","groupId":"g"}"#, None).unwrap();
    assert_eq!(v["groupId"], "g");
    let v = norm(r#"{"type":"group","anonymousId":"a","groupId":-1.5e3}"#, None).unwrap();
    assert_eq!(v["groupId"], "-1.5e3");
    let v = norm(r#"{"type":"track","anonymousId":"a","event":"e","groupId":12,"previousId":"p"}"#, None).unwrap();
    assert_eq!((&v["groupId"], &v["previousId"]), (&serde_json::json!("12"), &serde_json::json!("p")));
}

#[test]
fn escaped_keys_and_values_survive() {
    let v = norm(r#"{"type":"track","userId":"u\"1","event":"a\nb","prop\"s":{"k":"\u00e9"}}"#, None).unwrap();
    assert_eq!(v["userId"], "u\"1");
    assert_eq!(v["event"], "a\nb");
    assert_eq!(v["prop\"s"]["k"], "é");
}

#[test]
fn invalid_json_names_byte_offset() {
    let err = parse_body(b"{\"type\":\"track\",\n \"userId\": }", false, &limits()).unwrap_err();
    match err {
        DecodeError::InvalidJson { offset, .. } => assert_eq!(offset, 28),
        e => panic!("{e:?}"),
    }
    assert!(matches!(parse_body(b"[1,2]", false, &limits()), Err(DecodeError::Event(EventError::NotAnObject))));
    assert!(matches!(parse_body(b"{\"batch\":3}", true, &limits()), Err(DecodeError::InvalidBody(_))));
    assert!(matches!(parse_body(b"{\"batch\":[]}", true, &limits()), Err(DecodeError::InvalidBody(_))));
    assert!(matches!(parse_body(b"  ", true, &limits()), Err(DecodeError::InvalidBody(_))));
}

#[test]
fn caps() {
    let mut l = limits();
    l.max_batch_events = 2;
    l.max_event_bytes = 40;
    let body = br#"{"batch":[{"type":"track"},{"type":"track"},{"type":"track"}]}"#;
    assert!(matches!(parse_body(body, true, &l), Err(DecodeError::TooManyEvents { count: 3, limit: 2 })));
    let big = format!(r#"{{"type":"track","userId":"u","event":"{}"}}"#, "x".repeat(50));
    assert!(matches!(parse_body(big.as_bytes(), false, &l), Err(DecodeError::Event(EventError::TooLarge { .. }))));
    let body = format!(r#"{{"batch":[{big},{{"a":1}}]}}"#);
    let Body::Batch(b) = parse_body(body.as_bytes(), true, &l).unwrap() else { unreachable!() };
    assert_eq!(parse_event(&b.events[0], &l).unwrap_err().code(), "event_too_large");
    assert!(parse_event(&b.events[1], &l).is_ok());
    let Body::Batch(b) = parse_body(br#"{"batch":[1,"x",[1,[2]],null,true,{"a":1}]}"#, true, &limits()).unwrap() else {
        unreachable!()
    };
    let codes: Vec<_> = b.events.iter().map(|i| parse_event(i, &l).err().map(|e| e.code())).collect();
    assert_eq!(codes, vec![Some("invalid_event"); 5].into_iter().chain([None]).collect::<Vec<_>>());
}
