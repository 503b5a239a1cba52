//! The Kafka sink against a real Kafka-protocol broker (Tansu), behind the cargo feature
//! `kafka-tests`: `scripts/test.sh` starts the broker and runs these with
//! `GATEWAY_TEST_KAFKA_BROKERS` set. Each test creates its own topics (random names) with
//! `scripts/tansu.sh topic-create`.
//!
//! What they prove: SDK traffic recorded from real Segment libraries goes through the HTTP API
//! and comes back from the broker once per acknowledged messageId, with the configured key and
//! headers, and a payload byte for byte the normalised event (the same bytes the memory sink
//! gets for the same request, apart from the receipt times); topic routing by type and by
//! source template.
#![cfg(feature = "kafka-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kafka_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use gateway::config::{Config, Overrides};
use gateway::publish::kafka::ReadRecord;
use gateway::publish::memory::MemoryPublisher;
use gateway::publish::OutEvent;
use kafka_support::*;
use serde_json::Value;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The broker under test. Unset is an error, not a skip: a run with this feature must test.
fn brokers() -> String {
    std::env::var("GATEWAY_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "GATEWAY_TEST_KAFKA_BROKERS is not set. Run scripts/test.sh (it starts Tansu), or start a broker \
             with `scripts/tansu.sh start` and export GATEWAY_TEST_KAFKA_BROKERS=<the HOST:PORT it prints>"
        )
    })
}

/// A new topic `<prefix>-<random>` with `partitions` partitions.
fn fresh_topic(brokers: &str, prefix: &str, partitions: u32) -> String {
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    create_topic(brokers, &name, partitions);
    name
}

fn create_topic(brokers: &str, name: &str, partitions: u32) {
    let script = Path::new(REPO).join("scripts/tansu.sh");
    let out = Command::new(&script)
        .args(["topic-create", brokers, name, &partitions.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "creating topic {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The request bodies a real SDK sent: `(path, body)` of every ingest POST in a wire recording
/// of `shared/clients` (one JSON per line with `method`, `path`, `body`).
fn recorded(file: &str) -> Vec<(String, String)> {
    let path = Path::new(REPO).join("../shared/clients/wire").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["method"] == "POST" && r["path"] != "/v1/m" && r["body"].is_string())
        .map(|r| {
            // Our own key goes in the Authorization header; the recording's query string
            // (e.g. `?writeKey=` of the beacon) is dropped with its key.
            let path = r["path"].as_str().unwrap().split('?').next().unwrap().to_string();
            (path, r["body"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `payload` with the values of every `"receivedAt"` and `"timestamp"` replaced by `*`: the
/// only bytes that differ between two servings of the same request (receipt time, and the
/// skew-corrected timestamp derived from it).
fn without_receipt_times(payload: &[u8]) -> String {
    let mut s = String::from_utf8(payload.to_vec()).unwrap();
    for field in ["\"receivedAt\":\"", "\"timestamp\":\""] {
        let mut from = 0;
        while let Some(i) = s[from..].find(field) {
            let start = from + i + field.len();
            let end = start + s[start..].find('"').unwrap();
            s.replace_range(start..end, "*");
            from = start + 1;
        }
    }
    s
}

/// Serves the same requests through a gateway with the memory sink, for the expected events.
async fn through_memory(toml: &str, requests: &[(String, String)]) -> Vec<OutEvent> {
    let mut config = Config::from_toml("memory.toml", toml, &Overrides::default()).unwrap();
    config.sink = gateway::config::SinkConfig::Memory;
    let memory = Arc::new(MemoryPublisher::new());
    let g = Gateway::start(config, memory.clone()).await;
    for (path, body) in requests {
        let r = g.post(path, body).await;
        assert_eq!(r.status, 200, "memory sink, {path}: {}", r.body);
    }
    memory.events()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_traffic_round_trips_byte_for_byte() {
    let brokers = brokers();
    let topic = fresh_topic(&brokers, "roundtrip", 3);
    let toml = kafka_config(&brokers, "", "", &format!("[topics]\ndefault = \"{topic}\"\n"));
    let g = Gateway::kafka(&toml).await;

    let mut requests = recorded("segment-node.jsonl");
    requests.extend(recorded("segment-python.jsonl"));
    requests.extend(recorded("browser-default.jsonl"));
    // The recordings have one user (one key, so one partition): add many users to spread.
    let spread: Vec<String> = (0..60).map(|i| format!("spread-{i}")).collect();
    requests.push(("/v1/batch".into(), batch_body(&spread)));
    assert!(requests.len() > 10, "too few recorded requests: {}", requests.len());
    for (path, body) in &requests {
        // The first delivery of a new idempotent producer waits for its producer id (≈0.5 s).
        let r = g.post(path, body).await;
        assert_eq!(r.status, 200, "kafka sink, {path}: {}", r.body);
    }
    let expected = through_memory(&toml, &requests).await;
    assert!(expected.len() >= 200, "only {} events in the requests", expected.len());

    let records = read_topic(&brokers, &topic).await;
    let mut by_id: HashMap<&str, Vec<&ReadRecord>> = HashMap::new();
    for r in &records {
        by_id.entry(r.header("message-id").unwrap()).or_default().push(r);
    }
    assert_eq!(records.len(), expected.len(), "records on {topic} vs events accepted");
    for ev in &expected {
        let found = by_id.get(ev.message_id.as_str()).map_or(&[][..], Vec::as_slice);
        assert_eq!(found.len(), 1, "messageId {} is on the topic {} times", ev.message_id, found.len());
        let rec = found[0];
        assert_eq!(rec.key.as_deref(), ev.key.as_deref().map(str::as_bytes), "key of {}", ev.message_id);
        assert_eq!(rec.header("event-type"), Some(ev.event_type.as_str()));
        assert_eq!(rec.header("source-id"), Some("demo"));
        assert_eq!(rec.header("content-type"), Some("application/json"));
        assert_eq!(rec.headers.len(), 4, "{:?}", rec.headers);
        assert_eq!(
            without_receipt_times(&rec.payload),
            without_receipt_times(&ev.payload),
            "payload of {}",
            ev.message_id
        );
        let v: Value = serde_json::from_slice(&rec.payload).unwrap();
        assert_eq!(v["messageId"].as_str(), Some(ev.message_id.as_str()));
    }
    let partitions: std::collections::HashSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 3, "records on {} of 3 partitions", partitions.len());
    eprintln!("round trip: {} requests, {} events, each once on {topic} (3 partitions)", requests.len(), records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_follow_type_overrides_and_source_templates() {
    let brokers = brokers();
    let events = fresh_topic(&brokers, "events", 2);
    let identities = fresh_topic(&brokers, "identities", 1);
    let prefix = format!("srv-{}", uuid::Uuid::new_v4().simple());
    for t in ["track", "identify"] {
        create_topic(&brokers, &format!("{prefix}.{t}"), 1);
    }
    let rest = format!(
        "[topics]\ndefault = \"{events}\"\nby_type = {{ identify = \"{identities}\" }}\n\
         [[sources]]\nid = \"web\"\nkeys = [{{ key = \"{WRITE_KEY}\" }}]\n\
         [[sources]]\nid = \"srv\"\ntopic = \"{prefix}.{{type}}\"\nkeys = [{{ key = \"srv-key\" }}]\n"
    );
    let g = Gateway::kafka(&kafka_config(&brokers, "record_key = \"message_id\"", "", &rest)).await;

    let r = g
        .post(
            "/v1/batch",
            r#"{"batch":[{"type":"track","userId":"u","event":"E","messageId":"web-t"},
                {"type":"identify","userId":"u","messageId":"web-i"},
                {"type":"page","anonymousId":"a","messageId":"web-p"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = g
        .post_as(
            "srv-key",
            "/v1/batch",
            r#"{"batch":[{"type":"track","userId":"u","event":"E","messageId":"srv-t"},
                {"type":"identify","userId":"u","messageId":"srv-i"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let ids = |recs: Vec<ReadRecord>| -> Vec<(String, Option<Vec<u8>>)> {
        let mut v: Vec<_> = recs.iter().map(|r| (payload_message_id(r), r.key.clone())).collect();
        v.sort();
        v
    };
    let key = |m: &str| Some(m.as_bytes().to_vec());
    assert_eq!(
        ids(read_topic(&brokers, &events).await),
        vec![("web-p".into(), key("web-p")), ("web-t".into(), key("web-t"))]
    );
    assert_eq!(ids(read_topic(&brokers, &identities).await), vec![("web-i".into(), key("web-i"))]);
    for t in ["track", "identify"] {
        let m = format!("srv-{}", &t[..1]);
        assert_eq!(ids(read_topic(&brokers, &format!("{prefix}.{t}")).await), vec![(m.clone(), key(&m))]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_violations_reach_the_violations_topic() {
    let brokers = brokers();
    let events = fresh_topic(&brokers, "events", 1);
    let violations = fresh_topic(&brokers, "violations", 1);
    let plans = concat!(env!("CARGO_MANIFEST_DIR"), "/../contracts");
    let rest = format!(
        "[topics]\ndefault = \"{events}\"\n\
         [contracts]\ndir = \"{plans}\"\nviolations_topic = \"{violations}\"\n\
         [[sources]]\nid = \"shop\"\n\
         contracts = {{ plan = \"example\", unplanned_events = \"block\", violations = \"allow\" }}\n\
         keys = [{{ key = \"{WRITE_KEY}\" }}]\n"
    );
    let g = Gateway::kafka(&kafka_config(&brokers, "", "", &rest)).await;
    let r = g
        .post(
            "/v1/batch",
            r#"{"batch":[
                {"type":"track","userId":"u","event":"Order Completed","messageId":"ok-1","properties":{"order_id":"o","total":1}},
                {"type":"track","userId":"u","event":"Order Completed","messageId":"allowed-1","properties":{"order_id":"o"}},
                {"type":"track","userId":"u","event":"Unplanned Thing","messageId":"blocked-1"}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["errors"][0]["code"], "contract_violation");

    let mut published: Vec<String> = read_topic(&brokers, &events).await.iter().map(payload_message_id).collect();
    published.sort();
    assert_eq!(published, vec!["allowed-1", "ok-1"]);
    let mut audit: Vec<serde_json::Value> =
        read_topic(&brokers, &violations).await.iter().map(|r| serde_json::from_slice(&r.payload).unwrap()).collect();
    audit.sort_by_key(|v| v["messageId"].as_str().unwrap().to_string());
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!((audit[0]["messageId"].as_str(), audit[0]["blocked"].as_bool()), (Some("allowed-1"), Some(false)));
    assert_eq!(audit[0]["violations"][0]["pointer"], "/properties/total");
    assert_eq!(audit[0]["originalEvent"]["messageId"], "allowed-1");
    assert_eq!((audit[1]["messageId"].as_str(), audit[1]["blocked"].as_bool()), (Some("blocked-1"), Some(true)));
    assert_eq!(audit[1]["violations"][0]["keyword"], "unplanned_event");
    assert_eq!(audit[1]["sourceId"], "shop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_codec_round_trips() {
    // gzip and zstd need librdkafka built with zlib and zstd: a build without them refuses the
    // setting at start (and `--check` says so).
    let brokers = brokers();
    for codec in ["gzip", "zstd", "lz4", "snappy", "none"] {
        let topic = fresh_topic(&brokers, &format!("codec-{codec}"), 1);
        let toml = kafka_config(
            &brokers,
            "",
            &format!("\"compression.type\" = \"{codec}\""),
            &format!("[topics]\ndefault = \"{topic}\"\n"),
        );
        let g = Gateway::kafka(&toml).await;
        let ids: Vec<String> = (0..20).map(|i| format!("{codec}-{i}-{}", uuid::Uuid::new_v4().simple())).collect();
        let r = g.post("/v1/batch", &batch_body(&ids)).await;
        assert_eq!(r.status, 200, "{codec}: {}", r.body);
        let read: Vec<String> = read_topic(&brokers, &topic).await.iter().map(payload_message_id).collect();
        assert_eq!(read, ids, "{codec}");
    }
}
