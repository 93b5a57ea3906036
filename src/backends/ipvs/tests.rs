//! Golden tests of IPVS mode's compile and render (the fixtures of the nftables backend's), and
//! a check that nft accepts the companion tables with their elements.
//!
//! Invariants: golden files live in `golden/` and are rewritten when KPROXY_BLESS=1.

use super::IpvsBackend;
use super::compile::{IpvsSettings, compile_port};
use super::fake_kernel::FakeKernel;
use crate::backends::{Backend, Plans};
use crate::model::IpFamily;
use crate::testing::{cluster_ips, config, external, golden_in, nft_accepts, node};

fn backend() -> IpvsBackend {
    IpvsBackend::new(&config(), Box::new(FakeKernel::default()))
        .with_families(vec![IpFamily::V4, IpFamily::V6])
}

#[test]
fn cluster_ips_render_as_in_the_golden_file() {
    let text = backend().render(&cluster_ips(), &node());
    golden_in("src/backends/ipvs/golden", "cluster_ips.txt", &text);
}

#[test]
fn external_access_renders_as_in_the_golden_file() {
    let text = backend().render(&external(), &node());
    golden_in("src/backends/ipvs/golden", "external.txt", &text);
}

#[test]
fn nft_accepts_the_companion_tables_with_their_elements() {
    let texts = [cluster_ips(), external()].map(|plans| {
        let text = backend().render(&plans, &node());
        // The nftables part ends where the IPVS part starts.
        text[..text.find("# IPVS").unwrap()].to_string()
    });
    nft_accepts(&texts);
}

#[test]
fn a_local_policy_node_port_without_local_endpoints_has_servers_but_drops() {
    let mut plans = external();
    let lb = plans
        .values()
        .find(|p| p.port.name.service.name == "lb")
        .unwrap()
        .clone();
    let mut eps = lb.endpoints.clone();
    eps.retain(|e| e.place.node_name.as_deref() != Some("node-a"));
    let port = lb.port.clone();
    plans.clear();
    crate::testing::add(&mut plans, port, eps);
    let p = plans.values().next().unwrap();
    let settings = IpvsSettings::from_config(&config());
    let st = compile_port(p, &node(), &settings);
    let nodeport = st
        .servers
        .iter()
        .find(|(k, _)| k.port == 30443 && k.addr.is_ipv4())
        .unwrap()
        .1;
    assert!(nodeport.dests.is_empty());
    let drops: Vec<&str> = st
        .elements
        .iter()
        .filter(|e| e.set == "dropped")
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(
        drops,
        ["192.168.0.2 . tcp . 30443", "198.51.100.7 . tcp . 443",]
    );
    // The ClusterIP keeps its cluster-wide endpoint.
    let cluster = st
        .servers
        .iter()
        .find(|(k, _)| k.port == 443 && k.addr.to_string() == "10.96.1.1")
        .unwrap()
        .1;
    assert_eq!(cluster.dests.len(), 1);
}

#[test]
fn loopback_and_link_local_addresses_get_no_node_port_servers() {
    let mut n = node();
    n.nodeport_ips = ["127.0.0.1", "192.168.0.2", "::1", "fe80::1", "fd00::2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    // A dual-stack NodePort: it listens on the node addresses of both families.
    let np = external()
        .into_values()
        .find(|p| p.port.name.service.name == "np")
        .unwrap();
    let mut port = np.port.clone();
    port.cluster_ips.push("fd96::2".parse().unwrap());
    let mut plans = Plans::new();
    crate::testing::add(&mut plans, port, np.endpoints.clone());
    let np = plans.values().next().unwrap();
    let st = compile_port(np, &n, &IpvsSettings::from_config(&config()));
    let mut addrs: Vec<String> = st
        .servers
        .keys()
        .filter(|k| k.port == 30900)
        .map(|k| k.addr.to_string())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["192.168.0.2", "fd00::2"]);
}

#[test]
fn an_ipv4_only_node_port_listens_on_no_ipv6_node_address() {
    let plans = external();
    let settings = IpvsSettings::from_config(&config());
    for p in plans.values() {
        let st = compile_port(p, &node(), &settings);
        for key in st.servers.keys() {
            assert!(
                key.addr.is_ipv4(),
                "{} has an IPv6 virtual server {key:?}",
                p.port.name
            );
        }
    }
}
