//! A JSON document as one flat `Vec` of nodes in document order; strings and numbers are
//! slices of the source text. Implements `jsonschema::json::Json`, so compiled validators
//! run on it without building a `serde_json::Value`. Strict JSON (RFC 8259): anything the
//! parser accepts, serde_json accepts.
//!
//! This file owns the document ([`Doc`]: its nodes, its reused buffer, and the read API the
//! checker uses). `parse` builds it from text, `need` works out from a schema what the parser
//! may skip, and `json` is the bridge the `jsonschema` validators walk.
//! Must not: know about plans, policies or events: it is a JSON document, nothing more.

use serde_json::Value;

mod json;
mod need;
mod parse;

pub use json::{TNode, TNumber, Tape};
pub use need::Need;
pub use parse::parse;

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
    Doc { text: "{}", slots: vec![Slot { kind: Kind::Object, start: 0, end: 2, len: 0, after: 1 }], owned: Vec::new() }
}

/// String equality without a `memcmp` call: keys are short, and most differ in length.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while let (Some(x), Some(y)) = (a.get(i..i + 8), b.get(i..i + 8)) {
        if u64::from_le_bytes(x.try_into().unwrap_or([0; 8])) != u64::from_le_bytes(y.try_into().unwrap_or([0; 8])) {
            return false;
        }
        i += 8;
    }
    a.iter().skip(i).zip(b.iter().skip(i)).all(|(x, y)| x == y)
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
            Some(Kind::Number | Kind::Array | Kind::Object) => serde_json::from_str(self.raw(i)).unwrap_or(Value::Null),
        }
    }
}
