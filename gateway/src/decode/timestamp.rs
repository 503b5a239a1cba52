//! Timestamps on the hot path: ISO 8601 parsing (RFC 3339 and the looser forms Segment
//! documents) and `YYYY-MM-DDTHH:MM:SS.mmmZ` formatting, as nanoseconds since the Unix epoch.
//!
//! Owns: the text ↔ instant conversion of event timestamps. Must not: read the clock except in
//! [`Timestamp::now`].
//!
//! Why not the `time` crate here: every event carries one to three timestamps, and a general
//! parser/formatter costs a few hundred ns each; these fixed-shape routines cost tens. The `time`
//! crate remains the reference in the tests below.

use std::time::{SystemTime, UNIX_EPOCH};

/// An instant as nanoseconds since 1970-01-01T00:00:00Z (covers years 1678–2261; the gateway
/// accepts years 0001–9999 on input and clamps arithmetic results, see [`Timestamp::checked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i128);

const NANOS_PER_SEC: i128 = 1_000_000_000;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z.
const MIN: i128 = -62_135_596_800 * NANOS_PER_SEC;
const MAX: i128 = 253_402_300_800 * NANOS_PER_SEC - 1;

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        let nanos = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Timestamp(nanos)
    }

    /// The same instant as a `time` value (for calendar arithmetic: days, months).
    pub fn to_offset_date_time(self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(self.0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// `Some` when the instant is within years 0001–9999 (what we can format).
    pub fn checked(self) -> Option<Timestamp> {
        (MIN..=MAX).contains(&self.0).then_some(self)
    }

    /// Parses the ISO 8601 date-times Segment's libraries and users send:
    /// `YYYY-MM-DD(T|t| )HH:MM[:SS[(.|,)fraction]](Z|z|±HH[[:]MM])`. The fraction may have any
    /// number of digits (read to the nanosecond); the seconds may be left out (`14:30Z`); the
    /// offset may be written `+01:00`, `+0100` or `+01`. A leap second `:60` is read as `:59`.
    /// What is refused: no offset (a local time names no instant), a date alone, week or
    /// ordinal dates, the basic format without separators, out-of-range fields.
    pub fn parse(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        if b.len() < 17 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
            return None;
        }
        let year = digits(&b[0..4])? as i64;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let hour = digits(&b[11..13])?;
        let minute = digits(&b[14..16])?;
        let mut i = 16;
        let mut second = 0;
        if b[i] == b':' {
            second = digits(b.get(17..19)?)?;
            i = 19;
        }
        if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let second = second.min(59);
        let mut nanos: i128 = 0;
        // A fraction only follows seconds (ISO 8601's fractions of a minute are not sent by
        // anyone and would read as a different instant if misparsed).
        if i == 19 && matches!(b.get(i), Some(b'.' | b',')) {
            i += 1;
            let start = i;
            let mut scale = 100_000_000i128;
            while let Some(d) = b.get(i).filter(|c| c.is_ascii_digit()) {
                nanos += i128::from(d - b'0') * scale;
                scale /= 10;
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        let offset_s: i128 = match b.get(i) {
            Some(b'Z' | b'z') if i + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) => {
                let off = &b[i + 1..];
                let (h, m) = match off.len() {
                    2 => (digits(off)?, 0),
                    4 => (digits(&off[0..2])?, digits(&off[2..4])?),
                    5 if off[2] == b':' => (digits(&off[0..2])?, digits(&off[3..5])?),
                    _ => return None,
                };
                if h > 23 || m > 59 {
                    return None;
                }
                let off = i128::from(h * 3600 + m * 60);
                if *sign == b'-' {
                    -off
                } else {
                    off
                }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day) as i128;
        let secs = days * 86_400 + i128::from(hour * 3600 + minute * 60 + second) - offset_s;
        Some(Timestamp(secs * NANOS_PER_SEC + nanos))
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds truncated). Instants outside years
    /// 0001–9999 are clamped to those bounds.
    pub fn format(self) -> String {
        let n = self.0.clamp(MIN, MAX);
        let secs = n.div_euclid(NANOS_PER_SEC);
        let millis = (n.rem_euclid(NANOS_PER_SEC) / 1_000_000) as u32;
        let days = secs.div_euclid(86_400) as i64;
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let mut out = [0u8; 24];
        put(&mut out[0..4], y as u32);
        out[4] = b'-';
        put(&mut out[5..7], m);
        out[7] = b'-';
        put(&mut out[8..10], d);
        out[10] = b'T';
        put(&mut out[11..13], sod / 3600);
        out[13] = b':';
        put(&mut out[14..16], sod / 60 % 60);
        out[16] = b':';
        put(&mut out[17..19], sod % 60);
        out[19] = b'.';
        put(&mut out[20..23], millis);
        out[23] = b'Z';
        // Only ASCII digits and separators were written.
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl std::ops::Sub for Timestamp {
    type Output = i128;
    fn sub(self, rhs: Timestamp) -> i128 {
        self.0 - rhs.0
    }
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn put(out: &mut [u8], mut v: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    fn reference(s: &str) -> Option<i128> {
        OffsetDateTime::parse(s, &Rfc3339).ok().map(|t| t.unix_timestamp_nanos())
    }

    #[test]
    fn parses_like_the_time_crate() {
        for s in [
            "2025-03-15T14:30:00Z",
            "2025-03-15T14:30:00.123Z",
            "2026-11-22T23:58:37.156750+00:00",
            "2026-11-22T23:58:37.156750123-05:30",
            "2024-02-29T00:00:00+14:00",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2000-01-01t12:00:00z",
        ] {
            assert_eq!(Timestamp::parse(s).map(|t| t.0), reference(&s.replace('t', "T").replace('z', "Z")), "{s}");
        }
    }

    /// ISO 8601 forms beyond RFC 3339, each against the RFC 3339 text of the same instant.
    #[test]
    fn parses_iso8601_beyond_rfc3339() {
        for (iso, rfc) in [
            ("2025-03-15T14:30:00+0100", "2025-03-15T14:30:00+01:00"),
            ("2025-03-15T14:30:00.5-0530", "2025-03-15T14:30:00.5-05:30"),
            ("2025-03-15T14:30:00+01", "2025-03-15T14:30:00+01:00"),
            ("2025-03-15T14:30Z", "2025-03-15T14:30:00Z"),
            ("2025-03-15T14:30+0200", "2025-03-15T14:30:00+02:00"),
            ("2025-03-15t14:30z", "2025-03-15T14:30:00Z"),
            ("2025-03-15T14:30:00.1Z", "2025-03-15T14:30:00.100Z"),
            ("2025-03-15T14:30:00,25Z", "2025-03-15T14:30:00.25Z"),
            ("2025-03-15T14:30:00.123456789123456Z", "2025-03-15T14:30:00.123456789Z"),
            ("2025-03-15 14:30:00Z", "2025-03-15T14:30:00Z"),
        ] {
            assert_eq!(Timestamp::parse(iso).map(|t| t.0), reference(rfc), "{iso}");
            assert!(reference(rfc).is_some(), "{rfc}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_date_time() {
        for s in [
            "",
            "2025-03-15",
            "2025-03-15T14:30:00",
            "2025-03-15T14:30",
            "2025-03-15T14Z",
            "2025-03-15T14:30:Z",
            "2025-03-15T14:30:0Z",
            "2025-03-15T14:30:00.Z",
            "2025-03-15T14:30.5Z",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-03-15T24:00:00Z",
            "2025-03-15T14:60Z",
            "2025-03-15T14:30:00+1",
            "2025-03-15T14:30:00+010",
            "2025-03-15T14:30:00+01:0",
            "2025-03-15T14:30:00+01000",
            "2025-03-15T14:30:00+01-00",
            "2025-03-15T14:30:00+2400",
            "2025-03-15T14:30:00+0160",
            "2025-03-15T14:30:00Zjunk",
            "2025-03-15T14:30:00+01:00Z",
            "0000-01-01T00:00:00Z",
            "03/15/2025 14:30",
            "20250315T143000Z",
            "2025-W11-6T14:30:00Z",
            "２０２５-03-15T14:30:00Z",
        ] {
            assert_eq!(Timestamp::parse(s), None, "{s}");
        }
    }

    #[test]
    fn formats_utc_millis() {
        for s in [
            "2025-03-15T14:30:00.123Z",
            "1969-12-31T23:59:59.999Z",
            "2024-02-29T23:59:59.000Z",
            "0001-01-01T00:00:00.000Z",
        ] {
            assert_eq!(Timestamp::parse(s).unwrap().format(), s);
        }
        assert_eq!(Timestamp::parse("2026-11-22T23:58:37.156750+01:00").unwrap().format(), "2026-11-22T22:58:37.156Z");
        // Every day of a few centuries round-trips through the civil conversions.
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(Timestamp(MAX + 10).checked(), None);
        assert_eq!(Timestamp(MAX + 10).format(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn now_is_close_to_the_time_crate() {
        let ours = Timestamp::now().0;
        let theirs = OffsetDateTime::now_utc().unix_timestamp_nanos();
        assert!((theirs - ours).abs() < 1_000_000_000);
    }
}
