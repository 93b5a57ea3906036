//! What the node and kproxy's configuration decide, in every mode: a draining Node fails
//! /healthz but keeps serving (KEP-3836), NodePorts answer on the addresses
//! `--nodeport-addresses` defaults to per mode (nftables: the Node's primary InternalIP; the
//! others: every address), and another masquerade bit still masquerades.
//!
//! Invariants: /healthz is read on the node's 127.0.0.1:10256 (support::Kproxy); the
//! node's pod-side address 10.244.9.1 (the client's gateway) is a local address that is not
//! the Node's InternalIP; every change is polled for with a deadline.

use std::time::Duration;

use crate::client::{Proto::*, at, masqueraded, poll, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc, this_node, this_node_draining, web};
use crate::topology::{A, B, C, Client, Ext, HTTP, Node};

/// /healthz's status and whether its body says the node is eligible (the e2e kproxy serves it
/// on the node's 127.0.0.1:10256).
fn healthz(c: &Cluster, path: &str) -> Result<(u16, bool), String> {
    let (code, body) = c.health(path)?;
    Ok((code, body["nodeEligible"] != false))
}

fn until_health(c: &Cluster, path: &str, want: u16) -> Duration {
    let what = format!("{path} to answer {want}");
    let probe = || match healthz(c, path)? {
        (code, _) if code == want => Ok(()),
        other => Err(format!("{other:?}")),
    };
    poll(&what, Duration::from_secs(15), probe).1
}

pub fn a_draining_node_fails_healthz_keeps_livez_and_keeps_serving(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(crate::manifests::WEB, HTTP), &[A, B, C]);
    until_health(c, "/healthz", 200);

    c.apply("node1", vec![this_node_draining()]);
    let took = until_health(c, "/healthz", 503);
    println!("Node tainted ToBeDeletedByClusterAutoscaler -> /healthz 503: {took:?}");
    assert_eq!(healthz(c, "/healthz").unwrap(), (503, false));
    assert_eq!(
        healthz(c, "/livez").unwrap().0,
        200,
        "/livez ignores the Node"
    );
    let r = c.tcp_n(Client, at(crate::manifests::WEB, HTTP), 30);
    served_by(&r, &[A, B, C]).unwrap();

    c.apply("node1", vec![this_node()]);
    let took = until_health(c, "/healthz", 200);
    println!("taint removed -> /healthz 200: {took:?}");
}

pub fn node_ports_answer_on_the_primary_ip_in_nftables_mode_and_on_every_address_elsewhere(
    c: &mut Cluster,
) {
    let svc = Svc::new("npa", "10.96.0.95")
        .tcp("http", 80, HTTP)
        .node_port("http", 30095);
    let slice = Slice::v4("npa").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("npa", vec![svc.into(), slice.into()]);
    let took = c.until_served(Ext, Tcp, at(&Node.v4(), 30095), &[A, B, C]);
    println!("service written -> NodePort on the InternalIP: {took:?}");
    let gateway = at(&Client.gateway_v4(), 30095);
    if c.mode.name == "nftables" {
        // Nothing listens there: without kproxy's rules the node refuses.
        c.until_fails(Client, Tcp, gateway, "refused");
    } else {
        c.until_served(Client, Tcp, gateway, &[A, B, C]);
    }
}

pub fn another_masquerade_bit_still_masquerades(c: &mut Cluster) {
    let svc = Svc::new("mb", "10.96.0.96")
        .tcp("http", 80, HTTP)
        .node_port("http", 30096);
    let slice = Slice::v4("mb").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("mb", vec![svc.into(), slice.into()]);
    c.stop_kproxy();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         nftables:\n  masqueradeBit: 5\niptables:\n  masqueradeBit: 5\n",
    )
    .expect("write the config");
    let config = format!("--config={}", config.display());
    c.start_kproxy_with(&[&config]);
    let took = c.until_served(Node, Tcp, at("10.96.0.96", 80), &[A, B, C]);
    println!("restart with masquerade bit 5 -> served: {took:?}");
    // The node's own connections and external ones to a NodePort (policy Cluster) masquerade.
    masqueraded(&c.tcp_n(Node, at("10.96.0.96", 80), 10)).unwrap();
    masqueraded(&c.tcp_n(Ext, at(&Node.v4(), 30096), 10)).unwrap();
    // Traffic is served once the IPv4 rules are in; the IPv6 rules come in the same sync,
    // whose end the timestamp marks.
    c.until_metric_positive(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"}",
    );
    let rules = c.mode.rules(&c.topo.node);
    // nft prints marks as 0x00000020, iptables-save as 0x20.
    let bit5 = rules.contains("0x00000020") || rules.contains("0x20/0x20");
    let bit14 = rules.contains("0x00004000") || rules.contains("0x4000");
    assert!(bit5 && !bit14, "the mark is bit 5's:\n{rules}");
}
