//! Tests of `context.consent`: the three forms, malformed objects, the key cap and the linear
//! duplicate check, the reserved `categories` key, and the categories each form derives.
//!
//! Must not: re-test the string decoders field by field (`tcf.rs`, `usp.rs` do).

use serde_json::Value;

use super::{cats, fixture, fixtures, id_set, parse};
use crate::consent::members::first_duplicate;
use crate::consent::*;

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
        (format!(r#"{{"tcfString":"{tcf}","analytics":true}}"#), "tcfString and category booleans such as 'analytics'"),
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
    let c =
        parse(&format!(r#"{{"tcfString":"{tcf}","categories":{{"advertising":true,"analytics":false}}}}"#)).unwrap();
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
    let c = parse_consent(&format!(r#"{{"tcfString":"{}"}}"#, fixture("global_with_disclosed_vendors")), &m).unwrap();
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
    assert_eq!(c.categories_json(), r#"{"advertising":false,"analytics":true,"functional":true,"marketing":false}"#);
}
