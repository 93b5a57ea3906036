//! Repairing what someone else changed in place: each touched set (a map flushed, an element
//! deleted or added by hand) is read back and made what the mirror says, element by element;
//! each chain whose rules were touched (flushed, a rule deleted or added) is emptied and its
//! rules loaded again. Nothing else is read or rewritten. Whatever else someone changed
//! (chains or sets created or deleted, the table itself, notifications lost) is repaired by
//! adoption instead (`backend.rs`).
//!
//! Invariants: never changes the mirror (it makes the kernel equal to it); reads only the sets
//! named; a set that is gone, unknown, or whose elements do not all decode, or a chain kproxy
//! does not use, is not repaired here (`None`): the caller adopts. The chains' reloads go in
//! the first transaction; transactions hold at most `reconcile::CHUNK_OPS` element
//! operations, deletions first.

use std::collections::{BTreeMap, BTreeSet};

use super::diff::{Mirror, writes};
use super::encode;
use super::reconcile::{CHUNK_OPS, parse_listing};
use super::skeleton::{SETS, TABLE};
use super::transaction::{self, DynChain, Op, Transaction};
use crate::model::IpFamily;
use crate::nftables::transport::{NftError, Transport};

/// What to repair in place: sets and chains, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    pub sets: BTreeSet<(IpFamily, String)>,
    pub chains: BTreeSet<(IpFamily, String)>,
}

impl Repair {
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.chains.is_empty()
    }
}

/// Whether a change someone else made to the elements of `set` can be repaired here.
pub fn repairable_set(set: &str) -> bool {
    SETS.iter().any(|s| s.name == set)
}

/// The operations that empty chain `name` and load its rules as the mirror says; `None` for a
/// chain kproxy does not use.
fn reload_chain(mirror: &Mirror, family: IpFamily, name: &str) -> Option<Vec<Op>> {
    if let Some(ops) = transaction::reload_fixed(family, name, mirror.node()) {
        return Some(ops);
    }
    let c = DynChain::parse(name).filter(|c| mirror.uses_chain(family, c))?;
    let mut ops = vec![Op::FlushChain(family, name.to_string())];
    ops.extend(c.create(family).into_iter().skip(1));
    Some(ops)
}

/// The transactions that make each set and chain in `repair` what the mirror says; `None`
/// when one of them cannot be repaired in place.
pub fn transactions<T: Transport>(
    transport: &mut T,
    mirror: &Mirror,
    repair: &Repair,
) -> Result<Option<Vec<Transaction>>, NftError> {
    let mut rules = Vec::new();
    for (family, name) in &repair.chains {
        match reload_chain(mirror, *family, name) {
            Some(ops) => rules.extend(ops),
            None => return Ok(None),
        }
    }
    let mut found = BTreeMap::new();
    for (family, set) in &repair.sets {
        let Some(decl) = SETS.iter().find(|s| s.name == set) else {
            return Ok(None);
        };
        if !writes(decl.name) {
            // Written by packets (affinity): nothing kproxy keeps there.
            continue;
        }
        let Some(elements) = read(transport, *family, decl.name)? else {
            return Ok(None);
        };
        found.insert((*family, decl.name), elements);
    }
    let sets: BTreeSet<(IpFamily, &'static str)> = found.keys().copied().collect();
    let mut ops = Vec::new();
    for ((family, set), want) in mirror.sets_contents(&sets) {
        let found = &found[&(family, set)];
        for (k, v) in found {
            if want.get(k) != Some(v) {
                ops.push(Op::DeleteElement(family, set, k.clone()));
            }
        }
        for (k, v) in want {
            if found.get(&k) != Some(&v) {
                ops.push(Op::AddElement(family, set, k, v));
            }
        }
    }
    ops.sort_by_key(|op| !matches!(op, Op::DeleteElement(..)));
    let mut txs = Vec::new();
    let mut first = Transaction::default();
    first.extend(rules);
    for chunk in ops.chunks(CHUNK_OPS) {
        let mut tx = std::mem::take(&mut first);
        tx.extend(chunk.iter().cloned());
        txs.push(tx);
    }
    if !first.is_empty() {
        txs.push(first);
    }
    Ok(Some(txs))
}

/// The elements of one set as compile writes them; `None` when the set is gone or one of its
/// elements does not decode and its text cannot be listed.
fn read<T: Transport>(
    transport: &mut T,
    family: IpFamily,
    set: &'static str,
) -> Result<Option<BTreeMap<String, String>>, NftError> {
    let mut found = BTreeMap::new();
    let mut undecoded = false;
    let read = transport.read_set(
        family,
        TABLE,
        set,
        &mut |e| match encode::decode(set, family, &e) {
            Some((k, v)) => {
                found.insert(k, v);
            }
            None => undecoded = true,
        },
    );
    if let Some(exists) = read {
        if !exists? {
            return Ok(None);
        }
        if !undecoded {
            return Ok(Some(found));
        }
    }
    let text = match transport.list_set(family, TABLE, set)? {
        Some(text) => text,
        None => match transport.list_table(family, TABLE)? {
            Some(text) => text,
            None => return Ok(None),
        },
    };
    Ok(parse_listing(&text).sets.remove(set).map(|(_, e)| e))
}
