//! `explain` on the shared example plans (`testing`): each address kind, each verdict and the
//! reasons an operator reads.

use super::*;
use crate::model::plan::claims::{Claim, Conflict};
use crate::model::{NamespacedName, Protocol, ServicePort, TrafficPolicy};
use crate::testing::{add, cluster_ips, ep, external, ip, name, node};

/// The backend configuration of these tests: every default.
static NO_CONFIG: std::sync::LazyLock<BackendConfig> =
    std::sync::LazyLock::new(BackendConfig::default);

fn facts(mode: ProxyMode, node: &NodeFacts) -> Facts<'_> {
    Facts {
        mode,
        node,
        config: &NO_CONFIG,
    }
}

/// The endpoints as JSON spells them.
fn texts(e: &Explanation) -> Vec<String> {
    e.endpoints.iter().map(ToString::to_string).collect()
}

fn ask(plans: &Plans, mode: ProxyMode, packet: &str) -> Explanation {
    let n = node();
    explain(plans, &facts(mode, &n), &packet.parse().unwrap())
}

#[test]
fn a_cluster_ip_packet_names_its_service_port_and_every_endpoint_with_an_equal_chance() {
    let e = ask(
        &cluster_ips(),
        ProxyMode::Nftables,
        "tcp 10.0.5.5 -> 10.96.0.10:80",
    );
    assert_eq!(e.service.as_deref(), Some("default/web"));
    assert_eq!(e.port.as_deref(), Some("http"));
    assert_eq!(e.address_kind, Some(AddressKind::ClusterIp));
    assert_eq!(e.verdict, Verdict::Dnat);
    assert_eq!(
        texts(&e),
        ["10.0.1.1:8080", "10.0.2.1:8080", "10.0.3.1:8080"]
    );
    assert!(e.chances.iter().all(|c| (c - 1.0 / 3.0).abs() < 1e-9));
    assert!(!e.masquerade, "a pod's packet is not masqueraded");
    assert!(
        e.reason.contains("3 of its 3 IPv4 endpoints, 3 ready"),
        "{}",
        e.reason
    );
    let outside = ask(
        &cluster_ips(),
        ProxyMode::Nftables,
        "tcp 203.0.113.9 -> 10.96.0.10:80",
    );
    assert!(
        outside.masquerade,
        "off-cluster traffic to a ClusterIP is masqueraded"
    );
}

#[test]
fn a_service_without_endpoints_rejects_and_says_so() {
    let e = ask(
        &cluster_ips(),
        ProxyMode::Iptables,
        "udp 10.0.5.5 -> 10.96.0.53:53",
    );
    assert_eq!(
        (e.verdict, e.port.as_deref()),
        (Verdict::Reject, Some("dns"))
    );
    assert_eq!(e.reason, "the Service has no IPv4 endpoint");
}

#[test]
fn external_traffic_policy_local_without_a_local_endpoint_drops_with_that_reason() {
    let mut plans = Plans::new();
    let mut lb = ServicePort::cluster_ip(name("lb", "https", Protocol::Tcp), ip("10.96.1.1"), 443);
    lb.node_port = Some(30443);
    lb.load_balancer_ips = vec![ip("198.51.100.7")];
    lb.external_traffic_policy = TrafficPolicy::Local;
    add(&mut plans, lb, vec![ep("10.0.2.1", 8443, "node-b")]);
    let e = ask(
        &plans,
        ProxyMode::Nftables,
        "tcp 203.0.113.9 -> 198.51.100.7:443",
    );
    assert_eq!(e.address_kind, Some(AddressKind::LoadBalancerIp));
    assert_eq!(e.verdict, Verdict::Drop);
    assert_eq!(
        e.reason,
        "externalTrafficPolicy Local and no local endpoint"
    );
    let np = ask(
        &plans,
        ProxyMode::Iptables,
        "tcp 203.0.113.9 -> 192.168.0.2:30443",
    );
    assert_eq!(
        (np.address_kind, np.verdict),
        (Some(AddressKind::NodePort), Verdict::Drop)
    );
    // From a pod, the Local policy does not apply (nftables, iptables), but it does in IPVS mode.
    let pod = ask(
        &plans,
        ProxyMode::Nftables,
        "tcp 10.0.5.5 -> 198.51.100.7:443",
    );
    assert_eq!(
        (pod.verdict, texts(&pod).as_slice()),
        (Verdict::Dnat, &["10.0.2.1:8443".to_string()][..])
    );
    assert!(
        pod.reason.contains("the source is a pod on this node"),
        "{}",
        pod.reason
    );
    let ipvs = ask(&plans, ProxyMode::Ipvs, "tcp 10.0.5.5 -> 198.51.100.7:443");
    assert_eq!(ipvs.verdict, Verdict::Drop);
}

#[test]
fn load_balancer_source_ranges_drop_other_sources_and_name_the_ranges() {
    let e = ask(
        &external(),
        ProxyMode::Nftables,
        "tcp 198.51.100.200 -> 198.51.100.7:443",
    );
    assert_eq!(e.verdict, Verdict::Drop);
    assert!(
        e.reason
            .contains("outside the Service's loadBalancerSourceRanges (203.0.113.0/24)"),
        "{}",
        e.reason
    );
    let ok = ask(
        &external(),
        ProxyMode::Nftables,
        "tcp 203.0.113.9 -> 198.51.100.7:443",
    );
    assert_eq!(
        (ok.verdict, texts(&ok).as_slice()),
        (Verdict::Dnat, &["10.0.1.1:8443".to_string()][..])
    );
    assert!(
        ok.reason.starts_with("externalTrafficPolicy Local"),
        "{}",
        ok.reason
    );
}

#[test]
fn node_ports_external_ips_and_affinity_are_told_apart() {
    let plans = external();
    let np = ask(
        &plans,
        ProxyMode::Ipvs,
        "sctp 203.0.113.9 -> 192.168.0.2:30900",
    );
    assert_eq!(np.address_kind, Some(AddressKind::NodePort));
    assert_eq!(
        np.port.as_deref(),
        Some("9000"),
        "an unnamed port is named by its number"
    );
    assert!(np.masquerade, "eTP=Cluster external traffic is masqueraded");
    let eip = ask(
        &plans,
        ProxyMode::Ipvs,
        "sctp 203.0.113.9 -> 192.0.2.10:9000",
    );
    assert_eq!(eip.address_kind, Some(AddressKind::ExternalIp));
    let sticky = ask(
        &plans,
        ProxyMode::Iptables,
        "tcp 10.0.5.5 -> 10.96.1.3:2000",
    );
    assert_eq!(sticky.port.as_deref(), Some("b"));
    assert_eq!(
        sticky.affinity,
        Some(Affinity {
            kind: "ClientIP",
            timeout_seconds: 10800
        })
    );
    let json = serde_json::to_value(&sticky).unwrap();
    for key in [
        "service",
        "port",
        "address_kind",
        "verdict",
        "endpoints",
        "masquerade",
        "affinity",
        "reason",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    assert_eq!(json["address_kind"], "cluster-ip");
    assert_eq!(json["affinity"]["timeout_seconds"], 10800);
}

#[test]
fn an_undefined_port_of_a_cluster_ip_is_rejected_in_nftables_mode_only() {
    let plans = cluster_ips();
    let nft = ask(&plans, ProxyMode::Nftables, "tcp 10.0.5.5 -> 10.96.0.10:81");
    assert_eq!(nft.verdict, Verdict::Reject);
    assert!(
        nft.reason
            .contains("ClusterIP of default/web, which has no TCP port 81"),
        "{}",
        nft.reason
    );
    let ipt = ask(&plans, ProxyMode::Iptables, "tcp 10.0.5.5 -> 10.96.0.10:81");
    assert_eq!(ipt.verdict, Verdict::NotAService);
    assert_eq!(ipt.service, None);
}

#[test]
fn an_unallocated_address_in_a_service_cidr_is_dropped_in_nftables_mode() {
    let mut n = node();
    n.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
    let p = "tcp 10.0.5.5 -> 10.96.7.7:80".parse().unwrap();
    let e = explain(&cluster_ips(), &facts(ProxyMode::Nftables, &n), &p);
    assert_eq!(e.verdict, Verdict::Drop);
    assert!(
        e.reason.contains("ServiceCIDR range 10.96.0.0/16"),
        "{}",
        e.reason
    );
    let e = explain(&cluster_ips(), &facts(ProxyMode::Iptables, &n), &p);
    assert_eq!(
        (e.verdict, e.reason.as_str()),
        (Verdict::NotAService, "no Service has 10.96.7.7 TCP port 80")
    );
}

#[test]
fn a_node_port_on_an_address_it_does_not_answer_on_says_which_addresses_it_does() {
    let mut n = node();
    n.local_addresses.push(ip("172.16.0.9"));
    let p = "sctp 203.0.113.9 -> 172.16.0.9:30900".parse().unwrap();
    let e = explain(&external(), &facts(ProxyMode::Nftables, &n), &p);
    assert_eq!(e.verdict, Verdict::NotAService);
    assert!(
        e.reason
            .contains("not one of this node's NodePort addresses (192.168.0.2, fd00::2)"),
        "{}",
        e.reason
    );
}

#[test]
fn the_winner_of_a_contested_address_is_named_with_the_service_that_lost_it() {
    let mut plans = cluster_ips();
    let loser = name("late", "http", Protocol::Tcp);
    let port = ServicePort::cluster_ip(loser.clone(), ip("10.96.9.9"), 80);
    add(&mut plans, port, vec![]);
    let mut late = (*plans[&loser]).clone();
    late.plan.conflicts = vec![Conflict {
        claim: Claim::Address {
            ip: ip("10.96.0.10"),
            protocol: Protocol::Tcp,
            port: 80,
        },
        winner: NamespacedName::new("default", "web"),
    }];
    plans.insert(loser, std::sync::Arc::new(late));
    let e = ask(&plans, ProxyMode::Nftables, "tcp 10.0.5.5 -> 10.96.0.10:80");
    assert!(
        e.reason
            .contains("default/late asks for the same ClusterIP"),
        "{}",
        e.reason
    );
}

#[test]
fn compare_agrees_only_on_the_same_verdict_endpoints_and_masquerading() {
    let e = ask(
        &cluster_ips(),
        ProxyMode::Nftables,
        "tcp 203.0.113.9 -> 10.96.0.10:80",
    );
    let mut t = Traced {
        verdict: Verdict::Dnat,
        endpoints: e.endpoints.clone(),
        masquerade: Some(true),
    };
    assert_eq!(compare(&e, &t), "agrees");
    t.endpoints.pop();
    assert_eq!(
        compare(&e, &t),
        "differs: endpoints missing [10.0.3.1:8080], unexpected []"
    );
    t.masquerade = Some(false);
    assert!(compare(&e, &t).contains("masquerade false where the plan says true"));
    t.verdict = Verdict::NotAService;
    assert_eq!(
        compare(&e, &t),
        "differs: verdict not-a-service where the plan says dnat"
    );
}
