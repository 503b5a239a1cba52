//! Raw → validated: [`RawConfig::validate`] checks the whole file and builds [`Config`] with
//! each stage's own settings (sources and keys, limits, sink, dedup, contracts policies),
//! gathering every problem (one line each, prefixed with the file path) before failing.
//!
//! Owns: the checks and their messages. Must not: read files, open sockets or create
//! directories — startup does that with the validated [`Config`].

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use super::*;
use crate::access::client_ip::ClientIpRule;

impl RawConfig {
    /// Validates everything, collecting every problem before failing.
    pub fn validate(self, name: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |msg: String| problems.push(format!("{name}: {msg}"));

        let listen = match self.server.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                bad(format!("server.listen: '{}' is not an address like 127.0.0.1:8080", self.server.listen));
                None
            }
        };
        let admin_listen = match &self.server.admin_listen {
            None => None,
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    bad(format!("server.admin_listen: '{a}' is not an address like 127.0.0.1:9090"));
                    None
                }
            },
        };
        let mut trusted_proxies = Vec::new();
        for p in &self.server.trusted_proxies {
            if let Ok(net) = p.parse::<IpNet>() {
                trusted_proxies.push(net);
            } else if let Ok(ip) = p.parse::<IpAddr>() {
                trusted_proxies.push(IpNet::from(ip));
            } else {
                bad(format!("server.trusted_proxies: '{p}' is neither an IP nor a CIDR"));
            }
        }
        if self.server.worker_threads == Some(0) {
            bad("server.worker_threads must be at least 1 (leave it out for the default)".into());
        }
        if self.server.max_connections == 0 {
            bad("server.max_connections must be at least 1".into());
        }
        for (name, ms) in [
            ("header_read_timeout_ms", self.server.header_read_timeout_ms),
            ("idle_timeout_ms", self.server.idle_timeout_ms),
            ("http2_keep_alive_interval_ms", self.server.http2_keep_alive_interval_ms),
            ("http2_keep_alive_timeout_ms", self.server.http2_keep_alive_timeout_ms),
        ] {
            if ms == 0 {
                bad(format!("server.{name} must be at least 1"));
            }
        }
        if self.server.max_header_bytes < 8192 {
            bad("server.max_header_bytes must be at least 8192 (hyper's minimum)".into());
        }
        let l = &self.limits;
        if l.max_request_bytes == 0 {
            bad("limits.max_request_bytes must be at least 1".into());
        }
        if l.max_event_bytes == 0 || l.max_event_bytes > l.max_request_bytes {
            bad("limits.max_event_bytes must be between 1 and limits.max_request_bytes".into());
        }
        if l.max_batch_events == 0 {
            bad("limits.max_batch_events must be at least 1".into());
        }

        let sink = match self.sink.kind.as_str() {
            "local_log" => {
                if self.sink.local_log.segment_max_bytes < 1024 {
                    bad("sink.local_log.segment_max_bytes must be at least 1024".into());
                }
                if self.sink.local_log.data_dir.as_os_str().is_empty() {
                    bad("sink.local_log.data_dir must not be empty".into());
                }
                let publish_timeout_ms = self.sink.local_log.publish_timeout_ms;
                if !(1..=MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS).contains(&publish_timeout_ms) {
                    bad(format!(
                        "sink.local_log.publish_timeout_ms: {publish_timeout_ms} is outside \
                         1..={MAX_LOCAL_LOG_PUBLISH_TIMEOUT_MS}; a request waits this long for the disk at most"
                    ));
                }
                SinkConfig::LocalLog {
                    data_dir: self.sink.local_log.data_dir.clone(),
                    segment_max_bytes: self.sink.local_log.segment_max_bytes,
                    fsync: self.sink.local_log.fsync,
                    publish_timeout_ms,
                }
            }
            "kafka" => SinkConfig::Kafka(self.kafka.validate(&mut bad)),
            "memory" => SinkConfig::Memory,
            other => {
                bad(format!("sink.kind: '{other}' is not one of local_log, kafka, memory"));
                SinkConfig::Memory
            }
        };

        if !is_valid_topic(&self.topics.default) {
            bad(format!(
                "topics.default: '{}' is not a valid topic name (letters, digits, '.', '_', '-')",
                self.topics.default
            ));
        }
        let mut by_type: [Option<String>; EventType::COUNT] = Default::default();
        for (ty, topic) in &self.topics.by_type {
            match EventType::parse(ty) {
                Some(t) => {
                    if !is_valid_topic(topic) {
                        bad(format!("topics.by_type.{ty}: '{topic}' is not a valid topic name"));
                    }
                    by_type[t.index()] = Some(topic.clone());
                }
                None => bad(format!(
                    "topics.by_type: '{ty}' is not a call type (track, identify, page, screen, group, alias)"
                )),
            }
        }
        let topics = Topics { default: self.topics.default.clone(), by_type };

        match self.log.format.as_str() {
            "auto" | "json" | "text" => {}
            other => bad(format!("log.format: '{other}' is not one of auto, json, text")),
        }

        if self.sources.is_empty() {
            bad("no [[sources]]: declare at least one source with a write key".into());
        }
        let mut ids = HashSet::new();
        let mut keys = HashSet::new();
        let mut sources = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.id.is_empty() || !s.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                bad(format!("sources[{i}].id: '{}' must be non-empty letters, digits, '.', '_', '-'", s.id));
            }
            if !ids.insert(s.id.clone()) {
                bad(format!("sources[{i}].id: '{}' is declared twice", s.id));
            }
            if s.keys.is_empty() {
                bad(format!("sources[{i}] ('{}'): no keys; add a [[sources.keys]] with a key", s.id));
            }
            for (k, key) in s.keys.iter().enumerate() {
                if key.key.trim().is_empty() || key.key.trim() != key.key {
                    bad(format!("sources[{i}].keys[{k}]: key must be non-empty without surrounding spaces"));
                } else if !keys.insert(key.key.clone()) {
                    // Never print the key itself: say where the copy is.
                    bad(format!("sources[{i}].keys[{k}]: this key is already used by another key entry"));
                }
            }
            let topic_of = |t: EventType| -> String {
                match &s.topic {
                    Some(tpl) => tpl.replace("{type}", t.as_str()),
                    None => topics.by_type[t.index()].clone().unwrap_or_else(|| topics.default.clone()),
                }
            };
            if let Some(tpl) = &s.topic {
                for t in EventType::ALL {
                    let topic = topic_of(t);
                    if !is_valid_topic(&topic) {
                        bad(format!("sources[{i}].topic: '{tpl}' gives '{topic}', not a valid topic name"));
                        break;
                    }
                }
            }
            let at = format!("sources[{i}]");
            let source_types = match &s.allowed_types {
                Some(names) => TypeSet::parse(names, &format!("{at}.allowed_types"), &mut bad),
                None => TypeSet::ALL,
            };
            let parse_origins = |list: &Option<Vec<String>>, at: &str, bad: &mut dyn FnMut(String)| {
                list.as_ref().map(|l| {
                    l.iter()
                        .filter_map(|o| OriginPattern::parse(o).map_err(|e| bad(format!("{at}: {e}"))).ok())
                        .collect::<Vec<_>>()
                })
            };
            let source_origins = parse_origins(&s.allowed_origins, &format!("{at}.allowed_origins"), &mut bad);
            s.rate_limits.validate(&format!("{at}.rate_limits"), &mut bad);
            s.consent.validate(&format!("{at}.consent"), &mut bad);
            if s.monthly_event_quota == Some(0) {
                bad(format!("{at}.monthly_event_quota must be at least 1; remove it for no quota"));
            }
            if s.dedup && s.dedup_ttl_s == 0 {
                bad(format!("{at}.dedup_ttl_s must be at least 1 (or set dedup = false)"));
            }
            let mut labels = HashSet::new();
            let mut write_keys = Vec::new();
            for (k, key) in s.keys.iter().enumerate() {
                let kat = format!("{at}.keys[{k}]");
                let label = if key.label.is_empty() { format!("key{k}") } else { key.label.clone() };
                if !labels.insert(label.clone()) {
                    bad(format!(
                        "{kat}.label: '{label}' is used twice in this source (labels name keys in logs and limits)"
                    ));
                }
                key.rate_limits.validate(&format!("{kat}.rate_limits"), &mut bad);
                let types = match &key.allowed_types {
                    Some(names) => {
                        TypeSet::parse(names, &format!("{kat}.allowed_types"), &mut bad).intersect(source_types)
                    }
                    None => source_types,
                };
                let origins = match &key.allowed_origins {
                    Some(_) => parse_origins(&key.allowed_origins, &format!("{kat}.allowed_origins"), &mut bad),
                    None => source_origins.clone(),
                };
                write_keys.push(WriteKey {
                    key: key.key.clone(),
                    id: Arc::from(format!("{}/{label}", s.id)),
                    label,
                    kind: key.kind,
                    revoked: key.revoked,
                    allowed_types: types,
                    allowed_origins: origins,
                    rate_limits: key.rate_limits.inherit(&s.rate_limits),
                });
            }
            sources.push(Arc::new(Source {
                id: Arc::from(s.id.as_str()),
                name: if s.name.is_empty() { s.id.clone() } else { s.name.clone() },
                topics: EventType::ALL.map(|t| Arc::<str>::from(topic_of(t))),
                monthly_event_quota: s.monthly_event_quota,
                consent: s.consent.clone(),
                dedup_ttl: s.dedup.then(|| std::time::Duration::from_secs(s.dedup_ttl_s)),
                rate_limits: s.rate_limits,
                contracts: s.contracts.as_ref().map(|c| {
                    let d = crate::validate::Policies::default();
                    let policies = crate::validate::Policies {
                        unplanned_events: c.unplanned_events.unwrap_or(d.unplanned_events),
                        unplanned_properties: c.unplanned_properties.unwrap_or(d.unplanned_properties),
                        violations: c.violations.unwrap_or(d.violations),
                    };
                    (c.plan.clone(), policies)
                }),
                keys: write_keys,
            }));
        }

        if let Some(ip) = &self.rate_limits.per_ip {
            ip.validate("rate_limits.per_ip", &mut bad);
        }
        if self.usage.persist_interval_ms == 0 {
            bad("usage.persist_interval_ms must be at least 1".into());
        }
        let data_dir = self.sink.local_log.data_dir.clone();
        let usage_dir = self.usage.data_dir.clone().unwrap_or_else(|| data_dir.clone());
        let dedup_cache = crate::dedup::DedupConfig {
            capacity: self.dedup.capacity,
            wait_timeout: std::time::Duration::from_millis(self.dedup.wait_timeout_ms),
            ..crate::dedup::DedupConfig::default()
        };
        for p in dedup_cache.problems() {
            bad(format!("dedup: {p}"));
        }
        if self.dedup.sweep_interval_ms == 0 {
            bad("dedup.sweep_interval_ms must be at least 1".into());
        }
        let snapshot_path = match &self.dedup.snapshot_path {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(data_dir.join("dedup.snapshot")),
        };
        let dedup =
            DedupSettings { cache: dedup_cache, sweep_interval_ms: self.dedup.sweep_interval_ms, snapshot_path };

        let i = &self.import;
        for (key, value) in [("max_running_jobs", i.max_running_jobs), ("max_queued_jobs", i.max_queued_jobs)] {
            if value == 0 {
                bad(format!("import.{key} must be at least 1"));
            }
        }
        if !(1..=10_000).contains(&i.chunk_events) {
            bad(format!("import.chunk_events: {} is outside 1..=10000", i.chunk_events));
        }
        if i.upload_timeout_ms == 0 {
            bad("import.upload_timeout_ms must be at least 1".into());
        }
        let jobs = crate::import::jobs::JobSettings {
            dir: i.jobs_dir.clone(),
            max_running: i.max_running_jobs,
            max_queued: i.max_queued_jobs,
            retention: std::time::Duration::from_secs(i.retention_s),
            chunk_events: i.chunk_events,
            upload_timeout: std::time::Duration::from_millis(i.upload_timeout_ms),
        };

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let Some(listen) = listen else {
            return Err(ConfigError { problems: vec![format!("{name}: server.listen is invalid")] });
        };
        Ok(Config {
            server: ServerConfig {
                listen,
                client_ip: ClientIpRule { trusted: trusted_proxies, header: self.server.forwarded_header },
                max_connections: self.server.max_connections,
                header_read_timeout_ms: self.server.header_read_timeout_ms,
                idle_timeout_ms: self.server.idle_timeout_ms,
                http2_keep_alive_interval_ms: self.server.http2_keep_alive_interval_ms,
                http2_keep_alive_timeout_ms: self.server.http2_keep_alive_timeout_ms,
                max_header_bytes: self.server.max_header_bytes,
                body_read_timeout_ms: self.server.body_read_timeout_ms,
                shutdown_timeout_ms: self.server.shutdown_timeout_ms,
                cors_max_age_s: self.server.cors_max_age_s,
                admin_listen,
                worker_threads: self.server.worker_threads,
            },
            limits: Limits {
                max_request_bytes: self.limits.max_request_bytes,
                max_event_bytes: self.limits.max_event_bytes,
                max_batch_events: self.limits.max_batch_events,
            },
            sink,
            topics,
            log: self.log,
            per_ip_limit: self.rate_limits.per_ip,
            usage_dir,
            usage_persist_interval_ms: self.usage.persist_interval_ms,
            dedup,
            jobs,
            contracts_dir: self.contracts.dir.clone(),
            violations_topic: Arc::from(self.contracts.violations_topic.as_str()),
            sources,
        })
    }
}
