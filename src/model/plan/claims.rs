//! Conflicts between Services: two service ports that claim the same address, port and protocol
//! (a ClusterIP, externalIP or LoadBalancer IP), the same NodePort, or two Services the same
//! healthCheckNodePort. Resolved here, once, for every backend: the oldest Service wins
//! (creationTimestamp; one without comes after any with one), then the first by
//! namespace/name; the losers are planned without what they lost, and served again when the
//! winner goes.
//!
//! Invariants: pure bookkeeping, O(claims of the ports that change) per update; the winner of a
//! claim depends only on the claimants, never on the order of updates; a healthCheckNodePort
//! is won by a Service (all its ports share it), everything else by a service port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::{NamespacedName, Protocol, ServicePort, ServicePortName};

/// Something only one Service can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Claim {
    /// A ClusterIP, externalIP or LoadBalancer IP at a port.
    Address {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
    },
    /// A NodePort, on every NodePort address.
    NodePort { protocol: Protocol, port: u16 },
    /// A healthCheckNodePort (TCP, shared by the ports of one Service).
    HealthCheckNodePort { port: u16 },
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Address { ip, protocol, port } => {
                write!(f, "{protocol} {}", std::net::SocketAddr::new(*ip, *port))
            }
            Claim::NodePort { protocol, port } => write!(f, "NodePort {protocol} {port}"),
            Claim::HealthCheckNodePort { port } => write!(f, "healthCheckNodePort {port}"),
        }
    }
}

/// A claim a port lost, and the Service that has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub claim: Claim,
    pub winner: NamespacedName,
}

/// Precedence: older first (no creation time: last), then by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claimant {
    undated: bool,
    created: Option<SystemTime>,
    port: ServicePortName,
}

impl Claimant {
    fn of(port: &ServicePort) -> Claimant {
        Claimant {
            undated: port.created.is_none(),
            created: port.created,
            port: port.name.clone(),
        }
    }
}

/// Everything `port` claims, sorted, each once.
pub fn claims_of(port: &ServicePort) -> Vec<Claim> {
    let (protocol, at) = (port.name.protocol, port.port);
    let mut out: Vec<Claim> = port
        .cluster_ips
        .iter()
        .chain(&port.external_ips)
        .chain(&port.load_balancer_ips)
        .map(|ip| Claim::Address {
            ip: *ip,
            protocol,
            port: at,
        })
        .collect();
    if let Some(port) = port.node_port {
        out.push(Claim::NodePort { protocol, port });
    }
    if let Some(hc) = port
        .health_check_node_port
        .filter(|_| port.external_policy_local())
    {
        out.push(Claim::HealthCheckNodePort { port: hc });
    }
    out.sort_unstable();
    out.dedup();
    out.shrink_to_fit();
    out
}

/// Who claims what. Claimants of a claim are a sorted `Vec` (almost always one), not a
/// `BTreeSet`, whose first node alone costs ~1 KiB: at 10,000 Services that was 19 MiB.
#[derive(Debug, Default)]
pub struct Claims {
    by_claim: HashMap<Claim, Vec<Claimant>>,
    by_port: HashMap<ServicePortName, (Claimant, Vec<Claim>)>,
}

impl Claims {
    /// The winner of `claim`: a port, or for a healthCheckNodePort its Service's first port.
    fn winner(&self, claim: &Claim) -> Option<&Claimant> {
        self.by_claim.get(claim)?.first()
    }

    fn wins(&self, claim: &Claim, port: &ServicePortName) -> bool {
        self.winner(claim).is_some_and(|w| match claim {
            Claim::HealthCheckNodePort { .. } => w.port.service == port.service,
            _ => w.port == *port,
        })
    }

    /// Records what the port `name` claims now (`port`: None when it is gone). Returns the other
    /// ports that won or lost something by it: they must be planned again.
    pub fn update(
        &mut self,
        name: &ServicePortName,
        port: Option<&ServicePort>,
    ) -> BTreeSet<ServicePortName> {
        let new = port.map(|p| (Claimant::of(p), claims_of(p)));
        let old = self.by_port.remove(name);
        if old == new {
            if let Some(n) = new {
                self.by_port.insert(name.clone(), n);
            }
            return BTreeSet::new();
        }
        let touched: BTreeSet<Claim> = old
            .iter()
            .chain(&new)
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        let before: BTreeMap<Claim, Option<Claimant>> = touched
            .iter()
            .map(|c| (*c, self.winner(c).cloned()))
            .collect();
        // Who holds a claim: a port, or for a healthCheckNodePort its Service.
        let holder = |claim: &Claim, w: Option<&Claimant>| {
            w.map(|w| match claim {
                Claim::HealthCheckNodePort { .. } => (w.port.service.clone(), None),
                _ => (w.port.service.clone(), Some(w.port.clone())),
            })
        };
        if let Some((who, claims)) = &old {
            for c in claims {
                if let Some(set) = self.by_claim.get_mut(c) {
                    if let Ok(i) = set.binary_search(who) {
                        set.remove(i);
                    }
                    if set.is_empty() {
                        self.by_claim.remove(c);
                    }
                }
            }
        }
        if let Some((who, claims)) = &new {
            for c in claims {
                let set = self
                    .by_claim
                    .entry(*c)
                    .or_insert_with(|| Vec::with_capacity(1));
                if let Err(i) = set.binary_search(who) {
                    set.insert(i, who.clone());
                }
            }
            self.by_port
                .insert(name.clone(), (who.clone(), claims.clone()));
        }
        let mut affected = BTreeSet::new();
        for (claim, was) in before {
            if holder(&claim, self.winner(&claim)) == holder(&claim, was.as_ref()) {
                continue;
            }
            // Every claimant's outcome may have changed (a healthCheckNodePort's for all the
            // ports of the Services involved); conflicts are rare, these sets tiny.
            for c in self.by_claim.get(&claim).into_iter().flatten() {
                affected.insert(c.port.clone());
            }
            if let Some(w) = was {
                affected.insert(w.port);
            }
        }
        affected.remove(name);
        affected
    }

    /// The claims `name` lost, and who has each.
    pub fn lost(&self, name: &ServicePortName) -> Vec<Conflict> {
        let Some((_, claims)) = self.by_port.get(name) else {
            return Vec::new();
        };
        claims
            .iter()
            .filter(|c| !self.wins(c, name))
            .filter_map(|c| {
                Some(Conflict {
                    claim: *c,
                    winner: self.winner(c)?.port.service.clone(),
                })
            })
            .collect()
    }

    /// How many (port, claim) pairs are lost now.
    pub fn lost_count(&self) -> usize {
        self.by_claim
            .iter()
            .map(|(c, set)| set.iter().filter(|w| !self.wins(c, &w.port)).count())
            .sum()
    }
}

/// `port` without what it lost: addresses, NodePort, healthCheckNodePort.
pub fn without(port: &ServicePort, lost: &[Conflict]) -> ServicePort {
    let mut p = port.clone();
    for c in lost {
        match c.claim {
            Claim::Address { ip, .. } => {
                p.cluster_ips.retain(|a| *a != ip);
                p.external_ips.retain(|a| *a != ip);
                p.load_balancer_ips.retain(|a| *a != ip);
            }
            Claim::NodePort { .. } => p.node_port = None,
            Claim::HealthCheckNodePort { .. } => p.health_check_node_port = None,
        }
    }
    p
}
