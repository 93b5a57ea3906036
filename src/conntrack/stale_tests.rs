//! Which flows `Index` calls stale, on hand-built plans: one UDP Service with a ClusterIP, an
//! externalIP, a LoadBalancer IP and a NodePort, and a TCP Service on the same addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{Flow, Index};
use crate::backends::Plans;
use crate::model::plan::{Planned, plan};
use crate::model::{Endpoint, NamespacedName, Protocol, ServicePort, ServicePortName, ServiceType};
use crate::node::NodeFacts;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn at(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ep(addr: &str, serving: bool) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        port: 5353,
        ready: serving,
        serving,
        terminating: !serving,
        place: crate::model::types::Place::intern(crate::model::types::Place {
            node_name: Some("node-b".into()),
            zone: None,
            zone_hints: Default::default(),
            node_hints: Default::default(),
        }),
    }
}

fn node() -> NodeFacts {
    let mut n = NodeFacts::new("node-a");
    n.local_addresses = vec![ip("192.168.0.2")];
    n
}

fn port(protocol: Protocol) -> ServicePort {
    let name = ServicePortName::new(NamespacedName::new("default", "dns"), "dns", protocol);
    let mut p = ServicePort::cluster_ip(name, ip("10.96.0.53"), 53);
    p.service_type = ServiceType::LoadBalancer;
    p.node_port = Some(30053);
    p.external_ips = vec![ip("198.51.100.53")];
    p.load_balancer_ips = vec![ip("203.0.113.53")];
    p
}

fn plans(endpoints: Vec<Endpoint>) -> Plans {
    let mut plans = Plans::new();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let p = port(protocol);
        let planned = Planned {
            plan: plan(&p, &endpoints, &node()),
            port: p,
            endpoints: endpoints.clone(),
        };
        plans.insert(planned.port.name.clone(), Arc::new(planned));
    }
    plans
}

fn flow(protocol: Protocol, dst: &str, reply: &str) -> Flow {
    Flow {
        protocol,
        orig_src: at("10.244.9.2:40000"),
        orig_dst: at(dst),
        reply_src: at(reply),
    }
}

#[test]
fn a_udp_flow_answered_by_a_serving_endpoint_is_kept_on_every_service_address() {
    let index = Index::new(&plans(vec![ep("10.0.1.1", true)]), &node());
    for dst in [
        "10.96.0.53:53",
        "198.51.100.53:53",
        "203.0.113.53:53",
        "192.168.0.2:30053",
    ] {
        assert!(
            !index.is_stale(&flow(Protocol::Udp, dst, "10.0.1.1:5353")),
            "{dst}"
        );
    }
}

#[test]
fn a_udp_flow_answered_by_a_gone_or_not_serving_endpoint_is_stale_on_every_service_address() {
    let index = Index::new(
        &plans(vec![ep("10.0.1.1", true), ep("10.0.2.1", false)]),
        &node(),
    );
    for dst in [
        "10.96.0.53:53",
        "198.51.100.53:53",
        "203.0.113.53:53",
        "192.168.0.2:30053",
    ] {
        for reply in ["10.0.9.9:5353", "10.0.2.1:5353", "10.0.1.1:9999"] {
            assert!(
                index.is_stale(&flow(Protocol::Udp, dst, reply)),
                "{dst} answered by {reply}"
            );
        }
    }
}

#[test]
fn a_flow_made_before_the_rules_existed_is_stale() {
    // Not DNATed: the VIP answered itself (or nobody did).
    let index = Index::new(&plans(vec![ep("10.0.1.1", true)]), &node());
    assert!(index.is_stale(&flow(Protocol::Udp, "10.96.0.53:53", "10.96.0.53:53")));
}

#[test]
fn every_flow_to_a_service_port_without_serving_endpoints_is_stale() {
    let index = Index::new(&plans(vec![]), &node());
    assert!(index.is_stale(&flow(Protocol::Udp, "10.96.0.53:53", "10.0.1.1:5353")));
}

#[test]
fn tcp_flows_and_flows_to_other_addresses_ports_or_hosts_are_never_stale() {
    let index = Index::new(&plans(vec![ep("10.0.1.1", true)]), &node());
    for f in [
        flow(Protocol::Tcp, "10.96.0.53:53", "10.0.9.9:5353"),
        flow(Protocol::Udp, "10.96.0.53:54", "10.0.9.9:5353"),
        flow(Protocol::Udp, "10.96.0.54:53", "10.0.9.9:5353"),
        // The NodePort number on another host: this node only forwards it.
        flow(Protocol::Udp, "192.168.0.3:30053", "192.168.0.3:30053"),
        flow(Protocol::Sctp, "10.96.0.53:53", "10.0.9.9:5353"),
    ] {
        assert!(!index.is_stale(&f), "{f:?}");
    }
}

#[test]
fn sctp_service_ports_are_reconciled_like_udp() {
    let mut p = plans(vec![ep("10.0.1.1", true)]);
    let mut sctp = (**p.values().next().unwrap()).clone();
    let n = &sctp.port.name;
    sctp.port.name = ServicePortName::new(n.service.clone(), n.port.clone(), Protocol::Sctp);
    p.insert(sctp.port.name.clone(), Arc::new(sctp));
    let index = Index::new(&p, &node());
    assert!(index.is_stale(&flow(Protocol::Sctp, "10.96.0.53:53", "10.0.9.9:5353")));
    assert!(!index.is_stale(&flow(Protocol::Sctp, "10.96.0.53:53", "10.0.1.1:5353")));
    assert_eq!(index.protocols(), vec![Protocol::Udp, Protocol::Sctp]);
}
