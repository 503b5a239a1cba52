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

#[cfg(test)]
mod tests;
