//! The mirror of what kproxy applied to its nftables tables, and the diff from the mirror to the
//! desired state as a `Transaction` (see `transaction.rs`).
//!
//! Invariants: the mirror holds, per owner (the node, or one service port), what that owner
//! contributed, and per family every element with the number of owners that want it, and every
//! `lb-N` / `affinity-T` chain with the number of owners that use it. A partial diff touches only
//! the changed owners, so it costs O(changed), whatever the number of Services. Chains are added
//! before, and deleted after, the elements that jump to them. The mirror changes only through
//! `Mirror::commit`, which the caller runs after the kernel accepted the transaction; a failed
//! apply leaves it as it was. Two owners wanting one key with different values (two Services
//! claiming one VIP port) is resolved in favour of the later writer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::compile::{self, Desired, FamilyState};
use super::transaction::{DynChain, Op, Transaction};
use crate::backends::{BackendConfig, Plans};
use crate::model::plan::Planned;
use crate::model::{IpFamily, ServicePortName};
use crate::node::NodeFacts;

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
    /// Every port and the node. The diff compiles only the ports that changed.
    pub fn full(plans: &'a Plans, node: &NodeFacts, config: &BackendConfig) -> Parts<'a> {
        Parts {
            node: compile::compile_node(node, config),
            plans,
            facts: node.clone(),
        }
    }

    /// The same view, for a partial diff: its `Scope::Ports` decides which ports are looked at.
    pub fn partial(
        plans: &'a Plans,
        _changed: &BTreeSet<ServicePortName>,
        node: &NodeFacts,
        config: &BackendConfig,
    ) -> Parts<'a> {
        Parts::full(plans, node, config)
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

/// One element as the kernel holds it, and who wants it: `refs` owners want exactly `value`;
/// `others` holds the values of owners that want the same key with another value (two Services
/// claiming one VIP port: the later writer wins, and when it leaves, an earlier one's value
/// comes back). `others` is empty, and allocates nothing, in every non-conflicting case.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: String,
    refs: usize,
    others: Vec<String>,
}

impl Entry {
    fn new(value: &str) -> Entry {
        Entry {
            value: value.to_string(),
            refs: 1,
            others: Vec::new(),
        }
    }

    /// One more owner wants `v` (and becomes the writer when `v` differs).
    fn want(&mut self, v: &str) {
        if v == self.value {
            self.refs += 1;
            return;
        }
        let old = std::mem::replace(&mut self.value, v.to_string());
        self.others.extend(std::iter::repeat_n(old, self.refs));
        self.refs = 1;
        let before = self.others.len();
        self.others.retain(|o| o != v);
        self.refs += before - self.others.len();
    }

    /// One owner of `v` is gone; false when nobody wants the key any more.
    fn unwant(&mut self, v: &str) -> bool {
        if v != self.value {
            if let Some(i) = self.others.iter().position(|o| o == v) {
                self.others.swap_remove(i);
            }
            return true;
        }
        self.refs = self.refs.saturating_sub(1);
        if self.refs > 0 {
            return true;
        }
        let Some(next) = self.others.last().cloned() else {
            return false;
        };
        let before = self.others.len();
        self.others.retain(|o| *o != next);
        self.refs = before - self.others.len();
        self.value = next;
        true
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FamilyMirror {
    sets: BTreeMap<&'static str, BTreeMap<String, Entry>>,
    chains: BTreeMap<DynChain, usize>,
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
    entries: BTreeMap<ElemKey, Option<Entry>>,
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

    fn entry(&self, (family, set, key): &ElemKey) -> Option<&Entry> {
        self.family(*family).sets.get(set)?.get(key)
    }

    /// Whether kproxy's tables were created (or adopted) by a committed transaction.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Number of elements held, over both families.
    pub fn elements(&self) -> usize {
        FAMILIES
            .iter()
            .flat_map(|f| self.family(*f).sets.values())
            .map(BTreeMap::len)
            .sum()
    }

    /// How many rules each chain of `family`'s table holds when the kernel matches the mirror:
    /// the fixed chains' rules (the configuration decides one of them) and every dynamic chain
    /// in use. Chains without rules are absent. O(chains), independent of the Services.
    pub fn expected_rule_counts(&self, family: IpFamily) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        let cidrs = compile::has_cluster_cidrs(self.node.family(family));
        for c in super::skeleton::CHAINS {
            let n = compile::static_rules(c, self.node.masquerade_all, cidrs).len();
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
        for ((family, set, key), entry) in u.entries {
            let sets = &mut self.family_mut(family).sets;
            match entry {
                Some(e) => {
                    sets.entry(set).or_default().insert(key, e);
                }
                None => {
                    if let Some(s) = sets.get_mut(set) {
                        s.remove(&key);
                    }
                }
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
    entries: BTreeMap<ElemKey, Option<Entry>>,
    chains: BTreeMap<(IpFamily, DynChain), usize>,
}

impl Overlay<'_> {
    /// The element as the overlay sees it: its pending state, else the mirror's.
    fn entry(&mut self, k: ElemKey) -> &mut Option<Entry> {
        let m = self.mirror;
        self.entries
            .entry(k)
            .or_insert_with_key(|k| m.entry(k).cloned())
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
                    let e = self.entry((family, *set, key.clone()));
                    if let Some(entry) = e
                        && !entry.unwant(value)
                    {
                        *e = None;
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
                    let e = self.entry((family, *set, key.clone()));
                    match e {
                        Some(entry) => entry.want(value),
                        None => *e = Some(Entry::new(value)),
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
    }
    if node_changed {
        update.node = Some(desired.node);
    }
    for ((family, chain), refs) in &o.chains {
        if *refs > 0 && !mirror.family(*family).chains.contains_key(chain) {
            tx.extend(chain.create(*family));
        }
    }
    for (key, new) in &o.entries {
        let old = mirror.entry(key);
        if old.is_some() && new.as_ref().map(|e| &e.value) != old.map(|e| &e.value) {
            tx.push(Op::DeleteElement(key.0, key.1, key.2.clone()));
        }
    }
    for (key, new) in &o.entries {
        let old = mirror.entry(key);
        if let Some(new) = new
            && old.map(|e| &e.value) != Some(&new.value)
        {
            tx.push(Op::AddElement(
                key.0,
                key.1,
                key.2.clone(),
                new.value.clone(),
            ));
        }
    }
    for ((family, chain), refs) in &o.chains {
        if *refs == 0 && mirror.family(*family).chains.contains_key(chain) {
            tx.push(Op::DeleteChain(*family, chain.name()));
        }
    }
    update.entries = o.entries;
    update.chains = o.chains;
    Diff { tx, update }
}

/// The transaction from `mirror` to `desired` within `scope` (the diff without its update).
pub fn transaction(mirror: &Mirror, desired: &Parts, scope: Scope<'_>) -> Transaction {
    diff(mirror, desired, scope).tx
}
