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
//!
//! # Layout
//! - `policies`: [`Policies`] and its three settings, as the config gives them.
//! - `verdict`: what a check answers ([`Verdict`], [`Violation`]) and the errors
//!   ([`ValidateError`] per event, [`PlanError`] per contracts folder).
//! - `plan`: [`Plans`] and [`Plan`]: reading the contracts folder, compiling each schema.
//! - `check`: [`Plan::check`], judging one event under a source's policies, and `omit`'s splice.
//! - `keys`: the small key set `omit` removes with.
//! - `violations`: the violations topic's record ([`violation_record`], [`event_name`]).
//! - `tape`: the borrowed JSON document the validators run on, and what a schema needs of it.

mod check;
mod keys;
mod plan;
mod policies;
mod tape;
#[cfg(test)]
mod tests;
mod verdict;
mod violations;

pub use check::MAX_REPORTED_VIOLATIONS;
pub use plan::{Plan, Plans};
pub use policies::{Policies, UnplannedEvents, UnplannedProperties, Violations};
pub use verdict::{PlanError, PlanProblem, ValidateError, Verdict, Violation};
pub use violations::{event_name, violation_record};
