//! Plans: loading and compiling. Reads the contracts folder ([`Plans::load`]), compiles each
//! schema file into a validator that runs on the tape, works out what of an event a plan's
//! schemas read, and names every problem it finds.
//! Must not: judge events (that is `check`), or be called on the request path: it is the only
//! part of `validate` that touches the disk.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{Draft, ValidationError, Validator};
use serde_json::Value;

use super::check::{push_escaped, truncate};
use super::tape::{Need, Tape};
use super::verdict::{PlanError, PlanProblem};

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
pub(super) struct Compiled {
    pub(super) validator: Validator<Tape>,
    /// What of its instance the schema can look at (used for `common.json`).
    need: Need,
    /// Keys under the schema's top-level `properties`, sorted; `None` when it has none.
    declared: Option<Box<[Box<str>]>>,
}

impl Compiled {
    pub(super) fn declares(&self, key: &str) -> Option<bool> {
        self.declared.as_ref().map(|d| d.binary_search_by(|k| (**k).cmp(key)).is_ok())
    }
}

/// The schemas of one planned `track` event.
pub(super) struct TrackEvent {
    unversioned: Option<Compiled>,
    pub(super) versions: BTreeMap<u64, Compiled>,
}

impl TrackEvent {
    /// The schema for `version` (see the module doc for the fallback).
    pub(super) fn select(&self, version: Option<u64>) -> Option<&Compiled> {
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
pub(super) struct Fnv(u64);

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
    pub(super) name: String,
    /// What of an event any of this plan's schemas can look at: the rest is skipped, not parsed.
    pub(super) need: Need,
    pub(super) common: Option<Compiled>,
    pub(super) track: FnvMap<TrackEvent>,
    pub(super) identify: Option<Compiled>,
    pub(super) group: Option<Compiled>,
    pub(super) page: Option<Compiled>,
    pub(super) screen: Option<Compiled>,
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
