//! A transaction on kproxy's nftables tables as a value: an ordered list of operations whose
//! `Display` is real `nft -f` syntax (modelled on knftables' transaction.go).
//!
//! Invariants: every operation names a kproxy table (`skeleton::TABLE`) and nothing else; the
//! text of an operation never spans a `#` comment, so each one is a single nft command;
//! consecutive element operations on one set are printed as one command, in order, and `len()`
//! still counts them one by one. nft applies the whole text atomically.

use std::collections::BTreeSet;
use std::fmt;

use super::compile::{self, Desired};
use super::skeleton::{self, TABLE, fill};
use crate::model::IpFamily;

/// Elements per printed `add element` / `delete element` command (bounds nft's line length).
const ELEMENTS_PER_COMMAND: usize = 1024;

/// A chain that exists only while some element jumps to it: `<prefix>-N` (N endpoints) or
/// `affinity-T` (timeout T seconds). Their number is bounded by the largest endpoint count and
/// the distinct timeouts, never by the number of Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DynChain {
    Lb(&'static str, usize),
    /// `<prefix>-T`: `affinity-T` or `np-affinity-T`.
    Affinity(&'static str, u32),
}

impl DynChain {
    /// The dynamic chain named `name` (`lb-3`, `np-affinity-10800`), if it is one.
    pub fn parse(name: &str) -> Option<DynChain> {
        let (prefix, n) = name.rsplit_once('-')?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if let Some((p, _)) = skeleton::LB_FAMILIES.iter().find(|(p, _)| *p == prefix) {
            return Some(DynChain::Lb(p, n.parse().ok()?));
        }
        let (p, _) = skeleton::AFFINITY_FAMILIES
            .iter()
            .find(|(p, _)| *p == prefix)?;
        Some(DynChain::Affinity(p, n.parse().ok()?))
    }

    pub fn name(&self) -> String {
        match self {
            DynChain::Lb(prefix, n) => format!("{prefix}-{n}"),
            DynChain::Affinity(prefix, t) => format!("{prefix}-{t}"),
        }
    }

    /// The operations that create this chain with its rules.
    pub fn create(&self, family: IpFamily) -> Vec<Op> {
        let rules = match self {
            DynChain::Lb(prefix, n) => compile::lb_rules(prefix, *n),
            DynChain::Affinity(prefix, t) => compile::affinity_rules(prefix, *t),
        };
        let name = self.name();
        let mut ops = vec![Op::AddChain(family, name.clone(), None)];
        ops.extend(
            rules
                .iter()
                .map(|r| Op::AddRule(family, name.clone(), fill(r, family))),
        );
        ops
    }
}

/// Whether a named object is a set or a map (they take different keywords).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    Set,
    Map,
}

impl SetKind {
    fn of_decl(decl: &str) -> SetKind {
        if decl.contains(" : ") {
            SetKind::Map
        } else {
            SetKind::Set
        }
    }

    fn keyword(self) -> &'static str {
        match self {
            SetKind::Set => "set",
            SetKind::Map => "map",
        }
    }
}

/// One nft command on a kproxy table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable(IpFamily),
    DeleteTable(IpFamily),
    /// A set or map from `skeleton::SETS`, by name.
    AddSet(IpFamily, &'static str),
    FlushSet(IpFamily, SetKind, String),
    DeleteSet(IpFamily, SetKind, String),
    /// A chain; with a base-chain head (`type … hook … priority …; policy …;`) if given.
    AddChain(IpFamily, String, Option<String>),
    FlushChain(IpFamily, String),
    DeleteChain(IpFamily, String),
    AddRule(IpFamily, String, String),
    /// Set, key, value ("" for a plain set).
    AddElement(IpFamily, &'static str, String, String),
    DeleteElement(IpFamily, &'static str, String),
}

/// An ordered list of operations, applied atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    ops: Vec<Op>,
}

impl Transaction {
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn extend(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.ops.extend(ops);
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operations, moved out.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

pub use crate::nftables::family_name;

/// The fixed part of both tables: tables, every set and map, the fixed chains and their rules.
/// `node` decides the configuration-dependent rule of `services`. Idempotent on an existing table
/// whose chains were flushed.
pub fn skeleton(node: &Desired) -> Vec<Op> {
    let mut ops = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        ops.push(Op::AddTable(family));
        ops.extend(skeleton::SETS.iter().map(|s| Op::AddSet(family, s.name)));
        for c in skeleton::CHAINS {
            ops.push(Op::AddChain(family, c.name.to_string(), None));
        }
        for b in skeleton::BASE_CHAINS {
            let head = format!(
                "type {} hook {} priority {}; policy accept;",
                b.kind, b.hook, b.priority
            );
            ops.push(Op::AddChain(family, b.name.to_string(), Some(head)));
        }
        for c in skeleton::CHAINS {
            for r in compile::static_rules(c, node, family) {
                ops.push(Op::AddRule(family, c.name.to_string(), fill(&r, family)));
            }
        }
        for b in skeleton::BASE_CHAINS {
            for r in b.rules {
                ops.push(Op::AddRule(family, b.name.to_string(), fill(r, family)));
            }
        }
    }
    ops
}

/// The operations that empty fixed chain `name` and load its rules again (`None` for a name
/// that is not a fixed chain).
pub fn reload_fixed(family: IpFamily, name: &str, node: &Desired) -> Option<Vec<Op>> {
    let rules: Vec<String> = if let Some(c) = skeleton::CHAINS.iter().find(|c| c.name == name) {
        compile::static_rules(c, node, family)
            .iter()
            .map(|r| fill(r, family))
            .collect()
    } else {
        let b = skeleton::BASE_CHAINS.iter().find(|b| b.name == name)?;
        b.rules.iter().map(|r| fill(r, family)).collect()
    };
    let mut ops = vec![Op::FlushChain(family, name.to_string())];
    ops.extend(
        rules
            .into_iter()
            .map(|r| Op::AddRule(family, name.to_string(), r)),
    );
    Some(ops)
}

/// The names of the fixed chains (base and regular).
pub fn static_chain_names() -> BTreeSet<&'static str> {
    let regular = skeleton::CHAINS.iter().map(|c| c.name);
    regular
        .chain(skeleton::BASE_CHAINS.iter().map(|b| b.name))
        .collect()
}

/// An element as nft writes it: `key`, or `key : value` for a map; a value that carries a
/// comment (`commented`) follows the key as it is: `key comment "…"`, `key comment "…" : value`.
pub fn element(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else if value.starts_with(COMMENT) {
        format!("{key} {value}")
    } else {
        format!("{key} : {value}")
    }
}

const COMMENT: &str = "comment \"";

/// The value text of an element with a comment, in the form nft lists it after the key:
/// `comment "C"` for a plain set, `comment "C" : V` for a map. The comment is part of the
/// value everywhere values are compared (the mirror's value hashes, adoption, repair), so an
/// element whose comment differs, or that has none (written by a kproxy before comments), is
/// deleted and added again like any element with another value; nothing else reads it.
/// `comment` holds no `"` (`backends::comment`).
pub fn commented(comment: &str, value: &str) -> String {
    if value.is_empty() {
        format!("{COMMENT}{comment}\"")
    } else {
        format!("{COMMENT}{comment}\" : {value}")
    }
}

/// An element value's comment, if it has one, and its bare value (`commented`'s inverse).
pub fn split_comment(value: &str) -> (Option<&str>, &str) {
    let Some(rest) = value.strip_prefix(COMMENT) else {
        return (None, value);
    };
    match rest.split_once('"') {
        Some((comment, tail)) => (Some(comment), tail.strip_prefix(" : ").unwrap_or(tail)),
        None => (None, value),
    }
}

impl fmt::Display for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.ops.len() {
            // Coalesce a run of element operations of one kind on one set into one command.
            let (verb, fam, set) = match &self.ops[i] {
                Op::AddElement(fam, set, ..) => ("add", *fam, *set),
                Op::DeleteElement(fam, set, _) => ("delete", *fam, *set),
                op => {
                    write_op(f, op)?;
                    i += 1;
                    continue;
                }
            };
            let mut items = Vec::new();
            while let Some(op) = self.ops.get(i)
                && items.len() < ELEMENTS_PER_COMMAND
            {
                match op {
                    Op::AddElement(f2, s2, k, v) if verb == "add" && (*f2, *s2) == (fam, set) => {
                        items.push(element(k, v))
                    }
                    Op::DeleteElement(f2, s2, k)
                        if verb == "delete" && (*f2, *s2) == (fam, set) =>
                    {
                        items.push(k.clone())
                    }
                    _ => break,
                }
                i += 1;
            }
            let fam = family_name(fam);
            writeln!(
                f,
                "{verb} element {fam} {TABLE} {set} {{ {} }}",
                items.join(", ")
            )?;
        }
        Ok(())
    }
}

fn write_op(f: &mut fmt::Formatter<'_>, op: &Op) -> fmt::Result {
    let t = TABLE;
    match op {
        Op::AddTable(fam) => writeln!(f, "add table {} {t}", family_name(*fam)),
        Op::DeleteTable(fam) => writeln!(f, "delete table {} {t}", family_name(*fam)),
        Op::AddSet(fam, name) => {
            let decl = skeleton::SETS
                .iter()
                .find(|s| s.name == *name)
                .map(|s| s.decl)
                .unwrap_or_default();
            let kind = SetKind::of_decl(decl).keyword();
            let decl = fill(decl, *fam);
            writeln!(
                f,
                "add {kind} {} {t} {name} {{ {decl} }}",
                family_name(*fam)
            )
        }
        Op::FlushSet(fam, kind, name) => {
            writeln!(
                f,
                "flush {} {} {t} {name}",
                kind.keyword(),
                family_name(*fam)
            )
        }
        Op::DeleteSet(fam, kind, name) => {
            writeln!(
                f,
                "delete {} {} {t} {name}",
                kind.keyword(),
                family_name(*fam)
            )
        }
        Op::AddChain(fam, name, None) => writeln!(f, "add chain {} {t} {name}", family_name(*fam)),
        Op::AddChain(fam, name, Some(head)) => {
            writeln!(f, "add chain {} {t} {name} {{ {head} }}", family_name(*fam))
        }
        Op::FlushChain(fam, name) => writeln!(f, "flush chain {} {t} {name}", family_name(*fam)),
        Op::DeleteChain(fam, name) => writeln!(f, "delete chain {} {t} {name}", family_name(*fam)),
        Op::AddRule(fam, chain, rule) => {
            writeln!(f, "add rule {} {t} {chain} {rule}", family_name(*fam))
        }
        Op::AddElement(..) | Op::DeleteElement(..) => Ok(()),
    }
}
