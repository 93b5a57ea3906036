//! Traffic policy, decided once per service port for every backend: which endpoints cluster
//! (internal) and external traffic may use, the terminating fallback, topology, and the verdict
//! when nothing is usable.
//!
//! Invariants: `plan` is pure; backends never re-derive policy, they compile a `Plan`.

use serde::Serialize;

use super::{Endpoint, ServicePort};
use crate::node::NodeFacts;

/// Where one class of traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "verdict", content = "endpoints")]
pub enum Targets {
    /// Load-balance over these endpoints (never empty).
    Endpoints(Vec<Endpoint>),
    /// The Service has no usable endpoints at all: reject ("connection refused").
    Reject,
    /// Local policy without local endpoints: drop.
    Drop,
}

/// What every backend needs to program one service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Traffic to the ClusterIPs (internalTrafficPolicy).
    pub internal: Targets,
    /// Traffic to NodePorts, externalIPs and LoadBalancer IPs (externalTrafficPolicy); None when
    /// the service port is not externally accessible.
    pub external: Option<Targets>,
    /// With externalTrafficPolicy Local, traffic to external destinations that comes from a pod or
    /// from the node itself short-circuits to these (cluster-wide) targets, as upstream.
    pub external_from_local: Option<Targets>,
    /// External traffic must be masqueraded (externalTrafficPolicy Cluster).
    pub masquerade_external: bool,
    /// Ready (or serving-terminating fallback) endpoints on this node, for healthCheckNodePort.
    pub local_endpoints: usize,
}

/// A service port together with its plan: the unit backends compile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub port: ServicePort,
    /// Every endpoint of the port as the slices list it (ready or not), for introspection.
    pub endpoints: Vec<Endpoint>,
    pub plan: Plan,
}

/// Decides the plan for one service port given its endpoints and this node's facts.
pub fn plan(port: &ServicePort, endpoints: &[Endpoint], node: &NodeFacts) -> Plan {
    let _ = (port, endpoints, node);
    todo!("plan")
}
