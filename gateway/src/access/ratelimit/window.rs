//! Rate-limit settings: one window, a key's two windows, the per-IP window, and their validation.

use serde::{Deserialize, Serialize};

/// that refills one request every `period_s / limit` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Requests allowed per period (≥ 1).
    pub limit: u32,
    /// Length of the window in seconds (≥ 1).
    pub period_s: u32,
}

impl Window {
    /// Reports each problem as `at.field: message`.
    pub fn validate(&self, at: &str, bad: &mut dyn FnMut(String)) {
        if self.limit < 1 {
            bad(format!("{at}.limit must be at least 1 (got {}); remove the window to disable it", self.limit));
        }
        if self.period_s < 1 {
            bad(format!("{at}.period_s must be at least 1 (got {})", self.period_s));
        }
    }
}

/// The request limits of one write key (or of a source, which its keys inherit). Each window is
/// optional; with neither, the key is not limited (the per-IP limit may still apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// The short window, e.g. `{ limit = 600, period_s = 60 }`.
    #[serde(default)]
    pub short: Option<Window>,
    /// The medium window, e.g. `{ limit = 5000, period_s = 3600 }`; longer than `short`.
    #[serde(default)]
    pub medium: Option<Window>,
}

impl KeyLimits {
    /// No window: nothing is limited.
    pub const NONE: KeyLimits = KeyLimits { short: None, medium: None };

    /// Each window from `self` when set, else from `parent` (a key inheriting its source's).
    pub fn inherit(self, parent: &KeyLimits) -> KeyLimits {
        KeyLimits { short: self.short.or(parent.short), medium: self.medium.or(parent.medium) }
    }

    /// Reports each problem as `at.window.field: message` (e.g. `at` = `sources[0].rate_limits`).
    pub fn validate(&self, at: &str, bad: &mut dyn FnMut(String)) {
        if let Some(w) = &self.short {
            w.validate(&format!("{at}.short"), bad);
        }
        if let Some(w) = &self.medium {
            w.validate(&format!("{at}.medium"), bad);
        }
        // Swapped windows would label the hour "short" in every response header.
        if let (Some(s), Some(m)) = (&self.short, &self.medium) {
            if m.period_s <= s.period_s {
                bad(format!(
                    "{at}.medium.period_s ({}) must be longer than {at}.short.period_s ({})",
                    m.period_s, s.period_s
                ));
            }
        }
    }

    /// [`KeyLimits::validate`] collected into a list.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.validate(at, &mut |m| out.push(m));
        out
    }
}

/// The per-client-IP limit, shared by every key (default: 120 requests per minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpLimit {
    /// Requests allowed per period (≥ 1).
    #[serde(default = "default_ip_limit")]
    pub limit: u32,
    /// Length of the window in seconds (≥ 1).
    #[serde(default = "default_ip_period_s")]
    pub period_s: u32,
    /// IPv6 clients are counted per prefix of this length (1–128): one subscriber usually holds
    /// a whole /64, so counting per /128 would let a single client rotate addresses freely and
    /// grow the state without bound.
    #[serde(default = "default_ipv6_prefix_len")]
    pub ipv6_prefix_len: u8,
}

fn default_ip_limit() -> u32 {
    120
}
fn default_ip_period_s() -> u32 {
    60
}
fn default_ipv6_prefix_len() -> u8 {
    64
}

impl Default for IpLimit {
    fn default() -> Self {
        IpLimit {
            limit: default_ip_limit(),
            period_s: default_ip_period_s(),
            ipv6_prefix_len: default_ipv6_prefix_len(),
        }
    }
}

impl IpLimit {
    /// The window this limit applies to each client.
    pub fn window(&self) -> Window {
        Window { limit: self.limit, period_s: self.period_s }
    }

    /// Reports each problem as `at.field: message`.
    pub fn validate(&self, at: &str, bad: &mut dyn FnMut(String)) {
        self.window().validate(at, bad);
        if !(1..=128).contains(&self.ipv6_prefix_len) {
            bad(format!("{at}.ipv6_prefix_len must be between 1 and 128 (got {})", self.ipv6_prefix_len));
        }
    }

    /// [`IpLimit::validate`] collected into a list.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.validate(at, &mut |m| out.push(m));
        out
    }
}

// ---------------------------------------------------------------------------------------------
