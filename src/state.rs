//! What the sync loop publishes and the HTTP endpoints read: the plans, the node facts, whether
//! this node's Node exists, sync counts, health, and the quarantined service ports.
//!
//! Invariants: written only by the sync loop; readers take each lock briefly and never wait for
//! a sync: they copy what they need out (the plans are `Arc`s, a copy is a reference count) and
//! serialise after the lock is released. A missing Node is logged once (a warning), and its
//! appearance once (info).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::backends::Plans;
use crate::health::proxy::ProxyHealth;
use crate::model::plan::Planned;
use crate::model::{NamespacedName, Protocol, ServicePortName};
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

/// Service ports and their plans, copied out of `Shared::plans` (in its order).
pub type PlansSnapshot = Vec<(ServicePortName, Arc<Planned>)>;

impl Shared {
    /// Every service port's plan, copied under the read lock (reference counts only).
    pub fn plans_snapshot(&self) -> PlansSnapshot {
        let plans = self.plans.read().expect("plans lock");
        plans.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// The plans of `service`'s ports (every port, both families), copied under the read lock;
    /// empty when kproxy plans none. The plans are ordered by Service first, so this reads only
    /// that Service's range.
    pub fn service_plans(&self, service: &NamespacedName) -> PlansSnapshot {
        // The smallest key of the Service: the empty port name and the first protocol.
        let first = ServicePortName::new(service.clone(), "", Protocol::Tcp);
        let plans = self.plans.read().expect("plans lock");
        plans
            .range(first..)
            .take_while(|(k, _)| k.service == *service)
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{add, cluster_ips, external, ip};

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

    /// `cluster_ips()` and `external()`, with `web` in a second namespace and a dual-stack
    /// port added to `default/sticky`.
    fn shared() -> Shared {
        let mut plans = cluster_ips();
        plans.extend(external());
        let other = ServicePortName::new(NamespacedName::new("other", "web"), "", Protocol::Tcp);
        add(
            &mut plans,
            crate::model::ServicePort::cluster_ip(other, ip("10.96.9.9"), 80),
            vec![],
        );
        let dual =
            ServicePortName::new(NamespacedName::new("default", "sticky"), "c", Protocol::Udp);
        let mut port = crate::model::ServicePort::cluster_ip(dual, ip("10.96.1.3"), 53);
        port.cluster_ips.push(ip("fd96::3"));
        add(&mut plans, port, vec![]);
        Shared {
            plans: RwLock::new(plans),
            ..Shared::default()
        }
    }

    fn names(snapshot: &PlansSnapshot) -> Vec<String> {
        snapshot.iter().map(|(k, _)| k.to_string()).collect()
    }

    #[test]
    fn a_services_plans_are_all_its_ports_and_nothing_of_a_service_whose_name_it_prefixes() {
        let shared = shared();
        let sticky = shared.service_plans(&NamespacedName::new("default", "sticky"));
        assert_eq!(
            names(&sticky),
            [
                "default/sticky:a/TCP",
                "default/sticky:b/TCP",
                "default/sticky:c/UDP"
            ]
        );
        let families: Vec<usize> = sticky.iter().map(|(_, p)| p.plan.families.len()).collect();
        assert_eq!(
            families,
            [1, 1, 2],
            "the dual-stack port keeps both families"
        );
        let web = shared.service_plans(&NamespacedName::new("default", "web"));
        assert_eq!(
            names(&web),
            ["default/web:http/TCP"],
            "not web6, not other/web"
        );
        let other = shared.service_plans(&NamespacedName::new("other", "web"));
        assert_eq!(names(&other), ["other/web:/TCP"]);
        let none = shared.service_plans(&NamespacedName::new("default", "nope"));
        assert!(none.is_empty(), "{:?}", names(&none));
    }

    #[test]
    fn a_snapshot_holds_no_lock_and_sees_the_plans_as_they_were_when_taken() {
        let shared = shared();
        let all = shared.plans_snapshot();
        let expected: Vec<String> = shared
            .plans
            .read()
            .unwrap()
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(names(&all), expected);
        let one = shared.service_plans(&NamespacedName::new("default", "web"));
        // Both snapshots alive: the sync loop can still write.
        let mut plans = shared
            .plans
            .try_write()
            .expect("no lock held by a snapshot");
        plans.clear();
        drop(plans);
        assert_eq!((all.len(), one.len()), (expected.len(), 1));
    }
}
