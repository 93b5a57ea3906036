//! The per-family split of a plan: which addresses and endpoints each family gets, the verdict
//! of a family without endpoints, and the normalised source ranges. One test per defect the
//! backends had when each re-derived this on its own.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Targets, in_family, normalise_ranges, plan};
use crate::model::{Endpoint, IpFamily, NamespacedName, Protocol, ServicePort, ServicePortName};
use crate::node::NodeFacts;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port(cluster_ips: &[&str]) -> ServicePort {
    let name = ServicePortName::new(NamespacedName::new("default", "web"), "http", Protocol::Tcp);
    let mut p = ServicePort::cluster_ip(name, ip(cluster_ips[0]), 80);
    p.cluster_ips = cluster_ips.iter().map(|s| ip(s)).collect();
    p
}

fn ep(addr: &str) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        place: crate::model::types::Place::intern(crate::model::types::Place {
            node_name: Some("node-b".into()),
            zone: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }),
    }
}

fn node() -> NodeFacts {
    NodeFacts::new("node-a")
}

#[test]
fn a_port_has_one_family_plan_per_family_of_its_cluster_ips() {
    let p = plan(&port(&["10.96.0.1"]), &[ep("10.0.0.1")], &node());
    let families: Vec<IpFamily> = p.families.iter().map(|f| f.family).collect();
    assert_eq!(families, [IpFamily::V4]);
    let p = plan(&port(&["fd96::1", "10.96.0.1"]), &[], &node());
    let families: Vec<IpFamily> = p.families.iter().map(|f| f.family).collect();
    assert_eq!(families, [IpFamily::V4, IpFamily::V6], "IPv4 first");
}

#[test]
fn a_dual_stack_port_whose_endpoints_are_all_ipv4_rejects_on_ipv6() {
    let mut svc = port(&["10.96.0.1", "fd96::1"]);
    svc.node_port = Some(30080);
    let p = plan(&svc, &[ep("10.0.0.1"), ep("10.0.0.2")], &node());
    let v4 = p.family(IpFamily::V4).unwrap();
    let v6 = p.family(IpFamily::V6).unwrap();
    assert!(matches!(&v4.internal, Targets::Endpoints(e) if e.len() == 2));
    assert_eq!(v6.internal, Targets::Reject);
    assert_eq!(v6.external, Some(Targets::Reject));
    assert_eq!(v6.cluster_ips, [ip("fd96::1")]);
}

#[test]
fn endpoints_are_split_by_family_and_categorised_within_their_family() {
    // Local policy: the IPv4 family has a local endpoint, the IPv6 one only a remote one, so
    // IPv6 drops (it has endpoints, none local) while IPv4 delivers.
    let mut svc = port(&["10.96.0.1", "fd96::1"]);
    svc.internal_traffic_policy = crate::model::TrafficPolicy::Local;
    let mut local = ep("10.0.0.1");
    std::sync::Arc::make_mut(&mut local.place).node_name = Some("node-a".into());
    let p = plan(&svc, &[local, ep("fd10::1")], &node());
    let v4 = p.family(IpFamily::V4).unwrap();
    let v6 = p.family(IpFamily::V6).unwrap();
    assert!(matches!(&v4.internal, Targets::Endpoints(e) if e[0].ip == ip("10.0.0.1")));
    assert_eq!(v6.internal, Targets::Drop);
    assert!(p.drops_internal());
    assert_eq!(p.local_endpoints, 1);
}

#[test]
fn addresses_of_a_family_the_service_lacks_are_ignored() {
    let mut svc = port(&["10.96.0.1"]);
    svc.external_ips = vec![ip("192.0.2.1"), ip("2001:db8::1"), ip("::ffff:192.0.2.2")];
    svc.load_balancer_ips = vec![ip("2001:db8::2")];
    let p = plan(&svc, &[ep("10.0.0.1")], &node());
    assert_eq!(p.families.len(), 1);
    let v4 = &p.families[0];
    assert_eq!(
        v4.external_ips,
        [ip("192.0.2.1")],
        "no mapped address either"
    );
    assert!(v4.load_balancer_ips.is_empty());
}

/// Found by `backends::property_tests`: with eTP=Local and no local endpoint, IPVS mode
/// dropped every packet to the ClusterIP (one virtual server, in the `dropped` set), and
/// nftables mode dropped those from outside the cluster; iptables mode served them.
#[test]
fn an_external_address_that_is_also_a_cluster_ip_of_the_port_is_served_as_the_cluster_ip() {
    let mut svc = port(&["10.96.0.1", "fd96::1"]);
    svc.external_ips = vec![ip("10.96.0.1"), ip("192.0.2.1")];
    svc.load_balancer_ips = vec![ip("fd96::1")];
    svc.external_traffic_policy = crate::model::TrafficPolicy::Local;
    let p = plan(&svc, &[ep("10.0.0.1"), ep("fd10::1")], &node());
    let (v4, v6) = (&p.families[0], &p.families[1]);
    assert_eq!(v4.cluster_ips, [ip("10.96.0.1")]);
    assert_eq!(v4.external_ips, [ip("192.0.2.1")]);
    assert_eq!(v4.external, Some(Targets::Drop), "no local endpoint");
    assert!(v6.load_balancer_ips.is_empty());
    assert_eq!(v6.external, None, "no external address left");
    assert!(matches!(&v6.internal, Targets::Endpoints(e) if e.len() == 1));
}

/// Found by `backends::property_tests`: iptables mode matched such an address as the
/// externalIP first, so a source outside the ranges got a reset where the other modes drop.
#[test]
fn an_external_ip_that_is_also_a_load_balancer_ip_is_served_behind_the_source_ranges() {
    let mut svc = port(&["10.96.0.1"]);
    svc.service_type = crate::model::ServiceType::LoadBalancer;
    svc.external_ips = vec![ip("192.0.2.1"), ip("192.0.2.2")];
    svc.load_balancer_ips = vec![ip("192.0.2.1")];
    svc.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    let p = plan(&svc, &[], &node());
    let v4 = &p.families[0];
    assert_eq!(v4.external_ips, [ip("192.0.2.2")]);
    assert_eq!(v4.load_balancer_ips, [ip("192.0.2.1")]);
    assert!(v4.source_ranges.is_some());
}

#[test]
fn ipv4_mapped_ipv6_addresses_are_in_no_family() {
    let ips = [ip("::ffff:10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")];
    assert_eq!(in_family(&ips, IpFamily::V4), [ip("10.0.0.2")]);
    assert_eq!(in_family(&ips, IpFamily::V6), [ip("fd00::1")]);
}

#[test]
fn source_ranges_are_per_family_truncated_unique_and_never_nested() {
    let ranges: Vec<ipnet::IpNet> = [
        "10.1.0.0/16",
        "10.0.0.0/8",
        "10.0.0.7/8",
        "192.168.1.9/24",
        "fd00::/8",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let v4: Vec<String> = normalise_ranges(&ranges, IpFamily::V4)
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(v4, ["10.0.0.0/8", "192.168.1.0/24"]);
    let mut svc = port(&["10.96.0.1", "fd96::1"]);
    svc.load_balancer_ips = vec![ip("198.51.100.1")];
    svc.load_balancer_source_ranges = vec!["10.0.0.0/8".parse().unwrap()];
    let p = plan(&svc, &[], &node());
    assert_eq!(
        p.family(IpFamily::V4)
            .unwrap()
            .source_ranges
            .as_ref()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        p.family(IpFamily::V6).unwrap().source_ranges,
        Some(vec![]),
        "an IPv6 LoadBalancer IP would admit nothing"
    );
}
