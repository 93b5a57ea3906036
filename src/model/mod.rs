//! The in-memory model: validated Services, EndpointSlices and this node's Node, and the
//! per-service-port view that `plan` and the backends consume.
//!
//! Invariants: every object stored here came through `validate`, so addresses parse, ports are in
//! range and protocols are known. The model is pure data: no I/O, no clocks.

pub mod place;
pub mod plan;
pub mod tracker;
pub mod types;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub use types::*;

/// One Service's slices, sorted by slice name. Usually one: a `Vec`, not an ordered map, whose
/// node would cost ~370 bytes per Service.
#[derive(Clone, Debug, Default)]
struct SliceGroup(Vec<(String, Arc<Slice>)>);

impl SliceGroup {
    fn at(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    fn get(&self, name: &str) -> Option<&Arc<Slice>> {
        self.at(name).ok().map(|i| &self.0[i].1)
    }

    fn insert(&mut self, name: String, slice: Arc<Slice>) {
        match self.at(&name) {
            Ok(i) => self.0[i].1 = slice,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (name, slice));
            }
        }
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Slice>> {
        let i = self.at(name).ok()?;
        Some(self.0.remove(i).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &Arc<Slice>> {
        self.0.iter().map(|(_, s)| s)
    }
}

/// Everything kproxy currently believes about the cluster.
#[derive(Clone, Debug, Default)]
pub struct Model {
    services: BTreeMap<NamespacedName, Arc<Service>>,
    /// EndpointSlices grouped by the Service they belong to, then by slice name.
    slices: BTreeMap<NamespacedName, SliceGroup>,
    /// Slice key (its own namespace/name) -> the Service it belongs to.
    slice_owner: HashMap<NamespacedName, NamespacedName>,
    node: Option<NodeInfo>,
    /// ServiceCIDR name -> its `spec.cidrs`.
    service_cidrs: BTreeMap<String, Vec<ipnet::IpNet>>,
}

impl Model {
    /// The ranges ClusterIPs are allocated from: every ServiceCIDR's, each once, sorted.
    pub fn service_cidrs(&self) -> Vec<ipnet::IpNet> {
        let all: BTreeSet<ipnet::IpNet> = self.service_cidrs.values().flatten().copied().collect();
        all.into_iter().collect()
    }

    /// Sets (or forgets) one ServiceCIDR; whether the union of ranges changed.
    pub fn set_service_cidr(&mut self, name: String, cidrs: Option<Vec<ipnet::IpNet>>) -> bool {
        let before = self.service_cidrs();
        match cidrs {
            Some(c) => self.service_cidrs.insert(name, c),
            None => self.service_cidrs.remove(&name),
        };
        self.service_cidrs() != before
    }

    pub fn service(&self, name: &NamespacedName) -> Option<&Service> {
        self.services.get(name).map(|s| &**s)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|s| &**s)
    }

    pub fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// Every service port of every Service, in a stable order.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.services.values().flat_map(|s| s.ports.iter())
    }

    pub fn port(&self, name: &ServicePortName) -> Option<&ServicePort> {
        self.services
            .get(&name.service)?
            .ports
            .iter()
            .find(|p| p.name == *name)
    }

    /// The slices of one Service, by slice name.
    pub fn slices_of(&self, service: &NamespacedName) -> impl Iterator<Item = &Slice> {
        self.slices
            .get(service)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|s| &**s)
    }

    /// Endpoints of one service port, merged from every slice of its Service: a slice port
    /// matches when its name and protocol equal the service port's. An address that appears in
    /// several slices is kept once, preferring a ready copy (as upstream's EndpointSliceCache).
    pub fn endpoints(&self, port: &ServicePortName) -> Vec<Endpoint> {
        let mut merged: BTreeMap<(std::net::IpAddr, u16), Endpoint> = BTreeMap::new();
        for slice in self.slices_of(&port.service) {
            let Some(sp) = slice
                .ports
                .iter()
                .find(|p| p.name == port.port && p.protocol == port.protocol)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let endpoint = ep.at_port(sp.port);
                let key = (endpoint.ip, endpoint.port);
                match merged.get(&key) {
                    Some(existing) if existing.ready || !endpoint.ready => {}
                    _ => {
                        merged.insert(key, endpoint);
                    }
                }
            }
        }
        merged.into_values().collect()
    }

    /// Replaces (or with `None` removes) a Service; returns what was there.
    pub fn set_service(
        &mut self,
        name: &NamespacedName,
        svc: Option<Arc<Service>>,
    ) -> Option<Arc<Service>> {
        match svc {
            Some(s) => self.services.insert(name.clone(), s),
            None => self.services.remove(name),
        }
    }

    /// Replaces (or removes) a slice, keyed by its own namespace/name; returns what was there.
    pub fn set_slice(
        &mut self,
        key: &NamespacedName,
        slice: Option<Arc<Slice>>,
    ) -> Option<Arc<Slice>> {
        let previous = self.slice_owner.remove(key).and_then(|svc| {
            let group = self.slices.get_mut(&svc)?;
            let old = group.remove(&key.name);
            if group.is_empty() {
                self.slices.remove(&svc);
            }
            old
        });
        if let Some(s) = slice {
            self.slice_owner.insert(key.clone(), s.service.clone());
            self.slices
                .entry(s.service.clone())
                .or_default()
                .insert(key.name.clone(), s);
        }
        previous
    }

    /// A slice by its own namespace/name.
    pub fn slice(&self, key: &NamespacedName) -> Option<&Slice> {
        let svc = self.slice_owner.get(key)?;
        self.slices.get(svc)?.get(&key.name).map(|s| &**s)
    }

    pub fn set_node(&mut self, node: Option<NodeInfo>) -> Option<NodeInfo> {
        std::mem::replace(&mut self.node, node)
    }
}

#[cfg(test)]
mod tests;
