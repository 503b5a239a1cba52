//! The `gateway` binary itself: `--check`, signals (SIGTERM drain, SIGHUP reload), logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::zombie_processes)]

mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

fn write_config(dir: &Path, key: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [sink]
        kind = "local_log"
        [sink.local_log]
        data_dir = "{}"
        [[sources]]
        id = "web"
        keys = [{{ key = "{key}" }}]
        "#,
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the binary and reads its JSON log until it says where it listens.
fn start(config: &Path) -> (Child, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut child =
        Command::new(BIN).arg("--config").arg(config).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no 'listening' log line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        if v["message"] == "listening" {
            return (child, v["addr"].as_str().unwrap().parse().unwrap(), rx);
        }
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap().success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn check_reports_every_problem_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(dir.path(), "k");
    let out = Command::new(BIN).arg("--config").arg(&good).arg("--check").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"nope\"\n[topics]\ndefault = \"a b\"\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&bad).arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    for needle in ["server.listen", "topics.default", "no [[sources]]"] {
        assert!(
            err.lines().any(|l| l.starts_with(&format!("{}: ", bad.display())) && l.contains(needle)),
            "{needle} missing:\n{err}"
        );
    }
    // The embedded default validates too (from the repo root, where contracts/ is), and --check
    // compiles the tracking plans: elsewhere the demo source's plan is missing.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(BIN).arg("--check").current_dir(root).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(BIN).arg("--check").current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("contracts"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_exits_zero_with_everything_on_disk() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "bin-key");
    let (mut child, addr, logs) = start(&config);
    // N requests whose bodies are half sent when the signal comes.
    let mut conns = Vec::new();
    for i in 0..N {
        let body = format!(r#"{{"userId":"u","event":"e","messageId":"drain-{i}"}}"#);
        let head = format!(
            "POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Write-Key: bin-key\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (first, rest) = body.split_at(body.len() / 2);
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("{head}{first}").as_bytes()).await.unwrap();
        conns.push((c, rest.to_string()));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8(request(addr, "GET", "/metrics", &[], b"").await.body).unwrap();
        if text.lines().any(|l| l == format!("gateway_http_requests_in_flight {N}")) {
            break;
        }
        assert!(Instant::now() < deadline, "the requests did not start:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "TERM");
    // The listener closes at once; the requests in flight are still waiting for their bodies.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "new connections are still accepted after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "the gateway exited with requests in flight");
    // The rest of each body trickles in after the signal, a few bytes at a time.
    let mut tasks = Vec::new();
    for (mut c, rest) in conns {
        tasks.push(tokio::spawn(async move {
            for piece in rest.as_bytes().chunks(8) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.write_all(piece).await.unwrap();
            }
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await.unwrap().unwrap();
            answer
        }));
    }
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(!answer.is_empty(), "a request in flight was cut off by the shutdown");
        let r = parse_response(&answer);
        assert_eq!((r.status, r.json()), (200, serde_json::json!({"success": true})));
    }
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let mut ids: Vec<String> = log_events(&dir.path().join("data"), "events")
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..N).map(|i| format!("drain-{i}")).collect::<Vec<_>>());
    // Logs are JSON and never carry the key.
    let all: Vec<String> = logs.try_iter().collect();
    assert!(all.iter().any(|l| l.contains("stopped")), "{all:?}");
    assert!(all.iter().all(|l| !l.contains("bin-key")), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_keeps_the_old_one_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "old-key");
    let (mut child, addr, _logs) = start(&config);
    let post = |key: &'static str| async move {
        request(
            addr,
            "POST",
            "/v1/track",
            &[("Content-Type", "application/json"), ("X-Write-Key", key)],
            br#"{"userId":"u","event":"e"}"#,
        )
        .await
        .status
    };
    assert_eq!(post("old-key").await, 200);
    write_config(dir.path(), "new-key");
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while post("new-key").await != 200 {
        assert!(Instant::now() < deadline, "reload did not take effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post("old-key").await, 401);
    // A broken file is refused; the new key keeps working.
    std::fs::write(&config, "this is not toml").unwrap();
    signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post("new-key").await, 200);
    let metrics = request(addr, "GET", "/metrics", &[], b"").await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains(r#"gateway_config_reloads_total{result="ok"} 1"#), "{text}");
    assert!(text.contains(r#"gateway_config_reloads_total{result="error"} 1"#), "{text}");
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)).code(), Some(0));
}
