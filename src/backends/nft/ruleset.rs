//! kproxy's nftables tables as data: sets and maps with their elements, chains with their rule
//! texts, built by applying `nft -f` scripts (`script.rs` parses the one-line commands kproxy
//! sends and the block form `nft list table` and --dry-run print; `apply.rs` applies them with
//! the kernel's checks) and read by the packet tracer (`trace.rs`). The fake kernel of the tests
//! holds its state in these; `kproxy explain` builds them from the compiled ruleset and, with
//! --live, from the kernel's listing.
//!
//! Invariants: a script applies atomically (parsed whole, applied to a copy that replaces the
//! tables only when every command succeeded); elements are stored as canonical text, which is
//! the text kproxy writes; the checks are the kernel's as observed on nft 1.0.6 / kernel 6.18
//! (ENOENT for a missing table, set, chain or element; EEXIST for an element that exists with
//! another value, a set redeclared with another type, or a concatenated interval whose first or
//! last point falls inside another; EBUSY for a chain still jumped to or a set still used by a
//! rule), plus one crash of nft 1.0.6 itself (`ApplyError::Aborted`). Only kproxy's table name
//! is accepted.

pub mod apply;
pub mod script;
pub mod trace;
pub mod types;

use std::collections::BTreeMap;
use std::fmt::Write;

pub use trace::{Outcome, Packet, Trace};

use super::skeleton::TABLE;
use super::transaction::SetKind;
use crate::model::IpFamily;

/// Why a script does not apply to the tables; the message reads like nft's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("/dev/stdin:{line}: Error: syntax error: {msg}")]
    Syntax { line: usize, msg: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: No such file or directory ({what})")]
    NoSuch { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: File exists ({what})")]
    Exists { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: Device or resource busy ({what})")]
    Busy { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: Operation not supported ({what})")]
    NotSupported { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: conflicting intervals specified ({what})")]
    ConflictingIntervals { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: {what}")]
    Invalid { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: the fake kernel holds only kproxy's tables, not {table}")]
    ForeignTable { line: usize, table: String },
    /// nft itself crashed (exit 134), so nothing was sent to the kernel.
    #[error(
        "nft: netlink_linearize.c:799: netlink_gen_expr: Assertion `dreg < ctx->reg_low' failed (line {line}: {what})"
    )]
    Aborted { line: usize, what: String },
    #[error("injected failure")]
    Injected,
}

/// One set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    /// The declaration, normalised (`type …; flags …`).
    pub decl: String,
    pub ty: types::SetType,
    /// Canonical key text -> canonical value text ("" for a plain set).
    pub elements: BTreeMap<String, String>,
    /// Canonical key text -> the element's comment, for the elements that have one. Kept, and
    /// listed, as the kernel keeps an element's user data; the tracer never reads it.
    pub comments: BTreeMap<String, String>,
}

impl Set {
    /// The elements as a listing shows them: a comment in front of its value
    /// (`transaction::commented`), as adoption reads them.
    pub fn listed(&self) -> BTreeMap<String, String> {
        self.elements
            .iter()
            .map(|(k, v)| match self.comments.get(k) {
                Some(c) => (k.clone(), super::transaction::commented(c, v)),
                None => (k.clone(), v.clone()),
            })
            .collect()
    }
}

/// One chain: its base-chain head, if any, and its rules in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: Option<String>,
    pub rules: Vec<String>,
}

/// kproxy's table in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

/// Both families' tables (`None`: the table does not exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub v4: Option<Table>,
    pub v6: Option<Table>,
}

impl Tables {
    pub fn get(&self, family: IpFamily) -> Option<&Table> {
        match family {
            IpFamily::V4 => self.v4.as_ref(),
            IpFamily::V6 => self.v6.as_ref(),
        }
    }

    pub fn get_mut(&mut self, family: IpFamily) -> &mut Option<Table> {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }
}

/// Applies an `nft -f` script to `tables`, all of it or (on an error) nothing.
pub fn apply_script(tables: &mut Tables, script: &str) -> Result<(), ApplyError> {
    let cmds = script::parse(script).map_err(|e| ApplyError::Syntax {
        line: e.line,
        msg: e.msg,
    })?;
    let mut next = tables.clone();
    apply::apply(&mut next, &cmds)?;
    *tables = next;
    Ok(())
}

/// nft's listing: sets and maps first, then chains, one `set|map|chain NAME {` line each.
pub fn listing(t: &Table, family: IpFamily) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table {} {TABLE} {{", apply::family_word(family));
    let mut first = true;
    for (name, set) in &t.sets {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
        let kind = match set.kind {
            SetKind::Set => "set",
            SetKind::Map => "map",
        };
        let _ = writeln!(out, "\t{kind} {name} {{");
        for clause in set.decl.split("; ") {
            let _ = writeln!(out, "\t\t{clause}");
        }
        super::render::write_elements(&mut out, &set.listed());
        let _ = writeln!(out, "\t}}");
    }
    for (name, chain) in &t.chains {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
        let _ = writeln!(out, "\tchain {name} {{");
        if let Some(head) = &chain.head {
            let _ = writeln!(out, "\t\t{head};");
        }
        for rule in &chain.rules {
            let _ = writeln!(out, "\t\t{rule}");
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str("}\n");
    out
}

/// `nft list table` text of `family` in the words kproxy writes, so the tracer reads the
/// kernel's rules as it reads compiled ones: nft lists `dnat to … map @affinity:ip daddr …`
/// for kproxy's `dnat ip to … map @affinity : ip daddr …`. Other listing differences (a
/// protocol match folded into `tcp dport`, timeouts in other units, elements several to a
/// line) the parser and the tracer take as they are.
pub fn normalize_listing(text: &str, family: IpFamily) -> String {
    let dnat = format!("dnat {} to ", apply::family_word(family));
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let mut line = line.replace("dnat to ", &dnat);
        while let Some(at) = glued_map_colon(&line) {
            line.replace_range(at..at + 1, " : ");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The byte offset of a `:` glued to a `@name` (`@affinity:ip`), if any.
fn glued_map_colon(line: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = line[from..].find('@') {
        let start = from + i + 1;
        let end = line[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .map_or(line.len(), |e| start + e);
        if line[end..].starts_with(':') {
            return Some(end);
        }
        from = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_affinity_dnat_reads_as_kproxy_writes_it() {
        let listed = "\t\tmeta l4proto { tcp, udp, sctp } dnat to ip6 saddr . ip6 daddr map @affinity:ip6 daddr . meta l4proto . th dport map @affinity-ports\n";
        assert_eq!(
            normalize_listing(listed, IpFamily::V6),
            "\t\tmeta l4proto { tcp, udp, sctp } dnat ip6 to ip6 saddr . ip6 daddr map @affinity : ip6 daddr . meta l4proto . th dport map @affinity-ports\n"
        );
        let plain = "\t\tdnat ip to ip daddr . meta l4proto . tcp dport . numgen random mod 2 map @endpoints-tcp\n\t\t10.0.0.1 . tcp . 80 : goto lb-1,\n";
        assert_eq!(normalize_listing(plain, IpFamily::V4), plain);
    }
}
