//! The small key set of `omit`: which keys of `properties`/`traits` it removes. The keys are
//! the client's choice, so a lookup must stay O(1) however many there are.
//! Must not: know about events or schemas (it holds whatever keys it is given).

use std::collections::HashSet;
use std::hash::Hash;

/// Up to this many keys, [`KeySet`] compares with each (cheaper than hashing the few keys an
/// omission usually has); past it, a hash set keeps it linear.
const LINEAR_SCAN_MAX: usize = 16;

/// A set of the keys `omit` removes. The keys are the client's choice, so membership must cost
/// O(1) whatever their number: thousands of them must cost what their bytes cost, not their
/// count squared.
pub(super) struct KeySet<T> {
    few: Vec<T>,
    many: HashSet<T>,
}

impl<T> Default for KeySet<T> {
    fn default() -> Self {
        KeySet { few: Vec::new(), many: HashSet::new() }
    }
}

impl<T: Eq + Hash + Copy> KeySet<T> {
    /// Adds `key`; `false` when it was there already.
    pub(super) fn insert(&mut self, key: T) -> bool {
        if self.contains(key) {
            return false;
        }
        if !self.many.is_empty() {
            self.many.insert(key);
        } else if self.few.len() < LINEAR_SCAN_MAX {
            self.few.push(key);
        } else {
            // From here on every key is in `many`, `few` stays empty.
            self.many.extend(self.few.drain(..));
            self.many.insert(key);
        }
        true
    }

    pub(super) fn contains(&self, key: T) -> bool {
        if self.many.is_empty() {
            self.few.contains(&key)
        } else {
            self.many.contains(&key)
        }
    }
}

impl<T: Eq + Hash + Copy> FromIterator<T> for KeySet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(keys: I) -> Self {
        let mut set = KeySet::default();
        for key in keys {
            set.insert(key);
        }
        set
    }
}
