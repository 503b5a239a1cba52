//! Validate: event contracts (tracking plans) with Segment Protocols semantics.
//!
//! Owns: loading and compiling the JSON Schemas of `contracts/` ([`Plans::load`], once at start
//! and on reload), checking one normalised event against a plan under a source's [`Policies`]
//! ([`Plan::check`]), and the JSON record of the violations topic ([`violation_record`]).
//! Must not: read config, publish, build HTTP answers, log, or do I/O on the request path (only
//! [`Plans::load`] touches the disk).
//!
//! # A tracking plan
//! A plan is a folder `contracts/<plan name>/` (the plan format is also described in
//! `contracts/README.md`):
//!
//! | file | validates | applies to |
//! |---|---|---|
//! | `common.json` (optional) | the **whole event** (`type`, `context`, `userId`, `properties`, …) | every event, alias included |
//! | `track/<Event Name>.json` | the event's **`properties`** object | `track` calls whose `event` is exactly `Event Name` |
//! | `track/<Event Name>@<N>.json` | the event's **`properties`** object | the same, with `context.protocols.event_version` = `N` |
//! | `identify.json`, `group.json` (optional) | the event's **`traits`** object | every identify / group call |
//! | `page.json`, `screen.json` (optional) | the event's **`properties`** object | every page / screen call |
//!
//! An absent `properties`/`traits` is validated as `{}` (so a `required` list still bites).
//! A type without a schema file is unconstrained except by `common.json`; only `track` events
//! can be *unplanned* (Segment's vocabulary: no schema for that event name). There is no
//! manifest: the folder is the plan, and the policies live in the gateway config, per source,
//! so one plan can serve a demo source on `allow` and a test source on `block`.
//!
//! Schemas are JSON Schema draft-07 unless they name another draft in `$schema` (04, 06, 07,
//! 2019-09, 2020-12). Formats (`email`, `date-time`, `uri`, …) are asserted in draft-07 (and 04,
//! 06); 2019-09 and 2020-12 treat them as annotations.
//! References are resolved inside the file only (`#/definitions/…`): nothing is fetched from
//! the network or the disk, so an external `$ref` is a load error.
//!
//! **Versions** (Segment's event versioning): `N` is a positive integer, and the event selects it
//! with `context.protocols.event_version` (a JSON integer, or a string of digits). An event
//! without a version, or with a version the plan does not have, is checked against the
//! event's *default* schema: the unversioned file, or the lowest version when there is none.
//! This is what Segment does ("the oldest event version … for event payloads that are missing
//! the key or contain an invalid/undefined event version"), and it keeps old app releases
//! that never learnt about versions working. It is not treated as unplanned: the event name is
//! planned, only the version is unknown.
//!
//! # Policies ([`Policies`])
//! - `unplanned_events`: `allow` publishes `track` events that have no schema; `block` rejects
//!   them (violation keyword `unplanned_event`).
//! - `unplanned_properties`: `allow` keeps properties/traits the schema does not declare;
//!   `omit` removes them before publishing (keyword `unplanned_property`). *Declared* means a
//!   key under the schema's top-level `properties`; a schema without top-level `properties`
//!   (or a type without a schema) declares nothing to compare with, so nothing is omitted.
//!   Independently of this policy, a schema with `"additionalProperties": false` makes every
//!   undeclared key a schema violation, handled by `violations`.
//! - `violations`: `allow` publishes the event unchanged and reports; `block` rejects it;
//!   `omit` removes the offending top-level keys of `properties`/`traits` (the key whose value,
//!   or something inside whose value, violated the schema), re-validates, and publishes.
//!
//! Unplanned events/properties under `allow` are not violations: `allow` means the plan is not
//! enforced for them, and reporting them would flood the violations topic with every unplanned
//! event. Under `block`/`omit` they are reported, because the gateway acted on them.
//!
//! **When `omit` cannot fix a violation** — a missing required property, a `minProperties` on
//! the whole object, or a violation of `common.json` outside `properties`/`traits` (e.g. a missing
//! `context.library`) — the event is **blocked**, with every violation reported. Publishing it
//! would deliver exactly the data the operator asked not to deliver, and the violations topic
//! keeps the original event, so nothing is lost for good: blocking is the safe choice. The same
//! holds when the event still violates the plan after the omission (e.g. the omitted property
//! was also required).
//!
//! # Cost on the request path
//! Building a `serde_json::Value` of a 700-byte event costs ≈2 µs, more than the rest of the
//! gateway's work on it. So:
//! - Events are parsed into a *tape*: one flat `Vec` of nodes whose strings and numbers are
//!   slices of the event text (escaped strings are the only copies; the `Vec` is reused per
//!   thread), and the `jsonschema` validators run on the tape directly through the crate's
//!   custom-representation API (`jsonschema::json`).
//! - Only what the plan's schemas can read is put on the tape. When a plan is compiled, each
//!   `common.json` is analysed: where a (sub)schema only uses `type`/`properties`/`required`
//!   (and annotations), members it does not name cannot change the result, so they are skipped
//!   (brackets and strings matched, nothing recorded). Anything dynamic — `$ref`, `allOf`,
//!   `additionalProperties: false`, `patternProperties`, … — reads its whole value. The parser
//!   also reads `type`, `event`, `properties`/`traits` and, when the plan has versions,
//!   `context.protocols.event_version`; the rest of the event (`messageId`, timestamps,
//!   `context.page`, …) is skipped. Skipped parts are not checked as JSON: the caller passes the
//!   event decode wrote, which is valid JSON.
//! - An event that passes is published as the caller's bytes (no re-serialisation), and `omit`
//!   splices the kept members' original bytes. Validation first asks `is_valid`, and collects
//!   errors only on failure.
//!
//! Measured (criterion, `benches/contracts.rs`, example plan, 770-byte normalised
//! `Order Completed`, on the project's 2-core machine): ≈0.8 µs per event that passes,
//! ≈1.5 µs blocked with violations, ≈1.9 µs with an omission; a `serde_json::Value` of the same
//! event alone is ≈2 µs.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, ValidationError, Validator};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use self::tape::{Doc, Need, Tape};

/// At most this many violations are reported per event (all are still used to decide the
/// verdict): one bad element in a 1,000-item array must not make a 1,000-entry record.
pub const MAX_REPORTED_VIOLATIONS: usize = 32;

/// Violation messages are cut to this many characters (they may quote the offending value).
const MAX_MESSAGE_CHARS: usize = 200;

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// What a source does with events that do not follow its plan (Segment Protocols' vocabulary).
/// Config: `{ unplanned_events = "allow", unplanned_properties = "allow", violations = "allow" }`;
/// every field defaults to `allow` (report, never drop: the safe way to switch a plan on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// `track` events whose name has no schema in the plan.
    #[serde(default = "default_unplanned_events")]
    pub unplanned_events: UnplannedEvents,
    /// Keys of `properties`/`traits` that the event's schema does not declare.
    #[serde(default = "default_unplanned_properties")]
    pub unplanned_properties: UnplannedProperties,
    /// Schema violations (of the event's schema or of `common.json`).
    #[serde(default = "default_violations")]
    pub violations: Violations,
}

fn default_unplanned_events() -> UnplannedEvents {
    UnplannedEvents::Allow
}
fn default_unplanned_properties() -> UnplannedProperties {
    UnplannedProperties::Allow
}
fn default_violations() -> Violations {
    Violations::Allow
}

impl Default for Policies {
    fn default() -> Policies {
        Policies {
            unplanned_events: default_unplanned_events(),
            unplanned_properties: default_unplanned_properties(),
            violations: default_violations(),
        }
    }
}

/// Policy for unplanned `track` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnplannedEvents {
    /// Publish them (not reported).
    Allow,
    /// Reject them (`unplanned_event`).
    Block,
}

/// Policy for undeclared keys of `properties`/`traits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnplannedProperties {
    /// Keep them (not reported).
    Allow,
    /// Remove them before publishing (`unplanned_property`, reported).
    Omit,
}

/// Policy for schema violations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Violations {
    /// Publish, and report the violations.
    Allow,
    /// Reject the event.
    Block,
    /// Remove the offending top-level keys of `properties`/`traits`, then publish; blocks when
    /// that cannot make the event valid (see the module doc).
    Omit,
}

// ---------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------

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

/// Why [`Plan::check`] could not judge an event. Decode only hands over events it wrote itself,
/// so this is a bug upstream, never the client's fault.
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

// ---------------------------------------------------------------------------------------------
// Plans: loading and compiling
// ---------------------------------------------------------------------------------------------

/// Every plan of a contracts folder, compiled. Immutable once built: a reload builds a new one
/// and swaps the whole value (e.g. in an `ArcSwap`), so a request sees one consistent set.
#[derive(Default)]
pub struct Plans {
    plans: HashMap<String, Arc<Plan>>,
}

impl fmt::Debug for Plans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plans").field("plans", &self.names()).finish()
    }
}

impl Plans {
    /// Compiles every plan folder under `contracts_dir` (files at its top level, like a README,
    /// are ignored). Reads the disk: call it at startup or from `spawn_blocking`. On failure the
    /// error lists every problem found in every file.
    pub fn load(contracts_dir: &Path) -> Result<Plans, PlanError> {
        let mut problems = Vec::new();
        let mut plans = HashMap::new();
        match sorted_entries(contracts_dir) {
            Err(e) => problem(&mut problems, contracts_dir, None, format!("cannot read the contracts folder: {e}")),
            Ok(entries) => {
                for path in entries.into_iter().filter(|p| p.is_dir()) {
                    let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                        problem(&mut problems, &path, None, "a plan folder name must be UTF-8".into());
                        continue;
                    };
                    let plan = load_plan(name.clone(), &path, &mut problems);
                    plans.insert(name, Arc::new(plan));
                }
            }
        }
        if problems.is_empty() {
            Ok(Plans { plans })
        } else {
            Err(PlanError { problems })
        }
    }

    /// The plan named `name` (its folder name).
    pub fn get(&self, name: &str) -> Option<Arc<Plan>> {
        self.plans.get(name).cloned()
    }

    /// The plan names, sorted (for config checks: every source's plan must exist).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.plans.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// How many plans there are.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// Whether there is no plan.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }
}

/// One compiled schema.
struct Compiled {
    validator: Validator<Tape>,
    /// What of its instance the schema can look at (used for `common.json`).
    need: Need,
    /// Keys under the schema's top-level `properties`, sorted; `None` when it has none.
    declared: Option<Box<[Box<str>]>>,
}

impl Compiled {
    fn declares(&self, key: &str) -> Option<bool> {
        self.declared.as_ref().map(|d| d.binary_search_by(|k| (**k).cmp(key)).is_ok())
    }
}

/// The schemas of one planned `track` event.
struct TrackEvent {
    unversioned: Option<Compiled>,
    versions: BTreeMap<u64, Compiled>,
}

impl TrackEvent {
    /// The schema for `version` (see the module doc for the fallback).
    fn select(&self, version: Option<u64>) -> Option<&Compiled> {
        version
            .and_then(|v| self.versions.get(&v))
            .or(self.unversioned.as_ref())
            .or_else(|| self.versions.values().next())
    }
}

/// FNV-1a, for the event-name table: SipHash costs more than the rest of a lookup, and the
/// table's keys are the plan's own names (a client choosing colliding names only slows its own
/// lookup by a few comparisons).
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<Fnv>>;

/// One tracking plan, compiled. Cheap to share (`Arc`); `Send + Sync`.
pub struct Plan {
    name: String,
    /// What of an event any of this plan's schemas can look at: the rest is skipped, not parsed.
    need: Need,
    common: Option<Compiled>,
    track: FnvMap<TrackEvent>,
    identify: Option<Compiled>,
    group: Option<Compiled>,
    page: Option<Compiled>,
    screen: Option<Compiled>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut events: Vec<&str> = self.track.keys().map(String::as_str).collect();
        events.sort_unstable();
        f.debug_struct("Plan")
            .field("name", &self.name)
            .field("common", &self.common.is_some())
            .field("track", &events)
            .field("identify", &self.identify.is_some())
            .field("group", &self.group.is_some())
            .field("page", &self.page.is_some())
            .field("screen", &self.screen.is_some())
            .finish()
    }
}

fn problem(problems: &mut Vec<PlanProblem>, file: &Path, schema_path: Option<String>, message: String) {
    problems.push(PlanProblem { file: file.to_path_buf(), schema_path, message });
}

/// A folder's entries, sorted (so problems come in a stable order), hidden ones left out.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        out.push(path);
    }
    out.sort();
    Ok(out)
}

const PLAN_FILES: &str = "common.json, identify.json, group.json, page.json, screen.json or track/<Event Name>.json";

fn load_plan(name: String, dir: &Path, problems: &mut Vec<PlanProblem>) -> Plan {
    let mut plan = Plan {
        name,
        need: Need::All,
        common: None,
        track: FnvMap::default(),
        identify: None,
        group: None,
        page: None,
        screen: None,
    };
    let entries = match sorted_entries(dir) {
        Ok(e) => e,
        Err(e) => {
            problem(problems, dir, None, format!("cannot read the plan folder: {e}"));
            return plan;
        }
    };
    for path in entries {
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if file_name == "track" {
                load_track(&mut plan, &path, problems);
            } else {
                problem(problems, &path, None, format!("unexpected folder: a plan holds {PLAN_FILES}"));
            }
            continue;
        }
        let slot = match file_name {
            "common.json" => &mut plan.common,
            "identify.json" => &mut plan.identify,
            "group.json" => &mut plan.group,
            "page.json" => &mut plan.page,
            "screen.json" => &mut plan.screen,
            // Not ours (a README, notes): only `.json` files are schemas.
            n if !n.ends_with(".json") => continue,
            "alias.json" => {
                problem(
                    problems,
                    &path,
                    None,
                    format!("unexpected file: a plan holds {PLAN_FILES} (alias calls are checked by common.json only)"),
                );
                continue;
            }
            _ => {
                problem(problems, &path, None, format!("unexpected file: a plan holds {PLAN_FILES}"));
                continue;
            }
        };
        *slot = compile_file(&path, problems);
    }
    plan.need = event_need(&plan);
    plan
}

/// What `check` reads of an event: the members it dispatches on, the payloads the event
/// schemas validate, the version when some event has versions, and what `common.json` reads.
fn event_need(plan: &Plan) -> Need {
    let mut need = Need::none();
    for field in ["type", "event", "properties", "traits"] {
        need = need.merge(Need::path(&[field]));
    }
    if plan.track.values().any(|t| !t.versions.is_empty()) {
        need = need.merge(Need::path(&["context", "protocols", "event_version"]));
    }
    match &plan.common {
        Some(common) => need.merge(common.need.clone()),
        None => need,
    }
}

fn load_track(plan: &mut Plan, dir: &Path, problems: &mut Vec<PlanProblem>) {
    let entries = match sorted_entries(dir) {
        Ok(e) => e,
        Err(e) => {
            problem(problems, dir, None, format!("cannot read the track folder: {e}"));
            return;
        }
    };
    for path in entries {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            problem(problems, &path, None, "a schema file name must be UTF-8".into());
            continue;
        };
        if path.is_dir() {
            problem(problems, &path, None, "unexpected folder: track/ holds <Event Name>.json files".into());
            continue;
        }
        let Some(stem) = file_name.strip_suffix(".json") else { continue };
        // The version follows the last '@': an event name may contain '@' only in a versioned file.
        let (event, version) = match stem.rsplit_once('@') {
            None => (stem, None),
            Some((event, v)) => match v.parse::<u64>() {
                Ok(n) if n > 0 && !v.starts_with('+') => (event, Some(n)),
                _ => {
                    problem(
                        problems,
                        &path,
                        None,
                        format!("'{v}' is not a version: name versioned schemas '<Event Name>@<N>.json' with N a positive integer"),
                    );
                    continue;
                }
            },
        };
        if event.trim().is_empty() {
            problem(problems, &path, None, "the event name (the file name before .json) is empty".into());
            continue;
        }
        let Some(compiled) = compile_file(&path, problems) else { continue };
        let entry = plan
            .track
            .entry(event.to_owned())
            .or_insert_with(|| TrackEvent { unversioned: None, versions: BTreeMap::new() });
        match version {
            None => entry.unversioned = Some(compiled),
            Some(v) => {
                entry.versions.insert(v, compiled);
            }
        }
    }
}

/// Reads, parses and compiles one schema file; on failure records the problem and returns `None`.
fn compile_file(path: &Path, problems: &mut Vec<PlanProblem>) -> Option<Compiled> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            problem(problems, path, None, format!("cannot read: {e}"));
            return None;
        }
    };
    let schema: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            let text = e.to_string();
            let detail = text.rfind(" at line ").and_then(|i| text.get(..i)).unwrap_or(&text);
            let message = format!("invalid JSON at line {} column {}: {detail}", e.line(), e.column());
            problem(problems, path, None, message);
            return None;
        }
    };
    match compile(&schema) {
        Ok(c) => Some(c),
        Err((schema_path, message)) => {
            problem(problems, path, Some(schema_path), message);
            None
        }
    }
}

/// Compiles a schema (draft-07 unless `$schema` says otherwise). The error is
/// `(pointer inside the schema, message)`.
fn compile(schema: &Value) -> Result<Compiled, (String, String)> {
    if !(schema.is_object() || schema.is_boolean()) {
        return Err((String::new(), "a schema must be a JSON object (or true/false)".into()));
    }
    let draft = Draft::Draft7.detect(schema);
    if draft == Draft::Unknown {
        let uri = schema.get("$schema").and_then(Value::as_str).unwrap_or("");
        return Err((
            "/$schema".into(),
            format!("unsupported $schema '{uri}': use draft-04, -06, -07 (the default), 2019-09 or 2020-12"),
        ));
    }
    let validator = jsonschema::options_for::<Tape>()
        .with_draft(draft)
        // Plans must be self-contained: nothing is fetched at load time, let alone per event.
        .offline()
        .build(schema)
        .map_err(|e| (compile_error_path(&e, schema), truncate(&e.to_string(), 300)))?;
    let declared = schema.get("properties").and_then(Value::as_object).map(|p| {
        let mut keys: Vec<Box<str>> = p.keys().map(|k| k.as_str().into()).collect();
        keys.sort_unstable();
        keys.into_boxed_slice()
    });
    Ok(Compiled { validator, need: Need::of_schema(schema), declared })
}

/// Where in the schema a compile error is. A schema that breaks its meta-schema is the
/// meta-schema's *instance*, so the instance path is the place. A reference that does not
/// resolve carries no place: the `$ref` naming it is searched for.
fn compile_error_path(e: &ValidationError<'_>, schema: &Value) -> String {
    if let ValidationErrorKind::Referencing(r) = e.kind() {
        let text = r.to_string();
        let mut found = None;
        find_ref(schema, &mut String::new(), &text, &mut found);
        return found.unwrap_or_default();
    }
    e.instance_path().as_str().to_owned()
}

/// Depth-first search for a `$ref` whose target is named in `error` (or, failing that, the
/// first `$ref` that is not a local pointer into the file).
fn find_ref(node: &Value, at: &mut String, error: &str, found: &mut Option<String>) {
    if found.is_some() {
        return;
    }
    match node {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let fragment = target.split_once('#').map_or(target.as_str(), |(_, f)| f);
                let named = !fragment.is_empty() && error.contains(fragment.trim_start_matches('/'));
                if named || !target.starts_with('#') {
                    *found = Some(format!("{at}/$ref"));
                    return;
                }
            }
            for (k, v) in map {
                let len = at.len();
                at.push('/');
                push_escaped(at, k);
                find_ref(v, at, error, found);
                at.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let len = at.len();
                at.push('/');
                at.push_str(&i.to_string());
                find_ref(v, at, error, found);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Checking one event
// ---------------------------------------------------------------------------------------------

// The call type of an event: decode's type, the one definition of the six Segment calls.
use crate::decode::EventType as CallType;

/// Which object of an event the call type's own schema describes.
fn payload_field(t: CallType) -> Option<&'static str> {
    match t {
        CallType::Track | CallType::Page | CallType::Screen => Some("properties"),
        CallType::Identify | CallType::Group => Some("traits"),
        CallType::Alias => None,
    }
}

/// Which schemas apply to one event.
struct Selection<'p> {
    /// `properties` or `traits` (none for alias).
    field: Option<&'static str>,
    schema: Option<&'p Compiled>,
}

/// A violation, and the top-level key of `properties`/`traits` that `omit` would remove to fix
/// it (`None`: omitting cannot fix it).
struct Found {
    violation: Violation,
    key: Option<String>,
}

impl Plan {
    /// The plan's name (its folder name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a `track` event named `event` has a schema.
    pub fn plans_event(&self, event: &str) -> bool {
        self.track.contains_key(event)
    }

    /// Judges one normalised event (a JSON object with `type`, `event` for track,
    /// `properties`/`traits`, `context`, …) under `policies`. Pure CPU, no I/O; the parse
    /// buffer is reused per thread, and a passing event is never copied.
    pub fn check(&self, policies: &Policies, event: &[u8]) -> Result<Verdict, ValidateError> {
        let text = std::str::from_utf8(event)
            .map_err(|e| ValidateError::InvalidJson { offset: e.valid_up_to(), detail: "not valid UTF-8" })?;
        let doc = self.parse(text)?;
        if !doc.is_object(0) {
            return Err(ValidateError::InvalidEvent("is not a JSON object"));
        }
        let ty = doc
            .get(0, "type")
            .and_then(|i| doc.str_at(i))
            .and_then(CallType::parse)
            .ok_or(ValidateError::InvalidEvent("has no valid 'type'"))?;

        let mut reported: Vec<Violation> = Vec::new();
        let selection = match ty {
            CallType::Track => {
                let name = doc
                    .get(0, "event")
                    .and_then(|i| doc.str_at(i))
                    .ok_or(ValidateError::InvalidEvent("of type track has no 'event' name"))?;
                match self.track.get(name) {
                    Some(planned) => {
                        let version = if planned.versions.is_empty() { None } else { event_version(&doc) };
                        Selection { field: payload_field(ty), schema: planned.select(version) }
                    }
                    None => {
                        let selection = Selection { field: payload_field(ty), schema: None };
                        if policies.unplanned_events == UnplannedEvents::Block {
                            reported.push(Violation {
                                pointer: "/event".into(),
                                keyword: "unplanned_event".into(),
                                message: truncate(
                                    &format!("event '{name}' is not in tracking plan '{}'", self.name),
                                    MAX_MESSAGE_CHARS,
                                ),
                            });
                            // Report what else is wrong with it too: the record is for auditing.
                            reported.extend(self.validate(&doc, &selection).into_iter().map(|f| f.violation));
                            return Ok(Verdict::Block { violations: capped(reported) });
                        }
                        selection
                    }
                }
            }
            CallType::Identify => Selection { field: payload_field(ty), schema: self.identify.as_ref() },
            CallType::Group => Selection { field: payload_field(ty), schema: self.group.as_ref() },
            CallType::Page => Selection { field: payload_field(ty), schema: self.page.as_ref() },
            CallType::Screen => Selection { field: payload_field(ty), schema: self.screen.as_ref() },
            CallType::Alias => Selection { field: None, schema: None },
        };

        // Unplanned properties are removed before validating, so that with
        // `additionalProperties: false` a key that `omit` removed is not also a violation.
        let mut modified: Option<String> = None;
        if policies.unplanned_properties == UnplannedProperties::Omit {
            if let (Some(field), Some(schema)) = (selection.field, selection.schema) {
                let unplanned = unplanned_keys(&doc, field, schema);
                if !unplanned.is_empty() {
                    // Only the first ones are reported (`capped`): thousands of client-chosen
                    // keys must not build thousands of messages to drop.
                    for key in unplanned.iter().take(MAX_REPORTED_VIOLATIONS) {
                        reported.push(Violation {
                            pointer: pointer_to(field, key),
                            keyword: "unplanned_property".into(),
                            message: truncate(&format!("'{key}' is not declared in the schema"), MAX_MESSAGE_CHARS),
                        });
                    }
                    modified = Some(without_keys(&doc, field, &unplanned));
                }
            }
        }
        // `current` borrows `modified`; everything that needs it is worked out in this block.
        let (found, fix) = {
            let reparsed;
            let current: &Doc<'_> = match &modified {
                None => &doc,
                Some(text) => {
                    reparsed = self.parse(text)?;
                    &reparsed
                }
            };
            let found = self.validate(current, &selection);
            // What `omit` would publish: possible only when every violation is attributable.
            let fix = match (policies.violations, selection.field) {
                (Violations::Omit, Some(field)) if !found.is_empty() && found.iter().all(|f| f.key.is_some()) => {
                    let mut keys: Vec<String> = found.iter().filter_map(|f| f.key.clone()).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    Some(without_keys(current, field, &keys))
                }
                _ => None,
            };
            (found, fix)
        };
        if found.is_empty() {
            return Ok(match modified {
                None => Verdict::Pass,
                Some(text) => Verdict::Publish { payload: Some(text.into_bytes()), violations: capped(reported) },
            });
        }
        reported.extend(found.into_iter().map(|f| f.violation));
        match policies.violations {
            Violations::Allow => {
                Ok(Verdict::Publish { payload: modified.map(String::into_bytes), violations: capped(reported) })
            }
            Violations::Block => Ok(Verdict::Block { violations: capped(reported) }),
            Violations::Omit => {
                let Some(fixed) = fix else {
                    return Ok(Verdict::Block { violations: capped(reported) });
                };
                let left = self.validate(&self.parse(&fixed)?, &selection);
                if !left.is_empty() {
                    for f in left {
                        if !reported.contains(&f.violation) {
                            reported.push(f.violation);
                        }
                    }
                    return Ok(Verdict::Block { violations: capped(reported) });
                }
                Ok(Verdict::Publish { payload: Some(fixed.into_bytes()), violations: capped(reported) })
            }
        }
    }

    /// Parses what this plan's schemas read of an event.
    fn parse<'t>(&self, text: &'t str) -> Result<Doc<'t>, ValidateError> {
        tape::parse(text, &self.need).map_err(|e| ValidateError::InvalidJson { offset: e.offset, detail: e.what })
    }

    /// Runs `common.json` on the whole event and the event's schema on its payload.
    fn validate(&self, doc: &Doc<'_>, selection: &Selection<'_>) -> Vec<Found> {
        let mut found = Vec::new();
        if let Some(common) = &self.common {
            let root = doc.node(0);
            if !common.validator.is_valid(root) {
                for e in common.validator.iter_errors(root) {
                    push_found(&mut found, "", selection.field, &e);
                }
            }
        }
        if let (Some(field), Some(schema)) = (selection.field, selection.schema) {
            // An absent (or null) payload is checked as `{}`: SDKs send `{}` for "nothing".
            let empty;
            let node = match doc.get(0, field).filter(|&i| !doc.is_null(i)) {
                Some(i) => doc.node(i),
                None => {
                    empty = tape::empty_object();
                    empty.node(0)
                }
            };
            if !schema.validator.is_valid(node) {
                let prefix = format!("/{field}");
                for e in schema.validator.iter_errors(node) {
                    push_found(&mut found, &prefix, Some(field), &e);
                }
            }
        }
        found
    }
}

/// `context.protocols.event_version`, when it is a positive integer (or a string of digits).
fn event_version(doc: &Doc<'_>) -> Option<u64> {
    let context = doc.get(0, "context")?;
    let protocols = doc.get(context, "protocols")?;
    let version = doc.get(protocols, "event_version")?;
    let text = doc.number_text(version).or_else(|| doc.str_at(version))?;
    text.parse::<u64>().ok().filter(|v| *v > 0)
}

/// Top-level keys of the payload that the schema does not declare, once each, in the order
/// sent (empty when it declares nothing, or when the payload is not an object).
fn unplanned_keys(doc: &Doc<'_>, field: &str, schema: &Compiled) -> Vec<String> {
    let Some(payload) = doc.get(0, field) else { return Vec::new() };
    let mut seen = KeySet::default();
    let mut keys: Vec<String> = Vec::new();
    for (key, _) in doc.members(payload) {
        if schema.declares(key) == Some(false) && seen.insert(key) {
            keys.push(key.to_owned());
        }
    }
    keys
}

/// Up to this many keys, [`KeySet`] compares with each (cheaper than hashing the few keys an
/// omission usually has); past it, a hash set keeps it linear.
const LINEAR_SCAN_MAX: usize = 16;

/// A set of the keys `omit` removes. The keys are the client's choice, so membership must cost
/// O(1) whatever their number: thousands of them must cost what their bytes cost, not their
/// count squared.
struct KeySet<T> {
    few: Vec<T>,
    many: HashSet<T>,
}

impl<T> Default for KeySet<T> {
    fn default() -> Self {
        KeySet { few: Vec::new(), many: HashSet::new() }
    }
}

impl<T: Eq + Hash + Copy> KeySet<T> {
    /// Adds `key`; `false` when it was there already.
    fn insert(&mut self, key: T) -> bool {
        if self.contains(key) {
            return false;
        }
        if !self.many.is_empty() {
            self.many.insert(key);
        } else if self.few.len() < LINEAR_SCAN_MAX {
            self.few.push(key);
        } else {
            // From here on every key is in `many`, `few` stays empty.
            self.many.extend(self.few.drain(..));
            self.many.insert(key);
        }
        true
    }

    fn contains(&self, key: T) -> bool {
        if self.many.is_empty() {
            self.few.contains(&key)
        } else {
            self.many.contains(&key)
        }
    }
}

impl<T: Eq + Hash + Copy> FromIterator<T> for KeySet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(keys: I) -> Self {
        let mut set = KeySet::default();
        for key in keys {
            set.insert(key);
        }
        set
    }
}

/// The event's text with the members `keys` of its payload object removed. Everything outside
/// the payload, and each kept member's key and value, are the caller's bytes in the caller's
/// order; only the separators inside the payload object are rewritten (`"k":v,"k2":v2`).
fn without_keys(doc: &Doc<'_>, field: &str, keys: &[String]) -> String {
    let text = doc.text();
    let Some(payload) = doc.get(0, field).filter(|&i| doc.is_object(i)) else { return text.to_owned() };
    let (start, end) = doc.span(payload);
    let keys: KeySet<&str> = keys.iter().map(String::as_str).collect();
    let mut out = String::with_capacity(text.len());
    out.push_str(text.get(..start).unwrap_or(""));
    out.push('{');
    let mut first = true;
    for (key, value) in doc.members_with_key_index(payload) {
        let name = doc.str_at(key).unwrap_or("");
        if keys.contains(name) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(doc.raw(key));
        out.push(':');
        out.push_str(doc.raw(value));
    }
    out.push('}');
    out.push_str(text.get(end..).unwrap_or(""));
    out
}

/// Turns one validator error into violations (one per key for `additionalProperties`).
/// `prefix` is where the validated node sits in the event; `field` the payload member, for
/// attributing the violation to one of its top-level keys.
fn push_found(found: &mut Vec<Found>, prefix: &str, field: Option<&str>, e: &ValidationError<'_>) {
    let at = format!("{prefix}{}", e.instance_path().as_str());
    let keyword = e.kind().keyword().to_owned();
    match e.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
            let mut pointer = at.clone();
            pointer.push('/');
            push_escaped(&mut pointer, &name);
            // Attributed by where the missing key's object is: omitting cannot create a key.
            let key = field.and_then(|f| top_level_key(&at, f));
            found.push(Found { violation: Violation { pointer, keyword, message: message_of(e) }, key });
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                let mut pointer = at.clone();
                pointer.push('/');
                push_escaped(&mut pointer, name);
                let key = field.and_then(|f| top_level_key(&pointer, f));
                let message = truncate(&format!("additional property '{name}' is not allowed"), MAX_MESSAGE_CHARS);
                found.push(Found { violation: Violation { pointer, keyword: keyword.clone(), message }, key });
            }
        }
        _ => {
            let key = field.and_then(|f| top_level_key(&at, f));
            found.push(Found { violation: Violation { pointer: at, keyword, message: message_of(e) }, key });
        }
    }
}

fn message_of(e: &ValidationError<'_>) -> String {
    truncate(&e.to_string(), MAX_MESSAGE_CHARS)
}

/// The first key below `/<field>/` in `pointer`, unescaped.
fn top_level_key(pointer: &str, field: &str) -> Option<String> {
    let rest = pointer.strip_prefix('/')?.strip_prefix(field)?.strip_prefix('/')?;
    let segment = rest.split('/').next()?;
    Some(segment.replace("~1", "/").replace("~0", "~"))
}

fn pointer_to(field: &str, key: &str) -> String {
    let mut p = format!("/{field}/");
    push_escaped(&mut p, key);
    p
}

/// Appends `segment` escaped as a JSON pointer segment (RFC 6901).
fn push_escaped(out: &mut String, segment: &str) {
    for c in segment.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or(s)),
    }
}

fn capped(mut v: Vec<Violation>) -> Vec<Violation> {
    v.truncate(MAX_REPORTED_VIOLATIONS);
    v
}

// ---------------------------------------------------------------------------------------------
// The violations topic
// ---------------------------------------------------------------------------------------------

/// The `event` name of a normalised event (what [`violation_record`] wants), or `None` when it
/// has none (every call type but track). Reads nothing else of the event.
pub fn event_name(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let doc = tape::parse(text, &Need::path(&["event"])).ok()?;
    doc.get(0, "event").and_then(|i| doc.str_at(i)).map(str::to_owned)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    source_id: &'a str,
    message_id: &'a str,
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    blocked: bool,
    violations: &'a [Violation],
    original_event: Original<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Original<'a> {
    Json(&'a RawValue),
    Text(Cow<'a, str>),
}

/// The JSON record published to the violations topic for one event:
/// `{"sourceId","messageId","eventType","event"?,"blocked","violations":[…],"originalEvent":{…}}`.
/// `originalEvent` is the event as it was before any `omit` (it carries its own `receivedAt`),
/// embedded as JSON (as a string if it were not JSON). Pure: no clock, no I/O.
pub fn violation_record(
    source_id: &str,
    message_id: &str,
    event_name: Option<&str>,
    event_type: &str,
    violations: &[Violation],
    blocked: bool,
    original_event: &[u8],
) -> Vec<u8> {
    let original = match serde_json::from_slice::<&RawValue>(original_event) {
        Ok(raw) => Original::Json(raw),
        Err(_) => Original::Text(String::from_utf8_lossy(original_event)),
    };
    let record =
        Record { source_id, message_id, event_type, event: event_name, blocked, violations, original_event: original };
    // Serialising strings and an already-valid raw value into a Vec cannot fail.
    serde_json::to_vec(&record).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The tape: a borrowed JSON document the validators run on
// ---------------------------------------------------------------------------------------------

mod tape {
    //! A JSON document as one flat `Vec` of nodes in document order; strings and numbers are
    //! slices of the source text. Implements `jsonschema::json::Json`, so compiled validators
    //! run on it without building a `serde_json::Value`. Strict JSON (RFC 8259): anything the
    //! parser accepts, serde_json accepts.

    use std::borrow::Cow;

    use jsonschema::json::{cmp, Array, Json, JsonNumber, Node, NodeIdentity, Object};
    use jsonschema::types::JsonType;
    use serde_json::Value;

    // Deeper than this is refused. Decode refuses it too, for every subtree it forwards (one
    // shared constant), so an event decode wrote always parses here.
    use crate::decode::MAX_DEPTH;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Null,
        False,
        True,
        Number,
        /// A string without escapes: its text is the span minus the quotes.
        Str,
        /// A string with escapes: its text is `owned[len]`.
        EscStr,
        Array,
        Object,
    }

    #[derive(Debug, Clone, Copy)]
    struct Slot {
        kind: Kind,
        /// Byte span in the text (strings include their quotes).
        start: u32,
        end: u32,
        /// Containers: member/element count. `EscStr`: index into `owned`. `Number`: 1 when
        /// written as an integer.
        len: u32,
        /// Index of the first slot after this value (and everything inside it).
        after: u32,
    }

    /// A parsed document. Objects are laid out as `[object, key, value…, key, value…]`.
    pub struct Doc<'t> {
        text: &'t str,
        slots: Vec<Slot>,
        owned: Vec<String>,
    }

    /// Why a text is not JSON.
    #[derive(Debug)]
    pub struct ParseError {
        pub offset: usize,
        pub what: &'static str,
    }

    /// What part of a value the validators can look at, worked out from a schema when it is
    /// compiled: the values nobody looks at are skipped instead of parsed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Need {
        /// The whole value.
        All,
        /// If the value is an object, only these members (sorted by name), each with its own
        /// need; any other value whole.
        Members(Wanted),
    }

    /// The members a [`Need`] keeps.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Wanted {
        /// Bit `n` is set when a name is `n` bytes long (bit 63: 63 or more): most unwanted
        /// names are rejected on their length alone.
        lengths: u64,
        list: Vec<(Box<str>, Need)>,
    }

    impl Wanted {
        fn new(list: Vec<(Box<str>, Need)>) -> Wanted {
            let lengths = list.iter().fold(0u64, |m, (k, _)| m | 1 << k.len().min(63));
            Wanted { lengths, list }
        }
    }

    /// Keywords under which an object's unlisted members cannot matter, and its listed ones
    /// matter only through their own subschema (plus annotations). A schema using any other
    /// keyword (`$ref`, `allOf`, `additionalProperties: false`, `patternProperties`, …) needs
    /// its whole value: dynamic schemas fall back to a full parse.
    const STRUCTURAL: [&str; 13] = [
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "readOnly",
        "writeOnly",
        "definitions",
        "$defs",
        "type",
        "properties",
    ];

    impl Need {
        /// What validating against `schema` looks at.
        pub fn of_schema(schema: &Value) -> Need {
            let map = match schema {
                Value::Bool(_) => return Need::none(),
                Value::Object(map) => map,
                _ => return Need::All,
            };
            let mut members: Vec<(Box<str>, Need)> = Vec::new();
            for (keyword, value) in map {
                match (keyword.as_str(), value) {
                    ("properties", Value::Object(properties)) => {
                        for (name, sub) in properties {
                            members.push((name.as_str().into(), Need::of_schema(sub)));
                        }
                    }
                    ("required", Value::Array(names)) => {
                        for name in names {
                            let Some(name) = name.as_str() else { return Need::All };
                            members.push((name.into(), Need::none()));
                        }
                    }
                    // `true` and `{}` accept every extra member: they constrain nothing.
                    ("additionalProperties", Value::Bool(true)) => {}
                    ("additionalProperties", Value::Object(m)) if m.is_empty() => {}
                    (k, _) if STRUCTURAL.contains(&k) && k != "properties" => {}
                    _ => return Need::All,
                }
            }
            Need::from_members(members)
        }

        /// Sorts and merges duplicate names.
        fn from_members(mut members: Vec<(Box<str>, Need)>) -> Need {
            members.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out: Vec<(Box<str>, Need)> = Vec::with_capacity(members.len());
            for (name, need) in members {
                match out.last_mut() {
                    Some((last, merged)) if *last == name => {
                        let previous = std::mem::replace(merged, Need::All);
                        *merged = previous.merge(need);
                    }
                    _ => out.push((name, need)),
                }
            }
            Need::Members(Wanted::new(out))
        }

        /// An object's members are not looked at (only its presence or type).
        pub fn none() -> Need {
            Need::Members(Wanted::new(Vec::new()))
        }

        /// What both `self` and `other` look at.
        pub fn merge(self, other: Need) -> Need {
            match (self, other) {
                (Need::Members(a), Need::Members(b)) => {
                    let mut list = a.list;
                    list.extend(b.list);
                    Need::from_members(list)
                }
                _ => Need::All,
            }
        }

        /// `{first: {second: … leaf}}`.
        #[cfg(test)]
        pub fn nested(path: &[&str], leaf: Need) -> Need {
            path.iter().rev().fold(leaf, |inner, name| Need::Members(Wanted::new(vec![((*name).into(), inner)])))
        }

        /// `{first: {second: … All}}`.
        pub fn path(path: &[&str]) -> Need {
            match path.split_first() {
                None => Need::All,
                Some((first, rest)) => Need::Members(Wanted::new(vec![((*first).into(), Need::path(rest))])),
            }
        }

        fn member(&self, name: &str) -> Option<&Need> {
            match self {
                Need::All => Some(self),
                // A handful of names: a scan that rejects on length first beats a binary search.
                Need::Members(m) => {
                    if m.lengths & 1 << name.len().min(63) == 0 {
                        return None;
                    }
                    m.list.iter().find(|(k, _)| same(k, name)).map(|(_, n)| n)
                }
            }
        }
    }

    /// Parses `text`, which must hold exactly one JSON value; where `need` allows, object members
    /// are skipped (their brackets and strings are matched, but nothing in them is checked).
    pub fn parse<'t>(text: &'t str, need: &Need) -> Result<Doc<'t>, ParseError> {
        if u32::try_from(text.len()).is_err() {
            return Err(ParseError { offset: 0, what: "document too large" });
        }
        // About one node per 8 bytes in Segment events; the buffer is the thread's last one.
        let mut slots = SPARE.take();
        slots.clear();
        slots.reserve(text.len() / 8 + 4);
        let mut p = Parser {
            text,
            b: text.as_bytes(),
            pos: 0,
            slots,
            owned: Vec::new(),
            error: ParseError { offset: 0, what: "" },
        };
        let parsed = p.value(0, need).and_then(|()| {
            p.ws();
            if p.pos == p.b.len() {
                Ok(())
            } else {
                Err(p.fail("trailing characters after the value"))
            }
        });
        match parsed {
            Ok(()) => Ok(Doc { text, slots: p.slots, owned: p.owned }),
            Err(Fail) => Err(p.error),
        }
    }

    thread_local! {
        /// A node buffer kept from the thread's last document: no allocation per event.
        static SPARE: std::cell::Cell<Vec<Slot>> = const { std::cell::Cell::new(Vec::new()) };
    }

    /// Buffers above this many nodes (≈1.3 MB) are freed rather than kept.
    const SPARE_MAX_SLOTS: usize = 1 << 16;

    impl Drop for Doc<'_> {
        fn drop(&mut self) {
            // Keep the larger of this buffer and the one already kept (small documents, like
            // `{}`, must not replace a buffer sized for events).
            let spare = SPARE.take();
            let capacity = self.slots.capacity();
            if capacity > spare.capacity() && capacity <= SPARE_MAX_SLOTS {
                SPARE.set(std::mem::take(&mut self.slots));
            } else {
                SPARE.set(spare);
            }
        }
    }

    /// `{}` (what an absent payload is validated as).
    pub fn empty_object() -> Doc<'static> {
        Doc {
            text: "{}",
            slots: vec![Slot { kind: Kind::Object, start: 0, end: 2, len: 0, after: 1 }],
            owned: Vec::new(),
        }
    }

    /// A parse failed; what and where are in [`Parser::error`] (a zero-sized error keeps the
    /// hot path's `Result`s in registers).
    struct Fail;

    type Step = Result<(), Fail>;

    struct Parser<'t> {
        text: &'t str,
        b: &'t [u8],
        pos: usize,
        slots: Vec<Slot>,
        owned: Vec<String>,
        error: ParseError,
    }

    impl<'t> Parser<'t> {
        fn fail(&mut self, what: &'static str) -> Fail {
            self.error = ParseError { offset: self.pos, what };
            Fail
        }

        fn peek(&self) -> Option<u8> {
            self.b.get(self.pos).copied()
        }

        fn ws(&mut self) {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.pos) {
                self.pos += 1;
            }
        }

        fn push(&mut self, kind: Kind, start: usize, end: usize, len: u32) -> usize {
            let index = self.slots.len();
            // Offsets fit u32: `parse` refuses longer texts.
            self.slots.push(Slot { kind, start: start as u32, end: end as u32, len, after: index as u32 + 1 });
            index
        }

        /// Closes container slot `index`: its end, count, and where its subtree ends.
        fn close(&mut self, index: usize, count: u32) {
            let after = self.slots.len() as u32;
            let end = self.pos as u32;
            if let Some(slot) = self.slots.get_mut(index) {
                slot.len = count;
                slot.after = after;
                slot.end = end;
            }
        }

        fn value(&mut self, depth: u32, need: &Need) -> Step {
            self.ws();
            match self.peek() {
                Some(b'{') => self.object(depth, need),
                Some(b'[') => self.array(depth),
                Some(b'"') => self.string(),
                Some(b't') => self.literal(b"true", Kind::True),
                Some(b'f') => self.literal(b"false", Kind::False),
                Some(b'n') => self.literal(b"null", Kind::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(_) => Err(self.fail("expected a JSON value")),
                None => Err(self.fail("unexpected end of input")),
            }
        }

        fn object(&mut self, depth: u32, need: &Need) -> Step {
            if depth >= MAX_DEPTH {
                return Err(self.fail("nested too deeply"));
            }
            let index = self.push(Kind::Object, self.pos, self.pos, 0);
            self.pos += 1;
            self.ws();
            let mut count = 0u32;
            if self.peek() == Some(b'}') {
                self.pos += 1;
                self.close(index, 0);
                return Ok(());
            }
            let text = self.text;
            loop {
                self.ws();
                if self.peek() != Some(b'"') {
                    return Err(self.fail("expected a member name"));
                }
                let key_start = self.pos;
                let (key_end, escaped) = self.scan_string()?;
                self.pos = key_end;
                self.ws();
                if self.peek() != Some(b':') {
                    return Err(self.fail("expected ':'"));
                }
                self.pos += 1;
                // The key is recorded only when its value is wanted.
                let child = if escaped {
                    let name = self.unescape(key_start, key_end)?;
                    let child = need.member(&name);
                    if child.is_some() {
                        let k = self.owned.len() as u32;
                        self.owned.push(name);
                        self.push(Kind::EscStr, key_start, key_end, k);
                    }
                    child
                } else {
                    let child = need.member(text.get(key_start + 1..key_end - 1).unwrap_or(""));
                    if child.is_some() {
                        self.push(Kind::Str, key_start, key_end, 0);
                    }
                    child
                };
                match child {
                    Some(child) => {
                        self.value(depth + 1, child)?;
                        count += 1;
                    }
                    None => self.skip_value()?,
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.fail("expected ',' or '}'")),
                }
            }
            self.close(index, count);
            Ok(())
        }

        fn array(&mut self, depth: u32) -> Step {
            if depth >= MAX_DEPTH {
                return Err(self.fail("nested too deeply"));
            }
            let index = self.push(Kind::Array, self.pos, self.pos, 0);
            self.pos += 1;
            self.ws();
            let mut count = 0u32;
            if self.peek() == Some(b']') {
                self.pos += 1;
                self.close(index, 0);
                return Ok(());
            }
            loop {
                self.value(depth + 1, &Need::All)?;
                count += 1;
                self.ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.fail("expected ',' or ']'")),
                }
            }
            self.close(index, count);
            Ok(())
        }

        /// Finds the end of the string starting at `self.pos`: `(index after the closing quote,
        /// whether it holds escapes)`. Control characters are refused; escapes are checked by
        /// [`Parser::unescape`] when the string is recorded.
        fn scan_string(&mut self) -> Result<(usize, bool), Fail> {
            let mut i = self.pos + 1;
            let mut escaped = false;
            loop {
                // Sixteen bytes at a time up to the next quote, backslash or control character:
                // string contents are most of an event's bytes, and most strings (keys, ids)
                // end within the first sixteen, so the loop's exit branch is well predicted.
                while let Some(chunk) = self.b.get(i..i + 16) {
                    let (lo, hi) = chunk.split_at(8);
                    let lo = special_bytes(u64::from_le_bytes(lo.try_into().unwrap_or([b'"'; 8])));
                    let hi = special_bytes(u64::from_le_bytes(hi.try_into().unwrap_or([b'"'; 8])));
                    let special = u128::from(lo) | u128::from(hi) << 64;
                    if special != 0 {
                        i += (special.trailing_zeros() / 8) as usize;
                        break;
                    }
                    i += 16;
                }
                match self.b.get(i) {
                    Some(b'"') => return Ok((i + 1, escaped)),
                    Some(b'\\') => {
                        escaped = true;
                        i += 2;
                    }
                    Some(c) if *c < 0x20 => {
                        self.pos = i;
                        return Err(self.fail("control character in a string"));
                    }
                    Some(_) => i += 1,
                    None => {
                        self.pos = i;
                        return Err(self.fail("unterminated string"));
                    }
                }
            }
        }

        /// Decodes the escapes of the string `text[start..end]` (quotes included). Rare: serde_json
        /// checks and decodes them.
        fn unescape(&mut self, start: usize, end: usize) -> Result<String, Fail> {
            match self.text.get(start..end).and_then(|raw| serde_json::from_str::<String>(raw).ok()) {
                Some(s) => Ok(s),
                None => {
                    self.pos = start;
                    Err(self.fail("invalid escape in a string"))
                }
            }
        }

        fn string(&mut self) -> Step {
            let start = self.pos;
            let (end, escaped) = self.scan_string()?;
            if escaped {
                let unescaped = self.unescape(start, end)?;
                let k = self.owned.len() as u32;
                self.owned.push(unescaped);
                self.push(Kind::EscStr, start, end, k);
            } else {
                self.push(Kind::Str, start, end, 0);
            }
            self.pos = end;
            Ok(())
        }

        /// Moves past one value without recording it: brackets and strings are matched, the
        /// rest is not checked (decode wrote this JSON; only what a schema reads is parsed).
        fn skip_value(&mut self) -> Step {
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    self.pos = self.scan_string()?.0;
                    Ok(())
                }
                Some(b'{' | b'[') => {
                    let mut depth = 0usize;
                    loop {
                        match self.peek() {
                            None => return Err(self.fail("unexpected end of input")),
                            Some(b'"') => {
                                self.pos = self.scan_string()?.0;
                                continue;
                            }
                            Some(b'{' | b'[') => depth += 1,
                            Some(b'}' | b']') => {
                                depth = depth.saturating_sub(1);
                                if depth == 0 {
                                    self.pos += 1;
                                    return Ok(());
                                }
                            }
                            Some(_) => {}
                        }
                        self.pos += 1;
                    }
                }
                Some(_) => {
                    let start = self.pos;
                    while let Some(c) = self.peek() {
                        if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                            break;
                        }
                        self.pos += 1;
                    }
                    if self.pos == start {
                        return Err(self.fail("expected a JSON value"));
                    }
                    Ok(())
                }
                None => Err(self.fail("unexpected end of input")),
            }
        }

        fn digits(&self, mut i: usize) -> usize {
            while let Some(b'0'..=b'9') = self.b.get(i) {
                i += 1;
            }
            i
        }

        fn number(&mut self) -> Step {
            let start = self.pos;
            let mut i = start;
            let mut integer = true;
            if self.b.get(i) == Some(&b'-') {
                i += 1;
            }
            i = match self.b.get(i) {
                Some(b'0') => i + 1,
                Some(b'1'..=b'9') => self.digits(i + 1),
                _ => return Err(self.fail("invalid number")),
            };
            if self.b.get(i) == Some(&b'.') {
                let j = self.digits(i + 1);
                if j == i + 1 {
                    return Err(self.fail("invalid number"));
                }
                i = j;
                integer = false;
            }
            if let Some(b'e' | b'E') = self.b.get(i) {
                i += 1;
                if let Some(b'+' | b'-') = self.b.get(i) {
                    i += 1;
                }
                let j = self.digits(i);
                if j == i {
                    return Err(self.fail("invalid number"));
                }
                i = j;
                integer = false;
            }
            // `len` of a number: 1 when written as an integer (no fraction, no exponent).
            self.push(Kind::Number, start, i, u32::from(integer));
            self.pos = i;
            Ok(())
        }

        fn literal(&mut self, word: &'static [u8], kind: Kind) -> Step {
            if self.b.get(self.pos..self.pos + word.len()) != Some(word) {
                return Err(self.fail("invalid literal"));
            }
            self.push(kind, self.pos, self.pos + word.len(), 0);
            self.pos += word.len();
            Ok(())
        }
    }

    /// String equality without a `memcmp` call: keys are short, and most differ in length.
    pub fn same(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while let (Some(x), Some(y)) = (a.get(i..i + 8), b.get(i..i + 8)) {
            if u64::from_le_bytes(x.try_into().unwrap_or([0; 8])) != u64::from_le_bytes(y.try_into().unwrap_or([0; 8]))
            {
                return false;
            }
            i += 8;
        }
        a.iter().skip(i).zip(b.iter().skip(i)).all(|(x, y)| x == y)
    }

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// A mask with the high bit set in the bytes of `word` (little-endian) that end a plain run
    /// of string content: a quote, a backslash, or a control character. Only the lowest set byte is exact
    /// (borrows can flag bytes above it), which is the only one used.
    fn special_bytes(word: u64) -> u64 {
        let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGHS;
        below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20)
    }

    impl<'t> Doc<'t> {
        fn slot(&self, i: u32) -> Option<&Slot> {
            self.slots.get(i as usize)
        }

        fn kind(&self, i: u32) -> Option<Kind> {
            self.slot(i).map(|s| s.kind)
        }

        /// The whole text.
        pub fn text(&self) -> &'t str {
            self.text
        }

        /// Node `i` as a validator instance.
        pub fn node(&self, i: u32) -> TNode<'_> {
            TNode { doc: self, idx: i }
        }

        pub fn is_object(&self, i: u32) -> bool {
            self.kind(i) == Some(Kind::Object)
        }

        pub fn is_null(&self, i: u32) -> bool {
            self.kind(i) == Some(Kind::Null)
        }

        /// Byte span of node `i`.
        pub fn span(&self, i: u32) -> (usize, usize) {
            self.slot(i).map_or((0, 0), |s| (s.start as usize, s.end as usize))
        }

        /// The source text of node `i` (strings with their quotes).
        pub fn raw(&self, i: u32) -> &'t str {
            let (start, end) = self.span(i);
            self.text.get(start..end).unwrap_or("")
        }

        /// The text of string node `i`.
        pub fn str_at(&self, i: u32) -> Option<&str> {
            let s = self.slot(i)?;
            match s.kind {
                Kind::Str => self.text.get(s.start as usize + 1..(s.end as usize).saturating_sub(1)),
                Kind::EscStr => self.owned.get(s.len as usize).map(String::as_str),
                _ => None,
            }
        }

        /// The literal of number node `i`.
        pub fn number_text(&self, i: u32) -> Option<&'t str> {
            (self.kind(i) == Some(Kind::Number)).then(|| self.raw(i))
        }

        fn number(&self, i: u32) -> Option<TNumber<'t>> {
            let s = self.slot(i).filter(|s| s.kind == Kind::Number)?;
            Some(TNumber { text: self.raw(i), integer: s.len == 1 })
        }

        /// `(key node, value node)` of each member of object `obj`.
        pub fn members_with_key_index(&self, obj: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
            let (mut next, count) = match self.slot(obj) {
                Some(s) if s.kind == Kind::Object => (obj + 1, s.len),
                _ => (0, 0),
            };
            (0..count).map_while(move |_| {
                let key = next;
                let value = key + 1;
                next = self.slot(value)?.after;
                Some((key, value))
            })
        }

        /// `(name, value node)` of each member of object `obj`.
        pub fn members(&self, obj: u32) -> impl Iterator<Item = (&str, u32)> + '_ {
            self.members_with_key_index(obj).map(|(k, v)| (self.str_at(k).unwrap_or(""), v))
        }

        /// The value of member `key` of object `obj` (the first, if repeated).
        pub fn get(&self, obj: u32, key: &str) -> Option<u32> {
            self.members(obj).find(|(k, _)| same(k, key)).map(|(_, v)| v)
        }

        fn to_value(&self, i: u32) -> Value {
            match self.kind(i) {
                None | Some(Kind::Null) => Value::Null,
                Some(Kind::True) => Value::Bool(true),
                Some(Kind::False) => Value::Bool(false),
                Some(Kind::Str | Kind::EscStr) => Value::String(self.str_at(i).unwrap_or("").to_owned()),
                // A literal past f64 (1e400) is not representable: null, on this cold path only.
                Some(Kind::Number | Kind::Array | Kind::Object) => {
                    serde_json::from_str(self.raw(i)).unwrap_or(Value::Null)
                }
            }
        }
    }

    /// The `jsonschema` representation marker for [`Doc`].
    pub struct Tape;

    impl Json for Tape {
        type Node<'a> = TNode<'a>;
        type PreparedKey = Box<str>;
        type StringBuffer = ();
        // Lookups are linear scans here, so a members pass pays off early.
        const KEYS_PER_LOOKUP: usize = 8;
        const ACYCLIC: bool = true;

        fn prepare_key(key: &str) -> Box<str> {
            key.into()
        }

        fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TNode<'_>) -> T) -> T {
            // Only `propertyNames` gets here; an allocation per name is fine.
            let doc = Doc {
                text: "",
                slots: vec![Slot { kind: Kind::EscStr, start: 0, end: 0, len: 0, after: 1 }],
                owned: vec![string.to_owned()],
            };
            f(doc.node(0))
        }
    }

    /// One node of a [`Doc`].
    #[derive(Clone, Copy)]
    pub struct TNode<'a> {
        doc: &'a Doc<'a>,
        idx: u32,
    }

    impl TNode<'_> {
        fn kind(&self) -> Kind {
            self.doc.kind(self.idx).unwrap_or(Kind::Null)
        }
    }

    impl<'a> Node<'a, Tape> for TNode<'a> {
        type Object = TObject<'a>;
        type Array = TArray<'a>;
        type Number = TNumber<'a>;

        fn as_object(&self) -> Option<TObject<'a>> {
            (self.kind() == Kind::Object).then_some(TObject { doc: self.doc, idx: self.idx })
        }

        fn as_array(&self) -> Option<TArray<'a>> {
            (self.kind() == Kind::Array).then_some(TArray { doc: self.doc, idx: self.idx })
        }

        fn as_string(&self) -> Option<Cow<'a, str>> {
            self.doc.str_at(self.idx).map(Cow::Borrowed)
        }

        fn as_number(&self) -> Option<TNumber<'a>> {
            self.doc.number(self.idx)
        }

        fn as_boolean(&self) -> Option<bool> {
            match self.kind() {
                Kind::True => Some(true),
                Kind::False => Some(false),
                _ => None,
            }
        }

        fn is_null(&self) -> bool {
            self.kind() == Kind::Null
        }

        fn is_number(&self) -> bool {
            self.kind() == Kind::Number
        }

        fn json_type(&self) -> JsonType {
            match self.kind() {
                Kind::Null => JsonType::Null,
                Kind::False | Kind::True => JsonType::Boolean,
                Kind::Number => JsonType::Number,
                Kind::Str | Kind::EscStr => JsonType::String,
                Kind::Array => JsonType::Array,
                Kind::Object => JsonType::Object,
            }
        }

        // `enum`/`const` on scalars (the usual case) must not build a `Value` per check.
        fn equals_value(&self, expected: &Value) -> bool {
            match (self.kind(), expected) {
                (Kind::Str | Kind::EscStr, Value::String(e)) => self.doc.str_at(self.idx) == Some(e.as_str()),
                (Kind::Null, Value::Null) => true,
                (Kind::True, Value::Bool(b)) => *b,
                (Kind::False, Value::Bool(b)) => !*b,
                (Kind::Number, Value::Number(n)) => {
                    self.doc.number(self.idx).is_some_and(|m| cmp::equal_numbers(&m, n))
                }
                (Kind::Array, Value::Array(_)) | (Kind::Object, Value::Object(_)) => {
                    cmp::equal(&self.doc.to_value(self.idx), expected)
                }
                _ => false,
            }
        }

        fn to_value(&self) -> Cow<'a, Value> {
            Cow::Owned(self.doc.to_value(self.idx))
        }

        fn identity(&self) -> Option<NodeIdentity> {
            Some(NodeIdentity::tagged(std::ptr::from_ref(self.doc) as usize, self.idx))
        }
    }

    /// An object node.
    #[derive(Clone, Copy)]
    pub struct TObject<'a> {
        doc: &'a Doc<'a>,
        idx: u32,
    }

    /// Iterator over an object's members.
    pub struct Members<'a> {
        doc: &'a Doc<'a>,
        next: u32,
        left: u32,
    }

    impl<'a> Iterator for Members<'a> {
        type Item = (&'a str, TNode<'a>);

        fn next(&mut self) -> Option<Self::Item> {
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            let key = self.next;
            let value = key + 1;
            self.next = self.doc.slot(value).map_or(u32::MAX, |s| s.after);
            Some((self.doc.str_at(key).unwrap_or(""), TNode { doc: self.doc, idx: value }))
        }
    }

    impl<'a> Object<'a, Tape> for TObject<'a> {
        type Node = TNode<'a>;
        type MemberName = &'a str;
        type MembersIter = Members<'a>;

        fn len(&self) -> usize {
            self.doc.slot(self.idx).map_or(0, |s| s.len as usize)
        }

        fn get(&self, key: &Box<str>) -> Option<TNode<'a>> {
            self.members().find(|(k, _)| same(k, key)).map(|(_, v)| v)
        }

        fn members(&self) -> Members<'a> {
            Members { doc: self.doc, next: self.idx + 1, left: self.doc.slot(self.idx).map_or(0, |s| s.len) }
        }
    }

    /// An array node.
    #[derive(Clone, Copy)]
    pub struct TArray<'a> {
        doc: &'a Doc<'a>,
        idx: u32,
    }

    /// Iterator over an array's elements.
    pub struct Elements<'a> {
        doc: &'a Doc<'a>,
        next: u32,
        left: u32,
    }

    impl<'a> Iterator for Elements<'a> {
        type Item = TNode<'a>;

        fn next(&mut self) -> Option<TNode<'a>> {
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            let item = self.next;
            self.next = self.doc.slot(item).map_or(u32::MAX, |s| s.after);
            Some(TNode { doc: self.doc, idx: item })
        }
    }

    impl<'a> Array<'a, Tape> for TArray<'a> {
        type Node = TNode<'a>;
        type ElementsIter = Elements<'a>;

        fn len(&self) -> usize {
            self.doc.slot(self.idx).map_or(0, |s| s.len as usize)
        }

        fn elements(&self) -> Elements<'a> {
            Elements { doc: self.doc, next: self.idx + 1, left: self.doc.slot(self.idx).map_or(0, |s| s.len) }
        }
    }

    /// A number, as its literal.
    pub struct TNumber<'a> {
        text: &'a str,
        /// Written without fraction or exponent.
        integer: bool,
    }

    /// Exact powers of ten (all of them up to 1e22 are exact in an f64).
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
        1e20, 1e21, 1e22,
    ];

    /// `-?digits(.digits)?` with at most 15 digits in all: the mantissa and the power of ten are
    /// both exact in an f64, so one division rounds correctly (Clinger's fast path). Prices and
    /// totals are like this; anything else goes to `str::parse`.
    fn fast_f64(text: &str) -> Option<f64> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut mantissa: u64 = 0;
        let mut count = 0usize;
        let mut fraction: Option<usize> = None;
        for b in digits.bytes() {
            match b {
                b'0'..=b'9' => {
                    mantissa = mantissa * 10 + u64::from(b - b'0');
                    count += 1;
                    if count > 15 {
                        return None;
                    }
                    if let Some(f) = fraction.as_mut() {
                        *f += 1;
                    }
                }
                b'.' if fraction.is_none() => fraction = Some(0),
                _ => return None,
            }
        }
        let value = mantissa as f64 / *POW10.get(fraction.unwrap_or(0))?;
        Some(if negative { -value } else { value })
    }

    impl JsonNumber for TNumber<'_> {
        fn as_u64(&self) -> Option<u64> {
            if self.integer {
                self.text.parse().ok()
            } else {
                None
            }
        }

        fn as_i64(&self) -> Option<i64> {
            if self.integer {
                self.text.parse().ok()
            } else {
                None
            }
        }

        fn as_f64(&self) -> Option<f64> {
            fast_f64(self.text).or_else(|| self.text.parse::<f64>().ok()).filter(|f| f.is_finite())
        }

        fn as_str(&self) -> Cow<'_, str> {
            Cow::Borrowed(self.text)
        }

        fn to_number(&self) -> Cow<'_, serde_json::Number> {
            let n = serde_json::from_str::<serde_json::Number>(self.text)
                .ok()
                .or_else(|| self.as_f64().and_then(serde_json::Number::from_f64))
                .unwrap_or_else(|| serde_json::Number::from(0u8));
            Cow::Owned(n)
        }

        // `type: integer` asks this per number: answer from the literal, without `to_number`.
        fn is_integer(&self) -> bool {
            self.integer || self.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/contracts")
    }

    fn shop() -> Arc<Plan> {
        Plans::load(&fixtures().join("valid")).unwrap().get("shop").unwrap()
    }

    fn example() -> Arc<Plan> {
        let plans = Plans::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts")).unwrap();
        plans.get("example").unwrap()
    }

    fn pol(events: &str, props: &str, violations: &str) -> Policies {
        toml::from_str(&format!(
            "unplanned_events = \"{events}\"\nunplanned_properties = \"{props}\"\nviolations = \"{violations}\""
        ))
        .unwrap()
    }

    fn ev(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn context() -> Value {
        json!({"library": {"name": "analytics.js", "version": "1.0"}, "locale": "en-US", "ip": "203.0.113.9"})
    }

    fn track(name: &str, properties: Value) -> Value {
        json!({"type": "track", "messageId": "m-1", "userId": "u-1", "event": name, "properties": properties,
               "context": context(), "receivedAt": "2026-01-01T00:00:00.000Z"})
    }

    fn with_version(mut event: Value, version: Value) -> Value {
        event["context"]["protocols"] = json!({"event_version": version});
        event
    }

    fn pointers(v: &[Violation]) -> Vec<(&str, &str)> {
        v.iter().map(|v| (v.pointer.as_str(), v.keyword.as_str())).collect()
    }

    /// The published payload of a verdict that changed the event.
    fn payload(verdict: &Verdict) -> Value {
        match verdict {
            Verdict::Publish { payload: Some(p), .. } => serde_json::from_slice(p).unwrap(),
            other => panic!("expected a modified publish, got {other:?}"),
        }
    }

    fn is_block(v: &Verdict) -> bool {
        matches!(v, Verdict::Block { .. })
    }

    const ALLOW: (&str, &str, &str) = ("allow", "allow", "allow");
    const BLOCK: (&str, &str, &str) = ("block", "allow", "block");

    fn check(plan: &Plan, (e, p, v): (&str, &str, &str), event: &Value) -> Verdict {
        plan.check(&pol(e, p, v), &ev(event)).unwrap()
    }

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
        let mixed = track(
            "Order Completed",
            json!({"order_id": "o-1", "total": 12, "coupon": 7, "note": "hi", "currency": "EUR"}),
        );
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
        for version in [json!(1), json!(3), json!("3"), json!(2.5), json!("2.0"), json!("two"), json!(null), json!(-2)]
        {
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
        let page = json!({"type": "page", "userId": "u", "properties": {"path": "/", "section": "docs"}, "context": context()});
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
        let v =
            check(&plan, BLOCK, &track("Order Completed", json!({"order_id": "o", "total": 1, "products": products})));
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

    // ---- the tape -----------------------------------------------------------------------------

    /// The tape must judge exactly as `serde_json::Value` does: every schema × instance pair
    /// gives the same validity and the same errors (place, keyword, message).
    #[test]
    fn tape_validates_exactly_like_serde_json() {
        let schemas = [
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": ["string", "null"]}}, "required": ["a"], "additionalProperties": false}),
            json!({"type": "array", "items": {"type": "number", "multipleOf": 0.5, "maximum": 10}, "minItems": 1, "maxItems": 3, "uniqueItems": true}),
            json!({"enum": [1, "a", null, true, [1, 2], {"k": 1.0}]}),
            json!({"const": {"a": [1, 2.0]}}),
            json!({"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-zé]+$"}),
            json!({"type": "string", "format": "date-time"}),
            json!({"propertyNames": {"maxLength": 3}, "minProperties": 1, "maxProperties": 2, "patternProperties": {"^x": {"type": "boolean"}}}),
            json!({"anyOf": [{"type": "integer"}, {"type": "string"}], "not": {"const": 0}}),
            json!({"oneOf": [{"minimum": 5}, {"multipleOf": 2}]}),
            json!({"if": {"properties": {"k": {"const": "a"}}}, "then": {"required": ["a"]}, "else": {"required": ["b"]}}),
            json!({"type": "object", "dependencies": {"a": ["b"]}, "properties": {"n": {"$ref": "#/definitions/n"}}, "definitions": {"n": {"type": "integer", "exclusiveMinimum": 0}}}),
            json!({"contains": {"type": "string"}, "items": [{"type": "integer"}], "additionalItems": {"type": "string"}}),
        ];
        let instances = [
            r#"{"a":1}"#,
            r#"{"a":1.0,"b":null}"#,
            r#"{"a":1.5,"c":2}"#,
            r#"{"b":"x"}"#,
            r#"{}"#,
            r#"{"x1":true,"x2":"no"}"#,
            r#"{"longname":1}"#,
            r#"{"k":"a"}"#,
            r#"{"k":"b","b":1}"#,
            r#"{"a":1,"b":2}"#,
            r#"{"n":0}"#,
            r#"{"n":3}"#,
            r#"[]"#,
            r#"[1,2]"#,
            r#"[1,1]"#,
            r#"[0.5,1.5,2,3]"#,
            r#"[11]"#,
            r#"[1,"a","b"]"#,
            r#"[1,2,3]"#,
            r#"[1,2.0]"#,
            r#"1"#,
            r#"1.0"#,
            r#"0"#,
            r#"-0"#,
            r#"4"#,
            r#"6"#,
            r#"2.5"#,
            r#"1e2"#,
            r#"1E-2"#,
            r#"12345678901234567890"#,
            r#"-9223372036854775808"#,
            r#""a""#,
            r#""abé""#,
            r#""ab1""#,
            r#""abcde""#,
            r#""a\u00e9""#,
            r#""2025-03-15T14:30:00Z""#,
            r#""yesterday""#,
            r#"null"#,
            r#"true"#,
            r#"false"#,
            r#"{"k":1.0}"#,
            r#"{"a":[1,2]}"#,
            r#"{"a":[1.0,2]}"#,
            r#"[1,2.0]"#,
        ];
        let mut compared = 0;
        for schema in &schemas {
            let reference = jsonschema::options().with_draft(Draft::Draft7).build(schema).unwrap();
            let ours = jsonschema::options_for::<Tape>().with_draft(Draft::Draft7).build(schema).unwrap();
            for text in instances {
                let value: Value = serde_json::from_str(text).unwrap();
                let doc = tape::parse(text, &Need::All).unwrap();
                let node = doc.node(0);
                let describe = |e: ValidationError<'_>| {
                    (e.instance_path().as_str().to_owned(), e.kind().keyword().to_owned(), e.to_string())
                };
                let want: Vec<_> = reference.iter_errors(&value).map(describe).collect();
                let got: Vec<_> = ours.iter_errors(node).map(describe).collect();
                assert_eq!(got, want, "schema {schema} instance {text}");
                assert_eq!(ours.is_valid(node), reference.is_valid(&value), "schema {schema} instance {text}");
                compared += 1;
            }
        }
        assert_eq!(compared, schemas.len() * instances.len());
    }

    #[test]
    fn tape_parses_what_serde_json_parses_and_refuses_the_rest() {
        let good = [
            r#"{"a":[1,-2.5e+3,0,true,false,null,"x\"y\\z\u0041\n",{}],"":[],"é":{"b":{"c":[[]]}}}"#,
            " \n\t{ \"a\" : 1 } \r\n",
            "\"just a string\"",
            "-0.0e-0",
        ];
        for text in good {
            let doc = tape::parse(text, &Need::All).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            let via_tape = jsonschema::json::Node::to_value(&doc.node(0)).into_owned();
            assert_eq!(via_tape, serde_json::from_str::<Value>(text).unwrap(), "{text}");
        }
        let bad = [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "[01]",
            "[1.]",
            "[.5]",
            "[1e]",
            "[-]",
            "[+1]",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a\u{1}b\"",
            "\"unterminated",
            "tru",
            "nul",
            "[1] [2]",
            "{\"a\":1}x",
            "[\"\\\"]",
        ];
        for text in bad {
            assert!(tape::parse(text, &Need::All).is_err(), "accepted {text:?}");
            assert!(serde_json::from_str::<Value>(text).is_err(), "the test itself is wrong about {text:?}");
        }
        // The word-at-a-time scan must stop exactly at the first quote, backslash or control
        // character wherever it falls in the 8-byte word, with multi-byte UTF-8 around it.
        for len in 0..20 {
            for filler in ["a", "é", "\u{7f}", "€"] {
                let body = filler.repeat(len);
                for (text, expected) in [
                    (format!("[\"{body}\",\"{body}\"]"), Some(json!([body, body]))),
                    (format!("[\"{body}\\\"{body}\"]"), Some(json!([format!("{body}\"{body}")]))),
                    (format!("[\"{body}\\\\\"]"), Some(json!([format!("{body}\\")]))),
                    (format!("[\"{body}\u{1f}{body}\"]"), None),
                    (format!("[\"{body}\n\"]"), None),
                ] {
                    let parsed = tape::parse(&text, &Need::All)
                        .ok()
                        .map(|d| jsonschema::json::Node::to_value(&d.node(0)).into_owned());
                    assert_eq!(parsed, expected, "{text:?}");
                }
            }
        }
        // Numbers read through the fast path equal the standard library's reading.
        for text in [
            "0",
            "-0",
            "29.99",
            "9.99",
            "0.1",
            "0.30000000000000004",
            "123456789012345",
            "1234567890.12345",
            "-7.5",
            "1e3",
            "1.5e-7",
            "12345678901234567",
            "0.000000000000000000000001",
        ] {
            let doc = tape::parse(text, &Need::All).unwrap();
            let n = jsonschema::json::Node::as_number(&doc.node(0)).unwrap();
            assert_eq!(jsonschema::json::JsonNumber::as_f64(&n), text.parse::<f64>().ok(), "{text}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(tape::parse(&deep, &Need::All).is_err());
        let ok_depth = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(tape::parse(&ok_depth, &Need::All).is_ok());
    }

    /// What a schema lets the parser skip: object structure (`type`/`properties`/`required`)
    /// projects, anything dynamic needs the whole value.
    #[test]
    fn schema_analysis_keeps_what_validation_can_see() {
        let need = Need::of_schema(&json!({
            "$schema": "http://json-schema.org/draft-07/schema#", "title": "t", "type": "object",
            "properties": {
                "context": {"type": "object", "properties": {"library": {"properties": {"name": {"type": "string"}}}}},
                "userId": {"type": "string", "minLength": 1},
                "integrations": true
            },
            "required": ["context", "anonymousId"],
            "additionalProperties": true
        }));
        // `{"type": "string"}` reads no member (were the value an object, its type is all that
        // matters); `minLength` is not structural, so `userId` is read whole.
        let expected = Need::path(&["userId"])
            .merge(Need::nested(&["context", "library", "name"], Need::none()))
            .merge(Need::nested(&["integrations"], Need::none()))
            .merge(Need::nested(&["anonymousId"], Need::none()));
        assert_eq!(need, expected);
        for dynamic in [
            json!({"$ref": "#/definitions/x"}),
            json!({"allOf": [{}]}),
            json!({"additionalProperties": false}),
            json!({"patternProperties": {"^x": {}}}),
            json!({"minProperties": 1}),
            json!({"if": {}, "then": {}}),
            json!({"required": [1]}),
            json!(12),
        ] {
            assert_eq!(Need::of_schema(&dynamic), Need::All, "{dynamic}");
        }
        // Nested dynamics stay local: only that member is parsed whole.
        let need = Need::of_schema(&json!({"properties": {"a": {"anyOf": [{}]}, "b": {"properties": {"c": {}}}}}));
        assert_eq!(need, Need::path(&["a"]).merge(Need::nested(&["b", "c"], Need::none())));
    }

    /// Validating the projected event gives exactly what validating all of it gives, and the
    /// skipped members (with brackets, quotes and escapes inside strings) are skipped right.
    #[test]
    fn projected_parse_validates_like_the_whole_event() {
        let common = json!({"type": "object", "required": ["context"], "properties": {
            "userId": {"type": "string"},
            "context": {"type": "object", "required": ["library"], "properties": {"library": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 2}, "version": {"type": "string"}}}}}
        }});
        let need = Need::of_schema(&common);
        let validator = jsonschema::options_for::<Tape>().with_draft(Draft::Draft7).build(&common).unwrap();
        let events = [
            r#"{"messageId":"a}\"]{[","userId":"u","context":{"page":{"x":["}",{"y":"\"["}]},"library":{"name":"js","v":[1,{"a":"]"}]}},"n":-1.5e3,"t":true,"z":null}"#,
            r#"{"userId":7,"context":{"library":{"name":"j"}}}"#,
            r#"{"context":{"library":"x"}}"#,
            r#"{"context":{"library":{"name":{"deep":[1,{"x":"y"}]},"version":{"a":[1,{"b":"c"}],"d":2}}}}"#,
            r#"{"context":[]}"#,
            r#"{"context":{"library":{}},"extra":{"context":{"library":{"name":1}}}}"#,
            r#"{"userId":5,"context":{"li\/brary":1,"library":{"name":"ok"}}}"#,
            r#"{ "userId" : "u" , "context" : { "library" : { "name" : "ok" } } , "x" : [ 1 , 2 ] }"#,
            r#"{}"#,
            r#"[]"#,
        ];
        let describe = |e: ValidationError<'_>| (e.instance_path().as_str().to_owned(), e.to_string());
        for text in events {
            let full = tape::parse(text, &Need::All).unwrap();
            let projected = tape::parse(text, &need).unwrap();
            let want: Vec<_> = validator.iter_errors(full.node(0)).map(describe).collect();
            let got: Vec<_> = validator.iter_errors(projected.node(0)).map(describe).collect();
            assert_eq!(got, want, "{text}");
        }
        // The projection really skips: nothing of `page` or `messageId` is recorded.
        let doc = tape::parse(events[0], &need).unwrap();
        assert!(doc.get(0, "messageId").is_none());
        let context = doc.get(0, "context").unwrap();
        assert!(doc.get(context, "page").is_none());
        assert!(doc.get(context, "library").is_some());
        // Skipping still needs balanced brackets and closed strings.
        for broken in [r#"{"a":{"b":"}"#, r#"{"a":"x"#, r#"{"a":[1,2"#, r#"{"a":}"#] {
            assert!(tape::parse(broken, &need).is_err(), "{broken}");
        }
    }

    #[test]
    fn the_plan_parses_only_what_its_schemas_read() {
        // The shop plan reads type/event/properties/traits, its common schema's
        // context.library.name, and context.protocols.event_version (it has versions).
        let plan = shop();
        let expected = Need::path(&["type"])
            .merge(Need::path(&["event"]))
            .merge(Need::path(&["properties"]))
            .merge(Need::path(&["traits"]))
            .merge(Need::path(&["context", "protocols", "event_version"]))
            .merge(Need::nested(&["context", "library", "name"], Need::none()));
        assert_eq!(plan.need, expected);
    }

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
            problems
                .iter()
                .find(|(f, _, _)| f == file)
                .unwrap_or_else(|| panic!("no problem for {file}: {problems:#?}"))
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
        assert!(text.lines().any(|l| l.ends_with("bad-schema/common.json: at /type: 12 is not valid under any of the schemas listed in the 'anyOf' keyword")), "{text}");
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

    // ---- the violations topic -----------------------------------------------------------------

    #[test]
    fn violation_record_carries_source_event_reasons_and_original() {
        let violations = vec![Violation {
            pointer: "/properties/total".into(),
            keyword: "required".into(),
            message: "\"total\" is a required property".into(),
        }];
        let original = br#"{"type":"track","event":"Order Completed","properties":{"order_id":"o-1"}}"#;
        let record = violation_record("web", "m-1", Some("Order Completed"), "track", &violations, true, original);
        let v: Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(
            v,
            json!({"sourceId": "web", "messageId": "m-1", "eventType": "track", "event": "Order Completed", "blocked": true,
                   "violations": [{"pointer": "/properties/total", "keyword": "required", "message": "\"total\" is a required property"}],
                   "originalEvent": {"type": "track", "event": "Order Completed", "properties": {"order_id": "o-1"}}})
        );
        assert_eq!(event_name(original).as_deref(), Some("Order Completed"));
        assert_eq!(
            event_name(br#"{"type":"track","event":"a\"b","properties":{"event":"no"}}"#).as_deref(),
            Some("a\"b")
        );
        assert_eq!(event_name(br#"{"type":"identify","traits":{"event":"no"}}"#), None);
        assert_eq!(event_name(b"not json"), None);
        // The original is embedded byte for byte.
        assert!(std::str::from_utf8(&record).unwrap().contains(std::str::from_utf8(original).unwrap()));
        // No event name for non-track calls; a non-JSON original still makes valid JSON.
        let record = violation_record("web", "m-2", None, "identify", &[], false, b"not json");
        let v: Value = serde_json::from_slice(&record).unwrap();
        assert!(v.get("event").is_none());
        assert_eq!(v["originalEvent"], "not json");
        assert_eq!(v["blocked"], false);
    }
}
