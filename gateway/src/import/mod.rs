//! Import: the reference APIs' request shapes (`../shared/reference/`) turned into Segment
//! calls, so that they run through the same pipeline as `/v1/batch` — auth, contracts,
//! consent, dedup, quota and sinks — and an imported event is a Segment event like any other.
//!
//! Owns: each shape's fields and limits, its mapping onto Segment's spec, the ids it generates,
//! and the index of each Segment call back to the input event it came from. Must not: check
//! what decode checks again (types, timestamps, sizes happen on the converted calls), publish,
//! or build an HTTP answer.
//!
//! - `events`: `POST /v1/events` (`{"events":[…]}`, `eventName`, `email`/`domain`, …) → `track`;
//! - `client`: `POST /api/client/events` (an array of `{name, anonymous_id, external_id, data,
//!   user, created_at}`) → `track`, and an `identify` with the `user` block's traits;
//! - `csv`: `POST /v1/backfill/csv` rows → the `events` shape, one row at a time;
//! - `jobs`: the durable job store of `/v1/events/bulk` and the CSV backfill.

mod client;
pub mod csv;
mod events;
pub mod jobs;
#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::decode::DecodeError;

/// Why an import request or job was refused. `respond` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0} import jobs are queued already; retry later")]
    TooManyJobs(usize),
    #[error("the job store failed: {0}")]
    Store(String),
    #[error("the CSV has no '{0}' column (required: event_name, timestamp, and email or domain)")]
    MissingColumn(&'static str),
    #[error("the CSV has more than {0} rows")]
    TooManyRows(usize),
    #[error("the body has {count} events; the limit of a bulk job is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("the CSV cannot be read: {0}")]
    InvalidCsv(String),
    #[error("the multipart body cannot be read: {0}")]
    InvalidMultipart(String),
    #[error("no job '{0}' for this source")]
    JobNotFound(String),
    #[error("{0}")]
    InvalidBody(&'static str),
}

impl ImportError {
    /// Every code [`ImportError::code`] returns.
    pub const CODES: &'static [&'static str] = &[
        "too_many_jobs",
        "job_store_failed",
        "missing_column",
        "too_many_rows",
        "too_many_events",
        "invalid_csv",
        "invalid_multipart",
        "job_not_found",
        "invalid_body",
    ];

    pub fn code(&self) -> &'static str {
        match self {
            ImportError::TooManyJobs(_) => "too_many_jobs",
            ImportError::Store(_) => "job_store_failed",
            ImportError::MissingColumn(_) => "missing_column",
            ImportError::TooManyRows(_) => "too_many_rows",
            ImportError::TooManyEvents { .. } => "too_many_events",
            ImportError::InvalidCsv(_) => "invalid_csv",
            ImportError::InvalidMultipart(_) => "invalid_multipart",
            ImportError::JobNotFound(_) => "job_not_found",
            ImportError::InvalidBody(_) => "invalid_body",
        }
    }

    /// One value of every variant, for the tests that hold `code` against [`ImportError::CODES`].
    #[cfg(test)]
    pub(crate) fn samples() -> Vec<ImportError> {
        use ImportError::*;
        let all = vec![
            TooManyJobs(1),
            Store("x".into()),
            MissingColumn("event_name"),
            TooManyRows(1),
            TooManyEvents { count: 2, limit: 1 },
            InvalidCsv("x".into()),
            InvalidMultipart("x".into()),
            JobNotFound("x".into()),
            InvalidBody("x"),
        ];
        all.iter().for_each(|e| match e {
            TooManyJobs(_)
            | Store(_)
            | MissingColumn(_)
            | TooManyRows(_)
            | TooManyEvents { .. }
            | InvalidCsv(_)
            | InvalidMultipart(_)
            | JobNotFound(_)
            | InvalidBody(_) => {}
        });
        all
    }
}

/// A request body shape that is not Segment's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `POST /v1/events`: answered 202 with counts and event ids.
    Events,
    /// `POST /api/client/events`: answered 204, or 400 with the indexed errors.
    Client,
}

/// Most events of one `/v1/events/bulk` job.
pub const MAX_BULK_EVENTS: usize = 10_000;

/// What a job's input held once staged: its events, the lines written (events that passed
/// their shape) and the refused ones (by index, or by CSV row).
#[derive(Debug, Default)]
pub struct Staged {
    pub total: usize,
    pub lines: usize,
    pub refused: Vec<ShapeError>,
}

/// Parses a body as JSON, naming the offset of a syntax error (as decode does).
pub fn parse_json(body: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::InvalidJson {
        offset: offset_of(body, e.line(), e.column()),
        detail: e.to_string().rsplit_once(" at line ").map_or_else(|| e.to_string(), |(d, _)| d.to_string()),
    })
}

/// Stages a `/v1/events/bulk` body (`{"events":[…]}`, at most [`MAX_BULK_EVENTS`]) into a
/// job's input: one `track` line per event that passes its shape.
pub fn stage_bulk(value: Value, now: &str, out: &mut jobs::InputWriter) -> Result<Staged, ImportError> {
    const WHAT: &str = "the body must be {\"events\":[…]} with 1 to 10000 events";
    let events = match value {
        Value::Object(mut body) => match body.remove("events") {
            Some(Value::Array(events)) if !events.is_empty() => events,
            _ => return Err(ImportError::InvalidBody(WHAT)),
        },
        _ => return Err(ImportError::InvalidBody(WHAT)),
    };
    if events.len() > MAX_BULK_EVENTS {
        return Err(ImportError::TooManyEvents { count: events.len(), limit: MAX_BULK_EVENTS });
    }
    let mut staged = Staged { total: events.len(), ..Staged::default() };
    for (index, event) in events.iter().enumerate() {
        match events::track(event, now) {
            Ok((_, call)) => {
                out.push(index, &call)?;
                staged.lines += 1;
            }
            Err((code, message)) => staged.refused.push(ShapeError { index, code, message }),
        }
    }
    Ok(staged)
}

/// Most events one small-batch request may carry (both documents say 100).
pub const MAX_EVENTS: usize = 100;
/// `eventName`'s limit, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// `properties`' limit, in keys.
pub const MAX_PROPERTIES: usize = 50;

/// One input event refused by its shape, before any Segment check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// A body turned into a Segment batch.
#[derive(Debug)]
pub struct Converted {
    /// `{"batch":[…]}` of the Segment calls, for decode.
    pub body: Vec<u8>,
    /// The input event each call came from (a client event with a `user` block gives two).
    pub origin: Vec<usize>,
    /// The messageId of each input event's call (given or generated); `None` for refused ones.
    pub event_ids: Vec<Option<String>>,
    /// Input events refused by their shape (not in `body`).
    pub errors: Vec<ShapeError>,
    /// How many events the input held.
    pub received: usize,
}

/// Turns a body of `shape` into a Segment batch; `now` is the receipt time, the default
/// `timestamp`.
pub fn convert(shape: Shape, body: &[u8], now: &str) -> Result<Converted, DecodeError> {
    let value = parse_json(body)?;
    let mut out = Builder::default();
    match shape {
        Shape::Events => events::convert(value, now, &mut out)?,
        Shape::Client => client::convert(value, now, &mut out)?,
    }
    out.finish()
}

/// Collects the calls and errors of a conversion.
#[derive(Default)]
struct Builder {
    calls: Vec<Value>,
    origin: Vec<usize>,
    event_ids: Vec<Option<String>>,
    errors: Vec<ShapeError>,
}

impl Builder {
    fn call(&mut self, index: usize, call: Value) {
        self.calls.push(call);
        self.origin.push(index);
    }

    fn refuse(&mut self, index: usize, code: &'static str, message: String) {
        self.errors.push(ShapeError { index, code, message });
    }

    fn finish(self) -> Result<Converted, DecodeError> {
        let received = self.event_ids.len();
        let body = serde_json::to_vec(&serde_json::json!({ "batch": self.calls }))
            .map_err(|e| DecodeError::BodyRead(format!("re-encoding the events: {e}")))?;
        Ok(Converted { body, origin: self.origin, event_ids: self.event_ids, errors: self.errors, received })
    }
}

/// The events of a body: at most [`MAX_EVENTS`], else 413 like a Segment batch over its cap.
fn take_events(value: Option<Value>, what: &'static str) -> Result<Vec<Value>, DecodeError> {
    match value {
        Some(Value::Array(events)) if events.is_empty() => Err(DecodeError::InvalidBody(what)),
        Some(Value::Array(events)) if events.len() > MAX_EVENTS => {
            Err(DecodeError::TooManyEvents { count: events.len(), limit: MAX_EVENTS })
        }
        Some(Value::Array(events)) => Ok(events),
        _ => Err(DecodeError::InvalidBody(what)),
    }
}

/// A field's problem as the `invalid_field` refusal of its event.
fn field<T>(r: Result<T, String>) -> Result<T, (&'static str, String)> {
    r.map_err(|m| ("invalid_field", m))
}

/// A field that must be absent or a string; `Err` names the field.
fn opt_str<'a>(event: &'a Value, field: &'static str) -> Result<Option<&'a str>, String> {
    match event.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("'{field}' must be a string")),
    }
}

/// A field that must be absent or an object of at most `max` keys.
fn opt_object<'a>(
    event: &'a Value,
    field: &'static str,
    max: usize,
) -> Result<Option<&'a serde_json::Map<String, Value>>, String> {
    match event.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.len() > max => Err(format!("'{field}' has {} keys; the limit is {max}", m.len())),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(format!("'{field}' must be an object")),
    }
}

/// A name: a non-empty string of at most [`MAX_NAME_CHARS`] characters.
fn name(event: &Value, field: &'static str) -> Result<String, (&'static str, String)> {
    match event.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            let chars = s.chars().count();
            if chars > MAX_NAME_CHARS {
                Err(("invalid_field", format!("'{field}' is {chars} characters; the limit is {MAX_NAME_CHARS}")))
            } else {
                Ok(s.clone())
            }
        }
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(("missing_event", format!("'{field}' is required (a non-empty string)")))
        }
        Some(_) => Err(("invalid_field", format!("'{field}' must be a string"))),
    }
}

/// A fresh event id, in the reference API's form.
fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::new_v4().simple())
}

/// serde_json's (line, column) as a byte offset, as decode reports it.
fn offset_of(body: &[u8], line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match body[start..].iter().position(|&b| b == b'\n') {
            Some(i) => start += i + 1,
            None => break,
        }
    }
    (start + column.saturating_sub(1)).min(body.len())
}
