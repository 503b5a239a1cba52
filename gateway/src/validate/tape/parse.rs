//! The parser: text → [`Doc`], strict JSON, one pass, skipping the members a [`Need`] does not
//! keep (their brackets and strings are matched, nothing in them is recorded).
//! Must not: allocate per node beyond the reused slot buffer (escaped strings are the only
//! copies), or read a schema (it is handed a [`Need`]).

// Deeper than this is refused. Decode refuses it too, for every subtree it forwards (one
// shared constant), so an event decode wrote always parses here.
use crate::decode::MAX_DEPTH;

use super::{Doc, Kind, Need, ParseError, Slot, SPARE};

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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A mask with the high bit set in the bytes of `word` (little-endian) that end a plain run
/// of string content: a quote, a backslash, or a control character. Only the lowest set byte is exact
/// (borrows can flag bytes above it), which is the only one used.
fn special_bytes(word: u64) -> u64 {
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGHS;
    below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20)
}
