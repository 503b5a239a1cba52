//! The bridge to `jsonschema`'s custom-representation API: [`Tape`] and the node, object,
//! array and number views of a [`Doc`] the compiled validators walk.
//! Must not: parse or change the document; every answer is read off the nodes (a
//! `serde_json::Value` is built only for `enum`/`const` on containers).

use std::borrow::Cow;

use jsonschema::json::{cmp, Array, Json, JsonNumber, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::Value;

use super::{same, Doc, Kind, Slot};

/// The `jsonschema` representation marker for [`Doc`].
pub struct Tape;

impl Json for Tape {
    type Node<'a> = TNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();
    // Lookups are linear scans here, so a members pass pays off early.
    const KEYS_PER_LOOKUP: usize = 8;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TNode<'_>) -> T) -> T {
        // Only `propertyNames` gets here; an allocation per name is fine.
        let doc = Doc {
            text: "",
            slots: vec![Slot { kind: Kind::EscStr, start: 0, end: 0, len: 0, after: 1 }],
            owned: vec![string.to_owned()],
        };
        f(doc.node(0))
    }
}

/// One node of a [`Doc`].
#[derive(Clone, Copy)]
pub struct TNode<'a> {
    pub(super) doc: &'a Doc<'a>,
    pub(super) idx: u32,
}

impl TNode<'_> {
    fn kind(&self) -> Kind {
        self.doc.kind(self.idx).unwrap_or(Kind::Null)
    }
}

impl<'a> Node<'a, Tape> for TNode<'a> {
    type Object = TObject<'a>;
    type Array = TArray<'a>;
    type Number = TNumber<'a>;

    fn as_object(&self) -> Option<TObject<'a>> {
        (self.kind() == Kind::Object).then_some(TObject { doc: self.doc, idx: self.idx })
    }

    fn as_array(&self) -> Option<TArray<'a>> {
        (self.kind() == Kind::Array).then_some(TArray { doc: self.doc, idx: self.idx })
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        self.doc.str_at(self.idx).map(Cow::Borrowed)
    }

    fn as_number(&self) -> Option<TNumber<'a>> {
        self.doc.number(self.idx)
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.kind() {
            Kind::True => Some(true),
            Kind::False => Some(false),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        self.kind() == Kind::Null
    }

    fn is_number(&self) -> bool {
        self.kind() == Kind::Number
    }

    fn json_type(&self) -> JsonType {
        match self.kind() {
            Kind::Null => JsonType::Null,
            Kind::False | Kind::True => JsonType::Boolean,
            Kind::Number => JsonType::Number,
            Kind::Str | Kind::EscStr => JsonType::String,
            Kind::Array => JsonType::Array,
            Kind::Object => JsonType::Object,
        }
    }

    // `enum`/`const` on scalars (the usual case) must not build a `Value` per check.
    fn equals_value(&self, expected: &Value) -> bool {
        match (self.kind(), expected) {
            (Kind::Str | Kind::EscStr, Value::String(e)) => self.doc.str_at(self.idx) == Some(e.as_str()),
            (Kind::Null, Value::Null) => true,
            (Kind::True, Value::Bool(b)) => *b,
            (Kind::False, Value::Bool(b)) => !*b,
            (Kind::Number, Value::Number(n)) => self.doc.number(self.idx).is_some_and(|m| cmp::equal_numbers(&m, n)),
            (Kind::Array, Value::Array(_)) | (Kind::Object, Value::Object(_)) => {
                cmp::equal(&self.doc.to_value(self.idx), expected)
            }
            _ => false,
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(self.doc.to_value(self.idx))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::tagged(std::ptr::from_ref(self.doc) as usize, self.idx))
    }
}

/// An object node.
#[derive(Clone, Copy)]
pub struct TObject<'a> {
    doc: &'a Doc<'a>,
    idx: u32,
}

/// Iterator over an object's members.
pub struct Members<'a> {
    doc: &'a Doc<'a>,
    next: u32,
    left: u32,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = self.next;
        let value = key + 1;
        self.next = self.doc.slot(value).map_or(u32::MAX, |s| s.after);
        Some((self.doc.str_at(key).unwrap_or(""), TNode { doc: self.doc, idx: value }))
    }
}

impl<'a> Object<'a, Tape> for TObject<'a> {
    type Node = TNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.doc.slot(self.idx).map_or(0, |s| s.len as usize)
    }

    fn get(&self, key: &Box<str>) -> Option<TNode<'a>> {
        self.members().find(|(k, _)| same(k, key)).map(|(_, v)| v)
    }

    fn members(&self) -> Members<'a> {
        Members { doc: self.doc, next: self.idx + 1, left: self.doc.slot(self.idx).map_or(0, |s| s.len) }
    }
}

/// An array node.
#[derive(Clone, Copy)]
pub struct TArray<'a> {
    doc: &'a Doc<'a>,
    idx: u32,
}

/// Iterator over an array's elements.
pub struct Elements<'a> {
    doc: &'a Doc<'a>,
    next: u32,
    left: u32,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TNode<'a>;

    fn next(&mut self) -> Option<TNode<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = self.next;
        self.next = self.doc.slot(item).map_or(u32::MAX, |s| s.after);
        Some(TNode { doc: self.doc, idx: item })
    }
}

impl<'a> Array<'a, Tape> for TArray<'a> {
    type Node = TNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.doc.slot(self.idx).map_or(0, |s| s.len as usize)
    }

    fn elements(&self) -> Elements<'a> {
        Elements { doc: self.doc, next: self.idx + 1, left: self.doc.slot(self.idx).map_or(0, |s| s.len) }
    }
}

/// A number, as its literal.
pub struct TNumber<'a> {
    pub(super) text: &'a str,
    /// Written without fraction or exponent.
    pub(super) integer: bool,
}

/// Exact powers of ten (all of them up to 1e22 are exact in an f64).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// `-?digits(.digits)?` with at most 15 digits in all: the mantissa and the power of ten are
/// both exact in an f64, so one division rounds correctly (Clinger's fast path). Prices and
/// totals are like this; anything else goes to `str::parse`.
fn fast_f64(text: &str) -> Option<f64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut mantissa: u64 = 0;
    let mut count = 0usize;
    let mut fraction: Option<usize> = None;
    for b in digits.bytes() {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
                if count > 15 {
                    return None;
                }
                if let Some(f) = fraction.as_mut() {
                    *f += 1;
                }
            }
            b'.' if fraction.is_none() => fraction = Some(0),
            _ => return None,
        }
    }
    let value = mantissa as f64 / *POW10.get(fraction.unwrap_or(0))?;
    Some(if negative { -value } else { value })
}

impl JsonNumber for TNumber<'_> {
    fn as_u64(&self) -> Option<u64> {
        if self.integer {
            self.text.parse().ok()
        } else {
            None
        }
    }

    fn as_i64(&self) -> Option<i64> {
        if self.integer {
            self.text.parse().ok()
        } else {
            None
        }
    }

    fn as_f64(&self) -> Option<f64> {
        fast_f64(self.text).or_else(|| self.text.parse::<f64>().ok()).filter(|f| f.is_finite())
    }

    fn as_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.text)
    }

    fn to_number(&self) -> Cow<'_, serde_json::Number> {
        let n = serde_json::from_str::<serde_json::Number>(self.text)
            .ok()
            .or_else(|| self.as_f64().and_then(serde_json::Number::from_f64))
            .unwrap_or_else(|| serde_json::Number::from(0u8));
        Cow::Owned(n)
    }

    // `type: integer` asks this per number: answer from the literal, without `to_number`.
    fn is_integer(&self) -> bool {
        self.integer || self.as_f64().is_some_and(|f| f.fract() == 0.0)
    }
}
