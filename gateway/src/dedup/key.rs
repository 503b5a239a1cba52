//! Keys and values of the table: the 128-bit keyed hash of `(source id, messageId)` ([`Key`]),
//! the pass-through hasher that hands it to std's table, and the packing of a value (expiry and
//! the confirmed / waited bits) with its expiry arithmetic.
//! Must not: lock, evict or wait (that is `shards` and `cache`), or hash ids itself (the cache
//! owns the SipHash key).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use super::settings::MAX_TTL;

/// The 128-bit hash of `(source id, messageId)`. Four `u32`s rather than a `u128` so that a
/// map slot is 20 bytes (alignment 4) instead of 32 (a `u128` is 16-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key([u32; 4]);

impl Key {
    pub(super) fn from_hash(lo: u64, hi: u64) -> Key {
        Key([lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32])
    }
    pub(super) fn lo(&self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
    pub(super) fn hi(&self) -> u64 {
        u64::from(self.0[2]) | (u64::from(self.0[3]) << 32)
    }
    pub(super) fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (chunk, word) in b.chunks_exact_mut(4).zip(self.0) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        b
    }
    pub(super) fn from_bytes(b: &[u8; 16]) -> Key {
        let mut k = [0u32; 4];
        for (word, chunk) in k.iter_mut().zip(b.chunks_exact(4)) {
            *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Key(k)
    }
}

impl Hash for Key {
    // The key is already a keyed hash: hand its low half to the table as is (the high half
    // picks the shard, so the two choices are independent).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.lo());
    }
}

/// Pass-through hasher for [`Key`]s.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached (Key hashes through write_u64); kept correct for any other input.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type Map = HashMap<Key, u32, BuildHasherDefault<KeyHasher>>;

/// Value bits: `expiry << 2 | WAITED | CONFIRMED`.
const CONFIRMED: u32 = 1;
pub(super) const WAITED: u32 = 2;
pub(super) const EXP_MAX: u64 = (u32::MAX >> 2) as u64;

pub(super) fn expiry_of(v: u32) -> u32 {
    v >> 2
}

pub(super) fn pack(expiry: u32, confirmed: bool) -> u32 {
    (expiry << 2) | if confirmed { CONFIRMED } else { 0 }
}

pub(super) fn is_confirmed(v: u32) -> bool {
    v & CONFIRMED != 0
}

pub(super) fn ttl_secs(ttl: Duration) -> u64 {
    ttl.clamp(Duration::from_secs(1), MAX_TTL).as_secs()
}

pub(super) fn expiry(now: u32, secs: u64) -> u32 {
    // Both terms are below 2^30 + 2^25; the sum is clamped to the 30-bit field.
    (u64::from(now) + secs).min(EXP_MAX) as u32
}
