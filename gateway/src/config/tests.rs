//! Unit tests of config: the shipped files validate, every problem is reported with the path,
//! defaults and overrides, Kafka properties and redaction.
//!
//! Must not: touch the network or write files.

use super::*;

#[test]
fn embedded_default_is_valid() {
    let c = Config::load(None, &Overrides::default()).unwrap();
    assert_eq!(c.sources.len(), 1);
    assert_eq!(&*c.sources[0].id, "demo");
    assert!(matches!(c.sink, SinkConfig::LocalLog { .. }));
    assert_eq!(c.limits.max_batch_events, 2500);
}

#[test]
fn local_log_publish_timeout_is_bounded() {
    let c = Config::load(None, &Overrides::default()).unwrap();
    assert!(matches!(c.sink, SinkConfig::LocalLog { publish_timeout_ms: 5000, .. }));
    for bad in [0, MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS + 1] {
        let text = format!("[sink.local_log]\npublish_timeout_ms = {bad}\n");
        let err = Config::from_toml("f.toml", &text, &Overrides::default()).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("sink.local_log.publish_timeout_ms")), "{err:?}");
    }
}

#[test]
fn shipped_configs_are_valid() {
    // Every file in config/ must validate, not only the embedded one.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The secured-Kafka example reads secrets/ relative to where it runs: tests/binary.rs
        // checks it with and without those files.
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("kafka-sasl-ssl.toml") {
            Config::load(Some(&path), &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn every_problem_is_reported_with_the_path() {
    let text = r#"
        [server]
        listen = "nowhere"
        trusted_proxies = ["10.0.0.0/8", "bogus"]
        [topics]
        default = "bad topic"
        by_type = { purchase = "x" }
        [[sources]]
        id = "a"
        keys = [{ key = "k1" }]
        [[sources]]
        id = "a"
        keys = [{ key = "k1" }]
    "#;
    let err = Config::from_toml("f.toml", text, &Overrides::default()).unwrap_err();
    let all = err.problems.join("\n");
    assert!(err.problems.iter().all(|p| p.starts_with("f.toml: ")), "{all}");
    for needle in ["server.listen", "'bogus'", "topics.default", "'purchase'", "declared twice", "already used"] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(!all.contains("k1"), "a key leaked into a message:\n{all}");
}

#[test]
fn worker_threads_leave_a_core_to_kafka_unless_set() {
    let source = "[[sources]]\nid = \"s\"\nkeys = [{ key = \"k\" }]\n";
    let load = |text: &str| Config::from_toml("f.toml", &format!("{text}{source}"), &Overrides::default());
    let kafka = "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"127.0.0.1:9092\"\n";
    let k = load(kafka).unwrap();
    assert_eq!((k.worker_threads(1), k.worker_threads(2), k.worker_threads(8)), (1, 1, 7));
    let local = load("").unwrap();
    assert_eq!((local.worker_threads(1), local.worker_threads(2), local.worker_threads(8)), (1, 2, 8));
    let set = load(&format!("[server]\nworker_threads = 3\n{kafka}")).unwrap();
    assert_eq!(set.worker_threads(2), 3);
    let err = load("[server]\nworker_threads = 0\n").unwrap_err();
    assert!(err.problems.iter().any(|p| p.contains("server.worker_threads")), "{:?}", err.problems);
}

#[test]
fn connection_timeouts_have_defaults_and_must_be_positive() {
    let source = "[[sources]]\nid = \"s\"\nkeys = [{ key = \"k\" }]\n";
    let load = |text: &str| Config::from_toml("f.toml", &format!("{text}{source}"), &Overrides::default());
    let d = load("").unwrap().server;
    assert_eq!(
        (d.header_read_timeout_ms, d.idle_timeout_ms, d.http2_keep_alive_interval_ms, d.http2_keep_alive_timeout_ms),
        (10_000, 60_000, 20_000, 10_000)
    );
    let zero = "[server]\nheader_read_timeout_ms = 0\nidle_timeout_ms = 0\nhttp2_keep_alive_interval_ms = 0\nhttp2_keep_alive_timeout_ms = 0\n";
    let err = load(zero).unwrap_err();
    for key in
        ["header_read_timeout_ms", "idle_timeout_ms", "http2_keep_alive_interval_ms", "http2_keep_alive_timeout_ms"]
    {
        assert!(
            err.problems.iter().any(|p| p.contains(&format!("server.{key} must be at least 1"))),
            "{key}: {:?}",
            err.problems
        );
    }
}

#[test]
fn unknown_fields_are_rejected() {
    let err = Config::from_toml("f.toml", "[server]\nlisten_addr = \"x\"\n", &Overrides::default()).unwrap_err();
    assert!(err.problems[0].contains("listen_addr"), "{:?}", err.problems);
}

#[test]
fn overrides_win_and_templates_expand() {
    let text = r#"
        [topics]
        default = "events"
        by_type = { identify = "identities" }
        [[sources]]
        id = "web"
        keys = [{ key = "k" }]
        [[sources]]
        id = "srv"
        topic = "srv.{type}"
        keys = [{ key = "k2" }]
    "#;
    let o = Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some("/tmp/x".into()),
        kafka_brokers: None,
        contracts_dir: None,
    };
    let c = Config::from_toml("f", text, &o).unwrap();
    assert_eq!(c.server.listen.port(), 0);
    assert!(matches!(&c.sink, SinkConfig::LocalLog { data_dir, .. } if data_dir == Path::new("/tmp/x")));
    assert_eq!(&*c.sources[0].topics[EventType::Identify.index()], "identities");
    assert_eq!(&*c.sources[0].topics[EventType::Track.index()], "events");
    assert_eq!(&*c.sources[1].topics[EventType::Page.index()], "srv.page");
}

const KAFKA_SOURCE: &str = "[[sources]]\nid = \"s\"\nkeys = [{ key = \"k\" }]\n";

fn kafka(text: &str) -> Result<KafkaConfig, ConfigError> {
    let c = Config::from_toml(
        "f.toml",
        &format!("[sink]\nkind = \"kafka\"\n{text}\n{KAFKA_SOURCE}"),
        &Overrides::default(),
    )?;
    match c.sink {
        SinkConfig::Kafka(k) => Ok(k),
        other => panic!("not kafka: {other:?}"),
    }
}

#[test]
fn kafka_defaults_and_pass_through() {
    let k = kafka(
        "[kafka]\nbrokers = \"b1:9092,b2:9092\"\n[kafka.producer]\nlinger.ms = 20\n\"compression.codec\" = \"snappy\"\n\"socket.keepalive.enable\" = true\n",
    )
    .unwrap();
    assert_eq!(k.message_timeout_ms, 10_000);
    assert_eq!(k.max_message_bytes, 1_000_000);
    assert_eq!(k.record_key, RecordKey::UserOrAnonymousId);
    let p = |n: &str| k.properties.get(n).map(String::as_str);
    assert_eq!(p("bootstrap.servers"), Some("b1:9092,b2:9092"));
    assert_eq!(p("acks"), Some("all"));
    assert_eq!(p("enable.idempotence"), Some("true"));
    assert_eq!(p("message.timeout.ms"), Some("10000"));
    assert_eq!(p("message.max.bytes"), Some("1000000"));
    // An unquoted dotted key and an alias both replace our default, in one spelling.
    assert_eq!(p("linger.ms"), Some("20"));
    assert_eq!(p("compression.type"), Some("snappy"));
    assert_eq!(p("compression.codec"), None);
    assert_eq!(p("socket.keepalive.enable"), Some("true"));
    assert_eq!(p("batch.size"), Some("262144"));
    // Our batch.size yields to a smaller message limit; an operator's value is kept.
    let small = kafka("[kafka]\nbrokers = \"b:9092\"\nmax_message_bytes = 100000\n").unwrap();
    assert_eq!(small.properties.get("batch.size").map(String::as_str), Some("100000"));
    let set = kafka("[kafka]\nbrokers = \"b:9092\"\n[kafka.producer]\n\"batch.size\" = 65536\n").unwrap();
    assert_eq!(set.properties.get("batch.size").map(String::as_str), Some("65536"));
}

#[test]
fn kafka_problems_are_all_reported() {
    let err = kafka(
        "[kafka]\nmessage_timeout_ms = 60000\nmax_message_bytes = 10\nrecord_key = \"userId\"\n[kafka.producer]\n\"lingr.ms\" = 5\n\"acks\" = \"maybe\"\n\"delivery.timeout.ms\" = 1\n\"bootstrap.servers\" = \"x:1\"\n\"linger.ms\" = 1\n\"queue.buffering.max.ms\" = 2\n\"sasl.password\" = [1]\n",
    )
    .unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "kafka.brokers is required",
        "kafka.message_timeout_ms: 60000",
        "kafka.max_message_bytes: 10",
        "kafka.record_key: 'userId'",
        "kafka.producer.lingr.ms",
        "kafka.producer.acks",
        "kafka.producer.delivery.timeout.ms: set kafka.message_timeout_ms instead",
        "kafka.producer.bootstrap.servers: set kafka.brokers instead",
        "are the same librdkafka property",
        "kafka.producer.sasl.password: must be a string",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(err.problems.iter().all(|p| p.starts_with("f.toml: ")), "{all}");
}

#[test]
fn kafka_secrets_are_redacted() {
    let sasl = "[kafka]\nbrokers = \"b:1\"\nsecurity_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"api-key-7\"\npassword = \"hunter2\"\n";
    let k = kafka(sasl).unwrap();
    assert_eq!(k.properties["sasl.password"], "hunter2");
    assert_eq!(k.properties["sasl.username"], "api-key-7");
    assert!(!format!("{k:?}").contains("hunter2") && !format!("{k:?}").contains("api-key-7"));
    let c = Config::from_toml("f", &format!("[sink]\nkind = \"kafka\"\n{sasl}{KAFKA_SOURCE}"), &Overrides::default())
        .unwrap();
    assert!(!c.summary().contains("hunter2"), "{}", c.summary());
    assert!(!format!("{c:?}").contains("hunter2"));
    // The raw shapes too: a `{:?}` of the file as read shows no credential.
    let raw: RawConfig = toml::from_str(sasl).unwrap();
    assert!(!format!("{raw:?}").contains("hunter2"), "{raw:?}");
}

#[test]
fn debug_output_redacts_keys() {
    let c = Config::load(None, &Overrides::default()).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(&c.sources[0].keys[0].key));
    assert!(!c.summary().contains(&c.sources[0].keys[0].key));
}

mod security {
    use super::*;
    use std::io::Write;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn pem(dir: &std::path::Path, name: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, PEM).unwrap();
        path.display().to_string()
    }

    #[test]
    fn sasl_ssl_with_mtls_and_credentials_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (pem(dir.path(), "ca.pem"), pem(dir.path(), "client.pem"), pem(dir.path(), "client.key"));
        let secret = dir.path().join("password");
        std::fs::File::create(&secret).unwrap().write_all(b"s3cr3t-from-file\n").unwrap();
        std::env::set_var("GATEWAY_TEST_SASL_USER_1", "user-from-env");
        let k = kafka(&format!(
            "[kafka]\nbrokers = \"b:9093\"\nsecurity_protocol = \"sasl_ssl\"\n[kafka.tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n[kafka.sasl]\nmechanism = \"scram-sha-512\"\nusername_env = \"GATEWAY_TEST_SASL_USER_1\"\npassword_file = \"{}\"\n",
            secret.display()
        ))
        .unwrap();
        let p = |n: &str| k.properties.get(n).map(String::as_str);
        assert_eq!(p("security.protocol"), Some("sasl_ssl"));
        assert_eq!(p("ssl.ca.location"), Some(ca.as_str()));
        assert_eq!(p("ssl.certificate.location"), Some(cert.as_str()));
        assert_eq!(p("ssl.key.location"), Some(key.as_str()));
        assert_eq!(p("ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(p("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(p("sasl.username"), Some("user-from-env"));
        // The file's trailing newline is not part of the secret.
        assert_eq!(p("sasl.password"), Some("s3cr3t-from-file"));
        let shown = format!("{k:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("user-from-env"), "{shown}");
    }

    #[test]
    fn ssl_without_a_ca_file_probes_the_system_trust_store() {
        let k = kafka("[kafka]\nbrokers = \"b:9093\"\nsecurity_protocol = \"ssl\"\n").unwrap();
        assert_eq!(k.properties.get("ssl.ca.location").map(String::as_str), Some("probe"));
        assert_eq!(k.properties.get("security.protocol").map(String::as_str), Some("ssl"));
        assert!(!k.properties.contains_key("sasl.mechanism"));
        let plain = kafka("[kafka]\nbrokers = \"b:9092\"\n").unwrap();
        assert_eq!(plain.properties.get("security.protocol").map(String::as_str), Some("plaintext"));
        assert!(!plain.properties.contains_key("ssl.ca.location"));
        // verify_hostname = false turns the name check off (a broker reached by IP).
        let k =
            kafka("[kafka]\nbrokers = \"b:9093\"\nsecurity_protocol = \"ssl\"\n[kafka.tls]\nverify_hostname = false\n")
                .unwrap();
        assert_eq!(k.properties.get("ssl.endpoint.identification.algorithm").map(String::as_str), Some("none"));
    }

    #[test]
    fn security_problems_name_the_file_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let missing = dir.path().join("nope/ca.pem");
        let cert = pem(dir.path(), "client.pem");
        std::env::remove_var("GATEWAY_TEST_SASL_UNSET_2");
        let cases: &[(String, &[&str])] = &[
            (
                format!("security_protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"\n", missing.display()),
                &["kafka.tls.ca_file: cannot read", "nope/ca.pem", "No such file"],
            ),
            (
                format!("security_protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"\n", not_pem.display()),
                &["kafka.tls.ca_file:", "ca.txt' holds no PEM block"],
            ),
            (
                format!("security_protocol = \"ssl\"\n[kafka.tls]\ncert_file = \"{cert}\"\n"),
                &["kafka.tls.cert_file is set without kafka.tls.key_file"],
            ),
            ("security_protocol = \"tls\"\n".into(), &["kafka.security_protocol: 'tls' is not one of"]),
            ("security_protocol = \"sasl_ssl\"\n".into(), &["needs [kafka.sasl]"]),
            (
                "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"topsecret\"\n".into(),
                &["kafka.sasl is set but kafka.security_protocol is 'plaintext'"],
            ),
            (
                "[kafka.tls]\nverify_hostname = true\n".into(),
                &["kafka.tls is set but kafka.security_protocol is 'plaintext'"],
            ),
            (
                "security_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"GSSAPI\"\nusername = \"u\"\npassword = \"topsecret\"\npassword_env = \"X\"\n".into(),
                &["kafka.sasl.mechanism: 'GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512", "give one of them"],
            ),
            (
                "security_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername_env = \"GATEWAY_TEST_SASL_UNSET_2\"\n".into(),
                &["the environment variable 'GATEWAY_TEST_SASL_UNSET_2' is not set", "kafka.sasl.password is required"],
            ),
            (
                format!(
                    "security_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_file = \"{}\"\n",
                    missing.display()
                ),
                &["kafka.sasl.password_file: cannot read", "nope/ca.pem"],
            ),
            (
                "[kafka.producer]\n\"security.protocol\" = \"ssl\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.password\" = \"topsecret\"\n".into(),
                &[
                    "kafka.producer.security.protocol: set kafka.security_protocol instead",
                    "kafka.producer.sasl.mechanisms: set kafka.sasl.mechanism instead",
                    "kafka.producer.sasl.password: set kafka.sasl.password",
                ],
            ),
        ];
        for (text, needles) in cases {
            let err = kafka(&format!("[kafka]\nbrokers = \"b:1\"\n{text}")).unwrap_err();
            let all = err.problems.join("\n");
            for needle in *needles {
                assert!(all.contains(needle), "missing {needle:?} for\n{text}\nin:\n{all}");
            }
            assert!(!all.contains("topsecret"), "{all}");
        }
    }

    #[test]
    fn every_codec_librdkafka_has_is_accepted() {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let k =
                kafka(&format!("[kafka]\nbrokers = \"b:1\"\n[kafka.producer]\n\"compression.type\" = \"{codec}\"\n"))
                    .unwrap_or_else(|e| panic!("{codec}: {e}"));
            assert_eq!(k.properties["compression.type"], codec);
        }
        let err =
            kafka("[kafka]\nbrokers = \"b:1\"\n[kafka.producer]\n\"compression.type\" = \"brotli\"\n").unwrap_err();
        assert!(err.problems.join("\n").contains("kafka.producer.compression.type"), "{err}");
    }
}
