//! What of a value the validators can look at ([`Need`]), worked out from a schema when it is
//! compiled, so that the parser skips the members nobody reads.
//! Must not: parse (that is `parse`) or validate; it reads schemas, never events.

use serde_json::Value;

use super::same;

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

    pub(super) fn member(&self, name: &str) -> Option<&Need> {
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
