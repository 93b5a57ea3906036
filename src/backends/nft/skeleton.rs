//! The static part of kproxy's nftables ruleset, as data: the named sets and maps, the base
//! chains with upstream's hooks and priorities, and the fixed rules. Nothing here depends on the
//! Services; per-Service data lives only in the elements of `SETS` (see README.md).
//!
//! Invariants: rule templates use `{ip}` (`ip`/`ip6`), `{addr}` (`ipv4_addr`/`ipv6_addr`) and,
//! in the fixed chains, `{mark}` (the masquerade mark) only; every set a rule names is declared
//! in `SETS`; the order of every table is the render order, so rendering is deterministic.

use crate::model::IpFamily;

/// kproxy's table name in both the `ip` and `ip6` families (upstream's is `kube-proxy`).
pub const TABLE: &str = "kproxy";

/// The bit of `meta mark` that asks postrouting to masquerade when `nftables.masqueradeBit` is
/// unset (upstream's 14: 0x4000). Rules name the mark as `{mark}` (`compile::static_rules`).
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;

/// The mark of `bit` as nft prints it (`0x00004000`).
pub fn mark(bit: Option<u8>) -> String {
    format!(
        "0x{:08x}",
        1u32 << bit.unwrap_or(DEFAULT_MASQUERADE_BIT).min(31)
    )
}

/// One named set or map: name, declaration body (`{addr}` is the family's address type).
pub struct SetDecl {
    pub name: &'static str,
    pub decl: &'static str,
}

/// Every named set and map; the only objects whose contents depend on the Services.
pub const SETS: &[SetDecl] = &[
    // (vip . proto . port) -> `goto lb-N` (N = endpoint count), `goto reject-chain` or `drop`.
    SetDecl {
        name: "services",
        decl: "type {addr} . inet_proto . inet_service : verdict;",
    },
    // (vip . proto . port . slot) -> endpoint, slot in 0..N, one map per protocol. The value's
    // port must be typed `tcp dport` / `udp dport` / `sctp dport`: nft 1.0.6 cannot read a
    // `{ip} … th dport` typeof back from the kernel ("conflicting protocols specified: ip vs.
    // th"), so later element updates would fail; and a `udp dport` value makes nft add a hidden
    // `meta l4proto udp` to every rule that DNATs through the map, so TCP would never be DNATed.
    // Hence one map per protocol, each used by a rule guarded by that protocol.
    SetDecl {
        name: "endpoints-tcp",
        decl: "typeof {ip} daddr . meta l4proto . tcp dport . numgen random mod 1 : {ip} daddr . tcp dport;",
    },
    SetDecl {
        name: "endpoints-udp",
        decl: "typeof {ip} daddr . meta l4proto . udp dport . numgen random mod 1 : {ip} daddr . udp dport;",
    },
    SetDecl {
        name: "endpoints-sctp",
        decl: "typeof {ip} daddr . meta l4proto . sctp dport . numgen random mod 1 : {ip} daddr . sctp dport;",
    },
    // The same pair for eTP=Local external VIPs reached from a pod or from the node.
    SetDecl {
        name: "services-from-local",
        decl: "type {addr} . inet_proto . inet_service : verdict;",
    },
    SetDecl {
        name: "endpoints-from-local-tcp",
        decl: "typeof {ip} daddr . meta l4proto . tcp dport . numgen random mod 1 : {ip} daddr . tcp dport;",
    },
    SetDecl {
        name: "endpoints-from-local-udp",
        decl: "typeof {ip} daddr . meta l4proto . udp dport . numgen random mod 1 : {ip} daddr . udp dport;",
    },
    SetDecl {
        name: "endpoints-from-local-sctp",
        decl: "typeof {ip} daddr . meta l4proto . sctp dport . numgen random mod 1 : {ip} daddr . sctp dport;",
    },
    // NodePorts: keyed by (proto . port) only; the address is checked against @nodeport-ips.
    SetDecl {
        name: "nodeports",
        decl: "type inet_proto . inet_service : verdict;",
    },
    SetDecl {
        name: "nodeport-endpoints-tcp",
        decl: "typeof meta l4proto . tcp dport . numgen random mod 1 : {ip} daddr . tcp dport;",
    },
    SetDecl {
        name: "nodeport-endpoints-udp",
        decl: "typeof meta l4proto . udp dport . numgen random mod 1 : {ip} daddr . udp dport;",
    },
    SetDecl {
        name: "nodeport-endpoints-sctp",
        decl: "typeof meta l4proto . sctp dport . numgen random mod 1 : {ip} daddr . sctp dport;",
    },
    SetDecl {
        name: "nodeports-from-local",
        decl: "type inet_proto . inet_service : verdict;",
    },
    SetDecl {
        name: "nodeport-endpoints-from-local-tcp",
        decl: "typeof meta l4proto . tcp dport . numgen random mod 1 : {ip} daddr . tcp dport;",
    },
    SetDecl {
        name: "nodeport-endpoints-from-local-udp",
        decl: "typeof meta l4proto . udp dport . numgen random mod 1 : {ip} daddr . udp dport;",
    },
    SetDecl {
        name: "nodeport-endpoints-from-local-sctp",
        decl: "typeof meta l4proto . sctp dport . numgen random mod 1 : {ip} daddr . sctp dport;",
    },
    SetDecl {
        name: "nodeport-ips",
        decl: "type {addr};",
    },
    // ClusterIP ports (for --masquerade-all and the cluster-CIDR rule).
    SetDecl {
        name: "cluster-ports",
        decl: "type {addr} . inet_proto . inet_service;",
    },
    SetDecl {
        name: "cluster-cidrs",
        decl: "type {addr}; flags interval;",
    },
    // Every ClusterIP (a packet still addressed to one after DNAT is for a port its Service
    // does not have: rejected) and the ServiceCIDRs (an address in them that no Service has:
    // dropped), as upstream's `cluster-ips-check`.
    SetDecl {
        name: "cluster-ips",
        decl: "type {addr};",
    },
    SetDecl {
        name: "service-cidrs",
        decl: "type {addr}; flags interval;",
    },
    // External VIP ports under eTP=Cluster (masquerade) and eTP=Local (short-circuit).
    SetDecl {
        name: "external-masq",
        decl: "type {addr} . inet_proto . inet_service;",
    },
    SetDecl {
        name: "external-local",
        decl: "type {addr} . inet_proto . inet_service;",
    },
    SetDecl {
        name: "nodeport-masq",
        decl: "type inet_proto . inet_service;",
    },
    SetDecl {
        name: "nodeport-local",
        decl: "type inet_proto . inet_service;",
    },
    // loadBalancerSourceRanges: firewalled LB ports and the (port . source range) they allow.
    SetDecl {
        name: "firewall-ports",
        decl: "type {addr} . inet_proto . inet_service;",
    },
    SetDecl {
        name: "firewall-allow",
        decl: "type {addr} . inet_proto . inet_service . {addr}; flags interval;",
    },
    // ClientIP affinity: (client . vip) -> endpoint IP, written by the packet path.
    SetDecl {
        name: "affinity",
        decl: "type {addr} . {addr} : {addr}; flags dynamic,timeout; timeout 3h;",
    },
    // Affinity ports: their single target port, their timeout chain, and the live (vip . ep).
    SetDecl {
        name: "affinity-ports",
        decl: "type {addr} . inet_proto . inet_service : inet_service;",
    },
    SetDecl {
        name: "affinity-timeouts",
        decl: "type {addr} . inet_proto . inet_service : verdict;",
    },
    SetDecl {
        name: "affinity-live",
        decl: "type {addr} . {addr};",
    },
    // NodePort affinity (IPv4 only, see README): (client . proto . nodePort) -> endpoint IP,
    // written by the packet path; the target port, timeout chain and live endpoints per nodePort.
    SetDecl {
        name: "nodeport-affinity",
        decl: "type {addr} . inet_proto . inet_service : {addr}; flags dynamic,timeout; timeout 3h;",
    },
    SetDecl {
        name: "nodeport-affinity-ports",
        decl: "type inet_proto . inet_service : inet_service;",
    },
    SetDecl {
        name: "nodeport-affinity-timeouts",
        decl: "type inet_proto . inet_service : verdict;",
    },
    SetDecl {
        name: "nodeport-affinity-live",
        decl: "type inet_proto . inet_service . {addr};",
    },
    // Hairpin: (ep . ep) for every endpoint IP, so `saddr . daddr` matches a pod reaching itself.
    SetDecl {
        name: "hairpin",
        decl: "type {addr} . {addr};",
    },
];

/// The sets whose keys several owners can want at once: the endpoint-address pairs (`hairpin`:
/// every port an endpoint serves; `affinity-live`: every affinity port of one ClusterIP) and
/// the ClusterIPs (`cluster-ips`: every port of a Service has them) and the node's own
/// (`nodeport-ips`, `cluster-cidrs`, `service-cidrs`). All are plain sets (no value), so owners
/// can only agree. Every other set kproxy writes is keyed by a claimed address and port, or a
/// claimed NodePort (its key starts with one): the plan's claims give each such key one owner
/// at a time, so the mirror keeps no record of it (`diff.rs`).
pub const SHARED_SETS: &[&str] = &[
    "hairpin",
    "affinity-live",
    "nodeport-ips",
    "cluster-cidrs",
    "cluster-ips",
    "service-cidrs",
];

/// Whether several owners can want one key of `set` (see `SHARED_SETS`).
pub fn shared(set: &str) -> bool {
    SHARED_SETS.contains(&set)
}

/// A base chain: name, type, hook, numeric priority (upstream's named priority in the comment).
pub struct BaseChain {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: i32,
    pub comment: &'static str,
    pub rules: &'static [&'static str],
}

/// Base chains at upstream's hooks and priorities (numeric, because nft 1.0.6 refuses
/// `dstnat - 10` on the input hook), plus the post-DNAT prerouting chain affinity needs.
pub const BASE_CHAINS: &[BaseChain] = &[
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: -100,
        comment: "dstnat",
        rules: &["jump services"],
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: -100,
        comment: "dstnat",
        rules: &["jump services"],
    },
    BaseChain {
        name: "filter-prerouting-post-dnat",
        kind: "filter",
        hook: "prerouting",
        priority: -90,
        comment: "dstnat + 10",
        rules: &["ct state new ct status dnat jump affinity-remember"],
    },
    BaseChain {
        name: "filter-output-post-dnat",
        kind: "filter",
        hook: "output",
        priority: -90,
        comment: "dstnat + 10",
        rules: &[
            "ct state new ct status dnat jump affinity-remember",
            "ct state new jump cluster-ips-check",
        ],
    },
    BaseChain {
        name: "filter-forward",
        kind: "filter",
        hook: "forward",
        priority: -110,
        comment: "dstnat - 10",
        rules: &["ct state new jump cluster-ips-check"],
    },
    BaseChain {
        name: "nat-postrouting",
        kind: "nat",
        hook: "postrouting",
        priority: 100,
        comment: "srcnat",
        rules: &["jump masquerading"],
    },
];

/// A regular chain with fixed rules.
pub struct Chain {
    pub name: &'static str,
    pub rules: &'static [&'static str],
}

/// The fixed regular chains. `services` is the single dispatch point; the order of its rules
/// is the order of the packet path described in README.md.
pub const CHAINS: &[Chain] = &[
    // TCP gets a reset: a plain `reject` in an ip/ip6 table answers TCP with ICMP port
    // unreachable, which the kernel rate-limits per client (a burst of 6, then 1/s), so a
    // client connecting in a loop saw timeouts. UDP and SCTP can only get the ICMP error.
    Chain {
        name: "reject-chain",
        rules: &["meta l4proto tcp reject with tcp reset", "reject"],
    },
    Chain {
        name: "mark-for-masquerade",
        rules: &["meta mark set meta mark | {mark}"],
    },
    Chain {
        name: "services",
        rules: &[
            "{ip} daddr . meta l4proto . th dport @firewall-ports {ip} daddr . meta l4proto . th dport . {ip} saddr != @firewall-allow drop",
            "{ip} daddr . meta l4proto . th dport @external-masq jump mark-for-masquerade",
            "{ip} daddr . meta l4proto . th dport @external-local {local} {ip} daddr . meta l4proto . th dport vmap @services-from-local",
            "{ip} daddr . meta l4proto . th dport @external-local fib saddr type local meta mark set meta mark | {mark} {ip} daddr . meta l4proto . th dport vmap @services-from-local",
            "{ip} daddr . meta l4proto . th dport vmap @services",
            "{ip} daddr @nodeport-ips jump nodeports",
        ],
    },
    Chain {
        name: "nodeports",
        rules: &[
            "meta l4proto . th dport @nodeport-masq jump mark-for-masquerade",
            "meta l4proto . th dport @nodeport-local {local} meta l4proto . th dport vmap @nodeports-from-local",
            "meta l4proto . th dport @nodeport-local fib saddr type local meta mark set meta mark | {mark} meta l4proto . th dport vmap @nodeports-from-local",
            "meta l4proto . th dport vmap @nodeports",
        ],
    },
    // After DNAT: what is still addressed to a ClusterIP went to a port its Service does not
    // define; what is addressed to a ServiceCIDR has no Service at all.
    Chain {
        name: "cluster-ips-check",
        rules: &[
            "{ip} daddr @cluster-ips goto reject-chain",
            "{ip} daddr @service-cidrs drop",
        ],
    },
    Chain {
        name: "affinity-remember",
        rules: &[
            "meta l4proto { tcp, udp, sctp } ct original {ip} daddr . meta l4proto . ct original proto-dst vmap @affinity-timeouts",
            "meta l4proto { tcp, udp, sctp } ct original {ip} daddr @nodeport-ips meta l4proto . ct original proto-dst vmap @nodeport-affinity-timeouts",
        ],
    },
    Chain {
        name: "masquerading",
        rules: &[
            "ct status dnat {ip} saddr . {ip} daddr @hairpin masquerade fully-random",
            "meta mark & {mark} == 0x00000000 return",
            "meta mark set meta mark ^ {mark}",
            "masquerade fully-random",
        ],
    },
];

/// Rules that exist only under some --masquerade-all / --detect-local-mode setting (prepended to
/// `services`): still independent of the Services. `{local}` and `{not_local}` are the
/// local-traffic match (`compile::local_match`).
pub const MASQUERADE_ALL_RULE: &str =
    "{ip} daddr . meta l4proto . th dport @cluster-ports jump mark-for-masquerade";
pub const OUTSIDE_CLUSTER_CIDR_RULE: &str =
    "{ip} daddr . meta l4proto . th dport @cluster-ports {not_local} jump mark-for-masquerade";

/// The per-count chain families: prefix, and the DNAT rules of `<prefix>-N`. `{n}` is N.
/// Affinity comes first: a hit on @affinity with a known target port wins; else numgen.
pub const LB_FAMILIES: &[(&str, &[&str])] = &[
    (
        "lb",
        &[
            "meta l4proto { tcp, udp, sctp } dnat {ip} to {ip} saddr . {ip} daddr map @affinity : {ip} daddr . meta l4proto . th dport map @affinity-ports",
            "meta l4proto tcp dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @endpoints-tcp",
            "meta l4proto udp dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @endpoints-udp",
            "meta l4proto sctp dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @endpoints-sctp",
        ],
    ),
    // IPv6 ClientIP affinity (nft 1.0.6 cannot update the IPv6 `affinity` map, see README): a
    // client hashes to one slot, so it keeps its endpoint, on every port of the Service, for as
    // long as the endpoints stay the same; there is no timeout.
    (
        "lb-hash",
        &[
            "meta l4proto tcp dnat {ip} to {ip} daddr . meta l4proto . th dport . jhash {ip} saddr mod {n} map @endpoints-tcp",
            "meta l4proto udp dnat {ip} to {ip} daddr . meta l4proto . th dport . jhash {ip} saddr mod {n} map @endpoints-udp",
            "meta l4proto sctp dnat {ip} to {ip} daddr . meta l4proto . th dport . jhash {ip} saddr mod {n} map @endpoints-sctp",
        ],
    ),
    (
        "np-lb-hash",
        &[
            "meta l4proto tcp dnat {ip} to meta l4proto . th dport . jhash {ip} saddr mod {n} map @nodeport-endpoints-tcp",
            "meta l4proto udp dnat {ip} to meta l4proto . th dport . jhash {ip} saddr mod {n} map @nodeport-endpoints-udp",
            "meta l4proto sctp dnat {ip} to meta l4proto . th dport . jhash {ip} saddr mod {n} map @nodeport-endpoints-sctp",
        ],
    ),
    (
        "lb-from-local",
        &[
            "meta l4proto tcp dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @endpoints-from-local-tcp",
            "meta l4proto udp dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @endpoints-from-local-udp",
            "meta l4proto sctp dnat {ip} to {ip} daddr . meta l4proto . th dport . numgen random mod {n} map @endpoints-from-local-sctp",
        ],
    ),
    (
        "np-lb",
        &[
            "meta l4proto { tcp, udp, sctp } dnat {ip} to {ip} saddr . meta l4proto . th dport map @nodeport-affinity : meta l4proto . th dport map @nodeport-affinity-ports",
            "meta l4proto tcp dnat {ip} to meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints-tcp",
            "meta l4proto udp dnat {ip} to meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints-udp",
            "meta l4proto sctp dnat {ip} to meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints-sctp",
        ],
    ),
    (
        "np-lb-from-local",
        &[
            "meta l4proto tcp dnat {ip} to meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints-from-local-tcp",
            "meta l4proto udp dnat {ip} to meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints-from-local-udp",
            "meta l4proto sctp dnat {ip} to meta l4proto . th dport . numgen random mod {n} map @nodeport-endpoints-from-local-sctp",
        ],
    ),
];

/// The rules of `affinity-<T>`: forget a client whose remembered endpoint left the Service
/// (expire it now and drop this first packet; the client's retransmission picks afresh), else
/// refresh the client's entry with the Service's timeout.
pub const AFFINITY_RULES: &[&str] = &[
    "ct original {ip} daddr . {ip} daddr != @affinity-live update @affinity { {ip} saddr . ct original {ip} daddr timeout 1ms : {ip} daddr } drop",
    "update @affinity { {ip} saddr . ct original {ip} daddr timeout {t}s : {ip} daddr }",
];

/// The rules of `np-affinity-<T>`: the same for NodePorts, keyed by (client . proto . nodePort).
pub const NP_AFFINITY_RULES: &[&str] = &[
    "meta l4proto { tcp, udp, sctp } meta l4proto . ct original proto-dst . {ip} daddr != @nodeport-affinity-live update @nodeport-affinity { {ip} saddr . meta l4proto . ct original proto-dst timeout 1ms : {ip} daddr } drop",
    "meta l4proto { tcp, udp, sctp } update @nodeport-affinity { {ip} saddr . meta l4proto . ct original proto-dst timeout {t}s : {ip} daddr }",
];

/// The affinity chain families: prefix and rule templates of `<prefix>-<T>` (`{t}`: seconds).
pub const AFFINITY_FAMILIES: &[(&str, &[&str])] = &[
    ("affinity", AFFINITY_RULES),
    ("np-affinity", NP_AFFINITY_RULES),
];

/// Fills a template for one family.
pub fn fill(template: &str, family: IpFamily) -> String {
    let (ip, addr) = match family {
        IpFamily::V4 => ("ip", "ipv4_addr"),
        IpFamily::V6 => ("ip6", "ipv6_addr"),
    };
    template.replace("{ip}", ip).replace("{addr}", addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sets_are_plain_and_every_other_written_set_is_keyed_by_a_claim() {
        // A claim is an address, protocol and port, or a NodePort's protocol and port.
        let claimed = [
            "type {addr} . inet_proto . inet_service",
            "type inet_proto . inet_service",
            "typeof {ip} daddr . meta l4proto . ",
            "typeof meta l4proto . ",
        ];
        for s in SETS.iter().filter(|s| !s.decl.contains("dynamic")) {
            if shared(s.name) {
                assert!(!s.decl.contains(" : "), "{} has values", s.name);
            } else {
                assert!(
                    claimed.iter().any(|c| s.decl.starts_with(c)),
                    "{} is not keyed by a claim: {}",
                    s.name,
                    s.decl
                );
            }
        }
        for name in SHARED_SETS {
            assert!(
                SETS.iter().any(|s| s.name == *name),
                "{name} is not declared"
            );
        }
    }
}
