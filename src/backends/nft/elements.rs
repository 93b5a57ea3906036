//! The mirror's element table: for every element of a shared set (`skeleton::SHARED_SETS`)
//! kproxy applied, how many owners want it, keyed by a 128-bit hash of its set and key text,
//! never by the text itself. Elements of the other sets have one owner each (the plan's
//! claims), whose compiled plan says what it contributed: they have no record at all.
//!
//! Invariants: an element's id is `ElemId::of(&[set, key])` (`backends::element_id`), so an
//! element compiled again finds its record. A record's count is
//! never 0 in the table. Shared sets are plain sets, so owners never disagree about a value.
//! 24 bytes per shared element, none per other element, instead of ~200 as text.

pub use crate::backends::element_id::ElemId;
use crate::backends::element_id::{IdMap, sip};

/// The hash of an element's value text ("" for a plain set's element).
pub fn value_hash(value: &str) -> u64 {
    sip(&[value], 3)
}

/// The shared elements of one family's table: id -> number of owners that want it.
pub type Table = IdMap<u32>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_24_bytes() {
        assert!(std::mem::size_of::<(ElemId, u32)>() <= 24);
    }
}
