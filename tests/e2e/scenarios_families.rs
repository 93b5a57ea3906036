//! Scenarios of the per-family plan and of conflicts between Services, run in every mode:
//! nested source ranges (within one Service, and across two Services sharing a LoadBalancer IP
//! and port), an IPv4-only NodePort on the node's IPv6 address, and a dual-stack Service whose
//! endpoints are all IPv4.
//!
//! Invariants: `ext` (192.168.50.2) is the only external client; every wait polls with a
//! deadline and prints what it measured.

use std::time::Instant;

use crate::client::{Proto::*, all_failed, at, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc};
use crate::topology::{A, B, C, Client, Ext, HTTP};

pub fn nested_source_ranges_admit_clients_in_one_service_and_across_two_sharing_an_lb_ip(
    c: &mut Cluster,
) {
    // One Service whose ranges nest (an interval set refuses them as they are).
    let nested = Svc::new("nested", "10.96.0.73")
        .tcp("http", 80, HTTP)
        .load_balancer("203.0.113.21")
        .source_ranges(&["192.168.0.0/16", "192.168.50.0/24", "192.168.50.2/32"]);
    // Two Services on one LoadBalancer IP and port, with nested ranges: the older one keeps it.
    let shared = |name: &str, vip: &str, created: &str, range: &str| {
        Svc::new(name, vip)
            .tcp("http", 80, HTTP)
            .load_balancer("203.0.113.22")
            .source_ranges(&[range])
            .created(created)
    };
    // The newer Service, which stays throughout.
    let second = || -> Vec<serde_json::Value> {
        vec![
            shared(
                "second",
                "10.96.0.75",
                "2026-02-01T00:00:00Z",
                "192.168.50.0/24",
            )
            .into(),
            Slice::v4("second").tcp("http", HTTP).ready(&[B]).into(),
        ]
    };
    let mut all: Vec<serde_json::Value> = vec![
        nested.into(),
        Slice::v4("nested").tcp("http", HTTP).ready(&[A, B]).into(),
        shared(
            "first",
            "10.96.0.74",
            "2026-01-01T00:00:00Z",
            "192.168.0.0/16",
        )
        .into(),
        Slice::v4("first").tcp("http", HTTP).ready(&[A]).into(),
    ];
    all.extend(second());
    c.apply("ranges", all);
    let took = c.until_served(Ext, Tcp, at("203.0.113.21", 80), &[A, B]);
    println!("services written -> nested ranges admit ext: {took:?}");
    let took = c.until_served(Ext, Tcp, at("203.0.113.22", 80), &[A]);
    println!("services written -> the shared LB IP served by the older Service: {took:?}");
    // Both Services stay served at their ClusterIPs.
    served_by(&c.tcp_n(Client, at("10.96.0.75", 80), 10), &[B]).unwrap();
    // The older one goes: the newer one takes the address, with its own range.
    c.apply("ranges", second());
    let took = c.until_served(Ext, Tcp, at("203.0.113.22", 80), &[B]);
    println!("older Service deleted -> the newer one serves the LB IP: {took:?}");
}

pub fn an_ipv4_only_node_port_is_not_served_on_the_nodes_ipv6_address(c: &mut Cluster) {
    let svc = Svc::new("np4", "10.96.0.76")
        .tcp("http", 80, HTTP)
        .node_port("http", 30076);
    c.apply(
        "np4",
        vec![
            svc.into(),
            Slice::v4("np4").tcp("http", HTTP).ready(&[A]).into(),
        ],
    );
    let took = c.until_served(Ext, Tcp, at("192.168.50.1", 30076), &[A]);
    println!("service written -> NodePort on the node's IPv4 address: {took:?}");
    let r = c.tcp_n(Ext, at("fd00:50::1", 30076), 5);
    all_failed(&r, "refused").unwrap();
}

pub fn a_dual_stack_service_with_ipv4_endpoints_refuses_tcp_on_its_ipv6_cluster_ip(
    c: &mut Cluster,
) {
    let svc = Svc::new("dual", "10.96.0.77")
        .dual_stack("fd00:96::77")
        .tcp("http", 80, HTTP);
    let written = Instant::now();
    c.apply(
        "dual",
        vec![
            svc.into(),
            Slice::v4("dual").tcp("http", HTTP).ready(&[A, B, C]).into(),
        ],
    );
    let took = c.until_served(Client, Tcp, at("10.96.0.77", 80), &[A, B, C]);
    println!("service written -> IPv4 ClusterIP traffic: {took:?}");
    let took = c.until_fails(Client, Tcp, at("fd00:96::77", 80), "refused");
    println!(
        "service written -> IPv6 ClusterIP refuses TCP: {:?} (requirement: 1 s; polling {took:?})",
        written.elapsed()
    );
    all_failed(&c.tcp_n(Client, at("fd00:96::77", 80), 10), "refused").unwrap();
}
