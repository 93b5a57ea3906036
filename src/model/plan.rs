//! Traffic policy, decided once per service port and IP family for every backend: which
//! addresses of the family the port is reached at, which endpoints cluster (internal) and
//! external traffic may use, the terminating fallback, topology, the verdict when nothing is
//! usable, masquerading and the normalised source ranges. Mirrors upstream kube-proxy, whose
//! per-family proxiers each see only their family's addresses and endpoints
//! (`pkg/proxy/topology.go` `CategorizeEndpoints`, `serviceport.go`'s per-family filtering).
//!
//! Invariants: `plan` is pure; backends never re-derive policy, they render a `FamilyPlan`.
//! A port has a `FamilyPlan` for exactly the families of its ClusterIPs; every address and
//! endpoint in a `FamilyPlan` is of its family (IPv4-mapped IPv6 addresses are in none);
//! an address is in at most one of a `FamilyPlan`'s address lists (`not_in`);
//! `Targets::Endpoints` is never empty, holds each (ip, port) once, and is sorted by (ip, port).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::{Endpoint, IpFamily, ServicePort, TrafficPolicy};
use crate::node::NodeFacts;

/// One endpoint a packet can be sent to: all a backend needs of it (its conditions, node and
/// hints were used by the plan). 20 bytes, no heap: plans hold two or three lists of them per
/// port, so they must not copy whole `Endpoint`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
}

impl From<&Endpoint> for Target {
    fn from(e: &Endpoint) -> Target {
        Target {
            ip: e.ip,
            port: e.port,
        }
    }
}

/// Where one class of traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "verdict", content = "endpoints")]
pub enum Targets {
    /// Load-balance over these endpoints (never empty, sorted by (ip, port)).
    Endpoints(Vec<Target>),
    /// The Service has no usable endpoints at all: reject ("connection refused").
    Reject,
    /// Local policy without local endpoints: drop.
    Drop,
}

/// What every backend needs to program one service port: one `FamilyPlan` per IP family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// One per family of the port's ClusterIPs, IPv4 first.
    pub families: Vec<FamilyPlan>,
    /// Ready endpoints on this node, counted by distinct IP (both families), as upstream's
    /// `LocalReadyEndpoints` feeds `localEndpoints` of the healthCheckNodePort answer.
    /// Serving-terminating endpoints are not counted even when the terminating fallback uses
    /// them, so the health check fails on a node that is draining. Upstream counts distinct IPs
    /// over all ports of the Service.
    pub local_endpoints: usize,
    /// What the port lost to older Services (`claims`): it is planned without those.
    pub conflicts: Vec<claims::Conflict>,
}

/// Everything a backend renders for one service port in one IP family. Addresses and endpoints
/// of other families are not here: a backend never filters by family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyPlan {
    pub family: IpFamily,
    /// The port's ClusterIPs of this family (at least one).
    pub cluster_ips: Vec<IpAddr>,
    /// Its externalIPs of this family, but for its ClusterIPs and LoadBalancer IPs (`not_in`).
    pub external_ips: Vec<IpAddr>,
    /// Its LoadBalancer ingress IPs of this family, but for its ClusterIPs.
    pub load_balancer_ips: Vec<IpAddr>,
    /// Its NodePort: listening on the node's NodePort addresses of this family.
    pub node_port: Option<u16>,
    /// Traffic to the ClusterIPs (internalTrafficPolicy), over this family's endpoints.
    pub internal: Targets,
    /// Traffic to the NodePort, externalIPs and LoadBalancer IPs (externalTrafficPolicy); None
    /// when the port has none of them in this family.
    pub external: Option<Targets>,
    /// With externalTrafficPolicy Local (and external access), traffic to external destinations
    /// that comes from a pod or from the node itself short-circuits to these cluster-wide
    /// (topology-filtered) targets, whatever internalTrafficPolicy says, as upstream's EXT chain
    /// does. Upstream masquerades the host-originated part of it (source address is local), not
    /// the pod-originated part. None when externalTrafficPolicy is Cluster or there is no
    /// external access.
    pub external_from_local: Option<Targets>,
    /// External traffic must be masqueraded (externalTrafficPolicy Cluster with external access).
    pub masquerade_external: bool,
    /// Some when loadBalancerSourceRanges restrict the LoadBalancer IPs: the ranges of this
    /// family, host bits cleared, each once, none inside another, sorted (an interval set takes
    /// them as they are). Empty when the Service's ranges are all of the other family: then no
    /// source is admitted here (kproxy fails closed; upstream would leave this family open).
    pub source_ranges: Option<Vec<IpNet>>,
}

impl Plan {
    pub fn family(&self, family: IpFamily) -> Option<&FamilyPlan> {
        self.families.iter().find(|f| f.family == family)
    }

    /// Some family drops internal traffic (Local policy, no local endpoint).
    pub fn drops_internal(&self) -> bool {
        self.families.iter().any(|f| f.internal == Targets::Drop)
    }

    /// The port lost its healthCheckNodePort to another Service.
    pub fn lost_health_check(&self) -> bool {
        self.conflicts
            .iter()
            .any(|c| matches!(c.claim, claims::Claim::HealthCheckNodePort { .. }))
    }

    /// Some family drops external traffic (Local policy, no local endpoint).
    pub fn drops_external(&self) -> bool {
        self.families
            .iter()
            .any(|f| f.external == Some(Targets::Drop))
    }
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
    let endpoints = sorted_unique(endpoints);
    let local_endpoints = local_ready_ips(&endpoints, &node.name);
    let (v4, v6): (Vec<Endpoint>, Vec<Endpoint>) =
        endpoints.into_iter().partition(|e| e.ip.is_ipv4());
    let served = |f: IpFamily| !in_family(&port.cluster_ips, f).is_empty();
    // Sized exactly: collecting a filter reserves four plans (~700 bytes a port, 5 MiB at 10k).
    let n = [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .filter(|f| served(*f))
        .count();
    let mut families = Vec::with_capacity(n);
    for (f, eps) in [(IpFamily::V4, v4), (IpFamily::V6, v6)] {
        if served(f) {
            families.push(family_plan(port, &eps, node, f));
        }
    }
    Plan {
        families,
        local_endpoints,
        conflicts: Vec::new(),
    }
}

/// `plan` for `port` without what it `lost` to other Services (`claims::Claims::lost`).
pub fn plan_claimed(
    port: &ServicePort,
    endpoints: &[Endpoint],
    node: &NodeFacts,
    lost: Vec<claims::Conflict>,
) -> Plan {
    if lost.is_empty() {
        return plan(port, endpoints, node);
    }
    let mut p = plan(&claims::without(port, &lost), endpoints, node);
    p.conflicts = lost;
    p
}

/// The addresses of `ips` in `family`; an IPv4-mapped IPv6 address is in neither (no packet
/// ever reaches a node at one).
pub fn in_family(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    ips.iter()
        .filter(|ip| match ip {
            IpAddr::V4(_) => family == IpFamily::V4,
            IpAddr::V6(v6) => family == IpFamily::V6 && v6.to_ipv4_mapped().is_none(),
        })
        .copied()
        .collect::<Vec<_>>()
        .into_boxed_slice()
        // Plans hold these: exactly sized, not the four a filter's collect reserves.
        .into_vec()
}

/// `ips` without those in any of `taken`. One address of a port is planned once: an
/// externalIP or LoadBalancer IP that is also a ClusterIP of the port is reached as the
/// ClusterIP (upstream's iptables rules match the ClusterIP first), and an externalIP that is
/// also a LoadBalancer IP as the LoadBalancer IP, behind its source ranges (upstream filters
/// them by destination, whichever rule DNATs). Listed twice, it would get two verdicts, and
/// each backend would pick another.
fn not_in(ips: Vec<IpAddr>, taken: &[&[IpAddr]]) -> Vec<IpAddr> {
    let is_taken = |ip: &IpAddr| taken.iter().any(|t| t.contains(ip));
    if !ips.iter().any(is_taken) {
        return ips;
    }
    let kept = ips.into_iter().filter(|ip| !is_taken(ip));
    // Exactly sized, as `in_family`'s.
    kept.collect::<Box<[IpAddr]>>().into_vec()
}

/// `ranges` of `family`, host bits cleared, each once, none inside another, sorted.
pub fn normalise_ranges(ranges: &[IpNet], family: IpFamily) -> Vec<IpNet> {
    let mine: BTreeSet<IpNet> = ranges
        .iter()
        .filter(|r| IpFamily::of(&r.addr()) == family)
        .map(|r| r.trunc())
        .collect();
    // Prefixes either nest or are disjoint: keep those no other one contains.
    mine.iter()
        .filter(|r| !mine.iter().any(|o| o != *r && o.contains(*r)))
        .copied()
        .collect()
}

/// The plan of one family, from that family's endpoints (sorted, unique) alone.
fn family_plan(
    port: &ServicePort,
    endpoints: &[Endpoint],
    node: &NodeFacts,
    family: IpFamily,
) -> FamilyPlan {
    let zone = node.zone.as_deref().unwrap_or("");
    let c = categorize(endpoints, &node.name, zone);
    let cluster_ips = in_family(&port.cluster_ips, family);
    let load_balancer_ips = not_in(in_family(&port.load_balancer_ips, family), &[&cluster_ips]);
    let taken = [&cluster_ips[..], &load_balancer_ips];
    let external_ips = not_in(in_family(&port.external_ips, family), &taken);

    let local_policy = |policy| policy == TrafficPolicy::Local;
    let internal = if local_policy(port.internal_traffic_policy) {
        targets(c.has_any, &c.local, Targets::Drop)
    } else {
        targets(c.has_any, &c.cluster, Targets::Reject)
    };
    let external_access =
        port.node_port.is_some() || !external_ips.is_empty() || !load_balancer_ips.is_empty();
    let external_local = external_access && local_policy(port.external_traffic_policy);
    let external = external_access.then(|| {
        if external_local {
            targets(c.has_any, &c.local, Targets::Drop)
        } else {
            targets(c.has_any, &c.cluster, Targets::Reject)
        }
    });
    let external_from_local =
        external_local.then(|| targets(c.has_any, &c.cluster, Targets::Reject));
    let source_ranges = (!port.load_balancer_source_ranges.is_empty())
        .then(|| normalise_ranges(&port.load_balancer_source_ranges, family));

    FamilyPlan {
        family,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        node_port: port.node_port,
        internal,
        external,
        external_from_local,
        masquerade_external: external_access && !external_local,
        source_ranges,
    }
}

/// The topology filter chosen from the ready endpoints' hints (upstream `topologyModeFromHints`,
/// with the PreferSameTrafficDistribution gate enabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// No filtering.
    Any,
    /// Only endpoints hinted for this node.
    SameNode,
    /// Only endpoints hinted for this node's zone.
    SameZone,
}

/// What upstream's `CategorizeEndpoints` returns, computed for both policies.
struct Categories<'a> {
    /// Usable endpoints for Cluster policy: ready ones that topology allows, else every
    /// serving-terminating one (topology ignored).
    cluster: Vec<&'a Endpoint>,
    /// Usable endpoints for Local policy: local ready ones, else local serving-terminating ones.
    /// Topology never applies.
    local: Vec<&'a Endpoint>,
    /// Some endpoint anywhere is ready or serving-terminating; without one, traffic is rejected.
    has_any: bool,
}

fn categorize<'a>(endpoints: &'a [Endpoint], node: &str, zone: &str) -> Categories<'a> {
    let mode = topology_mode(endpoints, node, zone);
    let mut cluster = filter(endpoints, |e| e.ready && available(e, mode, node, zone));
    if cluster.is_empty() {
        // With a ready endpoint anywhere, `mode` would have kept one, so none is ready here.
        cluster = filter(endpoints, serving_terminating);
    }

    let mut local = filter(endpoints, |e| is_local(e, node) && e.ready);
    if local.is_empty() {
        local = filter(endpoints, |e| is_local(e, node) && serving_terminating(e));
    }

    let has_any = endpoints.iter().any(|e| e.ready || serving_terminating(e));
    Categories {
        cluster,
        local,
        has_any,
    }
}

fn topology_mode(endpoints: &[Endpoint], node: &str, zone: &str) -> Topology {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let all_node_hinted = ready.iter().all(|e| !e.place.node_hints.is_empty());
    if all_node_hinted && ready.iter().any(|e| e.place.node_hints.contains(node)) {
        return Topology::SameNode;
    }
    let all_zone_hinted = ready.iter().all(|e| !e.place.zone_hints.is_empty());
    if all_zone_hinted && ready.iter().any(|e| e.place.zone_hints.contains(zone)) {
        return Topology::SameZone;
    }
    Topology::Any
}

fn available(e: &Endpoint, mode: Topology, node: &str, zone: &str) -> bool {
    match mode {
        Topology::Any => true,
        Topology::SameNode => e.place.node_hints.contains(node),
        Topology::SameZone => e.place.zone_hints.contains(zone),
    }
}

/// Upstream: `endpoint.NodeName != nil && *endpoint.NodeName == nodeName`.
fn is_local(e: &Endpoint, node: &str) -> bool {
    e.place.node_name.as_deref() == Some(node)
}

fn serving_terminating(e: &Endpoint) -> bool {
    e.serving && e.terminating
}

fn filter(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<&Endpoint> {
    endpoints.iter().filter(|e| keep(e)).collect()
}

/// `chosen` when there is something to choose from; `when_empty` when the Service has usable
/// endpoints elsewhere; Reject when it has none at all.
fn targets(has_any: bool, chosen: &[&Endpoint], when_empty: Targets) -> Targets {
    if !has_any {
        Targets::Reject
    } else if chosen.is_empty() {
        when_empty
    } else {
        Targets::Endpoints(chosen.iter().map(|e| Target::from(*e)).collect())
    }
}

/// Sorted by (ip, port), one entry per (ip, port), a ready copy preferred over a not-ready one.
fn sorted_unique(endpoints: &[Endpoint]) -> Vec<Endpoint> {
    let mut out = endpoints.to_vec();
    out.sort_by_key(|e| (e.ip, e.port, !e.ready));
    out.dedup_by(|later, first| (later.ip, later.port) == (first.ip, first.port));
    out
}

fn local_ready_ips(endpoints: &[Endpoint], node: &str) -> usize {
    local_ready(endpoints.iter(), node).len()
}

/// The distinct IPs of ready endpoints on `node` (upstream's `LocalReadyEndpoints`); pass the
/// endpoints of every port of a Service to get the count its healthCheckNodePort reports.
pub fn local_ready<'a>(
    endpoints: impl Iterator<Item = &'a Endpoint>,
    node: &str,
) -> BTreeSet<IpAddr> {
    endpoints
        .filter(|e| e.ready && is_local(e, node))
        .map(|e| e.ip)
        .collect()
}

pub mod claims;
#[cfg(test)]
mod claims_tests;
#[cfg(test)]
mod family_tests;

#[cfg(test)]
mod tests;
