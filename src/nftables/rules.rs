//! A table's rules read back over netlink: one `NFT_MSG_GETRULE` dump filtered by table, each
//! rule as its chain and its expressions (name and attributes) in order. It is how `kproxy
//! explain --live` reads kproxy's rules: nft fills its cache with every set element before it
//! lists even one chain (1.6 s at 10,000 Services), while kproxy's table holds a few dozen
//! rules whatever the number of Services.
//!
//! Invariants: never writes; only the named table is dumped; a missing table is no rules; an
//! expression is kept as the kernel sent it: what it means is the caller's business.

use super::listing::{attributes, be32, c_str};
use super::netlink::{ProbeError, dump};
use super::uapi::{NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE};
use crate::model::IpFamily;

/// NFTA_RULE_EXPRESSIONS, a list of NFTA_LIST_ELEM; each holds NFTA_EXPR_NAME, NFTA_EXPR_DATA.
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// One rule: its chain and its expressions, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub exprs: Vec<Expr>,
}

/// One expression: its name (`payload`, `lookup`, …) and its attributes (type, payload).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expr {
    pub name: String,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

impl Expr {
    fn raw(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    /// A 32-bit attribute (nf_tables sends them big-endian).
    pub fn u32(&self, kind: u16) -> Option<u32> {
        be32(self.raw(kind)?)
    }

    /// A 64-bit attribute (big-endian), such as a timeout in milliseconds.
    pub fn u64(&self, kind: u16) -> Option<u64> {
        Some(u64::from_be_bytes(
            self.raw(kind)?.get(..8)?.try_into().ok()?,
        ))
    }

    /// An 8-bit attribute.
    pub fn u8(&self, kind: u16) -> Option<u8> {
        self.raw(kind)?.first().copied()
    }

    /// A string attribute.
    pub fn str(&self, kind: u16) -> Option<&str> {
        c_str(self.raw(kind)?)
    }

    /// The NFTA_DATA_VALUE bytes of a nested data attribute (cmp's data, bitwise's mask).
    pub fn value(&self, kind: u16) -> Option<&[u8]> {
        let nested = attributes(self.raw(kind)?).ok()?;
        nested
            .into_iter()
            .find(|(k, _)| *k == NFTA_DATA_VALUE)
            .map(|(_, v)| v)
    }

    /// The verdict (code, chain) of a nested data attribute (immediate's data).
    pub fn verdict(&self, kind: u16) -> Option<(i32, Option<String>)> {
        let nested = attributes(self.raw(kind)?).ok()?;
        let (_, verdict) = nested.into_iter().find(|(k, _)| *k == NFTA_DATA_VERDICT)?;
        let (mut code, mut chain) = (None, None);
        for (k, v) in attributes(verdict).ok()? {
            match k {
                NFTA_VERDICT_CODE => code = be32(v).map(|c| c as i32),
                NFTA_VERDICT_CHAIN => chain = c_str(v).map(str::to_string),
                _ => {}
            }
        }
        Some((code?, chain))
    }
}

/// Every rule of `table` in `family`, chain by chain in the kernel's order.
pub fn rules(family: IpFamily, table: &str) -> Result<Vec<Rule>, ProbeError> {
    let mut out = Vec::new();
    let mut failed = None;
    dump(family, table, None, |chain, attrs| match exprs(attrs) {
        Ok(exprs) => out.push(Rule { chain, exprs }),
        Err(e) => failed = failed.take().or(Some(e)),
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The expressions of one rule message's attributes.
pub fn exprs(attrs: &[u8]) -> Result<Vec<Expr>, ProbeError> {
    let mut out = Vec::new();
    for (kind, list) in attributes(attrs)? {
        if kind != NFTA_RULE_EXPRESSIONS {
            continue;
        }
        for (_, elem) in attributes(list)? {
            let mut e = Expr::default();
            for (k, v) in attributes(elem)? {
                match k {
                    NFTA_EXPR_NAME => e.name = c_str(v).unwrap_or_default().to_string(),
                    NFTA_EXPR_DATA => {
                        e.attrs = attributes(v)?
                            .into_iter()
                            .map(|(k, v)| (k, v.to_vec()))
                            .collect();
                    }
                    _ => {}
                }
            }
            out.push(e);
        }
    }
    Ok(out)
}
