//! The drift probe: a cheap, in-process snapshot of what would change if someone else removed
//! kproxy's rules (firewalld reloading, `iptables -F`, `iptables -X`), and what it should find.
//!
//! - iptables-nft: one filtered `NFT_MSG_GETRULE` dump per chain (kproxy's canary and entry
//!   chains, and the built-in chains it hooks): each chain's rule count, and for built-in chains
//!   only the rules that mention `KPROXY-` (its hooks), so other components adding their own
//!   rules is not drift. About 24 small dumps, well under a millisecond. Every chain probed is a
//!   fixed one, so what it should find follows from the mirror (`expected`), never from a
//!   measurement that someone else's flush could slip into.
//! - iptables-legacy: the kernel keeps each table as one blob; `IPT_SO_GET_INFO` returns its
//!   entry count and size without copying it. Any change to the nat or filter table, by anyone,
//!   changes the snapshot, so another component editing those tables also causes a resync.
//!   What it should find can only be measured after kproxy's own restore.
//!
//! Invariants: never writes; a missing table or chain is a value in the snapshot, not an error.

use std::collections::BTreeMap;

use super::compile::{Fixed, Table};
use super::names;
use super::variant::Variant;
use crate::model::IpFamily;
use crate::nftables::netlink;

/// Per (family, what): a number. Equal snapshots mean no drift.
pub type Snapshot = BTreeMap<(IpFamily, String), u64>;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("dumping iptables-nft rules: {0}")]
    Dump(#[from] netlink::ProbeError),
    #[error("reading the legacy {table} table's size: {source}")]
    TableInfo {
        table: &'static str,
        source: std::io::Error,
    },
}

/// The built-in chains kproxy hooks and its own entry chains, per table.
const CHAINS: &[(Table, &[&str])] = &[
    (
        Table::Nat,
        &[
            "PREROUTING",
            "OUTPUT",
            "POSTROUTING",
            names::SERVICES,
            names::POSTROUTING,
            names::MARK_MASQ,
            names::CANARY,
        ],
    ),
    (
        Table::Filter,
        &[
            "INPUT",
            "FORWARD",
            "OUTPUT",
            names::FILTER,
            names::FORWARD,
            names::CANARY,
        ],
    ),
];

pub fn snapshot(variant: Variant, families: &[IpFamily]) -> Result<Snapshot, ProbeError> {
    let mut out = Snapshot::new();
    for &family in families {
        match variant {
            Variant::Nft => nft(family, &mut out)?,
            Variant::Legacy => legacy(family, &mut out)?,
        }
    }
    Ok(out)
}

/// What an iptables-nft snapshot finds while the fixed chains and hooks are `fixed` in each
/// family: each probed kproxy chain's rules, and kproxy's hooks in each built-in chain.
pub fn expected<'a>(fixed: impl IntoIterator<Item = (IpFamily, &'a Fixed)>) -> Snapshot {
    let mut out = Snapshot::new();
    for (family, fixed) in fixed {
        for (table, chains) in CHAINS {
            for chain in *chains {
                let value = if chain.starts_with("KPROXY-") {
                    fixed
                        .chains
                        .iter()
                        .filter(|(t, c, _)| t == table && c == chain)
                        .map(|(_, _, rules)| rules.len())
                        .sum()
                } else {
                    fixed
                        .hooks
                        .iter()
                        .filter(|(t, c, _)| t == table && c == chain)
                        .count()
                };
                out.insert((family, format!("{table}/{chain}")), value as u64);
            }
        }
    }
    out
}

/// The kproxy chains whose rule counts differ between two iptables-nft snapshots, as (family,
/// table, chain); `None` when anything else differs too (a hook in a built-in chain).
pub fn differing_kproxy_chains(
    want: &Snapshot,
    found: &Snapshot,
) -> Option<Vec<(IpFamily, Table, String)>> {
    let keys: std::collections::BTreeSet<&(IpFamily, String)> =
        want.keys().chain(found.keys()).collect();
    keys.into_iter()
        .filter(|key| want.get(*key) != found.get(*key))
        .map(|(family, key)| {
            let (table, chain) = key.split_once('/')?;
            let table = Table::ALL.into_iter().find(|t| t.as_str() == table)?;
            chain
                .starts_with("KPROXY-")
                .then(|| (*family, table, chain.to_string()))
        })
        .collect()
}

/// The first (up to three) differences, e.g. `IPv4 nat/KPROXY-SERVICES: 2 -> 0`.
pub fn describe(want: &Snapshot, found: &Snapshot) -> String {
    let keys: std::collections::BTreeSet<&(IpFamily, String)> =
        want.keys().chain(found.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter_map(|key| {
            let (w, f) = (want.get(key), found.get(key));
            (w != f).then(|| {
                let (w, f) = (w.copied().unwrap_or(0), f.copied().unwrap_or(0));
                format!("{} {}: {w} -> {f}", key.0.as_str(), key.1)
            })
        })
        .take(3)
        .collect();
    diffs.join("; ")
}

fn nft(family: IpFamily, out: &mut Snapshot) -> Result<(), ProbeError> {
    for (table, chains) in CHAINS {
        for chain in *chains {
            let (rules, ours) = netlink::chain_rules(family, table.as_str(), chain, b"KPROXY-")?;
            let value = if chain.starts_with("KPROXY-") {
                rules
            } else {
                ours
            };
            out.insert((family, format!("{table}/{chain}")), value as u64);
        }
    }
    Ok(())
}

/// `struct ipt_getinfo` (and `ip6t_getinfo`, the same layout).
#[repr(C)]
struct GetInfo {
    name: [u8; 32],
    valid_hooks: u32,
    hook_entry: [u32; 5],
    underflow: [u32; 5],
    num_entries: u32,
    size: u32,
}

const SO_GET_INFO: libc::c_int = 64;

fn legacy(family: IpFamily, out: &mut Snapshot) -> Result<(), ProbeError> {
    let (domain, level) = match family {
        IpFamily::V4 => (libc::AF_INET, libc::IPPROTO_IP),
        IpFamily::V6 => (libc::AF_INET6, libc::IPPROTO_IPV6),
    };
    for (table, _) in CHAINS {
        let name = table.as_str();
        let info = table_info(domain, level, name).map_err(|source| ProbeError::TableInfo {
            table: name,
            source,
        })?;
        let (entries, size) = info.unwrap_or((0, 0));
        out.insert((family, format!("{name}/entries")), u64::from(entries));
        out.insert((family, format!("{name}/size")), u64::from(size));
    }
    Ok(())
}

/// (entries, size) of a legacy table, or None when the table does not exist.
fn table_info(
    domain: libc::c_int,
    level: libc::c_int,
    table: &str,
) -> std::io::Result<Option<(u32, u32)>> {
    // SAFETY: a plain socket call; the descriptor is closed below on every path.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut info = GetInfo {
        name: [0; 32],
        valid_hooks: 0,
        hook_entry: [0; 5],
        underflow: [0; 5],
        num_entries: 0,
        size: 0,
    };
    info.name[..table.len()].copy_from_slice(table.as_bytes());
    let mut len = std::mem::size_of::<GetInfo>() as libc::socklen_t;
    // SAFETY: `info` is a valid, writable ipt_getinfo and `len` its size.
    let rc = unsafe { libc::getsockopt(fd, level, SO_GET_INFO, (&raw mut info).cast(), &mut len) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and still open.
    unsafe { libc::close(fd) };
    match rc {
        0 => Ok(Some((info.num_entries, info.size))),
        _ if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        _ => Err(error),
    }
}
