//! Per-source policy: [`ConsentPolicy`], the serde section a source's config embeds (required
//! categories, what to assume without consent, IP handling, the mapping), its validation and
//! the keep-or-drop [`Decision`] for one event.
//!
//! Owns: the policy's defaults and how it is checked. Must not: parse consent (`context` does)
//! or build a response (a dropped event is answered by the pipeline).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{echo, is_valid_category_name, Consent, IpPolicy, PurposeMapping};

/// What to do with an event after consent was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Publish it.
    Keep,
    /// Answer it as accepted (200) but do not publish it; count it as `consent_dropped`.
    Drop,
}

fn default_required() -> Vec<String> {
    Vec::new()
}

fn default_ip_policy() -> IpPolicy {
    IpPolicy::Keep
}

fn default_default_categories() -> Option<BTreeMap<String, bool>> {
    None
}

/// A source's consent policy, embeddable in its config (e.g. `[sources.consent]`):
///
/// ```toml
/// required = ["analytics"]          # categories an event needs; default none
/// ip = "truncate"                   # keep (default) | truncate | remove
/// default_categories = { functional = true }  # assumed without context.consent; default: all granted
/// [mapping.tcf]                     # per-category override of the default purpose mapping
/// marketing = [1, 2, 3, 4]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentPolicy {
    /// Categories that must all be granted for an event to be published.
    #[serde(default = "default_required")]
    pub required: Vec<String>,
    /// What to do with `context.ip`.
    #[serde(default = "default_ip_policy")]
    pub ip: IpPolicy,
    /// How TCF purposes and US Privacy map to categories.
    #[serde(default)]
    pub mapping: PurposeMapping,
    /// The categories assumed for an event without `context.consent`. Absent (the default):
    /// every category is granted — no consent object means the source's consent is not managed
    /// by a CMP (server-side sources, regions without a banner). Given: exactly these, and a
    /// category not listed is not granted (so `{}` drops every event without consent when
    /// `required` is not empty).
    #[serde(default = "default_default_categories")]
    pub default_categories: Option<BTreeMap<String, bool>>,
}

impl Default for ConsentPolicy {
    fn default() -> Self {
        ConsentPolicy {
            required: default_required(),
            ip: default_ip_policy(),
            mapping: PurposeMapping::default(),
            default_categories: default_default_categories(),
        }
    }
}

impl ConsentPolicy {
    /// Reports every problem of this policy to `bad` (one message each, prefixed with `at`,
    /// e.g. `sources[0].consent`), in the style of the config validation: names must be valid
    /// category names, and a required category must be one the mapping can derive (otherwise a
    /// TCF or US Privacy event could never satisfy it — usually a typo).
    pub fn validate(&self, at: &str, bad: &mut dyn FnMut(String)) {
        for r in &self.required {
            if !is_valid_category_name(r) {
                bad(format!("{at}.required: '{}' is not 1 to 64 letters, digits, '_', '-' or '.'", echo(r)));
            } else if !self.mapping.category_names().any(|n| n == r) {
                let known: Vec<&str> = self.mapping.category_names().collect();
                bad(format!(
                    "{at}.required: '{r}' is not a mapped category, so a TCF or US Privacy string could never grant it; \
                     map it in {at}.mapping.tcf or use one of {}",
                    known.join(", ")
                ));
            }
        }
        for name in self.default_categories.iter().flat_map(|m| m.keys()) {
            if !is_valid_category_name(name) {
                bad(format!(
                    "{at}.default_categories: '{}' is not 1 to 64 letters, digits, '_', '-' or '.'",
                    echo(name)
                ));
            }
        }
    }

    /// Keep or drop an event given its parsed consent (`None`: the event had no
    /// `context.consent`, and `default_categories` applies).
    pub fn evaluate(&self, consent: Option<&Consent>) -> Decision {
        let keep = match consent {
            _ if self.required.is_empty() => true,
            Some(c) => c.has_all(&self.required),
            None => match &self.default_categories {
                None => true,
                Some(defaults) => self.required.iter().all(|r| defaults.get(r).copied() == Some(true)),
            },
        };
        if keep {
            Decision::Keep
        } else {
            Decision::Drop
        }
    }
}
