//! Consent at the edge: decodes `context.consent` (IAB TCF v2 TC strings, IAB US Privacy strings,
//! or pre-parsed category booleans), derives consent categories, and holds the per-source
//! consent policy (required categories, what to assume without consent, IP handling).
//!
//! Owns: the TC string bit layout (our own bit reader over `base64` output; no TCF crate is
//! needed for a read-only decoder of a fixed, public layout), the US Privacy grammar, the
//! default IAB purpose → category mapping, the three-forms rule of `context.consent`, the IP
//! truncation rule, and [`ConsentPolicy`] (a serde section a source's config can embed).
//! Must not: touch HTTP, the event body outside `context.consent`, metrics or the sink, and
//! depends on no other gateway module: the handler calls [`parse_consent`],
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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine as _};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

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

// ---------------------------------------------------------------------------------------------
// Bit reader
// ---------------------------------------------------------------------------------------------

/// Reads big-endian bit fields from `bytes[..]` between bit `pos` and bit `end`. Never panics:
/// every read is bounds-checked and reports the field it was reading.
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
    section: &'static str,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8], start_bit: usize, end_bit: usize, section: &'static str) -> Self {
        BitReader { bytes, pos: start_bit, end: end_bit.min(bytes.len() * 8), section }
    }

    fn truncated(&self, field: &'static str) -> ConsentError {
        ConsentError::TcfTruncated { section: self.section, field }
    }

    /// Reads `n` (≤ 64) bits as an unsigned integer, most significant bit first.
    #[inline]
    fn read(&mut self, n: usize, field: &'static str) -> Result<u64, ConsentError> {
        let stop = match self.pos.checked_add(n) {
            Some(stop) if stop <= self.end => stop,
            _ => return Err(self.truncated(field)),
        };
        // `end` ≤ the buffer's length in bits, so `load` reads real bits only.
        let v = if n <= 56 { load(self.bytes, self.pos, n) } else { read_bits(self.bytes, self.pos, n).unwrap_or(0) };
        self.pos = stop;
        Ok(v)
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, ConsentError> {
        Ok(self.read(1, field)? == 1)
    }

    fn u16(&mut self, n: usize, field: &'static str) -> Result<u16, ConsentError> {
        // n ≤ 16 at every call site, so the value fits.
        Ok(self.read(n, field)? as u16)
    }

    fn u8(&mut self, n: usize, field: &'static str) -> Result<u8, ConsentError> {
        Ok(self.read(n, field)? as u8)
    }

    /// Skips `n` bits that must all be present (a bit field).
    fn skip(&mut self, n: usize, field: &'static str) -> Result<(), ConsentError> {
        self.pos = self.pos.checked_add(n).filter(|&s| s <= self.end).ok_or_else(|| self.truncated(field))?;
        Ok(())
    }

    /// Two letters of 6 bits each, 0 = 'A' … 25 = 'Z'.
    fn letters(&mut self, field: &'static str) -> Result<[u8; 2], ConsentError> {
        let a = self.u8(6, field)?;
        let b = self.u8(6, field)?;
        if a > 25 || b > 25 {
            return Err(ConsentError::TcfLetters(field));
        }
        Ok([b'A' + a, b'A' + b])
    }
}

/// `n` (≤ 64) bits starting at bit `pos`, most significant first, or `None` past the end of
/// `bytes`.
fn read_bits(bytes: &[u8], pos: usize, n: usize) -> Option<u64> {
    if pos.checked_add(n)? > bytes.len() * 8 {
        return None;
    }
    if n > 56 {
        // One word covers at most 57 bits after a misaligned start: split long fields.
        let hi = load(bytes, pos, n - 32);
        let lo = load(bytes, pos + (n - 32), 32);
        return Some((hi << 32) | lo);
    }
    Some(load(bytes, pos, n))
}

/// `n` (≤ 56) bits at bit `pos`, bits past the end of `bytes` read as 0 (callers check the
/// length). Loads the 8 bytes around `pos` as one big-endian word: TC strings are read field by
/// field on every event, so this is the decoder's hot loop.
#[inline]
fn load(bytes: &[u8], pos: usize, n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    let first = pos / 8;
    let mut buf = [0u8; 8];
    match bytes.get(first..first + 8) {
        Some(chunk) => buf.copy_from_slice(chunk),
        None => {
            for (dst, src) in buf.iter_mut().zip(bytes.get(first..).unwrap_or_default()) {
                *dst = *src;
            }
        }
    }
    (u64::from_be_bytes(buf) << (pos % 8)) >> (64 - n)
}

fn bit_at(bytes: &[u8], pos: usize) -> bool {
    bytes.get(pos / 8).is_some_and(|b| (b >> (7 - pos % 8)) & 1 == 1)
}

/// Is bit `n` (1-based, first bit = 1) of a `width`-bit field set?
fn nth_flag(bits: u64, width: u8, n: u8) -> bool {
    n >= 1 && n <= width && (bits >> (width - n)) & 1 == 1
}

// ---------------------------------------------------------------------------------------------
// TC string
// ---------------------------------------------------------------------------------------------

/// How a vendor section lists its vendors (the encoder picks the shorter one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VendorEncoding {
    /// One bit per vendor id 1..=MaxVendorId.
    BitField,
    /// NumEntries entries, each a single id or a start–end run.
    Range,
}

/// A decoded vendor section: where its bits are in [`TcString`]'s buffer. Entries were
/// validated when the string was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VendorSection {
    max_vendor_id: u16,
    encoding: VendorEncoding,
    /// First bit of the bit field, or of the first range entry.
    start: usize,
    num_entries: u16,
}

/// A read-only view of one vendor section of a [`TcString`].
#[derive(Debug, Clone, Copy)]
pub struct VendorVector<'a> {
    bytes: &'a [u8],
    section: VendorSection,
}

impl VendorVector<'_> {
    /// MaxVendorId as written in the section header.
    pub fn max_vendor_id(&self) -> u16 {
        self.section.max_vendor_id
    }

    /// The encoding the string used for this section.
    pub fn encoding(&self) -> VendorEncoding {
        self.section.encoding
    }

    /// Is vendor `id` in the set? Ids 0 and above MaxVendorId are never in it.
    pub fn contains(&self, id: u16) -> bool {
        if id == 0 || id > self.section.max_vendor_id {
            return false;
        }
        match self.section.encoding {
            VendorEncoding::BitField => bit_at(self.bytes, self.section.start + usize::from(id) - 1),
            VendorEncoding::Range => range_entries(self.bytes, self.section.start, self.section.num_entries)
                .any(|(start, end)| (start..=end).contains(&id)),
        }
    }

    /// Every id in the set, ascending, without duplicates (allocates; not for the request path).
    pub fn ids(&self) -> Vec<u16> {
        (1..=self.section.max_vendor_id).filter(|&id| self.contains(id)).collect()
    }
}

/// Walks `count` already-validated range entries (IsARange 1, start 16, [end 16]) from bit `pos`.
fn range_entries(bytes: &[u8], pos: usize, count: u16) -> impl Iterator<Item = (u16, u16)> + '_ {
    let mut pos = pos;
    (0..count).map_while(move |_| {
        let is_range = read_bits(bytes, pos, 1)? == 1;
        let start = read_bits(bytes, pos + 1, 16)? as u16;
        pos += 17;
        let end = if is_range {
            let e = read_bits(bytes, pos, 16)? as u16;
            pos += 16;
            e
        } else {
            start
        };
        Some((start, end))
    })
}

/// A publisher restriction type (TCF v2 core segment, publisher restrictions section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestrictionType {
    /// 0: the purpose is flatly not allowed for the vendor.
    NotAllowed,
    /// 1: the vendor needs consent (instead of legitimate interest).
    RequireConsent,
    /// 2: the vendor must use legitimate interest (instead of consent).
    RequireLegitimateInterest,
}

/// The publisher TC segment (present in service-specific strings and strings for vendors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherTc {
    consents: u64,
    legitimate_interests: u64,
    num_custom_purposes: u8,
    custom_consents: u64,
    custom_legitimate_interests: u64,
}

impl PublisherTc {
    /// Publisher purpose `n` (1..=24) consented.
    pub fn purpose_consent(&self, n: u8) -> bool {
        nth_flag(self.consents, 24, n)
    }
    /// Publisher purpose `n` (1..=24) legitimate interest established.
    pub fn purpose_li(&self, n: u8) -> bool {
        nth_flag(self.legitimate_interests, 24, n)
    }
    /// NumCustomPurposes (0..=63).
    pub fn num_custom_purposes(&self) -> u8 {
        self.num_custom_purposes
    }
    /// Custom purpose `n` (1..=NumCustomPurposes) consented.
    pub fn custom_purpose_consent(&self, n: u8) -> bool {
        nth_flag(self.custom_consents, self.num_custom_purposes, n)
    }
    /// Custom purpose `n` (1..=NumCustomPurposes) legitimate interest established.
    pub fn custom_purpose_li(&self, n: u8) -> bool {
        nth_flag(self.custom_legitimate_interests, self.num_custom_purposes, n)
    }
}

/// A decoded IAB TCF v2 TC string. Small: the decoded bytes of all segments in one buffer, the
/// header fields, and bit offsets of the variable-length sections (read on lookup).
#[derive(Debug, Clone)]
pub struct TcString {
    bytes: Vec<u8>,
    version: u8,
    created_ds: u64,
    last_updated_ds: u64,
    cmp_id: u16,
    cmp_version: u16,
    consent_screen: u8,
    consent_language: [u8; 2],
    vendor_list_version: u16,
    policy_version: u8,
    is_service_specific: bool,
    use_non_standard_texts: bool,
    special_features: u64,
    purposes_consent: u64,
    purposes_li: u64,
    purpose_one_treatment: bool,
    publisher_cc: [u8; 2],
    vendor_consents: VendorSection,
    vendor_li: VendorSection,
    restrictions_start: usize,
    num_restrictions: u16,
    disclosed: Option<VendorSection>,
    allowed: Option<VendorSection>,
    publisher_tc: Option<PublisherTc>,
}

/// base64url as TC strings use it: no padding needed (tolerated), and the unused low bits of
/// the last character need not be zero (encoders pad the bit string, not the characters).
const TC_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const SEG_CORE: &str = "core segment";
const SEC_VENDOR_CONSENT: &str = "vendor consent section";
const SEC_VENDOR_LI: &str = "vendor legitimate interest section";
const SEC_RESTRICTIONS: &str = "publisher restrictions section";
const SEG_DISCLOSED: &str = "disclosed vendors segment";
const SEG_ALLOWED: &str = "allowed vendors segment";
const SEG_PUBLISHER_TC: &str = "publisher TC segment";

/// Decodes an IAB TCF v2 TC string (base64url segments separated by `.`; the core segment
/// first, then optional disclosed vendors, allowed vendors and publisher TC segments, each at
/// most once). Rejects empty, non-base64url, non-v2, truncated and inconsistent strings (range
/// end before start, vendor id 0 or above MaxVendorId, undefined restriction type, unknown or
/// repeated segment types) with a message naming the field.
pub fn decode_tc_string(s: &str) -> Result<TcString, ConsentError> {
    if s.is_empty() {
        return Err(ConsentError::TcfEmpty);
    }
    // One buffer for every segment: one allocation per string. The 8 spare zero bytes at the
    // end let every field read load a whole word (see `load`).
    let mut bytes = vec![0u8; base64::decoded_len_estimate(s.len()) + 8];
    let mut segments: [(usize, usize); 4] = [(0, 0); 4];
    let mut n_segments = 0usize;
    let mut filled = 0usize;
    for (i, seg) in s.split('.').enumerate() {
        let index = i + 1;
        if seg.is_empty() {
            return Err(ConsentError::TcfEmptySegment { segment: index });
        }
        let slot = segments.get_mut(i).ok_or(ConsentError::TcfTooManySegments)?;
        let out = bytes.get_mut(filled..).unwrap_or_default();
        let n = TC_BASE64.decode_slice(seg, out).map_err(|e| base64_error(index, e))?;
        *slot = (filled * 8, (filled + n) * 8);
        filled += n;
        n_segments = index;
    }
    bytes.truncate(filled + 8);

    let (core_start, core_end) = segments[0];
    let mut r = BitReader::new(&bytes, core_start, core_end, SEG_CORE);
    let first = read_bits(&bytes, core_start, 3).ok_or_else(|| r.truncated("Version"))? as u8;
    if first != 0 {
        return Err(ConsentError::TcfCoreNotFirst(first));
    }
    let version = r.u8(6, "Version")?;
    if version != 2 {
        return Err(ConsentError::TcfVersion(version));
    }
    let created_ds = r.read(36, "Created")?;
    let last_updated_ds = r.read(36, "LastUpdated")?;
    let cmp_id = r.u16(12, "CmpId")?;
    let cmp_version = r.u16(12, "CmpVersion")?;
    let consent_screen = r.u8(6, "ConsentScreen")?;
    let consent_language = r.letters("ConsentLanguage")?;
    let vendor_list_version = r.u16(12, "VendorListVersion")?;
    let policy_version = r.u8(6, "TcfPolicyVersion")?;
    let is_service_specific = r.flag("IsServiceSpecific")?;
    let use_non_standard_texts = r.flag("UseNonStandardTexts")?;
    let special_features = r.read(12, "SpecialFeatureOptIns")?;
    let purposes_consent = r.read(24, "PurposesConsent")?;
    let purposes_li = r.read(24, "PurposesLITransparency")?;
    let purpose_one_treatment = r.flag("PurposeOneTreatment")?;
    let publisher_cc = r.letters("PublisherCC")?;
    r.section = SEC_VENDOR_CONSENT;
    let vendor_consents = vendor_section(&mut r)?;
    r.section = SEC_VENDOR_LI;
    let vendor_li = vendor_section(&mut r)?;
    r.section = SEC_RESTRICTIONS;
    let (restrictions_start, num_restrictions) = restrictions_section(&mut r)?;
    // Bits after the restrictions are padding to a character/byte boundary: not checked, as
    // encoders pad differently (the IAB's own pads to 24 bits).

    let mut tc = TcString {
        version,
        created_ds,
        last_updated_ds,
        cmp_id,
        cmp_version,
        consent_screen,
        consent_language,
        vendor_list_version,
        policy_version,
        is_service_specific,
        use_non_standard_texts,
        special_features,
        purposes_consent,
        purposes_li,
        purpose_one_treatment,
        publisher_cc,
        vendor_consents,
        vendor_li,
        restrictions_start,
        num_restrictions,
        disclosed: None,
        allowed: None,
        publisher_tc: None,
        bytes: Vec::new(),
    };

    for (i, &(start, end)) in segments.iter().enumerate().take(n_segments).skip(1) {
        let segment_type = read_bits(&bytes, start, 3).unwrap_or(0) as u8;
        match segment_type {
            1 => {
                let mut r = BitReader::new(&bytes, start + 3, end, SEG_DISCLOSED);
                let v = vendor_section(&mut r)?;
                if tc.disclosed.replace(v).is_some() {
                    return Err(ConsentError::TcfDuplicateSegment("disclosed vendors"));
                }
            }
            2 => {
                let mut r = BitReader::new(&bytes, start + 3, end, SEG_ALLOWED);
                let v = vendor_section(&mut r)?;
                if tc.allowed.replace(v).is_some() {
                    return Err(ConsentError::TcfDuplicateSegment("allowed vendors"));
                }
            }
            3 => {
                let mut r = BitReader::new(&bytes, start + 3, end, SEG_PUBLISHER_TC);
                let consents = r.read(24, "PubPurposesConsent")?;
                let legitimate_interests = r.read(24, "PubPurposesLITransparency")?;
                let num_custom_purposes = r.u8(6, "NumCustomPurposes")?;
                let n = usize::from(num_custom_purposes);
                let custom_consents = r.read(n, "CustomPurposesConsent")?;
                let custom_legitimate_interests = r.read(n, "CustomPurposesLITransparency")?;
                let p = PublisherTc {
                    consents,
                    legitimate_interests,
                    num_custom_purposes,
                    custom_consents,
                    custom_legitimate_interests,
                };
                if tc.publisher_tc.replace(p).is_some() {
                    return Err(ConsentError::TcfDuplicateSegment("publisher TC"));
                }
            }
            other => return Err(ConsentError::TcfSegmentType { segment: i + 1, segment_type: other }),
        }
    }
    tc.bytes = bytes;
    Ok(tc)
}

fn base64_error(segment: usize, e: base64::DecodeSliceError) -> ConsentError {
    use base64::DecodeError as D;
    let detail = match e {
        base64::DecodeSliceError::DecodeError(D::InvalidByte(at, b)) => {
            format!("invalid character {:?} at offset {at}", char::from(b))
        }
        base64::DecodeSliceError::DecodeError(D::InvalidLength(len)) => format!("impossible length {len}"),
        base64::DecodeSliceError::DecodeError(D::InvalidLastSymbol(at, b)) => {
            format!("invalid last character {:?} at offset {at}", char::from(b))
        }
        base64::DecodeSliceError::DecodeError(D::InvalidPadding) => "invalid padding".to_owned(),
        // The buffer is sized by `decoded_len_estimate` of the whole string: cannot happen.
        base64::DecodeSliceError::OutputSliceTooSmall => "too long".to_owned(),
    };
    ConsentError::TcfBase64 { segment, detail }
}

/// MaxVendorId 16, IsRangeEncoding 1, then a bit field of MaxVendorId bits or NumEntries 12 and
/// the entries; validates every entry.
fn vendor_section(r: &mut BitReader<'_>) -> Result<VendorSection, ConsentError> {
    let max_vendor_id = r.u16(16, "MaxVendorId")?;
    if !r.flag("IsRangeEncoding")? {
        let start = r.pos;
        r.skip(usize::from(max_vendor_id), "BitField")?;
        return Ok(VendorSection { max_vendor_id, encoding: VendorEncoding::BitField, start, num_entries: 0 });
    }
    let num_entries = r.u16(12, "NumEntries")?;
    let start = r.pos;
    walk_entries(r, num_entries, max_vendor_id)?;
    Ok(VendorSection { max_vendor_id, encoding: VendorEncoding::Range, start, num_entries })
}

/// Checks `count` range entries (IsARange 1, StartOrOnlyVendorId 16, [EndVendorId 16]) from the
/// reader's position: ids from 1 to `max`, end ≥ start. One tight loop over local state: the
/// entries are the bulk of a range-encoded string (≈17 bits per consented vendor).
fn walk_entries(r: &mut BitReader<'_>, count: u16, max: u16) -> Result<(), ConsentError> {
    let (bytes, end) = (r.bytes, r.end);
    let mut pos = r.pos;
    for _ in 0..count {
        // pos ≤ end always holds, so the subtractions cannot underflow.
        if end - pos < 17 {
            return Err(r.truncated("StartOrOnlyVendorId"));
        }
        let head = load(bytes, pos, 17);
        pos += 17;
        let first = (head & 0xffff) as u16;
        let last = if head >> 16 == 1 {
            if end - pos < 16 {
                return Err(r.truncated("EndVendorId"));
            }
            let v = load(bytes, pos, 16) as u16;
            pos += 16;
            v
        } else {
            first
        };
        if first == 0 || last < first || last > max {
            return Err(entry_error(r.section, first, last, max));
        }
    }
    r.pos = pos;
    Ok(())
}

#[cold]
fn entry_error(section: &'static str, start: u16, end: u16, max: u16) -> ConsentError {
    if start == 0 {
        ConsentError::TcfVendorIdZero { section }
    } else if end < start {
        ConsentError::TcfRangeOrder { section, start, end }
    } else {
        ConsentError::TcfVendorIdAboveMax { section, id: end, max }
    }
}

/// NumPubRestrictions 12, then per restriction PurposeId 6, RestrictionType 2, NumEntries 12
/// and range entries. Returns where the first restriction starts and how many there are.
fn restrictions_section(r: &mut BitReader<'_>) -> Result<(usize, u16), ConsentError> {
    let count = r.u16(12, "NumPubRestrictions")?;
    let start = r.pos;
    for _ in 0..count {
        if r.u8(6, "PurposeId")? == 0 {
            return Err(ConsentError::TcfRestrictionPurpose);
        }
        if r.u8(2, "RestrictionType")? == 3 {
            return Err(ConsentError::TcfRestrictionType);
        }
        let entries = r.u16(12, "NumEntries")?;
        // Restrictions have no MaxVendorId: any id from 1 up.
        walk_entries(r, entries, u16::MAX)?;
    }
    Ok((start, count))
}

impl TcString {
    /// Encoding version (always 2: other versions are rejected).
    pub fn version(&self) -> u8 {
        self.version
    }
    /// Created, in deciseconds since the Unix epoch (as encoded).
    pub fn created_deciseconds(&self) -> u64 {
        self.created_ds
    }
    /// LastUpdated, in deciseconds since the Unix epoch (as encoded).
    pub fn last_updated_deciseconds(&self) -> u64 {
        self.last_updated_ds
    }
    /// Created, in milliseconds since the Unix epoch.
    pub fn created_unix_ms(&self) -> u64 {
        self.created_ds * 100
    }
    /// LastUpdated, in milliseconds since the Unix epoch.
    pub fn last_updated_unix_ms(&self) -> u64 {
        self.last_updated_ds * 100
    }
    /// The CMP's IAB id.
    pub fn cmp_id(&self) -> u16 {
        self.cmp_id
    }
    /// The CMP's own version number.
    pub fn cmp_version(&self) -> u16 {
        self.cmp_version
    }
    /// The CMP screen where consent was last given.
    pub fn consent_screen(&self) -> u8 {
        self.consent_screen
    }
    /// ISO 639-1 language of the consent UI, upper case (e.g. `EN`).
    pub fn consent_language(&self) -> &str {
        std::str::from_utf8(&self.consent_language).unwrap_or_default()
    }
    /// Global Vendor List version used.
    pub fn vendor_list_version(&self) -> u16 {
        self.vendor_list_version
    }
    /// TCF policy version.
    pub fn policy_version(&self) -> u8 {
        self.policy_version
    }
    /// Signals are service-specific (not global).
    pub fn is_service_specific(&self) -> bool {
        self.is_service_specific
    }
    /// The CMP used non-standard texts/stacks.
    pub fn use_non_standard_texts(&self) -> bool {
        self.use_non_standard_texts
    }
    /// Purpose one treatment: purpose 1 was not disclosed (publisher's jurisdiction).
    pub fn purpose_one_treatment(&self) -> bool {
        self.purpose_one_treatment
    }
    /// ISO 3166-1 alpha-2 country of the publisher, upper case (`AA` = unknown).
    pub fn publisher_cc(&self) -> &str {
        std::str::from_utf8(&self.publisher_cc).unwrap_or_default()
    }
    /// Purpose `n` (1..=24) consented. Out of range: false.
    pub fn purpose_consent(&self, n: u8) -> bool {
        nth_flag(self.purposes_consent, 24, n)
    }
    /// Purpose `n` (1..=24) legitimate interest transparency established. Out of range: false.
    pub fn purpose_li(&self, n: u8) -> bool {
        nth_flag(self.purposes_li, 24, n)
    }
    /// Special feature `n` (1..=12) opted in. Out of range: false.
    pub fn special_feature(&self, n: u8) -> bool {
        nth_flag(self.special_features, 12, n)
    }
    /// Vendor `id` has consent.
    pub fn vendor_consent(&self, id: u16) -> bool {
        self.vendor_consents().contains(id)
    }
    /// Vendor `id` has legitimate interest transparency established.
    pub fn vendor_li(&self, id: u16) -> bool {
        self.vendor_legitimate_interests().contains(id)
    }
    /// The vendor consent section.
    pub fn vendor_consents(&self) -> VendorVector<'_> {
        VendorVector { bytes: &self.bytes, section: self.vendor_consents }
    }
    /// The vendor legitimate interest section.
    pub fn vendor_legitimate_interests(&self) -> VendorVector<'_> {
        VendorVector { bytes: &self.bytes, section: self.vendor_li }
    }
    /// The disclosed vendors segment, when the string has one.
    pub fn vendors_disclosed(&self) -> Option<VendorVector<'_>> {
        self.disclosed.map(|section| VendorVector { bytes: &self.bytes, section })
    }
    /// The allowed vendors segment, when the string has one.
    pub fn vendors_allowed(&self) -> Option<VendorVector<'_>> {
        self.allowed.map(|section| VendorVector { bytes: &self.bytes, section })
    }
    /// The publisher TC segment, when the string has one.
    pub fn publisher_tc(&self) -> Option<&PublisherTc> {
        self.publisher_tc.as_ref()
    }
    /// NumPubRestrictions.
    pub fn num_publisher_restrictions(&self) -> u16 {
        self.num_restrictions
    }
    /// The publisher's restriction of `purpose` for `vendor`, if any (the first one listed).
    pub fn publisher_restriction(&self, purpose: u8, vendor: u16) -> Option<RestrictionType> {
        let mut pos = self.restrictions_start;
        for _ in 0..self.num_restrictions {
            let p = read_bits(&self.bytes, pos, 6)? as u8;
            let t = read_bits(&self.bytes, pos + 6, 2)?;
            let entries = read_bits(&self.bytes, pos + 8, 12)? as u16;
            pos += 20;
            let mut hit = false;
            for _ in 0..entries {
                let is_range = read_bits(&self.bytes, pos, 1)? == 1;
                let start = read_bits(&self.bytes, pos + 1, 16)? as u16;
                let end = if is_range { read_bits(&self.bytes, pos + 17, 16)? as u16 } else { start };
                pos += if is_range { 33 } else { 17 };
                hit |= (start..=end).contains(&vendor);
            }
            if hit && p == purpose {
                return match t {
                    0 => Some(RestrictionType::NotAllowed),
                    1 => Some(RestrictionType::RequireConsent),
                    2 => Some(RestrictionType::RequireLegitimateInterest),
                    _ => None, // rejected at decode
                };
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// US Privacy
// ---------------------------------------------------------------------------------------------

/// One US Privacy signal: `Y`, `N` or `-` (not applicable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsPrivacyFlag {
    Yes,
    No,
    NotApplicable,
}

impl UsPrivacyFlag {
    fn parse(c: char, field: &'static str) -> Result<Self, ConsentError> {
        match c {
            'Y' => Ok(UsPrivacyFlag::Yes),
            'N' => Ok(UsPrivacyFlag::No),
            '-' => Ok(UsPrivacyFlag::NotApplicable),
            found => Err(ConsentError::UsPrivacyFlag { field, found }),
        }
    }
}

/// A decoded IAB US Privacy (CCPA) string, e.g. `1YNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsPrivacy {
    /// Specification version (always 1: others are rejected).
    pub version: u8,
    /// Explicit notice / opportunity to opt out given.
    pub notice: UsPrivacyFlag,
    /// The user opted out of the sale of personal information.
    pub opt_out_sale: UsPrivacyFlag,
    /// The publisher is a signatory of the IAB Limited Service Provider Agreement.
    pub lspa: UsPrivacyFlag,
}

impl UsPrivacy {
    /// False for `1---`: CCPA does not apply to this user.
    pub fn is_applicable(&self) -> bool {
        !(self.notice == UsPrivacyFlag::NotApplicable
            && self.opt_out_sale == UsPrivacyFlag::NotApplicable
            && self.lspa == UsPrivacyFlag::NotApplicable)
    }

    /// The user opted out of sale (`Y` in the third position).
    pub fn opted_out_of_sale(&self) -> bool {
        self.opt_out_sale == UsPrivacyFlag::Yes
    }
}

/// Decodes a US Privacy string: exactly 4 characters, version `1`, then notice, opt-out of sale
/// and LSPA, each `Y`, `N` or `-` (upper case only, as the IAB specifies).
pub fn decode_us_privacy(s: &str) -> Result<UsPrivacy, ConsentError> {
    let mut chars = s.chars();
    let (Some(v), Some(n), Some(o), Some(l), None) =
        (chars.next(), chars.next(), chars.next(), chars.next(), chars.next())
    else {
        return Err(ConsentError::UsPrivacyLength(s.chars().count()));
    };
    if v != '1' {
        return Err(ConsentError::UsPrivacyVersion(v));
    }
    Ok(UsPrivacy {
        version: 1,
        notice: UsPrivacyFlag::parse(n, "notice (2nd character)")?,
        opt_out_sale: UsPrivacyFlag::parse(o, "opt-out of sale (3rd character)")?,
        lspa: UsPrivacyFlag::parse(l, "LSPA (4th character)")?,
    })
}

// ---------------------------------------------------------------------------------------------
// Categories and the purpose mapping
// ---------------------------------------------------------------------------------------------

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
type Names = Arc<[Box<str>]>;

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
    tcf_names: Names,
    /// Per TCF category (same order): its purposes, and the bits of the 24-bit PurposesConsent
    /// field that must all be set.
    tcf_rules: Vec<(Vec<u8>, u64)>,
    /// Categories a US Privacy string reports (the TCF names ∪ the sale names), sorted.
    usp_names: Names,
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
    fn tcf_granted(&self, purposes_consent: u64) -> u64 {
        self.tcf_rules
            .iter()
            .enumerate()
            .filter(|(_, (_, need))| purposes_consent & need == *need)
            .fold(0u64, |m, (i, _)| m | 1 << i)
    }

    /// Granted mask of the US Privacy categories.
    fn usp_granted(&self, opted_out_of_sale: bool) -> u64 {
        let all = if self.usp_names.len() >= 64 { u64::MAX } else { (1u64 << self.usp_names.len()) - 1 };
        if opted_out_of_sale {
            all & !self.usp_sale_mask
        } else {
            all
        }
    }
}

// ---------------------------------------------------------------------------------------------
// context.consent
// ---------------------------------------------------------------------------------------------

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

// A JSON object key or string, borrowed from the input when it has no escapes (decode's).
use crate::decode::Str as JsonStr;

/// At most this many members are kept of `context.consent` or its `categories` object: the
/// largest valid one is the categories form, [`MAX_CATEGORIES`] booleans and `categories`. The
/// keys are the client's choice, so the object is refused past it rather than looked at.
const MAX_MEMBERS: usize = MAX_CATEGORIES + 1;

/// Up to this many keys, the duplicate check compares each key with the earlier ones (cheaper
/// than hashing the few keys a consent object has); past it, a hash set keeps it linear.
const LINEAR_SCAN_MAX: usize = 16;

/// The members of a JSON object in order, values unparsed: the first [`MAX_MEMBERS`], and how
/// many there were in all (the rest are only skipped over, never stored).
struct Members<'a> {
    list: Vec<(Cow<'a, str>, &'a RawValue)>,
    total: usize,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(map.size_hint().unwrap_or(4).min(MAX_MEMBERS));
                while list.len() < MAX_MEMBERS {
                    let Some(JsonStr(k)) = map.next_key::<JsonStr<'de>>()? else { break };
                    let v: &'de RawValue = map.next_value()?;
                    list.push((k, v));
                }
                let mut total = list.len();
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(Members { list, total })
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_members(raw: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, ConsentError> {
    if !raw.trim_start().starts_with('{') {
        return Err(ConsentError::NotAnObject);
    }
    let members = serde_json::from_str::<Members<'_>>(raw).map_err(|e| ConsentError::Json(e.to_string()))?;
    if members.total > MAX_MEMBERS {
        return Err(ConsentError::TooManyKeys);
    }
    if let Some(k) = first_duplicate(members.list.iter().map(|(k, _)| k)) {
        return Err(ConsentError::DuplicateKey(echo(k)));
    }
    Ok(members.list)
}

/// The first key that occurs a second time. Linear in the number of keys: a client choosing
/// thousands of keys must cost what their bytes cost, not their count squared.
fn first_duplicate<T: Eq + Hash + Copy>(mut keys: impl ExactSizeIterator<Item = T> + Clone) -> Option<T> {
    if keys.len() <= LINEAR_SCAN_MAX {
        let earlier = keys.clone();
        return keys.enumerate().find(|&(i, k)| earlier.clone().take(i).any(|seen| seen == k)).map(|(_, k)| k);
    }
    let mut seen = HashSet::with_capacity(keys.len());
    keys.find(|&k| !seen.insert(k))
}

fn as_bool(v: &RawValue) -> Option<bool> {
    match v.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn as_string(v: &RawValue) -> Option<Cow<'_, str>> {
    let text = v.get();
    if !text.starts_with('"') {
        return None;
    }
    // serde_json already validated the string: without a backslash, its text between the
    // quotes is its value (saves a second scan of a long TC string).
    if !text.as_bytes().contains(&b'\\') {
        return text.get(1..text.len() - 1).map(Cow::Borrowed);
    }
    serde_json::from_str::<JsonStr<'_>>(text).ok().map(|s| s.0)
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

// ---------------------------------------------------------------------------------------------
// IP policy
// ---------------------------------------------------------------------------------------------

/// What to do with `context.ip` before publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpPolicy {
    /// Publish it unchanged.
    #[default]
    Keep,
    /// IPv4: zero the last octet (`203.0.113.42` → `203.0.113.0`). IPv6: zero the last 80 bits,
    /// keeping the /48 routing prefix (`2001:db8:abcd:12::1` → `2001:db8:abcd::`); an
    /// IPv4-mapped IPv6 address is truncated as IPv4 (`::ffff:1.2.3.4` → `::ffff:1.2.3.0`).
    /// Anything that does not parse as an IP is removed: never publish an address we could not
    /// truncate.
    Truncate,
    /// Drop `context.ip`.
    Remove,
}

impl IpPolicy {
    /// The value to publish as `context.ip`, or `None` to leave it out.
    pub fn apply<'a>(&self, ip: &'a str) -> Option<Cow<'a, str>> {
        match self {
            IpPolicy::Keep => Some(Cow::Borrowed(ip)),
            IpPolicy::Remove => None,
            IpPolicy::Truncate => truncate_ip(ip).map(Cow::Owned),
        }
    }
}

fn truncate_ip(ip: &str) -> Option<String> {
    let truncate_v4 = |a: Ipv4Addr| {
        let [a, b, c, _] = a.octets();
        Ipv4Addr::new(a, b, c, 0)
    };
    Some(match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => truncate_v4(a).to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => truncate_v4(v4).to_ipv6_mapped().to_string(),
            None => Ipv6Addr::from(u128::from(a) & !((1u128 << 80) - 1)).to_string(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Per-source policy
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURES: &str = include_str!("../../tests/fixtures/tcf/iabtcf-core.json");

    fn fixtures() -> Value {
        serde_json::from_str(FIXTURES).unwrap()
    }

    fn fixture(name: &str) -> String {
        let f = fixtures();
        let case = f["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap();
        case["tcString"].as_str().unwrap().to_owned()
    }

    fn id_set(v: &Value) -> Vec<u64> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
    }

    fn check_vector(name: &str, what: &str, expected: &Value, got: VendorVector<'_>) {
        let ids = id_set(&expected["ids"]);
        assert_eq!(u64::from(got.max_vendor_id()), expected["maxVendorId"].as_u64().unwrap(), "{name}: {what} max");
        let enc = match got.encoding() {
            VendorEncoding::BitField => "bitField",
            VendorEncoding::Range => "range",
        };
        assert_eq!(enc, expected["encoding"], "{name}: {what} encoding");
        // Every id up to MaxVendorId, and some beyond (never set).
        let max = got.max_vendor_id();
        for id in 0..=max.saturating_add(40) {
            assert_eq!(got.contains(id), ids.contains(&u64::from(id)), "{name}: {what} vendor {id}");
        }
        assert!(!got.contains(u16::MAX), "{name}: {what} vendor 65535");
        assert_eq!(got.ids().iter().map(|&i| u64::from(i)).collect::<Vec<_>>(), ids, "{name}: {what} ids()");
    }

    fn check_flags(name: &str, what: &str, expected: &Value, width: u8, get: impl Fn(u8) -> bool) {
        let ids = id_set(expected);
        for n in 0..=width + 2 {
            assert_eq!(get(n), ids.contains(&u64::from(n)), "{name}: {what} {n}");
        }
    }

    #[test]
    fn every_iabtcf_core_fixture_decodes_to_what_the_reference_decoder_reads() {
        let f = fixtures();
        let cases = f["cases"].as_array().unwrap();
        assert!(cases.len() >= 9, "fixture file lost cases");
        let mut encodings = std::collections::HashSet::new();
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let s = case["tcString"].as_str().unwrap();
            let e = &case["decoded"];
            let tc = decode_tc_string(s).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(u64::from(tc.version()), e["version"].as_u64().unwrap(), "{name}");
            assert_eq!(tc.created_deciseconds(), e["createdDeciseconds"].as_u64().unwrap(), "{name}: created");
            assert_eq!(tc.last_updated_deciseconds(), e["lastUpdatedDeciseconds"].as_u64().unwrap(), "{name}: updated");
            assert_eq!(tc.created_unix_ms(), e["createdDeciseconds"].as_u64().unwrap() * 100, "{name}");
            assert_eq!(u64::from(tc.cmp_id()), e["cmpId"].as_u64().unwrap(), "{name}: cmp id");
            assert_eq!(u64::from(tc.cmp_version()), e["cmpVersion"].as_u64().unwrap(), "{name}: cmp version");
            assert_eq!(u64::from(tc.consent_screen()), e["consentScreen"].as_u64().unwrap(), "{name}: screen");
            assert_eq!(tc.consent_language(), e["consentLanguage"], "{name}: language");
            assert_eq!(u64::from(tc.vendor_list_version()), e["vendorListVersion"].as_u64().unwrap(), "{name}: vlv");
            assert_eq!(u64::from(tc.policy_version()), e["policyVersion"].as_u64().unwrap(), "{name}: policy");
            assert_eq!(tc.is_service_specific(), e["isServiceSpecific"], "{name}: service specific");
            assert_eq!(tc.use_non_standard_texts(), e["useNonStandardStacks"], "{name}: non-standard");
            assert_eq!(tc.purpose_one_treatment(), e["purposeOneTreatment"], "{name}: p1t");
            assert_eq!(tc.publisher_cc(), e["publisherCountryCode"], "{name}: publisher cc");
            check_flags(name, "purpose consent", &e["purposeConsents"], 24, |n| tc.purpose_consent(n));
            check_flags(name, "purpose LI", &e["purposeLegitimateInterests"], 24, |n| tc.purpose_li(n));
            check_flags(name, "special feature", &e["specialFeatureOptins"], 12, |n| tc.special_feature(n));
            check_vector(name, "vendor consents", &e["vendorConsents"], tc.vendor_consents());
            check_vector(name, "vendor LI", &e["vendorLegitimateInterests"], tc.vendor_legitimate_interests());
            for id in id_set(&e["vendorConsents"]["ids"]) {
                assert!(tc.vendor_consent(id as u16), "{name}: vendor_consent({id})");
            }
            for id in id_set(&e["vendorLegitimateInterests"]["ids"]) {
                assert!(tc.vendor_li(id as u16), "{name}: vendor_li({id})");
            }
            encodings.insert(e["vendorConsents"]["encoding"].as_str().unwrap().to_owned());
            encodings.insert(e["vendorLegitimateInterests"]["encoding"].as_str().unwrap().to_owned());

            match &e["vendorsDisclosed"] {
                Value::Null => assert!(tc.vendors_disclosed().is_none(), "{name}"),
                d => check_vector(name, "disclosed", d, tc.vendors_disclosed().unwrap()),
            }
            match &e["vendorsAllowed"] {
                Value::Null => assert!(tc.vendors_allowed().is_none(), "{name}"),
                d => check_vector(name, "allowed", d, tc.vendors_allowed().unwrap()),
            }
            match &e["publisherTC"] {
                Value::Null => assert!(tc.publisher_tc().is_none(), "{name}"),
                p => {
                    let got = tc.publisher_tc().unwrap();
                    check_flags(name, "pub consent", &p["publisherConsents"], 24, |n| got.purpose_consent(n));
                    check_flags(name, "pub LI", &p["publisherLegitimateInterests"], 24, |n| got.purpose_li(n));
                    let ncp = p["numCustomPurposes"].as_u64().unwrap() as u8;
                    assert_eq!(got.num_custom_purposes(), ncp, "{name}");
                    check_flags(name, "custom consent", &p["publisherCustomConsents"], ncp, |n| {
                        got.custom_purpose_consent(n)
                    });
                    check_flags(name, "custom LI", &p["publisherCustomLegitimateInterests"], ncp, |n| {
                        got.custom_purpose_li(n)
                    });
                }
            }

            let restrictions = e["publisherRestrictions"].as_array().unwrap();
            assert_eq!(usize::from(tc.num_publisher_restrictions()), restrictions.len(), "{name}");
            for purpose in 0..=25u8 {
                for vendor in 0..=120u16 {
                    let want = restrictions
                        .iter()
                        .find(|r| {
                            r["purposeId"].as_u64() == Some(u64::from(purpose))
                                && id_set(&r["vendorIds"]).contains(&u64::from(vendor))
                        })
                        .map(|r| match r["restrictionType"].as_u64().unwrap() {
                            0 => RestrictionType::NotAllowed,
                            1 => RestrictionType::RequireConsent,
                            2 => RestrictionType::RequireLegitimateInterest,
                            t => panic!("type {t}"),
                        });
                    assert_eq!(
                        tc.publisher_restriction(purpose, vendor),
                        want,
                        "{name}: restriction {purpose}/{vendor}"
                    );
                }
            }
        }
        assert_eq!(encodings.len(), 2, "fixtures must cover both vendor encodings");
    }

    #[test]
    fn strings_the_reference_library_encodes_for_other_versions_are_rejected() {
        let f = fixtures();
        let v1 = f["rejected"].as_array().unwrap().iter().find(|c| c["name"] == "tcf_v1").unwrap();
        assert_eq!(decode_tc_string(v1["tcString"].as_str().unwrap()).unwrap_err(), ConsentError::TcfVersion(1));
    }

    // --- hand-built strings ------------------------------------------------------------------

    /// Test-only encoder: writes fields MSB first, then base64url without padding.
    #[derive(Default)]
    struct BitWriter {
        bits: Vec<bool>,
    }

    impl BitWriter {
        fn put(&mut self, v: u64, n: usize) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push(i < 64 && (v >> i) & 1 == 1);
            }
            self
        }
        fn letters(&mut self, s: &str) -> &mut Self {
            for b in s.bytes() {
                self.put(u64::from(b - b'A'), 6);
            }
            self
        }
        fn encode(&self) -> String {
            let mut bytes = vec![0u8; self.bits.len().div_ceil(8)];
            for (i, &b) in self.bits.iter().enumerate() {
                if b {
                    bytes[i / 8] |= 0x80 >> (i % 8);
                }
            }
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        }
    }

    /// The fixed core fields up to PublisherCC, with purposes `purposes` consented.
    fn core_header(version: u64, purposes: &[u8]) -> BitWriter {
        let mut w = BitWriter::default();
        let mut mask = 0u64;
        for &p in purposes {
            mask |= 1 << (24 - p);
        }
        w.put(version, 6)
            .put(16_000_000_000, 36)
            .put(16_000_000_123, 36)
            .put(300, 12)
            .put(2, 12)
            .put(1, 6)
            .letters("EN")
            .put(150, 12)
            .put(4, 6)
            .put(0, 1)
            .put(0, 1)
            .put(0b1000_0000_0000, 12)
            .put(mask, 24)
            .put(0, 24)
            .put(0, 1)
            .letters("DE");
        w
    }

    /// A valid string: consent range entries `entries` (max = `max`), empty LI, no restrictions.
    fn with_range(w: &mut BitWriter, max: u64, entries: &[(u64, Option<u64>)]) {
        w.put(max, 16).put(1, 1).put(entries.len() as u64, 12);
        for &(s, e) in entries {
            match e {
                Some(e) => w.put(1, 1).put(s, 16).put(e, 16),
                None => w.put(0, 1).put(s, 16),
            };
        }
    }

    fn empty_li_and_restrictions(w: &mut BitWriter) {
        w.put(0, 16).put(0, 1).put(0, 12);
    }

    #[test]
    fn a_hand_built_string_decodes_field_by_field() {
        let mut w = core_header(2, &[1, 8, 9, 10]);
        with_range(&mut w, 300, &[(5, None), (10, Some(20)), (300, None)]);
        // LI as a bit field of 4 vendors: 2 and 4.
        w.put(4, 16).put(0, 1).put(0b0101, 4);
        // One restriction: purpose 7, require consent, vendors 1-3.
        w.put(1, 12).put(7, 6).put(1, 2).put(1, 12).put(1, 1).put(1, 16).put(3, 16);
        let tc = decode_tc_string(&w.encode()).unwrap();
        assert_eq!(tc.created_deciseconds(), 16_000_000_000);
        assert_eq!(tc.last_updated_deciseconds(), 16_000_000_123);
        assert_eq!((tc.cmp_id(), tc.cmp_version(), tc.consent_screen()), (300, 2, 1));
        assert_eq!((tc.consent_language(), tc.publisher_cc()), ("EN", "DE"));
        assert_eq!((tc.vendor_list_version(), tc.policy_version()), (150, 4));
        assert!(tc.special_feature(1) && !tc.special_feature(2));
        assert!(tc.purpose_consent(1) && tc.purpose_consent(10) && !tc.purpose_consent(2));
        assert_eq!(tc.vendor_consents().ids(), [5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 300]);
        assert_eq!(tc.vendor_legitimate_interests().ids(), [2, 4]);
        assert_eq!(tc.publisher_restriction(7, 2), Some(RestrictionType::RequireConsent));
        assert_eq!(tc.publisher_restriction(7, 4), None);
        assert_eq!(tc.publisher_restriction(6, 2), None);
        // The same string with '=' padding is tolerated.
        let mut padded = w.encode();
        while padded.len() % 4 != 0 {
            padded.push('=');
        }
        assert_eq!(decode_tc_string(&padded).unwrap().vendor_consents().ids().len(), 13);
    }

    fn full_valid() -> BitWriter {
        let mut w = core_header(2, &[1]);
        with_range(&mut w, 50, &[(3, Some(9)), (50, None)]);
        empty_li_and_restrictions(&mut w);
        w
    }

    #[test]
    fn broken_strings_are_rejected_with_a_message_that_names_the_problem() {
        assert!(decode_tc_string(&full_valid().encode()).is_ok(), "the base of the broken strings must be valid");
        let typical = fixture("typical_100_vendors");

        assert_eq!(decode_tc_string("").unwrap_err(), ConsentError::TcfEmpty);
        // Bad base64: '+' and '/' are standard base64, not base64url; '!' is neither.
        for bad in [format!("{}+", &typical[..40]), format!("{}/abc", &typical[..40]), format!("CO!{typical}")] {
            let e = decode_tc_string(&bad).unwrap_err();
            assert!(matches!(e, ConsentError::TcfBase64 { segment: 1, .. }), "{bad}: {e}");
        }
        // Impossible base64 length (one dangling character).
        assert!(matches!(
            decode_tc_string("CPXxRfA").unwrap_err(),
            ConsentError::TcfBase64 { .. } | ConsentError::TcfTruncated { .. }
        ));
        assert!(matches!(decode_tc_string("C").unwrap_err(), ConsentError::TcfBase64 { .. }));
        // Empty segments.
        assert_eq!(decode_tc_string(&format!("{typical}.")).unwrap_err(), ConsentError::TcfEmptySegment { segment: 2 });
        assert_eq!(decode_tc_string(&format!(".{typical}")).unwrap_err(), ConsentError::TcfEmptySegment { segment: 1 });

        // Wrong version.
        let mut w = core_header(1, &[1]);
        with_range(&mut w, 50, &[(3, None)]);
        empty_li_and_restrictions(&mut w);
        assert_eq!(decode_tc_string(&w.encode()).unwrap_err(), ConsentError::TcfVersion(1));
        let mut w = core_header(3, &[1]);
        with_range(&mut w, 50, &[(3, None)]);
        empty_li_and_restrictions(&mut w);
        assert_eq!(decode_tc_string(&w.encode()).unwrap_err(), ConsentError::TcfVersion(3));
        // A string that starts with a non-core segment (type 1 = disclosed vendors).
        let mut w = BitWriter::default();
        w.put(1, 3).put(10, 16).put(0, 1).put(0x3ff, 10);
        assert_eq!(decode_tc_string(&w.encode()).unwrap_err(), ConsentError::TcfCoreNotFirst(1));

        // Truncated core: cut the typical string inside the header, then inside the bit field.
        let e = decode_tc_string(&typical[..20]).unwrap_err();
        assert!(matches!(e, ConsentError::TcfTruncated { section: SEG_CORE, .. }), "{e}");
        let e = decode_tc_string(&typical[..200]).unwrap_err();
        assert_eq!(e, ConsentError::TcfTruncated { section: SEC_VENDOR_CONSENT, field: "BitField" });
        assert!(e.to_string().contains("truncated"), "{e}");

        // Truncated vendor section: a range that promises 3 entries and has 2.
        let mut w = core_header(2, &[1]);
        w.put(50, 16).put(1, 1).put(3, 12).put(0, 1).put(4, 16).put(0, 1).put(5, 16);
        let e = decode_tc_string(&w.encode()).unwrap_err();
        assert!(matches!(e, ConsentError::TcfTruncated { section: SEC_VENDOR_CONSENT, .. }), "{e}");
        // Truncated LI section (consent section complete, LI header cut).
        let mut w = core_header(2, &[1]);
        with_range(&mut w, 50, &[(3, None)]);
        w.put(7, 10);
        let e = decode_tc_string(&w.encode()).unwrap_err();
        assert!(matches!(e, ConsentError::TcfTruncated { section: SEC_VENDOR_LI, field: "MaxVendorId" }), "{e}");
        // Missing publisher restrictions count.
        let mut w = core_header(2, &[1]);
        with_range(&mut w, 50, &[(3, None)]);
        w.put(0, 16).put(0, 1);
        let e = decode_tc_string(&w.encode()).unwrap_err();
        assert!(matches!(e, ConsentError::TcfTruncated { section: SEC_RESTRICTIONS, .. }), "{e}");

        // Range end < start.
        let mut w = core_header(2, &[1]);
        with_range(&mut w, 50, &[(9, Some(3))]);
        empty_li_and_restrictions(&mut w);
        assert_eq!(
            decode_tc_string(&w.encode()).unwrap_err(),
            ConsentError::TcfRangeOrder { section: SEC_VENDOR_CONSENT, start: 9, end: 3 }
        );
        // Vendor id 0, single and as a range start.
        for entry in [(0, None), (0, Some(4))] {
            let mut w = core_header(2, &[1]);
            with_range(&mut w, 50, &[entry]);
            empty_li_and_restrictions(&mut w);
            assert_eq!(
                decode_tc_string(&w.encode()).unwrap_err(),
                ConsentError::TcfVendorIdZero { section: SEC_VENDOR_CONSENT }
            );
        }
        // Vendor id above MaxVendorId, single and as a range end, in the LI section.
        for entry in [(51, None), (40, Some(51))] {
            let mut w = core_header(2, &[1]);
            with_range(&mut w, 50, &[(1, None)]);
            with_range(&mut w, 50, &[entry]);
            w.put(0, 12);
            assert_eq!(
                decode_tc_string(&w.encode()).unwrap_err(),
                ConsentError::TcfVendorIdAboveMax { section: SEC_VENDOR_LI, id: 51, max: 50 }
            );
        }
        // Restriction type 3 and purpose 0.
        for (purpose, rtype, want) in
            [(2, 3, ConsentError::TcfRestrictionType), (0, 1, ConsentError::TcfRestrictionPurpose)]
        {
            let mut w = core_header(2, &[1]);
            with_range(&mut w, 50, &[(1, None)]);
            w.put(0, 16).put(0, 1).put(1, 12).put(purpose, 6).put(rtype, 2).put(0, 12);
            assert_eq!(decode_tc_string(&w.encode()).unwrap_err(), want);
        }
        // Restriction range end < start.
        let mut w = core_header(2, &[1]);
        with_range(&mut w, 50, &[(1, None)]);
        w.put(0, 16).put(0, 1).put(1, 12).put(2, 6).put(1, 2).put(1, 12).put(1, 1).put(8, 16).put(7, 16);
        assert_eq!(
            decode_tc_string(&w.encode()).unwrap_err(),
            ConsentError::TcfRangeOrder { section: SEC_RESTRICTIONS, start: 8, end: 7 }
        );
        // Bad letters (26 is not A-Z).
        let mut w = BitWriter::default();
        w.put(2, 6).put(0, 36).put(0, 36).put(2, 12).put(0, 12).put(0, 6).put(26, 6).put(0, 6).put(0, 200);
        assert_eq!(decode_tc_string(&w.encode()).unwrap_err(), ConsentError::TcfLetters("ConsentLanguage"));

        // Segments: unknown type, a second core, duplicates, a truncated optional segment.
        let core = full_valid().encode();
        let seg = |t: u64| {
            let mut w = BitWriter::default();
            w.put(t, 3).put(2, 16).put(0, 1).put(0b11, 2);
            w.encode()
        };
        assert_eq!(
            decode_tc_string(&format!("{core}.{}", seg(5))).unwrap_err(),
            ConsentError::TcfSegmentType { segment: 2, segment_type: 5 }
        );
        assert_eq!(
            decode_tc_string(&format!("{core}.{}", seg(0))).unwrap_err(),
            ConsentError::TcfSegmentType { segment: 2, segment_type: 0 }
        );
        assert_eq!(
            decode_tc_string(&format!("{core}.{}.{}", seg(1), seg(1))).unwrap_err(),
            ConsentError::TcfDuplicateSegment("disclosed vendors")
        );
        let ok = decode_tc_string(&format!("{core}.{}.{}", seg(1), seg(2))).unwrap();
        assert_eq!(ok.vendors_disclosed().unwrap().ids(), [1, 2]);
        assert_eq!(ok.vendors_allowed().unwrap().ids(), [1, 2]);
        let mut w = BitWriter::default();
        w.put(3, 3).put(0, 20);
        assert!(matches!(
            decode_tc_string(&format!("{core}.{}", w.encode())).unwrap_err(),
            ConsentError::TcfTruncated { section: SEG_PUBLISHER_TC, .. }
        ));
        // More than four segments is at least one segment type too many.
        let e = decode_tc_string(&format!("{core}.{}.{}.{}.{}", seg(1), seg(2), seg(3), seg(1))).unwrap_err();
        assert_eq!(e, ConsentError::TcfTooManySegments);

        // Every error is an invalid_consent.
        assert_eq!(ConsentError::TcfEmpty.code(), "invalid_consent");
    }

    #[test]
    fn every_truncation_of_a_fixture_is_an_error_never_a_panic() {
        for case in fixtures()["cases"].as_array().unwrap() {
            let s = case["tcString"].as_str().unwrap();
            let core_len = s.split('.').next().unwrap().len();
            // Cutting whole bytes (4 characters = 3 bytes) off the end of the core always
            // loses real fields: the padding of @iabtcf/core is under 24 bits.
            for cut in 0..core_len.saturating_sub(4) {
                let r = decode_tc_string(&s[..cut]);
                assert!(r.is_err(), "{}: cut at {cut} decoded", case["name"]);
            }
        }
    }

    #[test]
    fn truncating_any_segment_of_a_fixture_is_an_error() {
        let mut multi = 0;
        for case in fixtures()["cases"].as_array().unwrap() {
            let s = case["tcString"].as_str().unwrap();
            let parts: Vec<&str> = s.split('.').collect();
            for k in 1..parts.len() {
                multi += 1;
                // @iabtcf/core pads each segment to 24 bits (4 characters): cutting 5 or more
                // characters always loses real fields.
                for cut in 1..parts[k].len().saturating_sub(4) {
                    let mut p = parts.clone();
                    p[k] = &parts[k][..cut];
                    let broken = p.join(".");
                    assert!(decode_tc_string(&broken).is_err(), "{}: segment {k} cut at {cut}", case["name"]);
                }
            }
        }
        assert!(multi >= 5, "fixtures must have optional segments");
    }

    #[test]
    fn mutated_strings_never_panic() {
        // Deterministic bit flips and character swaps over every fixture: the decoder may
        // accept or reject each, but must answer.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/!";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut ok, mut err) = (0, 0);
        for case in fixtures()["cases"].as_array().unwrap() {
            let s = case["tcString"].as_str().unwrap().as_bytes().to_vec();
            for _ in 0..400 {
                let mut m = s.clone();
                for _ in 0..1 + next() % 3 {
                    let i = (next() as usize) % m.len();
                    m[i] = alphabet[(next() as usize) % alphabet.len()];
                }
                if next() % 4 == 0 {
                    m.truncate((next() as usize) % m.len());
                }
                match decode_tc_string(std::str::from_utf8(&m).unwrap()) {
                    Ok(tc) => {
                        ok += 1;
                        // Lookups on whatever decoded must not panic either.
                        let max = tc.vendor_consents().max_vendor_id();
                        let _ = (tc.vendor_consent(max), tc.vendor_li(1), tc.publisher_restriction(1, 1));
                    }
                    Err(_) => err += 1,
                }
            }
        }
        assert!(ok > 0 && err > 0, "mutations should produce both outcomes ({ok} ok, {err} err)");
    }

    #[test]
    fn read_bits_matches_a_bit_by_bit_reference() {
        let bytes: Vec<u8> = (0u32..24).map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8).collect();
        let naive = |pos: usize, n: usize| -> Option<u64> {
            if pos + n > bytes.len() * 8 {
                return None;
            }
            Some((pos..pos + n).fold(0u64, |v, p| (v << 1) | u64::from((bytes[p / 8] >> (7 - p % 8)) & 1)))
        };
        for pos in 0..bytes.len() * 8 + 2 {
            for n in 0..=64 {
                assert_eq!(read_bits(&bytes, pos, n), naive(pos, n), "pos {pos} n {n}");
            }
        }
        assert_eq!(read_bits(&bytes, usize::MAX, 8), None);
    }

    // --- US Privacy --------------------------------------------------------------------------

    #[test]
    fn us_privacy_every_form() {
        use UsPrivacyFlag::*;
        let flags = [('Y', Yes), ('N', No), ('-', NotApplicable)];
        for (a, fa) in flags {
            for (b, fb) in flags {
                for (c, fc) in flags {
                    let s = format!("1{a}{b}{c}");
                    let up = decode_us_privacy(&s).unwrap();
                    assert_eq!((up.version, up.notice, up.opt_out_sale, up.lspa), (1, fa, fb, fc), "{s}");
                    assert_eq!(up.is_applicable(), s != "1---", "{s}");
                    assert_eq!(up.opted_out_of_sale(), b == 'Y', "{s}");
                }
            }
        }
        assert_eq!(decode_us_privacy("2YNN").unwrap_err(), ConsentError::UsPrivacyVersion('2'));
        assert_eq!(decode_us_privacy("1YN").unwrap_err(), ConsentError::UsPrivacyLength(3));
        assert_eq!(decode_us_privacy("1YNNN").unwrap_err(), ConsentError::UsPrivacyLength(5));
        assert_eq!(decode_us_privacy("").unwrap_err(), ConsentError::UsPrivacyLength(0));
        assert_eq!(
            decode_us_privacy("1YNé").unwrap_err(),
            ConsentError::UsPrivacyFlag { field: "LSPA (4th character)", found: 'é' }
        );
        assert!(matches!(decode_us_privacy("1ZNN").unwrap_err(), ConsentError::UsPrivacyFlag { found: 'Z', .. }));
        assert!(matches!(decode_us_privacy("1YxN").unwrap_err(), ConsentError::UsPrivacyFlag { found: 'x', .. }));
        assert!(matches!(decode_us_privacy("1yNN").unwrap_err(), ConsentError::UsPrivacyFlag { found: 'y', .. }));
        let msg = decode_us_privacy("1ZNN").unwrap_err().to_string();
        assert!(msg.contains("notice") && msg.contains('Z'), "{msg}");
    }

    // --- context.consent ---------------------------------------------------------------------

    fn parse(raw: &str) -> Result<Consent, ConsentError> {
        parse_consent(raw, &PurposeMapping::default())
    }

    fn cats(c: &Consent) -> Vec<(String, bool)> {
        c.categories().map(|(n, g)| (n.to_owned(), g)).collect()
    }

    #[test]
    fn the_three_forms_parse() {
        let tcf = fixture("bitfield_dense_core_only");
        let c = parse(&format!(r#"{{"tcfString":"{tcf}"}}"#)).unwrap();
        assert_eq!(c.form(), ConsentForm::Tcf);
        assert_eq!(c.tcf_string(), Some(tcf.as_str()));
        assert_eq!(c.tcf().unwrap().cmp_id(), 10);
        assert!(c.us_privacy_string().is_none());

        let c = parse(r#"{"usPrivacy":"1YYN"}"#).unwrap();
        assert_eq!(c.form(), ConsentForm::UsPrivacy);
        assert_eq!(c.us_privacy_string(), Some("1YYN"));
        assert!(c.us_privacy().unwrap().opted_out_of_sale());
        assert!(c.tcf_string().is_none());

        let c = parse(r#"{ "marketing": false, "analytics": true, "C0004": true }"#).unwrap();
        assert_eq!(c.form(), ConsentForm::Categories);
        assert_eq!(cats(&c), [("C0004".into(), true), ("analytics".into(), true), ("marketing".into(), false)]);
        assert!(c.tcf_string().is_none() && c.us_privacy_string().is_none());

        // Escapes in keys and strings are decoded.
        let c = parse(r#"{"usPrivacy":"\u0031NNN"}"#).unwrap();
        assert_eq!(c.us_privacy_string(), Some("1NNN"));
        // `{}`: pre-parsed, nothing granted.
        let c = parse("{}").unwrap();
        assert_eq!(c.form(), ConsentForm::Categories);
        assert_eq!(c.categories().len(), 0);
        assert!(!c.has_all(&["analytics".into()]) && c.has_all(&[]));
    }

    #[test]
    fn more_than_one_form_and_malformed_objects_are_invalid_consent() {
        let tcf = fixture("bitfield_dense_core_only");
        let cases: Vec<(String, &str)> = vec![
            (format!(r#"{{"tcfString":"{tcf}","usPrivacy":"1YNN"}}"#), "tcfString and usPrivacy"),
            (
                format!(r#"{{"tcfString":"{tcf}","analytics":true}}"#),
                "tcfString and category booleans such as 'analytics'",
            ),
            (r#"{"marketing":false,"usPrivacy":"1YNN"}"#.into(), "usPrivacy and category booleans such as 'marketing'"),
            (format!(r#"{{"tcfString":"{tcf}","usPrivacy":"1YNN","a":true}}"#), "tcfString and usPrivacy and category"),
        ];
        for (raw, want) in cases {
            let e = parse(&raw).unwrap_err();
            assert!(matches!(e, ConsentError::MultipleForms(_)), "{raw}: {e}");
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(e.code(), "invalid_consent");
            assert_eq!(e.reason(), "multiple_forms");
        }
        let bad: Vec<(&str, ConsentError)> = vec![
            (r#"{"analytics":"yes"}"#, ConsentError::NotBoolean("analytics".into())),
            (r#"{"analytics":1}"#, ConsentError::NotBoolean("analytics".into())),
            (r#"{"analytics":null}"#, ConsentError::NotBoolean("analytics".into())),
            (r#"{"analytics":true,"ads":{"x":true}}"#, ConsentError::NotBoolean("ads".into())),
            (r#"{"tcfString":42}"#, ConsentError::NotAString("tcfString")),
            (r#"{"usPrivacy":true}"#, ConsentError::NotAString("usPrivacy")),
            (
                r#"{"usPrivacy":"1YNN","addtlConsent":"1~"}"#,
                ConsentError::UnknownKey { key: "addtlConsent".into(), form: "usPrivacy" },
            ),
            (r#"{"usPrivacy":"1YNN","usPrivacy":"1NNN"}"#, ConsentError::DuplicateKey("usPrivacy".into())),
            (r#"{"a":true,"a":false}"#, ConsentError::DuplicateKey("a".into())),
            (r#"{"gppString":"DBABMA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"}"#, ConsentError::GppUnsupported),
            (r#"{"has space":true}"#, ConsentError::BadCategoryName("has space".into())),
            (r#"{"":true}"#, ConsentError::BadCategoryName(String::new())),
            (r#"{"usPrivacy":"1YNN","categories":[true]}"#, ConsentError::BadCategoriesKey),
            (r#"{"usPrivacy":"1YNN","categories":{"a":1}}"#, ConsentError::BadCategoriesKey),
            (r#"{"usPrivacy":"2YNN"}"#, ConsentError::UsPrivacyVersion('2')),
            (r#"{"tcfString":""}"#, ConsentError::TcfEmpty),
            ("null", ConsentError::NotAnObject),
            ("[]", ConsentError::NotAnObject),
            (r#""1YNN""#, ConsentError::NotAnObject),
        ];
        for (raw, want) in bad {
            assert_eq!(parse(raw).unwrap_err(), want, "{raw}");
        }
        assert!(matches!(parse(r#"{"analytics":tru}"#).unwrap_err(), ConsentError::Json(_)));
        let many: Vec<String> = (0..=MAX_CATEGORIES).map(|i| format!("\"c{i}\":true")).collect();
        assert_eq!(parse(&format!("{{{}}}", many.join(","))).unwrap_err(), ConsentError::TooManyCategories);
        // A long name is echoed shortened.
        let long = "x".repeat(500);
        let e = parse(&format!(r#"{{"{long}":true}}"#)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    /// `{"c0":true,…}` with the names `c{from}`…`c{to - 1}` and `extra` members after them.
    fn booleans(range: std::ops::Range<usize>, extra: &str) -> String {
        let mut members: Vec<String> = range.map(|i| format!("\"c{i}\":true")).collect();
        if !extra.is_empty() {
            members.push(extra.to_owned());
        }
        format!("{{{}}}", members.join(","))
    }

    /// Issue #21: an object of thousands of client-chosen keys is refused as `invalid_consent`
    /// (reason `too_many_keys`) without comparing its keys; up to the cap every valid object
    /// still parses and duplicates are still found. Asserted by reason and message, not by
    /// variant, so the test also runs against a build without the cap.
    #[test]
    fn ten_thousand_keys_are_refused_and_duplicates_still_found() {
        let tcf = fixture("typical_100_vendors");
        let others: Vec<String> = (0..10_000).map(|i| format!(r#""x{i}":"v""#)).collect();
        for (what, raw) in [
            ("10,000 category booleans", booleans(0..10_000, "")),
            ("tcfString and 10,000 other keys", format!(r#"{{"tcfString":"{tcf}",{}}}"#, others.join(","))),
            ("the cap plus one", booleans(0..MAX_CATEGORIES, r#""categories":{},"c64":true"#)),
        ] {
            let e = parse(&raw).unwrap_err();
            assert_eq!((e.code(), e.reason()), ("invalid_consent", "too_many_keys"), "{what}: {e}");
            assert_eq!(
                e.to_string(),
                "context.consent has more than 65 keys; a consent form has at most 64 categories and 'categories'"
            );
        }
        // Inside `categories`, every key is a category.
        let nested = format!(r#"{{"usPrivacy":"1YNN","categories":{}}}"#, booleans(0..10_000, ""));
        assert_eq!(parse(&nested).unwrap_err().to_string(), "context.consent has more than 64 categories");

        // The largest valid object: 64 categories and `categories`.
        let full = parse(&booleans(0..MAX_CATEGORIES, r#""categories":{"c1":false}"#)).unwrap();
        assert_eq!(full.categories().count(), MAX_CATEGORIES);
        assert!(full.categories().all(|(_, granted)| granted), "categories next to booleans is ignored");
        // Duplicates past the linear-scan size (hash set) and below it (scan), first and last.
        for (raw, twice) in [
            (booleans(0..MAX_CATEGORIES, r#""c0":false"#), "c0"),
            (booleans(0..MAX_CATEGORIES, r#""c63":true"#), "c63"),
            (booleans(0..3, r#""c2":true"#), "c2"),
            (booleans(0..16, r#""c15":true"#), "c15"),
        ] {
            assert_eq!(parse(&raw).unwrap_err(), ConsentError::DuplicateKey(twice.into()), "{raw}");
        }
    }

    thread_local! {
        static COMPARISONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A key that counts how often it is compared.
    #[derive(Clone, Copy, Debug)]
    struct Counted(u32);

    impl PartialEq for Counted {
        fn eq(&self, other: &Self) -> bool {
            COMPARISONS.with(|c| c.set(c.get() + 1));
            self.0 == other.0
        }
    }
    impl Eq for Counted {}
    impl std::hash::Hash for Counted {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    /// Issue #21: the duplicate check compares each key with a bounded number of others, so
    /// 10,000 keys cost ≈10,000 comparisons (all earlier keys would be ≈50 million).
    #[test]
    fn duplicate_check_is_linear_in_the_key_count() {
        let compared = |keys: &[Counted]| {
            COMPARISONS.with(|c| c.set(0));
            let dup = first_duplicate(keys.iter().copied()).map(|k| k.0);
            (dup, COMPARISONS.with(std::cell::Cell::get))
        };
        let n = 10_000;
        let distinct: Vec<Counted> = (0..n).map(Counted).collect();
        let (dup, comparisons) = compared(&distinct);
        assert_eq!(dup, None);
        assert!(comparisons <= 2 * n as usize, "{comparisons} comparisons for {n} distinct keys");
        let mut repeated = distinct.clone();
        repeated.push(Counted(n / 2));
        let (dup, comparisons) = compared(&repeated);
        assert_eq!(dup, Some(n / 2));
        assert!(comparisons <= 2 * n as usize, "{comparisons} comparisons for {n} keys and a duplicate");
        // The small case scans: a handful of keys, a handful of comparisons.
        let (dup, comparisons) = compared(&[Counted(1), Counted(2), Counted(3), Counted(2)]);
        assert_eq!((dup, comparisons), (Some(2), 5));
    }

    #[test]
    fn the_categories_key_the_gateway_writes_keeps_a_resent_event_valid() {
        let mapping = PurposeMapping::default();
        let tcf = fixture("typical_100_vendors");
        for raw in [
            format!(r#"{{"tcfString":"{tcf}"}}"#),
            r#"{"usPrivacy":"1YYN"}"#.to_owned(),
            r#"{"analytics":true,"marketing":false}"#.to_owned(),
            "{}".to_owned(),
        ] {
            let first = parse_consent(&raw, &mapping).unwrap();
            let written = first.consent_object_json();
            let v: Value = serde_json::from_str(&written).unwrap();
            assert_eq!(v["categories"], serde_json::from_str::<Value>(&first.categories_json()).unwrap());
            let again = parse_consent(&written, &mapping).unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(again.form(), first.form(), "{written}");
            assert_eq!(cats(&again), cats(&first), "{written}");
            assert_eq!(again.consent_object_json(), written);
        }
        // The client's own `categories` never overrides what the string says.
        let c = parse(&format!(r#"{{"tcfString":"{tcf}","categories":{{"advertising":true,"analytics":false}}}}"#))
            .unwrap();
        assert_eq!(c.granted("analytics"), Some(true));
        // Alone, `categories` is the pre-parsed form.
        let c = parse(r#"{"categories":{"analytics":true}}"#).unwrap();
        assert_eq!((c.form(), c.granted("analytics")), (ConsentForm::Categories, Some(true)));
    }

    #[test]
    fn tcf_categories_with_the_default_mapping_need_consent_not_legitimate_interest() {
        // bitfield_dense_core_only: consent 1,2,3,4,7,8,9,10; LI 2,7,8,9,10.
        let c = parse(&format!(r#"{{"tcfString":"{}"}}"#, fixture("bitfield_dense_core_only"))).unwrap();
        assert_eq!(
            cats(&c),
            [
                ("advertising".into(), true),
                ("analytics".into(), true),
                ("functional".into(), true),
                ("marketing".into(), true),
                ("personalisation".into(), false)
            ]
        );
        assert_eq!(c.header_value(), "advertising=1;analytics=1;functional=1;marketing=1;personalisation=0");
        assert_eq!(
            c.categories_json(),
            r#"{"advertising":true,"analytics":true,"functional":true,"marketing":true,"personalisation":false}"#
        );
        // service_specific_publisher_tc: consent 3,4,5,6,11 and LI 2,7 — LI does not count.
        let c = parse(&format!(r#"{{"tcfString":"{}"}}"#, fixture("service_specific_publisher_tc"))).unwrap();
        assert_eq!(c.header_value(), "advertising=0;analytics=0;functional=0;marketing=0;personalisation=1");
        // global_with_disclosed_vendors: consent 1,2,7,8,9,10 → marketing needs 3 and 4.
        let c = parse(&format!(r#"{{"tcfString":"{}"}}"#, fixture("global_with_disclosed_vendors"))).unwrap();
        assert_eq!(c.header_value(), "advertising=0;analytics=1;functional=1;marketing=0;personalisation=0");
        assert!(c.has_all(&["analytics".into(), "functional".into()]));
        assert!(!c.has_all(&["analytics".into(), "marketing".into()]));
        assert!(!c.has_all(&["unknown".into()]));
        // empty_vectors: nothing.
        let c = parse(&format!(r#"{{"tcfString":"{}"}}"#, fixture("empty_vectors"))).unwrap();
        assert!(c.categories().all(|(_, g)| !g));
        // The derivation agrees with the purposes for every fixture.
        let mapping = PurposeMapping::default();
        for case in fixtures()["cases"].as_array().unwrap() {
            let c = parse(&format!(r#"{{"tcfString":"{}"}}"#, case["tcString"].as_str().unwrap())).unwrap();
            let consented = id_set(&case["decoded"]["purposeConsents"]);
            for (name, granted) in c.categories() {
                let want = mapping.purposes(name).unwrap().iter().all(|p| consented.contains(&u64::from(*p)));
                assert_eq!(granted, want, "{}: {name}", case["name"]);
            }
        }
    }

    #[test]
    fn the_mapping_can_be_overridden_per_category() {
        let m: PurposeMapping = serde_json::from_str(
            r#"{"tcf":{"marketing":[1,2,3,4,7],"social":[1,9],"analytics":[]},"us_privacy_sale":["advertising","social"]}"#,
        )
        .unwrap();
        assert_eq!(m.purposes("marketing"), Some(&[1, 2, 3, 4, 7][..]));
        assert_eq!(m.purposes("functional"), Some(&[1][..]), "unmentioned categories keep their default");
        assert_eq!(m.purposes("social"), Some(&[1, 9][..]));
        // consent 1,2,7,8,9,10.
        let c =
            parse_consent(&format!(r#"{{"tcfString":"{}"}}"#, fixture("global_with_disclosed_vendors")), &m).unwrap();
        assert_eq!(
            c.header_value(),
            "advertising=0;analytics=1;functional=1;marketing=0;personalisation=0;social=1",
            "analytics = [] is always granted by a TC string"
        );
        let c = parse_consent(&format!(r#"{{"tcfString":"{}"}}"#, fixture("all_bits_set")), &m).unwrap();
        assert!(c.categories().all(|(_, g)| g));
        // US Privacy follows us_privacy_sale.
        let c = parse_consent(r#"{"usPrivacy":"1YYY"}"#, &m).unwrap();
        assert_eq!(c.header_value(), "advertising=0;analytics=1;functional=1;marketing=1;personalisation=1;social=0");

        let too_many: Vec<String> = (0..60).map(|i| format!("\"c{i}\":[1]")).collect();
        let too_many = format!(r#"{{"tcf":{{{}}}}}"#, too_many.join(","));
        for (bad, why) in [
            (too_many.as_str(), "more than 64 categories"),
            (r#"{"tcf":{"x":[0]}}"#, "purpose 0"),
            (r#"{"tcf":{"x":[25]}}"#, "purpose 25"),
            (r#"{"tcf":{"a b":[1]}}"#, "category name"),
            (r#"{"us_privacy_sale":["a;b"]}"#, "category name"),
            (r#"{"tfc":{}}"#, "unknown field"),
        ] {
            let e = serde_json::from_str::<PurposeMapping>(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn us_privacy_categories() {
        let want_all = "advertising=1;analytics=1;functional=1;marketing=1;personalisation=1";
        for (s, header) in [
            ("1YYN", "advertising=0;analytics=1;functional=1;marketing=0;personalisation=1"),
            ("1NYY", "advertising=0;analytics=1;functional=1;marketing=0;personalisation=1"),
            ("1YNN", want_all),
            ("1N-N", want_all),
            ("1---", want_all),
        ] {
            let c = parse(&format!(r#"{{"usPrivacy":"{s}"}}"#)).unwrap();
            assert_eq!(c.header_value(), header, "{s}");
        }
    }

    #[test]
    fn pre_parsed_categories_are_what_the_client_said() {
        let c = parse(r#"{"analytics":true,"marketing":false,"advertising":false,"functional":true}"#).unwrap();
        assert_eq!(c.header_value(), "advertising=0;analytics=1;functional=1;marketing=0");
        assert_eq!(c.granted("personalisation"), None);
        assert!(c.has_all(&["analytics".into(), "functional".into()]));
        assert!(!c.has_all(&["analytics".into(), "personalisation".into()]), "missing means not granted");
        assert_eq!(
            c.categories_json(),
            r#"{"advertising":false,"analytics":true,"functional":true,"marketing":false}"#
        );
    }

    // --- IP policy ---------------------------------------------------------------------------

    #[test]
    fn ip_policy() {
        let t = |ip: &str| IpPolicy::Truncate.apply(ip).map(Cow::into_owned);
        assert_eq!(t("203.0.113.42").as_deref(), Some("203.0.113.0"));
        assert_eq!(t("10.0.0.255").as_deref(), Some("10.0.0.0"));
        assert_eq!(t("2001:db8:abcd:12:34:56:78:9a").as_deref(), Some("2001:db8:abcd::"));
        assert_eq!(t("2001:db8:abcd:ffff::1").as_deref(), Some("2001:db8:abcd::"));
        assert_eq!(t("::1").as_deref(), Some("::"));
        assert_eq!(t("::ffff:198.51.100.7").as_deref(), Some("::ffff:198.51.100.0"));
        for garbage in
            ["", "garbage", "1.2.3", "1.2.3.4.5", "256.1.1.1", "[::1]", "1.2.3.4:80", "fe80::1%eth0", " 1.2.3.4"]
        {
            assert_eq!(t(garbage), None, "{garbage:?}");
        }
        assert_eq!(IpPolicy::Keep.apply("203.0.113.42").as_deref(), Some("203.0.113.42"));
        assert_eq!(IpPolicy::Keep.apply("garbage").as_deref(), Some("garbage"));
        assert_eq!(IpPolicy::Remove.apply("203.0.113.42"), None);
        assert_eq!(IpPolicy::Remove.apply("::1"), None);
    }

    // --- policy ------------------------------------------------------------------------------

    #[test]
    fn policy_config_defaults_and_strictness() {
        let p: ConsentPolicy = serde_json::from_str("{}").unwrap();
        assert!(p.required.is_empty());
        assert_eq!(p.ip, IpPolicy::Keep);
        assert!(p.default_categories.is_none());
        let mut known = KNOWN_CATEGORIES.to_vec();
        known.sort_unstable();
        assert_eq!(p.mapping.category_names().collect::<Vec<_>>(), known);
        // The documented default mapping (module doc table).
        for (category, purposes) in [
            ("functional", &[1u8][..]),
            ("analytics", &[8, 9, 10][..]),
            ("personalisation", &[5, 6, 11][..]),
            ("advertising", &[2, 3, 4, 7][..]),
            ("marketing", &[2, 3, 4][..]),
        ] {
            assert_eq!(p.mapping.purposes(category), Some(purposes), "{category}");
        }
        assert_eq!(
            p.mapping.category_names().collect::<Vec<_>>(),
            ["advertising", "analytics", "functional", "marketing", "personalisation"]
        );
        let d = ConsentPolicy::default();
        assert_eq!((d.required.len(), d.ip, d.default_categories.is_none()), (0, IpPolicy::Keep, true));

        let p: ConsentPolicy = serde_json::from_str(
            r#"{"required":["analytics"],"ip":"truncate","default_categories":{"functional":true},"mapping":{"tcf":{"analytics":[8]}}}"#,
        )
        .unwrap();
        assert_eq!(p.ip, IpPolicy::Truncate);
        assert_eq!(p.mapping.purposes("analytics"), Some(&[8][..]));
        assert!(serde_json::from_str::<ConsentPolicy>(r#"{"requried":[]}"#)
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        assert!(serde_json::from_str::<ConsentPolicy>(r#"{"ip":"mask"}"#).is_err());

        let mut problems = Vec::new();
        p.validate("sources[0].consent", &mut |m| problems.push(m));
        assert!(problems.is_empty(), "{problems:?}");
        let p: ConsentPolicy =
            serde_json::from_str(r#"{"required":["analytcs","bad name"],"default_categories":{"x y":true}}"#).unwrap();
        p.validate("sources[0].consent", &mut |m| problems.push(m));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("sources[0].consent.required: 'analytcs' is not a mapped category"),
            "{problems:?}"
        );
    }

    #[test]
    fn policy_embeds_in_a_toml_source() {
        // What a source's config section looks like (toml is a gateway dependency already).
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Source {
            #[allow(dead_code)]
            name: String,
            #[serde(default)]
            consent: ConsentPolicy,
        }
        let src: Source = toml::from_str(
            r#"
            name = "web"
            [consent]
            required = ["analytics", "social"]
            ip = "remove"
            default_categories = { functional = true }
            [consent.mapping]
            us_privacy_sale = ["advertising", "marketing", "social"]
            [consent.mapping.tcf]
            marketing = [1, 2, 3, 4]
            social = [1, 9]
            "#,
        )
        .unwrap();
        let p = src.consent;
        assert_eq!((p.ip, p.required.len()), (IpPolicy::Remove, 2));
        assert_eq!(p.mapping.purposes("marketing"), Some(&[1, 2, 3, 4][..]));
        assert_eq!(p.mapping.purposes("analytics"), Some(&[8, 9, 10][..]));
        assert_eq!(p.default_categories.as_ref().and_then(|d| d.get("functional")), Some(&true));
        let mut problems = Vec::new();
        p.validate("sources[0].consent", &mut |m| problems.push(m));
        assert!(problems.is_empty(), "{problems:?}");
        let plain: Source = toml::from_str(r#"name = "server""#).unwrap();
        assert!(plain.consent.required.is_empty() && plain.consent.ip == IpPolicy::Keep);
        assert!(toml::from_str::<Source>("name = \"x\"\n[consent]\nip = \"hash\"").is_err());
    }

    #[test]
    fn evaluate_keeps_or_drops() {
        let mapping = PurposeMapping::default();
        let policy = |json: &str| serde_json::from_str::<ConsentPolicy>(json).unwrap();
        let granted = parse_consent(r#"{"analytics":true,"functional":true}"#, &mapping).unwrap();
        let denied = parse_consent(r#"{"analytics":false,"functional":true}"#, &mapping).unwrap();
        let opted_out = parse_consent(r#"{"usPrivacy":"1YYN"}"#, &mapping).unwrap();

        let open = policy("{}");
        for c in [Some(&granted), Some(&denied), None] {
            assert_eq!(open.evaluate(c), Decision::Keep);
        }
        let analytics = policy(r#"{"required":["analytics"]}"#);
        assert_eq!(analytics.evaluate(Some(&granted)), Decision::Keep);
        assert_eq!(analytics.evaluate(Some(&denied)), Decision::Drop);
        assert_eq!(analytics.evaluate(Some(&opted_out)), Decision::Keep);
        assert_eq!(analytics.evaluate(None), Decision::Keep, "no default_categories: all granted");
        let ads = policy(r#"{"required":["advertising"]}"#);
        assert_eq!(ads.evaluate(Some(&opted_out)), Decision::Drop);
        assert_eq!(ads.evaluate(Some(&granted)), Decision::Drop, "not mentioned: not granted");

        let strict = policy(r#"{"required":["analytics"],"default_categories":{"functional":true}}"#);
        assert_eq!(strict.evaluate(None), Decision::Drop);
        assert_eq!(strict.evaluate(Some(&granted)), Decision::Keep);
        let lenient = policy(r#"{"required":["analytics"],"default_categories":{"analytics":true}}"#);
        assert_eq!(lenient.evaluate(None), Decision::Keep);
        let off = policy(r#"{"required":["analytics"],"default_categories":{"analytics":false}}"#);
        assert_eq!(off.evaluate(None), Decision::Drop);
    }

    #[test]
    fn reasons_are_bounded_snake_case() {
        let errs = [
            parse("[]").unwrap_err(),
            parse(r#"{"a":1}"#).unwrap_err(),
            decode_tc_string("").unwrap_err(),
            decode_us_privacy("2YNN").unwrap_err(),
        ];
        for e in errs {
            assert!(e.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", e.reason());
            assert_eq!(e.code(), "invalid_consent");
        }
    }
}
