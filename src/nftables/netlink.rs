//! A read-only nf_tables netlink probe: the number of rules in each chain of kproxy's table in
//! one family, from one `NFT_MSG_GETRULE` dump filtered by table in the kernel. It is how drift
//! (someone else flushing, deleting or editing kproxy's tables) is noticed cheaply: the dump
//! covers the fixed, small number of rules kproxy programs (never the sets' elements) and costs
//! well under a millisecond, so it can run several times a second.
//!
//! The same dump, filtered by table and chain, lets the iptables backend check iptables-nft's
//! chains (`chain_rules`).
//!
//! Invariants: never writes; only the named table (and chain) is dumped; a missing table is an empty map (no
//! error), because the kernel's filtered dump simply matches nothing.

use std::collections::BTreeMap;

use super::uapi::{
    NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE, NFT_MSG_NEWRULE, NFTA_RULE_CHAIN, NFTA_RULE_TABLE,
    NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
};
use crate::model::IpFamily;
use crate::nfnetlink;

/// Why the probe failed, named after the failing step.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("opening a netfilter netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("sending the rule dump request: {0}")]
    Send(std::io::Error),
    #[error("receiving the rule dump: {0}")]
    Receive(std::io::Error),
    #[error("the kernel refused the rule dump: {0}")]
    Refused(std::io::Error),
    #[error("malformed netlink message at byte {0}")]
    Malformed(usize),
}

/// Rule count per chain of kproxy's table in `family` (chains without rules are absent).
pub fn rule_counts(family: IpFamily, table: &str) -> Result<BTreeMap<String, usize>, ProbeError> {
    let mut counts = BTreeMap::new();
    dump(family, table, None, |chain, _| {
        *counts.entry(chain).or_default() += 1;
    })?;
    Ok(counts)
}

/// For one chain of any nf_tables table (iptables-nft's `nat`, `filter`, ...): how many rules
/// it has, and how many of them contain `needle` somewhere in their netlink encoding (a jump
/// target's name, for instance). A missing table or chain counts as (0, 0).
pub fn chain_rules(
    family: IpFamily,
    table: &str,
    chain: &str,
    needle: &[u8],
) -> Result<(usize, usize), ProbeError> {
    let (mut rules, mut matching) = (0, 0);
    dump(family, table, Some(chain), |_, message| {
        rules += 1;
        if needle.is_empty() || message.windows(needle.len()).any(|w| w == needle) {
            matching += 1;
        }
    })?;
    Ok((rules, matching))
}

/// One `NFT_MSG_GETRULE` dump filtered by table (and chain) in the kernel; `each` gets every
/// rule's chain and attributes.
pub(crate) fn dump(
    family: IpFamily,
    table: &str,
    chain: Option<&str>,
    mut each: impl FnMut(String, &[u8]),
) -> Result<(), ProbeError> {
    let socket = nfnetlink::socket().map_err(ProbeError::Socket)?;
    socket
        .send(&request(family, table, chain), 0)
        .map_err(ProbeError::Send)?;
    loop {
        let (buf, _) = socket.recv_from_full().map_err(ProbeError::Receive)?;
        if parse(&buf, &mut each)? {
            return Ok(());
        }
    }
}

/// The dump request: nlmsghdr, nfgenmsg, NFTA_RULE_TABLE (and NFTA_RULE_CHAIN).
fn request(family: IpFamily, table: &str, chain: Option<&str>) -> Vec<u8> {
    let mut attrs = Vec::new();
    let mut table = table.as_bytes().to_vec();
    table.push(0);
    nfnetlink::attr(&mut attrs, NFTA_RULE_TABLE, &table);
    if let Some(chain) = chain {
        let mut chain = chain.as_bytes().to_vec();
        chain.push(0);
        nfnetlink::attr(&mut attrs, NFTA_RULE_CHAIN, &chain);
    }
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
    let flags = NLM_F_REQUEST | NLM_F_DUMP;
    nfnetlink::request(kind, flags, 1, nfnetlink::nfproto(family), &attrs)
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ProbeError> {
    b.get(at..at + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or(ProbeError::Malformed(at))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ProbeError> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ProbeError::Malformed(at))
}

/// Hands each rule in one receive buffer to `each`; true once the dump is done.
fn parse(buf: &[u8], each: &mut impl FnMut(String, &[u8])) -> Result<bool, ProbeError> {
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(buf, at)? as usize;
        if len < 16 || at + len > buf.len() {
            return Err(ProbeError::Malformed(at));
        }
        match u16_at(buf, at + 4)? {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(buf, at + 16)? as i32;
                if errno != 0 {
                    return Err(ProbeError::Refused(std::io::Error::from_raw_os_error(
                        -errno,
                    )));
                }
            }
            t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                let attrs = &buf[at + 20..at + len];
                if let Some(chain) = chain_of(attrs)? {
                    each(chain, attrs);
                }
            }
            _ => {}
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(false)
}

/// The NFTA_RULE_CHAIN attribute of one rule message's attributes.
fn chain_of(attrs: &[u8]) -> Result<Option<String>, ProbeError> {
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let len = u16_at(attrs, at)? as usize;
        if len < 4 || at + len > attrs.len() {
            return Err(ProbeError::Malformed(at));
        }
        if u16_at(attrs, at + 2)? & NLA_TYPE_MASK == NFTA_RULE_CHAIN {
            let raw = &attrs[at + 4..at + len];
            let name = raw.split(|&b| b == 0).next().unwrap_or_default();
            return Ok(Some(String::from_utf8_lossy(name).into_owned()));
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table the tests ask about (the nftables backend's).
    const TABLE: &str = "kproxy";

    fn rule_message(chain: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        for (t, v) in [(NFTA_RULE_TABLE, TABLE), (NFTA_RULE_CHAIN, chain)] {
            let mut v = v.as_bytes().to_vec();
            v.push(0);
            nfnetlink::attr(&mut attrs, t, &v);
        }
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;
        nfnetlink::request(kind, 0, 0, 2, &attrs)
    }

    fn done() -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 14]);
        m
    }

    #[test]
    fn rule_messages_are_counted_per_chain_until_done() {
        let mut buf = rule_message("services");
        buf.extend(rule_message("nat-output"));
        buf.extend(rule_message("services"));
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut count = |chain: String, _: &[u8]| *counts.entry(chain).or_default() += 1;
        assert!(!parse(&buf, &mut count).unwrap(), "no DONE yet");
        assert!(parse(&done(), &mut count).unwrap());
        assert_eq!(counts["services"], 2);
        assert_eq!(counts["nat-output"], 1);
    }

    #[test]
    fn a_truncated_message_is_an_error_not_a_count() {
        let buf = rule_message("services");
        assert!(parse(&buf[..buf.len() - 8], &mut |_, _| {}).is_err());
    }

    #[test]
    fn the_request_asks_for_a_dump_of_kproxys_table_in_the_family() {
        let r = request(IpFamily::V6, TABLE, None);
        assert_eq!(u32_at(&r, 0).unwrap() as usize, r.len());
        assert_eq!(u16_at(&r, 6).unwrap(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(r[16], 10, "NFPROTO_IPV6");
        assert_eq!(&r[24..30], TABLE.as_bytes());
    }
}
