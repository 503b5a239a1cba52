//! JSON limits of forwarded subtrees: what decode forwards as sent, the contract checker
//! (and any strict reader) can always read.
//!
//! serde_json does not look inside a `RawValue`: it is skipped without a depth limit and
//! without checking that `\u` escapes pair up. This file checks each forwarded slice for both
//! ([`MAX_DEPTH`], lone surrogates). Must not: parse or rewrite the JSON it checks.

use super::body::truncate;
use super::members::string_end;
use super::parse::RawEvent;
use super::{EventError, Unfit};

/// How many JSON containers may nest in one event, the event object counting as the first.
/// serde_json's parser stops at 128 for what it parses, but not inside the `RawValue` slices we
/// forward; decode checks those against this, and the contract checker's parser
/// (`validate::tape`) refuses anything deeper, so both must read this one constant.
pub const MAX_DEPTH: u32 = 128;

/// Refuses an event whose forwarded JSON the contract checker (or any strict reader) could not
/// read: a member name with a lone surrogate escape, or a forwarded value nested deeper than
/// [`MAX_DEPTH`] or holding one. The interpreted fields are decoded by serde_json, which
/// already refuses both; the slices forwarded as sent are checked here.
pub(super) fn check_event_json(ev: &RawEvent<'_>) -> Result<(), EventError> {
    if let Some(name) = ev.bad_name {
        return Err(unfit(name.get().trim_matches('"'), Unfit::LoneSurrogate));
    }
    let slots =
        [("context", ev.context), ("event", ev.event), ("groupId", ev.group_id), ("previousId", ev.previous_id)];
    for (name, value) in slots {
        if let Some(v) = value {
            check_forwarded(v.get(), 1).map_err(|(_, reason)| unfit(name, reason))?;
        }
    }
    for (name, value) in &ev.rest {
        check_forwarded(value.get(), 1).map_err(|(_, reason)| unfit(name, reason))?;
    }
    Ok(())
}

#[cold]
fn unfit(member: &str, reason: Unfit) -> EventError {
    EventError::InvalidJson { member: truncate(member, 64), reason }
}

/// Checks one JSON value (valid JSON: serde_json has matched its brackets and strings) that
/// sits `depth` containers deep in the event (1 for a member of the event object): on failure,
/// the byte offset in `text` and why. As in the checker's parser, a container `MAX_DEPTH` or
/// more containers deep is refused.
pub(super) fn check_forwarded(text: &str, depth: u32) -> Result<(), (usize, Unfit)> {
    let b = text.as_bytes();
    // Shorter than `"\ud800"`, and than four levels of brackets: nothing to find (most ids,
    // numbers and flags).
    if b.len() < 8 {
        return Ok(());
    }
    // Escapes only occur in strings, and most values have none: one memchr rules them out.
    if memchr::memchr(b'\\', b).is_some() {
        if let Some(at) = lone_surrogate(b) {
            return Err((at, Unfit::LoneSurrogate));
        }
    }
    // The nesting cannot exceed half the length (a level takes two brackets), nor the number
    // of opening brackets (in strings or not): most values are ruled out by their length, the
    // rest by a vectorised search that stops at the budget. Only a value with that many
    // brackets needs the exact walk.
    let budget = MAX_DEPTH.saturating_sub(depth) as usize;
    if b.len() > 2 * budget && memchr::memchr2_iter(b'{', b'[', b).nth(budget).is_some() {
        if let Some(at) = too_deep(b, budget) {
            return Err((at, Unfit::TooDeep));
        }
    }
    Ok(())
}

/// Offset of the first `\u` escape of an unpaired surrogate in valid JSON text `b`: a high
/// half (D800–DBFF) not directly followed by an escaped low half (DC00–DFFF), or a low half
/// on its own. serde_json refuses exactly these when it decodes a string.
fn lone_surrogate(b: &[u8]) -> Option<usize> {
    let hex4 = |at: usize| -> Option<u16> {
        let s = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    };
    let mut i = 0;
    // From escape to escape: each is consumed whole, so `\\u` (an escaped backslash, then
    // `u`) is never read as a `\u` escape.
    while let Some(at) = b.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)).map(|off| i + off) {
        if b.get(at + 1) != Some(&b'u') {
            i = at + 2;
            continue;
        }
        match hex4(at + 2) {
            Some(0xD800..=0xDBFF) => {
                let paired = b.get(at + 6..at + 8) == Some(b"\\u".as_slice())
                    && hex4(at + 8).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo));
                if !paired {
                    return Some(at);
                }
                i = at + 12;
            }
            Some(0xDC00..=0xDFFF) => return Some(at),
            _ => i = at + 6,
        }
    }
    None
}

/// Offset of the first bracket that opens level `budget + 1` of valid JSON text `b` (strings
/// skipped whole), if any.
fn too_deep(b: &[u8], budget: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(at) = b
        .get(i..)
        .and_then(|rest| rest.iter().position(|c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']')))
        .map(|off| i + off)
    {
        match b[at] {
            b'"' => {
                i = string_end(b, at);
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > budget {
                    return Some(at);
                }
            }
            _ => depth = depth.saturating_sub(1),
        }
        i = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The surrogate rule is serde_json's own: every string it refuses to decode is refused,
    /// every one it decodes passes.
    #[test]
    fn surrogate_check_agrees_with_serde_json() {
        let units = ["\\ud800", "\\udbff", "\\udc00", "\\udfff", "\\ud7ff", "\\ue000", "\\u0041", "\\n", "\\\\", "x"];
        for a in units {
            for b in units {
                for c in units {
                    let s = format!("\"{a}{b}{c}\"");
                    let serde_ok = serde_json::from_str::<String>(&s).is_ok();
                    assert_eq!(lone_surrogate(s.as_bytes()).is_none(), serde_ok, "{s}");
                }
            }
        }
    }

    #[test]
    fn depth_limit_is_the_checker_limit() {
        // A value `depth` containers deep may open MAX_DEPTH - depth more.
        let nest = |n: usize| format!("{}{}", "[{\"a\":".repeat(n / 2), "}]".repeat(n / 2));
        assert!(check_forwarded(&nest(126), 1).is_ok());
        assert!(check_forwarded(&nest(128), 1).is_err());
        assert!(check_forwarded(&nest(128), 0).is_ok());
        assert!(check_forwarded(&nest(130), 0).is_err());
        assert_eq!(MAX_DEPTH, 128);
    }
}
