//! Compiles plans into kproxy's iptables ruleset, per family: the fixed chains and hooks
//! (`compile_fixed`), and each service port's own chains and dispatch rules (`compile_port`).
//!
//! Invariants: pure (no I/O); a service port's rules depend only on its plan, the family, the
//! configuration and the node's local-traffic match, never on other ports, so a partial sync can recompile just the changed
//! ports; rules are the arguments after `-A <chain>`, written in the order `iptables-save`
//! prints them; every chain a rule jumps to is either fixed or one of the same port's chains.
//! No chain per endpoint: DNAT rules sit in the port's own chain (README.md). Every rule a
//! port contributes carries `-m comment` naming it (`backends::comment`: at most 128 bytes, so
//! the longest comment, the name in a sentence, stays under iptables' 255).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

pub use super::fixed::{compile_fixed, masq_mark};
use super::names::{self, PortChain};
use crate::backends::{BackendConfig, Plans, comment};
use crate::model::plan::{Planned, Target, Targets};
use crate::model::{IpFamily, Protocol, ServicePortName};
use crate::node::{LocalTraffic, NodeFacts};

/// The tables kproxy writes, in the order they are restored: nat first, so that traffic a
/// change starts to DNAT is never caught by a filter rule that is about to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule in a shared (fixed) chain: table, chain, arguments.
pub type Dispatch = (Table, &'static str, String);

/// One service port's rules in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// The port's own chains and their rules.
    pub chains: BTreeMap<(Table, String), Vec<String>>,
    /// Its rules in the shared dispatch chains (`PORTALS`, `NODEPORTS`, `REJECTS`,
    /// `NODEPORT_REJECTS`).
    pub dispatch: BTreeSet<Dispatch>,
}

impl PortRules {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.dispatch.is_empty()
    }

    /// Rules in all its chains and dispatch rules.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum::<usize>() + self.dispatch.len()
    }
}

/// The part of one family's ruleset that does not depend on the Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fixed {
    /// Fixed chains in render order, with their rules (the dispatch chains start empty).
    pub chains: Vec<(Table, &'static str, Vec<String>)>,
    /// Jumps from the built-in chains: (table, built-in chain, arguments).
    pub hooks: Vec<(Table, &'static str, String)>,
}

/// One family's whole ruleset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyRules {
    pub fixed: Fixed,
    pub ports: BTreeMap<ServicePortName, PortRules>,
}

/// Every family's ruleset for `plans`.
pub fn compile(
    plans: &Plans,
    node: &NodeFacts,
    config: &BackendConfig,
) -> BTreeMap<IpFamily, FamilyRules> {
    IpFamily::ALL
        .into_iter()
        .map(|family| {
            let local = &node.local_traffic;
            let ports = plans
                .iter()
                .map(|(name, p)| (name.clone(), compile_port(p, family, config, local)))
                .filter(|(_, rules)| !rules.is_empty())
                .collect();
            let fixed = compile_fixed(family, node, config);
            (family, FamilyRules { fixed, ports })
        })
        .collect()
}

/// `10.0.0.1/32`, `fd00::1/128`: how iptables-save prints a single address.
pub(super) fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}/32"),
        IpAddr::V6(ip) => format!("{ip}/128"),
    }
}

/// The local-traffic match of one family (--detect-local-mode), as iptables-save prints it.
enum Local {
    /// `-s <cidr>`: the CIDR modes.
    Source(ipnet::IpNet),
    /// `-i <name>` (`<prefix>+` for a prefix): the interface modes.
    In(String),
}

impl Local {
    fn is(&self) -> String {
        match self {
            Local::Source(cidr) => format!("-s {cidr}"),
            Local::In(iface) => format!("-i {iface}"),
        }
    }
}

fn local_match(local: &LocalTraffic, family: IpFamily) -> Option<Local> {
    match local {
        LocalTraffic::Interface { name, prefix } if *prefix => Some(Local::In(format!("{name}+"))),
        LocalTraffic::Interface { name, .. } => Some(Local::In(name.clone())),
        _ => local.cidr(family).map(Local::Source),
    }
}

/// One service port's chains and dispatch rules in one family (empty when the port has no
/// address in the family).
pub fn compile_port(
    planned: &Planned,
    family: IpFamily,
    config: &BackendConfig,
    local: &LocalTraffic,
) -> PortRules {
    let p = &planned.port;
    let name = &p.name;
    // Every rule of the port names it (`namespace/name:port`, upstream's comment), whether in
    // its own chains, whose names are hashes, or in the shared ones.
    let cn = comment::service_port(name);
    let tag = format!("-m comment --comment \"{cn}\"");
    let pr = name.protocol.lower();
    let Some(fp) = planned.plan.family(family) else {
        return PortRules::default();
    };
    let cluster_ips = &fp.cluster_ips;
    let local = local_match(local, family);
    let internal = &fp.internal;
    let external = fp.external.as_ref();
    let from_local = fp.external_from_local.as_ref();

    let mut out = PortRules::default();
    let affinity = p.affinity_timeout_seconds;
    let mut lb_chain = |kind: PortChain, targets: &Targets, head: Vec<String>| {
        let Targets::Endpoints(eps) = targets else {
            return None;
        };
        let chain = names::port_chain(kind, name);
        let mut rules = head;
        rules.extend(lb_rules(planned, eps, affinity, &tag));
        out.chains.insert((Table::Nat, chain.clone()), rules);
        Some(chain)
    };

    // Internal targets; the head marks ClusterIP traffic that must be masqueraded.
    let dport = |port: u16| {
        format!("-p {pr} -m comment --comment \"{cn} cluster IP\" -m {pr} --dport {port}")
    };
    let masq_head = cluster_ips
        .iter()
        .filter_map(|cip| {
            let (dst, port) = (format!("-d {}", host(cip)), dport(p.port));
            let masq = names::MARK_MASQ;
            match &local {
                _ if config.masquerade_all => Some(format!("{dst} {port} -j {masq}")),
                Some(Local::Source(cidr)) => Some(format!("! -s {cidr} {dst} {port} -j {masq}")),
                Some(Local::In(iface)) => Some(format!("{dst} ! -i {iface} {port} -j {masq}")),
                None => None,
            }
        })
        .collect();
    let svc = lb_chain(PortChain::Svc, internal, masq_head);
    let external_chain = match external {
        Some(t) if t == internal => svc.clone(),
        Some(t) => lb_chain(PortChain::Svl, t, vec![]),
        None => None,
    };
    let from_local_chain = match from_local {
        Some(t) if t == internal => svc.clone(),
        Some(t) if Some(t) == external => external_chain.clone(),
        Some(t) => lb_chain(PortChain::Svw, t, vec![]),
        None => None,
    };

    // The external entry.
    let mut ext = Vec::new();
    if fp.masquerade_external {
        ext.push(format!(
            "-m comment --comment \"masquerade traffic for {cn} external destinations\" -j {}",
            names::MARK_MASQ
        ));
    }
    if let Some(c) = &from_local_chain {
        if let Some(is) = local.as_ref().map(Local::is) {
            ext.push(format!(
                "{is} -m comment --comment \"pod traffic for {cn} external destinations\" -j {c}"
            ));
        }
        ext.push(format!("-m comment --comment \"masquerade LOCAL traffic for {cn} external destinations\" -m addrtype --src-type LOCAL -j {}", names::MARK_MASQ));
        ext.push(format!("-m comment --comment \"route LOCAL traffic for {cn} external destinations\" -m addrtype --src-type LOCAL -j {c}"));
    }
    if let Some(c) = &external_chain {
        ext.push(format!("{tag} -j {c}"));
    }
    let ext_chain = (from_local_chain.is_some() || external_chain.is_some()).then(|| {
        let chain = names::port_chain(PortChain::Ext, name);
        out.chains.insert((Table::Nat, chain.clone()), ext);
        chain
    });

    let reject = |t: &Targets| -> Option<String> {
        match t {
            Targets::Endpoints(_) => None,
            Targets::Drop => Some("-j DROP".into()),
            Targets::Reject => Some(match (name.protocol, family) {
                (Protocol::Tcp, _) => "-j REJECT --reject-with tcp-reset".into(),
                (_, IpFamily::V4) => "-j REJECT --reject-with icmp-port-unreachable".into(),
                (_, IpFamily::V6) => "-j REJECT --reject-with icmp6-port-unreachable".into(),
            }),
        }
    };
    let vip = |ip: &IpAddr, what: &str| {
        format!(
            "-d {} -p {pr} -m comment --comment \"{cn} {what}\" -m {pr} --dport {}",
            host(ip),
            p.port
        )
    };

    // ClusterIPs.
    for cip in cluster_ips {
        let m = vip(cip, "cluster IP");
        match (&svc, reject(internal)) {
            (Some(c), _) => {
                out.dispatch
                    .insert((Table::Nat, names::PORTALS, format!("{m} -j {c}")))
            }
            (None, Some(r)) => {
                out.dispatch
                    .insert((Table::Filter, names::REJECTS, format!("{m} {r}")))
            }
            (None, None) => false,
        };
    }
    let Some(external) = external else {
        return out;
    };
    // The filter verdict for external destinations that nat did not DNAT. Under eTP=Local,
    // pods and the node may deserve another verdict than external clients (their cluster-wide
    // targets can be empty in this family while external traffic is dropped): then the
    // verdict is a filter chain that tells them apart, as nat's external chain does.
    let from_local_verdict = from_local
        .filter(|_| from_local_chain.is_none())
        .and_then(&reject);
    let ext_verdict = match (reject(external), from_local_verdict) {
        (Some(ext), Some(verdict)) if ext != verdict => {
            let chain = names::port_chain(PortChain::Ext, name);
            let mut rules: Vec<String> = local
                .iter()
                .map(|l| format!("{} -p {pr} {tag} {verdict}", l.is()))
                .collect();
            rules.push(format!(
                "-p {pr} {tag} -m addrtype --src-type LOCAL {verdict}"
            ));
            rules.push(format!("{tag} {ext}"));
            out.chains.insert((Table::Filter, chain.clone()), rules);
            Some(format!("-j {chain}"))
        }
        (ext, _) => ext,
    };
    // externalIPs, and LoadBalancer IPs without source ranges.
    let firewalled = fp.source_ranges.is_some();
    let open: Vec<(IpAddr, &str)> = fp
        .external_ips
        .iter()
        .map(|ip| (*ip, "external IP"))
        .chain(
            fp.load_balancer_ips
                .iter()
                .filter(|_| !firewalled)
                .map(|ip| (*ip, "loadbalancer IP")),
        )
        .collect();
    // An external destination `m`: into the external chain in nat, the verdict in filter.
    let external_dispatch = |out: &mut PortRules, m: &str, nat: &'static str, filter| {
        if let Some(c) = &ext_chain {
            out.dispatch
                .insert((Table::Nat, nat, format!("{m} -j {c}")));
        }
        if let Some(v) = &ext_verdict {
            out.dispatch
                .insert((Table::Filter, filter, format!("{m} {v}")));
        }
    };
    for (ip, what) in open {
        external_dispatch(&mut out, &vip(&ip, what), names::PORTALS, names::REJECTS);
    }
    // Firewalled LoadBalancer IPs: allowed sources enter the external chain in nat; whatever
    // was not DNATed there is dropped in filter, as upstream's KUBE-FW-* and
    // KUBE-PROXY-FIREWALL do. When the allowed sources deserve another verdict (the Service
    // has no endpoints: reject), a filter chain of the same name tells them apart.
    if let Some(ranges) = &fp.source_ranges {
        let chain = names::port_chain(PortChain::Fw, name);
        if let Some(ext) = ext_chain.as_ref().filter(|_| !ranges.is_empty()) {
            let rules = ranges
                .iter()
                .map(|r| format!("-s {r} {tag} -j {ext}"))
                .collect();
            out.chains.insert((Table::Nat, chain.clone()), rules);
        }
        let verdict = match ext_verdict.as_deref() {
            Some(v) if v != "-j DROP" && !ranges.is_empty() => {
                let mut rules: Vec<String> = ranges
                    .iter()
                    .map(|r| format!("-s {r} -p {pr} {tag} {v}"))
                    .collect();
                rules.push(format!("{tag} -j DROP"));
                out.chains.insert((Table::Filter, chain.clone()), rules);
                format!("-j {chain}")
            }
            _ => "-j DROP".into(),
        };
        for lb in &fp.load_balancer_ips {
            if out.chains.contains_key(&(Table::Nat, chain.clone())) {
                let m = vip(lb, "loadbalancer IP");
                out.dispatch
                    .insert((Table::Nat, names::PORTALS, format!("{m} -j {chain}")));
            }
            let fm = vip(lb, "loadbalancer IP firewall");
            out.dispatch
                .insert((Table::Filter, names::REJECTS, format!("{fm} {verdict}")));
        }
    }
    // NodePorts.
    if let Some(node_port) = fp.node_port {
        let m = format!("-p {pr} {tag} -m {pr} --dport {node_port}");
        external_dispatch(&mut out, &m, names::NODEPORTS, names::NODEPORT_REJECTS);
    }
    out
}

/// DNAT over `eps`: with ClientIP affinity, first a rule per endpoint that sends a client seen
/// within the timeout back to it (and refreshes it); then `-m statistic` picks uniformly: rule i
/// of n matches with probability 1/(n-i), the last always, so each endpoint gets 1/n.
fn lb_rules(planned: &Planned, eps: &[Target], affinity: Option<u32>, tag: &str) -> Vec<String> {
    let pr = planned.port.name.protocol.lower();
    let service = &planned.port.name.service;
    let dest = |e: &Target| match e.ip {
        IpAddr::V4(ip) => format!("{ip}:{}", e.port),
        IpAddr::V6(ip) => format!("[{ip}]:{}", e.port),
    };
    let mut rules = Vec::with_capacity(eps.len() * 2);
    if let Some(timeout) = affinity {
        for e in eps {
            let list = names::affinity_list(service, &e.ip);
            rules.push(format!(
                "-p {pr} {tag} -m recent --update --seconds {timeout} --reap --name {list} --rsource -j DNAT --to-destination {}",
                dest(e)
            ));
        }
    }
    let n = eps.len();
    for (i, e) in eps.iter().enumerate() {
        let mut r = format!("-p {pr} {tag}");
        if i + 1 < n {
            r.push_str(&format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            ));
        }
        if affinity.is_some() {
            let list = names::affinity_list(service, &e.ip);
            r.push_str(&format!(" -m recent --set --name {list} --rsource"));
        }
        r.push_str(&format!(" -j DNAT --to-destination {}", dest(e)));
        rules.push(r);
    }
    rules
}
