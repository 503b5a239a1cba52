//! Test support: boots the real server on `127.0.0.1:0` and talks raw HTTP/1.1 to it.
//!
//! A raw client (not a library) so tests can send exactly the bytes they mean: bad headers,
//! chunked bodies without a length, gzip, half-sent requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway::config::{Config, Overrides};
use gateway::publish::local_log::{self, LocalLog};
use gateway::publish::memory::MemoryPublisher;
use gateway::Publisher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const KEY: &str = "test-key";
pub const OTHER_KEY: &str = "other-key";

/// A config with two sources and the memory sink unless `extra` says otherwise.
pub fn config_text(extra: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        trusted_proxies = ["127.0.0.2"]
        shutdown_timeout_ms = 5000
        [limits]
        max_request_bytes = 65536
        max_event_bytes = 4096
        max_batch_events = 50
        [sink]
        kind = "memory"
        {extra}
        [[sources]]
        id = "web"
        name = "Website"
        keys = [{{ key = "{KEY}", label = "browser" }}]
        [[sources]]
        id = "backend"
        keys = [{{ key = "{OTHER_KEY}" }}]
        "#
    )
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<gateway::AppState>,
    pub memory: Option<Arc<MemoryPublisher>>,
    pub data_dir: Option<PathBuf>,
    /// Usage counts and the dedup snapshot (unless a test points them elsewhere).
    pub state_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// The memory sink, with the default test config.
    pub async fn memory() -> TestServer {
        Self::memory_with(&config_text("")).await
    }

    pub async fn memory_with(toml: &str) -> TestServer {
        let mem = Arc::new(MemoryPublisher::new());
        let mut s = Self::start(toml, mem.clone()).await;
        s.memory = Some(mem);
        s
    }

    /// The local log in `dir`.
    pub async fn local_log(dir: &Path) -> TestServer {
        let log = Arc::new(LocalLog::open(dir, 1 << 20, true).unwrap());
        let mut s = Self::start(&config_text(""), log).await;
        s.data_dir = Some(dir.to_path_buf());
        s
    }

    pub async fn start(toml: &str, publisher: Arc<dyn Publisher>) -> TestServer {
        let state_dir = tempfile::tempdir().unwrap();
        Self::start_in(toml, publisher, state_dir, gateway::ingest::Clocks::default()).await
    }

    /// Starts with usage counts and the dedup snapshot in `state_dir`, and the given clocks.
    pub async fn start_in(
        toml: &str,
        publisher: Arc<dyn Publisher>,
        state_dir: tempfile::TempDir,
        clocks: gateway::ingest::Clocks,
    ) -> TestServer {
        let mut config = Config::from_toml("test.toml", toml, &Overrides::default()).unwrap();
        if !toml.contains("[usage]") {
            config.usage_dir = state_dir.path().to_path_buf();
        }
        if !toml.contains("snapshot_path") {
            config.dedup.snapshot_path = Some(state_dir.path().join("dedup.snapshot"));
        }
        let state = Arc::new(
            gateway::AppState::with_clocks(config, publisher, gateway::ops::metrics::Metrics::new(), clocks).unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::serve(state.clone(), listener, async {
            let _ = rx.await;
        }));
        TestServer { addr, state, memory: None, data_dir: None, state_dir, stop: Some(tx), task: Some(task) }
    }

    /// Stops the server and waits until it has drained, flushed and persisted its state.
    pub async fn stop(self) {
        self.stop_keeping_state().await;
    }

    /// [`TestServer::stop`], handing back the state directory (usage counts, dedup snapshot)
    /// for a restart.
    pub async fn stop_keeping_state(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t).await.unwrap().unwrap();
        }
        std::mem::replace(&mut self.state_dir, tempfile::tempdir().unwrap())
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub fn published(&self) -> Vec<serde_json::Value> {
        match (&self.memory, &self.data_dir) {
            (Some(m), _) => m.events().iter().map(|e| serde_json::from_slice(&e.payload).unwrap()).collect(),
            (None, Some(d)) => log_events(d, "events"),
            _ => vec![],
        }
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.addr, "POST", path, headers, body).await
    }

    /// POST JSON with the test key in X-Write-Key.
    pub async fn post_json(&self, path: &str, body: &str) -> Resp {
        self.post(path, &[("Content-Type", "application/json"), ("X-Write-Key", KEY)], body.as_bytes()).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Every record of a local-log topic, parsed.
pub fn log_events(dir: &Path, topic: &str) -> Vec<serde_json::Value> {
    local_log::read_topic(dir, topic).unwrap().iter().map(|l| serde_json::from_slice(l).unwrap()).collect()
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// Asserts status and error code of a `{"success":false,"code":…}` answer.
    pub fn assert_error(&self, status: u16, code: &str) {
        let j = self.json();
        assert_eq!((self.status, j["code"].as_str()), (status, Some(code)), "body: {j}");
        assert_eq!(j["success"], false, "{j}");
        assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to EOF.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        has_len |= k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw).await
}

/// Sends raw bytes, reads the answer to EOF and parses it.
pub async fn raw_request(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await.expect("response timed out").unwrap();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Resp { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn basic(key: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{key}:")))
}

/// POSTs JSON with a write key on a fresh connection and returns the status (for spawned
/// concurrent requests, which cannot borrow a `TestServer`).
pub async fn post_status(addr: SocketAddr, path: &str, key: &str, body: &str) -> u16 {
    request(addr, "POST", path, &[("Content-Type", "application/json"), ("X-Write-Key", key)], body.as_bytes())
        .await
        .status
}

/// `(index, code)` of each entry of a batch answer's `errors`.
pub fn error_codes(j: &serde_json::Value) -> Vec<(u64, String)> {
    j["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap().to_string()))
        .collect()
}
