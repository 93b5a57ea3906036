//! The three backends render the same per-family plans alike: for each defect the backends had
//! when each re-derived family policy on its own, one test that compiles the same plans in
//! nftables, iptables and IPVS mode and checks what each programs in the family concerned.

use super::Plans;
use super::ipvs::compile::{IpvsSettings, compile_port as ipvs_port};
use crate::model::{IpFamily, Protocol, ServicePort, ServiceType};
use crate::testing::{add, config, ep, ip, name, node};

/// Everything each mode programs in `family` for `plans`, as text (empty: nothing).
fn programmed(plans: &Plans, family: IpFamily) -> [String; 3] {
    let nft = super::nft::compile::compile(plans, &node(), &config());
    let nft = nft.family(family);
    let nft: Vec<String> = nft
        .sets
        .iter()
        .filter(|(set, _)| !["nodeport-ips", "cluster-cidrs"].contains(set))
        .flat_map(|(set, els)| els.iter().map(move |(k, v)| format!("{set}: {k} {v}")))
        .collect();
    let ipt = super::iptables::compile::compile(plans, &node(), &config());
    let ipt: Vec<String> = ipt[&family]
        .ports
        .values()
        .flat_map(|r| r.dispatch.iter().map(|d| format!("{d:?}")))
        .collect();
    let settings = IpvsSettings::from_config(&config());
    let ipvs: Vec<String> = plans
        .values()
        .flat_map(|p| ipvs_port(p, &node(), &settings).servers.into_values())
        .filter(|s| IpFamily::of(&s.vs.key.addr) == family)
        .map(|s| format!("{:?} {:?}", s.vs.key, s.dests))
        .collect();
    [nft.join("\n"), ipt.join("\n"), ipvs.join("\n")]
}

const MODES: [&str; 3] = ["nftables", "iptables", "ipvs"];

#[test]
fn an_ipv4_only_node_port_is_programmed_in_no_mode_on_ipv6() {
    let mut plans = Plans::new();
    let mut np = ServicePort::cluster_ip(name("np", "", Protocol::Tcp), ip("10.96.0.80"), 80);
    np.service_type = ServiceType::NodePort;
    np.node_port = Some(30080);
    add(&mut plans, np, vec![ep("10.0.1.1", 8080, "node-b")]);
    for (mode, text) in MODES.iter().zip(programmed(&plans, IpFamily::V6)) {
        assert!(text.is_empty(), "{mode} programs IPv6:\n{text}");
    }
    for (mode, text) in MODES.iter().zip(programmed(&plans, IpFamily::V4)) {
        assert!(text.contains("30080"), "{mode} lacks the NodePort:\n{text}");
    }
}

#[test]
fn a_dual_stack_service_with_ipv4_endpoints_rejects_on_its_ipv6_cluster_ip_in_every_mode() {
    let mut plans = Plans::new();
    let mut web = ServicePort::cluster_ip(name("web", "", Protocol::Tcp), ip("10.96.0.81"), 80);
    web.cluster_ips.push(ip("fd96::81"));
    add(&mut plans, web, vec![ep("10.0.1.1", 8080, "node-b")]);
    let [nft, ipt, ipvs] = programmed(&plans, IpFamily::V6);
    assert!(
        nft.contains("services: fd96::81 . tcp . 80 comment \"default/web\" : goto reject-chain"),
        "{nft}"
    );
    assert!(ipt.contains("REJECT --reject-with tcp-reset"), "{ipt}");
    // IPVS: a server without destinations, and the address in `rejected` (a TCP reset).
    assert!(ipvs.contains("fd96::81") && ipvs.ends_with("{}"), "{ipvs}");
    let settings = IpvsSettings::from_config(&config());
    let st = ipvs_port(plans.values().next().unwrap(), &node(), &settings);
    assert!(
        st.elements
            .iter()
            .any(|e| e.set == "rejected" && e.key == "fd96::81 . tcp . 80"),
        "{:?}",
        st.elements
    );
}

#[test]
fn an_ipv4_services_ipv6_and_mapped_external_ips_are_programmed_in_no_mode() {
    let mut plans = Plans::new();
    let mut web = ServicePort::cluster_ip(name("web", "", Protocol::Tcp), ip("10.96.0.82"), 80);
    web.external_ips = vec![
        ip("2001:db8::82"),
        ip("::ffff:192.0.2.82"),
        ip("192.0.2.83"),
    ];
    add(&mut plans, web, vec![]);
    for (mode, text) in MODES.iter().zip(programmed(&plans, IpFamily::V6)) {
        assert!(text.is_empty(), "{mode} programs IPv6:\n{text}");
    }
    for (mode, text) in MODES.iter().zip(programmed(&plans, IpFamily::V4)) {
        assert!(text.contains("192.0.2.83"), "{mode}:\n{text}");
    }
}
