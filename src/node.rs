//! Node facts: what compile and plan need to know about the machine kproxy runs on, gathered
//! before any compile so that compile stays pure.
//!
//! Invariants: `NodeFacts` is a value; gathering (`local_addresses`) is the only I/O here.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::model::NodeInfo;

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
}

impl NodeFacts {
    pub fn new(name: impl Into<String>) -> Self {
        NodeFacts { name: name.into(), ..Default::default() }
    }

    /// Takes what the Node object says (zone, InternalIPs, podCIDRs).
    pub fn with_node(mut self, node: Option<&NodeInfo>) -> Self {
        self.zone = node.and_then(|n| n.zone.clone());
        self.internal_ips = node.map(|n| n.internal_ips.clone()).unwrap_or_default();
        self.pod_cidrs = node.map(|n| n.pod_cidrs.clone()).unwrap_or_default();
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("listing local addresses over rtnetlink: {0}")]
    ListAddresses(String),
}

/// Every address configured on this host (all interfaces, both families), over rtnetlink.
pub async fn local_addresses() -> Result<Vec<IpAddr>, NodeError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| NodeError::ListAddresses(e.to_string()))?;
    let task = tokio::spawn(conn);
    let mut out = Vec::new();
    let mut stream = handle.address().get().execute();
    while let Some(msg) = stream.try_next().await.map_err(|e| NodeError::ListAddresses(e.to_string()))? {
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
