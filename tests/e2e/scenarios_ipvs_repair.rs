//! IPVS mode's repairs when someone else removes what it programmed: the dummy interface
//! deleted (an operator, a network manager, a CNI reset), `kproxy --cleanup` run while kproxy
//! runs, and a restart after `--cleanup` on a node where the interface was already gone.
//!
//! Invariants: traffic is checked from the client pod; each repair is required within 1 s,
//! waited for with the suite's generous deadline, and the measured time is printed (BENCHMARKS.md
//! tracks it); the virtual servers are read with `ipvsadm -Ln` in the node namespace.

use std::time::Instant;

use crate::client::{Proto::*, at};
use crate::cluster::Cluster;
use crate::manifests::{WEB, web};
use crate::topology::{A, B, C, Client, HTTP};

fn servers(c: &Cluster) -> usize {
    c.topo
        .node
        .exec("ipvsadm", &["-Ln"])
        .lines()
        .filter(|l| l.starts_with("TCP") || l.starts_with("UDP") || l.starts_with("SCTP"))
        .count()
}

pub fn the_dummy_interface_deleted_by_someone_else_is_repaired(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    let deleted = Instant::now();
    c.topo.node.exec("ip", &["link", "del", "kproxy-ipvs0"]);
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!(
        "kproxy-ipvs0 deleted -> traffic restored: {:?} (polling {took:?}; requirement: 1 s)",
        deleted.elapsed()
    );
    c.until_metric_positive("kproxy_rules_drift_repairs_total");
    // Repaired for good: a later change still reaches the kernel.
    c.apply("web", web(&[A, B]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B]);
}

pub fn cleanup_while_kproxy_runs_is_repaired(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    let cleaned = Instant::now();
    c.cleanup();
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!(
        "kproxy --cleanup under a running kproxy -> traffic restored: {:?} (polling {took:?}; requirement: 1 s)",
        cleaned.elapsed()
    );
    c.apply("web", web(&[A, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, C]);
}

pub fn a_restart_after_cleanup_without_the_interface_serves_at_once(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    c.stop_kproxy();
    c.topo.node.exec("ip", &["link", "del", "kproxy-ipvs0"]);
    assert!(servers(c) > 0, "the servers outlive the interface");
    c.cleanup();
    assert_eq!(
        servers(c),
        0,
        "--cleanup removes kproxy's servers without the interface:\n{}",
        c.topo.node.exec("ipvsadm", &["-Ln"])
    );
    let starting = Instant::now();
    c.start_kproxy();
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!(
        "kproxy started after --cleanup -> traffic: {:?} (polling {took:?})",
        starting.elapsed()
    );
}
