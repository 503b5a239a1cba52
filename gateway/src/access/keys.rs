//! Keys and sources as access checks them: [`Source`], its [`WriteKey`]s with their resolved
//! settings ([`KeyKind`], [`TypeSet`], [`OriginPattern`], rate windows). Built and validated by
//! `config` from `[[sources]]`; auth and access read them on every request.
//!
//! Owns: the validated types and their matching rules (origin patterns, type sets).
//! Must not: read the config file, log a key (the `Debug` of [`WriteKey`] redacts it), or hold
//! per-request state.

use std::sync::Arc;

use serde::Deserialize;

use super::ratelimit::KeyLimits;
use crate::consent::ConsentPolicy;
use crate::decode::EventType;

/// What a key may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Ships in browser JavaScript: ingest only.
    #[default]
    Publishable,
    /// Kept on servers: ingest and read endpoints.
    Secret,
}

/// A source: where events come from, named by its id on every published event.
#[derive(Debug)]
pub struct Source {
    pub id: Arc<str>,
    pub name: String,
    /// Resolved topic per event type for this source (templates expanded at startup).
    pub topics: [Arc<str>; EventType::COUNT],
    pub monthly_event_quota: Option<u64>,
    pub consent: ConsentPolicy,
    /// `Some(ttl)` when client messageIds are deduplicated.
    pub dedup_ttl: Option<std::time::Duration>,
    pub rate_limits: KeyLimits,
    /// Plan name and policies, when the source's events are checked against a tracking plan.
    pub contracts: Option<(String, crate::validate::Policies)>,
    pub keys: Vec<WriteKey>,
}

/// One write key of a source, with its settings resolved (inherited from the source).
pub struct WriteKey {
    pub key: String,
    pub label: String,
    /// Stable across reloads while source id and label stay: `source_id/label`. Rate-limit
    /// state is keyed by it.
    pub id: Arc<str>,
    pub kind: KeyKind,
    pub revoked: bool,
    pub allowed_types: TypeSet,
    /// `None`: any origin.
    pub allowed_origins: Option<Vec<OriginPattern>>,
    pub rate_limits: KeyLimits,
}

impl std::fmt::Debug for WriteKey {
    // Keys never reach a log line, not even through `{:?}` of the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKey")
            .field("key", &"<redacted>")
            .field("label", &self.label)
            .field("kind", &self.kind)
            .field("revoked", &self.revoked)
            .finish()
    }
}

/// A set of call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeSet(u8);

impl TypeSet {
    pub const ALL: TypeSet = TypeSet((1 << EventType::COUNT) - 1);

    pub fn contains(self, t: EventType) -> bool {
        self.0 & (1 << t.index()) != 0
    }

    pub(crate) fn parse(names: &[String], at: &str, bad: &mut dyn FnMut(String)) -> TypeSet {
        let mut set = 0u8;
        for n in names {
            match EventType::parse(n) {
                Some(t) => set |= 1 << t.index(),
                None => bad(format!("{at}: '{n}' is not a call type (track, identify, page, screen, group, alias)")),
            }
        }
        TypeSet(set)
    }

    pub(crate) fn intersect(self, other: TypeSet) -> TypeSet {
        TypeSet(self.0 & other.0)
    }

    /// The type names, for the usage API.
    pub fn names(self) -> Vec<&'static str> {
        EventType::ALL.iter().filter(|t| self.contains(**t)).map(|t| t.as_str()).collect()
    }
}

/// An allowed browser origin: exact (`https://shop.example.com`), a subdomain wildcard
/// (`https://*.example.com`, which does not match the bare domain), or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    Any,
    Exact(String),
    /// Scheme, `://`, and the domain suffix starting with '.'.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

impl OriginPattern {
    pub(crate) fn parse(p: &str) -> Result<OriginPattern, String> {
        let p = p.trim().trim_end_matches('/').to_ascii_lowercase();
        if p == "*" {
            return Ok(OriginPattern::Any);
        }
        let Some((scheme, host)) = p.split_once("://") else {
            return Err(format!("'{p}' is not an origin like https://shop.example.com"));
        };
        if scheme != "http" && scheme != "https" || host.is_empty() || host.contains('/') {
            return Err(format!("'{p}' is not an origin like https://shop.example.com"));
        }
        match host.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') && rest.len() > 1 && !rest.contains('*') => {
                Ok(OriginPattern::Subdomains { scheme: scheme.to_string(), suffix: rest.to_string() })
            }
            Some(_) => Err(format!("'{p}': a wildcard must be a whole leading label, as in https://*.example.com")),
            None if host.contains('*') => Err(format!("'{p}': a wildcard must be a whole leading label")),
            None => Ok(OriginPattern::Exact(p)),
        }
    }

    /// Whether an `Origin` header value matches (ASCII case-insensitive).
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginPattern::Subdomains { scheme, suffix } => {
                let Some((s, host)) = origin.split_once("://") else { return false };
                let host = host.to_ascii_lowercase();
                s.eq_ignore_ascii_case(scheme) && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}
