//! Verdicts and errors: what [`Plan::check`](super::Plan::check) answers for one event
//! ([`Verdict`], [`Violation`]), why it could not judge one ([`ValidateError`]), and why a
//! contracts folder was refused ([`PlanError`], one [`PlanProblem`] per file at fault).
//! Must not: decide anything (that is `check`) or map these to HTTP statuses (that is
//! `http::respond`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One way an event departs from its plan: the 422 body's and the violations topic's unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer into the event, e.g. `/properties/total` (for `required`, the missing key).
    pub pointer: String,
    /// The JSON Schema keyword (`type`, `required`, `additionalProperties`, `format`, …), or
    /// `unplanned_event` / `unplanned_property`.
    pub keyword: String,
    /// A readable reason (may quote the offending value, cut to 200 characters).
    pub message: String,
}

/// What to do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It follows the plan: publish the caller's bytes as they are.
    Pass,
    /// Publish it and report `violations` (never empty).
    Publish {
        /// `Some` when the event was changed (`omit`): publish these bytes instead.
        payload: Option<Vec<u8>>,
        violations: Vec<Violation>,
    },
    /// Do not publish it (answer 422 `contract_violation`).
    Block { violations: Vec<Violation> },
}

impl Verdict {
    /// The violations to report (empty for [`Verdict::Pass`]).
    pub fn violations(&self) -> &[Violation] {
        match self {
            Verdict::Pass => &[],
            Verdict::Publish { violations, .. } | Verdict::Block { violations } => violations,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why [`Plan::check`](super::Plan::check) could not judge an event. Decode only hands over
/// events it wrote itself, so this is a bug upstream, never the client's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("event is not valid JSON at byte {offset}: {detail}")]
    InvalidJson { offset: usize, detail: &'static str },
    #[error("event {0}")]
    InvalidEvent(&'static str),
}

impl ValidateError {
    /// The stable snake_case code of this error (also a metric label).
    pub fn code(&self) -> &'static str {
        match self {
            ValidateError::InvalidJson { .. } => "invalid_event_json",
            ValidateError::InvalidEvent(_) => "invalid_event_shape",
        }
    }
}

/// One problem found while loading the contracts folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    /// The file (or folder) at fault.
    pub file: PathBuf,
    /// JSON pointer inside that schema, when the problem has a place (e.g. `/properties/total/type`).
    pub schema_path: Option<String>,
    pub message: String,
}

impl fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema_path {
            Some(p) => {
                write!(f, "{}: at {}: {}", self.file.display(), if p.is_empty() { "/" } else { p }, self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Why the contracts folder was refused: every problem of every plan, one per line
/// (`FILE: at /schema/path: message`). Nothing is half-loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.problems))]
pub struct PlanError {
    pub problems: Vec<PlanProblem>,
}

impl PlanError {
    /// The stable snake_case code (also the metric label of a refused reload).
    pub fn code(&self) -> &'static str {
        "invalid_contracts"
    }
}

fn lines(problems: &[PlanProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}
