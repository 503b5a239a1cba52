//! Consent at the edge: decodes `context.consent` (IAB TCF v2 TC strings, IAB US Privacy strings,
//! or pre-parsed category booleans), derives consent categories, and holds the per-source
//! consent policy (required categories, what to assume without consent, IP handling).
//!
//! Owns: the TC string bit layout (our own bit reader over `base64` output; no TCF crate is
//! needed for a read-only decoder of a fixed, public layout), the US Privacy grammar, the
//! default IAB purpose → category mapping, the three-forms rule of `context.consent`, the IP
//! truncation rule, and [`ConsentPolicy`] (a serde section a source's config can embed).
//! Must not: touch HTTP, the event body outside `context.consent`, metrics or the sink, and
//! depends on no other gateway module (but `json`): decode calls [`parse_consent`],
//! [`ConsentPolicy::evaluate`] and [`IpPolicy::apply`] and writes the results into the event.
//!
//! # The decoder is cross-checked against the IAB's own
//! `gateway/tests/fixtures/tcf/iabtcf-core.json` holds TC strings encoded by `@iabtcf/core` (the
//! IAB reference implementation) and what its `TCString.decode` reads from them; the unit tests
//! require this decoder to read exactly the same. Regenerate with
//! `scripts/gen-tcf-fixtures/` (see its README).
//!
//! # Default category mapping (TCF v2.2 purposes)
//! The IAB defines purposes, not categories, and publishes no official purpose → category
//! table; this is ours, chosen to be conservative. A category is granted when the user gave
//! **consent** to **every** purpose mapped to it. Legitimate interest never grants a category
//! (as Segment/OneTrust-style consent management does: LI is an objection-based basis the user
//! did not opt into), and purpose one treatment does not stand in for purpose 1 consent.
//!
//! | category          | purposes  | why |
//! |-------------------|-----------|-----|
//! | `functional`      | 1         | store and/or access information on a device |
//! | `analytics`       | 8, 9, 10  | measure content performance, understand audiences (statistics), develop and improve services |
//! | `personalisation` | 5, 6, 11  | content profiles, personalised content, limited-data content selection |
//! | `advertising`     | 2, 3, 4, 7| basic ads, ad profiles, personalised ads, measure ad performance |
//! | `marketing`       | 2, 3, 4   | ad profiles and their use: retargeting/marketing audiences, without ad measurement |
//!
//! A source overrides it per category in `mapping.tcf` (other categories keep their default;
//! new names add categories). US Privacy: an opt-out of sale (`1?Y?`) denies the categories in
//! `mapping.us_privacy_sale` (default `advertising`, `marketing`) and grants every other mapped
//! category; `N`, `-` and not applicable (`1---`) grant all.
//!
//! # The three forms of `context.consent`
//! Exactly one of `{"tcfString": …}`, `{"usPrivacy": …}` or category booleans. The key
//! `categories` is reserved for what the gateway writes back ([`Consent::consent_object_json`]),
//! so a re-sent enriched event stays valid: next to a form it is checked (an object of booleans)
//! and ignored (categories are always re-derived from the form); alone, its booleans are the
//! pre-parsed form. Any other key next to `tcfString`/`usPrivacy` is an error (boolean: a second
//! form; otherwise: unknown key), as is `gppString` (IAB GPP is not decoded yet). `{}` is the
//! pre-parsed form with no category granted. An object (or `categories`) with more keys than the
//! largest valid one (64 categories and `categories`) is refused before its keys are compared:
//! the keys are the client's choice, and their cost must stay linear in their bytes.
//!
//! # Layout
//! - `mod.rs` (here): [`ConsentError`] (one enum for the stage, with a bounded `reason`) and
//!   the cap on client input echoed in messages.
//! - `bits`: the bit reader over a TC string's decoded bytes.
//! - `tcf`: the TC string: [`decode_tc_string`], [`TcString`] and its vendor sections,
//!   publisher TC segment and publisher restrictions.
//! - `usp`: US Privacy strings ([`decode_us_privacy`]).
//! - `categories`: category names and [`PurposeMapping`] (TCF purposes and US Privacy to
//!   categories, the default table above).
//! - `context`: `context.consent`, the three forms ([`parse_consent`]) and the parsed
//!   [`Consent`] decode writes back.
//! - `members`: a JSON object's keys and strings borrowed from the input, the member cap and the
//!   linear duplicate check.
//! - `ip`: [`IpPolicy`], what happens to `context.ip`.
//! - `policy`: [`ConsentPolicy`], a source's policy, and its [`Decision`].
//! - `tests`: the unit tests, one file per area (`tests/{tcf,usp,context,ip,policy}.rs`).

mod bits;
mod categories;
mod context;
mod ip;
mod members;
mod policy;
mod tcf;
mod usp;

#[cfg(test)]
mod tests;

pub use categories::{is_valid_category_name, PurposeMapping, KNOWN_CATEGORIES, MAX_CATEGORIES};
pub use context::{parse_consent, Consent, ConsentForm};
pub use ip::IpPolicy;
pub use policy::{ConsentPolicy, Decision};
pub use tcf::{decode_tc_string, PublisherTc, RestrictionType, TcString, VendorEncoding, VendorVector};
pub use usp::{decode_us_privacy, UsPrivacy, UsPrivacyFlag};

use members::MAX_MEMBERS;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why `context.consent` (or one of its strings) was refused. Every variant answers the event
/// with the code `invalid_consent`; [`ConsentError::reason`] is a finer, bounded label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("context.consent must be a JSON object")]
    NotAnObject,
    #[error("context.consent is not valid JSON: {0}")]
    Json(String),
    #[error("context.consent has the key '{0}' twice")]
    DuplicateKey(String),
    #[error(
        "context.consent has more than one form ({0}); send exactly one of tcfString, usPrivacy or category booleans"
    )]
    MultipleForms(String),
    #[error("'{0}' in context.consent must be a string")]
    NotAString(&'static str),
    #[error("category '{0}' in context.consent must be true or false")]
    NotBoolean(String),
    #[error("unknown key '{key}' next to {form} in context.consent; only 'categories' may accompany it")]
    UnknownKey { key: String, form: &'static str },
    #[error("category name '{0}' is not 1 to 64 letters, digits, '_', '-' or '.'")]
    BadCategoryName(String),
    #[error("context.consent has more than {MAX_CATEGORIES} categories")]
    TooManyCategories,
    #[error("context.consent has more than {MAX_MEMBERS} keys; a consent form has at most {MAX_CATEGORIES} categories and 'categories'")]
    TooManyKeys,
    #[error("'categories' in context.consent must be an object of booleans")]
    BadCategoriesKey,
    #[error("gppString (IAB GPP) is not supported; send tcfString or usPrivacy instead")]
    GppUnsupported,
    #[error("tcfString is empty")]
    TcfEmpty,
    #[error("tcfString segment {segment} is empty (two dots in a row, or a dot at an end)")]
    TcfEmptySegment { segment: usize },
    #[error("tcfString segment {segment} is not base64url: {detail}")]
    TcfBase64 { segment: usize, detail: String },
    #[error("tcfString must start with the core segment; it starts with a segment of type {0}")]
    TcfCoreNotFirst(u8),
    #[error("tcfString has encoding version {0}; only TCF v2 strings (version 2) are supported")]
    TcfVersion(u8),
    #[error("tcfString is truncated: it ends inside {field} of the {section}")]
    TcfTruncated { section: &'static str, field: &'static str },
    #[error("tcfString {0} is not two letters A-Z")]
    TcfLetters(&'static str),
    #[error("tcfString {section}: range entry {start}-{end} ends before it starts")]
    TcfRangeOrder { section: &'static str, start: u16, end: u16 },
    #[error("tcfString {section}: vendor id 0 in an entry (vendor ids start at 1)")]
    TcfVendorIdZero { section: &'static str },
    #[error("tcfString {section}: vendor id {id} is above its MaxVendorId {max}")]
    TcfVendorIdAboveMax { section: &'static str, id: u16, max: u16 },
    #[error("tcfString publisher restrictions: purpose id 0 is not a purpose")]
    TcfRestrictionPurpose,
    #[error("tcfString publisher restrictions: restriction type 3 is undefined")]
    TcfRestrictionType,
    #[error("tcfString segment {segment} has unknown segment type {segment_type}")]
    TcfSegmentType { segment: usize, segment_type: u8 },
    #[error("tcfString has two {0} segments")]
    TcfDuplicateSegment(&'static str),
    #[error("tcfString has more than 4 segments (core, disclosed vendors, allowed vendors, publisher TC)")]
    TcfTooManySegments,
    #[error("usPrivacy must be exactly 4 characters (e.g. 1YNN); it has {0}")]
    UsPrivacyLength(usize),
    #[error("usPrivacy version {0:?} is not supported; only version 1 is")]
    UsPrivacyVersion(char),
    #[error("usPrivacy {field} must be Y, N or -; it is {found:?}")]
    UsPrivacyFlag { field: &'static str, found: char },
}

impl ConsentError {
    /// The stable snake_case code of every consent error (the response code and metric label).
    pub fn code(&self) -> &'static str {
        "invalid_consent"
    }

    /// A finer stable snake_case label (bounded set), e.g. for a `reason` metric label or a log
    /// field: which part of the consent was wrong.
    pub fn reason(&self) -> &'static str {
        use ConsentError::*;
        match self {
            NotAnObject | Json(_) | DuplicateKey(_) | NotAString(_) | BadCategoriesKey => "malformed_object",
            MultipleForms(_) => "multiple_forms",
            NotBoolean(_) | BadCategoryName(_) | TooManyCategories => "invalid_category",
            UnknownKey { .. } => "unknown_key",
            TooManyKeys => "too_many_keys",
            GppUnsupported => "gpp_unsupported",
            TcfEmpty | TcfEmptySegment { .. } | TcfBase64 { .. } => "tcf_encoding",
            TcfCoreNotFirst(_) | TcfVersion(_) => "tcf_version",
            TcfTruncated { .. } => "tcf_truncated",
            TcfLetters(_)
            | TcfRangeOrder { .. }
            | TcfVendorIdZero { .. }
            | TcfVendorIdAboveMax { .. }
            | TcfRestrictionPurpose
            | TcfRestrictionType
            | TcfSegmentType { .. }
            | TcfDuplicateSegment(_)
            | TcfTooManySegments => "tcf_inconsistent",
            UsPrivacyLength(_) | UsPrivacyVersion(_) | UsPrivacyFlag { .. } => "us_privacy",
        }
    }
}

/// At most this many characters of client input are echoed in an error message.
const ECHO_MAX: usize = 64;

fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}
