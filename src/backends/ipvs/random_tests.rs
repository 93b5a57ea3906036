//! A long randomized (seeded, deterministic) sequence of plan changes from
//! `backends::random_world` (the world the nftables and iptables backends' random tests use)
//! applied through `sync_partial` on one IPVS fake kernel, checked after every step: the kernel
//! holds exactly what a fresh full sync programs (servers, live destinations, addresses,
//! companion elements), and every packet to every service address, old and new, meets in the
//! fake kernel (its virtual servers and companion sets, traced here) what the plans say.
//!
//! Invariants: the oracle (`expected`, `kproxy explain`'s answer) reads only the plans and the
//! node, never the backend's compile; a failure replays from its step number. The oracle, the packets and the tracer
//! also judge `backends::property_tests`' random cases.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::IpvsBackend;
use super::fake_kernel::{FakeKernel, FakeState};
use super::netlink::ServiceKey;
use crate::backends::random_world::World;
use crate::backends::{Backend, Plans};
use crate::model::IpFamily;
use crate::node::NodeFacts;
use crate::testing::{config, ip, node};

const SEED: u64 = 0x2545_f491_4f6c_dd1d;
const STEPS: usize = 300;

pub(crate) use super::trace::{Fate, Packet};

/// What the plans say happens to `p` in IPVS mode: `kproxy explain`'s answer (whose eTP=Local
/// traffic from pods and the node uses the local endpoints too, as upstream's IPVS mode).
pub(crate) fn expected(plans: &Plans, node: &NodeFacts, p: &Packet) -> Fate {
    use crate::explain::{self, Verdict};
    let facts = explain::Facts {
        mode: crate::backends::ProxyMode::Ipvs,
        node,
        config: &Default::default(),
    };
    let packet = explain::Packet {
        proto: p.proto,
        src: p.saddr,
        dst: p.daddr,
        dport: p.dport,
    };
    let e = explain::explain(plans, &facts, &packet);
    match e.verdict {
        Verdict::Dnat => Fate::Dnat(e.endpoints.iter().map(|a| (a.ip(), a.port())).collect()),
        Verdict::Reject => Fate::Reject,
        Verdict::Drop => Fate::Drop,
        Verdict::NotAService => Fate::NotAService,
    }
}

/// What the fake kernel does with `p` (`trace::trace` over its companion sets and servers).
pub(crate) fn trace(s: &FakeState, p: &Packet) -> Fate {
    let server = |k: &ServiceKey| {
        s.services
            .get(k)
            .map(|(_, d)| d.values().copied().collect())
    };
    super::trace::trace(&s.elements, server, p)
}

/// Every packet that can hit a service address of `plans`, from a few sources per family (in
/// and out of the source ranges the random world uses, a pod, the node).
pub(crate) fn packets(plans: &Plans, node: &NodeFacts) -> Vec<Packet> {
    let sources = |v4: bool| -> Vec<IpAddr> {
        let list: [&str; 4] = if v4 {
            ["203.0.113.9", "192.0.2.200", "10.0.5.5", "192.168.0.2"]
        } else {
            ["2001:db8:ffff::9", "2001:db8:aaaa::9", "fd10::5", "fd00::2"]
        };
        list.iter().map(|s| ip(s)).collect()
    };
    let mut out = Vec::new();
    for planned in plans.values() {
        let (proto, port) = (planned.port.name.protocol, planned.port.port);
        for fp in &planned.plan.families {
            let mut targets: Vec<(IpAddr, u16)> = fp
                .cluster_ips
                .iter()
                .chain(&fp.external_ips)
                .chain(&fp.load_balancer_ips)
                .map(|a| (*a, port))
                .collect();
            // The NodePort on every node address, of both families: one of a family the
            // Service lacks must meet nothing.
            if let Some(np) = fp.node_port {
                targets.extend(node.nodeport_ips.iter().map(|a| (*a, np)));
            }
            for (daddr, dport) in targets {
                for saddr in sources(daddr.is_ipv4()) {
                    out.push(Packet {
                        saddr,
                        daddr,
                        proto,
                        dport,
                    });
                }
            }
        }
    }
    out
}

fn backend(kernel: &FakeKernel) -> IpvsBackend {
    IpvsBackend::new(&config(), Box::new(kernel.clone()))
        .with_families(vec![IpFamily::V4, IpFamily::V6])
}

/// The kernel's servers with their live destinations, addresses and elements.
type Held = (
    BTreeMap<ServiceKey, BTreeSet<(IpAddr, u16)>>,
    BTreeSet<IpAddr>,
    BTreeSet<(&'static str, &'static str, String)>,
);

fn held(s: &FakeState) -> Held {
    let servers = s
        .services
        .iter()
        .map(|(k, (_, dests))| {
            let live = dests
                .values()
                .filter(|d| d.weight > 0)
                .map(|d| (d.key.addr, d.key.port))
                .collect();
            (*k, live)
        })
        .collect();
    (servers, s.addresses.clone(), s.elements.clone())
}

#[test]
fn a_long_random_sequence_of_partial_syncs_matches_a_fresh_full_sync_and_the_plans() {
    let mut world = World::new(SEED);
    let mut plans = world.plans();
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans, &node()).unwrap();
    let mut checked = 0usize;
    for step in 0..STEPS {
        let (changed, what) = world.step();
        let old = std::mem::replace(&mut plans, world.plans());
        if let Err(e) = b.sync_partial(&plans, &changed, &node()) {
            panic!("step {step} ({what:?}): the partial sync failed: {e}");
        }
        let context = format!("step {step} ({what:?}, changed {changed:?})");
        let fresh = FakeKernel::default();
        backend(&fresh).sync_full(&plans, &node()).unwrap();
        assert_eq!(
            held(&kernel.state()),
            held(&fresh.state()),
            "{context}: not what a fresh full sync programs"
        );
        let mut probes = packets(&old, &node());
        probes.extend(packets(&plans, &node()));
        let s = kernel.state();
        for p in &probes {
            assert_eq!(
                trace(&s, p),
                expected(&plans, &node(), p),
                "{context}: {p:?} against the plans"
            );
        }
        checked += probes.len();
        drop(s);
        if step % 25 == 24 {
            assert_eq!(b.drift().unwrap(), None, "{context}");
            let before = kernel.state().ipvs_messages;
            b.sync_full(&plans, &node()).unwrap();
            assert_eq!(
                kernel.state().ipvs_messages,
                before,
                "{context}: a full resync found differences"
            );
        }
    }
    eprintln!(
        "{STEPS} steps, {checked} packets checked, {} Services at the end",
        world.len()
    );
    assert!(checked > 1000, "too few packets checked: {checked}");
}
