//! The Kafka sink over TLS and SASL against real processes, behind the cargo feature
//! `kafka-tests` (`scripts/test.sh` runs them and fails when they do not run).
//!
//! The TLS listener: Tansu 0.6.0 (the broker the tests use) refuses `--cert` together with
//! `--key` in its command line and serves plaintext with either alone, so each test puts
//! nginx's `stream` TLS termination (the way many deployments expose Kafka) in front of a
//! plaintext Tansu of its own that advertises nginx's port: every connection librdkafka makes,
//! bootstrap and partition leader alike, is TLS. nginx checks client certificates
//! (`ssl_verify_client on`), so mutual TLS is tested too. Certificates are made per test with
//! the `openssl` command line: a CA, a broker certificate for 127.0.0.1, a client certificate,
//! and a second CA that signed nothing the broker shows.
//!
//! SASL: Tansu's `--authentication` refuses every unauthenticated request, so users cannot be
//! created on an in-memory broker that authenticates (and this build has no persistent storage
//! engine); the tests prove that the mechanism and credentials reach the broker and that a
//! refusal is a clear `/ready` reason and a 503, not that a login succeeds.
#![cfg(feature = "kafka-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod kafka_support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_support::*;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (and reaped) on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Throwaway certificates in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        for ca in ["ca", "other-ca"] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        pki.leaf("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        pki.leaf("client", "clientAuth", "subjectAltName=DNS:segment-gateway");
        pki
    }

    /// A key and a certificate signed by `ca`.
    fn leaf(&self, name: &str, usage: &str, san: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        std::fs::write(self.path(&format!("{name}.ext")), format!("{san}\nextendedKeyUsage={usage}\n")).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running openssl (scripts/test.sh installs it): {e}"));
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("GATEWAY_TEST_TANSU_BIN") {
        return bin.into();
    }
    let out = Command::new(Path::new(REPO).join("scripts/tansu.sh")).arg("bin").output().unwrap();
    assert!(out.status.success(), "scripts/tansu.sh bin: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().into()
}

/// A plaintext in-memory Tansu on `port`, advertising `advertised` (nginx's port in front).
fn tansu(dir: &Path, port: u16, advertised: u16, extra: &[&str]) -> Process {
    let log = dir.join(format!("tansu-{port}.log"));
    let child = Command::new(tansu_bin())
        .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
        .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertised}")])
        .args(["--storage-engine", "memory://tansu/"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("tansu-{port}.err"))).unwrap())
        .spawn()
        .unwrap();
    let process = Process(child);
    wait_listening(port, "tansu", &log);
    process
}

fn create_topic(port: u16, name: &str) {
    let out = Command::new(Path::new(REPO).join("scripts/tansu.sh"))
        .args(["topic-create", &format!("127.0.0.1:{port}"), name, "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "creating {name}: {}", String::from_utf8_lossy(&out.stderr));
}

/// nginx terminating TLS on `port` and passing the stream to `upstream`; with `mtls` it
/// refuses clients without a certificate signed by the test CA.
fn nginx(pki: &Pki, port: u16, upstream: u16, mtls: bool) -> Process {
    let dir = pki.dir.path();
    let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    let load = if module.exists() { format!("load_module {};", module.display()) } else { String::new() };
    let verify = if mtls {
        format!("ssl_verify_client on; ssl_client_certificate {};", pki.file("ca.pem"))
    } else {
        String::new()
    };
    let conf = format!(
        "{load}\ndaemon off;\nmaster_process off;\npid {dir}/nginx-{port}.pid;\nerror_log {dir}/nginx-{port}.log info;\n\
         events {{ worker_connections 256; }}\n\
         stream {{ server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; {verify} \
         proxy_pass 127.0.0.1:{upstream}; }} }}\n",
        dir = dir.display(),
        cert = pki.file("server.pem"),
        key = pki.file("server.key"),
    );
    let conf_path = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(&conf_path, conf).unwrap();
    let bin = std::env::var("GATEWAY_TEST_NGINX_BIN").unwrap_or_else(|_| "nginx".into());
    let log = dir.join(format!("nginx-{port}.log"));
    let child = Command::new(&bin)
        .args(["-p", &dir.display().to_string(), "-c", &conf_path.display().to_string()])
        .args(["-e", &log.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running {bin} (scripts/test.sh installs nginx): {e}"));
    let process = Process(child);
    wait_listening(port, "nginx", &log);
    process
}

/// A Tansu behind a TLS nginx, with one topic.
struct TlsBroker {
    tls_port: u16,
    topic: String,
    _nginx: Process,
    _tansu: Process,
}

fn tls_broker(pki: &Pki, mtls: bool) -> TlsBroker {
    let (tls_port, plain_port) = (free_port(), free_port());
    let tansu = tansu(pki.dir.path(), plain_port, tls_port, &[]);
    let topic = format!("tls-{}", uuid::Uuid::new_v4().simple());
    create_topic(plain_port, &topic);
    let nginx = nginx(pki, tls_port, plain_port, mtls);
    TlsBroker { tls_port, topic, _nginx: nginx, _tansu: tansu }
}

fn gateway_toml(broker: u16, topic: &str, security: &str) -> String {
    kafka_config(
        &format!("127.0.0.1:{broker}"),
        &format!("message_timeout_ms = 3000\n{security}"),
        "\"linger.ms\" = 1\n\"reconnect.backoff.max.ms\" = 200",
        &format!("[topics]\ndefault = \"{topic}\""),
    )
}

async fn round_trip(gw: &Gateway, topic: &str, tls_port: u16) {
    gw.wait_ready(200, Duration::from_secs(20)).await;
    let ids: Vec<String> = (0..5).map(|i| format!("tls-{i}-{}", uuid::Uuid::new_v4().simple())).collect();
    let r = gw.post("/v1/batch", &batch_body(&ids)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let gateway::config::SinkConfig::Kafka(k) = &gw.config.sink else { panic!("not kafka") };
    let (brokers, topic_name, props) = (format!("127.0.0.1:{tls_port}"), topic.to_string(), k.properties.clone());
    let records = tokio::task::spawn_blocking(move || {
        gateway::publish::kafka::read_topic_with(&brokers, &topic_name, Duration::from_secs(20), &props)
    })
    .await
    .unwrap()
    .unwrap();
    let mut read: Vec<String> = records.iter().map(payload_message_id).collect();
    read.sort();
    let mut sent = ids.clone();
    sent.sort();
    assert_eq!(read, sent, "every acknowledged event is on the broker, read back over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_round_trip_over_tls_checked_against_the_ca() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, false);
    let security = format!("security_protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"", pki.file("ca.pem"));
    let gw = Gateway::kafka(&gateway_toml(broker.tls_port, &broker.topic, &security)).await;
    round_trip(&gw, &broker.topic, broker.tls_port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused_with_a_clear_reason() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, false);
    let security = format!("security_protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"", pki.file("other-ca.pem"));
    let gw = Gateway::kafka(&gateway_toml(broker.tls_port, &broker.topic, &security)).await;
    let r = gw.wait_ready(503, Duration::from_secs(10)).await;
    // /ready stays 503 and says why (librdkafka's words: "certificate verify failed").
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r2 = gw.get("/ready").await;
    assert_eq!(r2.status, 503, "{}", r2.body);
    assert!(r2.body.contains("TLS failed") && r2.body.contains("certificate verify failed"), "{}\n{}", r.body, r2.body);
    let r = gw.post("/v1/track", r#"{"userId":"u","event":"never delivered"}"#).await;
    assert_eq!(r.status, 503, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let broker = tls_broker(&pki, true);
    // Without a client certificate nginx ends the handshake: never ready, events refused.
    let no_cert = format!("security_protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"", pki.file("ca.pem"));
    let gw = Gateway::kafka(&gateway_toml(broker.tls_port, &broker.topic, &no_cert)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = gw.get("/ready").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let r = gw.post("/v1/track", r#"{"userId":"u","event":"no client certificate"}"#).await;
    assert_eq!(r.status, 503, "{}", r.body);
    drop(gw);
    // With it, the same broker takes every event.
    let with_cert = format!(
        "security_protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key")
    );
    let gw = Gateway::kafka(&gateway_toml(broker.tls_port, &broker.topic, &with_cert)).await;
    round_trip(&gw, &broker.topic, broker.tls_port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sasl_login_is_a_clear_reason_and_a_503() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _tansu = tansu(dir.path(), port, port, &["--authentication"]);
    let password = dir.path().join("password");
    std::fs::write(&password, "not-the-password\n").unwrap();
    for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256"] {
        let security = format!(
            "security_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"alice\"\n\
             password_file = \"{}\"",
            password.display()
        );
        let gw = Gateway::kafka(&gateway_toml(port, "events", &security)).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let body = loop {
            let r = gw.get("/ready").await;
            assert_eq!(r.status, 503, "{mechanism}: a broker that refused the login is not ready: {}", r.body);
            if r.body.contains("SASL authentication failed") || Instant::now() > deadline {
                break r.body;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(body.contains("SASL authentication failed"), "{mechanism}: {body}");
        assert!(!body.contains("not-the-password"), "{body}");
        let r = gw.post("/v1/track", r#"{"userId":"u","event":"refused login"}"#).await;
        assert_eq!(r.status, 503, "{mechanism}: {}", r.body);
        assert!(!r.body.contains("not-the-password"));
    }
}
