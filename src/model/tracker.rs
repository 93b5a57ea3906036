//! Change tracking: applies object updates to the `Model`, drops no-op updates, and reports at
//! checkout which service ports changed since the previous checkout.
//!
//! Invariants: for every Service touched since the last checkout, `pending` holds its derived
//! view (service ports and their endpoints) as it was at that checkout; `checkout` compares that
//! with the view now, so a change undone before the sync (A -> B -> A) reports nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::{
    Endpoint, IpFamily, Model, NamespacedName, NodeInfo, Service, ServicePort, ServicePortName,
    Slice,
};

/// A Service's derived view: its service ports and their endpoints.
type Derived = BTreeMap<ServicePortName, (ServicePort, Vec<Endpoint>)>;

/// What `checkout` hands to the sync loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkout {
    /// Service ports whose definition or endpoints differ from the previous checkout.
    pub changed: BTreeSet<ServicePortName>,
    /// The Node object (zone, addresses) changed: plans of every port may differ.
    pub node_changed: bool,
    /// EndpointSlice last-change-trigger-times of the updates taken, with the slice's family.
    pub trigger_times: Vec<(IpFamily, SystemTime)>,
}

#[derive(Debug, Default)]
pub struct ChangeTracker {
    model: Model,
    pending: HashMap<NamespacedName, Derived>,
    pending_services: HashSet<NamespacedName>,
    pending_endpoints: HashSet<NamespacedName>,
    node_changed: bool,
    trigger_times: Vec<(IpFamily, SystemTime)>,
}

fn derive(model: &Model, service: &NamespacedName) -> Derived {
    let Some(svc) = model.service(service) else {
        return Derived::new();
    };
    svc.ports
        .iter()
        .map(|p| (p.name.clone(), (p.clone(), model.endpoints(&p.name))))
        .collect()
}

impl ChangeTracker {
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Services with a pending Service change (the `…service_changes_pending` gauge).
    pub fn pending_service_changes(&self) -> usize {
        self.pending_services.len()
    }

    /// Services with a pending endpoint change (the `…endpoint_changes_pending` gauge).
    pub fn pending_endpoint_changes(&self) -> usize {
        self.pending_endpoints.len()
    }

    fn remember(&mut self, service: &NamespacedName) {
        if !self.pending.contains_key(service) {
            let before = derive(&self.model, service);
            self.pending.insert(service.clone(), before);
        }
    }

    /// Sets (or deletes) a Service; false when nothing changed.
    pub fn update_service(&mut self, name: &NamespacedName, svc: Option<Arc<Service>>) -> bool {
        if self.model.service(name) == svc.as_deref() {
            return false;
        }
        self.remember(name);
        self.model.set_service(name, svc);
        self.pending_services.insert(name.clone());
        true
    }

    /// Sets (or deletes) an EndpointSlice keyed by its own namespace/name; false when nothing
    /// changed.
    pub fn update_slice(&mut self, key: &NamespacedName, slice: Option<Arc<Slice>>) -> bool {
        let old = self.model.slice(key);
        if old == slice.as_deref() {
            return false;
        }
        let owners: Vec<NamespacedName> = old
            .into_iter()
            .chain(slice.as_deref())
            .map(|s| s.service.clone())
            .collect();
        for owner in &owners {
            self.remember(owner);
        }
        if let Some(s) = &slice
            && let Some(t) = s.trigger_time
        {
            self.trigger_times.push((s.family, t));
        }
        self.model.set_slice(key, slice);
        self.pending_endpoints.extend(owners);
        true
    }

    /// The Node object as last received.
    pub fn node(&self) -> Option<&NodeInfo> {
        self.model.node()
    }

    /// Sets (or forgets) this node's Node object; false when no fact a plan reads changed.
    pub fn update_node(&mut self, node: Option<NodeInfo>) -> bool {
        let same = match (self.model.node(), node.as_ref()) {
            (Some(a), Some(b)) => a.same_facts(b),
            (a, b) => a.is_none() && b.is_none(),
        };
        // Kept even when no fact changed: `draining` is read from it.
        self.model.set_node(node);
        if same {
            return false;
        }
        self.node_changed = true;
        true
    }

    /// Sets (or forgets) one ServiceCIDR; a change of the ranges makes the next sync full (the
    /// node's elements hold them), false when the ranges are the same.
    pub fn update_service_cidr(&mut self, name: String, cidrs: Option<Vec<ipnet::IpNet>>) -> bool {
        let changed = self.model.set_service_cidr(name, cidrs);
        self.node_changed |= changed;
        changed
    }

    /// Takes every pending change: the service ports that differ from the previous checkout.
    pub fn checkout(&mut self) -> Checkout {
        let mut changed = BTreeSet::new();
        for (service, before) in std::mem::take(&mut self.pending) {
            let after = derive(&self.model, &service);
            for (name, old) in &before {
                if after.get(name) != Some(old) {
                    changed.insert(name.clone());
                }
            }
            for name in after.keys() {
                if !before.contains_key(name) {
                    changed.insert(name.clone());
                }
            }
        }
        self.pending_services.clear();
        self.pending_endpoints.clear();
        Checkout {
            changed,
            node_changed: std::mem::take(&mut self.node_changed),
            trigger_times: std::mem::take(&mut self.trigger_times),
        }
    }
}
