//! ClusterIP scenarios: TCP and UDP from a pod and from the node itself, a Service with a TCP and
//! a UDP port, load balancing, rejection without endpoints, hairpin, selector-less Services with
//! v1 Endpoints, and IPv6.
//!
//! Invariants: each scenario writes its manifests, waits (with a deadline) until traffic shows
//! them in force, prints that latency, then checks a larger sample; inside the cluster CIDR the
//! client's own address reaches the server, from the node the node's address does.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::client::{Proto::*, all_failed, at, masqueraded, seen, served_by, tally};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc, WEB, endpoints, web};
use crate::topology::{A, ALT, B, C, Client, DNS, HTTP, Node};

fn only(ip: String) -> BTreeSet<String> {
    BTreeSet::from([ip])
}

pub fn clusterip_tcp_from_a_pod_reaches_every_endpoint(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!("service written -> traffic: {took:?}");

    let r = c.tcp_n(Client, at(WEB, HTTP), 30);
    served_by(&r, &[A, B, C]).unwrap();
    assert_eq!(
        seen(&r),
        only(Client.v4()),
        "pods must see the client pod's own address"
    );
}

pub fn clusterip_tcp_from_the_node_itself_is_answered(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    let took = c.until_served(Node, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!("service written -> traffic: {took:?}");

    let r = c.tcp_n(Node, at(WEB, HTTP), 30);
    served_by(&r, &[A, B, C]).unwrap();
    masqueraded(&r).unwrap();
}

pub fn clusterip_udp_from_a_pod_is_answered(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    let took = c.until_served(Client, Udp, at(WEB, DNS), &[A, B, C]);
    println!("service written -> traffic: {took:?}");

    let r = c.udp_n(Client, at(WEB, DNS), 30);
    served_by(&r, &[A, B, C]).unwrap();
    assert_eq!(seen(&r), only(Client.v4()));
}

pub fn clusterip_udp_from_the_node_itself_is_answered(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    let took = c.until_served(Node, Udp, at(WEB, DNS), &[A, B, C]);
    println!("service written -> traffic: {took:?}");

    let r = c.udp_n(Node, at(WEB, DNS), 30);
    served_by(&r, &[A, B, C]).unwrap();
    masqueraded(&r).unwrap();
}

/// The same port number over TCP and UDP, to different target ports: each protocol reaches its
/// own target port (the servers answer TCP on 8080 and UDP on 5353 only).
pub fn a_service_with_a_tcp_and_a_udp_port_serves_both(c: &mut Cluster) {
    let svc = Svc::new("dns", "10.96.0.53")
        .tcp("tcp", 53, HTTP)
        .udp("udp", 53, DNS);
    let slice = Slice::v4("dns")
        .tcp("tcp", HTTP)
        .udp("udp", DNS)
        .ready(&[A, B]);
    c.apply("dns", vec![svc.into(), slice.into()]);
    let vip = at("10.96.0.53", 53);
    let took = c.until_served(Client, Tcp, vip, &[A, B]);
    println!("service written -> TCP traffic: {took:?}");
    let took = c.until_served(Client, Udp, vip, &[A, B]);
    println!("service written -> UDP traffic (after TCP): {took:?}");

    served_by(&c.tcp_n(Client, vip, 20), &[A, B]).unwrap();
    served_by(&c.udp_n(Client, vip, 20), &[A, B]).unwrap();
}

pub fn load_balancing_spreads_300_connections_over_all_three_endpoints(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!("service written -> traffic: {took:?}");

    let r = c.tcp_n(Client, at(WEB, HTTP), 300);
    let t = tally(&r);
    println!("300 connections: {t:?}");
    served_by(&r, &[A, B, C]).unwrap();
    for pod in [A, B, C] {
        let n = t[pod.name()];
        assert!(
            (60..=141).contains(&n),
            "{} got {n} of 300 connections (want 20%..47%): {t:?}",
            pod.name()
        );
    }
}

/// No endpoints: every attempt is refused at once. Ten TCP connections in a row from one pod:
/// a TCP reset is never rate-limited, whereas ICMP port-unreachable errors to one client are
/// (net.ipv4.icmp_ratelimit: a burst of 6, then one per second), so this also checks that TCP is
/// refused with a reset, as the nftables design says.
pub fn a_service_without_endpoints_refuses_connections_at_once(c: &mut Cluster) {
    // ext owns the Service range: until kproxy has the Service, ext answers.
    let svc = Svc::new("empty", "10.96.0.20")
        .tcp("http", HTTP, HTTP)
        .udp("dns", DNS, DNS);
    c.apply("empty", vec![svc.into()]);
    let (tcp, udp) = (at("10.96.0.20", HTTP), at("10.96.0.20", DNS));
    let took = c.until_fails(Client, Tcp, tcp, "refused");
    println!("service written -> refused: {took:?}");

    for (from, proto, to, n) in [
        (Client, Tcp, tcp, 10),
        (Node, Tcp, tcp, 3),
        (Client, Udp, udp, 3),
        (Node, Udp, udp, 3),
    ] {
        for i in 0..n {
            let start = Instant::now();
            let r = c.probe(from, proto, to, 1, crate::client::TIMEOUT);
            let took = start.elapsed();
            all_failed(&r, "refused")
                .unwrap_or_else(|e| panic!("{proto:?} attempt {i} from {from:?}: {e}"));
            assert!(
                took.as_millis() < 300,
                "{proto:?} attempt {i} from {from:?}: refusal took {took:?}"
            );
        }
    }
}

/// Hairpin: pod-a reaches its own Service and gets pod-a; the node masquerades the connection
/// (otherwise pod-a would answer itself directly and the client would see the wrong source).
pub fn a_pod_reaching_itself_through_its_service_is_answered_by_itself(c: &mut Cluster) {
    c.apply("web", web(&[A]));
    let took = c.until_served(A, Tcp, at(WEB, HTTP), &[A]);
    println!("service written -> hairpin traffic: {took:?}");

    let r = c.tcp_n(A, at(WEB, HTTP), 20);
    served_by(&r, &[A]).unwrap();
    masqueraded(&r).unwrap();
    let r = c.udp_n(A, at(WEB, DNS), 10);
    served_by(&r, &[A]).unwrap();
}

pub fn a_selectorless_service_is_served_from_its_v1_endpoints(c: &mut Cluster) {
    let svc = Svc::new("legacy", "10.96.0.40")
        .tcp("http", 80, HTTP)
        .without_selector();
    c.apply(
        "legacy",
        vec![svc.into(), endpoints("legacy", &[A, B], HTTP)],
    );
    let vip = at("10.96.0.40", 80);
    let took = c.until_served(Client, Tcp, vip, &[A, B]);
    println!("service and endpoints written -> traffic: {took:?}");
    served_by(&c.tcp_n(Client, vip, 20), &[A, B]).unwrap();

    // A change of the Endpoints is mirrored too.
    c.apply(
        "legacy",
        vec![
            Svc::new("legacy", "10.96.0.40")
                .tcp("http", 80, HTTP)
                .without_selector()
                .into(),
            endpoints("legacy", &[C], HTTP),
        ],
    );
    let took = c.until_served(Client, Tcp, vip, &[C]);
    println!("endpoints changed -> traffic: {took:?}");
}

pub fn an_ipv6_clusterip_is_reached_over_tcp_from_a_pod(c: &mut Cluster) {
    let svc = Svc::new("web6", "fd00:96::10")
        .tcp("http", 80, HTTP)
        .tcp("alt", 81, ALT);
    let slice = Slice::v6("web6")
        .tcp("http", HTTP)
        .tcp("alt", ALT)
        .ready(&[A, B, C]);
    c.apply("web6", vec![svc.into(), slice.into()]);
    let vip = at("fd00:96::10", 80);
    let took = c.until_served(Client, Tcp, vip, &[A, B, C]);
    println!("service written -> IPv6 traffic: {took:?}");

    let r = c.tcp_n(Client, vip, 30);
    served_by(&r, &[A, B, C]).unwrap();
    assert_eq!(seen(&r), only(Client.v6()));
    served_by(&c.tcp_n(Client, at("fd00:96::10", 81), 40), &[A, B, C]).unwrap();
}
