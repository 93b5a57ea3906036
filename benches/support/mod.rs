//! A generated cluster for the benches: `n` Services with a realistic mix of types, each with
//! one TCP port and `eps` endpoints in one EndpointSlice, as the changes a source would send.
//!
//! Invariants: deterministic (Service i always looks the same); every VIP, NodePort and
//! endpoint address is unique; one endpoint in five is on this node (`node1`). Mix per ten
//! Services: six ClusterIP, two NodePort, one LoadBalancer with an ingress IP and a source
//! range, one ClusterIP with ClientIP affinity. No healthCheckNodePorts (they would bind ports).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

pub mod command;
pub mod http;
pub mod kproxy_iptables;
pub mod manifests;
pub mod netns;
pub mod nft_split;
pub mod timings;
pub mod upstream;
pub mod upstream_iptables;

use kproxy::backends::BackendConfig;
use kproxy::model::{
    IpFamily, NamespacedName, Place, Protocol, Service, ServicePort, ServicePortName, ServiceType,
    Slice, SliceEndpoint, SlicePort,
};
use kproxy::watch::{Change, Kind};

pub const NODE: &str = "node1";

fn v4(a: u8, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

pub fn name(i: u32) -> NamespacedName {
    NamespacedName::new("default", format!("svc-{i}"))
}

pub fn port_name(i: u32) -> ServicePortName {
    ServicePortName::new(name(i), "http", Protocol::Tcp)
}

/// Service i (VIP 10.x from i).
pub fn service(i: u32) -> Change {
    let mut p = ServicePort::cluster_ip(port_name(i), v4(10, i), 80);
    match i % 10 {
        6 | 7 => {
            p.service_type = ServiceType::NodePort;
            p.node_port = Some(30000 + (i % 2768) as u16);
        }
        8 => {
            p.service_type = ServiceType::LoadBalancer;
            p.node_port = Some(30000 + (i % 2768) as u16);
            p.load_balancer_ips = vec![v4(11, i)];
            p.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().expect("static CIDR")];
        }
        9 => p.affinity_timeout_seconds = Some(10800),
        _ => {}
    }
    // NodePorts must be unique: beyond 2768 Services the range wraps, so later ones are ClusterIP.
    if i >= 2768 && p.node_port.is_some() {
        p.node_port = None;
        p.service_type = ServiceType::ClusterIP;
        p.load_balancer_ips.clear();
        p.load_balancer_source_ranges.clear();
    }
    Change::Service(
        name(i),
        Some(std::sync::Arc::new(Service {
            name: name(i),
            ports: vec![p],
            has_selector: true,
            origin: None,
        })),
    )
}

/// The slice of Service i with `eps` endpoints; `generation` shifts their addresses, so two
/// generations differ in every endpoint.
pub fn slice(i: u32, eps: u32, generation: u32) -> Change {
    let endpoints = (0..eps)
        .map(|k| SliceEndpoint {
            ip: v4(100 + (generation % 100) as u8, i * 16 + k),
            ready: true,
            serving: true,
            terminating: false,
            place: Place::on_node(&if k % 5 == 0 {
                NODE.into()
            } else {
                format!("node{}", 2 + k % 7)
            }),
        })
        .collect();
    let key = NamespacedName::new("default", format!("svc-{i}-abcde"));
    Change::Slice(
        key,
        Some(
            Slice {
                service: name(i),
                family: IpFamily::V4,
                ports: vec![SlicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }],
                endpoints,
                trigger_time: None,
            }
            .into(),
        ),
    )
}

/// The slice of Service i with one endpoint replaced: endpoint `eps / 2` gets the address of
/// `generation` (a pod restarted elsewhere), the others keep generation 0's. Generation 0 is
/// `slice(i, eps, 0)`.
pub fn slice_one_replaced(i: u32, eps: u32, generation: u32) -> Change {
    let Change::Slice(key, Some(mut s)) = slice(i, eps, 0) else {
        unreachable!("slice yields a slice")
    };
    let k = eps / 2;
    std::sync::Arc::make_mut(&mut s).endpoints[k as usize].ip =
        v4(100 + (generation % 100) as u8, i * 16 + k);
    Change::Slice(key, Some(s))
}

/// Every change of a cluster of `n` Services × `eps` endpoints, with both initial lists done.
pub fn cluster(n: u32, eps: u32) -> Vec<Change> {
    let mut out = Vec::with_capacity(2 * n as usize + 2);
    for i in 0..n {
        out.push(service(i));
        out.push(slice(i, eps, 0));
    }
    out.push(Change::Listed(Kind::Services));
    out.push(Change::Listed(Kind::EndpointSlices));
    out
}

/// The cluster sizes a bench runs: 1k and 10k, plus 50k with KPROXY_BENCH_LARGE=1.
pub fn sizes() -> Vec<u32> {
    let mut s = vec![1_000, 10_000];
    if std::env::var("KPROXY_BENCH_LARGE").as_deref() == Ok("1") {
        s.push(50_000);
    }
    s
}

/// The real sync loop's `Syncer` over `backend`, on this node (address 192.168.0.2), with the
/// generated cluster of `n` Services × 10 endpoints applied (not synced yet); `Shared` holds
/// the plans and node facts after each sync.
pub fn syncer(
    backend: Box<dyn kproxy::backends::Backend>,
    n: u32,
) -> (kproxy::sync::Syncer, std::sync::Arc<kproxy::sync::Shared>) {
    let shared = std::sync::Arc::new(kproxy::sync::Shared::default());
    let mut node = kproxy::node::NodeFacts::new(NODE);
    // A cluster CIDR, as every bench had: its rules are in what is measured.
    let cidr = "10.96.0.0/12".parse().expect("static CIDR");
    node.detect_local = kproxy::node::DetectLocal::ClusterCidr(vec![cidr]);
    node.local_addresses = vec!["192.168.0.2".parse().expect("static address")];
    let mut syncer = kproxy::sync::Syncer::new(
        backend,
        Box::new(kproxy::conntrack::Noop),
        node,
        std::sync::Arc::new(kproxy::metrics::Metrics::new()),
        shared.clone(),
        kproxy::health::service::ServiceHealthServers::default(),
    )
    .with_fixed_addresses();
    for c in cluster(n, 10) {
        syncer.apply(c);
    }
    (syncer, shared)
}

/// The backend configuration of every bench (no --masquerade-all).
pub fn config() -> BackendConfig {
    BackendConfig {
        masquerade_all: false,
        nft_transport: Default::default(),
        localhost_nodeports: true,
        iptables_variant: Default::default(),
        masquerade_bit: None,
        ..Default::default()
    }
}
