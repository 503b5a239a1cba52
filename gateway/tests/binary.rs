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
    let (child, addr, _startup, rx) = start_with(config, &[]);
    (child, addr, rx)
}

/// [`start`] with extra environment variables, also handing back the log lines up to and
/// including "listening".
fn start_with(
    config: &Path,
    env: &[(&str, &str)],
) -> (Child, SocketAddr, Vec<String>, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
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
    let mut startup = Vec::new();
    loop {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no 'listening' log line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
        startup.push(line);
        if v["message"] == "listening" {
            return (child, v["addr"].as_str().unwrap().parse().unwrap(), startup, rx);
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

#[test]
fn the_secured_kafka_example_checks_its_files_and_never_prints_a_secret() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/kafka-sasl-ssl.toml");
    let dir = tempfile::tempdir().unwrap();
    let check = || {
        Command::new(BIN)
            .args(["--config", example, "--check"])
            .current_dir(dir.path())
            .env("KAFKA_USERNAME", "svc-gateway-user")
            .output()
            .unwrap()
    };
    // Without secrets/: exit 2, each missing file named by its path.
    let out = check();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("kafka.tls.ca_file: cannot read 'secrets/kafka-ca.pem'"), "{err}");
    assert!(err.contains("kafka.sasl.password_file: cannot read 'secrets/kafka-password'"), "{err}");
    // With them it passes, and neither run shows a credential.
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/kafka-ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("secrets/kafka-password"), "pa55-w0rd-in-a-file\n").unwrap();
    let ok = check();
    assert!(ok.status.success(), "{ok:?}");
    let all = format!("{err}{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    assert!(!all.contains("pa55-w0rd") && !all.contains("svc-gateway-user"), "{all}");
    // The username's variable unset is named too.
    let out = Command::new(BIN)
        .args(["--config", example, "--check"])
        .current_dir(dir.path())
        .env_remove("KAFKA_USERNAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'KAFKA_USERNAME' is not set"), "{out:?}");
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

/// One request of [`logs_at_trace_never_carry_a_key_or_a_body`] and the status it must get.
struct Call {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: String,
    status: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_at_trace_never_carry_a_key_or_a_body() {
    // Distinct, greppable keys of every state, and a marker in every part of a body.
    const LIVE: &str = "live-key-7f3a9c";
    const SECRET: &str = "secret-key-4c2e88";
    const REVOKED: &str = "revoked-key-2b8d41";
    const UNKNOWN: &str = "unknown-key-90ce17";
    const CANARY: &str = "body-canary-5e1d";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let text = format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [log]
        level = "trace"
        format = "json"
        [sink]
        kind = "local_log"
        [sink.local_log]
        data_dir = "{}"
        [[sources]]
        id = "web"
        keys = [{{ key = "{LIVE}" }}, {{ key = "{SECRET}", kind = "secret" }}, {{ key = "{REVOKED}", revoked = true }}]
        "#,
        dir.path().join("data").display()
    );
    std::fs::write(&config, text).unwrap();
    // RUST_LOG would override the config's level: make it trace too, whatever the caller set.
    let (mut child, addr, startup, logs) = start_with(&config, &[("RUST_LOG", "trace")]);

    let event = |key: Option<&str>| {
        let key = key.map(|k| format!(r#","writeKey":"{k}""#)).unwrap_or_default();
        format!(
            r#"{{"userId":"{CANARY}-user","event":"{CANARY}-event","properties":{{"p":"{CANARY}-prop"}},"context":{{"c":"{CANARY}-ctx"}}{key}}}"#
        )
    };
    let ev = event(None);
    let post = |path: &str, headers: Vec<(&'static str, String)>, body: String, status| Call {
        method: "POST",
        path: path.into(),
        headers,
        body,
        status,
    };
    let usage = |authorization: String, status| Call {
        method: "GET",
        path: "/v1/usage".into(),
        headers: vec![("Authorization", authorization)],
        body: String::new(),
        status,
    };
    let mut calls = Vec::new();
    // Every auth form, with a good, an unknown and a revoked key.
    for (key, status) in [(LIVE, 200), (UNKNOWN, 401), (REVOKED, 401)] {
        calls.push(post("/v1/track", vec![("X-Write-Key", key.into())], ev.clone(), status));
        calls.push(post("/v1/track", vec![("Authorization", basic(key))], ev.clone(), status));
        calls.push(post(&format!("/v1/track?writeKey={key}"), vec![], ev.clone(), status));
        calls.push(post("/v1/track", vec![], event(Some(key)), status));
        let batch = format!(r#"{{"writeKey":"{key}","batch":[{}]}}"#, ev.replacen('{', r#"{"type":"track","#, 1));
        calls.push(post("/v1/batch", vec![], batch, status));
        calls.push(usage(format!("Bearer {key}"), if status == 200 { 403 } else { 401 }));
    }
    calls.push(usage(format!("Bearer {SECRET}"), 200));
    calls.push(usage(basic(SECRET), 200));
    // Failures after a good key (a malformed body, invalid events) and a malformed Authorization.
    let live = || vec![("X-Write-Key", LIVE.to_string())];
    calls.push(post("/v1/track", live(), format!(r#"{{"userId":"{CANARY}" "#), 400));
    calls.push(post("/v1/track", live(), format!(r#"{{"event":"{CANARY}"}}"#), 400));
    calls.push(post("/v1/track", live(), format!(r#"{{"userId":"u","event":"e","timestamp":"{CANARY}"}}"#), 400));
    calls.push(post("/v1/track", vec![("Authorization", format!("Basic {LIVE}!"))], ev.clone(), 401));

    for c in &calls {
        let mut headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.push(("Content-Type", "application/json"));
        let r = request(addr, c.method, &c.path, &headers, c.body.as_bytes()).await;
        assert_eq!(r.status, c.status, "{} {} {:?}: {}", c.method, c.path, c.headers, String::from_utf8_lossy(&r.body));
    }
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)).code(), Some(0));
    let mut lines = startup;
    // The reader thread ends at EOF, once the process is gone.
    lines.extend(logs.iter());

    // Every request was logged at debug, failures with their code: the check below is not
    // vacuous.
    let parsed: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("log line is not JSON: {l}"))).collect();
    let mut done: Vec<(u64, u64)> = parsed
        .iter()
        .filter(|v| v["message"] == "request done" && v["level"] == "DEBUG")
        .map(|v| (v["span"]["request_id"].as_u64().unwrap(), v["status"].as_u64().unwrap()))
        .collect();
    done.sort_unstable();
    let statuses: Vec<u64> = done.iter().map(|(_, s)| *s).collect();
    let expected: Vec<u64> = calls.iter().map(|c| u64::from(c.status)).collect();
    assert_eq!(statuses, expected, "one debug 'request done' per request, in order: {lines:#?}");
    let rejected: std::collections::BTreeSet<&str> = parsed
        .iter()
        .filter(|v| v["message"] == "request rejected" && v["level"] == "DEBUG")
        .filter_map(|v| v["code"].as_str())
        .collect();
    for code in ["invalid_write_key", "revoked_write_key", "invalid_json"] {
        assert!(rejected.contains(code), "no debug 'request rejected' with {code}: {lines:#?}");
    }

    let secrets = [LIVE, SECRET, REVOKED, UNKNOWN, CANARY];
    // `Authorization: Basic` carries base64("KEY:").
    let encoded: Vec<String> =
        [LIVE, SECRET, REVOKED, UNKNOWN].iter().map(|k| basic(k).trim_start_matches("Basic ").to_string()).collect();
    for line in &lines {
        for s in secrets.iter().copied().chain(encoded.iter().map(String::as_str)) {
            assert!(!line.contains(s), "a log line carries {s:?}: {line}");
        }
    }
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
