//! Tests of quotas and usage counts: calendar rollover, persistence, partial grants.

use super::*;
use time::macros::datetime;

fn accepted(n: u64) -> EventCounts {
    EventCounts { accepted: n, ..EventCounts::default() }
}

#[test]
fn grants_up_to_the_quota_then_refuses() {
    let q = Quotas::new();
    let now = datetime!(2026-11-23 10:00 UTC);
    let d = q.try_consume("web", 7, Some(10), now);
    assert_eq!((d.granted(), d.denied(), d.remaining()), (7, 0, Some(3)));
    assert!(d.error().is_none());
    d.settle(accepted(7), now);

    // Crossing the quota: the first 3 are granted, the last 4 denied one by one.
    let d = q.try_consume("web", 7, Some(10), now);
    assert_eq!((d.granted(), d.denied(), d.remaining()), (3, 4, Some(0)));
    assert_eq!(d.error().map(|e| e.code()), Some("quota_exceeded"));
    d.settle(EventCounts { accepted: 3, rejected: 4, duplicates: 0 }, now);

    // Nothing left: nothing granted → the caller answers 402.
    let d = q.try_consume("web", 1, Some(10), now);
    assert_eq!((d.granted(), d.denied()), (0, 1));
    let e = d.error().unwrap();
    assert_eq!(e.code(), "quota_exceeded");
    assert_eq!(e.to_string(), "the monthly quota of 10 events is used up; it resets at the start of next month (UTC)");
    d.settle(EventCounts { rejected: 1, ..EventCounts::default() }, now);

    let u = q.usage("web", Some(10), now);
    assert_eq!(u.month.accepted, 10);
    assert_eq!(u.month.rejected, 5);
    assert_eq!(u.quota.remaining, Some(0));
    // Another source is not affected.
    assert_eq!(q.try_consume("app", 5, Some(10), now).granted(), 5);
}

#[test]
fn no_quota_grants_everything_but_still_counts() {
    let q = Quotas::new();
    let now = datetime!(2026-11-23 10:00 UTC);
    let d = q.try_consume("web", 2500, None, now);
    assert_eq!((d.granted(), d.denied(), d.remaining(), d.quota()), (2500, 0, None, None));
    assert!(d.error().is_none());
    d.settle(accepted(2500), now);
    let u = q.usage("web", None, now);
    assert_eq!(u.month.accepted, 2500);
    assert_eq!((u.quota.monthly_events, u.quota.remaining), (None, None));
}

#[test]
fn in_flight_reservations_count_and_are_released() {
    let q = Quotas::new();
    let now = datetime!(2026-11-23 10:00 UTC);
    let first = q.try_consume("web", 6, Some(10), now);
    let second = q.try_consume("web", 6, Some(10), now);
    assert_eq!(second.granted(), 4, "the first request's 6 are reserved");
    assert_eq!(q.usage("web", Some(10), now).quota.remaining, Some(0));
    // The first request's client went away: dropping the decision frees its 6.
    drop(first);
    assert_eq!(q.usage("web", Some(10), now).quota.remaining, Some(6));
    // The sink refused 1 of the second's 4: only 3 are used.
    second.settle(EventCounts { accepted: 3, rejected: 3, duplicates: 0 }, now);
    let u = q.usage("web", Some(10), now);
    assert_eq!((u.month.accepted, u.quota.remaining), (3, Some(7)));
    assert_eq!(q.try_consume("web", 100, Some(10), now).granted(), 7);
}

#[test]
fn month_boundary_resets_quota_and_counts() {
    let q = Quotas::new();
    let end = datetime!(2026-11-30 23:59:59 UTC);
    q.try_consume("web", 10, Some(10), end).settle(accepted(10), end);
    assert_eq!(q.try_consume("web", 1, Some(10), end).granted(), 0);

    // 2026-11-30 20:00 -05:00 is already December in UTC.
    let next = datetime!(2026-11-30 20:00 -5);
    let d = q.try_consume("web", 4, Some(10), next);
    assert_eq!((d.granted(), d.remaining()), (4, Some(6)));
    d.settle(accepted(4), next);
    let u = q.usage("web", Some(10), next);
    assert_eq!(u.month.month, "2026-12");
    assert_eq!(u.today.date, "2026-12-01");
    assert_eq!((u.today.accepted, u.month.accepted), (4, 4));
    assert_eq!(u.quota.resets_at, "2027-01-01T00:00:00Z");
}

#[test]
fn day_and_month_counters() {
    let q = Quotas::new();
    let mon = datetime!(2026-11-22 23:00 UTC);
    let tue = datetime!(2026-11-23 01:00 UTC);
    q.record("web", EventCounts { accepted: 5, rejected: 2, duplicates: 1 }, mon);
    q.record("web", EventCounts { accepted: 3, rejected: 0, duplicates: 4 }, tue);
    let u = q.usage("web", Some(1000), tue);
    let json = serde_json::to_value(&u).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "source_id": "web",
            "today": {"date": "2026-11-23", "accepted": 3, "rejected": 0, "duplicates": 4},
            "month": {"month": "2026-11", "accepted": 8, "rejected": 2, "duplicates": 5},
            "quota": {"monthly_events": 1000, "remaining": 992, "resets_at": "2026-12-01T00:00:00Z"}
        })
    );
    // Reading usage on a later day shows the new day empty without losing the month.
    let wed = datetime!(2026-11-24 00:00 UTC);
    let u = q.usage("web", None, wed);
    assert_eq!((u.today.date.as_str(), u.today.accepted, u.month.accepted), ("2026-11-24", 0, 8));
    assert_eq!(u.quota.remaining, None);
    // A source never seen: zeros.
    let u = q.usage("new", Some(5), wed);
    assert_eq!((u.today.accepted, u.month.accepted, u.quota.remaining), (0, 0, Some(5)));
}

#[test]
fn wall_clock_stepping_back_does_not_reset() {
    let q = Quotas::new();
    let dec = datetime!(2026-12-01 00:00:01 UTC);
    q.record("web", accepted(3), dec);
    let nov = datetime!(2026-11-30 23:59:59 UTC);
    q.record("web", accepted(2), nov);
    let u = q.usage("web", Some(10), dec);
    assert_eq!((u.today.accepted, u.month.accepted, u.month.month.as_str()), (5, 5, "2026-12"));
}

#[test]
fn persist_and_load_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let now = datetime!(2026-11-23 10:00 UTC);
    let before_today = datetime!(2026-11-20 10:00 UTC);
    let q = Quotas::new();
    assert!(!q.is_dirty());
    q.record("web", EventCounts { accepted: 4, rejected: 1, duplicates: 2 }, before_today);
    q.try_consume("web", 3, Some(10), now).settle(accepted(3), now);
    q.record("app", EventCounts { rejected: 9, ..EventCounts::default() }, now);
    assert!(q.is_dirty());
    q.persist(&data).unwrap();
    assert!(!q.is_dirty());
    assert!(data.join(USAGE_FILE).exists());
    assert!(!data.join("usage.json.tmp").exists());

    // "Restart".
    let q2 = Quotas::load(&data).unwrap();
    assert!(!q2.is_dirty());
    for (source, quota) in [("web", Some(10)), ("app", None)] {
        assert_eq!(q2.usage(source, quota, now), q.usage(source, quota, now));
    }
    let u = q2.usage("web", Some(10), now);
    assert_eq!((u.today.accepted, u.month.accepted, u.month.rejected, u.month.duplicates), (3, 7, 1, 2));
    // The quota keeps counting from the restored month.
    assert_eq!(q2.try_consume("web", 10, Some(10), now).granted(), 3);

    // Persisting again replaces the file.
    q2.record("web", accepted(1), now);
    q2.persist(&data).unwrap();
    assert_eq!(Quotas::load(&data).unwrap().usage("web", None, now).month.accepted, 8);
}

#[test]
fn a_failed_write_leaves_the_old_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let now = datetime!(2026-11-23 10:00 UTC);
    let q = Quotas::new();
    q.record("web", accepted(5), now);
    q.persist(dir.path()).unwrap();
    let before = fs::read(dir.path().join(USAGE_FILE)).unwrap();
    // The temp file cannot be created: the write must fail without touching usage.json.
    fs::create_dir(dir.path().join("usage.json.tmp")).unwrap();
    q.record("web", accepted(1), now);
    assert_eq!(q.persist(dir.path()).unwrap_err().code(), "usage_io");
    assert_eq!(fs::read(dir.path().join(USAGE_FILE)).unwrap(), before);
    assert_eq!(Quotas::load(dir.path()).unwrap().usage("web", None, now).month.accepted, 5);
}

#[test]
fn missing_file_is_a_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quotas::load(&dir.path().join("nope")).unwrap();
    assert_eq!(q.tracked_sources(), 0);
}

#[test]
fn corrupt_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(USAGE_FILE);
    let cases = [
        ("{\"version\":1,\"sources\":{", "EOF"),
        ("{\"version\":2,\"sources\":{}}", "unsupported version 2"),
        ("{\"version\":1,\"sources\":{},\"extra\":1}", "unknown field"),
        (
            r#"{"version":1,"sources":{"web":{"day":"2026-13-01","today":{"accepted":1,"rejected":0,"duplicates":0},"month":"2026-12","this_month":{"accepted":1,"rejected":0,"duplicates":0}}}}"#,
            "source 'web': day '2026-13-01' is not YYYY-MM-DD",
        ),
        (
            r#"{"version":1,"sources":{"web":{"day":"2026-11-23","today":{"accepted":1,"rejected":0,"duplicates":0},"month":"2026-1","this_month":{"accepted":1,"rejected":0,"duplicates":0}}}}"#,
            "month '2026-1' is not YYYY-MM",
        ),
        (
            r#"{"version":1,"sources":{"web":{"day":"2026-11-23","today":{"accepted":1,"rejected":0,"duplicates":0},"month":"2026-10","this_month":{"accepted":1,"rejected":0,"duplicates":0}}}}"#,
            "day 2026-11-23 is not in month 2026-10",
        ),
    ];
    for (text, needle) in cases {
        fs::write(&path, text).unwrap();
        let e = Quotas::load(dir.path()).unwrap_err();
        assert_eq!(e.code(), "usage_corrupt", "{text}");
        let msg = e.to_string();
        assert!(msg.contains(needle), "{msg}");
        assert!(msg.contains("usage.json is not a valid usage file"), "{msg}");
    }
}

#[test]
fn failed_persist_keeps_the_dirty_flag() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    fs::write(&not_a_dir, "x").unwrap();
    let q = Quotas::new();
    q.record("web", accepted(1), datetime!(2026-11-23 10:00 UTC));
    let e = q.persist(&not_a_dir).unwrap_err();
    assert_eq!(e.code(), "usage_io");
    assert!(q.is_dirty(), "the counts still need writing");
    // A request with no events does not dirty anything.
    let q = Quotas::new();
    q.record("web", EventCounts::default(), datetime!(2026-11-23 10:00 UTC));
    assert!(!q.is_dirty());
}

#[test]
fn calendar_helpers() {
    assert_eq!(parse_day("2026-02-28").map(format_day).as_deref(), Some("2026-02-28"));
    assert_eq!(parse_day("2026-02-29"), None);
    assert_eq!(parse_day("2026-2-28"), None);
    assert_eq!(parse_month("2026-12").map(format_month).as_deref(), Some("2026-12"));
    assert_eq!(parse_month("2026-12-01"), None);
    let dec = parse_day("2026-12-01").unwrap();
    assert_eq!(next_month_rfc3339(dec), "2027-01-01T00:00:00Z");
    let feb = parse_day("2028-02-01").unwrap();
    assert_eq!(next_month_rfc3339(feb), "2028-03-01T00:00:00Z");
}
