//! Scenarios for changes to this node's Node object (k/k#138183, where upstream exits to start
//! over): with `--nodeport-addresses primary`, a NodePort moves to the Node's new InternalIP
//! without a restart; when the Node is deleted, kproxy keeps serving on its last facts and
//! `/healthz` says the node is not eligible (503, `nodeEligible: false`).
//!
//! Invariants: the node gets a second address, 192.168.50.3, on its link to `ext`; a NodePort
//! not served on an address of the node is refused there by the node itself.

use serde_json::Value;

use crate::client::{Proto::*, at, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc, this_node};
use crate::topology::{A, B, Ext, HTTP, Node};

const SECOND: &str = "192.168.50.3";
const NODE_PORT: u16 = 30090;

/// This node's Node with `ip` as its IPv4 InternalIP.
fn node_at(ip: &str) -> Value {
    let mut node = this_node();
    node["status"]["addresses"][0]["address"] = Value::from(ip);
    node
}

/// kproxy's `/healthz` from inside the node: (status, `nodeEligible`).
fn healthz(c: &Cluster) -> Result<(u16, Value), String> {
    let (code, body) = c.health("/healthz")?;
    Ok((code, body["nodeEligible"].clone()))
}

pub fn a_primary_node_port_follows_the_nodes_internal_ip_and_outlives_the_node(c: &mut Cluster) {
    c.topo
        .node
        .ip(&["addr", "add", &format!("{SECOND}/24"), "dev", "vext"]);
    c.stop_kproxy();
    c.start_kproxy_with(&["--nodeport-addresses", "primary"]);
    let svc = Svc::new("np", "10.96.0.60")
        .tcp("http", 80, HTTP)
        .node_port("http", NODE_PORT);
    let slice = Slice::v4("np").tcp("http", HTTP).ready(&[A, B]);
    c.apply("np", vec![svc.into(), slice.into()]);
    let (first, second) = (at(&Node.v4(), NODE_PORT), at(SECOND, NODE_PORT));
    c.until_served(Ext, Tcp, first, &[A, B]);
    c.until_fails(Ext, Tcp, second, "refused");

    c.apply("node1", vec![node_at(SECOND)]);
    let took = c.until_served(Ext, Tcp, second, &[A, B]);
    println!("InternalIP changed -> NodePort on the new address: {took:?}");
    let took = c.until_fails(Ext, Tcp, first, "refused");
    println!("InternalIP changed -> NodePort gone from the old address: {took:?}");

    c.delete("node1");
    let (_, took) = crate::client::poll(
        "/healthz 503, nodeEligible false",
        crate::client::WAIT,
        || match healthz(c)? {
            (503, Value::Bool(false)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    println!("Node deleted -> /healthz 503: {took:?}");
    // Still served on the last InternalIP, also after a change that makes kproxy sync.
    served_by(&c.tcp_n(Ext, second, 12), &[A, B]).unwrap();
    let svc = Svc::new("np2", "10.96.0.61")
        .tcp("http", 80, HTTP)
        .node_port("http", NODE_PORT + 1);
    let slice = Slice::v4("np2").tcp("http", HTTP).ready(&[A]);
    c.apply("np2", vec![svc.into(), slice.into()]);
    c.until_served(Ext, Tcp, at(SECOND, NODE_PORT + 1), &[A]);
    served_by(&c.tcp_n(Ext, second, 12), &[A, B]).unwrap();

    // Back, at its first address: followed again, and eligible.
    c.apply("node1", vec![node_at(&Node.v4())]);
    c.until_served(Ext, Tcp, first, &[A, B]);
    c.until_fails(Ext, Tcp, second, "refused");
    assert_eq!(healthz(c).unwrap(), (200, Value::Bool(true)));
}
