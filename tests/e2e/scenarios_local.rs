//! `--detect-local-mode`: which sources count as this node's pods. A pod's connection to a
//! ClusterIP keeps its source when it is local traffic and is masqueraded when it is not (as
//! upstream, whose rule masquerades ClusterIP traffic that is not local), in every proxy mode.
//!
//! Invariants: the Service `dl` has one endpoint, pod-b, so the address pod-b saw says whether
//! the node masqueraded (10.244.2.1, the node's side of pod-b's link) or not (the client's own
//! address). Pods' node-side interfaces are `vp1` (pod-a), `vp2`, `vp3` and `vp9` (client).
//! Every change is waited for by polling; each prints how long it took.

use std::time::Duration;

use crate::client::{Outcome, Proto::*, at, poll, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc, this_node_with_pod_cidrs};
use crate::topology::{A, B, Client, HTTP, Host};

const VIP: &str = "10.96.0.70";

fn dl_service(c: &mut Cluster) {
    let svc = Svc::new("dl", VIP).tcp("http", 80, HTTP);
    let slice = Slice::v4("dl").tcp("http", HTTP).ready(&[B]);
    c.apply("dl", vec![svc.into(), slice.into()]);
    c.until_served(Client, Tcp, at(VIP, 80), &[B]);
}

/// The address pod-b saw for connections from `from`: its own (kept) or the node's.
fn source_seen(c: &Cluster, from: Host) -> Result<String, String> {
    let r: Vec<Outcome> = c.tcp_n(from, at(VIP, 80), 3);
    served_by(&r, &[B])?;
    let seen: Vec<&String> = r.iter().flatten().map(|(_, s)| s).collect();
    match seen.as_slice() {
        [a, rest @ ..] if rest.iter().all(|s| s == a) => Ok(a.to_string()),
        _ => Err(format!("mixed sources {seen:?}")),
    }
}

/// Waits until connections from `from` keep their source (`kept`) or are masqueraded.
fn until(c: &Cluster, from: Host, kept: bool) -> Duration {
    let want = if kept { from.v4() } else { B.gateway_v4() };
    let what = format!("pod-b to see {want} from {}", from.name());
    let probe = || match source_seen(c, from)? {
        s if s == want => Ok(()),
        s => Err(format!("pod-b saw {s}")),
    };
    poll(&what, Duration::from_secs(15), probe).1
}

fn restart_with(c: &mut Cluster, flags: &[&str]) {
    c.stop_kproxy();
    c.start_kproxy_with(flags);
}

pub fn detect_local_by_interface_keeps_the_source_of_pods_behind_it_and_masquerades_the_rest(
    c: &mut Cluster,
) {
    dl_service(c);
    // The cluster's default: ClusterCIDR 10.244.0.0/16, every pod is local.
    until(c, A, true);
    until(c, Client, true);

    restart_with(
        c,
        &[
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=vp9",
        ],
    );
    let took = until(c, A, false);
    println!("restart with BridgeInterface vp9 -> pod-a masqueraded: {took:?}");
    until(c, Client, true);

    restart_with(
        c,
        &[
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=vp",
        ],
    );
    let took = until(c, A, true);
    println!("restart with InterfaceNamePrefix vp -> pod-a kept: {took:?}");
    until(c, Client, true);

    restart_with(
        c,
        &[
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=vq",
        ],
    );
    let took = until(c, A, false);
    println!("restart with InterfaceNamePrefix vq -> pod-a masqueraded: {took:?}");
    until(c, Client, false);
}

pub fn detect_local_by_node_cidr_follows_the_nodes_pod_cidrs_as_they_change(c: &mut Cluster) {
    dl_service(c);
    restart_with(c, &["--detect-local-mode=NodeCIDR"]);
    // node1's podCIDRs are 10.244.0.0/16 and fd00:244::/32: every pod is local.
    until(c, A, true);

    c.apply("node1", vec![this_node_with_pod_cidrs(&["10.244.9.0/24"])]);
    let took = until(c, A, false);
    println!("podCIDRs 10.244.9.0/24 -> pod-a masqueraded: {took:?}");
    until(c, Client, true);

    c.apply("node1", vec![this_node_with_pod_cidrs(&["10.244.1.0/24"])]);
    let took = until(c, A, true);
    println!("podCIDRs 10.244.1.0/24 -> pod-a kept: {took:?}");
    let took = until(c, Client, false);
    println!("podCIDRs 10.244.1.0/24 -> client masqueraded: {took:?}");

    // A restart adopts the rules and keeps following the Node.
    restart_with(c, &["--detect-local-mode=NodeCIDR"]);
    until(c, A, true);
    until(c, Client, false);
}
