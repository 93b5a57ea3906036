//! A random world of Services for the fake-kernel tests of every backend: a seeded 64-bit
//! xorshift (`Rng`), a generator of Services with ports, endpoints, policies, affinity and
//! source ranges (`Svc`) that only builds what the API server accepts, with every VIP,
//! NodePort and port number unique, so no two Services claim one VIP port; and `World`, the
//! random steps both backends' tests take.
//!
//! Invariants: deterministic for a seed, so a failure replays from its step number; IPv6
//! Services get ClientIP affinity too (the nftables backend then hashes, see its README).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::backends::Plans;
use crate::model::{Endpoint, Protocol, ServicePort, ServicePortName, ServiceType, TrafficPolicy};
use crate::testing::{add, name};

pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Ready,
    Terminating,
    NotReady,
}

#[derive(Clone, Debug)]
pub(crate) struct Ep {
    pub(crate) k: u8,
    pub(crate) v6: bool,
    pub(crate) node: &'static str,
    pub(crate) state: State,
}

#[derive(Clone, Debug)]
pub(crate) struct Port {
    pub(crate) name: &'static str,
    pub(crate) proto: Protocol,
    pub(crate) port: u16,
    pub(crate) target: u16,
    pub(crate) node_port_offset: u16,
}

#[derive(Clone, Debug)]
pub(crate) struct Svc {
    pub(crate) id: u32,
    pub(crate) v4: bool,
    pub(crate) v6: bool,
    pub(crate) kind: ServiceType,
    pub(crate) ports: Vec<Port>,
    pub(crate) external_ip: bool,
    pub(crate) ranges: Vec<&'static str>,
    pub(crate) etp_local: bool,
    pub(crate) itp_local: bool,
    pub(crate) affinity: Option<u32>,
    pub(crate) eps: Vec<Ep>,
}

pub(crate) const PROTOS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
pub(crate) const PORTS: [u16; 5] = [80, 443, 53, 8080, 9000];
pub(crate) const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
pub(crate) const RANGES: [&str; 3] = ["203.0.113.0/24", "2001:db8:ffff::/48", "192.0.2.128/25"];
pub(crate) const KINDS: [ServiceType; 3] = [
    ServiceType::ClusterIP,
    ServiceType::NodePort,
    ServiceType::LoadBalancer,
];

pub(crate) fn addr(text: String) -> IpAddr {
    text.parse().unwrap()
}

impl Svc {
    pub(crate) fn random(id: u32, rng: &mut Rng) -> Svc {
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

    pub(crate) fn add_port(&mut self, rng: &mut Rng) {
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

    pub(crate) fn free_port(&self, proto: Protocol, rng: &mut Rng) -> Option<u16> {
        let start = rng.below(PORTS.len());
        (0..PORTS.len())
            .map(|i| PORTS[(start + i) % PORTS.len()])
            .find(|p| !self.ports.iter().any(|q| q.proto == proto && q.port == *p))
    }

    pub(crate) fn add_endpoint(&mut self, rng: &mut Rng) {
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

    pub(crate) fn names(&self) -> Vec<ServicePortName> {
        let svc = format!("s{}", self.id);
        self.ports
            .iter()
            .map(|p| name(&svc, p.name, p.proto))
            .collect()
    }

    pub(crate) fn add_to(&self, plans: &mut Plans) {
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
            sp.affinity_timeout_seconds = self.affinity;
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
                place: crate::model::types::Place::on_node(e.node),
            });
            add(plans, sp, eps.collect());
        }
    }

    /// One random change; returns what it did.
    pub(crate) fn mutate(&mut self, rng: &mut Rng) -> &'static str {
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

/// Twelve random Services to start with, then random steps: each one to three changes (a
/// Service added, one deleted, or one mutated).
pub(crate) struct World {
    rng: Rng,
    svcs: BTreeMap<u32, Svc>,
    next_id: u32,
}

impl World {
    pub(crate) fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let svcs = (0..12).map(|id| (id, Svc::random(id, &mut rng))).collect();
        World {
            rng,
            svcs,
            next_id: 12,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.svcs.len()
    }

    pub(crate) fn plans(&self) -> Plans {
        let mut plans = Plans::new();
        for svc in self.svcs.values() {
            svc.add_to(&mut plans);
        }
        plans
    }

    /// One step: the service ports it changed (before and after) and what it did.
    pub(crate) fn step(&mut self) -> (BTreeSet<ServicePortName>, Vec<&'static str>) {
        let rng = &mut self.rng;
        let mut changed = BTreeSet::new();
        let mut what = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let ids: Vec<u32> = self.svcs.keys().copied().collect();
            match rng.below(20) {
                0 if self.next_id < 200 => {
                    let svc = Svc::random(self.next_id, rng);
                    changed.extend(svc.names());
                    self.svcs.insert(self.next_id, svc);
                    self.next_id += 1;
                    what.push("Service added");
                }
                1 if ids.len() > 3 => {
                    let id = rng.pick(&ids);
                    let gone = self.svcs.remove(&id).map(|s| s.names());
                    changed.extend(gone.unwrap_or_default());
                    what.push("Service deleted");
                }
                _ => {
                    let Some(svc) = self.svcs.get_mut(&rng.pick(&ids)) else {
                        continue;
                    };
                    changed.extend(svc.names());
                    what.push(svc.mutate(rng));
                    changed.extend(svc.names());
                }
            }
        }
        (changed, what)
    }
}
