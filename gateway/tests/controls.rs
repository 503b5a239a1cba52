//! Per-key controls (key kinds, call types, origins, revocation, rate limits, quotas, usage),
//! consent at the edge, and messageId dedup — through HTTP against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use std::sync::Arc;
use std::time::Duration;

use gateway::access::ratelimit::{ManualClock, Nanos};
use gateway::ingest::Clocks;
use gateway::publish::memory::MemoryPublisher;
use gateway::publish::PublishError;
use serde_json::{json, Value};
use util::*;

const PUBLISHABLE: &str = "pk-browser";
const SECRET: &str = "sk-server";

fn controls_config(source_extra: &str, extra: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [sink]
        kind = "memory"
        {extra}
        [[sources]]
        id = "shop"
        allowed_origins = ["https://shop.example.com"]
        {source_extra}
        [[sources.keys]]
        key = "{PUBLISHABLE}"
        label = "browser"
        allowed_types = ["track", "page", "identify"]
        [[sources.keys]]
        key = "{SECRET}"
        label = "backend"
        kind = "secret"
        "#
    )
}

async fn server(toml: &str) -> (TestServer, Arc<MemoryPublisher>) {
    let mem = Arc::new(MemoryPublisher::new());
    let s = TestServer::start(toml, mem.clone()).await;
    (s, mem)
}

async fn post(s: &TestServer, key: &str, path: &str, body: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![("Content-Type", "application/json"), ("X-Write-Key", key)];
    headers.extend_from_slice(extra);
    s.post(path, &headers, body.as_bytes()).await
}

fn payloads(mem: &MemoryPublisher) -> Vec<Value> {
    mem.events().iter().map(|e| serde_json::from_slice(&e.payload).unwrap()).collect()
}

const TRACK: &str = r#"{"userId":"u","event":"Order Completed"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_kinds_and_what_they_may_do() {
    let (s, mem) = server(&controls_config("", "")).await;
    // Both kinds ingest.
    assert_eq!(post(&s, PUBLISHABLE, "/v1/track", TRACK, &[]).await.status, 200);
    assert_eq!(post(&s, SECRET, "/v1/track", TRACK, &[]).await.status, 200);
    // Only the secret key reads usage (Bearer or Basic).
    let r = request(s.addr, "GET", "/v1/usage", &[("Authorization", &format!("Bearer {PUBLISHABLE}"))], b"").await;
    r.assert_error(403, "secret_key_required");
    let r = request(s.addr, "GET", "/v1/usage", &[("Authorization", &format!("Bearer {SECRET}"))], b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = request(s.addr, "GET", "/v1/usage", &[("Authorization", &basic(SECRET))], b"").await;
    assert_eq!(r.status, 200);
    request(s.addr, "GET", "/v1/usage", &[], b"").await.assert_error(401, "missing_write_key");
    assert_eq!(mem.events().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_types_outside_the_key_are_403_single_and_per_event() {
    let (s, mem) = server(&controls_config("", "")).await;
    post(&s, PUBLISHABLE, "/v1/group", r#"{"userId":"u","groupId":"g"}"#, &[])
        .await
        .assert_error(403, "event_type_not_allowed");
    // The secret key inherits all six types from the source.
    assert_eq!(post(&s, SECRET, "/v1/group", r#"{"userId":"u","groupId":"g"}"#, &[]).await.status, 200);
    let batch = r#"{"batch":[
        {"type":"track","userId":"u","event":"ok"},
        {"type":"alias","userId":"u","previousId":"p"},
        {"type":"page","userId":"u"}
    ]}"#;
    let r = post(&s, PUBLISHABLE, "/v1/batch", batch, &[]).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!((j["accepted"].as_u64(), j["rejected"].as_u64()), (Some(2), Some(1)), "{j}");
    assert_eq!(
        j["errors"],
        json!([{"index":1,"code":"event_type_not_allowed","message":"this write key may not send alias calls"}])
    );
    // All refused for the same reason: that reason's status.
    let r =
        post(&s, PUBLISHABLE, "/v1/batch", r#"{"batch":[{"type":"alias","userId":"u","previousId":"p"}]}"#, &[]).await;
    assert_eq!((r.status, r.json()["code"].as_str()), (403, Some("event_type_not_allowed")));
    let types: Vec<Value> = payloads(&mem).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, vec![json!("group"), json!("track"), json!("page")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_and_preflight() {
    let (s, mem) = server(&controls_config("", "")).await;
    let good = ("Origin", "https://shop.example.com");
    let evil = ("Origin", "https://evil.example.net");
    let r = post(&s, PUBLISHABLE, "/v1/track", TRACK, &[good]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
    post(&s, PUBLISHABLE, "/v1/track", TRACK, &[evil]).await.assert_error(403, "origin_not_allowed");
    // Servers send no Origin: allowed.
    assert_eq!(post(&s, PUBLISHABLE, "/v1/track", TRACK, &[]).await.status, 200);
    // The preflight grants the listed origin and not the other.
    let pre = |origin: &'static str| {
        let addr = s.addr;
        async move {
            request(addr, "OPTIONS", "/v1/t", &[("Origin", origin), ("Access-Control-Request-Method", "POST")], b"")
                .await
        }
    };
    let r = pre("https://shop.example.com").await;
    assert_eq!((r.status, r.header("access-control-allow-origin")), (204, Some("https://shop.example.com")));
    let r = pre("https://evil.example.net").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(mem.events().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_after_a_reload_and_broken_reload_refused() {
    let text = controls_config("", "");
    let (s, _mem) = server(&text).await;
    assert_eq!(post(&s, PUBLISHABLE, "/v1/track", TRACK, &[]).await.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, text.replace(r#"label = "browser""#, "label = \"browser\"\n        revoked = true")).unwrap();
    gateway::ingest::reload::reload_from(&s.state, Some(&path), &Default::default()).unwrap();
    post(&s, PUBLISHABLE, "/v1/track", TRACK, &[]).await.assert_error(401, "revoked_write_key");
    assert_eq!(post(&s, SECRET, "/v1/track", TRACK, &[]).await.status, 200);
    std::fs::write(&path, "[[sources]]\nid = \"x\"\nkeys = [{ key = \"k\", kind = \"root\" }]\n").unwrap();
    assert!(gateway::ingest::reload::reload_from(&s.state, Some(&path), &Default::default()).is_err());
    post(&s, PUBLISHABLE, "/v1/track", TRACK, &[]).await.assert_error(401, "revoked_write_key");
    assert_eq!(post(&s, SECRET, "/v1/track", TRACK, &[]).await.status, 200);
}

fn rate(r: &Resp) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-ratelimit") || k == "retry-after")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort();
    v
}

fn hv(pairs: &[(&str, u64)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(k, n)| (k.to_string(), n.to_string())).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_windows_with_exact_headers_and_retry_after() {
    let toml = controls_config(
        "rate_limits = { short = { limit = 3, period_s = 60 }, medium = { limit = 5, period_s = 3600 } }",
        "",
    );
    let clock = Arc::new(ManualClock::new(Nanos::from_secs(1_000_000)));
    let clocks = Clocks { rate: clock.clone(), ..Clocks::default() };
    let mem = Arc::new(MemoryPublisher::new());
    let s = TestServer::start_in(&toml, mem.clone(), tempfile::tempdir().unwrap(), clocks).await;
    let std = |short_rem: u64, short_reset: u64, med_rem: u64, med_reset: u64| {
        let (lim, rem, reset) = if med_rem < short_rem { (5, med_rem, med_reset) } else { (3, short_rem, short_reset) };
        vec![
            ("x-ratelimit-limit", lim),
            ("x-ratelimit-remaining", rem),
            ("x-ratelimit-reset", reset),
            ("x-ratelimit-limit-short", 3),
            ("x-ratelimit-remaining-short", short_rem),
            ("x-ratelimit-reset-short", short_reset),
            ("x-ratelimit-limit-medium", 5),
            ("x-ratelimit-remaining-medium", med_rem),
            ("x-ratelimit-reset-medium", med_reset),
        ]
    };
    // Three at once: the short window (one request per 20 s, burst 3) empties.
    let r = post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    assert_eq!(rate(&r), hv(&std(2, 20, 4, 720)));
    post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    let r = post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    assert_eq!((r.status, rate(&r)), (200, hv(&std(0, 60, 2, 2160))));
    let r = post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    r.assert_error(429, "rate_limited");
    let mut expect = std(0, 60, 2, 2160);
    expect.push(("retry-after", 20));
    assert_eq!(rate(&r), hv(&expect));
    // 20 s later one request fits again.
    clock.advance(Duration::from_secs(20));
    let r = post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    assert_eq!((r.status, rate(&r)), (200, hv(&std(0, 60, 1, 2860))));
    // The medium window (one per 720 s, burst 5) is the next to run out.
    clock.advance(Duration::from_secs(60));
    let r = post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    assert_eq!((r.status, rate(&r)), (200, hv(&std(2, 20, 0, 3520))));
    clock.advance(Duration::from_secs(60));
    let r = post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    r.assert_error(429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("580"));
    // The refused request cost nothing: the short window still has its room.
    assert_eq!(r.header("x-ratelimit-remaining-short"), Some("3"));
    // CORS headers go to browsers only: a server (no Origin) gets none.
    assert_eq!(r.header("access-control-expose-headers"), None);
    // A browser may read the standing and Retry-After of a refusal: every such header of the
    // answer is exposed.
    let r = post(&s, SECRET, "/v1/track", TRACK, &[("Origin", "https://shop.example.com")]).await;
    r.assert_error(429, "rate_limited");
    let exposed = r.header("access-control-expose-headers").expect("a browser's 429 exposes headers");
    let exposed: Vec<String> = exposed.split(',').map(|h| h.trim().to_ascii_lowercase()).collect();
    let readable = rate(&r);
    assert_eq!(readable.len(), 10, "{readable:?}");
    for (name, _) in &readable {
        assert!(exposed.contains(name), "{name} is not in Access-Control-Expose-Headers {exposed:?}");
    }
    // A rejected request costs no broker work.
    assert_eq!(mem.events().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_spans_keys() {
    let toml = controls_config("", "[rate_limits]\nper_ip = { limit = 2, period_s = 60 }");
    let clock = Arc::new(ManualClock::new(Nanos::from_secs(1_000)));
    let s = TestServer::start_in(
        &toml,
        Arc::new(MemoryPublisher::new()),
        tempfile::tempdir().unwrap(),
        Clocks { rate: clock.clone(), ..Clocks::default() },
    )
    .await;
    assert_eq!(post(&s, PUBLISHABLE, "/v1/track", TRACK, &[]).await.status, 200);
    assert_eq!(post(&s, SECRET, "/v1/track", TRACK, &[]).await.status, 200);
    let r = post(&s, SECRET, "/v1/track", TRACK, &[]).await;
    r.assert_error(429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("30"));
    clock.advance(Duration::from_secs(30));
    assert_eq!(post(&s, PUBLISHABLE, "/v1/track", TRACK, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_quota_402_usage_api_and_counts_after_restart() {
    let toml = controls_config("monthly_event_quota = 3", "");
    let mem = Arc::new(MemoryPublisher::new());
    let s = TestServer::start_in(&toml, mem.clone(), tempfile::tempdir().unwrap(), Clocks::default()).await;
    let two = r#"{"batch":[{"type":"track","userId":"u","event":"a"},{"type":"track","userId":"u","event":"b"}]}"#;
    assert_eq!(post(&s, SECRET, "/v1/batch", two, &[]).await.json()["accepted"], 2);
    let r = post(&s, SECRET, "/v1/batch", two, &[]).await;
    let j = r.json();
    assert_eq!((r.status, j["accepted"].as_u64(), j["rejected"].as_u64()), (200, Some(1), Some(1)), "{j}");
    assert_eq!(j["errors"][0]["code"], "quota_exceeded");
    assert_eq!(j["errors"][0]["index"], 1);
    post(&s, SECRET, "/v1/track", TRACK, &[]).await.assert_error(402, "quota_exceeded");
    post(&s, SECRET, "/v1/track", r#"{"event":"no id"}"#, &[]).await;
    assert_eq!(mem.events().len(), 3);

    let usage =
        request(s.addr, "GET", "/v1/usage", &[("Authorization", &format!("Bearer {SECRET}"))], b"").await.json();
    assert_eq!(usage["success"], true);
    assert!(gateway::decode::timestamp::Timestamp::parse(usage["timestamp"].as_str().unwrap()).is_some());
    let u = &usage["data"]["usage"];
    assert_eq!((u["today"]["accepted"].as_u64(), u["today"]["rejected"].as_u64()), (Some(3), Some(3)), "{usage}");
    assert_eq!(u["month"]["accepted"], 3);
    assert_eq!((u["quota"]["monthly_events"].as_u64(), u["quota"]["remaining"].as_u64()), (Some(3), Some(0)));
    assert_eq!(usage["data"]["rate_limits"]["key"], "backend");

    // The counts survive a restart: still over quota.
    let state_dir = s.stop_keeping_state().await;
    assert!(state_dir.path().join("usage.json").exists());
    let s = TestServer::start_in(&toml, Arc::new(MemoryPublisher::new()), state_dir, Clocks::default()).await;
    post(&s, SECRET, "/v1/track", TRACK, &[]).await.assert_error(402, "quota_exceeded");
    let usage = request(s.addr, "GET", "/v1/usage", &[("X-Write-Key", SECRET)], b"").await.json();
    assert_eq!(usage["data"]["usage"]["month"]["accepted"], 3, "{usage}");
}

// ---- consent --------------------------------------------------------------------------------

fn tcf_fixture(name: &str) -> String {
    let text = include_str!("fixtures/tcf/iabtcf-core.json");
    let v: Value = serde_json::from_str(text).unwrap();
    let case = v["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
    case["tcString"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_categories_are_published_and_headers_set() {
    let (s, mem) = server(&controls_config("", "")).await;
    let tcf = tcf_fixture("bitfield_dense_core_only"); // purposes 1,2,3,4,7,8,9,10
    let body = format!(r#"{{"userId":"u","event":"e","context":{{"consent":{{"tcfString":"{tcf}"}},"locale":"de"}}}}"#);
    assert_eq!(post(&s, SECRET, "/v1/track", &body, &[]).await.status, 200);
    let ev = &payloads(&mem)[0];
    assert_eq!(ev["context"]["consent"]["tcfString"], tcf.as_str());
    assert_eq!(
        ev["context"]["consent"]["categories"],
        json!({"advertising":true,"analytics":true,"functional":true,"marketing":true,"personalisation":false})
    );
    assert_eq!(ev["context"]["locale"], "de");
    assert_eq!(ev["context"]["ip"], "127.0.0.1");
    assert_eq!(
        mem.events()[0].consent_header.as_deref(),
        Some("advertising=1;analytics=1;functional=1;marketing=1;personalisation=0")
    );
    // US Privacy: opted out of sale.
    post(&s, SECRET, "/v1/track", r#"{"userId":"u","event":"e","context":{"consent":{"usPrivacy":"1YYN"}}}"#, &[])
        .await;
    let ev = &payloads(&mem)[1];
    assert_eq!(ev["context"]["consent"]["usPrivacy"], "1YYN");
    assert_eq!(ev["context"]["consent"]["categories"]["advertising"], false);
    assert_eq!(ev["context"]["consent"]["categories"]["analytics"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_drop_policy_and_ip_policy() {
    let toml = controls_config("[sources.consent]\nrequired = [\"analytics\"]\nip = \"truncate\"", "");
    let (s, mem) = server(&toml).await;
    let body = r#"{"batch":[
        {"type":"track","userId":"u","event":"kept","context":{"consent":{"analytics":true,"marketing":false}}},
        {"type":"track","userId":"u","event":"dropped","context":{"consent":{"analytics":false}}},
        {"type":"track","userId":"u","event":"no consent: default grants"},
        {"type":"track","userId":"u","event":"bad","context":{"consent":{"analytics":"yes"}}},
        {"type":"track","userId":"u","event":"two forms","context":{"consent":{"usPrivacy":"1NNN","tcfString":"x"}}},
        {"type":"track","userId":"u","event":"client ip","context":{"ip":"198.51.100.77"}}
    ]}"#;
    let r = post(&s, SECRET, "/v1/batch", body, &[]).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["consent_dropped"], 1, "{j}");
    assert_eq!((j["accepted"].as_u64(), j["rejected"].as_u64()), (Some(4), Some(2)));
    assert_eq!(error_codes(&j), vec![(3, "invalid_consent".to_string()), (4, "invalid_consent".to_string())]);
    assert!(j["errors"][1]["message"].as_str().unwrap().contains("one"), "{j}");
    let evs = payloads(&mem);
    let names: Vec<&str> = evs.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["kept", "no consent: default grants", "client ip"]);
    // IP policy: truncated, whether the peer's or the client's.
    assert_eq!(evs[0]["context"]["ip"], "127.0.0.0");
    assert_eq!(evs[2]["context"]["ip"], "198.51.100.0");
    // A single call that is dropped is still a 200: the client did nothing wrong.
    let r =
        post(&s, SECRET, "/v1/track", r#"{"userId":"u","event":"e","context":{"consent":{"analytics":false}}}"#, &[])
            .await;
    assert_eq!(r.status, 200);
    assert_eq!(mem.events().len(), 3);
    let metrics = String::from_utf8(request(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(metrics.contains(r#"gateway_events_consent_dropped_total{source_id="shop",type="track"} 2"#), "{metrics}");

    let (s, mem) = server(&controls_config("consent = { ip = \"remove\" }", "")).await;
    post(&s, SECRET, "/v1/track", r#"{"userId":"u","event":"e","context":{"ip":"1.2.3.4","locale":"fr"}}"#, &[]).await;
    let ev = &payloads(&mem)[0];
    assert_eq!(ev["context"], json!({"locale":"fr"}));
}

// ---- dedup ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_answered_200_counted_and_not_published() {
    // A second source, "blog", to show that dedup is per source.
    let blog = "[[sources]]\nid = \"blog\"\nkeys = [{ key = \"pk-blog\" }]";
    let (s, mem) = server(&controls_config("", blog)).await;
    let ev = r#"{"userId":"u","event":"e","messageId":"m-1"}"#;
    assert_eq!(post(&s, SECRET, "/v1/track", ev, &[]).await.status, 200);
    assert_eq!(post(&s, SECRET, "/v1/track", ev, &[]).await.status, 200);
    let batch = r#"{"batch":[
        {"type":"track","userId":"u","event":"e","messageId":"m-1"},
        {"type":"track","userId":"u","event":"e","messageId":"m-2"},
        {"type":"track","userId":"u","event":"e","messageId":"m-2"},
        {"type":"track","userId":"u","event":"no id"},
        {"type":"track","userId":"u","event":"no id"}
    ]}"#;
    let j = post(&s, SECRET, "/v1/batch", batch, &[]).await.json();
    assert_eq!(
        (j["accepted"].as_u64(), j["duplicates"].as_u64(), j["rejected"].as_u64()),
        (Some(5), Some(2), Some(0)),
        "{j}"
    );
    let ids: Vec<String> = mem.events().iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(ids.iter().filter(|i| *i == "m-1").count(), 1);
    assert_eq!(ids.iter().filter(|i| *i == "m-2").count(), 1);
    assert_eq!(ids.len(), 4, "server-generated ids are never deduplicated: {ids:?}");
    // Dedup is per source: the same id from another source is new, and is then a duplicate
    // within that source.
    let j = post(
        &s,
        "pk-blog",
        "/v1/batch",
        r#"{"batch":[{"type":"track","userId":"u","event":"e","messageId":"m-1"}]}"#,
        &[],
    )
    .await
    .json();
    assert_eq!((j["accepted"].as_u64(), j["duplicates"].as_u64()), (Some(1), Some(0)), "{j}");
    let j = post(
        &s,
        "pk-blog",
        "/v1/batch",
        r#"{"batch":[{"type":"track","userId":"u","event":"e","messageId":"m-1"}]}"#,
        &[],
    )
    .await
    .json();
    assert_eq!((j["accepted"].as_u64(), j["duplicates"].as_u64()), (Some(1), Some(1)), "{j}");
    let m1: Vec<Value> = payloads(&mem).into_iter().filter(|e| e["messageId"] == "m-1").collect();
    assert_eq!(m1.iter().map(|e| e["sourceId"].clone()).collect::<Vec<_>>(), vec![json!("shop"), json!("blog")]);
    let metrics = String::from_utf8(request(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(metrics.contains(r#"gateway_events_duplicated_total{source_id="shop",type="track"} 3"#), "{metrics}");
    assert!(metrics.contains(r#"gateway_events_duplicated_total{source_id="blog",type="track"} 1"#), "{metrics}");
    assert!(metrics.contains("gateway_dedup_entries 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_publish_exactly_once() {
    let (s, mem) = server(&controls_config("", "")).await;
    mem.set_delay(Some(Duration::from_millis(200)));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let body = r#"{"userId":"u","event":"e","messageId":"same"}"#;
            post_status(addr, "/v1/track", SECRET, body).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(mem.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_releases_the_id_so_the_retry_goes_through() {
    let (s, mem) = server(&controls_config("", "")).await;
    let ev = r#"{"userId":"u","event":"e","messageId":"retry-me"}"#;
    mem.fail_next(vec![PublishError::QueueFull]);
    post(&s, SECRET, "/v1/track", ev, &[]).await.assert_error(503, "publish_unavailable");
    assert_eq!(post(&s, SECRET, "/v1/track", ev, &[]).await.status, 200);
    assert_eq!(post(&s, SECRET, "/v1/track", ev, &[]).await.status, 200);
    assert_eq!(mem.events().len(), 1);
    // While a copy is in flight and then fails, the waiting copy is published, not dropped.
    mem.set_delay(Some(Duration::from_millis(300)));
    mem.fail_next(vec![PublishError::Unavailable("broker down".into())]);
    let first = {
        let addr = s.addr;
        tokio::spawn(async move {
            let body = r#"{"userId":"u","event":"e","messageId":"racing"}"#;
            post_status(addr, "/v1/track", SECRET, body).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = post(&s, SECRET, "/v1/track", r#"{"userId":"u","event":"e","messageId":"racing"}"#, &[]).await;
    assert_eq!(first.await.unwrap(), 503);
    assert_eq!(second.status, 200);
    assert_eq!(mem.events().iter().filter(|e| e.message_id == "racing").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_survives_a_graceful_restart_and_can_be_turned_off() {
    let toml = controls_config("", "");
    let s =
        TestServer::start_in(&toml, Arc::new(MemoryPublisher::new()), tempfile::tempdir().unwrap(), Clocks::default())
            .await;
    assert_eq!(
        post(&s, SECRET, "/v1/track", r#"{"userId":"u","event":"e","messageId":"snap"}"#, &[]).await.status,
        200
    );
    let dir = s.stop_keeping_state().await;
    assert!(dir.path().join("dedup.snapshot").exists());
    let mem = Arc::new(MemoryPublisher::new());
    let s = TestServer::start_in(&toml, mem.clone(), dir, Clocks::default()).await;
    let j = post(
        &s,
        SECRET,
        "/v1/batch",
        r#"{"batch":[{"type":"track","userId":"u","event":"e","messageId":"snap"}]}"#,
        &[],
    )
    .await
    .json();
    assert_eq!(j["duplicates"], 1, "{j}");
    assert!(mem.events().is_empty());

    let (s, mem) = server(&controls_config("dedup = false", "")).await;
    for _ in 0..2 {
        post(&s, SECRET, "/v1/track", r#"{"userId":"u","event":"e","messageId":"same"}"#, &[]).await;
    }
    assert_eq!(mem.events().len(), 2);
}

// ---- contracts ------------------------------------------------------------------------------

const PLAN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contracts");

fn contracts_config(policies: &str, dir: &str) -> String {
    controls_config(
        &format!("contracts = {{ plan = \"example\", {policies} }}"),
        &format!("[contracts]\ndir = \"{dir}\"\nviolations_topic = \"audit\""),
    )
}

fn violations_topic(mem: &MemoryPublisher) -> Vec<Value> {
    mem.events().iter().filter(|e| &*e.topic == "audit").map(|e| serde_json::from_slice(&e.payload).unwrap()).collect()
}

fn published_events(mem: &MemoryPublisher) -> Vec<Value> {
    mem.events().iter().filter(|e| &*e.topic != "audit").map(|e| serde_json::from_slice(&e.payload).unwrap()).collect()
}

const CTX: &str = r#""context":{"library":{"name":"test"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_block_gives_422_with_field_level_reasons_and_an_audit_record() {
    let toml = contracts_config(r#"unplanned_events = "block", violations = "block""#, PLAN_DIR);
    let (s, mem) = server(&toml).await;
    let body = format!(
        r#"{{"userId":"u","event":"Order Completed","messageId":"bad-1","properties":{{"order_id":"o-1","currency":"eur"}},{CTX}}}"#
    );
    let r = post(&s, SECRET, "/v1/track", &body, &[]).await;
    r.assert_error(422, "contract_violation");
    let j = r.json();
    let v = j["violations"].as_array().unwrap();
    let by_pointer: std::collections::HashMap<&str, &str> =
        v.iter().map(|x| (x["pointer"].as_str().unwrap(), x["keyword"].as_str().unwrap())).collect();
    assert_eq!(by_pointer.get("/properties/total"), Some(&"required"), "{j}");
    assert_eq!(by_pointer.get("/properties/currency"), Some(&"pattern"), "{j}");
    assert!(v.iter().all(|x| !x["message"].as_str().unwrap().is_empty()));
    assert!(j["message"].as_str().unwrap().contains("/properties/"), "{j}");
    // Not published; audited.
    assert!(published_events(&mem).is_empty());
    let audit = violations_topic(&mem);
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0]["sourceId"].as_str(), audit[0]["messageId"].as_str()), (Some("shop"), Some("bad-1")));
    assert_eq!((audit[0]["event"].as_str(), audit[0]["blocked"].as_bool()), (Some("Order Completed"), Some(true)));
    assert_eq!(audit[0]["originalEvent"]["properties"]["currency"], "eur");
    assert_eq!(audit[0]["violations"].as_array().unwrap().len(), v.len());

    // A batch: per-event errors with their violations; valid and planned events go through.
    let batch = format!(
        r#"{{"batch":[
        {{"type":"track","userId":"u","event":"Order Completed","properties":{{"order_id":"o-2","total":10}},{CTX}}},
        {{"type":"track","userId":"u","event":"Not In The Plan",{CTX}}},
        {{"type":"identify","userId":"u","traits":{{"email":"not-an-email"}},{CTX}}},
        {{"type":"track","userId":"u","event":"Signed Up","properties":{{"plan":"pro"}},"context":{{"library":{{"version":"1"}}}}}}
    ]}}"#
    );
    let j = post(&s, SECRET, "/v1/batch", &batch, &[]).await.json();
    let errs: Vec<(u64, &str, &str)> = j["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap(), e["violations"][0]["keyword"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        errs,
        vec![
            (1, "contract_violation", "unplanned_event"),
            (2, "contract_violation", "format"),
            (3, "contract_violation", "required")
        ],
        "{j}"
    );
    assert_eq!(j["errors"][2]["violations"][0]["pointer"], "/context/library/name", "{j}");
    assert_eq!(published_events(&mem).len(), 1);
    assert_eq!(violations_topic(&mem).len(), 4);
    let metrics = String::from_utf8(request(s.addr, "GET", "/metrics", &[], b"").await.body).unwrap();
    assert!(metrics.contains(r#"gateway_contract_violations_total{action="blocked",source_id="shop"} 4"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_allow_publishes_and_reports_and_omit_removes() {
    // allow: published unchanged, reported.
    let (s, mem) = server(&contracts_config(r#"violations = "allow""#, PLAN_DIR)).await;
    let body =
        format!(r#"{{"userId":"u","event":"Order Completed","properties":{{"order_id":"o-1","total":"ten"}},{CTX}}}"#);
    assert_eq!(post(&s, SECRET, "/v1/track", &body, &[]).await.status, 200);
    assert_eq!(published_events(&mem)[0]["properties"]["total"], "ten");
    let audit = violations_topic(&mem);
    assert_eq!((audit.len(), audit[0]["blocked"].as_bool()), (1, Some(false)));
    assert_eq!(audit[0]["violations"][0]["pointer"], "/properties/total");
    // Unplanned events pass silently under allow.
    let body = format!(r#"{{"userId":"u","event":"Whatever",{CTX}}}"#);
    assert_eq!(post(&s, SECRET, "/v1/track", &body, &[]).await.status, 200);
    assert_eq!(violations_topic(&mem).len(), 1);

    // omit: the offending property and the undeclared one are removed, the rest published.
    let (s, mem) = server(&contracts_config(r#"violations = "omit", unplanned_properties = "omit""#, PLAN_DIR)).await;
    let body = format!(
        r#"{{"userId":"u","event":"Order Completed","properties":{{"order_id":"o-1","total":5,"currency":"eur","note":"x"}},{CTX}}}"#
    );
    assert_eq!(post(&s, SECRET, "/v1/track", &body, &[]).await.status, 200);
    assert_eq!(published_events(&mem)[0]["properties"], json!({"order_id":"o-1","total":5}));
    let keywords: Vec<String> = violations_topic(&mem)[0]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["keyword"].as_str().unwrap().to_string())
        .collect();
    assert!(
        keywords.contains(&"pattern".to_string()) && keywords.contains(&"unplanned_property".to_string()),
        "{keywords:?}"
    );
    // omit cannot make up a missing required property: blocked.
    let body = format!(r#"{{"userId":"u","event":"Order Completed","properties":{{"order_id":"o-1"}},{CTX}}}"#);
    post(&s, SECRET, "/v1/track", &body, &[]).await.assert_error(422, "contract_violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_schema_is_selected_by_event_version() {
    let (s, mem) = server(&contracts_config(r#"violations = "block""#, PLAN_DIR)).await;
    let v1 = format!(r#"{{"userId":"u","event":"Order Completed","properties":{{"order_id":"o","total":1}},{CTX}}}"#);
    assert_eq!(post(&s, SECRET, "/v1/track", &v1, &[]).await.status, 200);
    let v2 = r#"{"userId":"u","event":"Order Completed","properties":{"order_id":"o","total":1},"context":{"library":{"name":"t"},"protocols":{"event_version":2}}}"#;
    let r = post(&s, SECRET, "/v1/track", v2, &[]).await;
    r.assert_error(422, "contract_violation");
    assert_eq!(r.json()["violations"][0]["pointer"], "/properties/subtotal");
    let v2ok = v2.replace(r#""total":1"#, r#""total":1,"subtotal":1"#);
    assert_eq!(post(&s, SECRET, "/v1/track", &v2ok, &[]).await.status, 200);
    // An unknown version falls back to the default schema.
    let v9 = v2.replace(r#""event_version":2"#, r#""event_version":9"#);
    assert_eq!(post(&s, SECRET, "/v1/track", &v9, &[]).await.status, 200);
    assert_eq!(published_events(&mem).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reload_is_atomic_and_a_broken_plan_is_refused() {
    // A private copy of the example plan that the test can change.
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("example");
    copy_dir(std::path::Path::new(PLAN_DIR).join("example").as_path(), &plan);
    let cfg_path = dir.path().join("g.toml");
    let toml = contracts_config(r#"unplanned_events = "block""#, &dir.path().display().to_string());
    std::fs::write(&cfg_path, &toml).unwrap();
    let (s, mem) = server(&toml).await;
    let new_event = format!(r#"{{"userId":"u","event":"Wishlist Shared",{CTX}}}"#);
    post(&s, SECRET, "/v1/track", &new_event, &[]).await.assert_error(422, "contract_violation");
    // Plan the event, reload: it passes.
    std::fs::write(plan.join("track/Wishlist Shared.json"), r#"{"type":"object"}"#).unwrap();
    gateway::ingest::reload::reload_from(&s.state, Some(&cfg_path), &Default::default()).unwrap();
    assert_eq!(post(&s, SECRET, "/v1/track", &new_event, &[]).await.status, 200);
    // Break a schema: the reload is refused, naming the file, and the plan keeps serving.
    std::fs::write(plan.join("track/Signed Up.json"), r#"{"type": 12}"#).unwrap();
    std::fs::remove_file(plan.join("track/Wishlist Shared.json")).unwrap();
    let err = gateway::ingest::reload::reload_from(&s.state, Some(&cfg_path), &Default::default()).unwrap_err();
    assert!(err.contains("Signed Up.json"), "{err}");
    assert_eq!(post(&s, SECRET, "/v1/track", &new_event, &[]).await.status, 200);
    assert_eq!(published_events(&mem).len(), 2);
    assert_eq!(s.state.metrics.config_reloads.with_label_values(&["error"]).get(), 1);
    // A gateway does not start on a broken plan.
    let cfg = gateway::config::Config::from_toml("g.toml", &toml, &Default::default()).unwrap();
    let err = gateway::ingest::Runtime::build(cfg).err().unwrap();
    assert!(err.contains("Signed Up.json") && err.contains("/type"), "{err}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---- review defects: client IP behind proxies, keyless floods, unreadable events -------------

/// A server behind one trusted proxy (127.0.0.1, where the test connects from) with a per-IP
/// limit of 3 a minute, on a manual clock.
async fn behind_proxy(extra_server: &str) -> (TestServer, Arc<MemoryPublisher>) {
    let toml = controls_config("", "[rate_limits]\nper_ip = { limit = 3, period_s = 60 }").replace(
        r#"listen = "127.0.0.1:0""#,
        &format!("listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\n{extra_server}"),
    );
    let mem = Arc::new(MemoryPublisher::new());
    let clock = Arc::new(ManualClock::new(Nanos::from_secs(1_000)));
    let s = TestServer::start_in(
        &toml,
        mem.clone(),
        tempfile::tempdir().unwrap(),
        Clocks { rate: clock, ..Clocks::default() },
    )
    .await;
    (s, mem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_entries_a_client_wrote_pick_neither_its_ip_nor_a_fresh_rate_bucket() {
    let (s, mem) = behind_proxy("").await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let xff = format!("10.9.9.{i}, 198.51.100.77");
        statuses.push(post(&s, SECRET, "/v1/track", TRACK, &[("X-Forwarded-For", &xff)]).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    let ips: Vec<Value> = payloads(&mem).iter().map(|p| p["context"]["ip"].clone()).collect();
    assert_eq!(ips, vec![json!("198.51.100.77"); 3]);

    // RFC 7239 `Forwarded`, when that is the header the proxy writes.
    let (s, mem) = behind_proxy(r#"forwarded_header = "forwarded""#).await;
    let fwd = r#"for=10.9.9.1, for="[2001:db8::5]:4711";proto=https"#;
    assert_eq!(post(&s, SECRET, "/v1/track", TRACK, &[("Forwarded", fwd)]).await.status, 200);
    assert_eq!(payloads(&mem)[0]["context"]["ip"], "2001:db8::5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_count_against_the_per_ip_window() {
    let (s, _mem) = behind_proxy("").await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    post(&s, "no-such-key", "/v1/track", TRACK, &from("198.51.100.1")).await.assert_error(401, "invalid_write_key");
    let r = s
        .post(
            "/v1/track",
            &[("Content-Type", "application/json"), ("X-Forwarded-For", "198.51.100.1")],
            TRACK.as_bytes(),
        )
        .await;
    r.assert_error(401, "missing_write_key");
    post(&s, "no-such-key", "/v1/track", TRACK, &from("198.51.100.1")).await.assert_error(401, "invalid_write_key");
    // The window is used up: bad keys, and then good ones, from that address are limited.
    let r = post(&s, "no-such-key", "/v1/track", TRACK, &from("198.51.100.1")).await;
    r.assert_error(429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    post(&s, SECRET, "/v1/track", TRACK, &from("198.51.100.1")).await.assert_error(429, "rate_limited");
    // Another address is not affected.
    assert_eq!(post(&s, SECRET, "/v1/track", TRACK, &from("198.51.100.2")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_contract_checker_cannot_read_are_never_published_unchecked() {
    let toml = contracts_config(r#"unplanned_events = "block", violations = "block""#, PLAN_DIR);
    let (s, mem) = server(&toml).await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let planned = |props: &str| {
        format!(
            r#"{{"userId":"u","event":"Order Completed","properties":{{"order_id":"o-1","total":1{props}}},{CTX}}}"#
        )
    };
    for body in [planned(&format!(r#","pad":{deep}"#)), planned(r#","\ud800":1"#), planned(r#","x":"\udc00""#)] {
        let r = post(&s, SECRET, "/v1/track", &body, &[]).await;
        assert!((400..500).contains(&r.status), "{} {}", r.status, String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["success"], false);
    }
    // In a batch: that event is refused by index, the others go through.
    let batch = format!(
        r#"{{"batch":[{},{},{}]}}"#,
        planned(r#","\ud800":1"#).replacen('{', r#"{"type":"track","#, 1),
        planned("").replacen('{', r#"{"type":"track","#, 1),
        planned(&format!(r#","pad":{deep}"#)).replacen('{', r#"{"type":"track","#, 1),
    );
    let j = post(&s, SECRET, "/v1/batch", &batch, &[]).await.json();
    let idx: Vec<u64> = j["errors"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!((idx, j["accepted"].as_u64()), (vec![0, 2], Some(1)), "{j}");
    assert_eq!(published_events(&mem).len(), 1);
}
