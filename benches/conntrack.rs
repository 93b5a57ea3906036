//! Cost of one conntrack reconciliation (issue 5) with 100,000 UDP flows present: 1,000 UDP
//! Services × 10 endpoints, 100 flows per Service answered by their endpoints (right, kept),
//! and a number of stale ones (answered by an endpoint that left) that each run deletes; plus a
//! run with nothing stale. The real `CtReconciler` over ctnetlink, in a throwaway namespace.
//!
//! Invariants: root only (a skip says why; a failure under CI=true); the flows are created over
//! ctnetlink in the bench's own namespace, never the host's; each timed run is checked: it must
//! delete exactly the stale flows and leave the 100,000 right ones. Without `--bench` (test
//! mode) it runs 1,000 flows once.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use kproxy::backends::Plans;
use kproxy::conntrack::ctnetlink::Ctnetlink;
use kproxy::conntrack::stale::Flow;
use kproxy::conntrack::{CtReconciler, Reconciler};
use kproxy::metrics::Metrics;
use kproxy::model::plan::{Planned, plan};
use kproxy::model::{Endpoint, IpFamily, NamespacedName, Protocol, ServicePort, ServicePortName};
use kproxy::node::NodeFacts;
use support::netns::Netns;
use support::timings;

const BENCH: &str = "conntrack bench";
const SERVICES: u32 = 1_000;
const ENDPOINTS: u32 = 10;

fn v4(a: u8, i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

fn endpoint_ip(service: u32, k: u32) -> IpAddr {
    v4(100, service * 16 + k)
}

fn node() -> NodeFacts {
    let mut n = NodeFacts::new(support::NODE);
    n.local_addresses = vec!["192.168.0.2".parse().expect("static address")];
    n
}

/// UDP Service i on 10.x:53, ten serving endpoints on port 5353.
fn plans() -> Plans {
    let mut plans = Plans::new();
    for i in 0..SERVICES {
        let name = ServicePortName::new(
            NamespacedName::new("default", format!("dns-{i}")),
            "dns",
            Protocol::Udp,
        );
        let port = ServicePort::cluster_ip(name.clone(), v4(10, i), 53);
        let endpoints: Vec<Endpoint> = (0..ENDPOINTS)
            .map(|k| Endpoint {
                ip: endpoint_ip(i, k),
                port: 5353,
                ready: true,
                serving: true,
                terminating: false,
                place: kproxy::model::types::Place::on_node(&format!("node{}", k % 7)),
            })
            .collect();
        let p = plan(&port, &endpoints, &node());
        plans.insert(
            name,
            Arc::new(Planned {
                port,
                endpoints,
                plan: p,
            }),
        );
    }
    plans
}

/// Flow `n` to Service `n % SERVICES` from client 10.244.x:(n-derived port), answered by
/// endpoint `n % ENDPOINTS`, or (stale) by an address no endpoint has.
fn flow(n: u32, stale: bool) -> Flow {
    let service = n % SERVICES;
    let reply_ip = if stale {
        v4(101, n)
    } else {
        endpoint_ip(service, n % ENDPOINTS)
    };
    Flow {
        protocol: Protocol::Udp,
        orig_src: SocketAddr::new(v4(11, n / 50_000), 10_000 + (n % 50_000) as u16),
        orig_dst: SocketAddr::new(v4(10, service), 53),
        reply_src: SocketAddr::new(reply_ip, 5353),
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let Some(_ns) = Netns::enter(BENCH) else {
        return;
    };
    let (right, stale, runs) = if bench {
        (100_000, 1_000, 7)
    } else {
        (1_000, 10, 1)
    };
    let plans = plans();
    let node = node();
    let mut ct = Ctnetlink::open().expect("ctnetlink");
    let made = timings::time(
        &format!("create {right} right flows over ctnetlink"),
        || {
            for n in 0..right {
                ct.create(IpFamily::V4, &flow(n, false), 600)
                    .unwrap_or_else(|e| {
                        panic!("creating flow {n}: {e} (nf_conntrack_max too low?)")
                    });
            }
        },
    );
    println!("created {right} flows in {made:.2?}");
    let mut reconciler = CtReconciler::new(Arc::new(Metrics::new()));
    for run in 0..runs {
        // Odd runs have nothing stale: the cost of checking alone.
        let with_stale = run % 2 == 0;
        let n_stale = if with_stale { stale } else { 0 };
        for n in 0..n_stale {
            ct.create(IpFamily::V4, &flow(right + n, true), 600)
                .expect("creating a stale flow");
        }
        let mut deleted = 0;
        let name = format!("reconcile, {right} right flows + {n_stale} stale");
        let took = timings::time(&name, || {
            deleted = reconciler.reconcile(&plans, &node).expect("reconcile");
        });
        assert_eq!(deleted, n_stale as usize, "run {run}: deleted {deleted}");
        let left = ct.dump(IpFamily::V4, Protocol::Udp).expect("dump").len();
        assert_eq!(left, right as usize, "run {run}: {left} flows left");
        println!("{name}: {took:.2?}");
    }
    timings::report();
}
