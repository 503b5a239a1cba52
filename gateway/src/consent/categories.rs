//! Categories and the purpose mapping: valid category names, the default IAB purpose →
//! category table (see the module doc of `consent`) and [`PurposeMapping`], built once per
//! source, that turns TCF purposes or a US Privacy opt-out into a mask of granted categories.
//!
//! Owns: the category name rule, [`KNOWN_CATEGORIES`], [`MAX_CATEGORIES`] and the mapping's
//! config shape. Must not: decode strings (`tcf`, `usp`) or parse `context.consent` (`context`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::echo;

/// The category names the gateway knows out of the box (pre-parsed consent may add others).
pub const KNOWN_CATEGORIES: [&str; 5] = ["functional", "analytics", "personalisation", "advertising", "marketing"];

/// At most this many categories in a pre-parsed consent object or a mapping.
pub const MAX_CATEGORIES: usize = 64;

/// Category names: 1 to 64 ASCII letters, digits, `_`, `-`, `.` — so they need no escaping in
/// JSON or in the `consent-categories` header.
pub fn is_valid_category_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn default_tcf_mapping() -> BTreeMap<String, Vec<u8>> {
    [
        ("functional", vec![1]),
        ("analytics", vec![8, 9, 10]),
        ("personalisation", vec![5, 6, 11]),
        ("advertising", vec![2, 3, 4, 7]),
        ("marketing", vec![2, 3, 4]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn default_us_privacy_sale() -> Vec<String> {
    vec!["advertising".to_owned(), "marketing".to_owned()]
}

/// The mapping as written in config (`[….consent.mapping]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurposeMapping {
    /// Category → TCF purposes that all need consent. Merged over the default per category.
    #[serde(default)]
    tcf: BTreeMap<String, Vec<u8>>,
    /// Categories denied by a US Privacy opt-out of sale.
    #[serde(default = "default_us_privacy_sale")]
    us_privacy_sale: Vec<String>,
}

/// Sorted category names, shared between a mapping and the consents derived with it.
pub(super) type Names = Arc<[Box<str>]>;

/// How categories are derived from TCF purposes and US Privacy (see the module doc for the
/// default). Deserialize from `{ tcf = { analytics = [8, 9, 10], … }, us_privacy_sale = [...] }`:
/// each `tcf` entry replaces that category's default (an empty list: always granted by a TC
/// string), new names add categories, unmentioned categories keep their default.
///
/// Built once per source: the category names are shared (one `Arc` clone per event) and each
/// event only computes a bit mask of granted categories.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawPurposeMapping")]
pub struct PurposeMapping {
    /// Categories a TC string reports, sorted.
    pub(super) tcf_names: Names,
    /// Per TCF category (same order): its purposes, and the bits of the 24-bit PurposesConsent
    /// field that must all be set.
    tcf_rules: Vec<(Vec<u8>, u64)>,
    /// Categories a US Privacy string reports (the TCF names ∪ the sale names), sorted.
    pub(super) usp_names: Names,
    /// Bit i set: `usp_names[i]` is denied by an opt-out of sale.
    usp_sale_mask: u64,
}

impl Default for PurposeMapping {
    fn default() -> Self {
        let raw = RawPurposeMapping { tcf: BTreeMap::new(), us_privacy_sale: default_us_privacy_sale() };
        // The defaults are valid by construction (and a test proves it); fall back to an empty
        // mapping rather than panic.
        PurposeMapping::try_from(raw).unwrap_or(PurposeMapping {
            tcf_names: Arc::from(Vec::new()),
            tcf_rules: Vec::new(),
            usp_names: Arc::from(Vec::new()),
            usp_sale_mask: 0,
        })
    }
}

fn bad_name(at: &str, name: &str) -> String {
    format!("{at}: category name '{}' is not 1 to 64 letters, digits, '_', '-' or '.'", echo(name))
}

impl TryFrom<RawPurposeMapping> for PurposeMapping {
    type Error = String;

    fn try_from(raw: RawPurposeMapping) -> Result<Self, String> {
        let mut merged = default_tcf_mapping();
        merged.extend(raw.tcf);
        let mut tcf_names = Vec::with_capacity(merged.len());
        let mut tcf_rules = Vec::with_capacity(merged.len());
        for (name, purposes) in merged {
            if !is_valid_category_name(&name) {
                return Err(bad_name("mapping.tcf", &name));
            }
            let mut mask = 0u64;
            for &p in &purposes {
                if !(1..=24).contains(&p) {
                    return Err(format!("mapping.tcf.{name}: purpose {p} is not a TCF purpose id (1 to 24)"));
                }
                mask |= 1u64 << (24 - p);
            }
            tcf_names.push(name.into_boxed_str());
            tcf_rules.push((purposes, mask));
        }
        for name in &raw.us_privacy_sale {
            if !is_valid_category_name(name) {
                return Err(bad_name("mapping.us_privacy_sale", name));
            }
        }
        let mut usp_names: Vec<Box<str>> = tcf_names.to_vec();
        usp_names.extend(raw.us_privacy_sale.iter().map(|n| Box::from(n.as_str())));
        usp_names.sort();
        usp_names.dedup();
        // Categories are reported as a 64-bit mask per event.
        if usp_names.len() > MAX_CATEGORIES {
            return Err(format!("the mapping has more than {MAX_CATEGORIES} categories"));
        }
        let usp_sale_mask = usp_names
            .iter()
            .enumerate()
            .filter(|(_, n)| raw.us_privacy_sale.iter().any(|s| s.as_str() == &***n))
            .fold(0u64, |m, (i, _)| m | 1 << i);
        Ok(PurposeMapping {
            tcf_names: Arc::from(tcf_names),
            tcf_rules,
            usp_names: Arc::from(usp_names),
            usp_sale_mask,
        })
    }
}

impl PurposeMapping {
    /// The TCF purposes mapped to `category`, if it is mapped.
    pub fn purposes(&self, category: &str) -> Option<&[u8]> {
        let i = self.tcf_names.binary_search_by(|n| (**n).cmp(category)).ok()?;
        self.tcf_rules.get(i).map(|(p, _)| p.as_slice())
    }

    /// Every category this mapping derives (TCF names ∪ US Privacy sale names), sorted.
    pub fn category_names(&self) -> impl Iterator<Item = &str> {
        self.usp_names.iter().map(|n| &**n)
    }

    /// Granted mask of the TCF categories for a PurposesConsent field.
    pub(super) fn tcf_granted(&self, purposes_consent: u64) -> u64 {
        self.tcf_rules
            .iter()
            .enumerate()
            .filter(|(_, (_, need))| purposes_consent & need == *need)
            .fold(0u64, |m, (i, _)| m | 1 << i)
    }

    /// Granted mask of the US Privacy categories.
    pub(super) fn usp_granted(&self, opted_out_of_sale: bool) -> u64 {
        let all = if self.usp_names.len() >= 64 { u64::MAX } else { (1u64 << self.usp_names.len()) - 1 };
        if opted_out_of_sale {
            all & !self.usp_sale_mask
        } else {
            all
        }
    }
}
