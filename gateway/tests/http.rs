//! The HTTP API end to end: the real server on an ephemeral port, raw HTTP requests, and what
//! reached the sink.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use std::time::Duration;

use serde_json::{json, Value};
use util::*;

const TRACK: &str = r#"{"userId":"u1","event":"Signed Up","properties":{"plan":"pro"}}"#;

fn single_body(t: &str) -> String {
    match t {
        "track" => r#"{"userId":"u1","event":"Signed Up"}"#.into(),
        "group" => r#"{"userId":"u1","groupId":"g1","traits":{"name":"Acme"}}"#.into(),
        "alias" => r#"{"userId":"u1","previousId":"anon-1"}"#.into(),
        _ => r#"{"userId":"u1","name":"Home","properties":{"a":1}}"#.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_single_call_path_publishes_its_type() {
    let s = TestServer::memory().await;
    let paths = [
        ("/v1/track", "track"),
        ("/v1/t", "track"),
        ("/v1/identify", "identify"),
        ("/v1/i", "identify"),
        ("/v1/page", "page"),
        ("/v1/p", "page"),
        ("/v1/screen", "screen"),
        ("/v1/s", "screen"),
        ("/v1/group", "group"),
        ("/v1/g", "group"),
        ("/v1/alias", "alias"),
        ("/v1/a", "alias"),
    ];
    for (path, t) in paths {
        let r = s.post_json(path, &single_body(t)).await;
        assert_eq!((r.status, r.json()), (200, json!({"success": true})), "{path}");
    }
    let types: Vec<String> = s.published().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, paths.iter().map(|(_, t)| t.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_paths_and_reference_api_paths() {
    let s = TestServer::memory().await;
    let batch = r#"{"batch":[{"type":"identify","userId":"u"},{"type":"track","userId":"u","event":"e"}]}"#;
    for path in ["/v1/batch", "/v1/b", "/v1/import", "/api/v1/events/batch"] {
        let r = s.post_json(path, batch).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.json(),
            json!({"success":true,"received":2,"accepted":2,"rejected":0,"duplicates":0,"consent_dropped":0,"errors":[]}),
            "{path}"
        );
    }
    let r = s.post_json("/api/v1/events", r#"{"type":"screen","userId":"u","name":"Settings"}"#).await;
    assert_eq!(r.status, 200);
    // The reference API's single endpoint takes the type from the body, so it must be there.
    s.post_json("/api/v1/events", r#"{"userId":"u","name":"Settings"}"#).await.assert_error(400, "invalid_type");
    let published = s.published();
    assert_eq!(published.len(), 9);
    assert_eq!(published[8]["type"], "screen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_js_telemetry_is_acknowledged_not_published() {
    let s = TestServer::memory().await;
    let r = s
        .post("/v1/m", &[("Content-Type", "text/plain")], br#"{"series":[{"type":"Counter","metric":"x","value":1}]}"#)
        .await;
    assert_eq!((r.status, r.json()), (200, json!({"success": true})));
    assert!(s.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_auth_form_and_their_precedence() {
    let s = TestServer::memory().await;
    let ev = r#"{"userId":"u","event":"e"}"#;
    let ct = ("Content-Type", "application/json");
    // X-Write-Key
    assert_eq!(s.post("/v1/track", &[ct, ("X-Write-Key", KEY)], ev.as_bytes()).await.status, 200);
    // Basic (password ignored)
    let b = basic(KEY);
    assert_eq!(s.post("/v1/track", &[ct, ("Authorization", &b)], ev.as_bytes()).await.status, 200);
    // ?writeKey=
    assert_eq!(s.post(&format!("/v1/track?writeKey={OTHER_KEY}"), &[ct], ev.as_bytes()).await.status, 200);
    // body writeKey, single and batch
    let with_key = format!(r#"{{"userId":"u","event":"e","writeKey":"{KEY}"}}"#);
    assert_eq!(s.post("/v1/track", &[ct], with_key.as_bytes()).await.status, 200);
    let batch = format!(r#"{{"writeKey":"{OTHER_KEY}","batch":[{{"type":"track","userId":"u","event":"e"}}]}}"#);
    assert_eq!(s.post("/v1/batch", &[ct], batch.as_bytes()).await.status, 200);
    let sources: Vec<Value> = s.published().iter().map(|e| e["sourceId"].clone()).collect();
    assert_eq!(sources, vec![json!("web"), json!("web"), json!("backend"), json!("web"), json!("backend")]);

    // Precedence: header beats Basic beats query beats body.
    let bad_body = r#"{"userId":"u","event":"e","writeKey":"nope"}"#;
    let b_other = basic(OTHER_KEY);
    let r = s
        .post(
            "/v1/track?writeKey=nope",
            &[ct, ("X-Write-Key", KEY), ("Authorization", "Basic Zm9vOg==")],
            bad_body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s.post("/v1/track?writeKey=nope", &[ct, ("Authorization", &b_other)], bad_body.as_bytes()).await;
    assert_eq!(r.status, 200);
    let r = s.post(&format!("/v1/track?writeKey={KEY}"), &[ct], bad_body.as_bytes()).await;
    assert_eq!(r.status, 200);
    // A wrong key in a stronger place is not rescued by a right one in a weaker place.
    s.post(&format!("/v1/track?writeKey={KEY}"), &[ct, ("X-Write-Key", "nope")], ev.as_bytes())
        .await
        .assert_error(401, "invalid_write_key");
    let sources: Vec<Value> = s.published().iter().skip(5).map(|e| e["sourceId"].clone()).collect();
    assert_eq!(sources, vec![json!("web"), json!("backend"), json!("web")]);

    // Missing, unknown, malformed.
    s.post("/v1/track", &[ct], ev.as_bytes()).await.assert_error(401, "missing_write_key");
    s.post("/v1/track", &[ct, ("X-Write-Key", "unknown")], ev.as_bytes()).await.assert_error(401, "invalid_write_key");
    s.post("/v1/track", &[ct, ("Authorization", "Basic %%%")], ev.as_bytes())
        .await
        .assert_error(401, "invalid_write_key");
    s.post("/v1/batch", &[ct], br#"{"batch":[{"type":"track","userId":"u","event":"e"}]}"#)
        .await
        .assert_error(401, "missing_write_key");

    // The key never reaches a published event.
    for e in s.published() {
        let text = e.to_string();
        assert!(!text.contains(KEY) && !text.contains(OTHER_KEY) && e.get("writeKey").is_none(), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_wrong_method_are_json() {
    let s = TestServer::memory().await;
    s.post_json("/v2/track", TRACK).await.assert_error(404, "not_found");
    request(s.addr, "GET", "/nope", &[], b"").await.assert_error(404, "not_found");
    let r = request(s.addr, "GET", "/v1/track", &[], b"").await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    request(s.addr, "POST", "/health", &[], b"").await.assert_error(405, "method_not_allowed");
    let r = request(s.addr, "GET", "/health", &[], b"").await;
    assert_eq!(r.status, 200);
    let r = request(s.addr, "GET", "/ready", &[], b"").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_caps_give_413() {
    // Test config: 64 KiB per request, 4 KiB per event, 50 events per batch.
    let s = TestServer::memory().await;
    let big_event = format!(r#"{{"userId":"u","event":"e","properties":{{"x":"{}"}}}}"#, "a".repeat(5000));
    s.post_json("/v1/track", &big_event).await.assert_error(413, "event_too_large");

    let huge = format!(
        r#"{{"batch":[{{"type":"track","userId":"u","event":"e","properties":{{"x":"{}"}}}}]}}"#,
        "a".repeat(70_000)
    );
    s.post_json("/v1/batch", &huge).await.assert_error(413, "payload_too_large");

    // Without a Content-Length (chunked), the cap is enforced while streaming.
    let chunk = vec![b' '; 16 * 1024];
    let mut raw = format!("POST /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nX-Write-Key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..8 {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw_request(s.addr, &raw).await.assert_error(413, "payload_too_large");

    let events: Vec<String> = (0..51).map(|i| format!(r#"{{"type":"track","userId":"u","event":"e{i}"}}"#)).collect();
    let r = s.post_json("/v1/batch", &format!(r#"{{"batch":[{}]}}"#, events.join(","))).await;
    r.assert_error(413, "payload_too_large");
    assert!(r.json()["message"].as_str().unwrap().contains("51"));

    // In a batch, an oversized event is one indexed error; the others are published.
    let big_track = big_event.replacen(r#"{"userId""#, r#"{"type":"track","userId""#, 1);
    let body = format!(r#"{{"batch":[{big_track},{{"type":"track","userId":"u","event":"ok"}}]}}"#);
    let r = s.post_json("/v1/batch", &body).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!((j["accepted"].as_u64(), j["rejected"].as_u64()), (Some(1), Some(1)), "{j}");
    assert_eq!(j["errors"][0]["index"], 0);
    assert_eq!(j["errors"][0]["code"], "event_too_large");
    assert_eq!(s.published().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_unknown_content_encoding_gives_415() {
    let s = TestServer::memory().await;
    let r = s
        .post(
            "/v1/track",
            &[("Content-Type", "application/json"), ("Content-Encoding", "br"), ("X-Write-Key", KEY)],
            TRACK.as_bytes(),
        )
        .await;
    r.assert_error(415, "unsupported_encoding");
    assert!(s.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_invalid_events_give_400() {
    let s = TestServer::memory().await;
    let r = s.post_json("/v1/track", r#"{"userId":"u","event": }"#).await;
    r.assert_error(400, "invalid_json");
    assert!(r.json()["message"].as_str().unwrap().contains("byte 23"), "{}", r.json());
    s.post_json("/v1/batch", r#"{"batch":[{"type":"track",}]}"#).await.assert_error(400, "invalid_json");
    s.post_json("/v1/batch", r#"{"events":[]}"#).await.assert_error(400, "invalid_body");
    s.post_json("/v1/track", "").await.assert_error(400, "invalid_body");
    s.post_json("/v1/track", "[1]").await.assert_error(400, "invalid_event");
    s.post_json("/v1/track", r#"{"event":"e"}"#).await.assert_error(400, "missing_identity");
    s.post_json("/v1/track", r#"{"userId":"u"}"#).await.assert_error(400, "missing_event");
    s.post_json("/v1/group", r#"{"userId":"u"}"#).await.assert_error(400, "missing_group_id");
    s.post_json("/v1/alias", r#"{"userId":"u"}"#).await.assert_error(400, "missing_previous_id");
    s.post_json("/v1/alias", r#"{"anonymousId":"a","previousId":"p"}"#).await.assert_error(400, "missing_user_id");
    s.post_json("/v1/track", r#"{"userId":"u","event":"e","type":"page"}"#).await.assert_error(400, "invalid_type");
    s.post_json("/v1/track", r#"{"userId":"u","event":"e","timestamp":"03/15/2025"}"#)
        .await
        .assert_error(400, "invalid_timestamp");
    s.post(
        "/v1/track",
        &[("Content-Type", "application/json"), ("X-Write-Key", KEY), ("Content-Encoding", "gzip")],
        b"not gzip",
    )
    .await
    .assert_error(400, "invalid_gzip");
    assert!(s.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_body_and_gzip_bomb() {
    let s = TestServer::memory().await;
    let headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip"), ("X-Write-Key", KEY)];
    let r =
        s.post("/v1/batch", &headers, &gzip(br#"{"batch":[{"type":"track","userId":"u","event":"zipped"}]}"#)).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(s.published()[0]["event"], "zipped");

    // 16 MiB of spaces inside valid JSON compresses to ≈16 KiB, under the 64 KiB wire cap, and
    // inflates to 256× the cap.
    let mut bomb_src = br#"{"batch":[{"type":"track","userId":"u","event":"e"}]"#.to_vec();
    bomb_src.extend(std::iter::repeat_n(b' ', 16 << 20));
    bomb_src.push(b'}');
    let bomb = gzip(&bomb_src);
    assert!(bomb.len() < 65536, "bomb is {} bytes", bomb.len());
    s.post("/v1/batch", &headers, &bomb).await.assert_error(413, "payload_too_large");
    assert_eq!(s.published().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batch_publishes_the_valid_events_and_indexes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::local_log(dir.path()).await;
    let body = r#"{"batch":[
        {"type":"track","userId":"u","event":"first","messageId":"m-0"},
        {"type":"track","userId":"u"},
        {"type":"bogus","userId":"u"},
        {"type":"identify","anonymousId":"a","messageId":"m-3","traits":{"x":1}},
        7,
        {"type":"group","userId":"u","groupId":"g","messageId":"m-5"}
    ]}"#;
    let r = s.post_json("/v1/batch", body).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["success"], true);
    assert_eq!((j["received"].as_u64(), j["accepted"].as_u64(), j["rejected"].as_u64()), (Some(6), Some(3), Some(3)));
    assert_eq!(
        error_codes(&j),
        vec![(1, "missing_event".to_string()), (2, "invalid_type".to_string()), (4, "invalid_event".to_string())]
    );
    // The valid ones are on disk, in order.
    let ids: Vec<String> =
        log_events(dir.path(), "events").iter().map(|e| e["messageId"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["m-0", "m-3", "m-5"]);

    // All rejected: 400 with the same shape.
    let r = s.post_json("/v1/batch", r#"{"batch":[{"type":"track"},{"userId":"u"}]}"#).await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["success"], false);
    assert_eq!(j["code"], "all_events_rejected");
    assert_eq!((j["received"].as_u64(), j["accepted"].as_u64(), j["rejected"].as_u64()), (Some(2), Some(0), Some(2)));
    assert_eq!(j["errors"].as_array().unwrap().len(), 2);
    assert_eq!(log_events(dir.path(), "events").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalisation_and_clock_skew() {
    let s = TestServer::memory().await;
    // The client's clock runs 1 h fast; the event happened 10 s before it was sent.
    let body = r#"{"batch":[
        {"type":"track","userId":"u","event":"skewed","timestamp":"2030-01-01T13:00:00.000Z","sentAt":"2030-01-01T13:00:10.000Z"},
        {"type":"track","userId":"u","event":"batch-sent-at","timestamp":"2030-01-01T12:59:55.000+00:00"},
        {"type":"track","anonymousId":"a","event":"no-time","messageId":"client-id","context":{"ip":"198.51.100.1","library":{"name":"x"}}}
    ],"sentAt":"2030-01-01T13:00:00.000Z"}"#;
    assert_eq!(s.post_json("/v1/batch", body).await.status, 200);
    let ev = s.published();
    let received = time::OffsetDateTime::parse(
        ev[0]["receivedAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ts = |e: &Value| {
        time::OffsetDateTime::parse(e["timestamp"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    assert_eq!(received - ts(&ev[0]), time::Duration::seconds(10));
    assert_eq!(ev[0]["originalTimestamp"], "2030-01-01T13:00:00.000Z");
    assert_eq!(ev[0]["sentAt"], "2030-01-01T13:00:10.000Z");
    // The batch's sentAt applies to events without their own.
    assert_eq!(received - ts(&ev[1]), time::Duration::seconds(5));
    // No timestamp: receipt time; the client's messageId and context.ip are kept.
    assert_eq!(ev[2]["timestamp"], ev[2]["receivedAt"]);
    assert_eq!(ev[2]["messageId"], "client-id");
    assert_eq!(ev[2]["context"], json!({"ip":"198.51.100.1","library":{"name":"x"}}));
    // Generated messageIds are UUIDs; context.ip comes from the peer; sourceId is set.
    assert!(uuid::Uuid::parse_str(ev[0]["messageId"].as_str().unwrap()).is_ok());
    assert_eq!(ev[0]["context"]["ip"], "127.0.0.1");
    assert_eq!(ev[0]["sourceId"], "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let s = TestServer::memory().await;
    // The test config trusts 127.0.0.2 only; we connect from 127.0.0.1.
    let r = s
        .post(
            "/v1/track",
            &[("Content-Type", "application/json"), ("X-Write-Key", KEY), ("X-Forwarded-For", "203.0.113.5")],
            TRACK.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.published()[0]["context"]["ip"], "127.0.0.1");

    let trusting = TestServer::memory_with(
        &config_text("").replace(r#"trusted_proxies = ["127.0.0.2"]"#, r#"trusted_proxies = ["127.0.0.0/8"]"#),
    )
    .await;
    trusting
        .post(
            "/v1/track",
            &[("Content-Type", "application/json"), ("X-Write-Key", KEY), ("X-Forwarded-For", "203.0.113.5, 10.1.1.1")],
            TRACK.as_bytes(),
        )
        .await;
    // Proxies append on the right: the right-most entry that is not a trusted proxy is the
    // client, whatever the client wrote to its left.
    assert_eq!(trusting.published()[0]["context"]["ip"], "10.1.1.1");
    trusting
        .post(
            "/v1/track",
            &[
                ("Content-Type", "application/json"),
                ("X-Write-Key", KEY),
                ("X-Forwarded-For", "10.1.1.1, 203.0.113.5, 127.0.0.9"),
            ],
            TRACK.as_bytes(),
        )
        .await;
    assert_eq!(trusting.published()[1]["context"]["ip"], "203.0.113.5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_headers_on_answers() {
    let s = TestServer::memory().await;
    let origin = ("Origin", "https://shop.example.com");
    for path in ["/v1/t", "/v1/batch", "/api/v1/events", "/v1/m"] {
        let r = request(
            s.addr,
            "OPTIONS",
            path,
            &[
                origin,
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, baggage"),
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        let allowed = r.header("access-control-allow-headers").unwrap().to_ascii_lowercase();
        for h in ["content-type", "authorization", "x-write-key", "baggage", "sentry-trace", "traceparent"] {
            assert!(allowed.contains(h), "{h} not in {allowed}");
        }
        assert!(r.header("access-control-max-age").unwrap().parse::<u64>().unwrap() >= 3600);
        assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    }
    // Answers carry them too, errors included.
    let r = s
        .post("/v1/t", &[origin, ("Content-Type", "text/plain"), ("Authorization", &basic(KEY))], TRACK.as_bytes())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
    let r = s.post("/v1/t", &[origin, ("Content-Type", "text/plain")], TRACK.as_bytes()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beacon_can_ask_for_204() {
    let s = TestServer::memory().await;
    let body = r#"{"batch":[{"type":"track","userId":"u","event":"unload"}]}"#;
    let r = s
        .post(
            &format!("/v1/batch?writeKey={KEY}&beacon=1"),
            &[("Content-Type", "text/plain;charset=UTF-8")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(s.published().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failures_are_retriable_errors() {
    use gateway::publish::PublishError;
    let s = TestServer::memory().await;
    let mem = s.memory.clone().unwrap();
    mem.fail_next(vec![PublishError::QueueFull]);
    let r = s.post_json("/v1/track", TRACK).await;
    r.assert_error(503, "publish_unavailable");
    assert_eq!(r.header("retry-after"), Some("2"));
    // A batch where one event fails at the sink: 503 so the SDK retries the request.
    mem.fail_next(vec![PublishError::Timeout]);
    let r = s
        .post_json(
            "/v1/batch",
            r#"{"batch":[{"type":"track","userId":"u","event":"a"},{"type":"track","userId":"u","event":"b"}]}"#,
        )
        .await;
    assert_eq!(r.status, 503);
    let j = r.json();
    assert_eq!(
        (j["success"].as_bool(), j["code"].as_str(), j["accepted"].as_u64()),
        (Some(false), Some("publish_timeout"), Some(1))
    );
    assert_eq!(j["errors"][0]["index"], 0);
    // A non-retriable failure: 500.
    mem.fail_next(vec![PublishError::Fatal("TopicAuthorizationFailed".into())]);
    s.post_json("/v1/track", TRACK).await.assert_error(500, "publish_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_answered_2xx_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for round in 0..2 {
        let s = TestServer::local_log(dir.path()).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let id = format!("r{round}-{i}");
            ids.push(id.clone());
            let addr = s.addr;
            tasks.push(tokio::spawn(async move {
                let body = format!(r#"{{"batch":[{{"type":"track","userId":"u","event":"e","messageId":"{id}"}}]}}"#);
                post_status(addr, "/v1/batch", KEY, &body).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        s.stop().await;
    }
    let mut on_disk: Vec<String> =
        log_events(dir.path(), "events").iter().map(|e| e["messageId"].as_str().unwrap().to_string()).collect();
    on_disk.sort();
    ids.sort();
    assert_eq!(on_disk, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_shutdown_completes() {
    let mut s = TestServer::memory().await;
    s.memory.as_ref().unwrap().set_delay(Some(Duration::from_millis(400)));
    let addr = s.addr;
    let pending = tokio::spawn(async move {
        request(
            addr,
            "POST",
            "/v1/track",
            &[("Content-Type", "application/json"), ("X-Write-Key", KEY)],
            TRACK.as_bytes(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.signal_stop();
    let r = pending.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(s.published().len(), 1);
    // The listener is closed afterwards.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_works() {
    use http_body_util::{BodyExt, Full};
    let s = TestServer::memory().await;
    let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::post(format!("http://{}/v1/track", s.addr))
            .header("content-type", "application/json")
            .header("x-write-key", KEY)
            .body(Full::new(bytes::Bytes::from(format!(r#"{{"userId":"u","event":"h2-{i}"}}"#))))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"success":true}"#);
    }
    assert_eq!(s.published().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_many_requests_on_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::memory().await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let req = format!("POST /v1/t HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nX-Write-Key: {KEY}\r\nContent-Length: {}\r\n\r\n{TRACK}", TRACK.len());
    for _ in 0..5 {
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(s.published().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let s = TestServer::memory().await;
    s.post_json(
        "/v1/batch",
        r#"{"batch":[{"type":"track","userId":"u","event":"a"},{"type":"identify","userId":"u"},{"type":"track"}]}"#,
    )
    .await;
    s.post_json("/v1/track", r#"{"event":"x"}"#).await;
    let r = request(s.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    for line in [
        r#"gateway_events_received_total{source_id="web"} 4"#,
        r#"gateway_events_accepted_total{source_id="web",type="track"} 1"#,
        r#"gateway_events_accepted_total{source_id="web",type="identify"} 1"#,
        r#"gateway_events_rejected_total{code="missing_identity",source_id="web",type="unknown"} 1"#,
        r#"gateway_events_rejected_total{code="missing_identity",source_id="web",type="track"} 1"#,
        r#"gateway_http_requests_total{route="batch",status="200"} 1"#,
        r#"gateway_http_requests_total{route="track",status="400"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
}

fn server_config(extra_server: &str) -> String {
    config_text("").replace("shutdown_timeout_ms = 5000", &format!("shutdown_timeout_ms = 5000\n{extra_server}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::memory_with(&server_config("header_read_timeout_ms = 300")).await;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // A slowloris client: half a request head, then nothing.
    conn.write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a slow client's connection open");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    // A normal request still works.
    assert_eq!(s.post_json("/v1/track", TRACK).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_holds_new_connections_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::memory_with(&server_config("max_connections = 2")).await;
    // Two requests in flight hold the cap: their bodies are half sent. (Idle connections would
    // not: at the cap they close to make room, see tests/connections.rs.)
    let head = |close: &str| {
        format!("POST /v1/t HTTP/1.1\r\nHost: x\r\n{close}Content-Type: text/plain\r\nX-Write-Key: {KEY}\r\nContent-Length: {}\r\n\r\n", TRACK.len())
    };
    let (first, rest) = TRACK.split_at(TRACK.len() / 2);
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(format!("{}{first}", head("")).as_bytes()).await.unwrap();
        busy.push(c);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.state.metrics.in_flight.get() != 2 {
        assert!(std::time::Instant::now() < deadline, "the two requests did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c3 = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c3.write_all(format!("{}{TRACK}", head("Connection: close\r\n")).as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), c3.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served over a cap of 2");
    assert_eq!(s.state.metrics.open_connections.get(), 2);
    // One request completes. Its connection was not asked to close while the request was in
    // flight (no `Connection: close`), but once idle it makes room: the third one is served.
    busy[0].write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), busy[0].read_to_end(&mut answer)).await.unwrap().unwrap();
    let r = parse_response(&answer);
    assert_eq!((r.status, r.header("connection")), (200, None), "{r:?}");
    let n = tokio::time::timeout(Duration::from_secs(3), c3.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    busy[1].write_all(rest.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(3), busy[1].read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    assert_eq!(s.published().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_sink_and_draining() {
    let s = TestServer::memory().await;
    let mem = s.memory.clone().unwrap();
    assert_eq!(request(s.addr, "GET", "/ready", &[], b"").await.status, 200);
    mem.set_ready(Err("disk full".into()));
    let r = request(s.addr, "GET", "/ready", &[], b"").await;
    r.assert_error(503, "not_ready");
    assert!(r.json()["message"].as_str().unwrap().contains("disk full"));
    // Liveness is not readiness.
    assert_eq!(request(s.addr, "GET", "/health", &[], b"").await.status, 200);
    mem.set_ready(Ok(()));
    assert_eq!(request(s.addr, "GET", "/ready", &[], b"").await.status, 200);
    s.state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let r = request(s.addr, "GET", "/ready", &[], b"").await;
    r.assert_error(503, "not_ready");
    assert!(r.json()["message"].as_str().unwrap().contains("draining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_keys_and_refuses_a_broken_file() {
    use gateway::config::Overrides;
    let s = TestServer::memory().await;
    assert_eq!(s.post_json("/v1/track", TRACK).await.status, 200);
    let dir = tempfile::tempdir().unwrap();
    // Revoke the test key: the new file only knows the other one.
    let revoked = dir.path().join("revoked.toml");
    std::fs::write(
        &revoked,
        config_text("").replace(
            &format!(r#"keys = [{{ key = "{KEY}", label = "browser" }}]"#),
            r#"keys = [{ key = "fresh-key" }]"#,
        ),
    )
    .unwrap();
    gateway::ingest::reload::reload_from(&s.state, Some(&revoked), &Overrides::default()).unwrap();
    s.post_json("/v1/track", TRACK).await.assert_error(401, "invalid_write_key");
    let r = s
        .post("/v1/track", &[("Content-Type", "application/json"), ("X-Write-Key", "fresh-key")], TRACK.as_bytes())
        .await;
    assert_eq!(r.status, 200);
    // A broken file is refused and the current config keeps serving.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[server]\nlisten = \"x\"\n[[sources]]\nid = \"\"\n").unwrap();
    let err = gateway::ingest::reload::reload_from(&s.state, Some(&broken), &Overrides::default()).unwrap_err();
    assert!(err.contains("broken.toml"), "{err}");
    let r = s
        .post("/v1/track", &[("Content-Type", "application/json"), ("X-Write-Key", "fresh-key")], TRACK.as_bytes())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.state.metrics.config_reloads.with_label_values(&["ok"]).get(), 1);
    assert_eq!(s.state.metrics.config_reloads.with_label_values(&["error"]).get(), 1);
}

/// Checks every line of a Prometheus text exposition (format 0.0.4).
fn assert_valid_exposition(text: &str) {
    let mut typed = std::collections::HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(rest.split_once(' ').is_some(), "bad HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value == "+Inf" || value == "NaN" || value.parse::<f64>().is_ok(), "bad value: {line}");
        let name = series.split('{').next().unwrap();
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'), "bad name: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "series without TYPE: {line}");
        assert!(name.starts_with("gateway_"), "metric outside our namespace: {line}");
        if typed[family] == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
        }
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "bad labels: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exposition_is_valid_prometheus_text() {
    let s = TestServer::memory().await;
    s.post_json("/v1/batch", r#"{"batch":[{"type":"track","userId":"u","event":"a"},{"type":"track"}]}"#).await;
    s.post_json("/v1/track", r#"{"userId":"u","event":"a","messageId":"m"}"#).await;
    s.post_json("/v1/track", r#"{"userId":"u","event":"a","messageId":"m"}"#).await;
    request(s.addr, "GET", "/nope", &[], b"").await;
    let r = request(s.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body).unwrap();
    assert_valid_exposition(&text);
    for line in [
        r#"gateway_events_duplicated_total{source_id="web",type="track"} 1"#,
        r#"gateway_events_accepted_total{source_id="web",type="track"} 2"#,
        r#"gateway_http_requests_total{route="unknown",status="404"} 1"#,
        r#"gateway_http_requests_total{route="track",status="200"} 2"#,
        "gateway_ready 1",
        "gateway_dedup_entries 1",
        "gateway_http_requests_in_flight 0",
        r#"gateway_publish_duration_seconds_count{sink="memory"} 2"#, // the duplicate is not published
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_an_admin_listener_only() {
    use gateway::config::{Config, Overrides};
    let text = config_text("")
        .replace("shutdown_timeout_ms = 5000", "shutdown_timeout_ms = 5000\nadmin_listen = \"127.0.0.1:0\"");
    let mut config = Config::from_toml("t", &text, &Overrides::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    config.usage_dir = dir.path().to_path_buf();
    config.dedup.snapshot_path = None;
    let state = std::sync::Arc::new(
        gateway::AppState::new(
            config,
            std::sync::Arc::new(gateway::publish::memory::MemoryPublisher::new()),
            gateway::ops::metrics::Metrics::new(),
        )
        .unwrap(),
    );
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway::serve_with_admin(state, public, Some(admin), async {
        let _ = rx.await;
    }));
    request(public_addr, "GET", "/metrics", &[], b"").await.assert_error(404, "not_found");
    let r = request(admin_addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8(r.body).unwrap().contains("gateway_http_requests_total"));
    assert_eq!(request(admin_addr, "GET", "/ready", &[], b"").await.status, 200);
    request(admin_addr, "POST", "/v1/track", &[], b"{}").await.assert_error(404, "not_found");
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}
