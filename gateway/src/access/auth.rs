//! Auth: finds the write key of a request and maps it to its [`Source`].
//!
//! Owns: where a key may come from and in which order (`X-Write-Key`, `Authorization: Basic`
//! or `Bearer`, `?writeKey=`, then the body's `writeKey`, handed over by decode), and the key →
//! source table.
//! Must not: read the body itself, log a key, or know about the sink.
//!
//! Keys are compared in constant time. The table is indexed by the SHA-256 of each key, so the
//! lookup's timing depends on a digest an attacker cannot steer byte by byte; the stored key is
//! then compared with `subtle::ConstantTimeEq`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keys::{Source, WriteKey};

/// Why a request has no source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no write key: send X-Write-Key, Authorization: Basic base64(key:) or Bearer KEY, ?writeKey= or a body writeKey"
    )]
    Missing,
    #[error("the write key is not valid")]
    Invalid,
    #[error("the write key has been revoked")]
    Revoked,
    #[error("the Authorization header is malformed: {0}")]
    Malformed(&'static str),
}

impl AuthError {
    /// Every code [`AuthError::code`] returns: `respond` builds the gateway's closed set of
    /// codes from lists like this one and holds it against the README.
    pub const CODES: &'static [&'static str] = &["missing_write_key", "invalid_write_key", "revoked_write_key"];

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_write_key",
            AuthError::Invalid | AuthError::Malformed(_) => "invalid_write_key",
            AuthError::Revoked => "revoked_write_key",
        }
    }

    /// One value of every variant, for the tests that hold `code` against [`AuthError::CODES`].
    #[cfg(test)]
    pub(crate) fn samples() -> Vec<AuthError> {
        use AuthError::*;
        let all = vec![Missing, Invalid, Revoked, Malformed("x")];
        // No `_` arm: a new variant does not compile until it is named here (and added above).
        all.iter().for_each(|e| match e {
            Missing | Invalid | Revoked | Malformed(_) => {}
        });
        all
    }
}

/// The key → source table, built once from config.
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], KeyEntry>,
}

/// A stored key and the source it opens.
struct KeyEntry {
    key: Box<[u8]>,
    source: Arc<Source>,
    index: usize,
}

/// A resolved, non-revoked key: its source and its settings.
#[derive(Clone, Debug)]
pub struct Credential {
    pub source: Arc<Source>,
    index: usize,
}

impl Credential {
    /// The key's settings (kind, allowed types and origins, limits).
    pub fn key(&self) -> Option<&WriteKey> {
        self.source.keys.get(self.index)
    }
}

impl KeyTable {
    pub fn new(sources: &[Arc<Source>]) -> KeyTable {
        let mut by_digest = HashMap::new();
        for s in sources {
            for (index, k) in s.keys.iter().enumerate() {
                let entry = KeyEntry { key: k.key.as_bytes().into(), source: s.clone(), index };
                by_digest.insert(digest(k.key.as_bytes()), entry);
            }
        }
        KeyTable { by_digest }
    }

    /// The source and settings of a key; a revoked key is an error.
    pub fn resolve(&self, key: &str) -> Result<Credential, AuthError> {
        let presented = key.as_bytes();
        match self.by_digest.get(&digest(presented)) {
            Some(e) if bool::from(e.key.as_ref().ct_eq(presented)) => {
                let cred = Credential { source: e.source.clone(), index: e.index };
                match cred.key() {
                    Some(k) if k.revoked => Err(AuthError::Revoked),
                    _ => Ok(cred),
                }
            }
            _ => Err(AuthError::Invalid),
        }
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The key from the request head, in precedence order; `Ok(None)` when the head has none (the
/// body's `writeKey` is then the last chance).
pub fn key_from_head(parts: &Parts) -> Result<Option<Cow<'_, str>>, AuthError> {
    if let Some(v) = parts.headers.get("x-write-key") {
        let k = v.to_str().map_err(|_| AuthError::Malformed("X-Write-Key is not ASCII"))?.trim();
        if !k.is_empty() {
            return Ok(Some(Cow::Borrowed(k)));
        }
    }
    if let Some(v) = parts.headers.get(http::header::AUTHORIZATION) {
        if let Some(k) = authorization_key(v.as_bytes())? {
            return Ok(Some(k));
        }
    }
    if let Some(q) = parts.uri.query() {
        if let Some(k) = query_param(q, "writeKey") {
            if !k.is_empty() {
                return Ok(Some(k));
            }
        }
    }
    Ok(None)
}

/// The key of `Authorization`: the token of `Bearer KEY` (the reference APIs' form), or the
/// user part of `Basic base64(user:password)` with the password ignored (Segment's libraries
/// send the key as the user and an empty password). Another scheme carries no key.
fn authorization_key(value: &[u8]) -> Result<Option<Cow<'_, str>>, AuthError> {
    let value = std::str::from_utf8(value).map_err(|_| AuthError::Malformed("not ASCII"))?.trim();
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Err(AuthError::Malformed("expected 'Basic <base64>' or 'Bearer <key>'"));
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        let token = rest.trim();
        return Ok(if token.is_empty() { None } else { Some(Cow::Borrowed(token)) });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| AuthError::Malformed("the Basic credentials are not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| AuthError::Malformed("the Basic credentials are not UTF-8"))?;
    let user = match text.split_once(':') {
        Some((u, _password)) => u.to_string(),
        None => text,
    };
    Ok(if user.is_empty() { None } else { Some(Cow::Owned(user)) })
}

/// One query parameter, percent-decoded (`+` is a space, as in forms).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn precedence_header_basic_query() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("basic-key:");
        let p = parts(
            http::Request::post("/v1/track?writeKey=query-key")
                .header("x-write-key", "header-key")
                .header("authorization", format!("Basic {b64}")),
        );
        assert_eq!(key_from_head(&p).unwrap().unwrap(), "header-key");
        let p =
            parts(http::Request::post("/v1/track?writeKey=query-key").header("authorization", format!("Basic {b64}")));
        assert_eq!(key_from_head(&p).unwrap().unwrap(), "basic-key");
        let p = parts(http::Request::post("/v1/track?a=1&writeKey=q%2Dkey"));
        assert_eq!(key_from_head(&p).unwrap().unwrap(), "q-key");
        let p = parts(http::Request::post("/v1/track"));
        assert_eq!(key_from_head(&p).unwrap(), None);
    }

    #[test]
    fn basic_password_ignored_and_bad_basic_rejected() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("k:whatever");
        let p = parts(http::Request::post("/").header("authorization", format!("basic {b64}")));
        assert_eq!(key_from_head(&p).unwrap().unwrap(), "k");
        let p = parts(http::Request::post("/").header("authorization", "Basic !!!"));
        assert_eq!(key_from_head(&p).unwrap_err().code(), "invalid_write_key");
        // Bearer is the fifth way (the reference APIs'); other schemes carry no key.
        let p = parts(http::Request::post("/").header("authorization", "Bearer abc"));
        assert_eq!(key_from_head(&p).unwrap().unwrap(), "abc");
        let p = parts(http::Request::post("/?writeKey=q").header("authorization", "bearer  tok "));
        assert_eq!(key_from_head(&p).unwrap().unwrap(), "tok");
        let p = parts(http::Request::post("/").header("authorization", "Digest x"));
        assert_eq!(key_from_head(&p).unwrap(), None);
    }

    #[test]
    fn resolve_known_and_unknown() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        let t = KeyTable::new(&c.sources);
        assert_eq!(&*t.resolve("demo-write-key").unwrap().source.id, "demo");
        assert_eq!(t.resolve("demo-write-kez").unwrap_err(), AuthError::Invalid);
        assert_eq!(t.resolve("").unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn codes_lists_every_code() {
        let produced: std::collections::BTreeSet<_> = AuthError::samples().iter().map(AuthError::code).collect();
        assert_eq!(produced, AuthError::CODES.iter().copied().collect());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
