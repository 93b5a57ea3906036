//! The relay against servers on this host's loopback: listeners follow the plans, connections
//! reach the plans' external endpoints, and ports without usable endpoints refuse.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::LocalhostRelay;
use crate::backends::Plans;
use crate::model::{Protocol, ServicePort, ServiceType, TrafficPolicy};
use crate::testing::{add, ep, ip, low_port as free_port, name};

/// A server on 127.0.0.1 that answers every connection with its name.
async fn server(name: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(name.as_bytes()).await;
        }
    });
    addr
}

/// What a connection to 127.0.0.1:`port` reads: a server's name, or the error's kind.
async fn get(port: u16) -> String {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("err:{:?}", e.kind()),
        Err(_) => "err:timeout".into(),
    }
}

fn plans(
    node_port: u16,
    policy: TrafficPolicy,
    servers: &[(SocketAddr, &str)],
    affinity: Option<u32>,
) -> Plans {
    let mut port =
        ServicePort::cluster_ip(name("web", "http", Protocol::Tcp), ip("10.96.0.10"), 80);
    port.service_type = ServiceType::NodePort;
    port.node_port = Some(node_port);
    port.external_traffic_policy = policy;
    port.affinity_timeout_seconds = affinity;
    let eps = servers
        .iter()
        .map(|(addr, node)| ep(&addr.ip().to_string(), addr.port(), node))
        .collect();
    let mut plans = Plans::new();
    add(&mut plans, port, eps);
    plans
}

#[tokio::test]
async fn a_tcp_node_port_is_relayed_from_localhost_to_its_endpoints_and_stops_with_them() {
    let (a, b) = (server("a").await, server("b").await);
    let np = free_port();
    let mut relay = LocalhostRelay::default();
    relay.update(
        &plans(
            np,
            TrafficPolicy::Cluster,
            &[(a, "node-a"), (b, "node-b")],
            None,
        ),
        None,
    );
    assert_eq!(relay.addresses(), [SocketAddr::from(([127, 0, 0, 1], np))]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(get(np).await);
    }
    assert_eq!(
        seen,
        ["a", "b"].map(String::from).into(),
        "both endpoints serve"
    );

    // externalTrafficPolicy Local: only node-a's endpoint (testing::node() is node-a).
    relay.update(
        &plans(
            np,
            TrafficPolicy::Local,
            &[(a, "node-a"), (b, "node-b")],
            None,
        ),
        None,
    );
    for _ in 0..4 {
        assert_eq!(get(np).await, "a");
    }
    // Local without a local endpoint: no listener, refused.
    relay.update(
        &plans(np, TrafficPolicy::Local, &[(b, "node-b")], None),
        None,
    );
    assert!(relay.addresses().is_empty());
    assert_eq!(get(np).await, "err:ConnectionRefused");
    // The Service gone: nothing.
    relay.update(&Plans::new(), None);
    assert_eq!(get(np).await, "err:ConnectionRefused");
}

#[tokio::test]
async fn client_ip_affinity_pins_every_connection_to_one_endpoint() {
    let (a, b) = (server("a").await, server("b").await);
    let np = free_port();
    let mut relay = LocalhostRelay::default();
    relay.update(
        &plans(
            np,
            TrafficPolicy::Cluster,
            &[(a, "node-a"), (b, "node-b")],
            Some(60),
        ),
        None,
    );
    let first = get(np).await;
    assert!(first == "a" || first == "b", "{first}");
    for _ in 0..5 {
        assert_eq!(get(np).await, first);
    }
}

#[tokio::test]
async fn a_partial_update_leaves_other_ports_alone_and_a_busy_port_is_skipped() {
    let a = server("a").await;
    let (np1, np2) = (free_port(), free_port());
    let mut all = plans(np1, TrafficPolicy::Cluster, &[(a, "node-a")], None);
    let mut second =
        ServicePort::cluster_ip(name("db", "sql", Protocol::Tcp), ip("10.96.0.11"), 5432);
    second.service_type = ServiceType::NodePort;
    second.node_port = Some(np2);
    add(&mut all, second, vec![ep("127.0.0.1", a.port(), "node-a")]);
    let mut relay = LocalhostRelay::default();
    relay.update(&all, None);
    assert_eq!(relay.addresses().len(), 2);
    let db = name("db", "sql", Protocol::Tcp);
    all.remove(&db);
    relay.update(&all, Some(&[db].into()));
    assert_eq!(relay.addresses(), [SocketAddr::from(([127, 0, 0, 1], np1))]);
    assert_eq!(get(np1).await, "a");

    // Something else holds the port: not served, no panic; served once it is free.
    let busy = std::net::TcpListener::bind(("127.0.0.1", np2)).unwrap();
    let moved = plans(np2, TrafficPolicy::Cluster, &[(a, "node-a")], None);
    relay.update(&moved, None);
    assert!(relay.addresses().is_empty(), "{:?}", relay.addresses());
    drop(busy);
    relay.update(&moved, None);
    assert_eq!(relay.addresses(), [SocketAddr::from(([127, 0, 0, 1], np2))]);
    assert_eq!(get(np2).await, "a");
}

#[tokio::test]
async fn udp_node_ports_get_no_listener() {
    let a = server("a").await;
    let mut port = ServicePort::cluster_ip(name("dns", "dns", Protocol::Udp), ip("10.96.0.10"), 53);
    port.service_type = ServiceType::NodePort;
    port.node_port = Some(free_port());
    let mut p = Plans::new();
    add(&mut p, port, vec![ep("127.0.0.1", a.port(), "node-a")]);
    let mut relay = LocalhostRelay::default();
    relay.update(&p, None);
    assert!(relay.addresses().is_empty());
}
