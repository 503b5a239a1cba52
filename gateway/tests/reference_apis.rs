//! The reference APIs served on the `/v1/batch` pipeline: `POST /v1/events` and
//! `POST /api/client/events` through the real server, with `Authorization: Bearer`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use serde_json::{json, Value};
use util::*;

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn post_bearer(s: &TestServer, path: &str, body: &Value) -> Resp {
    let auth = bearer(KEY);
    s.post(path, &[("Content-Type", "application/json"), ("Authorization", &auth)], body.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_a_fifth_way_to_give_a_key_on_every_ingest_path() {
    let s = TestServer::memory().await;
    let r = s.post("/v1/track", &[("Authorization", &bearer(KEY))], br#"{"userId":"u","event":"with bearer"}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r =
        s.post("/v1/batch", &[("Authorization", &bearer(KEY))], br#"{"batch":[{"type":"page","userId":"u"}]}"#).await;
    assert_eq!(r.status, 200);
    let r = s.post("/v1/track", &[("Authorization", "Bearer nope")], br#"{"userId":"u","event":"x"}"#).await;
    r.assert_error(401, "invalid_write_key");
    let published = s.published();
    assert_eq!(published.len(), 2);
    assert_eq!(published[0]["event"], "with bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_events_accepts_the_documents_example_and_answers_202_with_ids() {
    let s = TestServer::memory().await;
    // The document's curl example, as written.
    let body = json!({"events": [{"eventName": "feature_used", "email": "user@example.com",
        "timestamp": "2026-03-12T10:30:00Z", "properties": {"feature": "dashboard", "duration_seconds": 120}}]});
    let r = post_bearer(&s, "/v1/events", &body).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    let j = r.json();
    assert_eq!(
        (j["success"].as_bool(), j["accepted"].as_u64(), j["rejected"].as_u64()),
        (Some(true), Some(1), Some(0))
    );
    assert!(j["requestId"].as_str().unwrap().starts_with("req_"));
    let id = j["eventIds"][0].as_str().unwrap().to_string();
    assert!(id.starts_with("evt_"));
    let published = s.published();
    assert_eq!(published.len(), 1);
    let e = &published[0];
    assert_eq!((e["type"].as_str(), e["event"].as_str()), (Some("track"), Some("feature_used")));
    assert_eq!(e["messageId"], id.as_str());
    assert_eq!(e["userId"], "user@example.com");
    assert_eq!(e["context"]["traits"]["email"], "user@example.com");
    // The historical timestamp is kept (no sentAt: no clock-skew correction).
    assert!(e["timestamp"].as_str().unwrap().starts_with("2026-03-12T10:30:00"), "{e}");
    assert_eq!(e["properties"], json!({"feature": "dashboard", "duration_seconds": 120}));
    // Indistinguishable from a live track: the same normalisation (receivedAt, context.ip…).
    assert!(e["receivedAt"].is_string() && e["context"]["ip"].is_string(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_events_refuses_bad_events_by_index_and_dedups_by_event_id() {
    let s = TestServer::memory().await;
    let body = json!({"events": [
        {"eventName": "a", "email": "a@x.io", "eventId": "evt-1"},
        {"eventName": "b"},
        {"eventName": "c", "domain": "x.io", "timestamp": "yesterday"},
        {"eventName": "x".repeat(256), "email": "a@x.io"},
        {"eventName": "d", "domain": "x.io", "eventId": "evt-2"},
    ]});
    let r = post_bearer(&s, "/v1/events", &body).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    let j = r.json();
    assert_eq!((j["accepted"].as_u64(), j["rejected"].as_u64()), (Some(2), Some(3)));
    assert_eq!(j["eventIds"], json!(["evt-1", "evt-2"]));
    let errors: Vec<(u64, String)> = error_codes(&j);
    assert_eq!(
        errors,
        vec![(1, "missing_identity".into()), (2, "invalid_timestamp".into()), (3, "invalid_field".into())]
    );
    // The same eventIds again: answered, not published twice.
    let again = json!({"events": [{"eventName": "a", "email": "a@x.io", "eventId": "evt-1"}]});
    let r = post_bearer(&s, "/v1/events", &again).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["accepted"], 1);
    let ids: Vec<String> = s.published().iter().map(|e| e["messageId"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["evt-1", "evt-2"]);
    // All refused: 400 with the same body.
    let r = post_bearer(&s, "/v1/events", &json!({"events": [{"eventName": "b"}]})).await;
    assert_eq!(r.status, 400);
    assert_eq!((r.json()["success"].as_bool(), r.json()["code"].as_str()), (Some(false), Some("missing_identity")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_events_takes_a_hundred_events_and_refuses_a_hundred_and_one() {
    // The test config's batch cap is 50: the document's 100 stands for these paths.
    let s = TestServer::memory().await;
    let events = |n: usize| -> Value {
        json!({ "events": (0..n).map(|i| json!({"eventName": "e", "email": format!("u{i}@x.io")})).collect::<Vec<_>>() })
    };
    let r = post_bearer(&s, "/v1/events", &events(100)).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    assert_eq!(r.json()["accepted"], 100);
    post_bearer(&s, "/v1/events", &events(101)).await.assert_error(413, "payload_too_large");
    assert_eq!(s.published().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_answer_204_and_a_user_block_identifies_with_both_ids() {
    let s = TestServer::memory().await;
    let body = json!([{
        "name": "product_viewed", "anonymous_id": "anon-2c8a3e", "external_id": "cust-9f4b21",
        "data": {"product_id": "sku-1024", "value": 49.95, "currency": "AUD"},
        "user": {"email": "jane@example.com", "phone": "+61400123456", "timezone": "Australia/Sydney",
                 "locale": "en-AU", "data": {"plan": "pro"}},
        "created_at": "2026-04-28T05:14:00.000Z"
    }]);
    let r = post_bearer(&s, "/api/client/events", &body).await;
    assert_eq!((r.status, r.body.len()), (204, 0), "{:?}", r.body);
    let published = s.published();
    assert_eq!(published.len(), 2);
    let (identify, track) = (&published[0], &published[1]);
    assert_eq!(identify["type"], "identify");
    assert_eq!(identify["traits"]["email"], "jane@example.com");
    assert_eq!(identify["traits"]["plan"], "pro");
    for call in [identify, track] {
        assert_eq!((call["userId"].as_str(), call["anonymousId"].as_str()), (Some("cust-9f4b21"), Some("anon-2c8a3e")));
        assert!(call["timestamp"].as_str().unwrap().starts_with("2026-04-28T05:14:00"));
    }
    assert_eq!(track["event"], "product_viewed");
    assert_eq!(track["properties"]["value"], 49.95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_with_a_bad_event_answer_400_by_index_and_publish_nothing() {
    let s = TestServer::memory().await;
    let body = json!([{"name": "ok", "external_id": "u"}, {"name": "no ids"}, {"external_id": "u"}]);
    let r = post_bearer(&s, "/api/client/events", &body).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    let j = r.json();
    assert_eq!(j["success"], false);
    assert_eq!(error_codes(&j), vec![(1, "missing_identity".into()), (2, "missing_event".into())]);
    assert!(s.published().is_empty());
    // Not an array: the body is refused.
    post_bearer(&s, "/api/client/events", &json!({"name": "x"})).await.assert_error(400, "invalid_body");
    // 101 events: 413.
    let many: Vec<Value> = (0..101).map(|_| json!({"name": "e", "external_id": "u"})).collect();
    post_bearer(&s, "/api/client/events", &Value::Array(many)).await.assert_error(413, "payload_too_large");
    // And a missing key is a 401 like anywhere else.
    let r = s.post("/api/client/events", &[], br#"[{"name":"e","external_id":"u"}]"#).await;
    r.assert_error(401, "missing_write_key");
}
