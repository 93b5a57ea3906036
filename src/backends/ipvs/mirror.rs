//! What IPVS mode last applied successfully, and the diff of a desired state against it: the
//! netlink messages for virtual servers and destinations, the addresses to bind and unbind, and
//! the companion set elements to add and delete. Pure.
//!
//! Invariants: `servers` is the kernel's state as kproxy left it, including destinations that
//! are draining (weight 0); addresses and elements are reference-counted over the service
//! ports that want them (a ClusterIP shared by several ports stays bound until the last one
//! goes); a removed TCP destination is drained (weight 0) instead of deleted, UDP and SCTP ones
//! are deleted at once, as upstream (expire_nodest_conn ends their flows); a destination that
//! comes back while draining gets its weight back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::compile::{Element, PortState, Server};
use super::netlink::{Cmd, DestKey, IpvsMessage, ServiceKey, VirtualServer};
use super::socket::dest_message;
use crate::model::{Protocol, ServicePortName};

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
    pub ports: BTreeMap<ServicePortName, PortState>,
    pub servers: BTreeMap<ServiceKey, Applied>,
    pub addresses: BTreeMap<IpAddr, usize>,
    pub elements: BTreeMap<Element, usize>,
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

fn count<K: Ord + Clone>(
    counts: &mut BTreeMap<K, usize>,
    old: &BTreeSet<K>,
    new: &BTreeSet<K>,
    added: &mut Vec<K>,
    removed: &mut Vec<K>,
) {
    for k in new.difference(old) {
        let n = counts.entry(k.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            added.push(k.clone());
        }
    }
    for k in old.difference(new) {
        if let Some(n) = counts.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                counts.remove(k);
                removed.push(k.clone());
            }
        }
    }
}

impl Mirror {
    /// The changes that replace the applied state of each port in `ports` by its new state
    /// (None: the port is gone), and the mirror as it will be once they are applied.
    pub fn diff_ports(
        &self,
        ports: &BTreeMap<ServicePortName, Option<PortState>>,
    ) -> (Changes, Mirror) {
        let mut next = self.clone();
        let mut out = Changes::default();
        let empty = PortState::default();
        let mut touched: BTreeMap<ServiceKey, Option<Server>> = BTreeMap::new();
        for (name, new) in ports {
            let old = next.ports.remove(name).unwrap_or_default();
            let new_ref = new.as_ref().unwrap_or(&empty);
            for key in old.servers.keys() {
                touched.entry(*key).or_insert(None);
            }
            for (key, server) in &new_ref.servers {
                touched.insert(*key, Some(server.clone()));
            }
            let (mut bind, mut unbind) = (Vec::new(), Vec::new());
            count(
                &mut next.addresses,
                &old.addresses,
                &new_ref.addresses,
                &mut bind,
                &mut unbind,
            );
            out.bind.extend(bind);
            out.unbind.extend(unbind);
            let (mut add, mut del) = (Vec::new(), Vec::new());
            count(
                &mut next.elements,
                &old.elements,
                &new_ref.elements,
                &mut add,
                &mut del,
            );
            out.add_elements.extend(add);
            out.del_elements.extend(del);
            if let Some(new) = new {
                next.ports.insert(name.clone(), new.clone());
            }
        }
        // An address or element given up by one port and taken by another in the same sync
        // is neither bound nor unbound.
        cancel(&mut out.bind, &mut out.unbind);
        cancel(&mut out.add_elements, &mut out.del_elements);
        // A server another (unchanged) port still declares is kept as that port wants it.
        for (key, want) in &mut touched {
            if want.is_none() {
                *want = next
                    .ports
                    .values()
                    .find_map(|p| p.servers.get(key).cloned());
            }
        }
        for (key, want) in &touched {
            let have = self.servers.get(key);
            diff_server(key, have, want.as_ref(), &mut out);
            match after(have, want.as_ref()) {
                Some(a) => next.servers.insert(*key, a),
                None => next.servers.remove(key),
            };
        }
        (out, next)
    }
}

fn cancel<K: Ord + Clone>(added: &mut Vec<K>, removed: &mut Vec<K>) {
    let a: BTreeSet<K> = added.iter().cloned().collect();
    let r: BTreeSet<K> = removed.iter().cloned().collect();
    added.retain(|k| !r.contains(k));
    removed.retain(|k| !a.contains(k));
}
