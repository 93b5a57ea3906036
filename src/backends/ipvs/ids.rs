//! The mirror's record of the companion set elements kproxy applied: per element a 128-bit hash
//! of its family, set and key text, and how many service ports want it; never the text itself
//! (the text is known again by compiling a port, which is pure).
//!
//! Invariants: `ElemId::of` is a pure function of the element (SipHash with fixed keys, twice,
//! with different prefixes), so an element compiled again, in any process, finds its record;
//! two different elements share an id with probability ~2^-128. A count in `Counts` is never 0.
//! 20 bytes per element instead of ~100 as a `String` in an ordered map.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

use super::compile::Element;
use crate::nftables::family_name;

/// An element's identity: a hash of its family, set and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElemId(u64, u64);

impl Hash for ElemId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a hash: the table's hasher takes it as it is.
        state.write_u64(self.0);
    }
}

fn sip(e: &Element, salt: u8) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u8(salt);
    for part in [family_name(e.family), e.set, e.key.as_str()] {
        h.write(part.as_bytes());
        h.write_u8(0xff);
    }
    h.finish()
}

impl ElemId {
    pub fn of(e: &Element) -> ElemId {
        ElemId(sip(e, 1), sip(e, 2))
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

/// How many service ports want each element.
pub type Counts = HashMap<ElemId, u32, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpFamily;

    fn element(family: IpFamily, set: &'static str, key: &str) -> Element {
        Element {
            family,
            set,
            key: key.into(),
        }
    }

    #[test]
    fn ids_depend_on_the_family_the_set_and_the_key_and_nothing_else() {
        let a = ElemId::of(&element(IpFamily::V4, "cluster-ips", "10.0.0.1 . tcp . 80"));
        assert_eq!(
            a,
            ElemId::of(&element(IpFamily::V4, "cluster-ips", "10.0.0.1 . tcp . 80"))
        );
        assert_ne!(
            a,
            ElemId::of(&element(IpFamily::V4, "cluster-ips", "10.0.0.1 . tcp . 81"))
        );
        assert_ne!(
            a,
            ElemId::of(&element(IpFamily::V4, "dropped", "10.0.0.1 . tcp . 80"))
        );
        assert_ne!(
            a,
            ElemId::of(&element(IpFamily::V6, "cluster-ips", "10.0.0.1 . tcp . 80"))
        );
    }
}
