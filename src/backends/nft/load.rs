//! A load into empty tables (a cold start: nothing of kproxy's is listed), streamed port by
//! port: each port is compiled, its elements go into the current transaction and its records
//! into the mirror being built, and a transaction is sent as soon as it holds `chunk`
//! operations. At no time does every element's text exist at once (a whole load as one diff
//! held ~70 MiB of texts and pending records at 10,000 Services × 10 endpoints).
//!
//! Invariants: the mirror built is exactly the one committing the whole load as one diff would
//! give (`a_streamed_load_builds_the_mirror_and_sends_the_operations_of_one_whole_load`);
//! it is returned only when every transaction was accepted. The first transaction holds the
//! skeleton, the node's elements and the first ports, up to `FIRST_CHUNK_OPS`: a load that
//! small is one atomic transaction. After it, each transaction holds whole ports, so a
//! Service appears complete at once; a chain a later port needs first goes in a transaction of
//! its own just before (chains and rules are text; element-only transactions can go as
//! netlink batches). Two owners of one key: the later writer's value wins, as in a diff.

use std::sync::Arc;

use super::{Desired, Held, Mirror, Owner, Parts, Table, chains_of, value_hash};
use crate::backends::nft::elements::ElemId;
use crate::backends::nft::transaction::{Op, Transaction, skeleton};
use crate::model::IpFamily;

/// The first transaction's size: it is text (the skeleton's chains and rules are), which
/// libnftables parses in kproxy's heap (~1.7 KiB per operation), so it stays small; a load that
/// fits stays one atomic transaction.
const FIRST_CHUNK_OPS: usize = 1_000;

/// Streams `desired` into empty tables through `send`, in transactions of about `chunk`
/// operations (never splitting a port); the mirror of it all once every one went through.
pub fn load_fresh<E>(
    desired: Parts,
    chunk: usize,
    mut send: impl FnMut(Transaction) -> Result<(), E>,
) -> Result<Mirror, E> {
    let facts = Arc::new(desired.facts);
    let mut mirror = Mirror {
        loaded: true,
        ..Mirror::default()
    };
    for (family, n) in estimate(desired.plans) {
        mirror.family_mut(family).elements.reserve(n);
    }
    let mut l = Loader {
        mirror,
        chains: Transaction::default(),
        tx: Transaction::default(),
        first: true,
    };
    l.tx.extend(skeleton(&desired.node));
    l.add(desired.node.clone());
    l.mirror.node = desired.node;
    for (name, planned) in desired.plans {
        let owner = Owner {
            planned: planned.clone(),
            facts: facts.clone(),
        };
        l.add(owner.compile());
        l.mirror.ports.insert(name.clone(), owner);
        l.mirror.facts = Some(facts.clone());
        let limit = if l.first {
            chunk.min(FIRST_CHUNK_OPS)
        } else {
            chunk
        };
        if l.tx.len() >= limit {
            l.flush(&mut send)?;
        }
    }
    l.flush(&mut send)?;
    Ok(l.mirror)
}

/// About how many elements `plans` give per family (a slot and a hairpin pair per endpoint,
/// a few per address): reserved up front, the element table never grows by doubling during a
/// load, which held the old and the new table at once (~11 MiB more at 10,000 × 10).
fn estimate(plans: &crate::backends::Plans) -> [(IpFamily, usize); 2] {
    let (mut v4, mut v6) = (0, 0);
    for planned in plans.values() {
        for e in &planned.endpoints {
            *if e.ip.is_ipv4() { &mut v4 } else { &mut v6 } += 2;
        }
        for fp in &planned.plan.families {
            let addresses =
                fp.cluster_ips.len() + fp.external_ips.len() + fp.load_balancer_ips.len();
            *match fp.family {
                IpFamily::V4 => &mut v4,
                IpFamily::V6 => &mut v6,
            } += 2 * addresses + 2;
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
}

impl Loader {
    /// Sends the chains the pending elements need, then the elements.
    fn flush<E>(&mut self, send: &mut impl FnMut(Transaction) -> Result<(), E>) -> Result<(), E> {
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
            self.first = false;
            return send(first);
        }
        if !self.chains.is_empty() {
            send(std::mem::take(&mut self.chains))?;
        }
        if !self.tx.is_empty() {
            send(grouped(std::mem::take(&mut self.tx).into_ops()))?;
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
                if *refs == 0 {
                    self.chains.extend(c.create(family));
                }
                *refs += 1;
            }
        }
        let Desired { v4, v6, .. } = d;
        for (family, fam) in [(IpFamily::V4, v4), (IpFamily::V6, v6)] {
            let table = &mut self.mirror.family_mut(family).elements;
            for (set, elements) in fam.sets {
                for (key, value) in elements {
                    add_element(table, &mut self.tx, family, set, key, value);
                }
            }
        }
    }
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

fn add_element(
    table: &mut Table,
    tx: &mut Transaction,
    family: IpFamily,
    set: &'static str,
    key: String,
    value: String,
) {
    let id = ElemId::of(set, &key);
    let v = value_hash(&value);
    match table.get_mut(&id) {
        None => {
            table.insert(id, Held::new(v));
            tx.push(Op::AddElement(family, set, key, value));
        }
        Some(held) => {
            let before = held.value;
            held.want(v);
            if held.value != before {
                // Already sent with another owner's value: the later writer's replaces it.
                tx.push(Op::DeleteElement(family, set, key.clone()));
                tx.push(Op::AddElement(family, set, key, value));
            }
        }
    }
}
