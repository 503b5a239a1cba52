//! A scanner of the top-level members of a JSON object that serde_json has already validated,
//! and member names unescaped.
//!
//! Owns: [`object_members`] and skipping a JSON string. Must not: validate JSON (its input is
//! valid) or allocate except to unescape a name.

use std::borrow::Cow;

/// A member name as [`object_members`] returns it (between the quotes, escapes as written),
/// unescaped. Names with a backslash are rare; one that does not decode (which
/// [`check_forwarded`](super::fit::check_forwarded) has already refused) is compared as written.
pub(super) fn name_text(raw: &str) -> Cow<'_, str> {
    if !raw.as_bytes().contains(&b'\\') {
        return Cow::Borrowed(raw);
    }
    serde_json::from_str::<String>(&format!("\"{raw}\"")).map_or(Cow::Borrowed(raw), Cow::Owned)
}

/// Index just past the JSON string that starts at `b[i]` (a quote).
pub(super) fn string_end(b: &[u8], mut i: usize) -> usize {
    i += 1;
    // Jump from escape to escape: most strings have none, so this is one memchr.
    while let Some(off) = b.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
        let at = i + off;
        if b[at] == b'"' {
            return at + 1;
        }
        i = at + 2;
    }
    b.len()
}

/// The top-level members of a JSON object, as (key, value) text slices. The input must be
/// valid JSON (it comes from a `RawValue`, which serde_json has validated), so this scanner only
/// tracks strings and nesting. Keys are returned as written (escapes not decoded).
pub fn object_members(obj: &str) -> Members<'_> {
    let b = obj.as_bytes();
    let start = b.iter().position(|c| *c == b'{').map_or(b.len(), |p| p + 1);
    Members { s: obj, i: start }
}

/// Iterator of [`object_members`].
pub struct Members<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Members<'a> {
    fn skip_ws_and(&mut self, extra: u8) {
        let b = self.s.as_bytes();
        while self.i < b.len() && (b[self.i].is_ascii_whitespace() || b[self.i] == extra) {
            self.i += 1;
        }
    }

    /// Index just past the string starting at `i` (which is a quote).
    fn string_end(&self, i: usize) -> usize {
        string_end(self.s.as_bytes(), i)
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.s.as_bytes();
        self.skip_ws_and(b',');
        if self.i >= b.len() || b[self.i] != b'"' {
            return None;
        }
        let key_end = self.string_end(self.i);
        let key = self.s.get(self.i + 1..key_end.saturating_sub(1))?;
        self.i = key_end;
        self.skip_ws_and(b':');
        let value_start = self.i;
        let mut depth = 0usize;
        // Only structural bytes matter: jump between them (strings are skipped whole).
        while let Some(off) = b
            .get(self.i..)
            .and_then(|rest| rest.iter().position(|c| matches!(c, b'"' | b'{' | b'[' | b'}' | b']' | b',')))
        {
            self.i += off;
            match b[self.i] {
                b'"' => {
                    self.i = self.string_end(self.i);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => depth -= 1,
                b',' if depth == 0 => break,
                _ => {}
            }
            self.i += 1;
        }
        if self.i > b.len() {
            self.i = b.len();
        }
        let value = self.s.get(value_start..self.i)?.trim_end();
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_members_scans_top_level_only() {
        let obj = r#"{ "a" : 1, "b\"q": {"ip":"x","n":[1,{"c":"}"}]}, "ip":"1.2.3.4" ,"e":[],"f":"a,b"}"#;
        let m: Vec<(&str, &str)> = object_members(obj).collect();
        assert_eq!(
            m,
            vec![
                ("a", "1"),
                ("b\\\"q", r#"{"ip":"x","n":[1,{"c":"}"}]}"#),
                ("ip", "\"1.2.3.4\""),
                ("e", "[]"),
                ("f", "\"a,b\""),
            ]
        );
        assert_eq!(object_members("{}").count(), 0);
        assert_eq!(object_members("{ }").count(), 0);
    }
}
