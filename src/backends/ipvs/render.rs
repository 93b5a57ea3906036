//! The dry-run text of IPVS mode: the companion nftables script, the virtual servers in
//! `ipvsadm-restore` syntax, and the addresses bound to the dummy interface. Pure.
//!
//! Invariants: deterministic (servers sorted by key, destinations by address); the IPVS part
//! is valid `ipvsadm-restore` input, so an operator can load it by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::compile::{PortState, Server};
use super::netlink::ServiceKey;
use crate::model::Protocol;
use crate::node::IPVS_LINK;

fn flag(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    }
}

/// `ipvsadm-restore` lines for `servers`.
pub fn ipvsadm(servers: &BTreeMap<ServiceKey, Server>) -> String {
    let mut out = String::new();
    for (key, s) in servers {
        let vip = std::net::SocketAddr::new(key.addr, key.port);
        let _ = write!(out, "-A {} {vip} -s {}", flag(key.protocol), s.vs.scheduler);
        if let Some(t) = s.vs.persistence {
            let _ = write!(out, " -p {t}");
        }
        out.push('\n');
        for d in &s.dests {
            let rip = std::net::SocketAddr::new(d.addr, d.port);
            let _ = writeln!(out, "-a {} {vip} -r {rip} -m -w 1", flag(key.protocol));
        }
    }
    out
}

/// The whole dry-run text.
pub fn render(states: &[PortState], companion: &str) -> String {
    let servers: BTreeMap<ServiceKey, Server> = states
        .iter()
        .flat_map(|s| s.servers.iter().map(|(k, v)| (*k, v.clone())))
        .collect();
    let addresses: BTreeSet<_> = states.iter().flat_map(|s| s.addresses.iter()).collect();
    let mut out = String::from("# nftables: the companion tables\n");
    out.push_str(companion);
    out.push_str("# IPVS (ipvsadm-restore)\n");
    out.push_str(&ipvsadm(&servers));
    let _ = writeln!(out, "# addresses bound to {IPVS_LINK}");
    for a in addresses {
        let len = if a.is_ipv4() { 32 } else { 128 };
        let _ = writeln!(out, "{a}/{len}");
    }
    out
}
