//! The IPVS mode packet tracer: what the companion table (hooked before IPVS) and then the
//! virtual servers do with the first packet of a connection. The fake kernel's tests trace with
//! it; `kproxy explain --live` feeds it the kernel's virtual servers and the companion sets as
//! `nft list set` prints them.
//!
//! Invariants: reads only what it is given (elements, servers), never the plans; a firewalled
//! port admits a source only through a `firewall-allow` element of its own (address, CIDR or
//! range); `rejected` applies to TCP (the companion rule says `meta l4proto tcp`); a virtual
//! server with no destination of weight > 0 rejects (IPVS answers ICMP/RST itself).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::netlink::{DestState, ServiceKey};
use crate::model::Protocol;

/// What happens to a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Sent to one of these destinations.
    Dnat(BTreeSet<(IpAddr, u16)>),
    Reject,
    Drop,
    NotAService,
}

#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub proto: Protocol,
    pub dport: u16,
}

/// (family word, set, key) of every companion set element.
pub type Elements = BTreeSet<(&'static str, &'static str, String)>;

/// The companion table's sets the tracer reads (their names, as `Elements` holds them).
pub const SETS: [&str; 4] = ["firewall", "firewall-allow", "dropped", "rejected"];

/// What the companion sets `elements` and the virtual servers (`server`: the destinations of a
/// virtual server, None when there is none) do with `p`.
pub fn trace(
    elements: &Elements,
    server: impl Fn(&ServiceKey) -> Option<Vec<DestState>>,
    p: &Packet,
) -> Fate {
    let family = if p.daddr.is_ipv4() { "ip" } else { "ip6" };
    let triple = format!("{} . {} . {}", p.daddr, p.proto.lower(), p.dport);
    let has = |set: &'static str| elements.contains(&(family, set, triple.clone()));
    if has("firewall") {
        let prefix = format!("{triple} . ");
        let admitted = elements.iter().any(|(f, set, key)| {
            *f == family
                && *set == "firewall-allow"
                && key
                    .strip_prefix(&prefix)
                    .is_some_and(|r| contains(r, &p.saddr))
        });
        if !admitted {
            return Fate::Drop;
        }
    }
    if has("dropped") {
        return Fate::Drop;
    }
    if has("rejected") && p.proto == Protocol::Tcp {
        return Fate::Reject;
    }
    let key = ServiceKey {
        addr: p.daddr,
        protocol: p.proto,
        port: p.dport,
    };
    match server(&key) {
        None => Fate::NotAService,
        Some(dests) => {
            let live: BTreeSet<(IpAddr, u16)> = dests
                .iter()
                .filter(|d| d.weight > 0)
                .map(|d| (d.key.addr, d.key.port))
                .collect();
            if live.is_empty() {
                Fate::Reject
            } else {
                Fate::Dnat(live)
            }
        }
    }
}

/// Whether `range` (a CIDR, an address, or `first-last` as nft lists ranges) holds `ip`.
fn contains(range: &str, ip: &IpAddr) -> bool {
    if let Ok(net) = range.parse::<ipnet::IpNet>() {
        return net.contains(ip);
    }
    if let Ok(one) = range.parse::<IpAddr>() {
        return one == *ip;
    }
    match range
        .split_once('-')
        .map(|(a, b)| (a.trim().parse::<IpAddr>(), b.trim().parse::<IpAddr>()))
    {
        Some((Ok(a), Ok(b))) => a <= *ip && *ip <= b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_firewall_allow_element_admits_by_cidr_address_or_range_as_nft_lists_them() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(contains("203.0.113.0/24", &ip("203.0.113.9")));
        assert!(contains("203.0.113.9", &ip("203.0.113.9")));
        assert!(contains("203.0.113.8-203.0.113.10", &ip("203.0.113.9")));
        assert!(!contains("203.0.113.10-203.0.113.12", &ip("203.0.113.9")));
        assert!(!contains("198.51.100.0/24", &ip("203.0.113.9")));
    }
}
