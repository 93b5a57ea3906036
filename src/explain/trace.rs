//! The second opinion of `kproxy explain`: the packet run by the mode's tracer through a
//! ruleset, either the one kproxy compiles from the plans (`compiled`) or the one in this
//! node's kernel (`live`), compared with the plan's answer ("agrees" / "differs: …").
//!
//! Invariants: the tracers are the ones the fake kernels' tests use (nftables: `ruleset`;
//! iptables: `ruleset`'s restore model; IPVS: virtual servers and the companion table), fed
//! with text or kernel state and never with the plans; `live` only reads the kernel. A ruleset
//! the tracer cannot follow for this packet is a difference, never an agreement.

use std::net::SocketAddr;

use super::{Explanation, Facts, Packet, Traced, Verdict, compare};
use crate::backends::nft::ruleset::{self as nft, Tables};
use crate::backends::nft::skeleton::TABLE;
use crate::backends::{BackendConfig, ProxyMode};
use crate::model::IpFamily;
use crate::nftables::transport::{NftCli, NftError, Transport};

/// Why the kernel's rules could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// nft could not list kproxy's table: run as root in the node's network namespace.
    #[error("listing kproxy's nftables table: {0}")]
    Nft(#[from] NftError),
    /// The listing is not what kproxy reads: a newer or foreign ruleset.
    #[error("reading kproxy's nftables table as listed: {0}")]
    Listing(String),
}

/// The packet through the rules kproxy compiles (`rules`: what --dry-run prints).
pub fn compiled(
    f: &Facts,
    cfg: &BackendConfig,
    rules: &str,
    p: &Packet,
    plan: &Explanation,
) -> String {
    let _ = cfg;
    let traced = match f.mode {
        ProxyMode::Nftables => {
            let mut tables = Tables::default();
            match nft::apply_script(&mut tables, rules) {
                Ok(()) => nft_trace(&tables, f, p),
                Err(e) => Err(format!("the compiled ruleset does not load: {e}")),
            }
        }
        ProxyMode::Iptables | ProxyMode::Ipvs => return "not traced in this mode".to_string(),
    };
    judge(plan, traced)
}

/// The packet through the rules in this node's kernel.
pub fn live(
    f: &Facts,
    cfg: &BackendConfig,
    p: &Packet,
    plan: &Explanation,
) -> Result<String, LiveError> {
    let _ = cfg;
    let traced = match f.mode {
        ProxyMode::Nftables => {
            let tables = nft_kernel(&mut NftCli::default())?;
            nft_trace(&tables, f, p)
        }
        ProxyMode::Iptables | ProxyMode::Ipvs => return Ok("not traced in this mode".into()),
    };
    Ok(judge(plan, traced))
}

fn judge(plan: &Explanation, traced: Result<Traced, String>) -> String {
    match traced {
        Ok(t) => compare(plan, &t),
        Err(why) => format!("differs: {why}"),
    }
}

/// kproxy's tables as the kernel lists them.
pub fn nft_kernel(transport: &mut impl Transport) -> Result<Tables, LiveError> {
    let mut tables = Tables::default();
    for family in [IpFamily::V4, IpFamily::V6] {
        if let Some(text) = transport.list_table(family, TABLE)? {
            let text = nft::normalize_listing(&text, family);
            nft::apply_script(&mut tables, &text).map_err(|e| LiveError::Listing(e.to_string()))?;
        }
    }
    Ok(tables)
}

fn nft_trace(tables: &Tables, f: &Facts, p: &Packet) -> Result<Traced, String> {
    let family = p.family();
    let packet = nft::Packet {
        saddr: p.src,
        daddr: p.dst,
        proto: p.proto,
        dport: p.dport,
        from_local: p.src.is_loopback() || f.node.local_addresses.contains(&p.src),
    };
    let t = nft::trace::trace(tables.get(family), family, &packet);
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
