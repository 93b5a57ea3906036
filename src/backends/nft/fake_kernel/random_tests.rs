//! A long randomized (seeded, deterministic) sequence of plan changes applied through
//! `sync_partial` on one `FakeKernel`, checked after every step against a fresh full sync into
//! a fresh `FakeKernel`: same traces for every packet, same state, and a transaction exactly as
//! large as the change; and (root only) the same transactions replayed through real nft in a
//! throwaway netns, which must accept each one and end with the same chains and elements.
//!
//! Invariants: the generator only builds what the API server accepts, with every VIP, NodePort
//! and port number unique (no two Services claim one VIP port); IPv6 Services get ClientIP
//! affinity only when `V6_AFFINITY` is true; `Rng` is a 64-bit xorshift, so a failure
//! replays from its step number.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::backends::nft::NftBackend;
use crate::backends::nft::fake_kernel::{FakeKernel, Outcome};
use crate::backends::nft::fake_kernel_tests::{
    assert_same_state, config, expected, loaded, min_ops, packets_of_all,
};
use crate::backends::nft::reconcile::parse_listing;
use crate::backends::nft::tests::{add, name, node};
use crate::backends::nft::transport::tests::Netns;
use crate::backends::nft::transport::{NftCli, Transport};
use crate::backends::{Backend, Plans};
use crate::model::{
    Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, ServiceType, TrafficPolicy,
};

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// ClientIP affinity on IPv6 Services (compile leaves it out for IPv6 VIPs, because nft 1.0.6
/// aborts on the IPv6 `affinity-T` rules; see
/// `kernel_tests::an_ipv6_service_with_client_ip_affinity_is_programmed`).
const V6_AFFINITY: bool = true;
const STEPS: usize = 300;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ready,
    Terminating,
    NotReady,
}

#[derive(Clone, Debug)]
struct Ep {
    k: u8,
    v6: bool,
    node: &'static str,
    state: State,
}

#[derive(Clone, Debug)]
struct Port {
    name: &'static str,
    proto: Protocol,
    port: u16,
    target: u16,
    node_port_offset: u16,
}

#[derive(Clone, Debug)]
struct Svc {
    id: u32,
    v4: bool,
    v6: bool,
    kind: ServiceType,
    ports: Vec<Port>,
    external_ip: bool,
    ranges: Vec<&'static str>,
    etp_local: bool,
    itp_local: bool,
    affinity: Option<u32>,
    eps: Vec<Ep>,
}

const PROTOS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
const PORTS: [u16; 5] = [80, 443, 53, 8080, 9000];
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const RANGES: [&str; 3] = ["203.0.113.0/24", "2001:db8:ffff::/48", "192.0.2.128/25"];
const KINDS: [ServiceType; 3] = [
    ServiceType::ClusterIP,
    ServiceType::NodePort,
    ServiceType::LoadBalancer,
];

fn addr(text: String) -> IpAddr {
    text.parse().unwrap()
}

impl Svc {
    fn random(id: u32, rng: &mut Rng) -> Svc {
        let v6 = rng.chance(40);
        let mut s = Svc {
            id,
            v4: !v6 || rng.chance(50),
            v6,
            kind: rng.pick(&KINDS),
            ports: vec![],
            external_ip: rng.chance(20),
            ranges: vec![],
            etp_local: rng.chance(40),
            itp_local: rng.chance(15),
            affinity: rng.chance(20).then_some(10800),
            eps: vec![],
        };
        s.add_port(rng);
        if rng.chance(30) {
            s.add_port(rng);
        }
        if s.kind == ServiceType::LoadBalancer && rng.chance(50) {
            s.ranges = vec![rng.pick(&RANGES)];
        }
        for _ in 0..rng.below(5) {
            s.add_endpoint(rng);
        }
        s
    }

    fn add_port(&mut self, rng: &mut Rng) {
        let name = if self.ports.iter().any(|p| p.name == "a") {
            "b"
        } else {
            "a"
        };
        if self.ports.len() >= 2 {
            return;
        }
        let proto = rng.pick(&PROTOS);
        let Some(port) = self.free_port(proto, rng) else {
            return;
        };
        let node_port_offset = if name == "a" { 0 } else { 2 };
        self.ports.push(Port {
            name,
            proto,
            port,
            target: 8000 + port,
            node_port_offset,
        });
    }

    fn free_port(&self, proto: Protocol, rng: &mut Rng) -> Option<u16> {
        let start = rng.below(PORTS.len());
        (0..PORTS.len())
            .map(|i| PORTS[(start + i) % PORTS.len()])
            .find(|p| !self.ports.iter().any(|q| q.proto == proto && q.port == *p))
    }

    fn add_endpoint(&mut self, rng: &mut Rng) {
        let v6 = match (self.v4, self.v6) {
            (true, true) => rng.chance(50),
            (_, v6) => v6,
        };
        let k = (1..=40u8)
            .cycle()
            .skip(rng.below(40))
            .take(40)
            .find(|k| !self.eps.iter().any(|e| e.k == *k && e.v6 == v6));
        let Some(k) = k else { return };
        let state = match rng.below(10) {
            0 => State::Terminating,
            1 => State::NotReady,
            _ => State::Ready,
        };
        self.eps.push(Ep {
            k,
            v6,
            node: rng.pick(&NODES),
            state,
        });
    }

    fn names(&self) -> Vec<ServicePortName> {
        let svc = format!("s{}", self.id);
        self.ports
            .iter()
            .map(|p| name(&svc, p.name, p.proto))
            .collect()
    }

    fn add_to(&self, plans: &mut Plans) {
        let id = self.id;
        let mut cluster = Vec::new();
        let (mut external, mut lb) = (Vec::new(), Vec::new());
        if self.v4 {
            cluster.push(addr(format!("10.96.0.{}", id + 1)));
            external.push(addr(format!("192.0.2.{}", id + 1)));
            lb.push(addr(format!("198.51.100.{}", id + 1)));
        }
        if self.v6 {
            cluster.push(addr(format!("fd96::{:x}", id + 1)));
            external.push(addr(format!("2001:db8:e::{:x}", id + 1)));
            lb.push(addr(format!("2001:db8:100::{:x}", id + 1)));
        }
        let policy = |local| {
            if local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            }
        };
        for (p, n) in self.ports.iter().zip(self.names()) {
            let mut sp = ServicePort::cluster_ip(n, cluster[0], p.port);
            sp.cluster_ips = cluster.clone();
            sp.service_type = self.kind;
            if self.kind != ServiceType::ClusterIP {
                sp.node_port = Some(30000 + id as u16 * 4 + p.node_port_offset);
            }
            if self.external_ip {
                sp.external_ips = external.clone();
            }
            if self.kind == ServiceType::LoadBalancer {
                sp.load_balancer_ips = lb.clone();
                sp.load_balancer_source_ranges =
                    self.ranges.iter().map(|r| r.parse().unwrap()).collect();
            }
            sp.external_traffic_policy = policy(self.etp_local);
            sp.internal_traffic_policy = policy(self.itp_local);
            sp.affinity_timeout_seconds = self.affinity.filter(|_| V6_AFFINITY || !self.v6);
            let eps = self.eps.iter().map(|e| Endpoint {
                ip: if e.v6 {
                    addr(format!("fd10::{:x}:{:x}", id, e.k))
                } else {
                    addr(format!("10.0.{id}.{}", e.k))
                },
                port: p.target,
                ready: e.state == State::Ready,
                serving: e.state != State::NotReady,
                terminating: e.state == State::Terminating,
                node_name: Some(e.node.into()),
                zone: None,
                zone_hints: Default::default(),
                node_hints: Default::default(),
            });
            add(plans, sp, eps.collect());
        }
    }

    /// One random change; returns what it did.
    fn mutate(&mut self, rng: &mut Rng) -> &'static str {
        match rng.below(16) {
            0 | 1 => {
                self.add_endpoint(rng);
                "endpoint added"
            }
            2 | 3 if !self.eps.is_empty() => {
                let i = rng.below(self.eps.len());
                self.eps.remove(i);
                "endpoint removed"
            }
            4 if !self.eps.is_empty() => {
                let i = rng.below(self.eps.len());
                self.eps.remove(i);
                self.add_endpoint(rng);
                "endpoint moved"
            }
            5 => {
                let n = rng.below(7);
                self.eps.truncate(n);
                while self.eps.len() < n {
                    let before = self.eps.len();
                    self.add_endpoint(rng);
                    if self.eps.len() == before {
                        break;
                    }
                }
                "endpoint count changed"
            }
            6 if !self.eps.is_empty() => {
                let i = rng.below(self.eps.len());
                self.eps[i].state = match self.eps[i].state {
                    State::Ready => State::Terminating,
                    State::Terminating => State::NotReady,
                    State::NotReady => State::Ready,
                };
                "endpoint readiness changed"
            }
            7 => {
                let i = rng.below(self.ports.len());
                let proto = self.ports[i].proto;
                if let Some(port) = self.free_port(proto, rng) {
                    self.ports[i].port = port;
                }
                "port number changed"
            }
            8 => {
                let i = rng.below(self.ports.len());
                let proto = rng.pick(&PROTOS);
                if let Some(port) = self.free_port(proto, rng) {
                    self.ports[i].proto = proto;
                    self.ports[i].port = port;
                }
                "port protocol changed"
            }
            9 => {
                if self.ports.len() > 1 && rng.chance(50) {
                    self.ports.pop();
                } else {
                    self.add_port(rng);
                }
                "port added or removed"
            }
            10 => {
                self.kind = rng.pick(&KINDS);
                "type changed (NodePort added or removed)"
            }
            11 => {
                let i = rng.below(self.ports.len());
                self.ports[i].node_port_offset ^= 1;
                "NodePort number changed"
            }
            12 => {
                if rng.chance(50) {
                    self.etp_local = !self.etp_local;
                } else {
                    self.itp_local = !self.itp_local;
                }
                "traffic policy flipped"
            }
            13 => {
                self.affinity = match self.affinity {
                    None => Some(10800),
                    Some(10800) => Some(60),
                    Some(_) => None,
                };
                "affinity changed"
            }
            14 => {
                self.ranges = (0..rng.below(3)).map(|_| rng.pick(&RANGES)).collect();
                self.ranges.sort();
                self.ranges.dedup();
                self.external_ip = rng.chance(30);
                "source ranges or externalIPs changed"
            }
            _ => {
                (self.v4, self.v6) = match (self.v4, self.v6, rng.below(3)) {
                    (_, _, 0) => (true, false),
                    (_, _, 1) => (false, true),
                    _ => (true, true),
                };
                self.eps.retain(|e| if e.v6 { self.v6 } else { self.v4 });
                "IP families changed"
            }
        }
    }
}

fn build(world: &BTreeMap<u32, Svc>) -> Plans {
    let mut plans = Plans::new();
    for svc in world.values() {
        svc.add_to(&mut plans);
    }
    plans
}

#[test]
fn a_long_random_sequence_of_partial_syncs_matches_a_fresh_full_sync_at_every_step() {
    random_sequence(STEPS);
}

/// Every transaction the fake kernel accepted along a random sequence, real nft accepts too,
/// and the two end with the same chains and elements (root only, in a throwaway netns).
#[test]
fn live_nft_accepts_the_random_sequence_and_ends_where_the_fake_kernel_does() {
    let Some(ns) = Netns::new() else { return };
    let kernel = random_sequence(60);
    let mut nft = NftCli::in_netns(&ns.name);
    for (i, script) in kernel.with(|s| s.applied.clone()).iter().enumerate() {
        if let Err(e) = nft.apply(script) {
            panic!("nft refused transaction {i}, which the fake kernel accepted: {e}\n{script}");
        }
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let real = nft.list_table(family).unwrap().map(|l| parse_listing(&l));
        let fake = kernel.listing(family).map(|l| parse_listing(&l));
        assert_eq!(real, fake, "{family:?}");
    }
}

/// Runs `steps` random steps with every check; returns the kernel the partial syncs drove.
fn random_sequence(steps: usize) -> FakeKernel {
    let mut rng = Rng(SEED);
    let mut world: BTreeMap<u32, Svc> = (0..12).map(|id| (id, Svc::random(id, &mut rng))).collect();
    let mut next_id = 12;
    let mut plans = build(&world);
    let (mut backend, kernel) = loaded(&plans, &config());
    let mut total_ops = 0;
    let (cfg, nd) = (config(), node());
    for step in 0..steps {
        let mut changed: BTreeSet<ServicePortName> = BTreeSet::new();
        let mut what = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let ids: Vec<u32> = world.keys().copied().collect();
            match rng.below(20) {
                0 if next_id < 200 => {
                    let svc = Svc::random(next_id, &mut rng);
                    changed.extend(svc.names());
                    world.insert(next_id, svc);
                    next_id += 1;
                    what.push("Service added");
                }
                1 if ids.len() > 3 => {
                    let id = rng.pick(&ids);
                    changed.extend(world.remove(&id).map(|s| s.names()).unwrap_or_default());
                    what.push("Service deleted");
                }
                _ => {
                    let Some(svc) = world.get_mut(&rng.pick(&ids)) else {
                        continue;
                    };
                    changed.extend(svc.names());
                    what.push(svc.mutate(&mut rng));
                    changed.extend(svc.names());
                }
            }
        }
        let old = std::mem::replace(&mut plans, build(&world));
        let before = kernel.tables();
        let report = match backend.sync_partial(&plans, &changed, &node()) {
            Ok(r) => r,
            Err(e) => panic!("step {step} ({what:?}): the partial sync failed: {e}"),
        };
        let (_, fresh) = loaded(&plans, &config());
        let context = format!("step {step} ({what:?}, changed {changed:?})");
        assert_same_state(&kernel, &fresh, &context);
        let probes = packets_of_all(&[&old, &plans], &node());
        let (got, want) = (kernel.trace_all(&probes), fresh.trace_all(&probes));
        for ((p, got), want) in probes.iter().zip(got).zip(want) {
            assert_eq!(got, want, "{context}: {p:?}");
            assert!(
                !matches!(got.outcome, Outcome::Broken(_)),
                "{context}: {p:?}: {got:?}"
            );
            let planned = expected(&plans, &cfg, &nd, p);
            assert_eq!(got, planned, "{context}: {p:?} against the plans");
        }
        let least = min_ops(&before, &kernel.tables());
        assert_eq!(
            report.operations, least,
            "{context}: the transaction is not minimal"
        );
        total_ops += report.operations;
        if step % 25 == 24 {
            assert_eq!(backend.drift().unwrap(), None, "{context}");
            let full = backend.sync_full(&plans, &node()).unwrap();
            assert_eq!(
                full.operations, 0,
                "{context}: a full resync found differences"
            );
        }
    }
    eprintln!(
        "{steps} steps, {total_ops} operations, {} Services at the end",
        world.len()
    );
    let mut again = NftBackend::new(config(), kernel.clone());
    again.sync_full(&plans, &node()).unwrap();
    let (_, fresh) = loaded(&plans, &config());
    assert_same_state(&kernel, &fresh, "after a restart at the end");
    kernel
}
