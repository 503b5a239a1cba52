//! Access: what a resolved write key may do — browser origins, call types, request rate,
//! monthly quota — and the usage counts behind `GET /v1/usage`.
//!
//! Owns: the per-key rules and the long-lived state they need (rate-limiter buckets, usage and
//! quota counts, persisted under the data directory). The state survives config reloads; the
//! rules come from the current config on every request.
//! Must not: identify keys (auth does) or look inside events beyond their call type.
//!
//! Layout: `keys` holds the validated key and source types (config builds them), `auth` finds
//! the key of a request, `ratelimit` and `quota` the windows and monthly counts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::EventType;
pub mod auth;
pub mod client_ip;
pub mod keys;
pub mod quota;
pub mod ratelimit;

pub use keys::{KeyKind, OriginPattern, Source, TypeSet, WriteKey};

use quota::Quotas;
use ratelimit::{Decision, IpLimit, RateLimitError, RateLimiter};

/// Why a key may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("origin '{0}' is not allowed for this write key")]
    OriginNotAllowed(String),
    #[error("this endpoint needs a secret key; publishable keys may only send events")]
    SecretKeyRequired,
    #[error(transparent)]
    RateLimited(#[from] RateLimitError),
    #[error("the source's monthly event quota is used up")]
    QuotaExceeded,
}

impl AccessError {
    /// Every code [`AccessError::code`] returns (`rate_limited` is [`RateLimitError::CODES`]).
    pub const CODES: &'static [&'static str] =
        &["origin_not_allowed", "secret_key_required", "rate_limited", "quota_exceeded"];

    pub fn code(&self) -> &'static str {
        match self {
            AccessError::OriginNotAllowed(_) => "origin_not_allowed",
            AccessError::SecretKeyRequired => "secret_key_required",
            AccessError::RateLimited(e) => e.code(),
            AccessError::QuotaExceeded => "quota_exceeded",
        }
    }

    /// One value of every variant, for the tests that hold `code` against [`AccessError::CODES`].
    #[cfg(test)]
    pub(crate) fn samples() -> Vec<AccessError> {
        use AccessError::*;
        let mut all = vec![OriginNotAllowed("https://x.example".into()), SecretKeyRequired, QuotaExceeded];
        all.extend(RateLimitError::samples().into_iter().map(RateLimited));
        // No `_` arm: a new variant does not compile until it is named here (and added above).
        all.iter().for_each(|e| match e {
            OriginNotAllowed(_) | SecretKeyRequired | RateLimited(_) | QuotaExceeded => {}
        });
        all
    }
}

/// The per-key state shared by all requests.
pub struct Access {
    pub limiter: RateLimiter<Arc<str>>,
    clock: Arc<dyn ratelimit::Clock>,
    pub quotas: Quotas,
    usage_dir: PathBuf,
}

impl Access {
    /// Loads the persisted usage counts; a corrupt file stops startup (counts would silently
    /// restart from zero otherwise, and a quota with them).
    pub fn new(usage_dir: &Path, clock: Arc<dyn ratelimit::Clock>) -> Result<Access, String> {
        let quotas = Quotas::load(usage_dir).map_err(|e| format!("usage counts: {e}"))?;
        Ok(Access { limiter: RateLimiter::new(), clock, quotas, usage_dir: usage_dir.to_path_buf() })
    }

    /// Where usage counts persist.
    pub fn usage_dir(&self) -> &Path {
        &self.usage_dir
    }

    /// Writes the usage counts if they changed (blocking: call off the request path).
    pub fn persist_usage(&self) -> Result<bool, String> {
        if !self.quotas.is_dirty() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.usage_dir).map_err(|e| e.to_string())?;
        self.quotas.persist(&self.usage_dir).map(|()| true).map_err(|e| e.to_string())
    }

    /// Counts the request against the key's windows and the client IP's; never refuses by
    /// itself — the caller turns `!allowed` into 429 after adding the headers.
    pub fn check_rate(&self, key: &WriteKey, ip: IpAddr, per_ip: Option<&IpLimit>) -> Decision {
        self.limiter.check(&key.id, &key.rate_limits, ip, per_ip, self.clock.now())
    }

    /// Counts a request whose key is missing or unknown against the client IP's window only.
    pub fn check_ip(&self, ip: IpAddr, per_ip: Option<&IpLimit>) -> Decision {
        self.limiter.check_ip(ip, per_ip, self.clock.now())
    }

    /// Drops limiter state that is fully replenished.
    pub fn sweep(&self) -> ratelimit::Swept {
        self.limiter.sweep(self.clock.now())
    }
}

/// A browser request (with `Origin`) must come from an allowed origin; servers send none.
pub fn check_origin(key: &WriteKey, origin: Option<&str>) -> Result<(), AccessError> {
    match (origin, &key.allowed_origins) {
        (Some(o), Some(allowed)) if !allowed.iter().any(|p| p.matches(o)) => {
            Err(AccessError::OriginNotAllowed(o.chars().take(128).collect()))
        }
        _ => Ok(()),
    }
}

/// Whether the key may send this call type.
pub fn type_allowed(key: &WriteKey, t: EventType) -> bool {
    key.allowed_types.contains(t)
}

/// Read endpoints need a secret key.
pub fn check_secret(key: &WriteKey) -> Result<(), AccessError> {
    match key.kind {
        KeyKind::Secret => Ok(()),
        KeyKind::Publishable => Err(AccessError::SecretKeyRequired),
    }
}

/// A preflight carries no key, so it grants an origin when at least one live key of the config
/// (its `sources`) accepts it; the actual request is then checked against its own key.
pub fn preflight_allows(sources: &[Arc<Source>], origin: &str) -> bool {
    sources.iter().flat_map(|s| s.keys.iter()).filter(|k| !k.revoked).any(|k| match &k.allowed_origins {
        None => true,
        Some(list) => list.iter().any(|p: &OriginPattern| p.matches(origin)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn config(text: &str) -> Config {
        Config::from_toml("t", text, &Overrides::default()).unwrap()
    }

    #[test]
    fn origins_types_and_kinds() {
        let c = config(
            r#"
            [[sources]]
            id = "web"
            allowed_origins = ["https://shop.example.com", "https://*.example.org"]
            allowed_types = ["track", "page", "identify"]
            [[sources.keys]]
            key = "pub"
            [[sources.keys]]
            key = "srv"
            kind = "secret"
            allowed_types = ["track", "alias"]
            allowed_origins = []
            [[sources]]
            id = "open"
            keys = [{ key = "k", revoked = true }]
            "#,
        );
        let web = &c.sources[0];
        let (public, secret) = (&web.keys[0], &web.keys[1]);
        assert!(check_origin(public, Some("https://shop.example.com")).is_ok());
        assert!(check_origin(public, Some("https://SHOP.example.com/")).is_ok());
        assert!(check_origin(public, Some("https://a.b.example.org")).is_ok());
        assert_eq!(check_origin(public, Some("https://example.org")).unwrap_err().code(), "origin_not_allowed");
        assert_eq!(check_origin(public, Some("http://shop.example.com")).unwrap_err().code(), "origin_not_allowed");
        assert!(check_origin(public, None).is_ok());
        assert!(check_origin(secret, Some("https://shop.example.com")).is_err());
        // A key narrows its source's types; it cannot widen them (alias is not the source's).
        assert!(type_allowed(public, EventType::Page) && !type_allowed(public, EventType::Group));
        assert!(type_allowed(secret, EventType::Track) && !type_allowed(secret, EventType::Alias));
        assert_eq!(check_secret(public).unwrap_err().code(), "secret_key_required");
        assert!(check_secret(secret).is_ok());
        // The revoked key of "open" grants nothing in preflights.
        assert!(preflight_allows(&c.sources, "https://shop.example.com"));
        assert!(!preflight_allows(&c.sources, "https://evil.example.net"));
        assert_eq!(&*public.id, "web/key0");
    }

    #[test]
    fn codes_lists_every_code() {
        let produced: std::collections::BTreeSet<_> = AccessError::samples().iter().map(AccessError::code).collect();
        assert_eq!(produced, AccessError::CODES.iter().copied().collect());
        let produced: std::collections::BTreeSet<_> =
            RateLimitError::samples().iter().map(RateLimitError::code).collect();
        assert_eq!(produced, RateLimitError::CODES.iter().copied().collect());
    }

    #[test]
    fn bad_origins_and_types_are_config_errors() {
        let err = Config::from_toml(
            "f",
            r#"
            [[sources]]
            id = "web"
            allowed_origins = ["shop.example.com", "https://sh*p.example.com"]
            allowed_types = ["purchase"]
            keys = [{ key = "a", label = "x" }, { key = "b", label = "x" }]
            "#,
            &Overrides::default(),
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in ["'shop.example.com'", "wildcard", "'purchase'", "used twice"] {
            assert!(all.contains(needle), "{needle} missing in\n{all}");
        }
    }
}
