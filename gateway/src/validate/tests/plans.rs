//! Tests of loading plans: broken folders are refused with every problem named, plans are
//! shareable, and the example plan of `../contracts` lets its reference events through.
//! Must not: write fixtures; the folders under `tests/fixtures/contracts` are read as they are.

use serde_json::{json, Value};

use super::*;

// ---- loading ----------------------------------------------------------------------------

#[test]
fn broken_plans_are_refused_with_every_problem_named() {
    let err = Plans::load(&fixtures().join("broken")).unwrap_err();
    assert_eq!(err.code(), "invalid_contracts");
    let problems: Vec<(String, Option<String>, String)> = err
        .problems
        .iter()
        .map(|p| {
            let file = p.file.strip_prefix(fixtures().join("broken")).unwrap().to_string_lossy().into_owned();
            (file, p.schema_path.clone(), p.message.clone())
        })
        .collect();
    let find = |file: &str| {
        problems.iter().find(|(f, _, _)| f == file).unwrap_or_else(|| panic!("no problem for {file}: {problems:#?}"))
    };
    // Invalid JSON: the file and the line.
    let (_, path, message) = find("bad-json/track/Broken.json");
    assert_eq!(*path, None);
    assert!(message.starts_with("invalid JSON at line 1 column"), "{message}");
    // A schema that breaks the meta-schema: the pointer inside the schema.
    assert_eq!(find("bad-schema/common.json").1.as_deref(), Some("/type"));
    assert_eq!(find("bad-schema/track/Order Completed.json").1.as_deref(), Some("/properties/total/type"));
    let (_, path, message) = find("bad-schema/page.json");
    assert_eq!(path.as_deref(), Some("/$schema"));
    assert!(message.contains("http://example.com/my-dialect"), "{message}");
    // References that do not resolve: the `$ref` that names them.
    assert_eq!(find("bad-ref/group.json").1.as_deref(), Some("/properties/company/$ref"));
    assert_eq!(find("bad-ref/screen.json").1.as_deref(), Some("/properties/a/$ref"));
    // Layout mistakes.
    for file in [
        "bad-layout/alias.json",
        "bad-layout/traits.json",
        "bad-layout/track/Thing@v2.json",
        "bad-layout/track/@2.json",
        "bad-layout/extras",
    ] {
        find(file);
    }
    assert!(
        !problems.iter().any(|(f, _, _)| f.ends_with("notes.txt") || f == "bad-json/identify.json"),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 11, "{problems:#?}");
    // The message names the file and the place, one problem per line.
    let text = err.to_string();
    assert_eq!(text.lines().count(), 11);
    assert!(
        text.lines().any(|l| l.ends_with(
            "bad-schema/common.json: at /type: 12 is not valid under any of the schemas listed in the 'anyOf' keyword"
        )),
        "{text}"
    );
    // A missing folder is one problem, not a panic.
    let err = Plans::load(&fixtures().join("does-not-exist")).unwrap_err();
    assert_eq!(err.problems.len(), 1);
}

#[test]
fn plans_are_send_sync_and_cheap_to_share() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Plans>();
    shareable::<Arc<Plans>>();
    shareable::<Plan>();
    let plans = Arc::new(Plans::load(&fixtures().join("valid")).unwrap());
    assert_eq!(plans.names(), ["empty", "shop"]);
    let a = plans.get("shop").unwrap();
    let b = plans.get("shop").unwrap();
    assert!(Arc::ptr_eq(&a, &b), "get hands out the same compiled plan");
    assert!(plans.get("nope").is_none());
    let handle = std::thread::spawn({
        let plans = plans.clone();
        move || {
            plans
                .get("shop")
                .unwrap()
                .check(&Policies::default(), &ev(&track("Order Completed", json!({"order_id": "o", "total": 1}))))
                .unwrap()
        }
    });
    assert_eq!(handle.join().unwrap(), Verdict::Pass);
}

// ---- the example plan -------------------------------------------------------------------

#[test]
fn example_plan_compiles_and_passes_reference_events_under_block() {
    let plan = example();
    for name in [
        "Signed Up",
        "Logged In",
        "Product Viewed",
        "Product Added",
        "Cart Viewed",
        "Checkout Started",
        "Order Completed",
        "Subscription Created",
    ] {
        assert!(plan.plans_event(name), "{name}");
    }
    let strict = ("block", "omit", "block");
    let reference_order = json!({
        "type": "track", "userId": "user_123", "event": "Order Completed",
        "properties": {"order_id": "ord_456", "total": 99.99, "currency": "USD", "coupon": "SUMMER20",
            "products": [{"product_id": "prod_789", "name": "Zeotap T-Shirt", "price": 29.99, "quantity": 2}]},
        "context": {"ip": "203.0.113.42", "userAgent": "Mozilla/5.0 ...", "locale": "en-US", "library": {"name": "analytics.js", "version": "1"}}
    });
    assert_eq!(check(&plan, strict, &reference_order), Verdict::Pass);
    let identify = json!({"type": "identify", "userId": "user_123", "context": {"ip": "1.2.3.4"},
        "traits": {"email": "jane@example.com", "name": "Jane Smith", "plan": "enterprise",
            "company": {"id": "comp_456", "name": "Acme Corp", "industry": "Technology", "employee_count": 250},
            "created_at": "2024-01-15T09:00:00Z", "lifetime_value": 4500.00, "newsletter_subscribed": true, "tags": ["vip", "beta-tester"]}});
    assert_eq!(check(&plan, strict, &identify), Verdict::Pass);
    // Hand-written calls without context.library pass the common schema.
    let bare = json!({"type": "track", "userId": "u", "event": "Signed Up", "properties": {"plan": "pro"}, "context": {"ip": "1.2.3.4"}});
    assert_eq!(check(&plan, strict, &bare), Verdict::Pass);
    // Version 2 of Order Completed requires subtotal.
    let v = check(&plan, strict, &with_version(reference_order, json!(2)));
    assert_eq!(pointers(v.violations()), [("/properties/subtotal", "required")]);
}

/// The shapes the real SDK harness sends (`../shared/clients/wire/*.jsonl`), after decode:
/// with `allow` policies nothing is blocked or changed, and only the harness's
/// `Order Completed` (which sends `revenue`, no `total`) is reported.
#[test]
fn example_plan_lets_the_sdk_harness_through_on_allow() {
    let plan = example();
    let libraries = [
        json!({"library": {"name": "analytics-python", "version": "2.4.0"}}),
        json!({"library": {"name": "@segment/analytics-node", "version": "3.1.0"}}),
        json!({"library": {"name": "harness-sendBeacon", "version": "0"}, "page": {"path": "/page.html"}, "userAgent": "Mozilla/5.0", "ip": "127.0.0.1"}),
        json!({"library": {"name": "analytics.js", "version": "next-1.84.3"}, "locale": "en-US", "timezone": "UTC",
               "page": {"path": "/page.html", "referrer": "", "search": "", "title": "Segment wire harness", "url": "http://127.0.0.1:41497/page.html"},
               "userAgent": "Mozilla/5.0 (X11; Linux x86_64)", "userAgentData": {"brands": [{"brand": "Chromium", "version": "156"}], "mobile": false, "platform": "Linux"},
               "ip": "127.0.0.1"}),
    ];
    for context in libraries {
        let base = |v: Value| {
            let mut v = v;
            v["messageId"] = json!("ajs-next-1795391920334-6021a5c6");
            v["userId"] = json!("user-1");
            v["anonymousId"] = json!("5c4e7a52-0b54-4a40-9d3c-000000000007");
            v["context"] = context.clone();
            v["integrations"] = json!({});
            v["_metadata"] = json!({"nodeVersion": "v20.20.2", "jsRuntime": "node"});
            v
        };
        let events = [
            base(
                json!({"type": "identify", "traits": {"name": "Ada Lovelace", "email": "ada@example.com", "plan": "pro"}}),
            ),
            base(json!({"type": "page", "name": "Home", "category": "Docs",
                "properties": {"path": "/page.html", "referrer": "", "search": "", "title": "Segment wire harness",
                               "url": "http://127.0.0.1:41497/page.html", "section": "docs", "category": "Docs", "name": "Home"}})),
            base(json!({"type": "screen", "name": "Dashboard", "properties": {"tab": "overview"}})),
            base(json!({"type": "group", "groupId": "g-1", "traits": {"name": "Acme", "plan": "enterprise"}})),
            base(json!({"type": "alias", "previousId": "anon-1"})),
            base(json!({"type": "track", "event": "Burst Event", "properties": {"i": 0}})),
            base(json!({"type": "track", "event": "Unload Event", "properties": {"i": 0}})),
        ];
        for event in &events {
            assert_eq!(check(&plan, ALLOW, event), Verdict::Pass, "{event}");
        }
        let order = base(json!({"type": "track", "event": "Order Completed",
            "properties": {"order_id": "o-1", "revenue": 42.5, "currency": "EUR", "products": [{"sku": "s-1", "qty": 2}]}}));
        let v = check(&plan, ALLOW, &order);
        assert!(matches!(&v, Verdict::Publish { payload: None, .. }), "{v:?}");
        assert_eq!(pointers(v.violations()), [("/properties/total", "required")]);
    }
}
