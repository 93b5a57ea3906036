//! Scenarios for stale UDP conntrack flows: a client that keeps one flow (a fixed source port)
//! must reach the new endpoint soon after its endpoint is replaced, although the old one is still
//! up and answering; TCP flows are left alone; a kproxy restart deletes no flow that is right.
//!
//! Invariants: the old endpoint keeps running and answering throughout, so only a deleted
//! conntrack flow can move the client (without the reconciler the flow stays on the old endpoint
//! for as long as the client keeps talking); each scenario prints how long the move took (goal:
//! 1 s); flows are read with the `conntrack` tool inside the node's namespace only.

use std::time::{Duration, Instant};

use crate::client::{self, Outcome, Proto::*, at};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc, WEB, web};
use crate::topology::{A, B, Client, DNS, Ext, HTTP, Host, Node};

/// The one UDP query of a client pinned to `src_port`, from `from` to `to`.
fn pinned(c: &Cluster, from: Host, src_port: u16, to: std::net::SocketAddr) -> Outcome {
    c.topo
        .ns(from)
        .run(move || client::udp_from(src_port, to, client::POLL_TIMEOUT))
}

fn server(o: &Outcome) -> Result<&str, String> {
    o.as_ref()
        .map(|(s, _)| s.as_str())
        .map_err(|e| format!("no answer: {e}"))
}

/// Polls the pinned client until `host` answers it; returns how long that took.
fn until_pinned_reaches(
    c: &Cluster,
    from: Host,
    src_port: u16,
    to: std::net::SocketAddr,
    host: Host,
) -> Duration {
    let what = format!("the client on port {src_port} to reach {host:?} through {to}");
    client::poll(&what, client::WAIT, || {
        let o = pinned(c, from, src_port, to);
        match server(&o)? {
            s if s == host.name() => Ok(()),
            s => Err(format!("answered by {s}")),
        }
    })
    .1
}

/// `conntrack -L ARGS -o id` in the node's namespace: the ids of the matching flows.
fn flow_ids(c: &Cluster, args: &[&str]) -> Vec<String> {
    let mut all = vec!["-L"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "id"]);
    let out = c.topo.node.exec("conntrack", &all);
    let mut ids: Vec<String> = out
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("id="))
        .map(str::to_string)
        .collect();
    ids.sort();
    ids
}

pub fn a_pinned_udp_client_moves_to_the_new_endpoint_of_a_cluster_ip(c: &mut Cluster) {
    c.apply("web", web(&[A]));
    c.until_served(Client, Udp, at(WEB, DNS), &[A]);
    let (port, vip) = (40053, at(WEB, DNS));
    assert_eq!(server(&pinned(c, Client, port, vip)), Ok(A.name()));
    // A TCP flow to the same Service, answered by A; conntrack keeps it (TIME_WAIT) after close.
    assert_eq!(server(&c.tcp(Client, at(WEB, HTTP))), Ok(A.name()));
    let tcp_before = flow_ids(c, &["-p", "tcp", "--orig-dst", WEB]);
    assert!(!tcp_before.is_empty(), "no TCP flow to {WEB} in conntrack");

    c.apply("web", web(&[B]));
    let changed = Instant::now();
    let took = until_pinned_reaches(c, Client, port, vip, B);
    println!("endpoint replaced -> pinned UDP client on the new endpoint: {took:?}");
    let tcp_after = flow_ids(c, &["-p", "tcp", "--orig-dst", WEB]);
    assert!(
        tcp_before.iter().all(|id| tcp_after.contains(id)),
        "a TCP flow was deleted: before {tcp_before:?}, after {tcp_after:?} ({:?} after the change)",
        changed.elapsed()
    );
    c.until_metric_positive(
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"}",
    );
}

pub fn a_pinned_udp_client_moves_to_the_new_endpoint_of_a_node_port(c: &mut Cluster) {
    let svc = |hosts: &[Host]| {
        vec![
            Svc::new("dnsnp", "10.96.0.60")
                .udp("dns", 53, DNS)
                .node_port("dns", 30053)
                .into(),
            Slice::v4("dnsnp").udp("dns", DNS).ready(hosts).into(),
        ]
    };
    let node_port = at(&Node.v4(), 30053);
    c.apply("dnsnp", svc(&[A]));
    c.until_served(Ext, Udp, node_port, &[A]);
    let port = 40054;
    assert_eq!(server(&pinned(c, Ext, port, node_port)), Ok(A.name()));

    c.apply("dnsnp", svc(&[B]));
    let took = until_pinned_reaches(c, Ext, port, node_port, B);
    println!("endpoint replaced -> pinned UDP client on the new NodePort endpoint: {took:?}");
}

pub fn restarting_kproxy_leaves_correct_udp_flows_in_place(c: &mut Cluster) {
    c.apply("web", web(&[A, B]));
    c.until_served(Client, Udp, at(WEB, DNS), &[A, B]);
    let (port, vip) = (40055, at(WEB, DNS));
    let first = pinned(c, Client, port, vip);
    let pinned_to = server(&first).unwrap().to_string();
    let filter = ["-p", "udp", "--orig-port-src", "40055"];
    let before = flow_ids(c, &filter);
    assert_eq!(before.len(), 1, "one pinned flow: {before:?}");

    c.stop_kproxy();
    c.start_kproxy();
    // The restarted kproxy has synced and reconciled once (its metric exists from its first
    // reconcile on; a fresh process starts it at zero).
    c.until_metric_positive(
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"}",
    );
    let after = flow_ids(c, &filter);
    assert_eq!(after, before, "the restart deleted a correct flow");
    assert_eq!(
        server(&pinned(c, Client, port, vip)),
        Ok(pinned_to.as_str())
    );
}
