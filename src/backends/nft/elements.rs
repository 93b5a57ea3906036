//! The mirror's element table: for every element kproxy applied, a fixed-size record of who
//! wants it, keyed by a 128-bit hash of its set and key text, never by the text itself.
//!
//! Invariants: `ElemId::of(set, key)` is a pure function of the text (SipHash with fixed keys,
//! twice, with different prefixes), so an element compiled again, in any process, finds its
//! record; two different elements share an id with probability ~2^-128. A `Held` says how
//! many owners want the element's current value (`refs`, never 0 in the table) and, only when
//! owners disagree about the value (two Services writing one key; the plan's claims make that
//! rare), the values of the others. Values are hashes too: the text of a value is known only
//! while a diff compiles the owner that wants it (see `diff.rs`). 32 bytes per element instead
//! of ~200 as text in ordered maps.

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

/// Who wants one element: `refs` owners want its value; when owners disagree about the value
/// (two Services writing one key; the plan's claims make that rare), the others' values too
/// (the later writer wins; when it leaves, an earlier one's value comes back). 16 bytes: the
/// disagreeing case is boxed, and allocates only then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held(State);

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Agreed { value: u64, refs: u32 },
    Contested(Box<Contest>),
}

/// The writer's value and owners, and one value per owner of another value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Contest {
    value: u64,
    refs: u32,
    others: Vec<u64>,
}

impl Held {
    pub fn new(value: u64) -> Held {
        Held(State::Agreed { value, refs: 1 })
    }

    /// The value the kernel holds for the element.
    pub fn value(&self) -> u64 {
        match &self.0 {
            State::Agreed { value, .. } => *value,
            State::Contested(c) => c.value,
        }
    }

    /// Runs `f` on the record as a `Contest`, then stores it back in its smallest form.
    fn edit<T>(&mut self, f: impl FnOnce(&mut Contest) -> T) -> T {
        let mut c = match std::mem::replace(&mut self.0, State::Agreed { value: 0, refs: 0 }) {
            State::Agreed { value, refs } => Contest {
                value,
                refs,
                others: Vec::new(),
            },
            State::Contested(c) => *c,
        };
        let out = f(&mut c);
        self.0 = if c.others.is_empty() {
            State::Agreed {
                value: c.value,
                refs: c.refs,
            }
        } else {
            State::Contested(Box::new(c))
        };
        out
    }

    /// One more owner wants `v` (and becomes the writer when `v` differs).
    pub fn want(&mut self, v: u64) {
        if let State::Agreed { value, refs } = &mut self.0
            && *value == v
        {
            *refs += 1;
            return;
        }
        self.edit(|c| {
            if v == c.value {
                c.refs += 1;
                return;
            }
            let old = std::mem::replace(&mut c.value, v);
            c.others.extend(std::iter::repeat_n(old, c.refs as usize));
            let before = c.others.len();
            c.others.retain(|o| *o != v);
            c.refs = 1 + (before - c.others.len()) as u32;
        })
    }

    /// One owner of `v` is gone; false when nobody wants the key any more. When the writer's
    /// last owner leaves, the latest other value becomes the value.
    pub fn unwant(&mut self, v: u64) -> bool {
        self.edit(|c| {
            if v != c.value {
                if let Some(i) = c.others.iter().position(|o| *o == v) {
                    c.others.swap_remove(i);
                }
                return true;
            }
            c.refs = c.refs.saturating_sub(1);
            if c.refs > 0 {
                return true;
            }
            let Some(next) = c.others.last().copied() else {
                return false;
            };
            let before = c.others.len();
            c.others.retain(|o| *o != next);
            c.refs = (before - c.others.len()) as u32;
            c.value = next;
            true
        })
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
        assert_eq!(h.value(), b);
        assert!(h.unwant(b), "two owners of a are left");
        assert_eq!(h.value(), a);
        assert!(h.unwant(a));
        assert!(!h.unwant(a), "nobody wants the key any more");
    }

    #[test]
    fn an_element_without_conflict_allocates_nothing() {
        let mut h = Held::new(value_hash(""));
        h.want(value_hash(""));
        assert!(matches!(h.0, State::Agreed { refs: 2, .. }));
        assert!(std::mem::size_of::<(ElemId, Held)>() <= 32);
    }
}
