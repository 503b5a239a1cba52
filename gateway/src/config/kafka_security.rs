//! `kafka.security_protocol`, `[kafka.tls]` and `[kafka.sasl]` into librdkafka's security
//! properties (`security.protocol`, `ssl.*`, `sasl.*`).
//!
//! Owns: which combinations are valid, reading the credentials (from the file, an environment
//! variable or a file) and checking that every PEM file librdkafka will read at start is there,
//! readable and PEM, so that `gateway --check` names a missing file by its path before any
//! producer starts. Must not: put a credential into a message (only the names of variables and
//! paths appear), or connect to a broker.

use std::path::{Path, PathBuf};

use super::{RawKafka, RawKafkaSasl, RawKafkaTls, Secret};

/// The librdkafka properties that have their own key here; `[kafka.producer]` may not set them
/// (two places for one setting would race), and the hint says which key to use.
pub(super) const SECURITY_PROPERTIES: &[(&str, &str)] = &[
    ("security.protocol", "set kafka.security_protocol instead"),
    ("ssl.ca.location", "set kafka.tls.ca_file instead"),
    ("ssl.certificate.location", "set kafka.tls.cert_file instead"),
    ("ssl.key.location", "set kafka.tls.key_file instead"),
    ("ssl.key.password", "set kafka.tls.key_password, key_password_env or key_password_file instead"),
    ("ssl.endpoint.identification.algorithm", "set kafka.tls.verify_hostname instead"),
    ("sasl.mechanism", "set kafka.sasl.mechanism instead"),
    ("sasl.username", "set kafka.sasl.username, username_env or username_file instead"),
    ("sasl.password", "set kafka.sasl.password, password_env or password_file instead"),
];

/// The SASL mechanisms librdkafka has in this build without Kerberos (Cyrus SASL) or an
/// OAuth token endpoint client (libcurl).
pub(super) const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl RawKafka {
    /// The security properties, checked; every problem goes to `bad`.
    pub(super) fn security_properties(&self, bad: &mut dyn FnMut(String)) -> Vec<(&'static str, String)> {
        let protocol = self.security_protocol.as_str();
        let (tls_on, sasl_on) = match protocol {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => {
                bad(format!(
                    "kafka.security_protocol: '{other}' is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"
                ));
                return Vec::new();
            }
        };
        let mut out = vec![("security.protocol", protocol.to_string())];
        match (&self.tls, tls_on) {
            (Some(_), false) => bad(format!(
                "kafka.tls is set but kafka.security_protocol is '{protocol}': use ssl or sasl_ssl, or remove [kafka.tls]"
            )),
            (Some(tls), true) => tls.properties(bad, &mut out),
            // TLS with the system's trust store (managed Kafka with public certificates).
            (None, true) => RawKafkaTls::system_trust().properties(bad, &mut out),
            (None, false) => {}
        }
        match (&self.sasl, sasl_on) {
            (Some(_), false) => bad(format!(
                "kafka.sasl is set but kafka.security_protocol is '{protocol}': use sasl_ssl or sasl_plaintext, or \
                 remove [kafka.sasl]"
            )),
            (None, true) => bad(format!(
                "kafka.security_protocol = '{protocol}' needs [kafka.sasl] with a mechanism, a username and a password"
            )),
            (Some(sasl), true) => sasl.properties(bad, &mut out),
            (None, false) => {}
        }
        out
    }
}

impl RawKafkaTls {
    fn system_trust() -> RawKafkaTls {
        RawKafkaTls {
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: None,
            key_password_env: None,
            key_password_file: None,
            verify_hostname: true,
        }
    }

    fn properties(&self, bad: &mut dyn FnMut(String), out: &mut Vec<(&'static str, String)>) {
        let ca = match &self.ca_file {
            Some(path) => pem_file("kafka.tls.ca_file", path, bad),
            // librdkafka's OpenSSL is linked in, so its compiled-in CA path is not the
            // distribution's: "probe" looks in the standard places (/etc/ssl/certs, …).
            None => "probe".to_string(),
        };
        out.push(("ssl.ca.location", ca));
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                out.push(("ssl.certificate.location", pem_file("kafka.tls.cert_file", cert, bad)));
                out.push(("ssl.key.location", pem_file("kafka.tls.key_file", key, bad)));
            }
            (None, None) => {}
            (Some(_), None) => {
                bad("kafka.tls.cert_file is set without kafka.tls.key_file: mutual TLS needs both".into())
            }
            (None, Some(_)) => {
                bad("kafka.tls.key_file is set without kafka.tls.cert_file: mutual TLS needs both".into())
            }
        }
        let password = credential(
            "kafka.tls.key_password",
            (&self.key_password, &self.key_password_env, &self.key_password_file),
            bad,
        );
        if let Some(password) = password {
            if self.key_file.is_none() {
                bad("kafka.tls.key_password is set without kafka.tls.key_file".into());
            }
            out.push(("ssl.key.password", password));
        }
        let algorithm = if self.verify_hostname { "https" } else { "none" };
        out.push(("ssl.endpoint.identification.algorithm", algorithm.to_string()));
    }
}

impl RawKafkaSasl {
    fn properties(&self, bad: &mut dyn FnMut(String), out: &mut Vec<(&'static str, String)>) {
        let mechanism = self.mechanism.to_ascii_uppercase();
        if !MECHANISMS.contains(&mechanism.as_str()) {
            bad(format!(
                "kafka.sasl.mechanism: '{}' is not one of {} (GSSAPI and OAUTHBEARER are not in this build)",
                self.mechanism,
                MECHANISMS.join(", ")
            ));
        }
        out.push(("sasl.mechanism", mechanism));
        for (name, given) in [
            ("username", (&self.username, &self.username_env, &self.username_file)),
            ("password", (&self.password, &self.password_env, &self.password_file)),
        ] {
            let key = format!("kafka.sasl.{name}");
            match credential(&key, given, bad) {
                Some(value) => out.push((if name == "username" { "sasl.username" } else { "sasl.password" }, value)),
                None => bad(format!("{key} is required: set {name}, {name}_env or {name}_file")),
            }
        }
    }
}

/// A credential from exactly one of: the file itself, an environment variable, a file. `None`
/// when none is given or it cannot be read (then `bad` says why, naming the variable or path
/// but never the value).
fn credential(
    key: &str,
    (inline, env, file): (&Option<Secret>, &Option<String>, &Option<PathBuf>),
    bad: &mut dyn FnMut(String),
) -> Option<String> {
    let given = usize::from(inline.is_some()) + usize::from(env.is_some()) + usize::from(file.is_some());
    if given > 1 {
        bad(format!("{key}, {key}_env and {key}_file: give one of them, not {given}"));
        return None;
    }
    let value = if let Some(Secret(v)) = inline {
        v.clone()
    } else if let Some(name) = env {
        match std::env::var(name) {
            Ok(v) => v,
            Err(std::env::VarError::NotPresent) => {
                bad(format!("{key}_env: the environment variable '{name}' is not set"));
                return None;
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                bad(format!("{key}_env: the environment variable '{name}' is not UTF-8"));
                return None;
            }
        }
    } else if let Some(path) = file {
        match std::fs::read_to_string(path) {
            // A secret file written with `echo` ends in a newline that is not part of it.
            Ok(v) => v.trim_end_matches(['\n', '\r']).to_string(),
            Err(e) => {
                bad(format!("{key}_file: cannot read '{}': {e}", path.display()));
                return None;
            }
        }
    } else {
        return None;
    };
    if value.is_empty() {
        bad(format!("{key}: is empty"));
        return None;
    }
    Some(value)
}

/// Checks a PEM file librdkafka will read, and returns its path as librdkafka takes it.
fn pem_file(key: &str, path: &Path, bad: &mut dyn FnMut(String)) -> String {
    match std::fs::read(path) {
        Err(e) => bad(format!("{key}: cannot read '{}': {e}", path.display())),
        // The contents never go into a message: a key file is a secret.
        Ok(bytes) if !bytes.windows(11).any(|w| w == b"-----BEGIN ") => {
            bad(format!("{key}: '{}' holds no PEM block (-----BEGIN …); librdkafka reads PEM files", path.display()))
        }
        Ok(_) => {}
    }
    path.display().to_string()
}
