//! Segment semantics end to end: what the gateway does to each event (batch-level fields,
//! timestamps and skew, `context.ip`, ids), checked on the bytes that reach the sink, and the
//! JSON decode refuses so that a tracking plan cannot be bypassed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use gateway::decode::timestamp::Timestamp;
use gateway::ingest::Clocks;
use gateway::publish::memory::MemoryPublisher;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};
use util::*;

/// Every server of this file receives at this instant.
const RECEIVED_AT: &str = "2025-03-15T14:30:10.000Z";

/// The memory sink, the default test config, and a wall clock stopped at [`RECEIVED_AT`].
async fn server() -> (TestServer, Arc<MemoryPublisher>) {
    server_with(&config_text("")).await
}

async fn server_with(toml: &str) -> (TestServer, Arc<MemoryPublisher>) {
    let mem = Arc::new(MemoryPublisher::new());
    let clocks =
        Clocks { wall: Arc::new(|| Timestamp::parse(RECEIVED_AT).expect("a valid instant")), ..Clocks::default() };
    let s = TestServer::start_in(toml, mem.clone(), tempfile::tempdir().unwrap(), clocks).await;
    (s, mem)
}

async fn post(s: &TestServer, path: &str, body: &str) -> Resp {
    s.post(path, &[("Content-Type", "application/json"), ("X-Write-Key", KEY)], body.as_bytes()).await
}

/// The published records as the sink got them, each checked to be strict JSON.
fn records(mem: &MemoryPublisher, topic: &str) -> Vec<String> {
    mem.events()
        .iter()
        .filter(|e| &*e.topic == topic)
        .map(|e| {
            let text = String::from_utf8(e.payload.clone()).unwrap();
            assert_no_duplicate_keys(&text);
            text
        })
        .collect()
}

fn parsed(records: &[String]) -> Vec<Value> {
    records.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
}

/// What a strict reader (Jackson with duplicate detection, Snowflake's `PARSE_JSON`) checks:
/// no object anywhere repeats a member name.
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
            let mut seen = HashSet::new();
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

// ---- batch-level fields -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_context_and_integrations_reach_every_call() {
    let (s, mem) = server().await;
    // The issue's example.
    let r = post(
        &s,
        "/v1/batch",
        r#"{"batch":[{"type":"track","userId":"u","event":"e"}],"context":{"device":{"type":"phone"}}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = parsed(&records(&mem, "events"));
    assert_eq!(v[0]["context"]["device"]["type"], "phone", "{}", v[0]);
    assert_eq!(v[0]["context"]["ip"], "127.0.0.1");

    // The call's own members win; integrations merge the same way.
    let body = r#"{"batch":[
        {"type":"track","userId":"u","event":"a","context":{"locale":"fr","device":{"id":"d"}},"integrations":{"Amplitude":false}},
        {"type":"identify","userId":"u","traits":{"plan":"pro"}}
    ],"context":{"device":{"type":"phone"},"library":{"name":"analytics-python","version":"2.3"}},"integrations":{"All":true,"Amplitude":true}}"#;
    assert_eq!(post(&s, "/v1/batch", body).await.status, 200);
    let v = parsed(&records(&mem, "events"));
    assert_eq!(
        v[1]["context"],
        json!({"locale":"fr","device":{"id":"d"},"library":{"name":"analytics-python","version":"2.3"},"ip":"127.0.0.1"})
    );
    assert_eq!(v[1]["integrations"], json!({"Amplitude":false,"All":true}));
    assert_eq!(v[2]["context"]["library"]["name"], "analytics-python");
    assert_eq!(v[2]["integrations"], json!({"All":true,"Amplitude":true}));

    // One that is not an object is refused (it would be wrong in every call).
    post(&s, "/v1/batch", r#"{"batch":[{"type":"track","userId":"u","event":"e"}],"context":"phone"}"#)
        .await
        .assert_error(400, "invalid_body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sent_at_is_published_with_each_call() {
    let (s, mem) = server().await;
    let body = r#"{"batch":[
        {"type":"track","userId":"u","event":"a","timestamp":"2025-03-15T15:29:00Z"},
        {"type":"track","userId":"u","event":"b","timestamp":"2025-03-15T15:29:00Z","sentAt":"2025-03-15T15:29:30Z"}
    ],"sentAt":"2025-03-15T15:30:00.000Z"}"#;
    assert_eq!(post(&s, "/v1/batch", body).await.status, 200);
    let v = parsed(&records(&mem, "events"));
    // Corrected with the batch's sentAt, and carrying it, as a single call carries its own.
    assert_eq!(
        (&v[0]["timestamp"], &v[0]["sentAt"]),
        (&json!("2025-03-15T14:29:10.000Z"), &json!("2025-03-15T15:30:00.000Z"))
    );
    assert_eq!(
        (&v[1]["timestamp"], &v[1]["sentAt"]),
        (&json!("2025-03-15T14:29:40.000Z"), &json!("2025-03-15T15:29:30Z"))
    );
}

// ---- context.ip -------------------------------------------------------------------------------

/// Sends each context on a track call and returns the published records' `context`, as bytes.
async fn published_contexts(contexts: &[&str]) -> Vec<String> {
    let (s, mem) = server().await;
    for context in contexts {
        let body = format!(r#"{{"userId":"u","event":"e","context":{context}}}"#);
        assert_eq!(post(&s, "/v1/track", &body).await.status, 200, "{context}");
    }
    // `records` refuses a record with a repeated key; the bytes show where the value went.
    let raw = records(&mem, "events");
    raw.iter()
        .map(|r| {
            assert_eq!(r.matches(r#""ip":"#).count(), 1, "{r}");
            let at = r.find(r#""context":"#).unwrap() + r#""context":"#.len();
            r[at..at + r[at..].find('}').unwrap() + 1].to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_ip_null_is_replaced_in_place() {
    let contexts = published_contexts(&[r#"{"ip":null,"locale":"en"}"#]).await;
    assert_eq!(contexts, [r#"{"ip":"127.0.0.1","locale":"en"}"#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_ip_spelled_with_escapes_or_repeated_is_one_key() {
    let contexts = published_contexts(&[
        r#"{"\u0069p":null,"locale":"en"}"#,
        r#"{"locale":"en","\u0069p":"198.51.100.7"}"#,
        r#"{"ip":"203.0.113.1","locale":"en","ip":"198.51.100.7"}"#,
    ])
    .await;
    assert_eq!(
        contexts,
        [
            r#"{"ip":"127.0.0.1","locale":"en"}"#,
            r#"{"locale":"en","ip":"198.51.100.7"}"#,
            r#"{"ip":"198.51.100.7","locale":"en"}"#,
        ]
    );
}

// ---- timestamps -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_timestamp_is_the_device_time_in_the_correction() {
    let (s, mem) = server().await;
    // The issue's example: received 14:30:10; the device says it sent at 15:30:05 a call from
    // 15:30:00, so the call happened 5 s before receipt. The client's `timestamp` is not the
    // device time and must not drive the correction (it would give 13:30:05).
    let body = r#"{"userId":"u","event":"e","originalTimestamp":"2025-03-15T15:30:00Z","timestamp":"2025-03-15T14:30:00Z","sentAt":"2025-03-15T15:30:05Z"}"#;
    assert_eq!(post(&s, "/v1/track", body).await.status, 200);
    // Without originalTimestamp, the client's timestamp is the device time and is kept as
    // originalTimestamp.
    let body = r#"{"userId":"u","event":"e","timestamp":"2025-03-15T15:30:00Z","sentAt":"2025-03-15T15:30:05Z"}"#;
    assert_eq!(post(&s, "/v1/track", body).await.status, 200);
    let v = parsed(&records(&mem, "events"));
    assert_eq!(v[0]["timestamp"], "2025-03-15T14:30:05.000Z");
    assert_eq!(v[0]["originalTimestamp"], "2025-03-15T15:30:00Z");
    assert_eq!(v[0]["receivedAt"], RECEIVED_AT);
    assert_eq!(v[1]["timestamp"], "2025-03-15T14:30:05.000Z");
    assert_eq!(v[1]["originalTimestamp"], "2025-03-15T15:30:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso8601_timestamps_are_accepted() {
    let (s, mem) = server().await;
    for ts in ["2025-03-15T15:30:00+0100", "2025-03-15T14:30Z", "2025-03-15t14:30:00.123456789123z"] {
        let body = format!(r#"{{"userId":"u","event":"e","timestamp":"{ts}"}}"#);
        let r = post(&s, "/v1/track", &body).await;
        assert_eq!(r.status, 200, "{ts}: {:?}", r.json());
    }
    let v = parsed(&records(&mem, "events"));
    let stamps: Vec<&str> = v.iter().map(|e| e["timestamp"].as_str().unwrap()).collect();
    assert_eq!(stamps, ["2025-03-15T14:30:00.000Z", "2025-03-15T14:30:00.000Z", "2025-03-15T14:30:00.123Z"]);

    // What is not a date-time is still refused.
    for ts in ["yesterday", "2025-03-15", "2025-03-15T14:30:00"] {
        let body = format!(r#"{{"userId":"u","event":"e","timestamp":"{ts}"}}"#);
        post(&s, "/v1/track", &body).await.assert_error(400, "invalid_timestamp");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_at_that_does_not_parse_is_ignored() {
    let (s, mem) = server().await;
    // A call's sentAt only serves the correction: one that does not parse corrects nothing,
    // and the call is published (as it is when a batch's sentAt does not parse).
    let body = r#"{"userId":"u","event":"e","timestamp":"2025-03-15T14:00:00Z","sentAt":"a moment ago"}"#;
    assert_eq!(post(&s, "/v1/track", body).await.status, 200);
    let batch = r#"{"batch":[{"type":"track","userId":"u","event":"e","timestamp":"2025-03-15T15:29:00Z","sentAt":7}],"sentAt":"2025-03-15T15:30:00Z"}"#;
    assert_eq!(post(&s, "/v1/batch", batch).await.status, 200);
    let v = parsed(&records(&mem, "events"));
    assert_eq!(v[0]["timestamp"], "2025-03-15T14:00:00.000Z");
    assert!(v[0].get("sentAt").is_none(), "{}", v[0]);
    // In a batch, the batch's sentAt applies instead.
    assert_eq!(
        (&v[1]["timestamp"], &v[1]["sentAt"]),
        (&json!("2025-03-15T14:29:10.000Z"), &json!("2025-03-15T15:30:00Z"))
    );
}

// ---- ids --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_group_and_previous_ids_are_published_as_strings() {
    let (s, mem) = server().await;
    assert_eq!(post(&s, "/v1/group", r#"{"userId":42,"groupId":1001}"#).await.status, 200);
    assert_eq!(post(&s, "/v1/alias", r#"{"userId":42,"previousId":-7}"#).await.status, 200);
    let v = parsed(&records(&mem, "events"));
    assert_eq!((&v[0]["userId"], &v[0]["groupId"]), (&json!("42"), &json!("1001")));
    assert_eq!(v[1]["previousId"], "-7");
}

// ---- JSON a tracking plan must be able to read --------------------------------------------------

const PLAN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contracts");

fn contracts_toml() -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [sink]
        kind = "memory"
        [contracts]
        dir = "{PLAN_DIR}"
        violations_topic = "audit"
        [[sources]]
        id = "shop"
        contracts = {{ plan = "example", unplanned_events = "block", violations = "block" }}
        keys = [{{ key = "{KEY}" }}]
        "#
    )
}

const CTX: &str = r#""context":{"library":{"name":"test"}}"#;

fn nested(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

fn evil(properties: &str) -> String {
    format!(r#"{{"type":"track","userId":"u","event":"Evil Unplanned","properties":{properties},{CTX}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_cannot_bypass_a_blocking_plan() {
    let (s, mem) = server_with(&contracts_toml()).await;
    // The plan blocks the event when it can read it...
    post(&s, "/v1/track", &evil(r#"{"a":1}"#)).await.assert_error(422, "contract_violation");
    // ...and decode refuses what it could not read, instead of it going through unchecked.
    let r = post(&s, "/v1/track", &evil(&format!(r#"{{"pad":{}}}"#, nested(200)))).await;
    r.assert_error(400, "invalid_json");
    assert!(r.json()["message"].as_str().unwrap().contains("'properties'"), "{:?}", r.json());
    // At the limit (the call, properties, pad: 128 levels) the plan reads it, and blocks it.
    let r = post(&s, "/v1/track", &evil(&format!(r#"{{"pad":{}}}"#, nested(126)))).await;
    r.assert_error(422, "contract_violation");
    assert!(records(&mem, "events").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaired_surrogate_escapes_cannot_bypass_a_blocking_plan() {
    let (s, mem) = server_with(&contracts_toml()).await;
    post(&s, "/v1/track", &evil(r#"{"\ud800":1}"#)).await.assert_error(400, "invalid_json");
    post(&s, "/v1/track", &evil(r#"{"a":"\udc00 and more"}"#)).await.assert_error(400, "invalid_json");
    // A paired one is a character like any other: the plan reads the event and blocks it.
    post(&s, "/v1/track", &evil(r#"{"a":"\ud83d\ude00"}"#)).await.assert_error(422, "contract_violation");
    assert!(records(&mem, "events").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaired_surrogate_in_a_member_name_refuses_only_its_event() {
    let (s, mem) = server_with(&contracts_toml()).await;
    let bad_name = format!(r#"{{"type":"track","userId":"u","event":"Evil Unplanned","\ud800":1,{CTX}}}"#);
    post(&s, "/v1/track", &bad_name).await.assert_error(400, "invalid_json");
    let planned = format!(
        r#"{{"type":"track","userId":"u","event":"Order Completed","properties":{{"order_id":"o-1","total":10}},{CTX}}}"#
    );
    let r = post(&s, "/v1/batch", &format!(r#"{{"batch":[{planned},{bad_name}]}}"#)).await;
    let j = r.json();
    assert_eq!((r.status, error_codes(&j)), (200, vec![(1, "invalid_json".to_string())]), "{j}");
    assert_eq!(parsed(&records(&mem, "events")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfit_events_of_a_batch_are_refused_by_index() {
    let (s, mem) = server_with(&contracts_toml()).await;
    let planned = format!(
        r#"{{"type":"track","userId":"u","event":"Order Completed","properties":{{"order_id":"o-1","total":10}},{CTX}}}"#
    );
    let batch = format!(
        r#"{{"batch":[{},{planned},{}]}}"#,
        evil(&format!(r#"{{"pad":{}}}"#, nested(200))),
        evil(r#"{"a":["\udbff"]}"#),
    );
    let r = post(&s, "/v1/batch", &batch).await;
    let j = r.json();
    assert_eq!(r.status, 200, "{j}");
    assert_eq!(error_codes(&j), [(0, "invalid_json".to_string()), (2, "invalid_json".to_string())]);
    let published = parsed(&records(&mem, "events"));
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["event"], "Order Completed");
}
