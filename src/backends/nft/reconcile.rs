//! Start-up reconciliation: from what `nft list table` shows of kproxy's tables to the desired
//! state, as a list of bounded transactions, so a restart drops no connection and no single
//! transaction holds the kernel's nftables lock for long.
//!
//! Invariants: a state of at most `CHUNK_OPS` operations goes in one atomic transaction. Else
//! the first transaction empties every existing chain and reloads every rule in the
//! same breath (chains are few; sets are never flushed, so packets keep their endpoints); then
//! element chunks of at most `CHUNK_OPS` operations, ordered so that no packet is ever sent
//! where nothing waits: additions and changes of plain sets and endpoint maps, then of the
//! verdict maps that point at them, then deletions from the verdict maps, then from the rest; a
//! changed element's delete and add travel in one chunk. The last transaction deletes chains
//! and sets kproxy no longer declares. The packet-written `affinity` maps are never touched.
//! Elements whose text differs from nft's listing only in form are replaced, which is harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::skeleton;
use super::transaction::{Op, SetKind, Transaction};
use crate::model::IpFamily;

/// The most operations one transaction carries (elements; the first and last carry the rules
/// and deletions, which are few). 10,000 element operations commit in about 0.1 s here.
pub const CHUNK_OPS: usize = 10_000;

/// One family's kproxy table as `nft list table` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub chains: BTreeSet<String>,
    /// Set or map name -> (kind, key -> value; "" for plain sets).
    pub sets: BTreeMap<String, (SetKind, BTreeMap<String, String>)>,
}

/// Parses `nft list table` output (nft 1.0.x text: one `chain NAME {`, `set NAME {` or
/// `map NAME {` line per object, elements in `elements = { a, b }` over one or more lines).
pub fn parse_listing(text: &str) -> Listed {
    let mut listed = Listed::default();
    let mut current: Option<String> = None;
    let mut elements: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(buf) = elements.as_mut() {
            buf.push_str(trimmed);
            if trimmed.ends_with('}') {
                let done = elements.take().unwrap_or_default();
                if let Some(set) = current.as_ref().and_then(|s| listed.sets.get_mut(s)) {
                    collect(&done, &mut set.1);
                }
            }
            continue;
        }
        let mut words = trimmed.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("chain"), Some(name), Some("{")) => {
                listed.chains.insert(name.to_string());
                current = None;
            }
            (Some(kind @ ("set" | "map")), Some(name), Some("{")) => {
                let kind = if kind == "set" {
                    SetKind::Set
                } else {
                    SetKind::Map
                };
                listed
                    .sets
                    .insert(name.to_string(), (kind, BTreeMap::new()));
                current = Some(name.to_string());
            }
            _ => {
                if let Some(rest) = trimmed.strip_prefix("elements = {") {
                    if rest.ends_with('}') {
                        if let Some(set) = current.as_ref().and_then(|s| listed.sets.get_mut(s)) {
                            collect(rest, &mut set.1);
                        }
                    } else {
                        elements = Some(rest.to_string());
                    }
                }
            }
        }
    }
    listed
}

/// Adds the elements of `a : x, b : y }` (the text after `elements = {`) to `into`.
fn collect(text: &str, into: &mut BTreeMap<String, String>) {
    let body = text.trim().trim_end_matches('}');
    for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once(" : ") {
            Some((k, v)) => into.insert(k.trim().to_string(), v.trim().to_string()),
            None => into.insert(item.to_string(), String::new()),
        };
    }
}

/// Whether a set's values are verdicts (it dispatches packets to chains).
fn is_verdict_map(set: &str) -> bool {
    skeleton::SETS
        .iter()
        .any(|s| s.name == set && s.decl.contains(": verdict"))
}

/// The transactions that turn `listed` (per family; `None`: no table) into the state that
/// `load` (a full load into an empty kernel, as `diff` produces it) describes. The load's
/// texts move into the transactions: nothing is copied.
pub fn plan(load: Transaction, listed: &[(IpFamily, Option<Listed>)]) -> Vec<Transaction> {
    let mut first = Transaction::default();
    let empty = Listed::default();
    let listed_of = |family: IpFamily| {
        listed
            .iter()
            .find(|(f, _)| *f == family)
            .and_then(|(_, l)| l.as_ref())
            .unwrap_or(&empty)
    };
    for (family, l) in listed {
        for chain in l.iter().flat_map(|l| &l.chains) {
            first.push(Op::FlushChain(*family, chain.clone()));
        }
    }
    // Desired elements, and every non-element operation of the load (tables, sets, chains,
    // rules), which goes into the first transaction.
    let mut want: HashMap<(IpFamily, &'static str), BTreeMap<String, String>> = HashMap::new();
    let mut wanted_chains: BTreeSet<(IpFamily, String)> = BTreeSet::new();
    for op in load.into_ops() {
        match op {
            Op::AddElement(f, set, k, v) => {
                want.entry((f, set)).or_default().insert(k, v);
            }
            Op::AddChain(f, ref name, _) => {
                wanted_chains.insert((f, name.clone()));
                first.push(op);
            }
            other => first.push(other),
        }
    }

    // Element operations in four phases, see the module invariants.
    let mut phases: [Vec<Vec<Op>>; 4] = Default::default();
    for family in [IpFamily::V4, IpFamily::V6] {
        let have = listed_of(family);
        // The packet path writes the dynamic maps (affinity): never touched.
        let written = skeleton::SETS
            .iter()
            .filter(|s| !s.decl.contains("dynamic"));
        for set in written.map(|s| s.name) {
            let verdicts = is_verdict_map(set);
            let w = want.remove(&(family, set)).unwrap_or_default();
            let h = have.sets.get(set).map(|(_, e)| e);
            for k in h.into_iter().flat_map(|h| h.keys()) {
                if !w.contains_key(k.as_str()) {
                    let del = vec![Op::DeleteElement(family, set, k.clone())];
                    phases[if verdicts { 2 } else { 3 }].push(del);
                }
            }
            for (k, v) in w {
                let group = match h.and_then(|h| h.get(&k)) {
                    Some(old) if *old == v => continue,
                    Some(_) => vec![
                        Op::DeleteElement(family, set, k.clone()),
                        Op::AddElement(family, set, k, v),
                    ],
                    None => vec![Op::AddElement(family, set, k, v)],
                };
                phases[usize::from(verdicts)].push(group);
            }
        }
    }

    let mut last = Vec::new();
    for (family, l) in listed {
        let Some(l) = l else { continue };
        for chain in &l.chains {
            if !wanted_chains.contains(&(*family, chain.clone())) {
                last.push(Op::DeleteChain(*family, chain.clone()));
            }
        }
        for (name, (kind, _)) in &l.sets {
            if !skeleton::SETS.iter().any(|s| s.name == name) {
                last.push(Op::DeleteSet(*family, *kind, name.clone()));
            }
        }
    }

    let total = first.len() + phases.iter().flatten().map(Vec::len).sum::<usize>() + last.len();
    if total <= CHUNK_OPS {
        // Small enough for one atomic transaction.
        first.extend(phases.into_iter().flatten().flatten());
        first.extend(last);
        return vec![first];
    }
    let mut txs = vec![first];
    let mut chunk = Transaction::default();
    for group in phases.into_iter().flatten() {
        if chunk.len() + group.len() > CHUNK_OPS && !chunk.is_empty() {
            txs.push(std::mem::take(&mut chunk));
        }
        chunk.extend(group);
    }
    chunk.extend(last);
    if !chunk.is_empty() {
        txs.push(chunk);
    }
    txs
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
