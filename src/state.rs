//! What the sync loop publishes and the HTTP endpoints read: the plans, the node facts, whether
//! this node's Node exists, sync counts, health, and the quarantined service ports.
//!
//! Invariants: written only by the sync loop; readers take each lock briefly and never wait for
//! a sync. A missing Node is logged once (a warning), and its appearance once (info).

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::backends::Plans;
use crate::health::proxy::ProxyHealth;
use crate::node::NodeFacts;
use crate::sync::quarantine;

/// State the HTTP endpoints read: the plans, the node facts, sync counts, health.
#[derive(Default)]
pub struct Shared {
    pub plans: RwLock<Plans>,
    pub node: RwLock<NodeFacts>,
    pub full_syncs: AtomicU64,
    pub partial_syncs: AtomicU64,
    pub health: ProxyHealth,
    /// The quarantined (service port, family) pairs, for `/debug/state`.
    pub quarantined: RwLock<BTreeMap<quarantine::Unit, quarantine::Quarantined>>,
    /// Whether the source has this node's Node (`/debug/state`'s `node.found`).
    pub node_presence: NodePresence,
}

/// Whether this node's Node object exists, as the source last said: unknown until the source
/// first listed Nodes, then missing or found. A node name that names no Node (a wrong
/// `--hostname-override`) leaves kproxy without the Node's InternalIPs (`--nodeport-addresses
/// primary`), podCIDRs (`--detect-local-mode NodeCIDR`) and zone (topology hints).
#[derive(Debug, Default)]
pub struct NodePresence(AtomicU8);

const UNKNOWN: u8 = 0;
const MISSING: u8 = 1;
const FOUND: u8 = 2;

impl NodePresence {
    /// `None` until the source listed Nodes; then whether it has this node's.
    pub fn found(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            UNKNOWN => None,
            state => Some(state == FOUND),
        }
    }

    /// The source's list of Nodes is complete: a Node it held was `seen` before, so a state
    /// still unknown means it has none named `name`. Logged once, as a warning.
    pub fn listed(&self, name: &str) {
        if self
            .0
            .compare_exchange(UNKNOWN, MISSING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                node = name,
                "no Node named {name:?} (--hostname-override, else the host name): its InternalIPs (--nodeport-addresses primary), podCIDRs and zone stay unknown until it appears"
            );
        }
    }

    /// The Node `name` was added or changed (`present`) or deleted. One info line when it
    /// appears after it was missing; its deletion is logged by `ProxyHealth::node_seen`.
    pub fn seen(&self, name: &str, present: bool) {
        let now = if present { FOUND } else { MISSING };
        let before = self.0.swap(now, Ordering::Relaxed);
        if present && before == MISSING {
            tracing::info!(node = name, "Node {name:?} found");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_unknown_until_listed_then_missing_until_it_appears() {
        let p = NodePresence::default();
        assert_eq!(p.found(), None);
        p.listed("node1");
        assert_eq!(p.found(), Some(false));
        p.listed("node1"); // a relist: still missing, not logged again
        assert_eq!(p.found(), Some(false));
        p.seen("node1", true);
        assert_eq!(p.found(), Some(true));
        p.seen("node1", false); // deleted
        assert_eq!(p.found(), Some(false));
        let early = NodePresence::default();
        early.seen("node1", true); // sent before the list completes
        early.listed("node1");
        assert_eq!(early.found(), Some(true));
        early.seen("node1", false); // deleted, then a relist without it
        early.listed("node1");
        assert_eq!(early.found(), Some(false));
    }
}
