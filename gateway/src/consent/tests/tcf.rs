//! Tests of the TC string decoder: every `@iabtcf/core` fixture reads as the reference decoder
//! reads it, hand-built strings field by field, broken, truncated and mutated strings, and the
//! bit reader against a bit-by-bit reference.
//!
//! Must not: depend on the category mapping (`context.rs` tests what a string grants).

use base64::Engine as _;
use serde_json::Value;

use super::{fixture, fixtures, id_set};
use crate::consent::bits::read_bits;
use crate::consent::tcf::{SEC_RESTRICTIONS, SEC_VENDOR_CONSENT, SEC_VENDOR_LI, SEG_CORE, SEG_PUBLISHER_TC};
use crate::consent::*;

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
                assert_eq!(tc.publisher_restriction(purpose, vendor), want, "{name}: restriction {purpose}/{vendor}");
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
