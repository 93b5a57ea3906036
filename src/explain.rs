//! `kproxy explain`: what kproxy does with one packet and why, answered from the plans (which
//! Service and port it belongs to, the verdict, the endpoints it can reach with their chances,
//! masquerading, affinity and the reason in words), then checked against a ruleset by the
//! mode's packet tracer (`trace`): the one kproxy compiles, and with `--live` the kernel's.
//!
//! Invariants: `explain` is pure and reads only plans and node facts, never a backend's
//! compile, so a tracer that disagrees shows a real difference; it follows README's "The path
//! of a packet" per mode, as the fake kernels' oracles do (IPVS mode sends eTP=Local traffic
//! from pods and the node to local endpoints too). Chances are equal shares: every backend
//! load-balances evenly over the plan's endpoints.

pub mod args;
mod live_iptables;
pub mod live_nft;
pub mod packet;
mod reasons;
pub mod text;
pub mod trace;
#[cfg(test)]
mod trace_tests;

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::backends::{BackendConfig, Plans, ProxyMode};
use crate::model::IpFamily;
use crate::model::plan::{FamilyPlan, Planned, Targets};
use crate::node::NodeFacts;
pub use packet::Packet;
use reasons::{lost_to, no_endpoints, policy_words, reachable, unmatched, words};

/// What besides the plans decides a packet's fate.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub mode: ProxyMode,
    pub node: &'a NodeFacts,
    /// What the backend is asked to program besides the plans: `--masquerade-all`, iptables
    /// mode's localhost NodePorts, IPVS mode's scheduler; with --live, the iptables variant and
    /// nftables transport that read the kernel.
    pub config: &'a BackendConfig,
}

/// Which of a Service's addresses the packet hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancerIp,
}

impl AddressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::ClusterIp => "ClusterIP",
            AddressKind::NodePort => "NodePort",
            AddressKind::ExternalIp => "externalIP",
            AddressKind::LoadBalancerIp => "LoadBalancer IP",
        }
    }
}

/// What happens to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Dnat,
    Reject,
    Drop,
    NotAService,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Dnat => "dnat",
            Verdict::Reject => "reject",
            Verdict::Drop => "drop",
            Verdict::NotAService => "not-a-service",
        }
    }
}

/// ClientIP session affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Affinity {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub timeout_seconds: u32,
}

/// The answer about one packet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub packet: String,
    pub mode: &'static str,
    /// `namespace/name`, when the packet belongs to a Service.
    pub service: Option<String>,
    /// The port's name, or its number when it has none.
    pub port: Option<String>,
    pub address_kind: Option<AddressKind>,
    pub verdict: Verdict,
    /// Every endpoint the packet can reach, sorted (`ip:port` strings in JSON).
    pub endpoints: Vec<SocketAddr>,
    /// Each endpoint's chance, in the order of `endpoints`.
    pub chances: Vec<f64>,
    pub masquerade: bool,
    pub affinity: Option<Affinity>,
    pub reason: String,
    /// The compiled ruleset's verdict for the packet, by the mode's tracer: "agrees" or
    /// "differs: …"; absent when not traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<String>,
    /// The same, for the kernel's ruleset (`--live`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

impl Explanation {
    fn new(p: &Packet, f: &Facts, verdict: Verdict, reason: String) -> Explanation {
        Explanation {
            packet: p.to_string(),
            mode: f.mode.as_str(),
            service: None,
            port: None,
            address_kind: None,
            verdict,
            endpoints: Vec::new(),
            chances: Vec::new(),
            masquerade: false,
            affinity: None,
            reason,
            rules: None,
            kernel: None,
        }
    }
}

/// Where the packet comes from, as the rules tell sources apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// This node itself (one of its addresses, or loopback).
    Node,
    /// One of this node's pods (detect-local).
    Pod,
    Other,
}

/// Whether `src` is this node's own: loopback or one of its addresses (the tracers' "sent by
/// the node", too).
pub(crate) fn from_node(src: &IpAddr, node: &NodeFacts) -> bool {
    src.is_loopback() || node.local_addresses.contains(src)
}

fn source(p: &Packet, node: &NodeFacts) -> Source {
    // By address, as the rules match: a node address inside the pods' CIDR counts as a pod.
    if node.local_traffic.matches(&p.src, "") {
        Source::Pod
    } else if from_node(&p.src, node) {
        Source::Node
    } else {
        Source::Other
    }
}

/// What kproxy does with `p`, from the plans alone.
pub fn explain(plans: &Plans, f: &Facts, p: &Packet) -> Explanation {
    let family = p.family();
    let matching = |planned: &&std::sync::Arc<Planned>| planned.port.name.protocol == p.proto;
    let on_vip = plans
        .values()
        .filter(matching)
        .filter(|pl| pl.port.port == p.dport)
        .find_map(|pl| {
            let fp = pl.plan.family(family)?;
            let kind = if fp.cluster_ips.contains(&p.dst) {
                AddressKind::ClusterIp
            } else if fp.load_balancer_ips.contains(&p.dst) {
                AddressKind::LoadBalancerIp
            } else if fp.external_ips.contains(&p.dst) && fp.external.is_some() {
                AddressKind::ExternalIp
            } else {
                return None;
            };
            Some((pl, fp, kind))
        });
    let on_node_port = || {
        let localhost = f.mode == ProxyMode::Iptables
            && family == IpFamily::V4
            && f.config.localhost_nodeports
            && p.dst.is_loopback();
        // IPVS mode serves no NodePort on loopback or IPv6 link-local addresses.
        let ipvs_skips =
            f.mode == ProxyMode::Ipvs && !crate::backends::ipvs::compile::serves_nodeports(&p.dst);
        if (!f.node.nodeport_ips.contains(&p.dst) && !localhost) || ipvs_skips {
            return None;
        }
        plans.values().filter(matching).find_map(|pl| {
            let fp = pl.plan.family(family)?;
            (fp.node_port == Some(p.dport) && fp.external.is_some()).then_some((
                pl,
                fp,
                AddressKind::NodePort,
            ))
        })
    };
    match on_vip.or_else(on_node_port) {
        Some((pl, fp, kind)) => of_service(plans, pl, fp, kind, f, p),
        None => unmatched(plans, f, p),
    }
}

/// Whether a service port's rules can touch the packet, in any mode: one of its addresses of
/// the packet's family is the destination (whatever its port and protocol: the rules of a
/// ClusterIP also refuse its undefined ports), or its NodePort is the packet's port. The rules
/// compiled for the other ports are keyed by addresses or NodePorts the packet does not carry,
/// so `explain` compiles and traces only these: at 10,000 Services it costs what one costs.
pub fn concerns(planned: &Planned, p: &Packet) -> bool {
    planned.plan.family(p.family()).is_some_and(|fp| {
        fp.node_port == Some(p.dport)
            || [&fp.cluster_ips, &fp.external_ips, &fp.load_balancer_ips]
                .iter()
                .any(|addrs| addrs.contains(&p.dst))
    })
}

fn of_service(
    plans: &Plans,
    pl: &Planned,
    fp: &FamilyPlan,
    kind: AddressKind,
    f: &Facts,
    p: &Packet,
) -> Explanation {
    let port = &pl.port;
    let src = source(p, f.node);
    let mut out = Explanation::new(p, f, Verdict::NotAService, String::new());
    out.service = Some(port.name.service.to_string());
    out.port = Some(if port.name.port.is_empty() {
        port.port.to_string()
    } else {
        port.name.port.clone()
    });
    out.address_kind = Some(kind);
    out.affinity = port.affinity_timeout_seconds.map(|t| Affinity {
        kind: "ClientIP",
        timeout_seconds: t,
    });
    let (targets, masquerade, why) = match (kind, &fp.external) {
        (AddressKind::ClusterIp, _) | (_, None) => {
            let masq = f.config.masquerade_all
                || (f.node.local_traffic.detects(fp.family) && src != Source::Pod);
            let policy = port.internal_traffic_policy;
            (
                &fp.internal,
                masq,
                policy_words("internalTrafficPolicy", policy),
            )
        }
        (_, Some(ext)) => {
            let ranges = fp.source_ranges.as_ref();
            let admitted = |r: &Vec<ipnet::IpNet>| r.iter().any(|r| r.contains(&p.src));
            if kind == AddressKind::LoadBalancerIp && ranges.is_some_and(|r| !admitted(r)) {
                out.verdict = Verdict::Drop;
                out.reason = format!(
                    "source {} is outside the Service's loadBalancerSourceRanges ({})",
                    p.src,
                    words(ranges.into_iter().flatten())
                );
                return out;
            }
            let policy = policy_words("externalTrafficPolicy", port.external_traffic_policy);
            match (&fp.external_from_local, src, f.mode) {
                (Some(local), Source::Pod, m) if m != ProxyMode::Ipvs => (
                    local,
                    fp.masquerade_external,
                    "externalTrafficPolicy Local, but the source is a pod on this node, so it may use every endpoint".to_string(),
                ),
                (Some(local), Source::Node, m) if m != ProxyMode::Ipvs => (
                    local,
                    true,
                    "externalTrafficPolicy Local, but the source is this node, so it may use every endpoint (masqueraded)".to_string(),
                ),
                _ => (ext, fp.masquerade_external, policy),
            }
        }
    };
    match targets {
        Targets::Endpoints(eps) => {
            out.verdict = Verdict::Dnat;
            out.masquerade = masquerade;
            let share = 1.0 / eps.len() as f64;
            out.endpoints = eps.iter().map(|e| SocketAddr::new(e.ip, e.port)).collect();
            out.chances = vec![share; eps.len()];
            out.reason = reachable(pl, fp.family, eps.len(), &why, f);
        }
        Targets::Reject => {
            out.verdict = Verdict::Reject;
            out.reason = no_endpoints(pl, fp.family);
        }
        Targets::Drop => {
            out.verdict = Verdict::Drop;
            let policy = if std::ptr::eq(targets, &fp.internal) {
                "internalTrafficPolicy"
            } else {
                "externalTrafficPolicy"
            };
            out.reason = format!("{policy} Local and no local endpoint");
        }
    }
    if let Some(loser) = lost_to(plans, pl, kind, p) {
        out.reason.push_str(&format!(
            "; {loser} asks for the same {} and is not served there (the older Service wins)",
            kind.as_str()
        ));
    }
    out
}

/// Endpoints of a verdict from a tracer, for comparing with an explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Traced {
    pub verdict: Verdict,
    pub endpoints: Vec<SocketAddr>,
    /// None when the tracer does not follow masquerading.
    pub masquerade: Option<bool>,
}

/// "agrees", or "differs: …" saying how `t` differs from `e`.
pub fn compare(e: &Explanation, t: &Traced) -> String {
    let mut diffs = Vec::new();
    if t.verdict != e.verdict {
        diffs.push(format!(
            "verdict {} where the plan says {}",
            t.verdict.as_str(),
            e.verdict.as_str()
        ));
    } else if t.endpoints != e.endpoints {
        let want = &e.endpoints;
        let missing: Vec<_> = want.iter().filter(|a| !t.endpoints.contains(a)).collect();
        let extra: Vec<_> = t.endpoints.iter().filter(|a| !want.contains(a)).collect();
        diffs.push(format!(
            "endpoints missing [{}], unexpected [{}]",
            words(missing),
            words(extra)
        ));
    }
    if e.verdict == Verdict::Dnat
        && t.verdict == Verdict::Dnat
        && let Some(m) = t.masquerade
        && m != e.masquerade
    {
        diffs.push(format!(
            "masquerade {m} where the plan says {}",
            e.masquerade
        ));
    }
    if diffs.is_empty() {
        "agrees".to_string()
    } else {
        format!("differs: {}", diffs.join("; "))
    }
}

#[cfg(test)]
mod tests;
