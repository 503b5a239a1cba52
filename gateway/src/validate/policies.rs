//! The policies of a source: what it does with unplanned events, unplanned properties and
//! schema violations (Segment Protocols' vocabulary), as the config deserialises them.
//! Must not: read the config file or know about plans; `config` builds these, `check` applies
//! them.

use serde::Deserialize;

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
