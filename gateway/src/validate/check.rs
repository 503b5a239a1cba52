//! Checking one event: [`Plan::check`] picks the schemas that apply, omits unplanned
//! properties, validates, attributes each violation to a top-level key and, under `omit`,
//! splices the kept members' original bytes into the event it publishes.
//! Must not: touch the disk, log, or allocate a `serde_json::Value` on the passing path; a
//! passing event is never copied.

use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;

use super::keys::KeySet;
use super::plan::{Compiled, Plan};
use super::policies::{Policies, UnplannedEvents, UnplannedProperties, Violations};
use super::tape::{self, Doc};
use super::verdict::{ValidateError, Verdict, Violation};

// The call type of an event: decode's type, the one definition of the six Segment calls.
use crate::decode::EventType as CallType;

/// At most this many violations are reported per event (all are still used to decide the
/// verdict): one bad element in a 1,000-item array must not make a 1,000-entry record.
pub const MAX_REPORTED_VIOLATIONS: usize = 32;

/// Violation messages are cut to this many characters (they may quote the offending value).
pub(super) const MAX_MESSAGE_CHARS: usize = 200;

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
    pub(super) fn parse<'t>(&self, text: &'t str) -> Result<Doc<'t>, ValidateError> {
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
pub(super) fn unplanned_keys(doc: &Doc<'_>, field: &str, schema: &Compiled) -> Vec<String> {
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

/// The event's text with the members `keys` of its payload object removed. Everything outside
/// the payload, and each kept member's key and value, are the caller's bytes in the caller's
/// order; only the separators inside the payload object are rewritten (`"k":v,"k2":v2`).
pub(super) fn without_keys(doc: &Doc<'_>, field: &str, keys: &[String]) -> String {
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
pub(super) fn push_escaped(out: &mut String, segment: &str) {
    for c in segment.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

pub(super) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or(s)),
    }
}

fn capped(mut v: Vec<Violation>) -> Vec<Violation> {
    v.truncate(MAX_REPORTED_VIOLATIONS);
    v
}
