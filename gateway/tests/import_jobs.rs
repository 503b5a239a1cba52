//! Bulk import jobs and the CSV backfill through the real server: secret keys, durable jobs
//! processed in chunks on the `/v1/batch` pipeline, the job API, the CSV rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::*;

const SECRET: &str = "secret-key-1";
const OTHER_SECRET: &str = "secret-key-2";

fn config(extra: &str) -> String {
    config_text(extra).replace(
        "keys = [{ key = \"test-key\", label = \"browser\" }]",
        &format!("keys = [{{ key = \"{KEY}\", label = \"browser\" }}, {{ key = \"{SECRET}\", label = \"server\", kind = \"secret\" }}]"),
    ).replace(
        "keys = [{ key = \"other-key\" }]",
        &format!("keys = [{{ key = \"{OTHER_KEY}\" }}, {{ key = \"{OTHER_SECRET}\", kind = \"secret\" }}]"),
    )
}

async fn server(extra: &str) -> TestServer {
    let text = config(&format!("[import]\nchunk_events = 500\n{extra}"));
    assert!(text.contains(SECRET), "{text}");
    TestServer::memory_with(&text).await
}

fn auth(key: &str) -> String {
    format!("Bearer {key}")
}

async fn post(s: &TestServer, path: &str, key: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let a = auth(key);
    let mut h = vec![("Authorization", a.as_str())];
    h.extend_from_slice(headers);
    s.post(path, &h, body).await
}

async fn get(s: &TestServer, path: &str, key: &str) -> Resp {
    request(s.addr, "GET", path, &[("Authorization", &auth(key))], b"").await
}

/// Polls the job until it is finished.
async fn finished(s: &TestServer, job_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(s, &format!("/v1/jobs/{job_id}"), SECRET).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        let data = r.json()["data"].clone();
        if data["status"] == "completed" || data["status"] == "failed" {
            return data;
        }
        assert!(Instant::now() < deadline, "job still {data}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bulk_events(n: usize) -> Value {
    json!({ "events": (0..n).map(|i| json!({
        "eventName": "backfilled", "email": format!("u{i}@x.io"), "timestamp": "2026-01-15T08:00:00Z",
        "eventId": format!("bulk-{i}"), "properties": {"n": i}
    })).collect::<Vec<_>>() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_job_of_ten_thousand_events_runs_in_chunks_on_the_batch_pipeline() {
    let s = server("").await;
    let mut body = bulk_events(10_000);
    body["events"][17] = json!({"eventName": "no identity"});
    body["events"][9000]["timestamp"] = json!("not a time");
    let r =
        post(&s, "/v1/events/bulk", SECRET, &[("Content-Type", "application/json")], body.to_string().as_bytes()).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    let j = r.json();
    assert_eq!((j["totalEvents"].as_u64(), j["status"].as_str()), (Some(10_000), Some("queued")));
    let job_id = j["jobId"].as_str().unwrap().to_string();
    assert!(job_id.starts_with("job_"));
    let data = finished(&s, &job_id).await;
    assert_eq!(data["status"], "completed");
    assert_eq!((data["totalEvents"].as_u64(), data["processed"].as_u64()), (Some(10_000), Some(10_000)));
    assert_eq!((data["accepted"].as_u64(), data["rejected"].as_u64()), (Some(9_998), Some(2)));
    let errors: Vec<(u64, &str)> = data["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(errors, vec![(17, "missing_identity"), (9000, "invalid_timestamp")]);
    for key in ["createdAt", "startedAt", "finishedAt"] {
        assert!(data[key].is_string(), "{key}: {data}");
    }
    let published = s.published();
    assert_eq!(published.len(), 9_998);
    // Indistinguishable from a live track but for the historical timestamp.
    let e = published.iter().find(|e| e["messageId"] == "bulk-5").unwrap();
    assert_eq!((e["type"].as_str(), e["userId"].as_str()), (Some("track"), Some("u5@x.io")));
    assert!(e["timestamp"].as_str().unwrap().starts_with("2026-01-15T08:00:00"));
    assert!(e["receivedAt"].is_string() && e["context"]["ip"].is_string());
    // Sent again: every event is a duplicate, nothing is published twice.
    let again = bulk_events(3);
    let r = post(&s, "/v1/events/bulk", SECRET, &[], again.to_string().as_bytes()).await;
    let data = finished(&s, r.json()["jobId"].as_str().unwrap()).await;
    assert_eq!((data["accepted"].as_u64(), data["duplicates"].as_u64()), (Some(0), Some(3)));
    assert_eq!(s.published().len(), 9_998);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_need_a_secret_key_and_each_source_sees_only_its_own() {
    let s = server("").await;
    let body = bulk_events(2).to_string();
    post(&s, "/v1/events/bulk", KEY, &[], body.as_bytes()).await.assert_error(403, "secret_key_required");
    post(&s, "/v1/backfill/csv", KEY, &[], b"event_name,timestamp,email\n")
        .await
        .assert_error(403, "secret_key_required");
    let r = s.post("/v1/events/bulk", &[], body.as_bytes()).await;
    r.assert_error(401, "missing_write_key");
    let r = post(&s, "/v1/events/bulk", SECRET, &[], body.as_bytes()).await;
    assert_eq!(r.status, 202);
    let job_id = r.json()["jobId"].as_str().unwrap().to_string();
    finished(&s, &job_id).await;
    get(&s, &format!("/v1/jobs/{job_id}"), KEY).await.assert_error(403, "secret_key_required");
    get(&s, &format!("/v1/jobs/{job_id}"), OTHER_SECRET).await.assert_error(404, "job_not_found");
    let list = get(&s, "/v1/jobs", SECRET).await.json();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["jobId"], job_id.as_str());
    assert!(list["timestamp"].is_string() && list["success"] == true);
    assert!(get(&s, "/v1/jobs", OTHER_SECRET).await.json()["data"].as_array().unwrap().is_empty());
    // Limits: over 10,000 events, and a body that is not the shape.
    let r = post(&s, "/v1/events/bulk", SECRET, &[], bulk_events(10_001).to_string().as_bytes()).await;
    r.assert_error(413, "too_many_events");
    post(&s, "/v1/events/bulk", SECRET, &[], b"[1,2]").await.assert_error(400, "invalid_body");
    post(&s, "/v1/events/bulk", SECRET, &[], b"{\"events\":[").await.assert_error(400, "invalid_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let s = server("max_queued_jobs = 2\nmax_running_jobs = 1\n").await;
    // The sink is slow: the first job holds the runner, the second waits.
    s.memory.as_ref().unwrap().set_delay(Some(Duration::from_millis(300)));
    let body = bulk_events(1).to_string();
    for _ in 0..2 {
        assert_eq!(post(&s, "/v1/events/bulk", SECRET, &[], body.as_bytes()).await.status, 202);
    }
    let r = post(&s, "/v1/events/bulk", SECRET, &[], body.as_bytes()).await;
    r.assert_error(503, "too_many_jobs");
    assert_eq!(r.header("retry-after"), Some("30"));
}

const CSV: &str = "\u{feff}event_name,email,timestamp,feature,plan,seats,ratio,flag,zip,note\r\n\
feature_used,user1@example.com,2026-01-15T08:00:00Z,reports,pro,12,0.5,true,007,\"a, b\"\r\n\
feature_used,user2@example.com,2026-01-15T09:30:00Z,dashboard,free,,,,,\"she said \"\"hi\"\"\"\r\n\
login,user1@example.com,2026-01-16T10:00:00Z,,pro,-3,1e5,FALSE,10001,\"two\nlines\"\r\n\
login,,2026-01-16T10:00:00Z,,pro,,,,,\r\n\
login,user3@example.com,yesterday,,pro,,,,,\r\n\
login,user3@example.com,,,pro,,,,,\r\n";

fn multipart(csv: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----gateway-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"events.csv\"\r\nContent-Type: text/csv\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(csv);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_backfill_follows_rfc_4180_and_types_values_by_the_rule() {
    let s = server("").await;
    let (ct, body) = multipart(CSV.as_bytes());
    let r = post(&s, "/v1/backfill/csv", SECRET, &[("Content-Type", &ct)], &body).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    assert_eq!(r.json()["totalEvents"], 6);
    let data = finished(&s, r.json()["jobId"].as_str().unwrap()).await;
    assert_eq!((data["accepted"].as_u64(), data["rejected"].as_u64()), (Some(3), Some(3)), "{data}");
    let rows: Vec<(u64, &str)> = data["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    // Spreadsheet rows: the header is 1; row 4's quoted newline does not shift the next ones.
    assert_eq!(rows, vec![(5, "missing_identity"), (6, "invalid_timestamp"), (7, "invalid_timestamp")]);
    let published = s.published();
    let props: Vec<Value> = published.iter().map(|e| e["properties"].clone()).collect();
    assert_eq!(
        props[0],
        json!({"feature": "reports", "plan": "pro", "seats": 12, "ratio": 0.5, "flag": true, "zip": "007", "note": "a, b"})
    );
    // Empty cells are omitted; quotes inside quotes are one quote.
    assert_eq!(props[1], json!({"feature": "dashboard", "plan": "free", "note": "she said \"hi\""}));
    assert_eq!(
        props[2],
        json!({"plan": "pro", "seats": -3, "ratio": "1e5", "flag": "FALSE", "zip": 10001, "note": "two\nlines"})
    );
    assert_eq!(published[0]["event"], "feature_used");
    assert_eq!(published[0]["userId"], "user1@example.com");

    // A raw text/csv body with LF line ends and ?types=string keeps every value a string.
    let raw = "event_name,domain,timestamp,seats,flag\nsignup,acme.com,2026-02-01T00:00:00Z,12,true\n";
    let r = post(&s, "/v1/backfill/csv?types=string", SECRET, &[("Content-Type", "text/csv")], raw.as_bytes()).await;
    assert_eq!(r.status, 202, "{:?}", r.json());
    finished(&s, r.json()["jobId"].as_str().unwrap()).await;
    let last = s.published().last().cloned().unwrap();
    assert_eq!(last["properties"], json!({"seats": "12", "flag": "true"}));
    assert_eq!(
        (last["anonymousId"].as_str(), last["context"]["groupId"].as_str()),
        (Some("domain:acme.com"), Some("acme.com"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_limits_and_missing_columns_are_refused_at_upload() {
    let s = server("").await;
    for (csv, column) in [
        ("email,timestamp\n", "event_name"),
        ("event_name,email\n", "timestamp"),
        ("event_name,timestamp,plan\n", "email or domain"),
    ] {
        let r = post(&s, "/v1/backfill/csv", SECRET, &[("Content-Type", "text/csv")], csv.as_bytes()).await;
        r.assert_error(400, "missing_column");
        assert!(r.json()["message"].as_str().unwrap().contains(&format!("'{column}'")), "{:?}", r.json());
    }
    let mut rows = String::from("event_name,email,timestamp\n");
    for i in 0..10_001 {
        rows.push_str(&format!("e,u{i}@x.io,2026-01-01T00:00:00Z\n"));
    }
    post(&s, "/v1/backfill/csv", SECRET, &[("Content-Type", "text/csv")], rows.as_bytes())
        .await
        .assert_error(413, "too_many_rows");
    // 10,000 rows are fine.
    let ok: String = rows.lines().take(10_001).map(|l| format!("{l}\n")).collect();
    let r = post(&s, "/v1/backfill/csv", SECRET, &[("Content-Type", "text/csv")], ok.as_bytes()).await;
    assert_eq!((r.status, r.json()["totalEvents"].as_u64()), (202, Some(10_000)));
    // The 50,000,001st byte is refused while it arrives (multipart and raw alike).
    let mut big = b"event_name,email,timestamp,pad\n".to_vec();
    big.resize(50_000_001, b'x');
    let (ct, body) = multipart(&big);
    post(&s, "/v1/backfill/csv", SECRET, &[("Content-Type", &ct)], &body).await.assert_error(413, "payload_too_large");
    post(&s, "/v1/backfill/csv", SECRET, &[("Content-Type", "text/csv")], &big)
        .await
        .assert_error(413, "payload_too_large");
    let (ct, body) = multipart(b"");
    let body = String::from_utf8(body).unwrap().replace("name=\"file\"", "name=\"other\"");
    post(&s, "/v1/backfill/csv", SECRET, &[("Content-Type", &ct)], body.as_bytes())
        .await
        .assert_error(400, "invalid_multipart");
}
