//! Scenarios for traffic from outside the cluster (the `ext` host): NodePorts under
//! externalTrafficPolicy Cluster and Local, externalIPs, LoadBalancer ingress IPs,
//! loadBalancerSourceRanges, and healthCheckNodePort answers.
//!
//! Invariants: `ext` (192.168.50.2) reaches the node's InternalIP 192.168.50.1 and, through its
//! default route via the node, every externalIP and LB IP; under eTP=Cluster pods see the node's
//! address (masquerade), under eTP=Local they see 192.168.50.2 and only node1's pods (pod-a,
//! pod-b; pod-c is on node2) serve; a drop shows as a timeout, never as a refusal.

use crate::client::{Proto::*, all_failed, at, masqueraded, seen, served_by, tally};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc};
use crate::topology::{A, B, C, Client, Ext, HTTP, Node};

/// The node's InternalIP, port `port`.
fn node_ip(port: u16) -> std::net::SocketAddr {
    at(&Node.v4(), port)
}

pub fn nodeport_from_an_external_host_is_masqueraded_under_cluster_policy(c: &mut Cluster) {
    let svc = Svc::new("np", "10.96.0.50")
        .tcp("http", 80, HTTP)
        .node_port("http", 30080);
    let slice = Slice::v4("np").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("np", vec![svc.into(), slice.into()]);
    let took = c.until_served(Ext, Tcp, node_ip(30080), &[A, B, C]);
    println!("service written -> NodePort traffic: {took:?}");

    let r = c.tcp_n(Ext, node_ip(30080), 30);
    served_by(&r, &[A, B, C]).unwrap();
    masqueraded(&r).unwrap();
}

pub fn nodeport_under_local_policy_keeps_the_source_and_uses_only_local_endpoints(c: &mut Cluster) {
    let svc = Svc::new("npl", "10.96.0.51")
        .tcp("http", 80, HTTP)
        .node_port("http", 30081)
        .external_local();
    let slice = Slice::v4("npl").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("npl", vec![svc.into(), slice.into()]);
    let took = c.until_served(Ext, Tcp, node_ip(30081), &[A, B]);
    println!("service written -> NodePort traffic: {took:?}");

    let r = c.tcp_n(Ext, node_ip(30081), 60);
    served_by(&r, &[A, B]).unwrap();
    assert_eq!(
        seen(&r),
        [Ext.v4()].into(),
        "eTP=Local must keep the client's address"
    );
    // The ClusterIP is not affected by the external policy: every endpoint serves it.
    let r = c.tcp_n(Client, at("10.96.0.51", 80), 30);
    served_by(&r, &[A, B, C]).unwrap();
}

pub fn nodeport_under_local_policy_without_local_endpoints_drops(c: &mut Cluster) {
    let svc = Svc::new("npl", "10.96.0.52")
        .tcp("http", 80, HTTP)
        .node_port("http", 30082)
        .external_local();
    let slice = Slice::v4("npl").tcp("http", HTTP).ready(&[C]);
    c.apply("npl", vec![svc.into(), slice.into()]);
    // The ClusterIP shows when kproxy has the Service; until then the NodePort is refused by the
    // node (nothing listens on 30082), afterwards it must be dropped.
    let took = c.until_served(Client, Tcp, at("10.96.0.52", 80), &[C]);
    println!("service written -> ClusterIP traffic: {took:?}");
    let took = c.until_fails(Ext, Tcp, node_ip(30082), "timeout");
    println!("service written -> NodePort dropped: {took:?} (including the 400 ms attempt)");

    let r = c.probe(Ext, Tcp, node_ip(30082), 3, crate::client::DROP_TIMEOUT);
    all_failed(&r, "timeout").unwrap();
}

pub fn external_ips_are_reachable_from_an_external_host(c: &mut Cluster) {
    let svc = Svc::new("eip", "10.96.0.60")
        .tcp("http", 80, HTTP)
        .external_ips(&["198.51.100.10"]);
    let slice = Slice::v4("eip").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("eip", vec![svc.into(), slice.into()]);
    let vip = at("198.51.100.10", 80);
    let took = c.until_served(Ext, Tcp, vip, &[A, B, C]);
    println!("service written -> externalIP traffic: {took:?}");

    let r = c.tcp_n(Ext, vip, 30);
    served_by(&r, &[A, B, C]).unwrap();
    masqueraded(&r).unwrap();
    // From a pod too.
    served_by(&c.tcp_n(Client, vip, 30), &[A, B, C]).unwrap();
}

pub fn a_load_balancer_ingress_ip_is_reachable_from_an_external_host(c: &mut Cluster) {
    let svc = Svc::new("lb", "10.96.0.70")
        .tcp("http", 80, HTTP)
        .node_port("http", 30070)
        .load_balancer("203.0.113.10");
    let slice = Slice::v4("lb").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("lb", vec![svc.into(), slice.into()]);
    let vip = at("203.0.113.10", 80);
    let took = c.until_served(Ext, Tcp, vip, &[A, B, C]);
    println!("service written -> LB IP traffic: {took:?}");

    let r = c.tcp_n(Ext, vip, 30);
    served_by(&r, &[A, B, C]).unwrap();
    masqueraded(&r).unwrap();
    served_by(&c.tcp_n(Ext, node_ip(30070), 30), &[A, B, C]).unwrap();
}

pub fn load_balancer_source_ranges_admit_listed_clients_and_drop_others(c: &mut Cluster) {
    let allowed = Svc::new("allowed", "10.96.0.71")
        .tcp("http", 80, HTTP)
        .load_balancer("203.0.113.11")
        .source_ranges(&["192.168.50.2/32", "10.0.0.0/8"]);
    let denied = Svc::new("denied", "10.96.0.72")
        .tcp("http", 80, HTTP)
        .load_balancer("203.0.113.12")
        .source_ranges(&["192.168.99.0/24"]);
    c.apply(
        "ranges",
        vec![
            allowed.into(),
            Slice::v4("allowed").tcp("http", HTTP).ready(&[A, B]).into(),
            denied.into(),
            Slice::v4("denied").tcp("http", HTTP).ready(&[A, B]).into(),
        ],
    );
    let took = c.until_served(Ext, Tcp, at("203.0.113.11", 80), &[A, B]);
    println!("services written -> allowed LB traffic: {took:?}");
    // Both Services arrive in one sync. Before it, ext got "unreachable" (the node's prohibit
    // route for the LB range); from it on, the source range must drop ext's connections.
    let took = c.until_fails(Ext, Tcp, at("203.0.113.12", 80), "timeout");
    println!(
        "services written -> denied LB traffic dropped: {took:?} (including the 400 ms attempt)"
    );

    served_by(&c.tcp_n(Ext, at("203.0.113.11", 80), 20), &[A, B]).unwrap();
    let r = c.probe(
        Ext,
        Tcp,
        at("203.0.113.12", 80),
        3,
        crate::client::DROP_TIMEOUT,
    );
    all_failed(&r, "timeout").unwrap();
    // Source ranges guard the LB IP only: the denied Service's ClusterIP still serves pods.
    served_by(&c.tcp_n(Client, at("10.96.0.72", 80), 20), &[A, B]).unwrap();
}

/// Checks a healthCheckNodePort answer: `code` and the `localEndpoints` count in its JSON.
fn health(c: &Cluster, port: u16, code: u16, local: u64) -> Result<String, String> {
    let (status, body) = c.http_get(Ext, node_ip(port), "/")?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{status} {body:?}: {e}"))?;
    if status == code && json["localEndpoints"] == local {
        Ok(body)
    } else {
        Err(format!(
            "{status} {body}, want {code} with localEndpoints {local}"
        ))
    }
}

pub fn health_check_node_port_reports_whether_there_are_local_endpoints(c: &mut Cluster) {
    let local = Svc::new("hc-local", "10.96.0.80")
        .tcp("http", 80, HTTP)
        .node_port("http", 30090)
        .external_local()
        .load_balancer("203.0.113.20")
        .health_check_node_port(32100);
    let remote = Svc::new("hc-remote", "10.96.0.81")
        .tcp("http", 80, HTTP)
        .node_port("http", 30091)
        .external_local()
        .load_balancer("203.0.113.21")
        .health_check_node_port(32101);
    c.apply(
        "hc",
        vec![
            local.into(),
            Slice::v4("hc-local")
                .tcp("http", HTTP)
                .ready(&[A, B, C])
                .into(),
            remote.into(),
            Slice::v4("hc-remote").tcp("http", HTTP).ready(&[C]).into(),
        ],
    );
    let (body, took) = crate::client::poll(
        "healthCheckNodePort 32100 to say 200",
        crate::client::WAIT,
        || health(c, 32100, 200, 2),
    );
    println!("services written -> health check 200: {took:?} ({body})");
    let (body, took) = crate::client::poll(
        "healthCheckNodePort 32101 to say 503",
        crate::client::WAIT,
        || health(c, 32101, 503, 0),
    );
    println!("services written -> health check 503: {took:?} ({body})");

    // The count follows the endpoints: pod-b leaves node1's share.
    c.apply(
        "hc",
        vec![
            Svc::new("hc-local", "10.96.0.80")
                .tcp("http", 80, HTTP)
                .node_port("http", 30090)
                .external_local()
                .load_balancer("203.0.113.20")
                .health_check_node_port(32100)
                .into(),
            Slice::v4("hc-local")
                .tcp("http", HTTP)
                .ready(&[A, C])
                .into(),
        ],
    );
    let (_, took) = crate::client::poll(
        "healthCheckNodePort 32100 to count 1",
        crate::client::WAIT,
        || health(c, 32100, 200, 1),
    );
    println!("endpoint removed -> health check count: {took:?}");
    let r = c.tcp_n(Ext, at("203.0.113.20", 80), 20);
    served_by(&r, &[A]).unwrap_or_else(|e| panic!("{e}; {:?}", tally(&r)));
}
