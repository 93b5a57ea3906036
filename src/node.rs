//! Node facts: what compile and plan need to know about the machine kproxy runs on, gathered
//! before any compile so that compile stays pure.
//!
//! Invariants: `NodeFacts` is a value; gathering (`local_addresses`) is the only I/O here.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::NodeInfo;

mod local;
pub mod setup;
pub use local::{DetectLocal, LocalTraffic};

/// --nodeport-addresses: which host addresses NodePorts answer on; the keywords and CIDRs
/// combine (upstream 1.37). The default is `all`; nftables mode's configuration defaults to
/// `primary`, as upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePortAddresses {
    /// `all`: every local address (the loopback ones as the mode allows).
    pub all: bool,
    /// `primary`: the Node object's primary address of each family (its first InternalIP).
    pub primary: bool,
    /// `localhost`: 127.0.0.1 and ::1 (nftables mode: through the localhost relay; iptables
    /// mode: 127.0.0.1 with route_localnet; IPVS mode: none, as upstream).
    pub localhost: bool,
    /// Local addresses inside these CIDRs.
    pub cidrs: Vec<IpNet>,
}

impl Default for NodePortAddresses {
    fn default() -> Self {
        NodePortAddresses::all()
    }
}

impl NodePortAddresses {
    pub fn all() -> Self {
        NodePortAddresses {
            all: true,
            ..NodePortAddresses::none()
        }
    }

    pub fn primary() -> Self {
        NodePortAddresses {
            primary: true,
            ..NodePortAddresses::none()
        }
    }

    pub fn cidrs(cidrs: Vec<IpNet>) -> Self {
        NodePortAddresses {
            cidrs,
            ..NodePortAddresses::none()
        }
    }

    fn none() -> Self {
        NodePortAddresses {
            all: false,
            primary: false,
            localhost: false,
            cidrs: Vec::new(),
        }
    }

    /// The words `--nodeport-addresses` takes for this (`all`, `primary`, `localhost`, CIDRs).
    pub fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (on, word) in [
            (self.all, "all"),
            (self.primary, "primary"),
            (self.localhost, "localhost"),
        ] {
            if on {
                out.push(word.to_string());
            }
        }
        out.extend(self.cidrs.iter().map(ToString::to_string));
        out
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeFacts {
    /// This node's name (--hostname-override, else the host name).
    pub name: String,
    /// Label `topology.kubernetes.io/zone` of the Node object, once seen.
    pub zone: Option<String>,
    /// InternalIPs of the Node object (`--nodeport-addresses primary`).
    pub internal_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// Addresses configured on this host's interfaces.
    pub local_addresses: Vec<IpAddr>,
    /// Which addresses NodePorts answer on (--nodeport-addresses).
    #[serde(skip)]
    pub nodeport_addresses: NodePortAddresses,
    /// The addresses NodePorts answer on, resolved from `nodeport_addresses`.
    pub nodeport_ips: Vec<IpAddr>,
    /// --detect-local-mode and what it needs.
    #[serde(skip)]
    pub detect_local: DetectLocal,
    /// Which packets are this node's pods', resolved from `detect_local` (and podCIDRs).
    pub local_traffic: LocalTraffic,
    /// The cluster's ServiceCIDRs (every one's ranges, sorted): nftables mode drops traffic to
    /// an address in them that no Service has.
    pub service_cidrs: Vec<IpNet>,
}

impl NodeFacts {
    pub fn new(name: impl Into<String>) -> Self {
        NodeFacts {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Takes what the Node object says (zone, InternalIPs, podCIDRs).
    pub fn with_node(mut self, node: Option<&NodeInfo>) -> Self {
        self.zone = node.and_then(|n| n.zone.clone());
        self.internal_ips = node.map(|n| n.internal_ips.clone()).unwrap_or_default();
        self.pod_cidrs = node.map(|n| n.pod_cidrs.clone()).unwrap_or_default();
        self.local_traffic = self.detect_local.resolve(&self.pod_cidrs);
        let want = &self.nodeport_addresses;
        let mut ips: Vec<IpAddr> = self
            .local_addresses
            .iter()
            .filter(|ip| want.all || want.cidrs.iter().any(|c| c.contains(*ip)))
            .copied()
            .collect();
        if want.primary {
            let v4 = self.internal_ips.iter().find(|ip| ip.is_ipv4());
            let v6 = self.internal_ips.iter().find(|ip| ip.is_ipv6());
            ips.extend(v4.into_iter().chain(v6));
        }
        if want.localhost {
            ips.extend([
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            ]);
        }
        ips.sort();
        ips.dedup();
        self.nodeport_ips = ips;
        self
    }
}

/// Says once what local traffic is, when it is first known and whenever it changes.
pub fn log_local_traffic(facts: &NodeFacts) {
    let mode = facts.detect_local.name();
    match (&facts.detect_local, &facts.local_traffic) {
        (DetectLocal::NodeCidr, LocalTraffic::Undetected) => tracing::warn!(
            "--detect-local-mode=NodeCIDR: Node {} has no podCIDRs (yet): no traffic is treated as its pods' until it has",
            facts.name
        ),
        (_, LocalTraffic::Undetected) => {
            tracing::info!(
                "--detect-local-mode={mode} without --cluster-cidr: no traffic is treated as pods'"
            )
        }
        (_, LocalTraffic::Cidrs(cidrs)) => {
            let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            tracing::info!("local traffic ({mode}): sources in {}", cidrs.join(", "))
        }
        (_, LocalTraffic::Interface { name, prefix }) => {
            let star = if *prefix { "*" } else { "" };
            tracing::info!("local traffic ({mode}): in through interface {name}{star}")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("listing local addresses over rtnetlink: {0}")]
    ListAddresses(String),
}

/// The dummy interface IPVS mode binds service addresses to: its addresses are not the node's.
pub const IPVS_LINK: &str = "kproxy-ipvs0";

/// Every address configured on this host (all interfaces, both families), over rtnetlink, but
/// for the service addresses IPVS mode binds to its dummy interface (they are not the node's).
pub async fn local_addresses() -> Result<Vec<IpAddr>, NodeError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NodeError::ListAddresses(e.to_string()))?;
    let task = tokio::spawn(conn);
    let dummy = handle
        .link()
        .get()
        .match_name(IPVS_LINK.to_string())
        .execute()
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|l| l.header.index);
    let mut out = Vec::new();
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| NodeError::ListAddresses(e.to_string()))?
    {
        if Some(msg.header.index) == dummy {
            continue;
        }
        for attr in msg.attributes {
            if let AddressAttribute::Address(ip) = attr {
                out.push(ip);
            }
        }
    }
    task.abort();
    out.sort();
    out.dedup();
    Ok(out)
}
