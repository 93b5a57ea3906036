//! What the sync loop publishes and the HTTP endpoints read: the plans, the node facts, sync
//! counts, health, and the quarantined service ports.
//!
//! Invariants: written only by the sync loop; readers take each lock briefly and never wait for
//! a sync: they copy what they need out (the plans are `Arc`s, a copy is a reference count) and
//! serialise after the lock is released.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
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
