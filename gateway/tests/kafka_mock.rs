//! The Kafka sink under faults, against librdkafka's in-process mock cluster
//! (`rdkafka::mocking::MockCluster`): no broker needed, runs with plain `cargo test`.
//!
//! Each test boots the real server (`gateway::run`) with the Kafka sink pointed at its own mock
//! cluster and speaks HTTP to it: delivery, broker down and back, a non-retriable produce
//! error, a full local queue (and no duplicate when its request is retried), readiness,
//! oversized events, and no acknowledged loss while the broker flaps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kafka_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kafka_support::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPIC: &str = "events";
/// Short timeouts so that faults show within seconds; a short reconnect backoff so that the
/// producer notices `broker_up` at once (librdkafka's default backs off up to 10 s).
const FAST: &str = "message_timeout_ms = 1500";
const FAST_PRODUCER: &str = "\"reconnect.backoff.max.ms\" = 200\n\"linger.ms\" = 1";

fn mock() -> MockCluster<'static, DefaultProducerContext> {
    let m = MockCluster::new(1).unwrap();
    m.create_topic(TOPIC, 3, 1).unwrap();
    m
}

fn rest() -> String {
    format!("[topics]\ndefault = \"{TOPIC}\"\n")
}

async fn fast_gateway(m: &MockCluster<'static, DefaultProducerContext>, producer: &str) -> Gateway {
    let producer = format!("{FAST_PRODUCER}\n{producer}");
    Gateway::kafka(&kafka_config(&m.bootstrap_servers(), FAST, &producer, &rest())).await
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_are_on_the_topic_with_key_and_headers() {
    let m = mock();
    let g = fast_gateway(&m, "").await;
    g.wait_ready(200, Duration::from_secs(10)).await;

    let r = g.post("/v1/track", r#"{"userId":"u-1","event":"Signed Up","messageId":"m-1"}"#).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"success":true}"#));
    let body = r#"{"batch":[
        {"type":"identify","anonymousId":"a-2","messageId":"m-2","traits":{"plan":"pro"}},
        {"type":"track","messageId":"m-bad"},
        {"type":"page","userId":"u-3","anonymousId":"a-3","messageId":"m-3"}]}"#;
    let r = g.post("/v1/batch", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.json()["accepted"].as_u64(), rejected_indices(&r)), (Some(2), vec![1]));

    let records = read_topic(&m.bootstrap_servers(), TOPIC).await;
    let by_id: HashMap<String, _> = records.iter().map(|r| (payload_message_id(r), r)).collect();
    assert_eq!(records.len(), 3, "{records:?}");
    for (id, key, ty) in [("m-1", "u-1", "track"), ("m-2", "a-2", "identify"), ("m-3", "u-3", "page")] {
        let rec = by_id[id];
        assert_eq!(rec.key.as_deref(), Some(key.as_bytes()), "{id}");
        assert_eq!(rec.header("event-type"), Some(ty));
        assert_eq!(rec.header("source-id"), Some("demo"));
        assert_eq!(rec.header("message-id"), Some(id));
        assert_eq!(rec.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&rec.payload).unwrap();
        assert_eq!((v["type"].as_str(), v["sourceId"].as_str()), (Some(ty), Some("demo")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_answers_503_within_the_timeout_then_recovers() {
    let m = mock();
    let g = fast_gateway(&m, "").await;
    g.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(g.post("/v1/batch", &batch_body(&ids("warm", 3))).await.status, 200);

    m.broker_down(-1).unwrap();
    let started = Instant::now();
    let r = g.post("/v1/batch", &batch_body(&ids("down", 5))).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(["publish_timeout", "publish_unavailable"].contains(&r.code().as_str()), "{}", r.body);
    assert!(took < Duration::from_millis(1500 + 1000), "answered after {took:?}");
    let r = g.wait_ready(503, Duration::from_secs(10)).await;
    assert_eq!(r.code(), "not_ready");
    assert_eq!(g.get("/health").await.status, 200);

    // Back up: 2xx again without restarting anything.
    m.broker_up(-1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let r = g.post("/v1/batch", &batch_body(&ids(&format!("up{n}"), 3))).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "still {} after broker_up: {}", r.status, r.body);
    }
    g.wait_ready(200, Duration::from_secs(10)).await;
    let on_topic: HashSet<String> =
        read_topic(&m.bootstrap_servers(), TOPIC).await.iter().map(payload_message_id).collect();
    assert!(on_topic.contains(&format!("up{n}-2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retriable_produce_error_is_500_publish_failed() {
    let m = mock();
    let g = fast_gateway(&m, "").await;
    g.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(g.post("/v1/batch", &batch_body(&ids("warm", 2))).await.status, 200);

    m.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]);
    let started = Instant::now();
    let r = g.post("/v1/track", r#"{"userId":"u","event":"Refused","messageId":"refused-1"}"#).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(r.code(), "publish_failed");
    assert!(r.json()["message"].as_str().unwrap().contains("topic_authorization_failed"), "{}", r.body);
    assert!(r.header("retry-after").is_none());
    // Refused at once, not after the message timeout.
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());

    // The injected error was one broker answer: the producer goes on without a restart. (A
    // request right after it may still share the failed partition's fate while librdkafka's
    // idempotent producer resets its sequence; within a second requests go through again.)
    let deadline = Instant::now() + Duration::from_secs(5);
    for i in 0.. {
        let r = g.post("/v1/track", &format!(r#"{{"userId":"u","event":"Accepted","messageId":"after-{i}"}}"#)).await;
        if r.status == 200 {
            break;
        }
        assert!([500, 503].contains(&r.status), "{}", r.body);
        assert!(Instant::now() < deadline, "no 2xx within 5 s of the injected error: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_heals_without_a_restart() {
    let m = mock();
    let g = fast_gateway(&m, "").await;
    g.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(g.post("/v1/batch", &batch_body(&ids("warm", 2))).await.status, 200);

    // A sequence desynchronisation on the head-of-line request: librdkafka declares the
    // idempotent producer unusable (a fatal error), and only a new producer can go on.
    m.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER]);
    let r = g.post("/v1/track", r#"{"userId":"u","event":"E","messageId":"desync-1"}"#).await;
    assert_eq!((r.status, r.code().as_str()), (503, "publish_unavailable"), "{}", r.body);

    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        let r = g.post("/v1/track", &format!(r#"{{"userId":"u","event":"E","messageId":"healed-{i}"}}"#)).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "the producer did not heal within 10 s: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g.wait_ready(200, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_queue_answers_503_at_once() {
    let m = mock();
    m.broker_down(-1).unwrap();
    // A long message timeout: a request that waited for delivery would take 10 s.
    let toml = kafka_config(
        &m.bootstrap_servers(),
        "message_timeout_ms = 10000",
        "\"queue.buffering.max.messages\" = 5",
        &rest(),
    );
    let g = Gateway::kafka(&toml).await;

    let started = Instant::now();
    let r = g.post("/v1/batch", &batch_body(&ids("full", 20))).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.code(), "publish_unavailable");
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.json()["accepted"], 0);
    assert_eq!(rejected_indices(&r), (0..20).collect::<Vec<_>>());
    assert!(took < Duration::from_millis(500), "queue full answered after {took:?}");

    // Still full (the first five wait for the broker): the next request is refused at once too.
    let started = Instant::now();
    let r = g.post("/v1/track", r#"{"userId":"u","event":"E"}"#).await;
    assert_eq!((r.status, r.code().as_str()), (503, "publish_unavailable"));
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// Issue #21, point 5: when the queue fills in the middle of a request, the records of it that
/// were enqueued are still delivered later. Their messageIds must stay reserved until then, or
/// the client's retry after the 503 publishes them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_full_queue_publishes_each_event_once() {
    const QUEUE: usize = 5;
    let m = mock();
    // A message timeout far beyond the outage: the queued records wait for the broker.
    let toml = kafka_config(
        &m.bootstrap_servers(),
        "message_timeout_ms = 15000",
        &format!("{FAST_PRODUCER}\n\"queue.buffering.max.messages\" = {QUEUE}"),
        &rest(),
    );
    let g = Gateway::kafka(&toml).await;
    g.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(g.post("/v1/batch", &batch_body(&ids("warm", 2))).await.status, 200);

    m.broker_down(-1).unwrap();
    let batch = ids("q", 12);
    let r = g.post("/v1/batch", &batch_body(&batch)).await;
    assert_eq!((r.status, r.code().as_str()), (503, "publish_unavailable"), "{}", r.body);
    assert_eq!(rejected_indices(&r), (0..12).collect::<Vec<_>>(), "{}", r.body);

    // The broker comes back while the first records are still queued; the client retries the
    // same batch (as SDKs do after a 503) until it is accepted.
    m.broker_up(-1).unwrap();
    // (The batch is larger than the whole queue: it only goes through because each retry skips
    // the ids already delivered.)
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answers = Vec::new();
    let accepted = loop {
        let r = g.post("/v1/batch", &batch_body(&batch)).await;
        answers.push(r.status);
        if r.status == 200 && rejected_indices(&r).is_empty() {
            break true;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(["publish_unavailable", "dedup_in_flight"].contains(&r.code().as_str()), "{}", r.body);
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut copies: HashMap<String, usize> = HashMap::new();
    for rec in read_topic(&m.bootstrap_servers(), TOPIC).await {
        *copies.entry(payload_message_id(&rec)).or_default() += 1;
    }
    let mut twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    assert!(twice.is_empty(), "published more than once: {twice:?}; answers: {answers:?}");
    assert!(accepted, "no 200 within 15 s: {answers:?}");
    let missing: Vec<_> = batch.iter().filter(|id| !copies.contains_key(*id)).collect();
    assert!(missing.is_empty(), "not on the topic: {missing:?}; answers: {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_without_a_broker_and_200_once_it_is_reachable() {
    let m = mock();
    m.broker_down(-1).unwrap();
    let g = fast_gateway(&m, "").await;
    // The gateway is up (health) but not ready, and stays so while the broker is away.
    assert_eq!(g.get("/health").await.status, 200);
    for _ in 0..3 {
        let r = g.get("/ready").await;
        assert_eq!((r.status, r.code().as_str()), (503, "not_ready"), "{}", r.body);
        assert!(r.body.contains("kafka"), "{}", r.body);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    m.broker_up(-1).unwrap();
    g.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(g.post("/v1/batch", &batch_body(&ids("late", 2))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_broker_limit_get_413_before_producing() {
    let m = mock();
    let toml = kafka_config(&m.bootstrap_servers(), "max_message_bytes = 2000", FAST_PRODUCER, &rest());
    let g = Gateway::kafka(&toml).await;
    g.wait_ready(200, Duration::from_secs(10)).await;
    let big = "x".repeat(3000);
    let r = g.post("/v1/track", &format!(r#"{{"userId":"u","event":"Big","properties":{{"b":"{big}"}}}}"#)).await;
    assert_eq!((r.status, r.code().as_str()), (413, "event_too_large"), "{}", r.body);

    let body = format!(
        r#"{{"batch":[{{"type":"track","userId":"u","event":"Small","messageId":"small-1"}},
        {{"type":"track","userId":"u","event":"Big","messageId":"big-1","properties":{{"b":"{big}"}}}}]}}"#
    );
    let r = g.post("/v1/batch", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["errors"][0]["code"], "event_too_large");
    let on_topic: Vec<String> =
        read_topic(&m.bootstrap_servers(), TOPIC).await.iter().map(payload_message_id).collect();
    assert_eq!(on_topic, vec!["small-1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_event_is_lost_while_the_broker_flaps() {
    const WORKERS: usize = 8;
    const BATCH: usize = 20;
    let m = mock();
    let g = fast_gateway(&m, "").await;
    g.wait_ready(200, Duration::from_secs(10)).await;

    let stop_at = Instant::now() + Duration::from_millis(8000);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let addr = g.addr;
        workers.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0usize);
            let mut seq = 0;
            while Instant::now() < stop_at {
                seq += 1;
                let batch = ids(&format!("w{w}-{seq}"), BATCH);
                let r = http(addr, "POST", "/v1/batch", &batch_body(&batch)).await;
                match r.status {
                    200 => {
                        let rejected = rejected_indices(&r);
                        acked.extend(
                            batch.into_iter().enumerate().filter(|(i, _)| !rejected.contains(i)).map(|(_, m)| m),
                        );
                    }
                    503 => {
                        assert_eq!(r.header("retry-after"), Some("2"));
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("unexpected {other}: {}", r.body),
                }
            }
            (acked, refused)
        }));
    }

    // Two outages while the workers send, longer than the message timeout (1.5 s) so that
    // requests fail, not only wait.
    for (up_for, down_for) in [(800, 2500), (1000, 2000)] {
        tokio::time::sleep(Duration::from_millis(up_for)).await;
        m.broker_down(-1).unwrap();
        tokio::time::sleep(Duration::from_millis(down_for)).await;
        m.broker_up(-1).unwrap();
    }

    let (mut acked, mut refused) = (Vec::new(), 0);
    for w in workers {
        let (a, r) = w.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    assert!(
        !acked.is_empty() && refused > 0,
        "the test did not exercise both outcomes: {} acked, {refused} refused",
        acked.len()
    );

    let on_topic: HashSet<String> =
        read_topic(&m.bootstrap_servers(), TOPIC).await.iter().map(payload_message_id).collect();
    let lost: Vec<&String> = acked.iter().filter(|m| !on_topic.contains(*m)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events are not on the topic, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "flapping broker: {} events acknowledged and all on the topic; {refused} batches refused with 503",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_statistics_become_gauges_and_consent_a_header() {
    let m = mock();
    let g = fast_gateway(&m, "\"statistics.interval.ms\" = 100").await;
    g.wait_ready(200, Duration::from_secs(10)).await;
    let body = r#"{"userId":"u","event":"e","messageId":"c-1","context":{"consent":{"usPrivacy":"1YYN"}}}"#;
    assert_eq!(g.post("/v1/track", body).await.status, 200);
    // Statistics arrive every 100 ms; the scrape copies the latest into gauges.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = g.get("/metrics").await.body;
        if text.contains("gateway_kafka_broker_up{") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.lines().any(|l| l.starts_with("gateway_kafka_broker_up{") && l.ends_with(" 1")), "{text}");
    assert!(text.contains("gateway_kafka_queue_max_messages 500000"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("gateway_kafka_broker_rtt_p99_seconds{")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("gateway_kafka_queue_messages ")), "{text}");
    let records = read_topic(&m.bootstrap_servers(), TOPIC).await;
    let rec = records.iter().find(|r| payload_message_id(r) == "c-1").unwrap();
    assert_eq!(
        rec.header("consent-categories"),
        Some("advertising=0;analytics=1;functional=1;marketing=0;personalisation=1")
    );
}
