//! The bit reader: big-endian bit fields of a TC string's decoded bytes.
//!
//! Owns: bounds-checked field reads ([`BitReader`], every error names the field it was
//! reading), the word-at-a-time `load` (the decoder's hot loop) and single-bit lookups.
//! Must not: know the TC string layout (`tcf` does), allocate, or panic.

use super::ConsentError;

/// Reads big-endian bit fields from `bytes[..]` between bit `pos` and bit `end`. Never panics:
/// every read is bounds-checked and reports the field it was reading.
pub(super) struct BitReader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    pub(super) end: usize,
    pub(super) section: &'static str,
}

impl<'a> BitReader<'a> {
    pub(super) fn new(bytes: &'a [u8], start_bit: usize, end_bit: usize, section: &'static str) -> Self {
        BitReader { bytes, pos: start_bit, end: end_bit.min(bytes.len() * 8), section }
    }

    pub(super) fn truncated(&self, field: &'static str) -> ConsentError {
        ConsentError::TcfTruncated { section: self.section, field }
    }

    /// Reads `n` (≤ 64) bits as an unsigned integer, most significant bit first.
    #[inline]
    pub(super) fn read(&mut self, n: usize, field: &'static str) -> Result<u64, ConsentError> {
        let stop = match self.pos.checked_add(n) {
            Some(stop) if stop <= self.end => stop,
            _ => return Err(self.truncated(field)),
        };
        // `end` ≤ the buffer's length in bits, so `load` reads real bits only.
        let v = if n <= 56 { load(self.bytes, self.pos, n) } else { read_bits(self.bytes, self.pos, n).unwrap_or(0) };
        self.pos = stop;
        Ok(v)
    }

    pub(super) fn flag(&mut self, field: &'static str) -> Result<bool, ConsentError> {
        Ok(self.read(1, field)? == 1)
    }

    pub(super) fn u16(&mut self, n: usize, field: &'static str) -> Result<u16, ConsentError> {
        // n ≤ 16 at every call site, so the value fits.
        Ok(self.read(n, field)? as u16)
    }

    pub(super) fn u8(&mut self, n: usize, field: &'static str) -> Result<u8, ConsentError> {
        Ok(self.read(n, field)? as u8)
    }

    /// Skips `n` bits that must all be present (a bit field).
    pub(super) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), ConsentError> {
        self.pos = self.pos.checked_add(n).filter(|&s| s <= self.end).ok_or_else(|| self.truncated(field))?;
        Ok(())
    }

    /// Two letters of 6 bits each, 0 = 'A' … 25 = 'Z'.
    pub(super) fn letters(&mut self, field: &'static str) -> Result<[u8; 2], ConsentError> {
        let a = self.u8(6, field)?;
        let b = self.u8(6, field)?;
        if a > 25 || b > 25 {
            return Err(ConsentError::TcfLetters(field));
        }
        Ok([b'A' + a, b'A' + b])
    }
}

/// `n` (≤ 64) bits starting at bit `pos`, most significant first, or `None` past the end of
/// `bytes`.
pub(super) fn read_bits(bytes: &[u8], pos: usize, n: usize) -> Option<u64> {
    if pos.checked_add(n)? > bytes.len() * 8 {
        return None;
    }
    if n > 56 {
        // One word covers at most 57 bits after a misaligned start: split long fields.
        let hi = load(bytes, pos, n - 32);
        let lo = load(bytes, pos + (n - 32), 32);
        return Some((hi << 32) | lo);
    }
    Some(load(bytes, pos, n))
}

/// `n` (≤ 56) bits at bit `pos`, bits past the end of `bytes` read as 0 (callers check the
/// length). Loads the 8 bytes around `pos` as one big-endian word: TC strings are read field by
/// field on every event, so this is the decoder's hot loop.
#[inline]
pub(super) fn load(bytes: &[u8], pos: usize, n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    let first = pos / 8;
    let mut buf = [0u8; 8];
    match bytes.get(first..first + 8) {
        Some(chunk) => buf.copy_from_slice(chunk),
        None => {
            for (dst, src) in buf.iter_mut().zip(bytes.get(first..).unwrap_or_default()) {
                *dst = *src;
            }
        }
    }
    (u64::from_be_bytes(buf) << (pos % 8)) >> (64 - n)
}

pub(super) fn bit_at(bytes: &[u8], pos: usize) -> bool {
    bytes.get(pos / 8).is_some_and(|b| (b >> (7 - pos % 8)) & 1 == 1)
}

/// Is bit `n` (1-based, first bit = 1) of a `width`-bit field set?
pub(super) fn nth_flag(bits: u64, width: u8, n: u8) -> bool {
    n >= 1 && n <= width && (bits >> (width - n)) & 1 == 1
}
