//! The packet tracer: walks a new connection's first packet through the hooks as the kernel
//! does — from a pod or another host: nat PREROUTING, then filter INPUT and nat INPUT when the
//! (DNATed) destination is local, else filter FORWARD and nat POSTROUTING; from the node itself:
//! nat OUTPUT, filter OUTPUT, nat POSTROUTING, and filter INPUT again when it loops back to a
//! local address — and says where it ends up.
//!
//! Invariants: the tracer reads only the fake's rules, lists and clock, never kproxy's plans;
//! `-m statistic` is expanded into both branches, so an `Outcome` lists every path the packet
//! can take with its probability (they sum to 1); a path's `-m recent` effects are returned,
//! not applied (`Ruleset::connect` applies the path a test picks). DNAT and MASQUERADE end
//! their nat chain's traversal as in the kernel; a chain that ends or RETURNs falls through to
//! the rule after the jump (the policy, in a built-in chain). What the tracer cannot follow (a
//! chain that vanished, too deep a jump chain, too many paths, no address to masquerade to) is
//! `Fate::Broken`, never a silent answer. `Outcome::visited` names every chain any path entered,
//! so a caller holding only some chains' rules knows which ones the answer depended on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::rule::{CT_DNAT, CT_NEW, Cond, Rule, Target};
use super::{Ruleset, bpf};
use crate::backends::iptables::compile::Table;
use crate::model::{IpFamily, Protocol};

/// The first packet of a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Protocol,
    pub dport: u16,
    /// Sent by the node itself (nat OUTPUT), not by a pod or another host (nat PREROUTING).
    pub from_node: bool,
    /// The node's addresses (`addrtype LOCAL`, besides loopback); the first one of the
    /// family that is not loopback is the source MASQUERADE gives towards other hosts.
    pub local: Vec<IpAddr>,
}

/// Where one path of the packet ends.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fate {
    /// Reaches `to` (after DNAT, if any) with source `from` (the node's, if masqueraded).
    Delivered {
        to: SocketAddr,
        from: IpAddr,
    },
    /// By a DROP rule in `chain`, or by the policy of built-in `chain`. A verdict in one
    /// service port's own chain (`KPROXY-EXT-*`, `KPROXY-FW-*`) is reported as that of the
    /// fixed chain that jumped to it, so expectations need not know the hashed names.
    Dropped {
        table: Table,
        chain: String,
    },
    Rejected {
        table: Table,
        chain: String,
        with: String,
    },
    Broken(String),
}

/// One way through the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub probability: f64,
    pub fate: Fate,
    /// The `-m recent` lists this path sets or refreshes with the packet's source.
    pub recent: Vec<(String, IpAddr)>,
    /// Every chain entered, as `table CHAIN`, in order.
    pub via: Vec<String>,
}

/// Every path of one packet.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub paths: Vec<Path>,
    /// Every chain a path entered (the built-in chains of the hooks included).
    pub visited: BTreeSet<(Table, String)>,
}

impl Outcome {
    /// Each distinct fate with its total probability.
    pub fn fates(&self) -> BTreeMap<Fate, f64> {
        let mut out = BTreeMap::new();
        for p in &self.paths {
            *out.entry(p.fate.clone()).or_insert(0.0) += p.probability;
        }
        out
    }

    /// The total probability of the paths whose fate satisfies `pred`.
    pub fn probability(&self, pred: impl Fn(&Fate) -> bool) -> f64 {
        let paths = self.paths.iter().filter(|p| pred(&p.fate));
        paths.map(|p| p.probability).sum()
    }

    /// The fate of every path, when they all share one.
    pub fn only(&self) -> Option<&Fate> {
        let first = &self.paths.first()?.fate;
        self.paths.iter().all(|p| p.fate == *first).then_some(first)
    }
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Delivered { to, from } => write!(f, "delivered to {to} from {from}"),
            Fate::Dropped { table, chain } => write!(f, "dropped in {table} {chain}"),
            Fate::Rejected { table, chain, with } => {
                write!(f, "rejected ({with}) in {table} {chain}")
            }
            Fate::Broken(why) => write!(f, "broken: {why}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.paths {
            writeln!(
                f,
                "  {:.4} {} via {}",
                p.probability,
                p.fate,
                p.via.join(" > ")
            )?;
        }
        Ok(())
    }
}

/// The packet in flight along one path.
#[derive(Clone, Debug)]
struct Flight {
    prob: f64,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    dnat: bool,
    mark: u32,
    recent: Vec<(String, IpAddr)>,
    via: Vec<String>,
}

/// How a chain's traversal ended for one flight.
enum End {
    /// Fell off the end or RETURNed: the caller goes on.
    Fell,
    /// ACCEPT, DNAT or MASQUERADE: this hook is done with the packet.
    Accept,
    Drop(String),
    Reject(String, String),
    Broken(String),
}

#[derive(Clone, Copy, Debug)]
enum Hook {
    NatPrerouting,
    FilterInput,
    NatInput,
    FilterForward,
    NatOutput,
    FilterOutput,
    NatPostrouting,
    /// filter INPUT of a node's packet that looped back to a local address (nat is not
    /// consulted again: the connection was confirmed in POSTROUTING).
    FilterInputLoopback,
}

impl Hook {
    fn chain(self) -> (Table, &'static str) {
        match self {
            Hook::NatPrerouting => (Table::Nat, "PREROUTING"),
            Hook::FilterInput | Hook::FilterInputLoopback => (Table::Filter, "INPUT"),
            Hook::NatInput => (Table::Nat, "INPUT"),
            Hook::FilterForward => (Table::Filter, "FORWARD"),
            Hook::NatOutput => (Table::Nat, "OUTPUT"),
            Hook::FilterOutput => (Table::Filter, "OUTPUT"),
            Hook::NatPostrouting => (Table::Nat, "POSTROUTING"),
        }
    }
}

const MAX_DEPTH: usize = 64;
const MAX_SPLITS: usize = 4096;

struct Run<'a> {
    fake: &'a Ruleset,
    p: &'a Packet,
    splits: usize,
    visited: BTreeSet<(Table, String)>,
}

pub fn trace(fake: &Ruleset, p: &Packet) -> Outcome {
    let mut run = Run {
        fake,
        p,
        splits: 0,
        visited: BTreeSet::new(),
    };
    let start = Flight {
        prob: 1.0,
        src: p.src,
        dst: p.dst,
        dport: p.dport,
        dnat: false,
        mark: 0,
        recent: vec![],
        via: vec![],
    };
    let first = if p.from_node {
        Hook::NatOutput
    } else {
        Hook::NatPrerouting
    };
    let mut paths = Vec::new();
    let mut work = vec![(start, Some(first))];
    let done = |f: Flight, fate| Path {
        probability: f.prob,
        fate,
        recent: f.recent,
        via: f.via,
    };
    while let Some((f, hook)) = work.pop() {
        let Some(hook) = hook else {
            let fate = Fate::Delivered {
                to: SocketAddr::new(f.dst, f.dport),
                from: f.src,
            };
            paths.push(done(f, fate));
            continue;
        };
        let (table, chain) = hook.chain();
        let policy_drop = fake.chain(table, chain).is_some_and(|c| c.policy_drop);
        let mut next = Vec::new();
        for (f, end) in run.chain(table, chain, f, 0) {
            let fate = match end {
                End::Fell if policy_drop => Some(Fate::Dropped {
                    table,
                    chain: chain.to_string(),
                }),
                End::Fell | End::Accept => None,
                End::Drop(chain) => Some(Fate::Dropped {
                    table,
                    chain: deciding(&f.via, chain),
                }),
                End::Reject(chain, with) => Some(Fate::Rejected {
                    table,
                    chain: deciding(&f.via, chain),
                    with,
                }),
                End::Broken(why) => Some(Fate::Broken(why)),
            };
            match fate {
                Some(fate) => paths.push(done(f, fate)),
                None => {
                    let h = run.next(hook, &f);
                    next.push((f, h));
                }
            }
        }
        work.extend(next.into_iter().rev());
    }
    Outcome {
        paths,
        visited: run.visited,
    }
}

impl Run<'_> {
    fn local(&self, a: &IpAddr) -> bool {
        a.is_loopback() || self.p.local.contains(a)
    }

    fn next(&self, hook: Hook, f: &Flight) -> Option<Hook> {
        match hook {
            Hook::NatPrerouting if self.local(&f.dst) => Some(Hook::FilterInput),
            Hook::NatPrerouting => Some(Hook::FilterForward),
            Hook::FilterInput => Some(Hook::NatInput),
            Hook::FilterForward | Hook::FilterOutput => Some(Hook::NatPostrouting),
            Hook::NatOutput => Some(Hook::FilterOutput),
            Hook::NatPostrouting if self.p.from_node && self.local(&f.dst) => {
                Some(Hook::FilterInputLoopback)
            }
            Hook::NatInput | Hook::NatPostrouting | Hook::FilterInputLoopback => None,
        }
    }

    /// The source MASQUERADE gives a packet to `dst`: the address of the route's interface.
    fn masquerade(&self, dst: &IpAddr) -> Option<IpAddr> {
        if dst.is_loopback() {
            return Some(match dst {
                IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        if self.local(dst) {
            return Some(*dst);
        }
        let family = IpFamily::of(dst);
        let mut own = self.p.local.iter();
        own.find(|a| IpFamily::of(a) == family && !a.is_loopback())
            .copied()
    }

    fn chain(
        &mut self,
        table: Table,
        name: &str,
        mut f: Flight,
        depth: usize,
    ) -> Vec<(Flight, End)> {
        let Some(chain) = self.fake.chain(table, name) else {
            let why = format!("a jump to {table} chain {name}, which does not exist");
            return vec![(f, End::Broken(why))];
        };
        if depth > MAX_DEPTH || self.splits > MAX_SPLITS {
            let why = format!("more than {MAX_DEPTH} nested jumps or {MAX_SPLITS} paths at {name}");
            return vec![(f, End::Broken(why))];
        }
        f.via.push(format!("{table} {name}"));
        self.visited.insert((table, name.to_string()));
        let mut out = Vec::new();
        let mut stack = vec![(f, 0usize)];
        while let Some((f, i)) = stack.pop() {
            let Some(rule) = chain.rules.get(i) else {
                out.push((f, End::Fell));
                continue;
            };
            let mut cont = Vec::new();
            for (mut f, hit) in self.matches(rule, f) {
                if !hit {
                    cont.push(f);
                    continue;
                }
                match &rule.target {
                    Target::None => cont.push(f),
                    Target::Mark(value, mask) => {
                        f.mark = (f.mark & !mask) ^ value;
                        cont.push(f);
                    }
                    Target::Jump(c) => {
                        for (f, end) in self.chain(table, c, f, depth + 1) {
                            match end {
                                End::Fell => cont.push(f),
                                end => out.push((f, end)),
                            }
                        }
                    }
                    Target::Goto(c) => out.extend(self.chain(table, c, f, depth + 1)),
                    Target::Return => out.push((f, End::Fell)),
                    Target::Accept => out.push((f, End::Accept)),
                    Target::Drop => out.push((f, End::Drop(name.to_string()))),
                    Target::Reject(with) => {
                        out.push((f, End::Reject(name.to_string(), with.clone())))
                    }
                    Target::Dnat(addr, port) => {
                        f.dst = *addr;
                        f.dport = port.unwrap_or(f.dport);
                        f.dnat = true;
                        out.push((f, End::Accept));
                    }
                    Target::Masquerade => match self.masquerade(&f.dst) {
                        Some(src) => {
                            f.src = src;
                            out.push((f, End::Accept));
                        }
                        None => {
                            let why = format!(
                                "MASQUERADE in {name}: the node has no address towards {}",
                                f.dst
                            );
                            out.push((f, End::Broken(why)));
                        }
                    },
                }
            }
            stack.extend(cont.into_iter().rev().map(|f| (f, i + 1)));
        }
        out
    }

    /// The flights that pass every test of `rule` (true) and those that fail one (false); only
    /// `-m statistic` splits a flight.
    fn matches(&mut self, rule: &Rule, f: Flight) -> Vec<(Flight, bool)> {
        let mut live = vec![f];
        let mut missed = Vec::new();
        for t in &rule.tests {
            let mut next = Vec::new();
            for mut f in live {
                if let Cond::Random(k) = t.cond {
                    let q = f64::from(k) / f64::from(0x8000_0000u32);
                    let q = if t.neg { 1.0 - q } else { q };
                    if q > 0.0 {
                        let mut hit = f.clone();
                        hit.prob *= q;
                        next.push(hit);
                        self.splits += 1;
                    }
                    if q < 1.0 {
                        f.prob *= 1.0 - q;
                        missed.push(f);
                    }
                } else if self.holds(&t.cond, &mut f) != t.neg {
                    next.push(f);
                } else {
                    missed.push(f);
                }
            }
            live = next;
        }
        let hits = live.into_iter().map(|f| (f, true));
        hits.chain(missed.into_iter().map(|f| (f, false))).collect()
    }

    fn holds(&self, cond: &Cond, f: &mut Flight) -> bool {
        let now = self.fake.now();
        match cond {
            Cond::Src(net) => net.contains(&f.src),
            Cond::Dst(net) => net.contains(&f.dst),
            Cond::Proto(p) => self.p.proto == *p,
            Cond::Dport(lo, hi) => (*lo..=*hi).contains(&f.dport),
            Cond::SrcLocal => self.local(&f.src),
            Cond::DstLocal => self.local(&f.dst),
            Cond::CtState(mask) => {
                let state = CT_NEW | if f.dnat { CT_DNAT } else { 0 };
                state & mask != 0
            }
            Cond::Mark(value, mask) => f.mark & mask == *value,
            Cond::Random(_) => unreachable!("matches splits on statistic"),
            Cond::RecentSet(list) => {
                f.recent.push((list.clone(), f.src));
                true
            }
            Cond::RecentUpdate(list, seconds) => {
                let this_path = f.recent.iter().any(|(l, a)| l == list && *a == f.src);
                let seen = this_path.then_some(now);
                let seen = seen.or_else(|| self.fake.recent_seen(list, &f.src));
                let hit = seen.is_some_and(|t| *seconds == 0 || now - t <= *seconds);
                if hit {
                    f.recent.push((list.clone(), f.src));
                }
                hit
            }
            Cond::Bpf(prog) => {
                let proto = match self.p.proto {
                    Protocol::Tcp => 6,
                    Protocol::Udp => 17,
                    Protocol::Sctp => 132,
                };
                bpf::run(prog, &bpf::header(f.src, f.dst, proto, f.dport)) != 0
            }
        }
    }
}

/// `chain`, or, when it is a service port's own chain, the last fixed chain on `via`.
fn deciding(via: &[String], chain: String) -> String {
    let per_port = [
        "KPROXY-SVC-",
        "KPROXY-SVL-",
        "KPROXY-SVW-",
        "KPROXY-EXT-",
        "KPROXY-FW-",
    ];
    if !per_port.iter().any(|p| chain.starts_with(p)) {
        return chain;
    }
    via.iter()
        .rev()
        .filter_map(|v| v.split_once(' ').map(|(_, c)| c))
        .find(|c| !per_port.iter().any(|p| c.starts_with(p)))
        .map_or(chain.clone(), str::to_string)
}
