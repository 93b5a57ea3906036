//! The part of kproxy's iptables ruleset that does not depend on the Services: per family, the
//! fixed chains (entry, dispatch, masquerade, postrouting, filter, canary) and the jumps from
//! the built-in chains.
//!
//! Invariants: pure; depends only on the family, the node's NodePort addresses and the
//! configuration (localhost NodePorts, masquerade bit, liberal TCP tracking); the dispatch chains start empty, their
//! rules belong to the service ports (`compile.rs`).

use super::compile::{Fixed, Table, host};
use super::names;
use crate::backends::BackendConfig;
use crate::model::IpFamily;
use crate::node::NodeFacts;

/// The masquerade mark: `--iptables-masquerade-bit`, upstream's 14 (0x4000) by default.
pub fn masq_mark(config: &BackendConfig) -> String {
    format!("{:#x}", 1u32 << config.masquerade_bit.unwrap_or(14).min(31))
}

/// Classic BPF for `-m bpf`: the packet's source address equals its destination (after DNAT,
/// in POSTROUTING: a pod reached itself through a Service). Offsets are from the IP header.
const HAIRPIN_V4: &str = "6,32 0 0 12,7 0 0 0,32 0 0 16,29 0 1 0,6 0 0 1,6 0 0 0";
const HAIRPIN_V6: &str = "18,32 0 0 8,7 0 0 0,32 0 0 24,29 0 13 0,32 0 0 12,7 0 0 0,32 0 0 28,29 0 9 0,32 0 0 16,7 0 0 0,32 0 0 32,29 0 5 0,32 0 0 20,7 0 0 0,32 0 0 36,29 0 1 0,6 0 0 1,6 0 0 0";

/// The fixed chains and hooks of one family.
pub fn compile_fixed(family: IpFamily, node: &NodeFacts, config: &BackendConfig) -> Fixed {
    use Table::{Filter, Nat};
    let localhost = family == IpFamily::V4 && config.localhost_nodeports;
    let nodeports = nodeport_matches(family, node, localhost);
    let mut services = vec![format!("-j {}", names::PORTALS)];
    services.extend(
        nodeports
            .iter()
            .map(|m| format!("{m} -j {}", names::NODEPORTS)),
    );
    let mut filter = Vec::new();
    if localhost {
        // route_localnet lets 127.0.0.0/8 leave the loopback interface; never let anything
        // from outside reach the node's loopback services because of it (upstream's rule).
        filter.push("-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP".to_string());
    }
    filter.push(format!("-m conntrack --ctstate NEW -j {}", names::REJECTS));
    filter.extend(nodeports.iter().map(|m| {
        format!(
            "{m} -m conntrack --ctstate NEW -j {}",
            names::NODEPORT_REJECTS
        )
    }));
    let mark = masq_mark(config);
    let hairpin = match family {
        IpFamily::V4 => HAIRPIN_V4,
        IpFamily::V6 => HAIRPIN_V6,
    };
    let chains = vec![
        (Nat, names::SERVICES, services),
        (Nat, names::PORTALS, vec![]),
        (Nat, names::NODEPORTS, vec![]),
        (
            Nat,
            names::MARK_MASQ,
            vec![format!("-j MARK --or-mark {mark}")],
        ),
        (
            Nat,
            names::POSTROUTING,
            vec![
                format!("-m conntrack --ctstate DNAT -m bpf --bytecode \"{hairpin}\" -m comment --comment \"hairpin: a pod reaching itself through a Service\" -j MASQUERADE --random-fully"),
                format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
                format!("-j MARK --xor-mark {mark}"),
                "-m comment --comment \"kproxy service traffic requiring SNAT\" -j MASQUERADE --random-fully".to_string(),
            ],
        ),
        (Nat, names::CANARY, vec!["-j RETURN".to_string()]),
        (Filter, names::FILTER, filter),
        (Filter, names::FORWARD, forward(config)),
        (Filter, names::REJECTS, vec![]),
        (Filter, names::NODEPORT_REJECTS, vec![]),
        (Filter, names::CANARY, vec!["-j RETURN".to_string()]),
    ];
    let portals = format!(
        "-m comment --comment \"kproxy service portals\" -j {}",
        names::SERVICES
    );
    let filter_hook = format!(
        "-m comment --comment \"kproxy filter rules\" -j {}",
        names::FILTER
    );
    let hooks = vec![
        (Nat, "PREROUTING", portals.clone()),
        (Nat, "OUTPUT", portals),
        (
            Nat,
            "POSTROUTING",
            format!(
                "-m comment --comment \"kproxy postrouting rules\" -j {}",
                names::POSTROUTING
            ),
        ),
        (Filter, "INPUT", filter_hook.clone()),
        (
            Filter,
            "FORWARD",
            format!(
                "-m comment --comment \"kproxy forwarding rules\" -j {}",
                names::FORWARD
            ),
        ),
        (Filter, "OUTPUT", filter_hook),
    ];
    Fixed { chains, hooks }
}

/// `KPROXY-FORWARD`: as upstream, packets conntrack calls INVALID are dropped when forwarded,
/// unless the kernel tracks TCP liberally (`nf_conntrack_tcp_be_liberal`): conntrack cannot
/// un-NAT them, so they would reach the pod with the Service address and be answered with a
/// reset that kills the connection (k/k#117924).
/// Then the filter rules, as from INPUT and OUTPUT.
fn forward(config: &BackendConfig) -> Vec<String> {
    let mut rules = Vec::new();
    if !config.conntrack_tcp_be_liberal {
        rules.push("-m conntrack --ctstate INVALID -m comment --comment \"drop packets conntrack calls INVALID\" -j DROP".to_string());
    }
    rules.push(format!("-j {}", names::FILTER));
    rules
}

/// The destination matches under which a packet is for a NodePort. With every local address
/// (the default), upstream's `addrtype LOCAL` (so addresses added later count at once); the
/// loopback range only for IPv4 with localhost NodePorts on. Otherwise one match per address.
fn nodeport_matches(family: IpFamily, node: &NodeFacts, localhost: bool) -> Vec<String> {
    if node.nodeport_addresses.all {
        return vec![match (family, localhost) {
            (IpFamily::V4, true) => "-m addrtype --dst-type LOCAL".to_string(),
            (IpFamily::V4, false) => "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL".to_string(),
            (IpFamily::V6, _) => "! -d ::1/128 -m addrtype --dst-type LOCAL".to_string(),
        }];
    }
    node.nodeport_ips
        .iter()
        .filter(|ip| IpFamily::of(ip) == family && (localhost || !ip.is_loopback()))
        .map(|ip| format!("-d {}", host(ip)))
        .collect()
}
