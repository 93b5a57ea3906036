//! The mirror's element table: for every element kproxy applied, a fixed-size record of who
//! wants it, keyed by a 128-bit hash of its set and key text, never by the text itself.
//!
//! Invariants: `ElemId::of(set, key)` is a pure function of the text (SipHash with fixed keys,
//! twice, with different prefixes), so an element compiled again, in any process, finds its
//! record; two different elements share an id with probability ~2^-128. A `Held` says how
//! many owners want the element's current value (`refs`, never 0 in the table) and, only when
//! owners disagree about the value (two Services writing one key; the plan's claims make that
//! rare), the values of the others. Values are hashes too: the text of a value is known only
//! while a diff compiles the owner that wants it (see `diff.rs`). About 40 bytes per element
//! instead of ~200 as text in ordered maps.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

/// An element's identity: a hash of its set's name and its key text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElemId(u64, u64);

impl Hash for ElemId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a hash: the table's hasher takes it as it is.
        state.write_u64(self.0);
    }
}

fn sip(parts: &[&str], salt: u8) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u8(salt);
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

impl ElemId {
    pub fn of(set: &str, key: &str) -> ElemId {
        ElemId(sip(&[set, key], 1), sip(&[set, key], 2))
    }
}

/// The hash of an element's value text ("" for a plain set's element).
pub fn value_hash(value: &str) -> u64 {
    sip(&[value], 3)
}

/// Passes an `ElemId`'s first word through: it is already uniformly distributed.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Every element of one family's table.
pub type Table = HashMap<ElemId, Held, BuildHasherDefault<IdHasher>>;

/// Who wants one element: `refs` owners want `value`; `others` holds one value per owner that
/// wants the key with another value (the later writer wins; when it leaves, an earlier one's
/// value comes back). `others` is `None`, and allocates nothing, in every non-conflicting case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub value: u64,
    refs: u32,
    // Boxed on purpose: 8 bytes in every record instead of a Vec's 24, for a list that exists
    // only in conflicts.
    #[allow(clippy::box_collection)]
    others: Option<Box<Vec<u64>>>,
}

impl Held {
    pub fn new(value: u64) -> Held {
        Held {
            value,
            refs: 1,
            others: None,
        }
    }

    /// One more owner wants `v` (and becomes the writer when `v` differs).
    pub fn want(&mut self, v: u64) {
        if v == self.value {
            self.refs += 1;
            return;
        }
        let old = std::mem::replace(&mut self.value, v);
        let others = self.others.get_or_insert_with(Default::default);
        others.extend(std::iter::repeat_n(old, self.refs as usize));
        let before = others.len();
        others.retain(|o| *o != v);
        self.refs = 1 + (before - others.len()) as u32;
        if others.is_empty() {
            self.others = None;
        }
    }

    /// One owner of `v` is gone; false when nobody wants the key any more. When the writer's
    /// last owner leaves, the latest other value becomes the value.
    pub fn unwant(&mut self, v: u64) -> bool {
        if v != self.value {
            if let Some(others) = self.others.as_mut() {
                if let Some(i) = others.iter().position(|o| *o == v) {
                    others.swap_remove(i);
                }
                if others.is_empty() {
                    self.others = None;
                }
            }
            return true;
        }
        self.refs = self.refs.saturating_sub(1);
        if self.refs > 0 {
            return true;
        }
        let Some(others) = self.others.as_mut() else {
            return false;
        };
        let Some(next) = others.last().copied() else {
            return false;
        };
        let before = others.len();
        others.retain(|o| *o != next);
        self.refs = (before - others.len()) as u32;
        self.value = next;
        if others.is_empty() {
            self.others = None;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_the_set_and_the_key_and_nothing_else() {
        let a = ElemId::of("services", "10.0.0.1 . tcp . 80");
        assert_eq!(a, ElemId::of("services", "10.0.0.1 . tcp . 80"));
        assert_ne!(a, ElemId::of("services", "10.0.0.1 . tcp . 81"));
        assert_ne!(a, ElemId::of("cluster-ports", "10.0.0.1 . tcp . 80"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(ElemId::of("ab", "c"), ElemId::of("a", "bc"));
    }

    #[test]
    fn the_later_writer_wins_and_the_earlier_value_comes_back_when_it_leaves() {
        let (a, b) = (value_hash("goto lb-1"), value_hash("goto lb-2"));
        let mut h = Held::new(a);
        h.want(a);
        h.want(b);
        assert_eq!(h.value, b);
        assert!(h.unwant(b), "two owners of a are left");
        assert_eq!(h.value, a);
        assert!(h.unwant(a));
        assert!(!h.unwant(a), "nobody wants the key any more");
    }

    #[test]
    fn an_element_without_conflict_allocates_nothing() {
        let mut h = Held::new(value_hash(""));
        h.want(value_hash(""));
        assert!(h.others.is_none());
        assert!(std::mem::size_of::<(ElemId, Held)>() <= 40);
    }
}
