//! The TC string: decodes an IAB TCF v2 TC string (the core segment, then optional disclosed
//! vendors, allowed vendors and publisher TC segments) into a small [`TcString`] whose vendor
//! sections and publisher restrictions are read on lookup.
//!
//! Owns: the TC string bit layout, its validation (a message naming the field for every
//! refusal) and the lookups on a decoded string. Must not: map purposes to categories
//! (`categories` does), look at `context.consent` (`context` does), or read bits other than
//! through `bits`.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine as _};

use super::bits::{bit_at, load, nth_flag, read_bits, BitReader};
use super::ConsentError;

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
    pub(super) purposes_consent: u64,
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

pub(super) const SEG_CORE: &str = "core segment";
pub(super) const SEC_VENDOR_CONSENT: &str = "vendor consent section";
pub(super) const SEC_VENDOR_LI: &str = "vendor legitimate interest section";
pub(super) const SEC_RESTRICTIONS: &str = "publisher restrictions section";
const SEG_DISCLOSED: &str = "disclosed vendors segment";
const SEG_ALLOWED: &str = "allowed vendors segment";
pub(super) const SEG_PUBLISHER_TC: &str = "publisher TC segment";

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
