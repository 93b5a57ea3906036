//! The mirror's record of the companion set elements kproxy applied: per element a 128-bit hash
//! of its family, set and key text, and how many service ports want it; never the text itself
//! (the text is known again by compiling a port, which is pure).
//!
//! Invariants: an element's id is `id_of` it (`backends::element_id`), so an element compiled
//! again, in any process, finds its record. A count in `Counts` is never 0.
//! 20 bytes per element instead of ~100 as a `String` in an ordered map.

use super::compile::Element;
pub use crate::backends::element_id::ElemId;
use crate::backends::element_id::IdMap;
use crate::nftables::family_name;

/// The id of a companion set element: its family, set and key.
pub fn id_of(e: &Element) -> ElemId {
    ElemId::of(&[family_name(e.family), e.set, e.key.as_str()])
}

/// How many service ports want each element.
pub type Counts = IdMap<u32>;

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
        let a = id_of(&element(IpFamily::V4, "cluster-ips", "10.0.0.1 . tcp . 80"));
        assert_eq!(
            a,
            id_of(&element(IpFamily::V4, "cluster-ips", "10.0.0.1 . tcp . 80"))
        );
        assert_ne!(
            a,
            id_of(&element(IpFamily::V4, "cluster-ips", "10.0.0.1 . tcp . 81"))
        );
        assert_ne!(
            a,
            id_of(&element(IpFamily::V4, "dropped", "10.0.0.1 . tcp . 80"))
        );
        assert_ne!(
            a,
            id_of(&element(IpFamily::V6, "cluster-ips", "10.0.0.1 . tcp . 80"))
        );
    }
}
