//! Tests of checking one event: policies as config gives them, every policy combination,
//! `omit` and what it cannot fix, versions, and what each call type is checked against.
//! Must not: test the parser or loading for their own sake (see `tape` and `plans`).

use serde_json::{json, Value};

use super::*;
use crate::validate::check::{unplanned_keys, without_keys, MAX_MESSAGE_CHARS};
use crate::validate::keys::KeySet;
use crate::validate::{UnplannedEvents, UnplannedProperties, Violations, MAX_REPORTED_VIOLATIONS};

// ---- policies ---------------------------------------------------------------------------

#[test]
fn policies_parse_with_defaults_and_refuse_unknowns() {
    let p: Policies = toml::from_str("").unwrap();
    assert_eq!(p, Policies::default());
    assert_eq!(
        (p.unplanned_events, p.unplanned_properties, p.violations),
        (UnplannedEvents::Allow, UnplannedProperties::Allow, Violations::Allow)
    );
    let p = pol("block", "omit", "omit");
    assert_eq!(
        (p.unplanned_events, p.unplanned_properties, p.violations),
        (UnplannedEvents::Block, UnplannedProperties::Omit, Violations::Omit)
    );
    let p: Policies = toml::from_str("violations = \"block\"").unwrap();
    assert_eq!(p.violations, Violations::Block);
    assert_eq!(p.unplanned_events, UnplannedEvents::Allow);
    assert!(toml::from_str::<Policies>("violations = \"Block\"").is_err(), "values are lowercase");
    assert!(toml::from_str::<Policies>("violations = \"drop\"").is_err());
    assert!(toml::from_str::<Policies>("unplanned_event = \"block\"").is_err(), "unknown key");
    assert!(toml::from_str::<Policies>("unplanned_properties = \"block\"").is_err());
    assert!(toml::from_str::<Policies>("unplanned_events = \"omit\"").is_err());
}

// ---- the policy matrix ------------------------------------------------------------------

/// All 12 combinations on three events: a clean one, an unplanned one, and a planned one
/// with an unplanned property (`note`) and a fixable violation (`coupon` is a number).
#[test]
fn every_policy_combination() {
    let plan = shop();
    let clean = track("Order Completed", json!({"order_id": "o-1", "total": 12.5}));
    let unplanned = track("Banner Clicked", json!({"x": 1}));
    let mixed =
        track("Order Completed", json!({"order_id": "o-1", "total": 12, "coupon": 7, "note": "hi", "currency": "EUR"}));
    let mut seen = 0;
    for events in ["allow", "block"] {
        for props in ["allow", "omit"] {
            for violations in ["allow", "block", "omit"] {
                seen += 1;
                let tag = format!("{events}/{props}/{violations}");
                let p = (events, props, violations);

                assert_eq!(check(&plan, p, &clean), Verdict::Pass, "{tag}: clean");

                let v = check(&plan, p, &unplanned);
                if events == "allow" {
                    assert_eq!(v, Verdict::Pass, "{tag}: unplanned, allowed and not reported");
                } else {
                    let expected = Violation {
                        pointer: "/event".into(),
                        keyword: "unplanned_event".into(),
                        message: "event 'Banner Clicked' is not in tracking plan 'shop'".into(),
                    };
                    assert_eq!(v, Verdict::Block { violations: vec![expected] }, "{tag}: unplanned");
                }

                let v = check(&plan, p, &mixed);
                let mut expected = Vec::new();
                if props == "omit" {
                    expected.push(("/properties/note", "unplanned_property"));
                }
                expected.push(("/properties/coupon", "type"));
                assert_eq!(pointers(v.violations()), expected, "{tag}: reported");
                let kept = |keys: &[&str]| {
                    let all = json!({"order_id": "o-1", "total": 12, "coupon": 7, "note": "hi", "currency": "EUR"});
                    let props: serde_json::Map<String, Value> = all
                        .as_object()
                        .unwrap()
                        .iter()
                        .filter(|(k, _)| keys.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    track("Order Completed", Value::Object(props))
                };
                match (props, violations) {
                    (_, "block") => assert!(is_block(&v), "{tag}: {v:?}"),
                    ("allow", "allow") => {
                        assert!(matches!(v, Verdict::Publish { payload: None, .. }), "{tag}: {v:?}")
                    }
                    ("omit", "allow") => {
                        assert_eq!(payload(&v), kept(&["order_id", "total", "coupon", "currency"]), "{tag}")
                    }
                    ("allow", "omit") => {
                        assert_eq!(payload(&v), kept(&["order_id", "total", "note", "currency"]), "{tag}")
                    }
                    ("omit", "omit") => assert_eq!(payload(&v), kept(&["order_id", "total", "currency"]), "{tag}"),
                    _ => unreachable!(),
                }
            }
        }
    }
    assert_eq!(seen, 12);
}

#[test]
fn omit_blocks_what_omitting_cannot_fix() {
    let plan = shop();
    let omit = ("allow", "allow", "omit");
    // A missing required property: there is nothing to remove.
    let v = check(&plan, omit, &track("Order Completed", json!({"order_id": "o-1"})));
    assert_eq!(
        v,
        Verdict::Block {
            violations: vec![Violation {
                pointer: "/properties/total".into(),
                keyword: "required".into(),
                message: "\"total\" is a required property".into(),
            }]
        }
    );
    // Removing the bad `total` would make the event miss a required property: blocked, and
    // the re-validation's finding is reported too.
    let v = check(&plan, omit, &track("Order Completed", json!({"order_id": "o-1", "total": "12"})));
    assert!(is_block(&v), "{v:?}");
    assert_eq!(pointers(v.violations()), [("/properties/total", "type"), ("/properties/total", "required")]);
    // A common-schema violation outside the payload.
    let mut no_library = track("Order Completed", json!({"order_id": "o-1", "total": 1, "coupon": 5}));
    no_library["context"] = json!({"locale": "en-US"});
    let v = check(&plan, omit, &no_library);
    assert!(is_block(&v), "{v:?}");
    assert_eq!(pointers(v.violations()), [("/context/library", "required"), ("/properties/coupon", "type")]);
    // …which `allow` publishes unchanged, reporting it.
    let v = check(&plan, ALLOW, &no_library);
    assert!(matches!(&v, Verdict::Publish { payload: None, .. }), "{v:?}");
    assert_eq!(pointers(v.violations()), [("/context/library", "required"), ("/properties/coupon", "type")]);
    // A violation deep inside a top-level property removes that property.
    let nested = track(
        "Order Completed",
        json!({"order_id": "o-1", "total": 3, "products": [{"product_id": "p"}, {"quantity": 0}]}),
    );
    let v = check(&plan, omit, &nested);
    assert_eq!(
        pointers(v.violations()),
        [("/properties/products/1/product_id", "required"), ("/properties/products/1/quantity", "minimum")]
    );
    assert_eq!(payload(&v), track("Order Completed", json!({"order_id": "o-1", "total": 3})));
}

#[test]
fn omit_keeps_every_other_byte() {
    let plan = shop();
    let text = r#"{"type":"track","event":"Order Completed","properties":{ "order_id" : "o-1",  "coupon":7, "total":1.50,"note":{"a":[1, 2]}, "currency":"EUR" },"context":{"library":{"name":"x"}},"z": [ 1 ]}"#;
    let v = plan.check(&pol("allow", "omit", "omit"), text.as_bytes()).unwrap();
    let Verdict::Publish { payload: Some(p), .. } = v else { panic!("{v:?}") };
    assert_eq!(
        String::from_utf8(p).unwrap(),
        r#"{"type":"track","event":"Order Completed","properties":{"order_id":"o-1","total":1.50,"currency":"EUR"},"context":{"library":{"name":"x"}},"z": [ 1 ]}"#
    );
    // A key spelled with an escape is the same key.
    let text = r#"{"type":"track","event":"Order Completed","properties":{"order_id":"o-1","total":1,"no\u0074e":1},"context":{"library":{"name":"x"}}}"#;
    let v = plan.check(&pol("allow", "omit", "allow"), text.as_bytes()).unwrap();
    assert_eq!(pointers(v.violations()), [("/properties/note", "unplanned_property")]);
    assert_eq!(payload(&v)["properties"], json!({"order_id": "o-1", "total": 1}));
}

#[test]
fn additional_properties_false_is_a_violation_unless_omitted_as_unplanned() {
    let plan = shop();
    let event = track("Signed Up", json!({"plan": "pro", "referrer": "ad", "x/y~z": 1}));
    let v = check(&plan, ("allow", "allow", "block"), &event);
    assert_eq!(
        v,
        Verdict::Block {
            violations: vec![
                Violation {
                    pointer: "/properties/referrer".into(),
                    keyword: "additionalProperties".into(),
                    message: "additional property 'referrer' is not allowed".into()
                },
                Violation {
                    pointer: "/properties/x~1y~0z".into(),
                    keyword: "additionalProperties".into(),
                    message: "additional property 'x/y~z' is not allowed".into()
                },
            ]
        }
    );
    // Omitted as unplanned first: no schema violation is left.
    let v = check(&plan, ("allow", "omit", "block"), &event);
    assert_eq!(
        pointers(v.violations()),
        [("/properties/referrer", "unplanned_property"), ("/properties/x~1y~0z", "unplanned_property")]
    );
    assert_eq!(payload(&v)["properties"], json!({"plan": "pro"}));
    // Or as violations.
    let v = check(&plan, ("allow", "allow", "omit"), &event);
    assert_eq!(payload(&v)["properties"], json!({"plan": "pro"}));
    assert_eq!(v.violations().len(), 2);
}

/// A `Signed Up` event whose properties are `plan` and then `extra` (raw JSON members, so
/// that keys can repeat).
fn signed_up_text(extra: &str) -> String {
    let mut event = track("Signed Up", json!({"plan": "pro"}));
    event["properties"] = json!("PROPERTIES");
    let text = serde_json::to_string(&event).unwrap();
    text.replace(r#""PROPERTIES""#, &format!(r#"{{"plan":"pro",{extra}}}"#))
}

/// Issue #21: 10,000 undeclared properties (some sent twice, after the first thousands) are
/// all removed and each reported once, under `unplanned_properties = "omit"` and under
/// `violations = "omit"` (`additionalProperties: false`).
#[test]
fn ten_thousand_unplanned_properties_are_omitted_once_each() {
    let plan = shop();
    let n = 10_000;
    let mut extra: Vec<String> = (0..n).map(|i| format!(r#""u{i}":{i}"#)).collect();
    extra.extend([r#""u0":"again""#.to_owned(), r#""u17":"again""#.to_owned(), format!(r#""u{}":0"#, n - 1)]);
    let text = signed_up_text(&extra.join(","));

    let doc = plan.parse(&text).unwrap();
    let schema = plan.track.get("Signed Up").and_then(|t| t.select(None)).unwrap();
    let unplanned = unplanned_keys(&doc, "properties", schema);
    let want: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    assert_eq!(unplanned, want, "once each, in the order sent");
    assert_eq!(without_keys(&doc, "properties", &unplanned), signed_up_text("").replace(",}", "}"));

    for policies in [("allow", "omit", "block"), ("allow", "allow", "omit")] {
        let v = plan.check(&pol(policies.0, policies.1, policies.2), text.as_bytes()).unwrap();
        assert_eq!(payload(&v)["properties"], json!({"plan": "pro"}), "{policies:?}");
        assert_eq!(v.violations().len(), MAX_REPORTED_VIOLATIONS, "{policies:?}");
        assert_eq!(v.violations()[1].pointer, "/properties/u1", "{policies:?}");
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

/// Issue #21: the key set of `omit` compares each key with a bounded number of others, so
/// 10,000 keys cost ≈10,000 comparisons (a list would be ≈50 million), and it still knows
/// every key it holds once it has switched from scanning to hashing.
#[test]
fn key_set_is_linear_in_the_key_count() {
    let n = 10_000u32;
    COMPARISONS.with(|c| c.set(0));
    let mut set: KeySet<Counted> = (0..n).map(Counted).collect();
    assert!(!set.insert(Counted(0)) && !set.insert(Counted(n - 1)), "already there");
    let found = (0..2 * n).filter(|&i| set.contains(Counted(i))).count();
    let comparisons = COMPARISONS.with(std::cell::Cell::get);
    assert_eq!(found, n as usize);
    assert!(comparisons <= 3 * n as usize, "{comparisons} comparisons for {n} keys and {} lookups", 2 * n);

    // Across the switch from the scan to the hash set.
    let mut set = KeySet::default();
    for i in 0..40u32 {
        assert!(set.insert(i), "{i} is new");
        assert!((0..=i).all(|k| set.contains(k)) && !set.contains(i + 1), "after {i}");
        assert!(!set.insert(i / 2), "{} is there", i / 2);
    }
}

// ---- versions ---------------------------------------------------------------------------

#[test]
fn versioned_schema_selection() {
    let plan = shop();
    let no_subtotal = track("Order Completed", json!({"order_id": "o-1", "total": 5}));
    let with_subtotal = track("Order Completed", json!({"order_id": "o-1", "total": 5, "subtotal": 4}));
    let v2_missing = Verdict::Block {
        violations: vec![Violation {
            pointer: "/properties/subtotal".into(),
            keyword: "required".into(),
            message: "\"subtotal\" is a required property".into(),
        }],
    };
    // Version 2 (as a number or a string of digits) requires subtotal.
    assert_eq!(check(&plan, BLOCK, &with_version(no_subtotal.clone(), json!(2))), v2_missing);
    assert_eq!(check(&plan, BLOCK, &with_version(no_subtotal.clone(), json!("2"))), v2_missing);
    assert_eq!(check(&plan, BLOCK, &with_version(with_subtotal.clone(), json!(2))), Verdict::Pass);
    // No version, or one the plan does not have: the unversioned schema.
    for version in [json!(1), json!(3), json!("3"), json!(2.5), json!("2.0"), json!("two"), json!(null), json!(-2)] {
        assert_eq!(
            check(&plan, BLOCK, &with_version(no_subtotal.clone(), version.clone())),
            Verdict::Pass,
            "{version}"
        );
    }
    assert_eq!(check(&plan, BLOCK, &no_subtotal), Verdict::Pass);
    // Unplanned-property omission follows the selected version's declarations.
    let v = check(&plan, ("allow", "omit", "allow"), &with_version(with_subtotal.clone(), json!(2)));
    assert_eq!(v, Verdict::Pass);
    let v = check(&plan, ("allow", "omit", "allow"), &with_subtotal);
    assert_eq!(pointers(v.violations()), [("/properties/subtotal", "unplanned_property")]);
}

#[test]
fn event_planned_only_in_versions_defaults_to_the_lowest() {
    let plan = shop();
    let e = |v: i64| track("Only Versioned", json!({"v": v}));
    assert_eq!(check(&plan, BLOCK, &e(3)), Verdict::Pass);
    assert!(is_block(&check(&plan, BLOCK, &e(5))));
    assert_eq!(check(&plan, BLOCK, &with_version(e(5), json!(5))), Verdict::Pass);
    assert_eq!(check(&plan, BLOCK, &with_version(e(3), json!(4))), Verdict::Pass);
    assert!(is_block(&check(&plan, BLOCK, &with_version(e(3), json!(5)))));
}

// ---- what each type is checked against -------------------------------------------------

#[test]
fn violation_pointer_keyword_and_message() {
    let plan = shop();
    let v = check(
        &plan,
        BLOCK,
        &track("Order Completed", json!({"order_id": "", "total": -1, "currency": "GBP", "products": "none"})),
    );
    let mut got = v.violations().to_vec();
    got.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    assert_eq!(
        got,
        [
            Violation {
                pointer: "/properties/currency".into(),
                keyword: "enum".into(),
                message: "\"GBP\" is not one of \"EUR\" or \"USD\"".into()
            },
            Violation {
                pointer: "/properties/order_id".into(),
                keyword: "minLength".into(),
                message: "\"\" is shorter than 1 character".into()
            },
            Violation {
                pointer: "/properties/products".into(),
                keyword: "type".into(),
                message: "\"none\" is not of type \"array\"".into()
            },
            Violation {
                pointer: "/properties/total".into(),
                keyword: "minimum".into(),
                message: "-1 is less than the minimum of 0".into()
            },
        ]
    );
    // Violations serialise as the 422 body and the violations topic carry them.
    assert_eq!(
        serde_json::to_value(&got[3]).unwrap(),
        json!({"pointer": "/properties/total", "keyword": "minimum", "message": "-1 is less than the minimum of 0"})
    );
    // identify traits: formats are asserted (draft-07).
    let identify = json!({"type": "identify", "userId": "u", "traits": {"email": "not-an-email", "name": "Ada"}, "context": context()});
    let v = check(&plan, BLOCK, &identify);
    assert_eq!(pointers(v.violations()), [("/traits/email", "format")]);
    assert!(v.violations()[0].message.contains("email"), "{:?}", v.violations());
}

#[test]
fn absent_or_null_payload_is_checked_as_an_empty_object() {
    let plan = shop();
    let mut event = track("Order Completed", json!(null));
    let expected = [("/properties/order_id", "required"), ("/properties/total", "required")];
    assert_eq!(pointers(check(&plan, BLOCK, &event).violations()), expected);
    event.as_object_mut().unwrap().remove("properties");
    assert_eq!(pointers(check(&plan, BLOCK, &event).violations()), expected);
    // A payload that is not an object is the schema's business.
    let v = check(&plan, BLOCK, &track("Order Completed", json!([1])));
    assert_eq!(pointers(v.violations()), [("/properties", "type")]);
    // Omit cannot fix any of these.
    assert!(is_block(&check(&plan, ("allow", "omit", "omit"), &track("Order Completed", json!([1])))));
}

#[test]
fn types_without_schema_are_only_checked_by_common() {
    let plan = shop();
    let strict = ("block", "omit", "block");
    // group and screen have no schema: any traits/properties pass, nothing is omitted.
    let group = json!({"type": "group", "userId": "u", "groupId": "g", "traits": {"anything": [1, {"x": null}]}, "context": context()});
    assert_eq!(check(&plan, strict, &group), Verdict::Pass);
    let screen =
        json!({"type": "screen", "userId": "u", "name": "Home", "properties": {"tab": 1}, "context": context()});
    assert_eq!(check(&plan, strict, &screen), Verdict::Pass);
    // alias: common only.
    let alias = json!({"type": "alias", "userId": "u", "previousId": "p", "context": {"ip": "203.0.113.9"}});
    assert_eq!(pointers(check(&plan, strict, &alias).violations()), [("/context/library", "required")]);
    // page has a schema: its undeclared properties are unplanned.
    let page =
        json!({"type": "page", "userId": "u", "properties": {"path": "/", "section": "docs"}, "context": context()});
    let v = check(&plan, strict, &page);
    assert_eq!(pointers(v.violations()), [("/properties/section", "unplanned_property")]);
    assert_eq!(payload(&v)["properties"], json!({"path": "/"}));
    // A plan with no schema at all lets planned types through; every track event is unplanned.
    let empty = Plans::load(&fixtures().join("valid")).unwrap().get("empty").unwrap();
    assert_eq!(check(&empty, strict, &page), Verdict::Pass);
    assert!(is_block(&check(&empty, strict, &track("Order Completed", json!({})))));
    assert_eq!(check(&empty, ALLOW, &track("Order Completed", json!({}))), Verdict::Pass);
}

#[test]
fn unplanned_event_under_block_also_reports_common_violations() {
    let plan = shop();
    let mut event = track("Nope", json!({}));
    event["context"] = json!({});
    let v = check(&plan, BLOCK, &event);
    assert_eq!(pointers(v.violations()), [("/event", "unplanned_event"), ("/context/library", "required")]);
    // Event names are exact: case matters (as in Segment).
    assert!(is_block(&check(&plan, BLOCK, &track("order completed", json!({"order_id": "o", "total": 1})))));
}

#[test]
fn reported_violations_are_capped() {
    let plan = shop();
    let products: Vec<Value> = (0..100).map(|_| json!({"quantity": "x"})).collect();
    let v = check(&plan, BLOCK, &track("Order Completed", json!({"order_id": "o", "total": 1, "products": products})));
    assert!(is_block(&v));
    assert_eq!(v.violations().len(), MAX_REPORTED_VIOLATIONS);
    let long = "x".repeat(1000);
    let v = check(&plan, BLOCK, &track("Order Completed", json!({"order_id": "o", "total": long})));
    assert!(v.violations()[0].message.chars().count() <= MAX_MESSAGE_CHARS + 1);
}

#[test]
fn events_that_are_not_events_are_errors() {
    let plan = shop();
    let p = Policies::default();
    let code = |bytes: &[u8]| plan.check(&p, bytes).unwrap_err().code();
    assert_eq!(code(b"{\"type\":\"track\""), "invalid_event_json");
    assert_eq!(code(b"\xff"), "invalid_event_json");
    assert_eq!(code(b"[1]"), "invalid_event_shape");
    assert_eq!(code(br#"{"event":"x"}"#), "invalid_event_shape");
    assert_eq!(code(br#"{"type":"purchase"}"#), "invalid_event_shape");
    assert_eq!(code(br#"{"type":"track","properties":{}}"#), "invalid_event_shape");
    assert_eq!(code(br#"{"type":"track","event":7}"#), "invalid_event_shape");
}
