//! Support for the Kafka sink's tests (`kafka_mock.rs`, `kafka_tansu.rs`): boots the real server
//! with a Kafka (or memory) publisher on `127.0.0.1:0`, talks raw HTTP/1.1 to it, and reads
//! topics back.
//!
//! Owns nothing of the crate; kept apart from `tests/util` (the HTTP suite's helpers) so that
//! the two suites can change independently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use gateway::config::{Config, Overrides, SinkConfig};
use gateway::publish::kafka::{self, KafkaPublisher, ReadRecord};
use gateway::Publisher;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const WRITE_KEY: &str = "demo-write-key";

/// A gateway config with the Kafka sink. `kafka` goes into `[kafka]` (after `brokers`),
/// `producer` into `[kafka.producer]`, `rest` after everything (topics, sources, …); without
/// `[[sources]]` in `rest`, the demo source is added.
pub fn kafka_config(brokers: &str, kafka: &str, producer: &str, rest: &str) -> String {
    let sources = if rest.contains("[[sources]]") {
        String::new()
    } else {
        format!("[[sources]]\nid = \"demo\"\nkeys = [{{ key = \"{WRITE_KEY}\" }}]\n")
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout_ms = 3000\n\
         [sink]\nkind = \"kafka\"\n\
         [kafka]\nbrokers = \"{brokers}\"\n{kafka}\n\
         [kafka.producer]\n{producer}\n\
         {rest}\n{sources}"
    )
}

/// A running gateway; stopped (and its producer flushed) on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    pub config: Config,
    stop: CancellationToken,
    /// Usage counts and the dedup snapshot go here, not into the working directory.
    _state_dir: tempfile::TempDir,
}

impl Gateway {
    /// Boots the gateway with the Kafka sink the config describes.
    pub async fn kafka(toml: &str) -> Gateway {
        let config = Config::from_toml("test.toml", toml, &Overrides::default()).unwrap();
        let SinkConfig::Kafka(k) = &config.sink else { panic!("not a kafka config") };
        let publisher = Arc::new(KafkaPublisher::new(k).unwrap());
        Self::start(config, publisher).await
    }

    /// Boots the gateway with any publisher (e.g. the memory one, for comparisons).
    pub async fn start(mut config: Config, publisher: Arc<dyn Publisher>) -> Gateway {
        let state_dir = tempfile::tempdir().unwrap();
        config.usage_dir = state_dir.path().to_path_buf();
        config.dedup.snapshot_path = Some(state_dir.path().join("dedup.snapshot"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let metrics = gateway::ops::metrics::Metrics::new();
        tokio::spawn(gateway::run(config.clone(), listener, publisher, metrics, stop.clone().cancelled_owned()));
        Gateway { addr, config, stop, _state_dir: state_dir }
    }

    pub async fn get(&self, path: &str) -> Resp {
        http(self.addr, "GET", path, "").await
    }

    pub async fn post(&self, path: &str, body: &str) -> Resp {
        http(self.addr, "POST", path, body).await
    }

    /// A POST with another source's write key.
    pub async fn post_as(&self, key: &str, path: &str, body: &str) -> Resp {
        http_as(self.addr, key, "POST", path, body).await
    }

    /// Polls `/ready` until it answers `status`, or panics after `within`.
    pub async fn wait_ready(&self, status: u16, within: Duration) -> Resp {
        let deadline = Instant::now() + within;
        loop {
            let r = self.get("/ready").await;
            if r.status == status {
                return r;
            }
            assert!(Instant::now() < deadline, "/ready still {} after {within:?}: {}", r.status, r.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One request on a fresh connection (`Connection: close`), with the demo write key.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    http_as(addr, WRITE_KEY, method, path, body).await
}

/// One request with `key` as the Basic user (what Segment's libraries send).
pub async fn http_as(addr: SocketAddr, key: &str, method: &str, path: &str, body: &str) -> Resp {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp { status, headers, body: body.to_string() }
}

/// A batch body of `track` calls with the given messageIds (user `u-<id>`).
pub fn batch_body(message_ids: &[String]) -> String {
    let events: Vec<Value> = message_ids
        .iter()
        .map(|m| {
            serde_json::json!({
                "type": "track", "event": "Test Event", "userId": format!("u-{m}"), "messageId": m,
                "properties": {"n": 1}
            })
        })
        .collect();
    serde_json::json!({ "batch": events }).to_string()
}

/// Indices of the events a batch answer rejected.
pub fn rejected_indices(r: &Resp) -> Vec<usize> {
    r.json()["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["index"].as_u64()).map(|i| i as usize).collect())
        .unwrap_or_default()
}

/// Every record of `topic` (blocking read on a worker thread).
pub async fn read_topic(brokers: &str, topic: &str) -> Vec<ReadRecord> {
    let (b, t) = (brokers.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || kafka::read_topic(&b, &t, Duration::from_secs(20)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("reading topic {topic}: {e}"))
}

/// The `messageId` of a record's payload.
pub fn payload_message_id(r: &ReadRecord) -> String {
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    v["messageId"].as_str().unwrap().to_string()
}
