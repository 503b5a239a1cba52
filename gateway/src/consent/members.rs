//! The members of a JSON object (`context.consent` or its `categories`), keys and strings
//! borrowed from the input when they have no escapes, values left unparsed.
//!
//! Owns: the member cap ([`MAX_MEMBERS`]: past it the object is refused before its keys are
//! compared) and the duplicate check, linear in the number of keys (the keys are the client's
//! choice). Must not: give the members a meaning (`context` does).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{echo, ConsentError, MAX_CATEGORIES};

// A JSON object key or string, borrowed from the input when it has no escapes (decode's).
use crate::json::Str as JsonStr;

/// At most this many members are kept of `context.consent` or its `categories` object: the
/// largest valid one is the categories form, [`MAX_CATEGORIES`] booleans and `categories`. The
/// keys are the client's choice, so the object is refused past it rather than looked at.
pub(super) const MAX_MEMBERS: usize = MAX_CATEGORIES + 1;

/// Up to this many keys, the duplicate check compares each key with the earlier ones (cheaper
/// than hashing the few keys a consent object has); past it, a hash set keeps it linear.
const LINEAR_SCAN_MAX: usize = 16;

/// The members of a JSON object in order, values unparsed: the first [`MAX_MEMBERS`], and how
/// many there were in all (the rest are only skipped over, never stored).
struct Members<'a> {
    list: Vec<(Cow<'a, str>, &'a RawValue)>,
    total: usize,
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut list = Vec::with_capacity(map.size_hint().unwrap_or(4).min(MAX_MEMBERS));
                while list.len() < MAX_MEMBERS {
                    let Some(JsonStr(k)) = map.next_key::<JsonStr<'de>>()? else { break };
                    let v: &'de RawValue = map.next_value()?;
                    list.push((k, v));
                }
                let mut total = list.len();
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(Members { list, total })
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) fn parse_members(raw: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, ConsentError> {
    if !raw.trim_start().starts_with('{') {
        return Err(ConsentError::NotAnObject);
    }
    let members = serde_json::from_str::<Members<'_>>(raw).map_err(|e| ConsentError::Json(e.to_string()))?;
    if members.total > MAX_MEMBERS {
        return Err(ConsentError::TooManyKeys);
    }
    if let Some(k) = first_duplicate(members.list.iter().map(|(k, _)| k)) {
        return Err(ConsentError::DuplicateKey(echo(k)));
    }
    Ok(members.list)
}

/// The first key that occurs a second time. Linear in the number of keys: a client choosing
/// thousands of keys must cost what their bytes cost, not their count squared.
pub(super) fn first_duplicate<T: Eq + Hash + Copy>(mut keys: impl ExactSizeIterator<Item = T> + Clone) -> Option<T> {
    if keys.len() <= LINEAR_SCAN_MAX {
        let earlier = keys.clone();
        return keys.enumerate().find(|&(i, k)| earlier.clone().take(i).any(|seen| seen == k)).map(|(_, k)| k);
    }
    let mut seen = HashSet::with_capacity(keys.len());
    keys.find(|&k| !seen.insert(k))
}

pub(super) fn as_bool(v: &RawValue) -> Option<bool> {
    match v.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

pub(super) fn as_string(v: &RawValue) -> Option<Cow<'_, str>> {
    let text = v.get();
    if !text.starts_with('"') {
        return None;
    }
    // serde_json already validated the string: without a backslash, its text between the
    // quotes is its value (saves a second scan of a long TC string).
    if !text.as_bytes().contains(&b'\\') {
        return text.get(1..text.len() - 1).map(Cow::Borrowed);
    }
    serde_json::from_str::<JsonStr<'_>>(text).ok().map(|s| s.0)
}
