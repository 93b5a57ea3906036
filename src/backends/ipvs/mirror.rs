//! What IPVS mode last applied successfully, and the diff of the changed service ports against
//! it: the netlink messages for virtual servers and destinations, the addresses to bind and
//! unbind, and the companion set elements to add and delete. Pure.
//!
//! Invariants: per service port the mirror holds only the plan and node facts it was compiled
//! from (`Owner`, shared with the sync loop): compiling them again gives what the port
//! contributed, so a diff compiles the old and the new state of the ports it covers and no
//! compiled state is kept between syncs; `servers` is the kernel's state as kproxy left it,
//! including destinations that are draining (weight 0); addresses and elements are
//! reference-counted over the service ports that want them, elements by a hash of their text
//! (`ids.rs`) (a ClusterIP shared by several ports stays bound until the last one
//! goes); a removed TCP destination is drained (weight 0) instead of deleted, UDP and SCTP ones
//! are deleted at once, as upstream (expire_nodest_conn ends their flows); a destination that
//! comes back while draining gets its weight back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::compile::{self, Element, IpvsSettings, PortState, Server};
use super::ids::{Counts, id_of};
use super::netlink::{Cmd, DestKey, IpvsMessage, ServiceKey, VirtualServer};
use super::socket::dest_message;
use crate::model::plan::Planned;
use crate::model::{Protocol, ServicePortName};
use crate::node::NodeFacts;

/// What one service port contributed: its plan and the node facts it was compiled with, both
/// shared (with the sync loop, and between ports), so the mirror holds no compiled state per
/// port. Compiling them again gives exactly what the port contributed (compile is pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub planned: Arc<Planned>,
    pub facts: Arc<NodeFacts>,
}

impl Owner {
    pub fn compile(&self, settings: &IpvsSettings) -> PortState {
        compile::compile_port(&self.planned, &self.facts, settings)
    }

    /// Whether compiling `other` gives what this owner contributed.
    pub fn same(&self, other: &Owner) -> bool {
        (Arc::ptr_eq(&self.planned, &other.planned) || self.planned == other.planned)
            && (Arc::ptr_eq(&self.facts, &other.facts) || self.facts == other.facts)
    }
}

/// A virtual server as the kernel has it: destinations with their weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub vs: VirtualServer,
    pub dests: BTreeMap<DestKey, u32>,
}

/// Everything one sync sends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub ipvs: Vec<IpvsMessage>,
    pub bind: Vec<IpAddr>,
    pub unbind: Vec<IpAddr>,
    pub add_elements: Vec<Element>,
    pub del_elements: Vec<Element>,
    /// Destinations that started draining.
    pub drain: Vec<(ServiceKey, DestKey)>,
}

impl Changes {
    pub fn len(&self) -> usize {
        self.ipvs.len()
            + self.bind.len()
            + self.unbind.len()
            + self.add_elements.len()
            + self.del_elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    pub ports: BTreeMap<ServicePortName, Owner>,
    /// The node facts of the last sync that compiled a port (shared by the owners it wrote).
    pub facts: Option<Arc<NodeFacts>>,
    pub servers: BTreeMap<ServiceKey, Applied>,
    /// The ports that declare each server (two only when Services collide).
    pub owners: BTreeMap<ServiceKey, Owners>,
    pub addresses: BTreeMap<IpAddr, usize>,
    pub elements: Counts,
}

/// The ports that declare one server, in name order: the first declares it. Two only when
/// Services collide, so a list, grown one at a time (8 bytes for the usual one owner).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners(Vec<ServicePortName>);

impl Owners {
    pub fn insert(&mut self, name: ServicePortName) {
        if let Err(at) = self.0.binary_search(&name) {
            self.0.reserve_exact(1);
            self.0.insert(at, name);
        }
    }

    pub fn remove(&mut self, name: &ServicePortName) {
        if let Ok(at) = self.0.binary_search(name) {
            self.0.remove(at);
        }
    }

    /// The port that declares the server.
    pub fn first(&self) -> Option<&ServicePortName> {
        self.0.first()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The messages that turn `have` into `want` for one virtual server.
pub fn diff_server(
    key: &ServiceKey,
    have: Option<&Applied>,
    want: Option<&Server>,
    out: &mut Changes,
) {
    match (have, want) {
        (None, None) => {}
        (None, Some(w)) => {
            out.ipvs
                .push(IpvsMessage::service(Cmd::NewService, w.vs.attrs()));
            for d in &w.dests {
                out.ipvs.push(dest_message(Cmd::NewDest, key, d, 1));
            }
        }
        (Some(_), None) => out
            .ipvs
            .push(IpvsMessage::service(Cmd::DelService, key.attrs())),
        (Some(h), Some(w)) => {
            if h.vs != w.vs {
                out.ipvs
                    .push(IpvsMessage::service(Cmd::SetService, w.vs.attrs()));
            }
            for d in &w.dests {
                match h.dests.get(d) {
                    None => out.ipvs.push(dest_message(Cmd::NewDest, key, d, 1)),
                    Some(1) => {}
                    Some(_) => out.ipvs.push(dest_message(Cmd::SetDest, key, d, 1)),
                }
            }
            for (d, weight) in &h.dests {
                if w.dests.contains(d) || *weight == 0 && key.protocol == Protocol::Tcp {
                    continue;
                }
                if key.protocol == Protocol::Tcp {
                    out.ipvs.push(dest_message(Cmd::SetDest, key, d, 0));
                    out.drain.push((*key, *d));
                } else {
                    out.ipvs.push(dest_message(Cmd::DelDest, key, d, 0));
                }
            }
        }
    }
}

/// The kernel state of a server after `diff_server` applied `want` over `have`.
pub fn after(have: Option<&Applied>, want: Option<&Server>) -> Option<Applied> {
    let w = want?;
    let mut dests: BTreeMap<DestKey, u32> = BTreeMap::new();
    if let Some(h) = have {
        for d in h.dests.keys() {
            if !w.dests.contains(d) && w.vs.key.protocol == Protocol::Tcp {
                dests.insert(*d, 0);
            }
        }
    }
    dests.extend(w.dests.iter().map(|d| (*d, 1)));
    Some(Applied {
        vs: w.vs.clone(),
        dests,
    })
}

/// What a diff changes in the mirror once its changes are applied: only the touched entries,
/// so a partial sync costs O(change), not O(Services).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    ports: BTreeMap<ServicePortName, Option<Owner>>,
    facts: Option<Arc<NodeFacts>>,
    pub servers: BTreeMap<ServiceKey, Option<Applied>>,
    owners: BTreeMap<ServiceKey, Owners>,
    addresses: BTreeMap<IpAddr, usize>,
    elements: Counts,
}

/// Counts `old` → `new` into `overlay` (seeded from `counts` on first touch); the keys whose
/// count went from 0 to 1 are `added`, from 1 to 0 `removed`.
fn count<K: Ord + Clone>(
    counts: &BTreeMap<K, usize>,
    overlay: &mut BTreeMap<K, usize>,
    old: &BTreeSet<K>,
    new: &BTreeSet<K>,
    added: &mut Vec<K>,
    removed: &mut Vec<K>,
) {
    for k in new.difference(old) {
        let n = overlay
            .entry(k.clone())
            .or_insert_with(|| counts.get(k).copied().unwrap_or(0));
        *n += 1;
        if *n == 1 {
            added.push(k.clone());
        }
    }
    for k in old.difference(new) {
        let n = overlay
            .entry(k.clone())
            .or_insert_with(|| counts.get(k).copied().unwrap_or(0));
        if *n > 0 {
            *n -= 1;
            if *n == 0 {
                removed.push(k.clone());
            }
        }
    }
}

/// `count` for elements, keyed by their ids; the texts of the elements whose count went from
/// 0 to 1 are `added`, from 1 to 0 `removed`.
pub fn count_elements(
    counts: &Counts,
    overlay: &mut Counts,
    old: &BTreeSet<Element>,
    new: &BTreeSet<Element>,
    added: &mut Vec<Element>,
    removed: &mut Vec<Element>,
) {
    for e in new.difference(old) {
        let id = id_of(e);
        let n = overlay
            .entry(id)
            .or_insert_with(|| counts.get(&id).copied().unwrap_or(0));
        *n += 1;
        if *n == 1 {
            added.push(e.clone());
        }
    }
    for e in old.difference(new) {
        let id = id_of(e);
        let n = overlay
            .entry(id)
            .or_insert_with(|| counts.get(&id).copied().unwrap_or(0));
        if *n > 0 {
            *n -= 1;
            if *n == 0 {
                removed.push(e.clone());
            }
        }
    }
}

/// Applies an overlay of element counts (0: the element is gone).
pub fn commit_elements(counts: &mut Counts, overlay: Counts) {
    for (id, n) in overlay {
        if n == 0 {
            counts.remove(&id);
        } else {
            counts.insert(id, n);
        }
    }
}

impl Mirror {
    /// The changes that replace the applied state of each port in `ports` by the state its new
    /// owner compiles to (None: the port is gone), and the delta that brings the mirror there
    /// once they are applied (`commit`). Compiles the old and new state of each port whose
    /// owner changed, and the state of another owner of a server they touch.
    pub fn diff_ports(
        &self,
        ports: BTreeMap<ServicePortName, Option<Owner>>,
        settings: &IpvsSettings,
    ) -> (Changes, Delta) {
        let mut out = Changes::default();
        let mut delta = Delta::default();
        let mut touched: BTreeSet<ServiceKey> = BTreeSet::new();
        // The new state of the ports compiled here.
        let mut states: BTreeMap<ServicePortName, PortState> = BTreeMap::new();
        for (name, new) in ports {
            let old = self.ports.get(&name);
            if let (Some(o), Some(n)) = (old, &new)
                && o.same(n)
            {
                delta.ports.insert(name, new);
                continue;
            }
            if let Some(n) = &new {
                delta.facts = Some(n.facts.clone());
            }
            let old = old.map(|o| o.compile(settings)).unwrap_or_default();
            let new_state = new
                .as_ref()
                .map(|o| o.compile(settings))
                .unwrap_or_default();
            for key in old.servers.keys().chain(new_state.servers.keys()) {
                touched.insert(*key);
                let owners = delta
                    .owners
                    .entry(*key)
                    .or_insert_with(|| self.owners.get(key).cloned().unwrap_or_default());
                if new_state.servers.contains_key(key) {
                    owners.insert(name.clone());
                } else {
                    owners.remove(&name);
                }
            }
            count(
                &self.addresses,
                &mut delta.addresses,
                &old.addresses,
                &new_state.addresses,
                &mut out.bind,
                &mut out.unbind,
            );
            count_elements(
                &self.elements,
                &mut delta.elements,
                &old.elements,
                &new_state.elements,
                &mut out.add_elements,
                &mut out.del_elements,
            );
            states.insert(name.clone(), new_state);
            delta.ports.insert(name, new);
        }
        // An address or element given up by one port and taken by another in the same sync
        // is neither bound nor unbound.
        cancel(&mut out.bind, &mut out.unbind);
        cancel(&mut out.add_elements, &mut out.del_elements);
        for key in touched {
            // The server as its first remaining owner declares it.
            let want = delta.owners[&key]
                .first()
                .and_then(|owner| match states.get(owner) {
                    Some(s) => s.servers.get(&key).cloned(),
                    None => self
                        .ports
                        .get(owner)
                        .and_then(|o| o.compile(settings).servers.remove(&key)),
                });
            let have = self.servers.get(&key);
            diff_server(&key, have, want.as_ref(), &mut out);
            delta.servers.insert(key, after(have, want.as_ref()));
        }
        (out, delta)
    }

    /// Applies `delta` (after its changes reached the kernel).
    pub fn commit(&mut self, delta: Delta) {
        for (name, owner) in delta.ports {
            match owner {
                Some(o) => self.ports.insert(name, o),
                None => self.ports.remove(&name),
            };
        }
        if delta.facts.is_some() {
            self.facts = delta.facts;
        }
        for (key, applied) in delta.servers {
            match applied {
                Some(a) => self.servers.insert(key, a),
                None => self.servers.remove(&key),
            };
        }
        for (key, owners) in delta.owners {
            if owners.is_empty() {
                self.owners.remove(&key);
            } else {
                self.owners.insert(key, owners);
            }
        }
        commit_counts(&mut self.addresses, delta.addresses);
        commit_elements(&mut self.elements, delta.elements);
    }
}

fn commit_counts<K: Ord>(counts: &mut BTreeMap<K, usize>, overlay: BTreeMap<K, usize>) {
    for (k, n) in overlay {
        if n == 0 {
            counts.remove(&k);
        } else {
            counts.insert(k, n);
        }
    }
}

/// Drops what is both added and removed from both lists.
pub fn cancel<K: Ord + Clone>(added: &mut Vec<K>, removed: &mut Vec<K>) {
    let a: BTreeSet<K> = added.iter().cloned().collect();
    let r: BTreeSet<K> = removed.iter().cloned().collect();
    added.retain(|k| !r.contains(k));
    removed.retain(|k| !a.contains(k));
}
