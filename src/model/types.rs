//! The model's value types: what a validated Service, EndpointSlice, endpoint and Node look like
//! once Kubernetes' optional fields are resolved to their defaults.
//!
//! Invariants: plain data with `Eq`, so "did this update change anything" is `==`; `Serialize` is
//! for `/debug/state` only and its field names are part of that endpoint's contract.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Serialize;

pub use super::place::Place;

/// A namespaced object's key, displayed as `namespace/name`. One shared allocation however many
/// indexes hold it: cloning it is a reference count. Its fields read through `Deref`; equality,
/// order and hashing are those of the fields.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NamespacedName(Arc<NameKey>);

/// The fields of a `NamespacedName`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct NameKey {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamespacedName(Arc::new(NameKey {
            namespace: namespace.into(),
            name: name.into(),
        }))
    }
}

impl std::ops::Deref for NamespacedName {
    type Target = NameKey;
    fn deref(&self) -> &NameKey {
        &self.0
    }
}

impl fmt::Debug for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespacedName")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The lower-case name nft, iptables and ipvsadm spell it with ("tcp", "udp", "sctp").
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ();
    /// Exactly the API server's spelling: `TCP`, `UDP`, `SCTP`.
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(()),
        }
    }
}

/// One port of one Service: `namespace/name:portname/PROTO`. The unit of change tracking,
/// planning and partial sync.
///
/// One shared allocation however many places hold it (plans, claims, the backends' mirrors,
/// the change tracker): cloning it is a reference count, not three strings. Its fields read
/// through `Deref`; equality, order and hashing are those of the fields.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServicePortName(Arc<PortKey>);

/// The fields of a `ServicePortName`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortKey {
    pub service: NamespacedName,
    /// The port's name; empty for a Service's single unnamed port.
    pub port: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn new(service: NamespacedName, port: impl Into<String>, protocol: Protocol) -> Self {
        ServicePortName(Arc::new(PortKey {
            service,
            port: port.into(),
            protocol,
        }))
    }
}

impl std::ops::Deref for ServicePortName {
    type Target = PortKey;
    fn deref(&self) -> &PortKey {
        &self.0
    }
}

impl fmt::Debug for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServicePortName")
            .field("service", &self.service)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.service, self.port, self.protocol)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TrafficPolicy {
    Cluster,
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// Kubernetes' name of the family (`ipFamilies`, upstream's `ip_family` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    pub fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// Everything a backend needs to know about one service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub service_type: ServiceType,
    /// ClusterIPs of both families (primary first); empty never happens for a stored port.
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// ClientIP session affinity and its timeout in seconds (default 10800); None = no affinity.
    pub affinity_timeout_seconds: Option<u32>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    pub health_check_node_port: Option<u16>,
    /// `spec.trafficDistribution` as written (PreferClose, PreferSameZone, PreferSameNode, ...).
    pub traffic_distribution: Option<String>,
    /// The Service's `metadata.creationTimestamp`: the older of two Services that claim the same
    /// address, port and protocol wins (`plan::claims`).
    #[serde(skip)]
    pub created: Option<SystemTime>,
}

impl ServicePort {
    /// A plain ClusterIP service port with upstream's defaults (Cluster policies, no affinity);
    /// tests and benches start from it and set what they need.
    pub fn cluster_ip(name: ServicePortName, cluster_ip: IpAddr, port: u16) -> ServicePort {
        ServicePort {
            name,
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![cluster_ip],
            port,
            node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            affinity_timeout_seconds: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            traffic_distribution: None,
            created: None,
        }
    }

    /// Reachable from outside the cluster: a NodePort, externalIPs or LoadBalancer IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// externalTrafficPolicy Local, on a Service that has external traffic at all.
    pub fn external_policy_local(&self) -> bool {
        self.externally_accessible() && self.external_traffic_policy == TrafficPolicy::Local
    }

    pub fn internal_policy_local(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
    }
}

/// A validated Service: its ports, already expanded into service ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: NamespacedName,
    pub ports: Vec<ServicePort>,
    /// `spec.selector` is set; selector-less Services get their slices mirrored from v1 Endpoints.
    pub has_selector: bool,
    /// The manifest file that defines it (`--manifests`); None from the API.
    #[serde(skip)]
    pub origin: Option<std::sync::Arc<str>>,
}

/// A validated EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slice {
    /// The Service it belongs to (label `kubernetes.io/service-name`, same namespace).
    pub service: NamespacedName,
    pub family: IpFamily,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
    /// Annotation `endpoints.kubernetes.io/last-change-trigger-time`.
    #[serde(skip)]
    pub trigger_time: Option<SystemTime>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlicePort {
    /// Empty when unnamed; matched against the service port's name.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice, conditions resolved as upstream: unset ready means ready, unset
/// serving means the value of ready, unset terminating means false.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SliceEndpoint {
    /// The first address (upstream uses only the first).
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Node, zone and hints, shared with every endpoint that has the same.
    #[serde(flatten)]
    pub place: Arc<Place>,
}

impl SliceEndpoint {
    pub fn at_port(&self, port: u16) -> Endpoint {
        Endpoint {
            ip: self.ip,
            port,
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            place: self.place.clone(),
        }
    }
}

/// An endpoint of one service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Node, zone and hints, shared (see `Place`).
    #[serde(flatten)]
    pub place: Arc<Place>,
}

/// What kproxy knows of its own Node object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    /// Label `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// `status.addresses` of type InternalIP (for `--nodeport-addresses primary`).
    pub internal_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// Being deleted, or tainted `ToBeDeletedByClusterAutoscaler` (KEP-3836): `/healthz` then
    /// answers 503 with `"nodeEligible": false`, so load balancers drain the node first. Not a
    /// fact any plan depends on (`same_facts`).
    pub draining: bool,
}

impl NodeInfo {
    /// Whether the two differ only in what no plan reads (`draining`).
    pub fn same_facts(&self, other: &NodeInfo) -> bool {
        self.name == other.name
            && self.zone == other.zone
            && self.internal_ips == other.internal_ips
            && self.pod_cidrs == other.pod_cidrs
    }
}
