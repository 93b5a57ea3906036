//! Compiles the plans into the desired nftables state: for each family, the elements of every
//! named set and map, plus the per-count and per-timeout chains the elements point to.
//!
//! Invariants: pure (no I/O); the skeleton never depends on the Services, so a change to one
//! service port changes only elements (and, rarely, adds an `lb-N` / `affinity-T` chain when a
//! count or timeout appears for the first time); `render` is deterministic (everything is kept in
//! ordered maps) and its output is accepted by `nft -c -f`. The dispatch elements and
//! `firewall-ports` name their service port in a comment (README.md, "Comments").

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::skeleton;
use super::transaction::commented;
use crate::backends::{BackendConfig, Plans, comment};
use crate::model::plan::{FamilyPlan, Planned, Targets};
use crate::model::{IpFamily, Protocol};
use crate::node::{LocalTraffic, NodeFacts};

pub use super::render::render;

/// Element text of one set or map: key -> value ("" for a plain set). The elements that name
/// their service port carry its comment in front of the value (`transaction::commented`).
pub type Elements = BTreeMap<String, String>;

/// The desired state of one family's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyState {
    /// Set or map name (from `skeleton::SETS`) -> its elements.
    pub sets: BTreeMap<&'static str, Elements>,
    /// `(family prefix, N)` for every `<prefix>-N` chain some element jumps to.
    pub lb_chains: BTreeSet<(&'static str, usize)>,
    /// `(family prefix, T)` for every `<prefix>-T` affinity chain (`affinity`, `np-affinity`;
    /// T in seconds).
    pub affinity_timeouts: BTreeSet<(&'static str, u32)>,
}

/// Everything kproxy wants in the kernel, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub v4: FamilyState,
    pub v6: FamilyState,
    pub masquerade_all: bool,
    /// `nftables.masqueradeBit` (`None`: upstream's 14).
    pub masquerade_bit: Option<u8>,
    /// Which packets are this node's pods' (--detect-local-mode): the CIDR modes put their
    /// CIDRs in `cluster-cidrs`, the interface modes match `iifname` in the fixed rules.
    pub local: LocalTraffic,
}

impl FamilyState {
    fn add(&mut self, set: &'static str, key: String, value: String) {
        self.sets.entry(set).or_default().insert(key, value);
    }
}

impl Desired {
    pub fn family(&self, family: IpFamily) -> &FamilyState {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: IpFamily) -> &mut FamilyState {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }
}

/// Which pair of maps a class of traffic uses.
#[derive(Clone, Copy)]
struct Route {
    dispatch: &'static str,
    /// One endpoint map per protocol (TCP, UDP, SCTP): see `skeleton::SETS` for why.
    endpoints: [&'static str; 3],
    chain_prefix: &'static str,
}

const CLUSTER: Route = Route {
    dispatch: "services",
    endpoints: ["endpoints-tcp", "endpoints-udp", "endpoints-sctp"],
    chain_prefix: "lb",
};
const FROM_LOCAL: Route = Route {
    dispatch: "services-from-local",
    endpoints: [
        "endpoints-from-local-tcp",
        "endpoints-from-local-udp",
        "endpoints-from-local-sctp",
    ],
    chain_prefix: "lb-from-local",
};
const NODEPORT: Route = Route {
    dispatch: "nodeports",
    endpoints: [
        "nodeport-endpoints-tcp",
        "nodeport-endpoints-udp",
        "nodeport-endpoints-sctp",
    ],
    chain_prefix: "np-lb",
};
const NODEPORT_FROM_LOCAL: Route = Route {
    dispatch: "nodeports-from-local",
    endpoints: [
        "nodeport-endpoints-from-local-tcp",
        "nodeport-endpoints-from-local-udp",
        "nodeport-endpoints-from-local-sctp",
    ],
    chain_prefix: "np-lb-from-local",
};

/// Writes the dispatch element for `key`, with the port's `comment`, and, for endpoints, one
/// endpoint element per slot (without: the slot's key starts with the dispatch key).
fn route(
    fam: &mut FamilyState,
    r: Route,
    (protocol, comment): (Protocol, &str),
    key: &str,
    targets: &Targets,
) {
    let endpoint_map = r.endpoints[match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }];
    let verdict = match targets {
        Targets::Reject => "goto reject-chain".to_string(),
        Targets::Drop => "drop".to_string(),
        Targets::Endpoints(eps) => {
            for (slot, e) in eps.iter().enumerate() {
                fam.add(
                    endpoint_map,
                    format!("{key} . {slot}"),
                    format!("{} . {}", e.ip, e.port),
                );
            }
            fam.lb_chains.insert((r.chain_prefix, eps.len()));
            format!("goto {}-{}", r.chain_prefix, eps.len())
        }
    };
    fam.add(r.dispatch, key.to_string(), commented(comment, &verdict));
}

/// The single target port of `targets`, when every endpoint uses the same one.
fn single_port(targets: &Targets) -> Option<u16> {
    let Targets::Endpoints(eps) = targets else {
        return None;
    };
    let first = eps.first()?.port;
    eps.iter().all(|e| e.port == first).then_some(first)
}

/// Everything one service port contributes: its VIP ports, NodePorts, affinity and hairpin
/// elements, and the `lb-N` / `affinity-T` chains they point to, family by family.
fn compile_port(d: &mut Desired, planned: &Planned, node: &NodeFacts) {
    for fp in &planned.plan.families {
        let fam = d.family_mut(fp.family);
        compile_vips(fam, planned, fp, node);
        for targets in [Some(&fp.internal), fp.external.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Targets::Endpoints(eps) = targets {
                for e in eps {
                    fam.add("hairpin", format!("{0} . {0}", e.ip), String::new());
                }
            }
        }
    }
}

fn compile_vips(fam: &mut FamilyState, planned: &Planned, fp: &FamilyPlan, node: &NodeFacts) {
    let p = &planned.port;
    let pr = p.name.protocol.lower();
    let family = fp.family;
    // The elements a reader looks a VIP port or NodePort up in (the dispatch maps and
    // `firewall-ports`) name their Service port; the others share their keys.
    let comment = comment::service_port(&p.name);
    let named = (p.name.protocol, comment.as_str());

    // IPv6 affinity hashes the client to a slot (see `skeleton::LB_FAMILIES`).
    let hashed = |r: Route, prefix: &'static str| {
        if family == IpFamily::V6 && p.affinity_timeout_seconds.is_some() {
            Route {
                chain_prefix: prefix,
                ..r
            }
        } else {
            r
        }
    };
    for vip in &fp.cluster_ips {
        fam.add("cluster-ips", vip.to_string(), String::new());
        let key = format!("{vip} . {pr} . {}", p.port);
        route(fam, hashed(CLUSTER, "lb-hash"), named, &key, &fp.internal);
        fam.add("cluster-ports", key.clone(), String::new());
        affinity(fam, planned, vip, &key, &fp.internal);
    }
    let Some(ext) = &fp.external else { return };
    for vip in fp.external_ips.iter().chain(&fp.load_balancer_ips) {
        let key = format!("{vip} . {pr} . {}", p.port);
        route(fam, hashed(CLUSTER, "lb-hash"), named, &key, ext);
        affinity(fam, planned, vip, &key, ext);
        if fp.masquerade_external {
            fam.add("external-masq", key.clone(), String::new());
        }
        if let Some(local) = &fp.external_from_local {
            route(fam, FROM_LOCAL, named, &key, local);
            fam.add("external-local", key.clone(), String::new());
        }
        if let Some(ranges) = fp
            .source_ranges
            .as_ref()
            .filter(|_| fp.load_balancer_ips.contains(vip))
        {
            fam.add("firewall-ports", key.clone(), commented(&comment, ""));
            for range in ranges {
                fam.add("firewall-allow", format!("{key} . {range}"), String::new());
            }
        }
    }
    let Some(node_port) = fp.node_port else {
        return;
    };
    if !node
        .nodeport_ips
        .iter()
        .any(|ip| IpFamily::of(ip) == family)
    {
        return;
    }
    let key = format!("{pr} . {node_port}");
    route(fam, hashed(NODEPORT, "np-lb-hash"), named, &key, ext);
    if family == IpFamily::V4 {
        nodeport_affinity(fam, planned, &key, ext);
    }
    if fp.masquerade_external {
        fam.add("nodeport-masq", key.clone(), String::new());
    }
    if let Some(local) = &fp.external_from_local {
        route(fam, NODEPORT_FROM_LOCAL, named, &key, local);
        fam.add("nodeport-local", key.clone(), String::new());
    }
}

/// ClientIP affinity for one VIP port: the target port the @affinity hit is sent to, the
/// timeout chain that remembers the client, and the live (vip . endpoint) pairs.
fn affinity(fam: &mut FamilyState, planned: &Planned, vip: &IpAddr, key: &str, targets: &Targets) {
    let Some(timeout) = planned.port.affinity_timeout_seconds else {
        return;
    };
    // nft 1.0.6 aborts (netlink_linearize.c: `dreg < ctx->reg_low`) on any packet-path update
    // of a map whose key is two IPv6 addresses and whose value is one, so the whole load would
    // fail: IPv6 VIPs get affinity by hashing the client instead (`lb-hash-N`).
    if vip.is_ipv6() {
        return;
    }
    // Endpoints with different target ports (a named port resolving differently per pod) fall
    // back to plain load balancing: the affinity lookup needs one port per VIP port.
    let Some(port) = single_port(targets) else {
        return;
    };
    let Targets::Endpoints(eps) = targets else {
        return;
    };
    fam.add("affinity-ports", key.to_string(), port.to_string());
    fam.add(
        "affinity-timeouts",
        key.to_string(),
        format!("goto affinity-{timeout}"),
    );
    fam.affinity_timeouts.insert(("affinity", timeout));
    for e in eps {
        fam.add("affinity-live", format!("{vip} . {}", e.ip), String::new());
    }
}

/// ClientIP affinity for one NodePort (IPv4 only: nft 1.0.6 aborts on the IPv6 update rule):
/// keyed by (client . proto . nodePort), so per port, as upstream.
fn nodeport_affinity(fam: &mut FamilyState, planned: &Planned, key: &str, targets: &Targets) {
    let (Some(timeout), Some(port), Targets::Endpoints(eps)) = (
        planned.port.affinity_timeout_seconds,
        single_port(targets),
        targets,
    ) else {
        return;
    };
    fam.add("nodeport-affinity-ports", key.to_string(), port.to_string());
    fam.add(
        "nodeport-affinity-timeouts",
        key.to_string(),
        format!("goto np-affinity-{timeout}"),
    );
    fam.affinity_timeouts.insert(("np-affinity", timeout));
    for e in eps {
        fam.add(
            "nodeport-affinity-live",
            format!("{key} . {}", e.ip),
            String::new(),
        );
    }
}

/// The desired state for `plans` on this node. Pure.
pub fn compile(plans: &Plans, node: &NodeFacts, config: &BackendConfig) -> Desired {
    let mut d = compile_node(node, config);
    for planned in plans.values() {
        compile_port(&mut d, planned, node);
    }
    d
}

/// What one service port contributes, on its own (the unit of a partial sync). Pure.
pub fn compile_one(planned: &Planned, node: &NodeFacts) -> Desired {
    let mut d = Desired::default();
    compile_port(&mut d, planned, node);
    d
}

/// The elements owned by the node and the configuration rather than by a service port
/// (`nodeport-ips` without loopback, `cluster-cidrs`), the --masquerade-all switch and the
/// local-traffic match. Pure.
pub fn compile_node(node: &NodeFacts, config: &BackendConfig) -> Desired {
    let mut d = Desired {
        masquerade_all: config.masquerade_all,
        masquerade_bit: config.masquerade_bit,
        local: node.local_traffic.clone(),
        ..Desired::default()
    };
    node_elements(&mut d, node);
    d
}

fn node_elements(d: &mut Desired, node: &NodeFacts) {
    // Loopback is left out, as upstream's nftables mode does: a packet from 127.0.0.1 DNATed
    // to a pod is a martian without route_localnet, so localhost NodePorts would only hang.
    for ip in node.nodeport_ips.iter().filter(|ip| !ip.is_loopback()) {
        d.family_mut(IpFamily::of(ip))
            .add("nodeport-ips", ip.to_string(), String::new());
    }
    for family in IpFamily::ALL {
        if let Some(cidr) = node.local_traffic.cidr(family) {
            d.family_mut(family)
                .add("cluster-cidrs", cidr.to_string(), String::new());
        }
    }
    for cidr in &node.service_cidrs {
        d.family_mut(IpFamily::of(&cidr.addr())).add(
            "service-cidrs",
            cidr.to_string(),
            String::new(),
        );
    }
}

/// What `{local}` and `{not_local}` stand for in the fixed rules. The CIDR modes match
/// `cluster-cidrs` (so does nothing detected: the family's set is empty and matches nothing);
/// the interface modes `iifname` (by name, as upstream since k/k#134024: `iif` is an index,
/// fixed when the rule is loaded, and pods' interfaces come and go).
pub fn local_match(local: &LocalTraffic) -> (String, String) {
    match local {
        LocalTraffic::Interface { name, prefix } => {
            let star = if *prefix { "*" } else { "" };
            (
                format!("iifname \"{name}{star}\""),
                format!("iifname != \"{name}{star}\""),
            )
        }
        _ => (
            "{ip} saddr @cluster-cidrs".to_string(),
            "{ip} saddr != @cluster-cidrs".to_string(),
        ),
    }
}

/// The rule templates of a fixed chain in `family` (their `{mark}`, `{local}` and `{not_local}`
/// filled in); they depend only on the configuration and the local-traffic match.
pub fn static_rules(c: &skeleton::Chain, node: &Desired, family: IpFamily) -> Vec<String> {
    let mut rules: Vec<&str> = Vec::new();
    if c.name == "services" {
        if node.masquerade_all {
            rules.push(skeleton::MASQUERADE_ALL_RULE);
        } else if node.local.detects(family) {
            rules.push(skeleton::OUTSIDE_CLUSTER_CIDR_RULE);
        }
    }
    rules.extend(c.rules.iter().copied());
    let (is, not) = local_match(&node.local);
    let mark = skeleton::mark(node.masquerade_bit);
    rules
        .iter()
        .map(|r| {
            r.replace("{mark}", &mark)
                .replace("{not_local}", &not)
                .replace("{local}", &is)
        })
        .collect()
}

/// The rule templates of `<prefix>-<n>`.
pub fn lb_rules(prefix: &str, n: usize) -> Vec<String> {
    skeleton::LB_FAMILIES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, r)| r.iter().map(|r| r.replace("{n}", &n.to_string())).collect())
        .unwrap_or_default()
}

/// The rule templates of `<prefix>-<timeout>` (`affinity` or `np-affinity`).
pub fn affinity_rules(prefix: &str, timeout: u32) -> Vec<String> {
    skeleton::AFFINITY_FAMILIES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, r)| {
            r.iter()
                .map(|r| r.replace("{t}", &timeout.to_string()))
                .collect()
        })
        .unwrap_or_default()
}
