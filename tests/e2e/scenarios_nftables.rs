//! Scenarios only nftables mode has: localhost NodePorts through the userspace relay
//! (`--nodeport-addresses` with `localhost`, KEP-6032), on 127.0.0.1 and ::1, TCP only; without
//! the keyword (the default, `primary`) loopback serves no NodePort, as upstream. ServiceCIDRs:
//! an address in one that no Service has is dropped, a ClusterIP's undefined port rejected.
//!
//! Invariants: traffic is from the node itself to its loopback; nothing in the node namespace
//! listens on the NodePorts but the relay, so without it a connection is refused.

use crate::client::{Proto::*, all_failed, at, masqueraded, seen, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc};
use crate::topology::{A, B, C, Client, Ext, HTTP, Node};

fn services(c: &mut Cluster) {
    let svc = Svc::new("lnp", "10.96.0.92")
        .dual_stack("fd00:96::92")
        .tcp("http", 80, HTTP)
        .node_port("http", 30092);
    let v4 = Slice::v4("lnp").tcp("http", HTTP).ready(&[A, B, C]);
    let v6 = Slice::v6("lnp").tcp("http", HTTP).ready(&[A, B, C]);
    let local = Svc::new("lnl", "10.96.0.93")
        .tcp("http", 80, HTTP)
        .node_port("http", 30093)
        .external_local();
    let local_slice = Slice::v4("lnl").tcp("http", HTTP).ready(&[A, C]);
    c.apply(
        "lnp",
        vec![
            svc.into(),
            v4.into(),
            v6.into(),
            local.into(),
            local_slice.into(),
        ],
    );
}

pub fn localhost_node_ports_are_relayed_on_both_loopbacks_with_the_keyword_only(c: &mut Cluster) {
    services(c);
    // The default (`primary`): the node's InternalIP serves, loopback does not.
    c.until_served(Node, Tcp, at(&Node.v4(), 30092), &[A, B, C]);
    c.until_fails(Node, Tcp, at("127.0.0.1", 30092), "refused");

    c.stop_kproxy();
    c.start_kproxy_with(&["--nodeport-addresses=primary,localhost"]);
    let took = c.until_served(Node, Tcp, at("127.0.0.1", 30092), &[A, B, C]);
    println!("restart with localhost -> 127.0.0.1 NodePort served: {took:?}");
    let r = c.tcp_n(Node, at("127.0.0.1", 30092), 30);
    served_by(&r, &[A, B, C]).unwrap();
    // The pods see the node (the relay connects from it), never a loopback address.
    masqueraded(&r).unwrap();
    let took = c.until_served(Node, Tcp, at("::1", 30092), &[A, B, C]);
    println!("-> [::1] NodePort served: {took:?}");
    let r = c.tcp_n(Node, at("::1", 30092), 30);
    served_by(&r, &[A, B, C]).unwrap();
    assert!(
        seen(&r).iter().all(|s| s.starts_with("fd00:244:")),
        "{:?}",
        seen(&r)
    );
    // externalTrafficPolicy Local: only this node's endpoint (pod-c counts as node2's).
    let r = c.tcp_n(Node, at("127.0.0.1", 30093), 10);
    served_by(&r, &[A]).unwrap();
    // The primary address still serves through the rules.
    let r = c.tcp_n(Node, at(&Node.v4(), 30092), 30);
    served_by(&r, &[A, B, C]).unwrap();

    // A Service gone: its localhost NodePort refuses again.
    c.delete("lnp");
    let took = c.until_fails(Node, Tcp, at("127.0.0.1", 30092), "refused");
    println!("service deleted -> 127.0.0.1 NodePort refused: {took:?}");
}

/// A ServiceCIDR (`networking.k8s.io/v1`) as the API server keeps one.
fn service_cidr(name: &str, cidrs: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name}, "spec": {"cidrs": cidrs},
    })
}

pub fn service_cidrs_drop_unallocated_addresses_and_undefined_cluster_ip_ports_are_rejected(
    c: &mut Cluster,
) {
    let vip = "10.96.0.94";
    let svc = Svc::new("sc", vip).tcp("http", 80, HTTP);
    let slice = Slice::v4("sc").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("sc", vec![svc.into(), slice.into()]);
    c.until_served(Client, Tcp, at(vip, 80), &[A, B, C]);
    // A port the Service does not define is rejected by kproxy (ext would answer on HTTP).
    c.until_fails(Client, Tcp, at(vip, HTTP), "refused");
    // Without a ServiceCIDR, an address no Service has is not kproxy's: ext answers it.
    let unallocated = at("10.96.0.250", HTTP);
    c.until_served(Client, Tcp, unallocated, &[Ext]);

    c.apply(
        "cidr",
        vec![service_cidr(
            "kubernetes",
            &["10.96.0.0/16", "fd00:96::/108"],
        )],
    );
    let took = c.until_fails(Client, Tcp, unallocated, "timeout");
    println!("ServiceCIDR written -> unallocated ClusterIP dropped: {took:?}");
    let r = c.tcp_n(Client, at(vip, 80), 30);
    served_by(&r, &[A, B, C]).unwrap();
    let r = c.probe(Client, Tcp, at(vip, HTTP), 3, crate::client::DROP_TIMEOUT);
    all_failed(&r, "refused").unwrap();
    // Outside the ServiceCIDR: untouched.
    c.until_served(Client, Tcp, at("10.97.0.250", HTTP), &[Ext]);

    c.delete("cidr");
    let took = c.until_served(Client, Tcp, unallocated, &[Ext]);
    println!("ServiceCIDR deleted -> unallocated address not dropped: {took:?}");
}
