//! Where an endpoint is (node, zone) and where its topology hints send traffic, as one value
//! shared by every endpoint with the same ones: an endpoint costs its address, port and flags
//! plus one pointer, instead of its own copies of its node's name and zone.
//!
//! Invariants: `Place::intern` returns the one `Arc` for equal places while any endpoint holds
//! it; places no endpoint holds any more are dropped from the interner once it has doubled in
//! size since it last pruned, so its size follows the live distinct places (about one per node
//! and zone), never the history of the cluster.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, LazyLock, Mutex};

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Place {
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub zone_hints: BTreeSet<String>,
    pub node_hints: BTreeSet<String>,
}

struct Interner {
    places: HashSet<Arc<Place>>,
    prune_at: usize,
}

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        places: HashSet::new(),
        prune_at: 1024,
    })
});

impl Place {
    /// The shared copy of `place`.
    pub fn intern(place: Place) -> Arc<Place> {
        let mut i = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = i.places.get(&place) {
            return shared.clone();
        }
        if i.places.len() >= i.prune_at {
            i.places.retain(|p| Arc::strong_count(p) > 1);
            i.prune_at = (i.places.len() * 2).max(1024);
        }
        let shared = Arc::new(place);
        i.places.insert(shared.clone());
        shared
    }

    /// The shared place of an endpoint on `node` without a zone or hints.
    pub fn on_node(node: &str) -> Arc<Place> {
        Place::intern(Place {
            node_name: Some(node.to_string()),
            ..Place::default()
        })
    }

    /// Places the interner holds now (for tests).
    #[cfg(test)]
    fn interned() -> usize {
        INTERNER.lock().map(|i| i.places.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_places_share_one_allocation_and_different_ones_do_not() {
        let a = Place::on_node("place-test-node-a");
        let b = Place::on_node("place-test-node-a");
        assert!(Arc::ptr_eq(&a, &b));
        let zoned = Place::intern(Place {
            zone: Some("z1".into()),
            ..(*a).clone()
        });
        assert!(!Arc::ptr_eq(&a, &zoned));
        assert_eq!(zoned.node_name.as_deref(), Some("place-test-node-a"));
    }

    #[test]
    fn places_nobody_holds_are_pruned_so_the_interner_follows_the_live_ones() {
        // Far more distinct places than the prune threshold, each dropped at once.
        for i in 0..20_000 {
            drop(Place::on_node(&format!("place-test-gone-{i}")));
        }
        let held = Place::on_node("place-test-held");
        assert!(Place::interned() < 5_000, "{}", Place::interned());
        assert!(Arc::ptr_eq(&held, &Place::on_node("place-test-held")));
    }
}
