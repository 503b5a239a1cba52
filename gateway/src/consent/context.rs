//! `context.consent`: parses its raw JSON into one of the three forms (a TC string, a US
//! Privacy string or category booleans, see the module doc of `consent`) and derives the
//! categories; [`Consent`] is the result decode writes back into the event.
//!
//! Owns: the three-forms rule, the reserved `categories` key, and the JSON and header renderings
//! of the derived categories. Must not: decode the strings themselves (`tcf`, `usp`), read the
//! rest of the event, or decide keep or drop (`policy` does).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::categories::{is_valid_category_name, Names, PurposeMapping, MAX_CATEGORIES};
use super::members::{as_bool, as_string, parse_members};
use super::tcf::{decode_tc_string, TcString};
use super::usp::{decode_us_privacy, UsPrivacy};
use super::{echo, ConsentError};

/// Which of the three forms `context.consent` used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentForm {
    /// `{"tcfString": "…"}`.
    Tcf,
    /// `{"usPrivacy": "1YNN"}`.
    UsPrivacy,
    /// `{"analytics": true, …}`.
    Categories,
}

impl ConsentForm {
    /// Stable snake_case name (a bounded metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentForm::Tcf => "tcf",
            ConsentForm::UsPrivacy => "us_privacy",
            ConsentForm::Categories => "categories",
        }
    }
}

/// A parsed `context.consent`: its form, the raw string (TCF or US Privacy), the decoded string
/// and the derived categories (sorted by name; names are valid category names).
#[derive(Debug, Clone)]
pub struct Consent {
    form: ConsentForm,
    raw: Option<Box<str>>,
    tcf: Option<TcString>,
    us_privacy: Option<UsPrivacy>,
    /// Category names, sorted (shared with the mapping for the string forms).
    names: Names,
    /// Bit i set: `names[i]` is granted.
    granted: u64,
}

impl Consent {
    /// The form the client used.
    pub fn form(&self) -> ConsentForm {
        self.form
    }
    /// The raw TC string (TCF form).
    pub fn tcf_string(&self) -> Option<&str> {
        if self.form == ConsentForm::Tcf {
            self.raw.as_deref()
        } else {
            None
        }
    }
    /// The raw US Privacy string (US Privacy form).
    pub fn us_privacy_string(&self) -> Option<&str> {
        if self.form == ConsentForm::UsPrivacy {
            self.raw.as_deref()
        } else {
            None
        }
    }
    /// The decoded TC string (TCF form).
    pub fn tcf(&self) -> Option<&TcString> {
        self.tcf.as_ref()
    }
    /// The decoded US Privacy string (US Privacy form).
    pub fn us_privacy(&self) -> Option<&UsPrivacy> {
        self.us_privacy.as_ref()
    }
    /// The derived categories, sorted by name.
    pub fn categories(&self) -> impl ExactSizeIterator<Item = (&str, bool)> {
        self.names.iter().enumerate().map(|(i, n)| (&**n, self.bit(i)))
    }
    fn bit(&self, i: usize) -> bool {
        i < 64 && (self.granted >> i) & 1 == 1
    }
    /// Whether `category` is granted; `None` when the consent does not mention it.
    pub fn granted(&self, category: &str) -> Option<bool> {
        self.names.binary_search_by(|n| (**n).cmp(category)).ok().map(|i| self.bit(i))
    }
    /// Every category in `required` is granted (a category the consent does not mention is not
    /// granted). An empty `required` is always satisfied.
    pub fn has_all(&self, required: &[String]) -> bool {
        required.iter().all(|r| self.granted(r) == Some(true))
    }
    /// The categories as a compact JSON object in name order, e.g.
    /// `{"advertising":false,"analytics":true}` (for `context.consent.categories`).
    pub fn categories_json(&self) -> String {
        let mut out = String::with_capacity(self.json_len());
        self.write_categories_json(&mut out);
        out
    }
    fn json_len(&self) -> usize {
        2 + self.names.iter().map(|n| n.len() + 9).sum::<usize>()
    }
    fn write_categories_json(&self, out: &mut String) {
        out.push('{');
        for (i, (name, granted)) in self.categories().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Names are valid category names: nothing to escape.
            out.push('"');
            out.push_str(name);
            out.push_str(if granted { "\":true" } else { "\":false" });
        }
        out.push('}');
    }
    /// The categories as a compact header value in name order, e.g.
    /// `advertising=0;analytics=1` (for a Kafka header `consent-categories`).
    pub fn header_value(&self) -> String {
        let mut out = String::with_capacity(self.names.iter().map(|n| n.len() + 3).sum());
        for (i, (name, granted)) in self.categories().enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(name);
            out.push_str(if granted { "=1" } else { "=0" });
        }
        out
    }
    /// The normalised `context.consent` to publish: the form as sent plus `categories`, e.g.
    /// `{"tcfString":"CP…","categories":{"advertising":false,…}}`. Parsing it again gives the
    /// same consent, so a re-sent enriched event stays valid.
    pub fn consent_object_json(&self) -> String {
        let raw_len = self.raw.as_deref().map_or(0, str::len);
        let mut out = String::with_capacity(2 * self.json_len() + raw_len + 32);
        out.push('{');
        match (self.form, self.raw.as_deref()) {
            // The raw strings decoded, so they hold only base64url characters, '=', '.' (TCF)
            // or '1YN-' (US Privacy): nothing to escape.
            (ConsentForm::Tcf, Some(raw)) => {
                out.push_str("\"tcfString\":\"");
                out.push_str(raw);
                out.push_str("\",");
            }
            (ConsentForm::UsPrivacy, Some(raw)) => {
                out.push_str("\"usPrivacy\":\"");
                out.push_str(raw);
                out.push_str("\",");
            }
            _ => {
                for (name, granted) in self.categories() {
                    out.push('"');
                    out.push_str(name);
                    out.push_str(if granted { "\":true," } else { "\":false," });
                }
            }
        }
        out.push_str("\"categories\":");
        self.write_categories_json(&mut out);
        out.push('}');
        out
    }
}

/// Booleans of a pre-parsed form (top level, or the reserved `categories` object), validated,
/// as sorted names and a granted mask.
fn category_booleans<'a>(members: impl Iterator<Item = (&'a str, &'a RawValue)>) -> Result<(Names, u64), ConsentError> {
    let mut out: Vec<(&str, bool)> = Vec::new();
    for (name, v) in members {
        let granted = as_bool(v).ok_or_else(|| ConsentError::NotBoolean(echo(name)))?;
        if !is_valid_category_name(name) {
            return Err(ConsentError::BadCategoryName(echo(name)));
        }
        if out.len() == MAX_CATEGORIES {
            return Err(ConsentError::TooManyCategories);
        }
        out.push((name, granted));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let granted = out.iter().enumerate().filter(|(_, (_, g))| *g).fold(0u64, |m, (i, _)| m | 1 << i);
    let names: Vec<Box<str>> = out.into_iter().map(|(n, _)| Box::from(n)).collect();
    Ok((Arc::from(names), granted))
}

/// Parses the raw JSON text of `context.consent` into one of its three forms and derives the
/// categories with `mapping`. See the module doc for the rules; every refusal is a
/// [`ConsentError`] (code `invalid_consent`) that says what is wrong. `null` is not an object:
/// callers treat an absent or `null` `context.consent` as "no consent" before calling this.
pub fn parse_consent(raw: &str, mapping: &PurposeMapping) -> Result<Consent, ConsentError> {
    let members = parse_members(raw)?;

    let mut tcf: Option<Cow<'_, str>> = None;
    let mut usp: Option<Cow<'_, str>> = None;
    let mut categories_key: Option<&RawValue> = None;
    let mut first_boolean: Option<&str> = None;
    let mut first_other: Option<&str> = None;
    for (k, v) in &members {
        match &**k {
            "tcfString" => tcf = Some(as_string(v).ok_or(ConsentError::NotAString("tcfString"))?),
            "usPrivacy" => usp = Some(as_string(v).ok_or(ConsentError::NotAString("usPrivacy"))?),
            "gppString" => return Err(ConsentError::GppUnsupported),
            "categories" => categories_key = Some(*v),
            key if as_bool(v).is_some() => {
                first_boolean.get_or_insert(key);
            }
            key => {
                first_other.get_or_insert(key);
            }
        }
    }

    let mut forms: Vec<&str> = Vec::new();
    if tcf.is_some() {
        forms.push("tcfString");
    }
    if usp.is_some() {
        forms.push("usPrivacy");
    }
    if let Some(b) = first_boolean {
        forms.push(b);
    }
    if forms.len() > 1 {
        let described: Vec<String> = forms
            .iter()
            .map(|f| match *f {
                "tcfString" | "usPrivacy" => (*f).to_owned(),
                name => format!("category booleans such as '{}'", echo(name)),
            })
            .collect();
        return Err(ConsentError::MultipleForms(described.join(" and ")));
    }
    let string_form = if tcf.is_some() {
        Some("tcfString")
    } else if usp.is_some() {
        Some("usPrivacy")
    } else {
        None
    };
    if let Some(other) = first_other {
        return Err(match string_form {
            Some(form) => ConsentError::UnknownKey { key: echo(other), form },
            None => ConsentError::NotBoolean(echo(other)),
        });
    }
    // The reserved `categories` object: always checked; used only when it is the only form.
    let written = match categories_key {
        Some(v) => {
            let inner = parse_members(v.get()).map_err(|e| match e {
                // Every member of `categories` is a category.
                ConsentError::TooManyKeys => ConsentError::TooManyCategories,
                _ => ConsentError::BadCategoriesKey,
            })?;
            Some(category_booleans(inner.iter().map(|(k, v)| (&**k, *v))).map_err(|e| {
                if matches!(e, ConsentError::NotBoolean(_)) {
                    ConsentError::BadCategoriesKey
                } else {
                    e
                }
            })?)
        }
        None => None,
    };

    if let Some(s) = tcf {
        let tc = decode_tc_string(&s)?;
        return Ok(Consent {
            form: ConsentForm::Tcf,
            raw: Some(s.into_owned().into_boxed_str()),
            granted: mapping.tcf_granted(tc.purposes_consent),
            names: mapping.tcf_names.clone(),
            tcf: Some(tc),
            us_privacy: None,
        });
    }
    if let Some(s) = usp {
        let up = decode_us_privacy(&s)?;
        return Ok(Consent {
            form: ConsentForm::UsPrivacy,
            raw: Some(s.into_owned().into_boxed_str()),
            names: mapping.usp_names.clone(),
            granted: mapping.usp_granted(up.opted_out_of_sale()),
            tcf: None,
            us_privacy: Some(up),
        });
    }
    let (names, granted) = match written {
        Some(w) if first_boolean.is_none() => w,
        _ => category_booleans(members.iter().filter(|(k, _)| k != "categories").map(|(k, v)| (&**k, *v)))?,
    };
    Ok(Consent { form: ConsentForm::Categories, raw: None, tcf: None, us_privacy: None, names, granted })
}
