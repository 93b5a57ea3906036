//! A load, streamed port by port: each port is compiled, its elements go into the current
//! transaction and its records into the mirror being built, and a transaction is sent as soon
//! as it holds `chunk` operations. At no time does every element's text exist at once (a whole
//! load as one diff held ~70 MiB of texts and pending records at 10,000 Services × 10
//! endpoints). Into empty tables (a cold start) or over what adoption `Found` (a restart): then
//! an element already there with its value costs nothing, one with another value is replaced
//! in its port's transaction, and what no port wants is deleted after every port was loaded
//! (verdict maps first), its texts read again only then (`unwanted`).
//!
//! Invariants: the mirror built is exactly the one committing the whole load as one diff would
//! give (`a_streamed_load_builds_the_mirror_and_sends_the_operations_of_one_whole_load`);
//! it is returned only when every transaction was accepted. The first transaction holds the
//! skeleton, the node's elements and the first ports, up to `FIRST_CHUNK_OPS`: a load that
//! small is one atomic transaction. After it, each transaction holds whole ports, so a
//! Service appears complete at once; a chain a later port needs first goes in a transaction of
//! its own just before (chains and rules are text; element-only transactions can go as
//! netlink batches). Over a
//! found table the first transaction also empties every chain found and reloads the rules of
//! each (a dynamic chain's follow from its name), so no packet meets an empty chain; chains
//! and sets kproxy no longer uses go in the last transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{Desired, FamilyMirror, Mirror, Owner, Parts, chains_of, shared, value_hash};
use crate::backends::nft::elements::ElemId;
use crate::backends::nft::skeleton;
use crate::backends::nft::transaction::{
    DynChain, Op, SetKind, Transaction, skeleton as skeleton_ops, static_chain_names,
};
use crate::model::IpFamily;

/// What adoption found of kproxy's table in one family: its chains and named sets, and each
/// element of the sets kproxy writes as its id and value hash, marked as a port wants it.
#[derive(Debug, Default)]
pub struct Found {
    pub chains: BTreeSet<String>,
    pub sets: BTreeMap<String, SetKind>,
    elements: HashMap<ElemId, Seen>,
}

#[derive(Debug)]
struct Seen {
    value: u64,
    wanted: bool,
}

impl Found {
    /// Records an element of `set` found in the kernel; ignored for a set kproxy does not write
    /// and for `REFILLED`.
    pub fn element(&mut self, set: &str, key: &str, value: &str) {
        if writes(set) && !REFILLED.contains(&set) {
            let seen = Seen {
                value: value_hash(value),
                wanted: false,
            };
            self.elements.insert(ElemId::of(&[set, key]), seen);
        }
    }
}

/// The node's interval sets (pod CIDRs, ServiceCIDRs): emptied and filled again in the first
/// transaction, never element by element, since their new elements may overlap the old (the
/// kernel refuses 10.244.9.0/24 beside 10.244.0.0/16 when --detect-local-mode or the Node's
/// podCIDRs changed across a restart). They hold a few elements per family.
const REFILLED: &[&str] = &["cluster-cidrs", "service-cidrs"];

/// Whether kproxy writes `set`'s elements (declared, and not one the packet path fills).
pub fn writes(set: &str) -> bool {
    skeleton::SETS
        .iter()
        .any(|s| s.name == set && !s.decl.contains("dynamic"))
}

/// Of the found elements, whether no port wanted this one: what `unwanted` is asked about.
pub type Unwanted<'a> = &'a (dyn Fn(&str, &str) -> bool + Sync);

/// Where a load goes: the transactions, and (after an adoption) the found elements no port
/// wanted, read again as (set, key) texts of a family.
pub trait Sink {
    type Error;
    fn send(&mut self, tx: Transaction) -> Result<(), Self::Error>;
    fn unwanted(
        &mut self,
        family: IpFamily,
        pick: Unwanted,
    ) -> Result<Vec<(&'static str, String)>, Self::Error>;
}

/// A sink for a load into empty tables: nothing was found, so nothing is unwanted.
struct Fresh<F>(F);

impl<E, F: FnMut(Transaction) -> Result<(), E>> Sink for Fresh<F> {
    type Error = E;
    fn send(&mut self, tx: Transaction) -> Result<(), E> {
        (self.0)(tx)
    }
    fn unwanted(&mut self, _: IpFamily, _: Unwanted) -> Result<Vec<(&'static str, String)>, E> {
        Ok(Vec::new())
    }
}

/// The first transaction's size: it is text (the skeleton's chains and rules are), which
/// libnftables parses in kproxy's heap (~1.7 KiB per operation), so it stays small; a load that
/// fits stays one atomic transaction.
const FIRST_CHUNK_OPS: usize = 1_000;

/// Streams `desired` into empty tables through `send`, in transactions of about `chunk`
/// operations (never splitting a port); the mirror of it all once every one went through.
pub fn load_fresh<E>(
    desired: Parts,
    chunk: usize,
    send: impl FnMut(Transaction) -> Result<(), E>,
) -> Result<Mirror, E> {
    load(desired, [None, None], chunk, &mut Fresh(send))
}

/// Streams `desired` over what was `found` per family (IPv4, IPv6) into `sink`, as
/// `load_fresh` does.
pub fn load<S: Sink>(
    desired: Parts,
    found: [Option<Found>; 2],
    chunk: usize,
    sink: &mut S,
) -> Result<Mirror, S::Error> {
    let facts = Arc::new(desired.facts);
    let mut mirror = Mirror {
        loaded: true,
        ..Mirror::default()
    };
    for (family, (records, vips)) in estimate(desired.plans) {
        let fm = mirror.family_mut(family);
        fm.elements.reserve(records);
        fm.vips.reserve(vips);
    }
    let mut l = Loader {
        mirror,
        chains: Transaction::default(),
        tx: Transaction::default(),
        first: true,
        found,
        existing: HashSet::new(),
        tail: Vec::new(),
    };
    // Every chain found is emptied and, unless it goes, reloaded in the same transaction.
    for (family, f) in families(&l.found) {
        for chain in &f.chains {
            l.tx.push(Op::FlushChain(family, chain.clone()));
        }
        for set in REFILLED.iter().filter(|s| f.sets.contains_key(**s)) {
            l.tx.push(Op::FlushSet(family, SetKind::Set, set.to_string()));
        }
    }
    l.tx.extend(skeleton_ops(&desired.node));
    let dynamic: Vec<(IpFamily, DynChain)> = families(&l.found)
        .flat_map(|(family, f)| {
            f.chains
                .iter()
                .filter_map(move |c| Some((family, DynChain::parse(c)?)))
        })
        .collect();
    for (family, c) in dynamic {
        l.tx.extend(c.create(family));
        l.existing.insert((family, c));
    }
    l.add(desired.node.clone());
    l.mirror.node = desired.node;
    for (name, planned) in desired.plans {
        let owner = Owner {
            planned: planned.clone(),
            facts: facts.clone(),
        };
        l.add(owner.compile());
        l.mirror.ports.insert(name.clone(), owner);
        let limit = if l.first {
            chunk.min(FIRST_CHUNK_OPS)
        } else {
            chunk
        };
        if l.tx.len() >= limit {
            l.flush(sink)?;
        }
    }
    if !desired.plans.is_empty() {
        // As a diff records it: the facts the ports were compiled with.
        l.mirror.facts = Some(facts);
    }
    let (deletes, last) = l.leftovers(sink)?;
    if l.first && l.tx.len() + deletes.len() + last.len() <= chunk.min(FIRST_CHUNK_OPS) {
        // Small enough for one atomic transaction, leftovers removed last.
        l.tail = deletes.into_iter().chain(last).collect();
        l.flush(sink)?;
        return Ok(l.mirror);
    }
    l.flush(sink)?;
    let mut deletes = deletes.into_iter().peekable();
    while deletes.peek().is_some() {
        sink.send(grouped(deletes.by_ref().take(chunk).collect()))?;
    }
    if !last.is_empty() {
        let mut tx = Transaction::default();
        tx.extend(last);
        sink.send(tx)?;
    }
    Ok(l.mirror)
}

/// The families with a found table.
fn families(found: &[Option<Found>; 2]) -> impl Iterator<Item = (IpFamily, &Found)> {
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .zip(found)
        .filter_map(|(family, f)| Some((family, f.as_ref()?)))
}

/// About how many shared elements (the only ones with a record) `plans` give per family: a
/// hairpin pair per endpoint, and a live pair per endpoint of an affinity port; and apart, the
/// ClusterIPs. Reserved up front, the tables never grow by doubling during a load, which held
/// the old and the new table at once.
fn estimate(plans: &crate::backends::Plans) -> [(IpFamily, (usize, usize)); 2] {
    let (mut v4, mut v6) = ((0, 0), (0, 0));
    for planned in plans.values() {
        let per = 1 + usize::from(planned.port.affinity_timeout_seconds.is_some());
        for e in &planned.endpoints {
            if e.ip.is_ipv4() { &mut v4 } else { &mut v6 }.0 += per;
        }
        // `cluster-ips`: one record per ClusterIP (counted once per port: a little over).
        for ip in &planned.port.cluster_ips {
            if ip.is_ipv4() { &mut v4 } else { &mut v6 }.1 += 1;
        }
    }
    [(IpFamily::V4, v4), (IpFamily::V6, v6)]
}

struct Loader {
    mirror: Mirror,
    /// Chains the pending elements need that do not exist yet.
    chains: Transaction,
    tx: Transaction,
    /// Nothing was sent yet: chains go into the first transaction itself.
    first: bool,
    /// What adoption found, per family (IPv4, IPv6).
    found: [Option<Found>; 2],
    /// Dynamic chains found (and reloaded by the first transaction).
    existing: HashSet<(IpFamily, DynChain)>,
    /// The leftovers' deletions, when they go at the end of the first transaction.
    tail: Vec<Op>,
}

impl Loader {
    /// Sends the chains the pending elements need, then the elements.
    fn flush<S: Sink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        if self.first {
            let chains = std::mem::take(&mut self.chains).into_ops();
            // Into the first transaction, after the skeleton's tables and before its elements.
            let ops = std::mem::take(&mut self.tx).into_ops();
            let at = ops
                .iter()
                .position(|op| matches!(op, Op::AddElement(..) | Op::DeleteElement(..)))
                .unwrap_or(ops.len());
            let mut first = Transaction::default();
            let mut ops = ops.into_iter();
            first.extend(ops.by_ref().take(at));
            first.extend(chains);
            first.extend(grouped(ops.collect()).into_ops());
            first.extend(std::mem::take(&mut self.tail));
            self.first = false;
            return sink.send(first);
        }
        if !self.chains.is_empty() {
            sink.send(std::mem::take(&mut self.chains))?;
        }
        if !self.tx.is_empty() {
            sink.send(grouped(std::mem::take(&mut self.tx).into_ops()))?;
        }
        Ok(())
    }

    /// Adds one owner's contribution: its elements (moved, not copied) and chain references.
    fn add(&mut self, d: Desired) {
        for family in [IpFamily::V4, IpFamily::V6] {
            let fam = d.family(family);
            let fm = self.mirror.family_mut(family);
            for c in chains_of(fam) {
                let refs = fm.chains.entry(c).or_insert(0);
                if *refs == 0 && !self.existing.contains(&(family, c)) {
                    self.chains.extend(c.create(family));
                }
                *refs += 1;
            }
        }
        let Desired { v4, v6, .. } = d;
        let [found_v4, found_v6] = &mut self.found;
        for (family, fam, found) in [(IpFamily::V4, v4, found_v4), (IpFamily::V6, v6, found_v6)] {
            let fm = self.mirror.family_mut(family);
            let mut found = found.as_mut();
            for (set, elements) in fam.sets {
                for (key, value) in elements {
                    let e = (family, set, key, value);
                    add_element(fm, found.as_deref_mut(), &mut self.tx, e);
                }
            }
        }
    }

    /// After every port: the deletions of what was found and no port wants (element
    /// deletions, verdict maps first; then the chains and sets kproxy no longer uses).
    fn leftovers<S: Sink>(&mut self, sink: &mut S) -> Result<(Vec<Op>, Vec<Op>), S::Error> {
        let mut deletes: Vec<Op> = Vec::new();
        let found = std::mem::take(&mut self.found);
        for (family, f) in families(&found) {
            if f.elements.values().all(|s| s.wanted) {
                continue;
            }
            let pick = |set: &str, key: &str| {
                f.elements
                    .get(&ElemId::of(&[set, key]))
                    .is_some_and(|s| !s.wanted)
            };
            for (set, key) in sink.unwanted(family, &pick)? {
                deletes.push(Op::DeleteElement(family, set, key));
            }
        }
        // Verdict maps first: nothing is sent to an endpoint slot that is gone.
        deletes.sort_by_key(|op| match op {
            Op::DeleteElement(_, set, _) => !is_verdict_map(set),
            _ => true,
        });
        let mut last = Vec::new();
        let fixed = static_chain_names();
        for (family, f) in families(&found) {
            let used = &self.mirror.family(family).chains;
            for chain in &f.chains {
                let keep = match DynChain::parse(chain) {
                    Some(c) => used.get(&c).is_some_and(|refs| *refs > 0),
                    None => fixed.contains(chain.as_str()),
                };
                if !keep {
                    last.push(Op::DeleteChain(family, chain.clone()));
                }
            }
            for (name, kind) in &f.sets {
                if !skeleton::SETS.iter().any(|s| s.name == name) {
                    last.push(Op::DeleteSet(family, *kind, name.clone()));
                }
            }
        }
        Ok((deletes, last))
    }
}

/// Whether a set's values are verdicts (it dispatches packets to chains).
fn is_verdict_map(set: &str) -> bool {
    skeleton::SETS
        .iter()
        .any(|s| s.name == set && s.decl.contains(": verdict"))
}

/// The element operations of `ops` grouped by family and set, in a stable order (a replaced
/// element's deletion stays before its addition): one command, or one netlink message, per set
/// instead of one per run of a port's elements.
fn grouped(mut ops: Vec<Op>) -> Transaction {
    ops.sort_by_key(|op| match op {
        Op::AddElement(family, set, ..) | Op::DeleteElement(family, set, _) => {
            Some((*family, *set))
        }
        _ => None,
    });
    let mut tx = Transaction::default();
    tx.extend(ops);
    tx
}

/// One owner's element: sent unless adoption found it with its value; a shared one only for
/// its first owner.
fn add_element(
    fm: &mut FamilyMirror,
    found: Option<&mut Found>,
    tx: &mut Transaction,
    (family, set, key, value): (IpFamily, &'static str, String, String),
) {
    let id = if shared(set) {
        let id = ElemId::of(&[set, &key]);
        let refs = fm.records_mut(set).entry(id).or_insert(0);
        *refs += 1;
        if *refs > 1 {
            return;
        }
        Some(id)
    } else {
        None
    };
    let Some(found) = found else {
        tx.push(Op::AddElement(family, set, key, value));
        return;
    };
    let id = id.unwrap_or_else(|| ElemId::of(&[set, &key]));
    match found.elements.get_mut(&id) {
        Some(seen) if seen.value == value_hash(&value) => seen.wanted = true,
        Some(seen) => {
            seen.wanted = true;
            tx.push(Op::DeleteElement(family, set, key.clone()));
            tx.push(Op::AddElement(family, set, key, value));
        }
        None => tx.push(Op::AddElement(family, set, key, value)),
    }
}
