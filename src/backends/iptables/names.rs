//! Names in kproxy's iptables ruleset: the fixed chains, the per-service-port chains derived
//! from a hash, and the `-m recent` lists of ClientIP affinity.
//!
//! Invariants: every name starts with `KPROXY-` (never upstream's `KUBE-`); a chain name is at
//! most 28 bytes, the kernel's limit (XT_EXTENSION_MAXNAMELEN 29, NUL included): the longest
//! prefix is `KPROXY-SVC-` (11 bytes) and the hash part is always exactly 16 base32 characters,
//! so every per-port chain name is 27 bytes (`chain_names_fit_the_kernels_limit`). Hashes are
//! SHA-256, so names are stable across kproxy versions and restarts.

use crate::model::{NamespacedName, ServicePortName};

/// The kernel's limit on a chain name, without the NUL.
pub const MAX_CHAIN_NAME: usize = 28;

// nat table
/// Entry from PREROUTING and OUTPUT (fixed rules): portals, then NodePorts.
pub const SERVICES: &str = "KPROXY-SERVICES";
/// One rule per (service IP, protocol, port) → the port's chain. Upstream: the service rules of
/// KUBE-SERVICES.
pub const PORTALS: &str = "KPROXY-PORTALS";
/// One rule per (protocol, NodePort) → the port's external chain. Upstream: KUBE-NODEPORTS.
pub const NODEPORTS: &str = "KPROXY-NODEPORTS";
pub const MARK_MASQ: &str = "KPROXY-MARK-MASQ";
pub const POSTROUTING: &str = "KPROXY-POSTROUTING";
// filter table
/// Entry from INPUT and OUTPUT, and from FORWARD through `FORWARD` (fixed rules).
pub const FILTER: &str = "KPROXY-FILTER";
/// Entry from FORWARD: drops packets conntrack calls INVALID unless the kernel tracks TCP
/// liberally (upstream: KUBE-FORWARD's INVALID rule), then `FILTER`.
pub const FORWARD: &str = "KPROXY-FORWARD";
/// One rule per rejected, dropped or firewalled (service IP, protocol, port).
pub const REJECTS: &str = "KPROXY-REJECTS";
/// One rule per rejected or dropped (protocol, NodePort).
pub const NODEPORT_REJECTS: &str = "KPROXY-NODEPORT-REJECTS";
/// In both tables; holds one rule so that a flush is noticed as well as a deletion.
pub const CANARY: &str = "KPROXY-CANARY";

/// The kinds of per-service-port chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortChain {
    /// DNAT over the internal (ClusterIP) targets. Upstream: KUBE-SVC-* or KUBE-SVL-*.
    Svc,
    /// DNAT over the external targets when they differ from the internal ones
    /// (externalTrafficPolicy Local: the local endpoints). Upstream: KUBE-SVL-*.
    Svl,
    /// DNAT over the cluster-wide targets that pods and the node use for external destinations
    /// under externalTrafficPolicy Local, when they differ from both of the above (only with
    /// internalTrafficPolicy Local). Upstream: KUBE-SVC-*.
    Svw,
    /// The entry for external destinations (NodePorts, externalIPs, LoadBalancer IPs).
    /// Upstream: KUBE-EXT-*.
    Ext,
    /// loadBalancerSourceRanges of the LoadBalancer IPs. Upstream: KUBE-FW-*.
    Fw,
}

impl PortChain {
    pub fn prefix(self) -> &'static str {
        match self {
            PortChain::Svc => "KPROXY-SVC-",
            PortChain::Svl => "KPROXY-SVL-",
            PortChain::Svw => "KPROXY-SVW-",
            PortChain::Ext => "KPROXY-EXT-",
            PortChain::Fw => "KPROXY-FW-",
        }
    }
}

/// The chain of `kind` for one service port: prefix + 16 base32 characters of
/// SHA-256(`namespace/name:port/PROTO`), as upstream derives its suffixes.
pub fn port_chain(kind: PortChain, port: &ServicePortName) -> String {
    format!("{}{}", kind.prefix(), hash16(&port.to_string()))
}

/// The `-m recent` list that remembers which clients ClientIP affinity sent to `endpoint`.
/// Keyed by the Service (not the port), so every port of a Service shares it and a client
/// keeps its endpoint across ports.
pub fn affinity_list(service: &NamespacedName, endpoint: &std::net::IpAddr) -> String {
    format!("KPROXY-A-{}", hash16(&format!("{service}/{endpoint}")))
}

/// The first 16 characters of the RFC 4648 base32 encoding of SHA-256(`s`): 80 bits.
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let bytes = &digest.as_ref()[..10];
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(*b);
    }
    (0..16)
        .map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn port(name: &str) -> ServicePortName {
        ServicePortName::new(
            NamespacedName::new("a-very-long-namespace-name-indeed", name),
            "a-port-name-that-is-long",
            Protocol::Sctp,
        )
    }

    #[test]
    fn chain_names_fit_the_kernels_limit() {
        let kinds = [
            PortChain::Svc,
            PortChain::Svl,
            PortChain::Svw,
            PortChain::Ext,
            PortChain::Fw,
        ];
        for kind in kinds {
            let name = port_chain(kind, &port(&"x".repeat(63)));
            assert!(name.len() <= MAX_CHAIN_NAME, "{name}");
            assert!(name.starts_with("KPROXY-"));
        }
        for fixed in [
            SERVICES,
            PORTALS,
            NODEPORTS,
            MARK_MASQ,
            POSTROUTING,
            FILTER,
            REJECTS,
            NODEPORT_REJECTS,
            CANARY,
        ] {
            assert!(fixed.len() <= MAX_CHAIN_NAME, "{fixed}");
        }
    }

    #[test]
    fn names_are_stable_and_differ_per_port_and_kind() {
        // Pinned: a restart of any kproxy version must find the chains it made before.
        assert_eq!(
            port_chain(PortChain::Svc, &port("web")),
            port_chain(PortChain::Svc, &port("web"))
        );
        assert_eq!(
            hash16("default/web:http/TCP"),
            hash16("default/web:http/TCP")
        );
        assert_eq!(hash16(""), "4OYMIQUY7QOBJGX3");
        assert_ne!(
            port_chain(PortChain::Svc, &port("web")),
            port_chain(PortChain::Svc, &port("api"))
        );
        assert_ne!(
            port_chain(PortChain::Svc, &port("web"))[11..],
            port_chain(PortChain::Ext, &port("api"))[11..]
        );
    }

    #[test]
    fn affinity_lists_are_shared_by_the_ports_of_a_service_but_not_by_endpoints() {
        let svc = NamespacedName::new("default", "web");
        let a = affinity_list(&svc, &"10.0.0.1".parse().unwrap());
        assert_eq!(a, affinity_list(&svc, &"10.0.0.1".parse().unwrap()));
        assert_ne!(a, affinity_list(&svc, &"10.0.0.2".parse().unwrap()));
        assert!(a.len() <= 200, "xt_recent's XT_RECENT_NAME_LEN");
    }
}
