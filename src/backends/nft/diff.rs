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

use super::compile::{self, Desired, FamilyState};
use super::transaction::{DynChain, Op, Transaction};
use crate::backends::{BackendConfig, Plans};
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

/// The desired state split by owner. For a partial diff `ports` holds only the changed ports,
/// `None` for a port that is gone.
#[derive(Clone, Debug, Default)]
pub struct Parts {
    pub node: Desired,
    pub ports: BTreeMap<ServicePortName, Option<Desired>>,
}

impl Parts {
    /// Every port and the node. O(all).
    pub fn full(plans: &Plans, node: &NodeFacts, config: &BackendConfig) -> Parts {
        Parts {
            node: compile::compile_node(node, config),
            ports: plans
                .iter()
                .map(|(name, p)| (name.clone(), Some(compile::compile_one(p, node))))
                .collect(),
        }
    }

    /// Only the `changed` ports. O(changed).
    pub fn partial(
        plans: &Plans,
        changed: &BTreeSet<ServicePortName>,
        node: &NodeFacts,
        config: &BackendConfig,
    ) -> Parts {
        Parts {
            node: compile::compile_node(node, config),
            ports: compile::compile_ports(plans, changed, node),
        }
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
    ports: BTreeMap<ServicePortName, Desired>,
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
    ports: Vec<(ServicePortName, Option<Desired>)>,
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

/// `diff`, consuming `desired`: each port's compiled state moves into the mirror update
/// instead of being copied (the backend's path; a full sync at 10,000 Services holds ~40 MiB
/// less at its peak).
pub fn into_diff(mirror: &Mirror, mut desired: Parts, scope: Scope<'_>) -> Diff {
    let mut o = Overlay {
        mirror,
        entries: BTreeMap::new(),
        chains: BTreeMap::new(),
    };
    let mut update = Update::default();
    let names: Vec<ServicePortName> = match scope {
        Scope::Full => {
            let all: BTreeSet<&ServicePortName> =
                mirror.ports.keys().chain(desired.ports.keys()).collect();
            all.into_iter().cloned().collect()
        }
        Scope::Ports(changed) => changed.iter().cloned().collect(),
    };
    for name in names {
        let old = mirror.ports.get(&name);
        let new = desired.ports.remove(&name).flatten();
        if old == new.as_ref() {
            continue;
        }
        if let Some(old) = old {
            o.withdraw(old);
        }
        if let Some(new) = &new {
            o.contribute(new);
        }
        update.ports.push((name, new));
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
