//! Every ingest body is read as JSON whatever its `Content-Type`: the types real SDKs send
//! (form-urlencoded from an HTTP library's default, octet-stream, text/plain from sendBeacon,
//! none, JSON with a charset), with and without gzip, on single and batch paths; a body that
//! is not JSON names its offset and type; CORS preflights still answer for each type.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use serde_json::json;
use util::*;

/// `None` sends no `Content-Type` header at all.
const TYPES: &[Option<&str>] = &[
    Some("application/x-www-form-urlencoded"),
    Some("application/octet-stream"),
    Some("text/plain;charset=UTF-8"),
    None,
    Some("application/json; charset=utf-8"),
];

fn headers(ct: Option<&str>, gzipped: bool) -> Vec<(&str, &str)> {
    let mut h = vec![("X-Write-Key", KEY)];
    if let Some(ct) = ct {
        h.push(("Content-Type", ct));
    }
    if gzipped {
        h.push(("Content-Encoding", "gzip"));
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_content_type_is_read_as_json_on_single_and_batch_paths() {
    let s = TestServer::memory().await;
    let mut expected = Vec::new();
    for (i, ct) in TYPES.iter().enumerate() {
        for gzipped in [false, true] {
            let label = format!("{ct:?} gzip={gzipped}");
            let single = format!(r#"{{"userId":"u","event":"single {i} {gzipped}"}}"#);
            let body = if gzipped { gzip(single.as_bytes()) } else { single.into_bytes() };
            let r = s.post("/v1/track", &headers(*ct, gzipped), &body).await;
            assert_eq!((r.status, r.json()), (200, json!({"success": true})), "{label}");
            expected.push(format!("single {i} {gzipped}"));

            let batch = format!(
                r#"{{"batch":[{{"type":"track","userId":"u","event":"batch {i} {gzipped} a"}},{{"type":"track","userId":"u","event":"batch {i} {gzipped} b"}}]}}"#
            );
            let body = if gzipped { gzip(batch.as_bytes()) } else { batch.into_bytes() };
            let r = s.post("/v1/batch", &headers(*ct, gzipped), &body).await;
            assert_eq!(r.status, 200, "{label}: {:?}", r.json());
            assert_eq!(r.json()["accepted"], 2, "{label}");
            expected.push(format!("batch {i} {gzipped} a"));
            expected.push(format!("batch {i} {gzipped} b"));
        }
    }
    let events: Vec<String> = s.published().iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_names_its_offset_and_content_type() {
    let s = TestServer::memory().await;
    // What a form post really looks like: key=value pairs, not JSON.
    let r = s
        .post("/v1/track", &headers(Some("application/x-www-form-urlencoded"), false), b"userId=u&event=Signed+Up")
        .await;
    r.assert_error(400, "invalid_json");
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("byte 0"), "{message}");
    assert!(message.contains("'application/x-www-form-urlencoded'"), "{message}");
    // gzip'd garbage under octet-stream: inflated first, then refused as JSON.
    let r = s.post("/v1/batch", &headers(Some("application/octet-stream"), true), &gzip(b"{\"batch\":[}")).await;
    r.assert_error(400, "invalid_json");
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("byte 10") && message.contains("'application/octet-stream'"), "{message}");
    // No Content-Type at all is said so.
    let r = s.post("/v1/track", &headers(None, false), b"not json").await;
    r.assert_error(400, "invalid_json");
    assert!(r.json()["message"].as_str().unwrap().contains("no Content-Type"), "{}", r.json());
    assert!(s.published().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_answer_for_every_content_type() {
    let s = TestServer::memory().await;
    for ct in TYPES.iter().flatten() {
        for path in ["/v1/t", "/v1/batch"] {
            let r = request(
                s.addr,
                "OPTIONS",
                path,
                &[
                    ("Origin", "https://shop.example.com"),
                    ("Access-Control-Request-Method", "POST"),
                    ("Access-Control-Request-Headers", "content-type, content-encoding"),
                ],
                b"",
            )
            .await;
            assert_eq!(r.status, 204, "{ct} {path}");
            assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
            let allowed = r.header("access-control-allow-headers").unwrap().to_ascii_lowercase();
            assert!(allowed.contains("content-type") && allowed.contains("content-encoding"), "{allowed}");
            // And the request that follows the preflight, with that type, is taken.
            let r = s
                .post(
                    path,
                    &[("Origin", "https://shop.example.com"), ("Content-Type", ct), ("X-Write-Key", KEY)],
                    if path == "/v1/t" {
                        br#"{"userId":"u","event":"after preflight"}"#.as_slice()
                    } else {
                        br#"{"batch":[{"type":"track","userId":"u","event":"after preflight"}]}"#.as_slice()
                    },
                )
                .await;
            assert_eq!(r.status, 200, "{ct} {path}: {:?}", r.json());
            assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.com"));
        }
    }
    assert_eq!(s.published().len(), 2 * TYPES.iter().flatten().count());
}
