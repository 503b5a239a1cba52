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
async fn sigterm_drains_and_exits_zero_with_everything_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "bin-key");
    let (mut child, addr, logs) = start(&config);
    let mut tasks = Vec::new();
    for i in 0..30 {
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"userId":"u","event":"e","messageId":"bin-{i}"}}"#);
            request(
                addr,
                "POST",
                "/v1/track",
                &[("Content-Type", "application/json"), ("X-Write-Key", "bin-key")],
                body.as_bytes(),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    assert_eq!(log_events(&dir.path().join("data"), "events").len(), 30);
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
