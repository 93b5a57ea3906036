//! Local-traffic detection (`--detect-local-mode`, upstream's LocalDetector): how the rules tell a
//! packet from one of this node's pods apart from one from anywhere else.
//!
//! Invariants: [`DetectLocal`] is the configured mode; [`LocalTraffic`] is what it resolves to on
//! this node (a value in `NodeFacts`), at most one CIDR per family. Both are plain values: the
//! backends render them, they never decide which packets are local themselves.

use ipnet::IpNet;
use serde::Serialize;

use crate::model::IpFamily;

/// `--detect-local-mode` with what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectLocal {
    /// `ClusterCIDR` (upstream's default): sources inside `--cluster-cidr`.
    ClusterCidr(Vec<IpNet>),
    /// `NodeCIDR`: sources inside the Node's `spec.podCIDRs`.
    NodeCidr,
    /// `BridgeInterface`: packets that came in through this interface (`--pod-bridge-interface`).
    BridgeInterface(String),
    /// `InterfaceNamePrefix`: packets that came in through an interface whose name starts with
    /// this (`--pod-interface-name-prefix`).
    InterfaceNamePrefix(String),
}

impl Default for DetectLocal {
    fn default() -> Self {
        DetectLocal::ClusterCidr(Vec::new())
    }
}

impl DetectLocal {
    /// The mode's name, as `--detect-local-mode` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            DetectLocal::ClusterCidr(_) => "ClusterCIDR",
            DetectLocal::NodeCidr => "NodeCIDR",
            DetectLocal::BridgeInterface(_) => "BridgeInterface",
            DetectLocal::InterfaceNamePrefix(_) => "InterfaceNamePrefix",
        }
    }

    /// What the mode means on a node whose Node object lists `pod_cidrs`.
    pub fn resolve(&self, pod_cidrs: &[IpNet]) -> LocalTraffic {
        let cidrs = |all: &[IpNet]| {
            let mut out: Vec<IpNet> = Vec::new();
            for c in all {
                let c = c.trunc();
                if !out
                    .iter()
                    .any(|o| IpFamily::of(&o.addr()) == IpFamily::of(&c.addr()))
                {
                    out.push(c);
                }
            }
            if out.is_empty() {
                LocalTraffic::Undetected
            } else {
                LocalTraffic::Cidrs(out)
            }
        };
        match self {
            DetectLocal::ClusterCidr(c) => cidrs(c),
            DetectLocal::NodeCidr => cidrs(pod_cidrs),
            DetectLocal::BridgeInterface(name) => LocalTraffic::Interface {
                name: name.clone(),
                prefix: false,
            },
            DetectLocal::InterfaceNamePrefix(name) => LocalTraffic::Interface {
                name: name.clone(),
                prefix: true,
            },
        }
    }
}

/// Which packets are this node's pods', as the rules match them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LocalTraffic {
    /// Nothing tells them apart: ClusterCIDR without `--cluster-cidr`, NodeCIDR before the Node
    /// has podCIDRs. No rule depends on local traffic then, as upstream's no-op detector.
    #[default]
    Undetected,
    /// Sources inside these CIDRs (at most one per family).
    Cidrs(Vec<IpNet>),
    /// Packets in through interface `name`, or any interface whose name starts with it.
    Interface { name: String, prefix: bool },
}

impl LocalTraffic {
    /// This family's CIDR, in the CIDR modes.
    pub fn cidr(&self, family: IpFamily) -> Option<IpNet> {
        match self {
            LocalTraffic::Cidrs(c) => c
                .iter()
                .find(|c| IpFamily::of(&c.addr()) == family)
                .copied(),
            _ => None,
        }
    }

    /// Whether packets of `family` can be told apart at all.
    pub fn detects(&self, family: IpFamily) -> bool {
        match self {
            LocalTraffic::Undetected => false,
            LocalTraffic::Cidrs(_) => self.cidr(family).is_some(),
            LocalTraffic::Interface { .. } => true,
        }
    }

    /// Whether a packet of `family` from `src` that came in through `iif` (empty for one the node
    /// sent) is local traffic: the oracle the fake kernels' tests compare the rules with.
    pub fn matches(&self, src: &std::net::IpAddr, iif: &str) -> bool {
        match self {
            LocalTraffic::Undetected => false,
            LocalTraffic::Cidrs(_) => self
                .cidr(IpFamily::of(src))
                .is_some_and(|c| c.contains(src)),
            LocalTraffic::Interface { name, prefix: true } => iif.starts_with(name.as_str()),
            LocalTraffic::Interface {
                name,
                prefix: false,
            } => iif == name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn node_cidr_mode_resolves_to_the_nodes_pod_cidrs_one_per_family() {
        let got =
            DetectLocal::NodeCidr.resolve(&nets(&["10.244.1.7/24", "fd00::/64", "10.9.0.0/16"]));
        assert_eq!(
            got,
            LocalTraffic::Cidrs(nets(&["10.244.1.0/24", "fd00::/64"]))
        );
        assert_eq!(got.cidr(IpFamily::V6), Some("fd00::/64".parse().unwrap()));
        assert!(got.matches(&"10.244.1.9".parse().unwrap(), "eth0"));
        assert!(!got.matches(&"10.9.0.1".parse().unwrap(), ""));
    }

    #[test]
    fn node_cidr_mode_detects_nothing_until_the_node_has_pod_cidrs() {
        let got = DetectLocal::NodeCidr.resolve(&[]);
        assert_eq!(got, LocalTraffic::Undetected);
        assert!(!got.detects(IpFamily::V4));
    }

    #[test]
    fn cluster_cidr_mode_ignores_the_node_and_detects_only_the_families_it_has() {
        let mode = DetectLocal::ClusterCidr(nets(&["10.0.0.0/16"]));
        let got = mode.resolve(&nets(&["10.244.1.0/24"]));
        assert!(got.detects(IpFamily::V4));
        assert!(!got.detects(IpFamily::V6));
        assert!(got.matches(&"10.0.3.3".parse().unwrap(), ""));
    }

    #[test]
    fn interface_modes_match_the_name_exactly_or_as_a_prefix() {
        let bridge = DetectLocal::BridgeInterface("cbr0".into()).resolve(&[]);
        assert!(bridge.matches(&"1.2.3.4".parse().unwrap(), "cbr0"));
        assert!(!bridge.matches(&"1.2.3.4".parse().unwrap(), "cbr01"));
        let prefix = DetectLocal::InterfaceNamePrefix("veth".into()).resolve(&[]);
        assert!(prefix.matches(&"fd00::1".parse().unwrap(), "veth12ab"));
        assert!(!prefix.matches(&"fd00::1".parse().unwrap(), "eth0"));
        assert!(!prefix.matches(&"fd00::1".parse().unwrap(), ""));
        assert!(prefix.detects(IpFamily::V6));
    }
}
