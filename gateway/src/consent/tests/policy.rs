//! Tests of the per-source policy: defaults, strict config, validation, embedding in a TOML
//! source, and keep or drop.
//!
//! Must not: re-test the mapping's own checks (`context.rs` does).

use serde::Deserialize;

use crate::consent::*;

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
