//! The second opinion of `kproxy explain`: the packet run by the mode's tracer through a
//! ruleset, either the one kproxy compiles from the plans (`compiled`) or the one in this
//! node's kernel (`live`), compared with the plan's answer ("agrees" / "differs: …").
//!
//! Invariants: the tracers are the ones the fake kernels' tests use (nftables: `ruleset`;
//! iptables: `ruleset`'s restore model; IPVS: virtual servers and the companion table), fed
//! with text or kernel state and never with the plans; `live` only reads the kernel. A ruleset
//! the tracer cannot follow for this packet is a difference, never an agreement.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{Explanation, Facts, Packet, Traced, Verdict, compare, live_iptables, live_nft};
use crate::backends::ProxyMode;
use crate::backends::iptables::ruleset::{self as ipt, Ruleset};
use crate::backends::ipvs::netlink::{DestKey, DestState, ServiceKey};
use crate::backends::ipvs::socket::{IpvsSocket, SocketError};
use crate::backends::ipvs::trace::{self as ipvs, Elements};
use crate::backends::nft::reconcile::parse_listing;
use crate::backends::nft::ruleset::apply::family_word;
use crate::backends::nft::ruleset::{self as nft, Tables};
use crate::backends::nft::skeleton::TABLE;
use crate::model::{IpFamily, Protocol};
use crate::nftables::transport::{NftCli, NftError, Transport};

/// Why the kernel's rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// kproxy's nftables table could not be read: see the cause.
    #[error(transparent)]
    Nft(#[from] live_nft::ReadError),
    /// kproxy's iptables chains could not be read: see the cause.
    #[error(transparent)]
    Iptables(#[from] live_iptables::ReadError),
    /// IPVS mode's companion table could not be listed: run as root in the node's namespace.
    #[error("listing IPVS mode's companion nftables table: {0}")]
    Companion(#[from] NftError),
    /// IPVS's virtual servers could not be read: run as root, with ip_vs loaded.
    #[error("reading IPVS's virtual servers: {0}")]
    Ipvs(#[from] SocketError),
}

/// The packet through the rules kproxy compiles (`rules`: what --dry-run prints).
pub fn compiled(f: &Facts, rules: &str, p: &Packet, plan: &Explanation) -> String {
    let traced = match f.mode {
        ProxyMode::Nftables => {
            let mut tables = Tables::default();
            match nft::apply_script(&mut tables, rules) {
                Ok(()) => nft_trace(&tables, f, p),
                Err(e) => Err(format!("the compiled ruleset does not load: {e}")),
            }
        }
        ProxyMode::Iptables => match ipt_compiled(rules, p.family()) {
            Ok(set) => ipt_trace(&set, f, p),
            Err(e) => Err(format!("the compiled ruleset does not load: {e}")),
        },
        ProxyMode::Ipvs => {
            let (elements, servers) = ipvs_compiled(rules);
            Ok(ipvs_trace(&elements, |k| servers.get(k).cloned(), p))
        }
    };
    judge(plan, traced)
}

/// The packet through the rules in this node's kernel.
pub fn live(f: &Facts, p: &Packet, plan: &Explanation) -> Result<String, LiveError> {
    let traced = match f.mode {
        ProxyMode::Nftables => {
            let family = p.family();
            let Some(mut tables) = live_nft::skeleton(&mut NftCli::default(), family)? else {
                let table = format!("table {} {TABLE}", family_word(family));
                return Ok(absent(&table, f));
            };
            let mut elements = live_nft::Fetched::new(family);
            let t = live_nft::trace(&mut tables, family, &nft_packet(f, p), &mut elements)?;
            nft_traced(t)
        }
        ProxyMode::Iptables => match live_iptables::kernel(f, p)? {
            live_iptables::Kernel::Rules(set) => ipt_trace(&set, f, p),
            live_iptables::Kernel::Absent(what) => return Ok(absent(&what, f)),
            live_iptables::Kernel::Unfollowable(why) => Err(why),
        },
        ProxyMode::Ipvs => {
            let elements = ipvs_companion(&mut NftCli::default(), p.family())?;
            let mut socket = IpvsSocket::open()?;
            let key = ServiceKey {
                addr: p.dst,
                protocol: p.proto,
                port: p.dport,
            };
            let dests = match socket.service(&key)? {
                Some(_) => Some(socket.dests(&key)?),
                None => None,
            };
            Ok(ipvs_trace(
                &elements,
                |k| (*k == key).then(|| dests.clone()).flatten(),
                p,
            ))
        }
    };
    Ok(judge(plan, traced))
}

/// The answer when kproxy's rules of the mode are not in the kernel at all.
fn absent(what: &str, f: &Facts) -> String {
    format!(
        "differs: the kernel has no {what} (is kproxy running in {} mode, in this network namespace?)",
        f.mode
    )
}

fn judge(plan: &Explanation, traced: Result<Traced, String>) -> String {
    match traced {
        Ok(t) => compare(plan, &t),
        Err(why) => format!("differs: {why}"),
    }
}

fn nft_trace(tables: &Tables, f: &Facts, p: &Packet) -> Result<Traced, String> {
    nft_traced(nft::trace::trace(
        tables.get(p.family()),
        p.family(),
        &nft_packet(f, p),
    ))
}

fn nft_packet(f: &Facts, p: &Packet) -> nft::Packet {
    nft::Packet {
        saddr: p.src,
        daddr: p.dst,
        proto: p.proto,
        dport: p.dport,
        from_local: super::from_node(&p.src, f.node),
    }
}

fn nft_traced(t: nft::Trace) -> Result<Traced, String> {
    let (verdict, mut endpoints) = match t.outcome {
        nft::Outcome::Dnat(eps) => (Verdict::Dnat, eps),
        nft::Outcome::Reject => (Verdict::Reject, vec![]),
        nft::Outcome::Drop => (Verdict::Drop, vec![]),
        nft::Outcome::NotAService => (Verdict::NotAService, vec![]),
        nft::Outcome::Broken(why) => return Err(format!("the rules are broken for it: {why}")),
    };
    endpoints.sort();
    endpoints.dedup();
    Ok(Traced {
        verdict,
        endpoints: endpoints.into_iter().collect::<Vec<SocketAddr>>(),
        masquerade: Some(t.masquerade),
    })
}

/// `family`'s iptables as `--dry-run` prints its restore input.
fn ipt_compiled(rules: &str, family: IpFamily) -> Result<Ruleset, String> {
    let v6_at = rules.find("# ip6tables-restore").unwrap_or(rules.len());
    let (v4, v6) = rules.split_at(v6_at);
    let mut set = Ruleset::new(family);
    set.restore(if family == IpFamily::V4 { v4 } else { v6 })?;
    Ok(set)
}

fn ipt_trace(set: &Ruleset, f: &Facts, p: &Packet) -> Result<Traced, String> {
    let packet = live_iptables::packet(f, p);
    let out = set.trace(&packet);
    let mut kinds = Vec::new();
    let mut endpoints = Vec::new();
    let mut masquerade = false;
    for path in &out.paths {
        let kind = match &path.fate {
            ipt::Fate::Delivered { to, from } => {
                if *to == SocketAddr::new(p.dst, p.dport) {
                    Verdict::NotAService
                } else {
                    endpoints.push(*to);
                    // The source rewritten to the node's (a pod reaching itself is masqueraded
                    // whatever the plan says, so it does not count).
                    masquerade |= *from != p.src && to.ip() != p.src;
                    Verdict::Dnat
                }
            }
            ipt::Fate::Rejected { .. } => Verdict::Reject,
            ipt::Fate::Dropped { .. } => Verdict::Drop,
            ipt::Fate::Broken(why) => return Err(format!("the rules are broken for it: {why}")),
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let [verdict] = kinds[..] else {
        return Err(format!("its paths end differently:\n{out}"));
    };
    endpoints.sort();
    endpoints.dedup();
    // From the node, masquerading picks the address it already has: not observable.
    Ok(Traced {
        verdict,
        endpoints,
        masquerade: (!packet.from_node).then_some(masquerade),
    })
}

/// The companion table's elements and the virtual servers with their destinations, as
/// `--dry-run` prints them (`add element …` lines and ipvsadm-restore input).
fn ipvs_compiled(rules: &str) -> (Elements, BTreeMap<ServiceKey, Vec<DestState>>) {
    let mut elements = Elements::new();
    let mut servers = BTreeMap::<ServiceKey, Vec<DestState>>::new();
    for line in rules.lines() {
        if let Some(rest) = line.strip_prefix("add element ") {
            let mut words = rest.splitn(4, ' ');
            let (Some(fam), Some(_table), Some(set), Some(body)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            let key = body
                .trim()
                .trim_start_matches('{')
                .trim_end_matches('}')
                .trim();
            if let (Some(fam), Some(set)) = (static_family(fam), static_set(set)) {
                elements.insert((fam, set, key.to_string()));
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let proto = |flag: &str| match flag {
            "-t" => Some(Protocol::Tcp),
            "-u" => Some(Protocol::Udp),
            "--sctp-service" => Some(Protocol::Sctp),
            _ => None,
        };
        match words.as_slice() {
            ["-A", flag, vs, ..] => {
                if let (Some(protocol), Ok(a)) = (proto(flag), vs.parse::<SocketAddr>()) {
                    servers.entry(service_key(protocol, a)).or_default();
                }
            }
            ["-a", flag, vs, "-r", dest, rest @ ..] => {
                let weight = rest
                    .windows(2)
                    .find(|w| w[0] == "-w")
                    .and_then(|w| w[1].parse().ok())
                    .unwrap_or(1);
                if let (Some(protocol), Ok(a), Ok(d)) = (
                    proto(flag),
                    vs.parse::<SocketAddr>(),
                    dest.parse::<SocketAddr>(),
                ) {
                    servers
                        .entry(service_key(protocol, a))
                        .or_default()
                        .push(DestState {
                            key: DestKey {
                                addr: d.ip(),
                                port: d.port(),
                            },
                            weight,
                            active: 0,
                            inactive: 0,
                        });
                }
            }
            _ => {}
        }
    }
    (elements, servers)
}

fn service_key(protocol: Protocol, a: SocketAddr) -> ServiceKey {
    ServiceKey {
        addr: a.ip(),
        protocol,
        port: a.port(),
    }
}

fn static_family(word: &str) -> Option<&'static str> {
    ["ip", "ip6"].into_iter().find(|f| *f == word)
}

fn static_set(name: &str) -> Option<&'static str> {
    ipvs::SETS.into_iter().find(|s| *s == name)
}

/// The companion table's elements of `family` the tracer reads, as the kernel lists them: its
/// four sets one by one (`nft list set` leaves the other sets' elements out of nft's cache;
/// `cluster-ips` and `hairpin` hold 110,000 at 10,000 Services).
fn ipvs_companion(transport: &mut impl Transport, family: IpFamily) -> Result<Elements, LiveError> {
    let mut elements = Elements::new();
    let fam = family_word(family);
    let table = crate::backends::ipvs::compile::TABLE;
    for set in ipvs::SETS {
        let Some(text) = transport.list_set(family, table, set)? else {
            continue;
        };
        if let Some((_, listed)) = parse_listing(&text).sets.remove(set) {
            elements.extend(listed.into_keys().map(|key| (fam, set, key)));
        }
    }
    Ok(elements)
}

fn ipvs_trace(
    elements: &Elements,
    server: impl Fn(&ServiceKey) -> Option<Vec<DestState>>,
    p: &Packet,
) -> Traced {
    let packet = ipvs::Packet {
        saddr: p.src,
        daddr: p.dst,
        proto: p.proto,
        dport: p.dport,
    };
    let (verdict, endpoints) = match ipvs::trace(elements, server, &packet) {
        ipvs::Fate::Dnat(live) => (
            Verdict::Dnat,
            live.into_iter()
                .map(|(a, port)| SocketAddr::new(a, port))
                .collect(),
        ),
        ipvs::Fate::Reject => (Verdict::Reject, vec![]),
        ipvs::Fate::Drop => (Verdict::Drop, vec![]),
        ipvs::Fate::NotAService => (Verdict::NotAService, vec![]),
    };
    // The companion table's masquerading is not followed.
    Traced {
        verdict,
        endpoints,
        masquerade: None,
    }
}
