//! Scenarios only iptables mode has: localhost NodePorts (on by default, as upstream's iptables
//! mode; off with `--iptables-localhost-nodeports=false`), which the nftables mode does not
//! offer (upstream's nftables mode does not either).
//!
//! Invariants: traffic is from the node itself to 127.0.0.1; nothing in the node namespace
//! listens on the NodePort, so without kproxy's rule a connection is refused.

use crate::client::{Proto::*, at, masqueraded, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc};
use crate::topology::{A, B, C, Node};

fn node_port_service(c: &mut Cluster) {
    let svc = Svc::new("lnp", "10.96.0.90")
        .tcp("http", 80, crate::topology::HTTP)
        .node_port("http", 30090);
    let slice = Slice::v4("lnp")
        .tcp("http", crate::topology::HTTP)
        .ready(&[A, B, C]);
    c.apply("lnp", vec![svc.into(), slice.into()]);
}

pub fn a_node_port_answers_on_localhost_from_the_node(c: &mut Cluster) {
    node_port_service(c);
    let took = c.until_served(Node, Tcp, at("127.0.0.1", 30090), &[A, B, C]);
    println!("service written -> localhost NodePort traffic: {took:?}");
    let r = c.tcp_n(Node, at("127.0.0.1", 30090), 20);
    served_by(&r, &[A, B, C]).unwrap();
    // The pods must see the node's address, never 127.0.0.1, or they could not answer.
    masqueraded(&r).unwrap();
}

pub fn localhost_node_ports_can_be_turned_off(c: &mut Cluster) {
    node_port_service(c);
    c.until_served(Node, Tcp, at("127.0.0.1", 30090), &[A, B, C]);
    c.stop_kproxy();
    c.start_kproxy_with(&["--iptables-localhost-nodeports=false"]);
    let took = c.until_fails(Node, Tcp, at("127.0.0.1", 30090), "refused");
    println!("restart without localhost NodePorts -> 127.0.0.1 refused: {took:?}");
    // The node's own address still serves the NodePort.
    let r = c.tcp_n(Node, at(&Node.v4(), 30090), 20);
    served_by(&r, &[A, B, C]).unwrap();
}
