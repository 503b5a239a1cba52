//! Quotas and usage: the optional monthly event quota of each source, and its accepted /
//! rejected / duplicate event counts for today and this month (UTC), persisted in
//! `DATA_DIR/usage.json` so they survive a restart.
//!
//! Owns: the counters, the quota decision, the calendar rules (a day and a month start at 00:00
//! UTC), the usage file's format and its atomic replacement, and the serialisable [`Usage`] the
//! usage API returns. Must not: know HTTP statuses (`respond` maps [`QuotaError::Exceeded`] to
//! 402), read config files, log source data, or touch the disk on the request path — only
//! [`Quotas::load`] (startup) and [`Quotas::persist`] (a periodic task, via `spawn_blocking`)
//! do I/O.
//!
//! # A batch that crosses the quota
//! [`Quotas::try_consume`] grants as many of the `n` events as the quota still has room for and
//! denies the rest: the caller publishes the first `granted` events and rejects the others one by
//! one with `quota_exceeded` (the batch answers 200 with them in `errors`); only when nothing is
//! granted does the whole request get 402 `quota_exceeded`. This is exact — a source never gets
//! more than its quota, and never less — where "accept the whole batch if under quota at start"
//! would let a 2,500-event batch overshoot by 2,499.
//!
//! # Reservations
//! Granted events are *reserved* (they count against the quota while in flight), so concurrent
//! requests cannot both take the last events of a quota. The [`QuotaDecision`] holds the
//! reservation: [`QuotaDecision::settle`] turns it into the counts that actually happened
//! (e.g. fewer accepted when the sink refused some), and dropping the decision unsettled — the
//! client went away mid-request — releases it, so a lost request never eats quota.
//! Reservations are not persisted: after a restart nothing is in flight.
//!
//! # Calendar
//! Counters roll forward only: when `now` is in a later UTC day (month) than the stored one, the
//! day (month) counts restart from zero. A wall clock stepping backwards keeps counting into the
//! stored period instead of resetting it a second time.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use dashmap::mapref::one::RefMut;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// Name of the usage file under the data dir.
pub const USAGE_FILE: &str = "usage.json";
const FILE_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why events were refused, or why the usage file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The source's monthly quota is used up: 402 for a request, a per-event error in a batch.
    #[error("the monthly quota of {quota} events is used up; it resets at the start of next month (UTC)")]
    Exceeded { quota: u64 },
    /// The usage file or its directory could not be read or written.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The usage file exists but is not one this version wrote; refused rather than zeroed.
    #[error("{} is not a valid usage file: {detail}; fix it or move it away (counts then restart from zero)", .path.display())]
    Corrupt { path: PathBuf, detail: String },
}

impl QuotaError {
    /// The stable code in the error body and the metric label.
    pub fn code(&self) -> &'static str {
        match self {
            QuotaError::Exceeded { .. } => "quota_exceeded",
            QuotaError::Io { .. } => "usage_io",
            QuotaError::Corrupt { .. } => "usage_corrupt",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counts and the usage API shape
// ---------------------------------------------------------------------------------------------

/// Event counts of one period, or of one request (for [`Quotas::record`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventCounts {
    /// Events published (durable). Only these count against the quota.
    pub accepted: u64,
    /// Events refused: invalid, not allowed, over the quota, or refused by the sink.
    pub rejected: u64,
    /// Events answered 200 without publishing because their `messageId` was already seen.
    pub duplicates: u64,
}

impl EventCounts {
    fn is_zero(&self) -> bool {
        self.accepted == 0 && self.rejected == 0 && self.duplicates == 0
    }

    fn add(&mut self, other: &EventCounts) {
        self.accepted = self.accepted.saturating_add(other.accepted);
        self.rejected = self.rejected.saturating_add(other.rejected);
        self.duplicates = self.duplicates.saturating_add(other.duplicates);
    }
}

/// One source's usage, as the usage API returns it inside `{"success":true,"data":…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The source's id.
    pub source_id: String,
    /// The current UTC day.
    pub today: DayUsage,
    /// The current UTC month.
    pub month: MonthUsage,
    /// The monthly quota.
    pub quota: QuotaUsage,
}

/// Today's counts (UTC day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// See [`EventCounts::accepted`].
    pub accepted: u64,
    /// See [`EventCounts::rejected`].
    pub rejected: u64,
    /// See [`EventCounts::duplicates`].
    pub duplicates: u64,
}

/// This month's counts (UTC month).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthUsage {
    /// `YYYY-MM`.
    pub month: String,
    /// See [`EventCounts::accepted`].
    pub accepted: u64,
    /// See [`EventCounts::rejected`].
    pub rejected: u64,
    /// See [`EventCounts::duplicates`].
    pub duplicates: u64,
}

/// The quota and what remains of it this month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaUsage {
    /// Events per month; `null` when the source has no quota.
    pub monthly_events: Option<u64>,
    /// Events still allowed this month (in-flight requests included); `null` without a quota.
    pub remaining: Option<u64>,
    /// When the month's counts restart: RFC 3339, the first of next month at 00:00 UTC.
    pub resets_at: String,
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// One source's counters. Invariant: `month` is the first day of `day`'s month.
#[derive(Debug, Clone, Copy)]
struct SourceState {
    day: Date,
    today: EventCounts,
    month: Date,
    this_month: EventCounts,
    /// Granted events whose request has not settled yet.
    reserved: u64,
}

impl SourceState {
    fn fresh(today: Date) -> SourceState {
        SourceState {
            day: today,
            today: EventCounts::default(),
            month: month_start(today),
            this_month: EventCounts::default(),
            reserved: 0,
        }
    }

    /// Restarts the periods `today` has moved past (forward only, see the module doc).
    fn roll(&mut self, today: Date) {
        if today > self.day {
            self.day = today;
            self.today = EventCounts::default();
            let m = month_start(today);
            if m > self.month {
                self.month = m;
                self.this_month = EventCounts::default();
            }
        }
    }

    /// The state as of `today`, without changing the stored one.
    fn rolled(mut self, today: Date) -> SourceState {
        self.roll(today);
        self
    }

    fn used(&self) -> u64 {
        self.this_month.accepted.saturating_add(self.reserved)
    }
}

/// Quota decisions and usage counters of every source. Shared by all requests (`Sync`); each
/// operation locks one source's entry briefly.
#[derive(Debug, Default)]
pub struct Quotas {
    sources: DashMap<Box<str>, SourceState>,
    /// Counts changed since the last successful [`Quotas::persist`].
    dirty: AtomicBool,
    /// One writer of the temp file at a time.
    persist_lock: Mutex<()>,
}

/// The outcome of [`Quotas::try_consume`]; holds the reservation of the granted events until
/// [`QuotaDecision::settle`] (or releases it when dropped).
#[must_use = "settle the decision with what happened, or the granted events are released unrecorded"]
#[derive(Debug)]
pub struct QuotaDecision<'a> {
    quotas: &'a Quotas,
    source: &'a str,
    granted: u64,
    denied: u64,
    quota: Option<u64>,
    remaining: Option<u64>,
}

impl QuotaDecision<'_> {
    /// Events that may be published: the first `granted` of the request.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Events to reject with `quota_exceeded`: the last `denied` of the request.
    pub fn denied(&self) -> u64 {
        self.denied
    }

    /// The quota this decision applied.
    pub fn quota(&self) -> Option<u64> {
        self.quota
    }

    /// Events still allowed this month after this grant; `None` without a quota.
    pub fn remaining(&self) -> Option<u64> {
        self.remaining
    }

    /// The error for a denied event, and for the whole request when nothing was granted
    /// (`granted() == 0 && denied() > 0` → 402).
    pub fn error(&self) -> Option<QuotaError> {
        match self.quota {
            Some(quota) if self.denied > 0 => Some(QuotaError::Exceeded { quota }),
            _ => None,
        }
    }

    /// Releases the reservation and records what happened to the request's events. `counts`
    /// covers the whole request, denied events included (as `rejected`).
    pub fn settle(mut self, counts: EventCounts, now: OffsetDateTime) {
        let reserved = std::mem::take(&mut self.granted);
        self.quotas.apply(self.source, reserved, &counts, now);
    }
}

impl Drop for QuotaDecision<'_> {
    fn drop(&mut self) {
        if self.granted > 0 {
            if let Some(mut st) = self.quotas.sources.get_mut(self.source) {
                st.reserved = st.reserved.saturating_sub(self.granted);
            }
        }
    }
}

impl Quotas {
    /// No counts (a first start).
    pub fn new() -> Quotas {
        Quotas::default()
    }

    /// Decides how many of `n` events `source` may publish under `quota` (events per UTC month;
    /// `None`: all of them) and reserves them. See the module doc for batches crossing the quota.
    pub fn try_consume<'a>(
        &'a self,
        source: &'a str,
        n: u64,
        quota: Option<u64>,
        now: OffsetDateTime,
    ) -> QuotaDecision<'a> {
        let today = utc_date(now);
        let mut st = self.entry(source, today);
        st.roll(today);
        let granted = match quota {
            Some(q) => q.saturating_sub(st.used()).min(n),
            None => n,
        };
        st.reserved = st.reserved.saturating_add(granted);
        let remaining = quota.map(|q| q.saturating_sub(st.used()));
        drop(st);
        QuotaDecision { quotas: self, source, granted, denied: n - granted, quota, remaining }
    }

    /// Records a request's counts when no quota decision was taken (e.g. every event was
    /// invalid, or all were duplicates).
    pub fn record(&self, source: &str, counts: EventCounts, now: OffsetDateTime) {
        self.apply(source, 0, &counts, now);
    }

    /// `source`'s counts for the UTC day and month of `now`, under `quota`.
    pub fn usage(&self, source: &str, quota: Option<u64>, now: OffsetDateTime) -> Usage {
        let today = utc_date(now);
        let st = match self.sources.get(source) {
            Some(st) => st.rolled(today),
            None => SourceState::fresh(today),
        };
        Usage {
            source_id: source.to_owned(),
            today: DayUsage {
                date: format_day(st.day),
                accepted: st.today.accepted,
                rejected: st.today.rejected,
                duplicates: st.today.duplicates,
            },
            month: MonthUsage {
                month: format_month(st.month),
                accepted: st.this_month.accepted,
                rejected: st.this_month.rejected,
                duplicates: st.this_month.duplicates,
            },
            quota: QuotaUsage {
                monthly_events: quota,
                remaining: quota.map(|q| q.saturating_sub(st.used())),
                resets_at: next_month_rfc3339(st.month),
            },
        }
    }

    /// Whether counts changed since the last successful [`Quotas::persist`]: the periodic task
    /// writes only then.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Sources with counters (a gauge for `/metrics`).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// The usage file under `dir`.
    pub fn file_path(dir: &Path) -> PathBuf {
        dir.join(USAGE_FILE)
    }

    /// Reads `dir/usage.json`; a missing file is a first start (no counts). Blocking: startup only.
    pub fn load(dir: &Path) -> Result<Quotas, QuotaError> {
        let path = Quotas::file_path(dir);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Quotas::new()),
            Err(source) => return Err(QuotaError::Io { action: "read", path, source }),
        };
        let corrupt = |detail: String| QuotaError::Corrupt { path: path.clone(), detail };
        let file: UsageFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(corrupt(format!("unsupported version {} (expected {FILE_VERSION})", file.version)));
        }
        let sources = DashMap::new();
        for (id, r) in file.sources {
            let day = parse_day(&r.day)
                .ok_or_else(|| corrupt(format!("source '{id}': day '{}' is not YYYY-MM-DD", r.day)))?;
            let month = parse_month(&r.month)
                .ok_or_else(|| corrupt(format!("source '{id}': month '{}' is not YYYY-MM", r.month)))?;
            if month != month_start(day) {
                return Err(corrupt(format!("source '{id}': day {} is not in month {}", r.day, r.month)));
            }
            sources.insert(
                id.into_boxed_str(),
                SourceState { day, today: r.today, month, this_month: r.this_month, reserved: 0 },
            );
        }
        Ok(Quotas { sources, dirty: AtomicBool::new(false), persist_lock: Mutex::new(()) })
    }

    /// Writes every source's counts to `dir/usage.json` atomically: a temp file in the same
    /// directory, fsync, rename over the old file, fsync of the directory — a crash leaves the
    /// old file or the new one, never a torn one. Blocking: call it from `spawn_blocking` (every
    /// few seconds when [`Quotas::is_dirty`], and once at shutdown), never on the request path.
    pub fn persist(&self, dir: &Path) -> Result<(), QuotaError> {
        // A poisoned lock only means another persist panicked; the file is still consistent.
        let _one_writer = self.persist_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Cleared before the snapshot, so a count landing during the write marks it dirty again.
        let was_dirty = self.dirty.swap(false, Ordering::AcqRel);
        let result = self.write_snapshot(dir);
        if result.is_err() && was_dirty {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }

    fn write_snapshot(&self, dir: &Path) -> Result<(), QuotaError> {
        let file = UsageFile {
            version: FILE_VERSION,
            sources: self
                .sources
                .iter()
                .map(|e| {
                    let st = e.value();
                    let r = SourceRecord {
                        day: format_day(st.day),
                        today: st.today,
                        month: format_month(st.month),
                        this_month: st.this_month,
                    };
                    (e.key().to_string(), r)
                })
                .collect(),
        };
        let path = Quotas::file_path(dir);
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| QuotaError::Corrupt { path: path.clone(), detail: format!("cannot encode: {e}") })?;
        let tmp = dir.join(format!("{USAGE_FILE}.tmp"));
        let io_err = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| QuotaError::Io { action, path, source }
        };
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err("rename onto", &path))?;
        sync_dir(dir).map_err(io_err("fsync directory", dir))?;
        Ok(())
    }

    /// Releases `reserved` and adds `counts`, in `now`'s periods.
    fn apply(&self, source: &str, reserved: u64, counts: &EventCounts, now: OffsetDateTime) {
        let today = utc_date(now);
        let mut st = self.entry(source, today);
        st.roll(today);
        st.reserved = st.reserved.saturating_sub(reserved);
        st.today.add(counts);
        st.this_month.add(counts);
        drop(st);
        if !counts.is_zero() {
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn entry(&self, source: &str, today: Date) -> RefMut<'_, Box<str>, SourceState> {
        // `get_mut` first: `entry` needs an owned key, i.e. an allocation per request.
        match self.sources.get_mut(source) {
            Some(st) => st,
            None => self.sources.entry(source.into()).or_insert_with(|| SourceState::fresh(today)),
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for fsync elsewhere; the rename is what makes it atomic.
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// File format and calendar helpers
// ---------------------------------------------------------------------------------------------

/// `usage.json`. Versioned so a future format can be told apart from a corrupt file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageFile {
    version: u32,
    sources: BTreeMap<String, SourceRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceRecord {
    day: String,
    today: EventCounts,
    month: String,
    this_month: EventCounts,
}

/// The UTC calendar day of `now`, whatever its offset.
fn utc_date(now: OffsetDateTime) -> Date {
    // Only fails at the very ends of the supported range (±9999 years).
    now.checked_to_offset(UtcOffset::UTC).map_or(now.date(), |t| t.date())
}

fn month_start(d: Date) -> Date {
    d.replace_day(1).unwrap_or(d)
}

fn format_day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn format_month(d: Date) -> String {
    format!("{:04}-{:02}", d.year(), u8::from(d.month()))
}

fn next_month_rfc3339(month: Date) -> String {
    let (y, m) = match month.month() {
        Month::December => (month.year() + 1, Month::January),
        m => (month.year(), m.next()),
    };
    format!("{y:04}-{:02}-01T00:00:00Z", u8::from(m))
}

fn parse_day(s: &str) -> Option<Date> {
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
    Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

fn parse_month(s: &str) -> Option<Date> {
    parse_day(&format!("{s}-01")).filter(|_| s.len() == 7)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
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
        assert_eq!(
            e.to_string(),
            "the monthly quota of 10 events is used up; it resets at the start of next month (UTC)"
        );
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
}
