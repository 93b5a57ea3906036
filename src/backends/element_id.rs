//! An element's identity in a mirror (nftables' element table, IPVS mode's companion sets): a
//! 128-bit hash of the texts that name it, never the texts, and the hasher that takes such an
//! id as it is.
//!
//! Invariants: `ElemId::of(parts)` is a pure function of the parts (SipHash with fixed keys,
//! twice, with different prefixes; each part closed by a byte no text holds), so an element
//! compiled again, in any process, finds its record; two different elements share an id with
//! probability ~2^-128.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

/// An element's identity: a hash of the texts that name it (its set and key, and its family
/// where one table holds both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElemId(u64, u64);

impl Hash for ElemId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a hash: the table's hasher takes it as it is.
        state.write_u64(self.0);
    }
}

/// SipHash of `parts` after `salt`, each part closed by 0xff.
pub fn sip(parts: &[&str], salt: u8) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u8(salt);
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

impl ElemId {
    pub fn of(parts: &[&str]) -> ElemId {
        ElemId(sip(parts, 1), sip(parts, 2))
    }
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

/// A map from element ids, hashed by `IdHasher`.
pub type IdMap<V> = HashMap<ElemId, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_the_parts_and_nothing_else() {
        let a = ElemId::of(&["services", "10.0.0.1 . tcp . 80"]);
        assert_eq!(a, ElemId::of(&["services", "10.0.0.1 . tcp . 80"]));
        assert_ne!(a, ElemId::of(&["services", "10.0.0.1 . tcp . 81"]));
        assert_ne!(a, ElemId::of(&["cluster-ports", "10.0.0.1 . tcp . 80"]));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(ElemId::of(&["ab", "c"]), ElemId::of(&["a", "bc"]));
    }
}
