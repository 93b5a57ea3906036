//! Golden tests of the nftables compile and render step, and a check that `nft -c -f` accepts
//! the rendered ruleset.
//!
//! Invariants: the fixtures are `crate::testing`'s; golden files live in `golden/` and are
//! rewritten when KPROXY_BLESS=1; the `nft -c` test skips without root or without `nft`, except
//! under CI=true, where a skip is a failure.

use super::compile::{FamilyState, compile, compile_node, render};
use crate::testing::{cluster_ips, config, external, golden_in, ip, nft_accepts, node, services};

fn golden(file: &str, actual: &str) {
    golden_in("src/backends/nft/golden", file, actual);
}

#[test]
fn cluster_ips_render_as_the_golden_file() {
    golden(
        "cluster_ips.nft",
        &render(&compile(&cluster_ips(), &node(), &config())),
    );
}

#[test]
fn external_traffic_renders_as_the_golden_file() {
    golden(
        "external.nft",
        &render(&compile(&external(), &node(), &config())),
    );
}

#[test]
fn the_skeleton_does_not_grow_with_the_number_of_services() {
    let plans = services(1000);
    let d = compile(&plans, &node(), &config());
    assert_eq!(
        d.v4.lb_chains.len(),
        1,
        "one lb-3 chain for 1000 Services of 3 endpoints"
    );
    assert_eq!(d.v4.sets["services"].len(), 1000);
    assert_eq!(d.v4.sets["endpoints-tcp"].len(), 3000);
    let rendered = render(&d);
    assert_eq!(
        rendered.matches("\tchain ").count(),
        render(&compile(&cluster_ips(), &node(), &config()))
            .matches("\tchain ")
            .count()
            - 1
    );
}

#[test]
fn a_service_with_affinity_keeps_one_target_port_per_vip_port() {
    let d = compile(&external(), &node(), &config());
    let ports = &d.v4.sets["affinity-ports"];
    assert_eq!(
        ports.get("10.96.1.3 . tcp . 1000").map(String::as_str),
        Some("1000")
    );
    assert_eq!(
        ports.get("10.96.1.3 . tcp . 2000").map(String::as_str),
        Some("2000")
    );
    assert!(d.v4.sets["affinity-live"].contains_key("10.96.1.3 . 10.0.2.7"));
}

#[test]
fn loopback_addresses_never_become_nodeport_addresses() {
    let mut n = node();
    n.nodeport_ips = vec![ip("127.0.0.1"), ip("192.168.0.2"), ip("::1"), ip("fd00::2")];
    let d = compile_node(&n, &config());
    let ips = |f: &FamilyState| f.sets["nodeport-ips"].keys().cloned().collect::<Vec<_>>();
    assert_eq!(ips(&d.v4), ["192.168.0.2"]);
    assert_eq!(ips(&d.v6), ["fd00::2"]);
}

#[test]
fn nft_accepts_the_rendered_ruleset() {
    let texts =
        [cluster_ips(), external()].map(|plans| render(&compile(&plans, &node(), &config())));
    nft_accepts(&texts);
}

/// `node()` with `mode` for --detect-local-mode, its Node listing `pod_cidrs`.
fn node_detecting(mode: crate::node::DetectLocal, pod_cidrs: &[&str]) -> crate::node::NodeFacts {
    let mut n = node();
    n.detect_local = mode;
    let cidrs: Vec<ipnet::IpNet> = pod_cidrs.iter().map(|c| c.parse().unwrap()).collect();
    n.local_traffic = n.detect_local.resolve(&cidrs);
    n
}

#[test]
fn the_interface_modes_match_iifname_in_the_fixed_rules_and_nft_accepts_them() {
    use crate::node::DetectLocal::{BridgeInterface, InterfaceNamePrefix};
    let mut texts = Vec::new();
    for (mode, want) in [
        (BridgeInterface("cbr0".into()), "iifname \"cbr0\""),
        (InterfaceNamePrefix("veth".into()), "iifname \"veth*\""),
    ] {
        let text = render(&compile(&external(), &node_detecting(mode, &[]), &config()));
        assert!(
            text.contains(&format!(
                "{want} ip daddr . meta l4proto . th dport vmap @services-from-local"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "@cluster-ports {} jump mark-for-masquerade",
                want.replace("iifname", "iifname !=")
            )),
            "{text}"
        );
        assert!(!text.contains("saddr @cluster-cidrs"), "{text}");
        texts.push(text);
    }
    nft_accepts(&texts);
}

#[test]
fn node_cidr_mode_puts_the_nodes_pod_cidrs_in_cluster_cidrs_and_masquerades_from_outside_them() {
    use crate::node::DetectLocal::NodeCidr;
    let d = compile(
        &cluster_ips(),
        &node_detecting(NodeCidr, &["10.244.1.0/24"]),
        &config(),
    );
    let keys: Vec<&String> = d.v4.sets["cluster-cidrs"].keys().collect();
    assert_eq!(keys, ["10.244.1.0/24"]);
    assert!(!d.v6.sets.contains_key("cluster-cidrs"));
    let text = render(&d);
    assert!(
        text.contains("ip saddr != @cluster-cidrs jump mark-for-masquerade"),
        "{text}"
    );
    assert!(!text.contains("ip6 saddr != @cluster-cidrs"), "{text}");
    // Before the Node has podCIDRs nothing is local, and nothing is masqueraded for it.
    let text = render(&compile(
        &cluster_ips(),
        &node_detecting(NodeCidr, &[]),
        &config(),
    ));
    assert!(!text.contains("saddr != @cluster-cidrs"), "{text}");
}

#[test]
fn service_cidrs_and_cluster_ips_become_elements_of_the_check_after_dnat() {
    let mut n = node();
    n.service_cidrs = vec![
        "10.96.0.0/16".parse().unwrap(),
        "fd00:96::/108".parse().unwrap(),
    ];
    let d = compile(&cluster_ips(), &n, &config());
    let keys = |f: &FamilyState, set: &str| f.sets[set].keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&d.v4, "service-cidrs"), ["10.96.0.0/16"]);
    assert_eq!(keys(&d.v6, "service-cidrs"), ["fd00:96::/108"]);
    // One element per ClusterIP, however many ports share it.
    let vips: std::collections::BTreeSet<String> = cluster_ips()
        .values()
        .flat_map(|p| {
            p.port
                .cluster_ips
                .iter()
                .filter(|ip| ip.is_ipv4())
                .map(|ip| ip.to_string())
        })
        .collect();
    assert_eq!(
        keys(&d.v4, "cluster-ips"),
        vips.into_iter().collect::<Vec<_>>()
    );
    let text = render(&d);
    assert!(
        text.contains("ip daddr @cluster-ips goto reject-chain"),
        "{text}"
    );
    assert!(
        text.contains("type filter hook forward priority -110"),
        "{text}"
    );
    nft_accepts(&[text]);
}

#[test]
fn the_dispatch_elements_name_their_service_port_cut_to_nfts_128_bytes_and_nft_accepts_them() {
    use crate::model::{NamespacedName, Protocol, ServicePort, ServicePortName};
    use crate::testing::{add, ep};
    // 62 + 1 + 63 + ":http": 131 bytes, which nft refuses (k/k#139515).
    let (ns, svc) = ("n".repeat(62), "s".repeat(63));
    let long = ServicePortName::new(NamespacedName::new(&ns, &svc), "http", Protocol::Tcp);
    let mut plans = external();
    add(
        &mut plans,
        ServicePort::cluster_ip(long, ip("10.96.7.7"), 80),
        vec![ep("10.0.7.1", 80, "node-a")],
    );
    let d = compile(&plans, &node(), &config());
    let cut = &format!("{ns}/{svc}:http")[..128];
    assert_eq!(
        d.v4.sets["services"]["10.96.7.7 . tcp . 80"],
        format!("comment \"{cut}\" : goto lb-1")
    );
    for (set, elements) in &d.v4.sets {
        let named = matches!(
            *set,
            "services" | "services-from-local" | "nodeports" | "nodeports-from-local"
        ) || *set == "firewall-ports";
        for value in elements.values() {
            assert_eq!(
                value.starts_with("comment \"default/") || value.starts_with("comment \"n"),
                named,
                "{set}: {value}"
            );
        }
    }
    nft_accepts(&[render(&d)]);
}
