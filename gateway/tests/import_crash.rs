//! An import job survives `kill -9`: the gateway binary is killed while a 10,000-event bulk
//! job runs, started again, and every event is on the local log exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// `start` hands the child to the test, which kills and waits for it.
#![allow(clippy::zombie_processes)]

mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const SECRET: &str = "crash-secret-key";

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[sink]\nkind = \"local_log\"\n[sink.local_log]\ndata_dir = \"{}\"\n\
         [import]\nchunk_events = 50\n[[sources]]\nid = \"backfill\"\nkeys = [{{ key = \"{SECRET}\", kind = \"secret\" }}]\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the binary; returns it and the address it listens on.
fn start(config: &Path) -> (Child, SocketAddr) {
    let mut child =
        Command::new(BIN).arg("--config").arg(config).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no 'listening' line");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["message"] == "listening" {
            return (child, v["addr"].as_str().unwrap().parse().unwrap());
        }
    }
}

async fn job(addr: SocketAddr, id: &str) -> Value {
    let r =
        request(addr, "GET", &format!("/v1/jobs/{id}"), &[("Authorization", &format!("Bearer {SECRET}"))], b"").await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    r.json()["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_mid_way_resumes_and_publishes_every_event_exactly_once() {
    // No eventIds: the ids are generated when the job is accepted and stored with it.
    let events: Vec<Value> = (0..10_000)
        .map(|i| json!({"eventName": "imported", "email": format!("u{i}@x.io"), "properties": {"i": i}}))
        .collect();
    let body = json!({ "events": events }).to_string();
    for attempt in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let (mut child, addr) = start(&config);
        let auth = format!("Bearer {SECRET}");
        let r = request(addr, "POST", "/v1/events/bulk", &[("Authorization", &auth)], body.as_bytes()).await;
        assert_eq!(r.status, 202, "{:?}", r.json());
        let id = r.json()["jobId"].as_str().unwrap().to_string();
        // Kill it once part of the job is done.
        let deadline = Instant::now() + Duration::from_secs(30);
        while job(addr, &id).await["processed"].as_u64().unwrap() < 1_000 {
            assert!(Instant::now() < deadline, "the job does not progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let record: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("data/jobs").join(&id).join("job.json")).unwrap())
                .unwrap();
        if record["linesDone"] == record["calls"] {
            eprintln!("attempt {attempt}: the job finished before the kill; again");
            continue;
        }
        let (mut child, addr) = start(&config);
        let deadline = Instant::now() + Duration::from_secs(60);
        let done = loop {
            let j = job(addr, &id).await;
            if j["status"] == "completed" {
                break j;
            }
            assert!(Instant::now() < deadline, "the job did not finish after the restart: {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!((done["accepted"].as_u64(), done["rejected"].as_u64()), (Some(10_000), Some(0)), "{done}");
        let logged = log_events(&dir.path().join("data"), "events");
        let mut ids: Vec<String> = logged.iter().map(|e| e["messageId"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids.len(), 10_000, "events on the log (each exactly once)");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10_000, "no messageId twice");
        let mut seen: Vec<i64> = logged.iter().map(|e| e["properties"]["i"].as_i64().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10_000).collect::<Vec<i64>>(), "every event once");
        return;
    }
    panic!("in 3 attempts the job always finished before the kill");
}
