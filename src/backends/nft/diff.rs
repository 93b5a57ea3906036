//! The mirror of what kproxy applied to its nftables tables, and the diff from the mirror to the
//! desired state as a `Transaction` (see `transaction.rs`).
//!
//! Invariants: the mirror holds the node's compiled contribution, and per service port the plan
//! and node facts it was compiled from (compiling them again gives what it contributed); per
//! family a count of owners for every element of a shared set (`elements.rs`), and every `lb-N` /
//! `affinity-T` chain with the number of owners that use it. Every other element has exactly
//! one owner, because the plan's claims give each address and port (and NodePort) to one
//! service port: what the kernel holds for it is what its owner's compiled plan says, so it has
//! no record. A diff compiles only the ports whose plan or facts changed, so a partial diff
//! costs O(changed), whatever the number of Services. Chains are added before, and deleted
//! after, the elements that jump to them. The mirror changes only through `Mirror::commit`,
//! which the caller runs after the kernel accepted the transaction; a failed apply leaves it
//! as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::compile::{self, Desired, FamilyState};
use super::elements::{ElemId, Table, value_hash};
use super::skeleton::shared;
use super::transaction::{DynChain, Op, Transaction};
use crate::backends::{BackendConfig, Plans};
use crate::model::plan::Planned;
use crate::model::{IpFamily, ServicePortName};
use crate::node::NodeFacts;

#[path = "load.rs"]
mod load;
pub use load::{Found, Sink, Unwanted, load, load_fresh, writes};

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// What a diff covers.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Everything: the node's elements and every service port.
    Full,
    /// Only these service ports (the node's elements are left alone).
    Ports(&'a BTreeSet<ServicePortName>),
}

/// The desired state: the node's own elements, compiled, and the plans, compiled port by port
/// only where the diff needs them (a port whose plan and node facts equal the mirror's is never
/// compiled). Cheap to build and to clone.
#[derive(Clone, Debug)]
pub struct Parts<'a> {
    pub node: Desired,
    plans: &'a Plans,
    facts: NodeFacts,
}

impl<'a> Parts<'a> {
    /// The node's elements and every port's plan; the diff's `Scope` decides which ports it
    /// looks at, and it compiles only those that changed.
    pub fn new(plans: &'a Plans, node: &NodeFacts, config: &BackendConfig) -> Parts<'a> {
        Parts {
            node: compile::compile_node(node, config),
            plans,
            facts: node.clone(),
        }
    }
}

/// What one service port contributed: its plan and the node facts it was compiled with, both
/// shared with the sync loop, so the mirror holds no compiled state per port. Compiling them
/// again gives exactly the elements the port owns (compile is pure and deterministic).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    planned: Arc<Planned>,
    facts: Arc<NodeFacts>,
}

impl Owner {
    fn compile(&self) -> Desired {
        compile::compile_one(&self.planned, &self.facts)
    }

    /// Compiling `planned` with `facts` would give what this owner contributed.
    fn same(&self, planned: &Arc<Planned>, facts: &Arc<NodeFacts>) -> bool {
        (Arc::ptr_eq(&self.planned, planned) || self.planned == *planned)
            && (Arc::ptr_eq(&self.facts, facts) || self.facts == *facts)
    }
}

/// One element as a diff sees it, changed by the owners withdrawn and contributed so far.
#[derive(Debug)]
enum Pending {
    /// An element of a shared set: how many owners wanted it in the mirror, and want it now.
    Shared { id: ElemId, was: u32, now: u32 },
    /// An element with one owner: the value its old owner wrote (the kernel has it), and the
    /// text of the value its new owner wants.
    Owned {
        was: Option<u64>,
        now: Option<String>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FamilyMirror {
    elements: Table,
    /// `cluster-ips`' records, apart: a table of their own grows by little, where adding one
    /// per Service to `elements` (a hairpin pair per endpoint) doubled it at 10,000 Services.
    vips: Table,
    chains: BTreeMap<DynChain, usize>,
}

impl FamilyMirror {
    /// The records of shared set `set`.
    fn records(&self, set: &str) -> &Table {
        if set == "cluster-ips" {
            &self.vips
        } else {
            &self.elements
        }
    }

    fn records_mut(&mut self, set: &str) -> &mut Table {
        if set == "cluster-ips" {
            &mut self.vips
        } else {
            &mut self.elements
        }
    }
}

/// What kproxy applied, as far as it knows. `Mirror::default()` is "nothing applied".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    /// The tables, sets and fixed chains exist.
    loaded: bool,
    node: Desired,
    ports: BTreeMap<ServicePortName, Owner>,
    /// The node facts of the last diff that compiled a port (shared by the owners it wrote).
    facts: Option<Arc<NodeFacts>>,
    v4: FamilyMirror,
    v6: FamilyMirror,
}

type ElemKey = (IpFamily, &'static str, String);

/// A diff: the transaction to apply, and the mirror update to commit once it is applied.
#[derive(Clone, Debug)]
pub struct Diff {
    pub tx: Transaction,
    update: Update,
}

#[derive(Clone, Debug, Default)]
struct Update {
    loaded: bool,
    node: Option<Desired>,
    ports: Vec<(ServicePortName, Option<Owner>)>,
    facts: Option<Arc<NodeFacts>>,
    entries: Vec<(IpFamily, &'static str, ElemId, u32)>,
    chains: BTreeMap<(IpFamily, DynChain), usize>,
}

impl Mirror {
    fn family(&self, family: IpFamily) -> &FamilyMirror {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }

    fn family_mut(&mut self, family: IpFamily) -> &mut FamilyMirror {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }

    /// Whether kproxy's tables were created (or adopted) by a committed transaction.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Number of element records held (shared elements), over both families.
    #[cfg(test)]
    pub fn records(&self) -> usize {
        FAMILIES
            .iter()
            .map(|f| self.family(*f).elements.len() + self.family(*f).vips.len())
            .sum()
    }

    /// How many rules each chain of `family`'s table holds when the kernel matches the mirror:
    /// the fixed chains' rules (the configuration decides one of them) and every dynamic chain
    /// in use. Chains without rules are absent. O(chains), independent of the Services.
    pub fn expected_rule_counts(&self, family: IpFamily) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for c in super::skeleton::CHAINS {
            let n = compile::static_rules(c, &self.node, family).len();
            counts.insert(c.name.to_string(), n);
        }
        for b in super::skeleton::BASE_CHAINS {
            counts.insert(b.name.to_string(), b.rules.len());
        }
        for chain in self.family(family).chains.keys() {
            let n = match chain {
                DynChain::Lb(prefix, n) => compile::lb_rules(prefix, *n).len(),
                DynChain::Affinity(prefix, t) => compile::affinity_rules(prefix, *t).len(),
            };
            counts.insert(chain.name(), n);
        }
        counts.retain(|_, n| *n > 0);
        counts
    }

    /// The node's compiled contribution, as applied.
    pub fn node(&self) -> &Desired {
        &self.node
    }

    /// Whether some port uses dynamic chain `c` in `family`.
    pub fn uses_chain(&self, family: IpFamily, c: &DynChain) -> bool {
        self.family(family).chains.contains_key(c)
    }

    /// Every element of each of `sets` as the mirror says the kernel holds it (key -> value):
    /// the node's and every port's, each port compiled again once for all of them. O(ports).
    pub fn sets_contents(
        &self,
        sets: &BTreeSet<(IpFamily, &'static str)>,
    ) -> BTreeMap<(IpFamily, &'static str), BTreeMap<String, String>> {
        let mut out: BTreeMap<_, BTreeMap<String, String>> =
            sets.iter().map(|s| (*s, BTreeMap::new())).collect();
        let mut take = |d: &Desired| {
            for ((family, set), contents) in out.iter_mut() {
                if let Some(elements) = d.family(*family).sets.get(set) {
                    contents.extend(elements.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        };
        take(&self.node);
        for owner in self.ports.values() {
            take(&owner.compile());
        }
        out
    }

    /// Records a transaction the kernel accepted. Costs O(size of the diff).
    pub fn commit(&mut self, diff: Diff) {
        let u = diff.update;
        self.loaded |= u.loaded;
        if let Some(node) = u.node {
            self.node = node;
        }
        if u.facts.is_some() {
            self.facts = u.facts;
        }
        for (name, d) in u.ports {
            match d {
                Some(d) => self.ports.insert(name, d),
                None => self.ports.remove(&name),
            };
        }
        for (family, set, id, refs) in u.entries {
            let elements = self.family_mut(family).records_mut(set);
            if refs == 0 {
                elements.remove(&id);
            } else {
                elements.insert(id, refs);
            }
        }
        for ((family, chain), refs) in u.chains {
            let chains = &mut self.family_mut(family).chains;
            if refs == 0 {
                chains.remove(&chain);
            } else {
                chains.insert(chain, refs);
            }
        }
    }
}

/// The dynamic chains one family of a contribution uses.
fn chains_of(fam: &FamilyState) -> impl Iterator<Item = DynChain> + '_ {
    let lb = fam.lb_chains.iter().map(|(p, n)| DynChain::Lb(p, *n));
    lb.chain(
        fam.affinity_timeouts
            .iter()
            .map(|(p, t)| DynChain::Affinity(p, *t)),
    )
}

/// Accumulates the changes of several owners on top of the mirror.
struct Overlay<'m> {
    mirror: &'m Mirror,
    entries: BTreeMap<ElemKey, Pending>,
    chains: BTreeMap<(IpFamily, DynChain), usize>,
}

impl Overlay<'_> {
    /// The element as the overlay sees it: its pending state, else the mirror's.
    fn entry(&mut self, k: ElemKey) -> &mut Pending {
        let m = self.mirror;
        self.entries
            .entry(k)
            .or_insert_with_key(|(family, set, key)| {
                if shared(set) {
                    let id = ElemId::of(&[set, key]);
                    let was = m
                        .family(*family)
                        .records(set)
                        .get(&id)
                        .copied()
                        .unwrap_or(0);
                    Pending::Shared { id, was, now: was }
                } else {
                    Pending::Owned {
                        was: None,
                        now: None,
                    }
                }
            })
    }

    /// How many owners want chain `c`: the pending count, else the mirror's.
    fn chain_refs(&mut self, family: IpFamily, c: DynChain) -> &mut usize {
        let m = self.mirror.family(family);
        self.chains
            .entry((family, c))
            .or_insert_with(|| m.chains.get(&c).copied().unwrap_or(0))
    }

    fn withdraw(&mut self, d: &Desired) {
        for family in FAMILIES {
            let fam = d.family(family);
            for (set, elements) in &fam.sets {
                for (key, value) in elements {
                    match self.entry((family, *set, key.clone())) {
                        Pending::Shared { now, .. } => *now = now.saturating_sub(1),
                        // Its only owner leaves: the kernel has this value (a new owner may
                        // have contributed already, ports being diffed in name order).
                        Pending::Owned { was, .. } => *was = Some(value_hash(value)),
                    }
                }
            }
            for c in chains_of(fam) {
                let refs = self.chain_refs(family, c);
                *refs = refs.saturating_sub(1);
            }
        }
    }

    fn contribute(&mut self, d: &Desired) {
        for family in FAMILIES {
            let fam = d.family(family);
            for (set, elements) in &fam.sets {
                for (key, value) in elements {
                    match self.entry((family, *set, key.clone())) {
                        Pending::Shared { now, .. } => *now += 1,
                        Pending::Owned { now, .. } => {
                            if now.is_some() {
                                // Two owners of one key in one diff: the claims failed.
                                tracing::error!(
                                    set,
                                    key,
                                    "two service ports write one element; the later one wins"
                                );
                            }
                            *now = Some(value.clone());
                        }
                    }
                }
            }
            for c in chains_of(fam) {
                *self.chain_refs(family, c) += 1;
            }
        }
    }
}

/// The diff from `mirror` to `desired` within `scope`.
pub fn diff(mirror: &Mirror, desired: &Parts, scope: Scope<'_>) -> Diff {
    into_diff(mirror, desired.clone(), scope)
}

/// One port a diff looks at: its name, the mirror's owner and the plan.
type InScope<'m> = (
    &'m ServicePortName,
    Option<&'m Owner>,
    Option<&'m Arc<Planned>>,
);

/// The ports a diff looks at, each once, in order, with the mirror's owner and the plan.
fn ports_in_scope<'m>(
    mirror: &'m Mirror,
    plans: &'m Plans,
    scope: Scope<'m>,
) -> Box<dyn Iterator<Item = InScope<'m>> + 'm> {
    match scope {
        Scope::Ports(changed) => Box::new(
            changed
                .iter()
                .map(|n| (n, mirror.ports.get(n), plans.get(n))),
        ),
        Scope::Full => {
            // A merge of two sorted maps: nothing is collected, nothing cloned.
            let mut old = mirror.ports.iter().peekable();
            let mut new = plans.iter().peekable();
            Box::new(std::iter::from_fn(move || match (old.peek(), new.peek()) {
                (None, None) => None,
                (Some((o, _)), Some((n, _))) if o == n => {
                    let (name, owner) = old.next()?;
                    let (_, planned) = new.next()?;
                    Some((name, Some(owner), Some(planned)))
                }
                (Some((o, _)), Some((n, _))) if o < n => {
                    let (name, owner) = old.next()?;
                    Some((name, Some(owner), None))
                }
                (Some(_), None) => {
                    let (name, owner) = old.next()?;
                    Some((name, Some(owner), None))
                }
                _ => {
                    let (name, planned) = new.next()?;
                    Some((name, None, Some(planned)))
                }
            }))
        }
    }
}

/// `diff`, consuming `desired`. Each port is compiled only when its plan or the node facts
/// differ from what the mirror holds for it, and only its own elements are held while it is
/// diffed: a periodic full sync of an unchanged cluster compiles nothing.
pub fn into_diff(mirror: &Mirror, desired: Parts, scope: Scope<'_>) -> Diff {
    let mut o = Overlay {
        mirror,
        entries: BTreeMap::new(),
        chains: BTreeMap::new(),
    };
    let mut update = Update::default();
    let facts = match &mirror.facts {
        Some(f) if **f == desired.facts => f.clone(),
        _ => Arc::new(desired.facts.clone()),
    };
    for (name, old, new) in ports_in_scope(mirror, desired.plans, scope) {
        if let (Some(old), Some(new)) = (old, new)
            && old.same(new, &facts)
        {
            continue;
        }
        if let Some(old) = old {
            o.withdraw(&old.compile());
        }
        let owner = new.map(|planned| Owner {
            planned: planned.clone(),
            facts: facts.clone(),
        });
        if let Some(new) = &owner {
            o.contribute(&new.compile());
            update.facts = Some(facts.clone());
        }
        update.ports.push((name.clone(), owner));
    }
    let node_changed =
        matches!(scope, Scope::Full) && (mirror.node != desired.node || !mirror.loaded);
    if node_changed {
        o.withdraw(&mirror.node);
        o.contribute(&desired.node);
    }

    let mut tx = Transaction::default();
    if !mirror.loaded {
        tx.extend(super::transaction::skeleton(&desired.node));
        update.loaded = true;
    } else if node_changed {
        // A fixed chain whose rules follow the node (the local-traffic match of NodeCIDR mode
        // once the Node has podCIDRs) is loaded again.
        for family in IpFamily::ALL {
            for c in super::skeleton::CHAINS {
                let (was, now) = (&mirror.node, &desired.node);
                if compile::static_rules(c, was, family) != compile::static_rules(c, now, family) {
                    let ops = super::transaction::reload_fixed(family, c.name, now);
                    tx.extend(ops.expect("a fixed chain"));
                }
            }
        }
    }
    if node_changed {
        update.node = Some(desired.node);
    }
    for ((family, chain), refs) in &o.chains {
        if *refs > 0 && !mirror.family(*family).chains.contains_key(chain) {
            tx.extend(chain.create(*family));
        }
    }
    // Deletions first, then additions; the texts move from the overlay into the operations.
    let mut adds = Vec::new();
    for ((family, set, key), p) in o.entries {
        match p {
            Pending::Shared { id, was, now } => {
                if was == 0 && now > 0 {
                    adds.push(Op::AddElement(family, set, key, String::new()));
                } else if was > 0 && now == 0 {
                    tx.push(Op::DeleteElement(family, set, key));
                }
                if was != now {
                    update.entries.push((family, set, id, now));
                }
            }
            Pending::Owned { was, now: None } => {
                if was.is_some() {
                    tx.push(Op::DeleteElement(family, set, key));
                }
            }
            Pending::Owned {
                was,
                now: Some(text),
            } => {
                if was != Some(value_hash(&text)) {
                    if was.is_some() {
                        tx.push(Op::DeleteElement(family, set, key.clone()));
                    }
                    adds.push(Op::AddElement(family, set, key, text));
                }
            }
        }
    }
    tx.extend(adds);
    for ((family, chain), refs) in &o.chains {
        if *refs == 0 && mirror.family(*family).chains.contains_key(chain) {
            tx.push(Op::DeleteChain(*family, chain.name()));
        }
    }
    update.chains = o.chains;
    Diff { tx, update }
}

/// The transaction from `mirror` to `desired` within `scope` (the diff without its update).
pub fn transaction(mirror: &Mirror, desired: &Parts, scope: Scope<'_>) -> Transaction {
    diff(mirror, desired, scope).tx
}
