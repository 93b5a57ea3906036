//! What the sync loop publishes and the HTTP endpoints read: the plans, the node facts, sync
//! counts, health, and the quarantined service ports.
//!
//! Invariants: written only by the sync loop; readers take each lock briefly and never wait for
//! a sync.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;

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
}
