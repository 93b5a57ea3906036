//! Which conntrack flows are stale (pure): a UDP or SCTP flow whose original destination is a
//! service IP and port (ClusterIP, externalIP, LoadBalancer IP) or a NodePort on one of this
//! node's addresses, and whose reply source is not one of that service port's current serving
//! endpoints (address and target port). Such a flow would keep sending a client to an endpoint
//! that left, or around kproxy's rules altogether (a flow made before they existed).
//!
//! Invariants: only UDP and SCTP (TCP has teardown; kube-proxy leaves it alone too); a flow to an
//! address or port no Service uses is never stale; a flow whose reply comes from a serving
//! endpoint is never stale, whatever the traffic policy, topology or terminating state (as
//! upstream: a change of policy must not cut existing flows); a service port with no serving
//! endpoint makes every flow to it stale. Two Services claiming one VIP port share one set.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::backends::Plans;
use crate::model::Protocol;
use crate::node::NodeFacts;

/// One conntrack flow, as far as reconciliation looks at it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub protocol: Protocol,
    /// Original direction: the client, and where it sent the first packet.
    pub orig_src: SocketAddr,
    pub orig_dst: SocketAddr,
    /// Reply direction's source: who answers (the endpoint, after DNAT).
    pub reply_src: SocketAddr,
}

type Serving = HashSet<SocketAddr>;

/// The serving endpoints of every UDP and SCTP service IP port and NodePort.
#[derive(Debug, Default)]
pub struct Index {
    vips: HashMap<(Protocol, SocketAddr), Serving>,
    node_ports: HashMap<(Protocol, u16), Serving>,
    node_addresses: HashSet<IpAddr>,
}

impl Index {
    /// From the plans of every service port and this node's addresses.
    pub fn new(plans: &Plans, node: &NodeFacts) -> Index {
        let mut index = Index {
            node_addresses: node.local_addresses.iter().copied().collect(),
            ..Index::default()
        };
        for planned in plans.values() {
            let port = &planned.port;
            let protocol = port.name.protocol;
            if protocol == Protocol::Tcp {
                continue;
            }
            let serving: Serving = planned
                .endpoints
                .iter()
                .filter(|e| e.serving)
                .map(|e| SocketAddr::new(e.ip, e.port))
                .collect();
            // The addresses the plan serves it at (not those lost to another Service).
            for fp in &planned.plan.families {
                let vips = fp
                    .cluster_ips
                    .iter()
                    .chain(&fp.external_ips)
                    .chain(&fp.load_balancer_ips);
                for vip in vips {
                    let key = (protocol, SocketAddr::new(*vip, port.port));
                    index.vips.entry(key).or_default().extend(&serving);
                }
                if let Some(np) = fp.node_port {
                    let set = index.node_ports.entry((protocol, np)).or_default();
                    set.extend(&serving);
                }
            }
        }
        index
    }

    /// Whether `flow` must be deleted (see the module invariants).
    pub fn is_stale(&self, flow: &Flow) -> bool {
        if flow.protocol == Protocol::Tcp {
            return false;
        }
        let by_vip = self.vips.get(&(flow.protocol, flow.orig_dst));
        let by_node_port = || {
            self.node_addresses
                .contains(&flow.orig_dst.ip())
                .then(|| self.node_ports.get(&(flow.protocol, flow.orig_dst.port())))
                .flatten()
        };
        match by_vip.or_else(by_node_port) {
            Some(serving) => !serving.contains(&flow.reply_src),
            None => false,
        }
    }

    /// Whether no UDP or SCTP service port exists (then there is nothing to reconcile).
    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.node_ports.is_empty()
    }

    /// The protocols that have at least one service port (what a dump must cover).
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut p: Vec<Protocol> = self
            .vips
            .keys()
            .map(|(p, _)| *p)
            .chain(self.node_ports.keys().map(|(p, _)| *p))
            .collect();
        p.sort();
        p.dedup();
        p
    }
}

#[cfg(test)]
#[path = "stale_tests.rs"]
mod tests;
