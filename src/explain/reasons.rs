//! The words of `explain`'s answers: why these endpoints (how many the Service has, ready or
//! not, and which policy or topology chose them), why none, which Service lost a contested
//! address, and what the mode does with a packet no service port takes.
//!
//! Invariants: reads only the plans and the facts, as `explain` does; every reason is one line.

use super::{AddressKind, Explanation, Facts, Packet, Verdict};
use crate::backends::{Plans, ProxyMode};
use crate::model::plan::{Planned, claims};
use crate::model::{IpFamily, TrafficPolicy};

pub(super) fn policy_words(name: &str, policy: TrafficPolicy) -> String {
    match policy {
        TrafficPolicy::Local => format!("{name} Local: endpoints on this node only"),
        TrafficPolicy::Cluster => String::new(),
    }
}

pub(super) fn words<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    all.join(", ")
}

/// Why these endpoints: how many the Service has, ready or not, and which policy chose them.
pub(super) fn reachable(pl: &Planned, family: IpFamily, n: usize, why: &str, f: &Facts) -> String {
    let of_family: Vec<_> = pl
        .endpoints
        .iter()
        .filter(|e| IpFamily::of(&e.ip) == family)
        .collect();
    let ready = of_family.iter().filter(|e| e.ready).count();
    let total = of_family.len();
    let plural = if total == 1 { "" } else { "s" };
    let mut out = format!(
        "{n} of its {total} {} endpoint{plural}, {ready} ready",
        family_word(family)
    );
    if ready == 0 {
        out.push_str("; no ready endpoint, so serving terminating ones are used");
    }
    if !why.is_empty() {
        out = format!("{why}; {out}");
    } else if n < ready {
        let by = pl
            .port
            .traffic_distribution
            .as_deref()
            .map(|d| format!("trafficDistribution {d}"))
            .unwrap_or_else(|| "topology hints".to_string());
        out.push_str(&format!("; {by} narrow them"));
    }
    let scheduler = f.config.ipvs_scheduler.as_str();
    if f.mode == ProxyMode::Ipvs && !matches!(scheduler, "" | "rr" | "wrr") {
        out.push_str(&format!(
            "; IPVS scheduler {} picks by its own rule, not evenly",
            scheduler
        ));
    }
    out
}

fn family_word(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

pub(super) fn no_endpoints(pl: &Planned, family: IpFamily) -> String {
    let of_family = pl
        .endpoints
        .iter()
        .filter(|e| IpFamily::of(&e.ip) == family)
        .count();
    match of_family {
        0 => format!("the Service has no {} endpoint", family_word(family)),
        1 => "its one endpoint is neither ready nor serving".to_string(),
        n => format!("none of its {n} endpoints is ready or serving"),
    }
}

/// Another Service that asks for what `pl`'s Service won at this address (`claims`), if any.
pub(super) fn lost_to(
    plans: &Plans,
    pl: &Planned,
    kind: AddressKind,
    p: &Packet,
) -> Option<String> {
    let wanted = match kind {
        AddressKind::NodePort => claims::Claim::NodePort {
            protocol: p.proto,
            port: p.dport,
        },
        _ => claims::Claim::Address {
            ip: p.dst,
            protocol: p.proto,
            port: p.dport,
        },
    };
    let winner = &pl.port.name.service;
    plans.values().find_map(|other| {
        let mut lost = other.plan.conflicts.iter();
        lost.any(|c| c.claim == wanted && c.winner == *winner)
            .then(|| other.port.name.service.to_string())
    })
}

/// A packet no service port takes: what the mode does with it, and the nearest miss.
pub(super) fn unmatched(plans: &Plans, f: &Facts, p: &Packet) -> Explanation {
    let family = p.family();
    let vip_of = plans.values().find_map(|pl| {
        let fp = pl.plan.family(family)?;
        fp.cluster_ips
            .contains(&p.dst)
            .then(|| pl.port.name.service.to_string())
    });
    if let Some(svc) = vip_of {
        let at = format!(
            "{} is a ClusterIP of {svc}, which has no {} port {}",
            p.dst,
            p.proto.as_str(),
            p.dport
        );
        return match f.mode {
            ProxyMode::Nftables => Explanation::new(
                p,
                f,
                Verdict::Reject,
                format!("{at}: nftables mode rejects it"),
            ),
            ProxyMode::Ipvs => Explanation::new(
                p,
                f,
                Verdict::NotAService,
                format!(
                    "{at}: the node answers it itself (ClusterIPs sit on kproxy-ipvs0), refusing it"
                ),
            ),
            ProxyMode::Iptables => Explanation::new(
                p,
                f,
                Verdict::NotAService,
                format!("{at}: it is routed on unchanged"),
            ),
        };
    }
    if f.mode == ProxyMode::Nftables
        && let Some(cidr) = f.node.service_cidrs.iter().find(|c| c.contains(&p.dst))
    {
        let why = format!(
            "{} is inside ServiceCIDR range {cidr} but no Service has it: nftables mode drops it",
            p.dst
        );
        return Explanation::new(p, f, Verdict::Drop, why);
    }
    let node_port_elsewhere = plans.values().any(|pl| {
        pl.port.name.protocol == p.proto
            && pl
                .plan
                .family(family)
                .is_some_and(|fp| fp.node_port == Some(p.dport))
    });
    let why = if node_port_elsewhere && f.node.local_addresses.contains(&p.dst) {
        format!(
            "{} is a NodePort, but {} is not one of this node's NodePort addresses ({})",
            p.dport,
            p.dst,
            words(&f.node.nodeport_ips)
        )
    } else {
        format!(
            "no Service has {} {} port {}",
            p.dst,
            p.proto.as_str(),
            p.dport
        )
    };
    Explanation::new(p, f, Verdict::NotAService, why)
}
