//! CSV backfill (`POST /v1/backfill/csv`): rows of an RFC 4180 file → the `/v1/events` shape →
//! Segment `track` calls, written one at a time into a job's input.
//!
//! Owns: the columns (`event_name`, `timestamp`, `email`/`domain` required as columns; an
//! optional `event_id`; every other column a property, empty cells omitted), row numbers as a
//! spreadsheet shows them (the header is row 1), and the value rule: `true`/`false` become
//! booleans, an integer without leading zeros of at most 15 digits (`0`, `-42`) a number, a
//! decimal (`3.25`, `-0.5`) a number; everything else — `007`, `1e5`, `1,000`, `TRUE` — stays a
//! string. `?types=string` keeps every value a string. Must not: hold more than one row at a
//! time, or decide what a timestamp may be (decode does, per row, when the job runs).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

use super::jobs::InputWriter;
use super::{events, ImportError, ShapeError, Staged};

/// The most rows a CSV backfill may hold (the header not counted).
pub const MAX_ROWS: usize = 10_000;
/// The most bytes of a CSV upload.
pub const MAX_BYTES: usize = 50_000_000;

/// Reads the CSV at `path` into `out`; bad rows are refused by row number.
pub fn stage(path: &Path, as_strings: bool, now: &str, out: &mut InputWriter) -> Result<Staged, ImportError> {
    let mut file = BufReader::new(File::open(path).map_err(|e| ImportError::Store(e.to_string()))?);
    // A UTF-8 byte order mark (what spreadsheet programs write) is not part of the first name.
    let mut bom = [0u8; 3];
    let n = file.read(&mut bom).map_err(|e| ImportError::InvalidCsv(e.to_string()))?;
    let head: &[u8] = if n == 3 && bom == [0xEF, 0xBB, 0xBF] { &[] } else { &bom[..n] };
    let input = head.chain(file);
    let mut reader = ::csv::ReaderBuilder::new().flexible(true).has_headers(true).from_reader(input);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| ImportError::InvalidCsv(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let event_name = column("event_name").ok_or(ImportError::MissingColumn("event_name"))?;
    let timestamp = column("timestamp").ok_or(ImportError::MissingColumn("timestamp"))?;
    let (email, domain, event_id) = (column("email"), column("domain"), column("event_id"));
    if email.is_none() && domain.is_none() {
        return Err(ImportError::MissingColumn("email or domain"));
    }
    let fixed = [Some(event_name), Some(timestamp), email, domain, event_id];
    let mut staged = Staged::default();
    let mut record = ::csv::StringRecord::new();
    loop {
        let row = staged.total + 2;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => match e.kind() {
                ::csv::ErrorKind::Utf8 { .. } => {
                    staged.total += 1;
                    refuse(&mut staged, row, "invalid_field", "the row is not valid UTF-8".into());
                    continue;
                }
                _ => return Err(ImportError::InvalidCsv(format!("row {row}: {e}"))),
            },
        }
        staged.total += 1;
        if staged.total > MAX_ROWS {
            return Err(ImportError::TooManyRows(MAX_ROWS));
        }
        if record.len() != headers.len() {
            let why = format!("the row has {} fields; the header has {}", record.len(), headers.len());
            refuse(&mut staged, row, "invalid_field", why);
            continue;
        }
        let cell = |i: Option<usize>| i.and_then(|i| record.get(i)).map(str::trim).filter(|s| !s.is_empty());
        let Some(ts) = cell(Some(timestamp)) else {
            refuse(&mut staged, row, "invalid_timestamp", "'timestamp' is empty".into());
            continue;
        };
        let mut event = Map::new();
        event.insert("eventName".into(), cell(Some(event_name)).map_or(Value::Null, Value::from));
        event.insert("timestamp".into(), Value::from(ts));
        for (key, i) in [("email", email), ("domain", domain), ("eventId", event_id)] {
            if let Some(v) = cell(i) {
                event.insert(key.into(), Value::from(v));
            }
        }
        let mut properties = Map::new();
        for (i, name) in headers.iter().enumerate() {
            if fixed.contains(&Some(i)) || name.is_empty() {
                continue;
            }
            if let Some(v) = record.get(i).filter(|v| !v.is_empty()) {
                properties.insert(name.clone(), if as_strings { Value::from(v) } else { typed(v) });
            }
        }
        event.insert("properties".into(), Value::Object(properties));
        match events::track(&Value::Object(event), now) {
            Ok((_, call)) => {
                out.push(row, &call)?;
                staged.lines += 1;
            }
            Err((code, message)) => refuse(&mut staged, row, code, message),
        }
    }
    Ok(staged)
}

fn refuse(staged: &mut Staged, row: usize, code: &'static str, message: String) {
    staged.refused.push(ShapeError { index: row, code, message });
}

/// A cell's JSON value by the rule of the module doc.
pub fn typed(cell: &str) -> Value {
    match cell {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    let plain = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) && (d == "0" || !d.starts_with('0'));
    if plain(digits) && digits.len() <= 15 {
        if let Ok(i) = cell.parse::<i64>() {
            return Value::from(i);
        }
    }
    if let Some((int, frac)) = digits.split_once('.') {
        let frac_ok = !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit());
        if plain(int) && frac_ok {
            if let Some(n) = cell.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                return Value::Number(n);
            }
        }
    }
    Value::from(cell)
}
