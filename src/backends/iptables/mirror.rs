//! The mirror of what one family's last successful restore left in the kernel, and the diff of
//! a sync against it (`Mirror::diff`, applied to the mirror by `Mirror::commit`).
//!
//! Invariants: the mirror holds no rule text. Per service port it keeps the plan the port was
//! compiled from, shared with the sync loop (ports that compile to nothing in this family
//! too): compiling it again with the backend's configuration and the mirror's local-traffic
//! match (which changes only by a new load) gives exactly the rules the port owns, since `compile_port` is pure and depends on nothing else. Besides, the fixed chains as
//! compiled and the number of rules the ports own per table. A diff compiles only the ports
//! whose plan changed (the old rules from the mirror's plan, the new from the sync's), so a
//! partial diff costs O(changed) whatever the number of Services, and a full diff with nothing
//! changed compiles nothing. The mirror changes only through `commit`, which the caller runs
//! after the restore succeeded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::compile::{Fixed, PortRules, Table, compile_port};
use super::restore::{Restore, diff_fixed, diff_port};
use crate::backends::{BackendConfig, Plans};
use crate::model::plan::Planned;
use crate::model::{IpFamily, ServicePortName};
use crate::node::LocalTraffic;

/// What was last restored successfully in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    pub fixed: Option<Fixed>,
    /// Every service port's plan, whether or not it has rules in this family.
    ports: BTreeMap<ServicePortName, Arc<Planned>>,
    /// Rules the ports own per table: their chains' rules and their dispatch rules.
    port_rules: BTreeMap<Table, usize>,
    /// The local-traffic match the ports were compiled with.
    local: LocalTraffic,
}

/// What a diff covers.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Everything: the fixed chains (as compiled now) and every service port.
    Full(&'a Fixed),
    /// Only these service ports; the fixed chains are left alone.
    Ports(&'a BTreeSet<ServicePortName>),
}

/// A diff against the mirror: the restore input, and what the mirror becomes once it applied.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    pub restore: Restore,
    fixed: Option<Fixed>,
    /// Ports whose plan the mirror takes (None: the port is gone).
    ports: Vec<(ServicePortName, Option<Arc<Planned>>)>,
    /// Change of the ports' rules per table.
    port_rules: BTreeMap<Table, isize>,
}

/// Rules per table in one port's compiled rules.
fn rules_of(port: &PortRules) -> BTreeMap<Table, usize> {
    let mut out = BTreeMap::new();
    for ((table, _), rules) in &port.chains {
        *out.entry(*table).or_default() += rules.len();
    }
    for (table, _, _) in &port.dispatch {
        *out.entry(*table).or_default() += 1;
    }
    out
}

impl Mirror {
    /// The mirror after a load of `plans` on top of the fixed chains `fixed`, whose ports own
    /// `port_rules` rules per table.
    pub fn loaded(
        fixed: Fixed,
        plans: &Plans,
        port_rules: BTreeMap<Table, usize>,
        local: LocalTraffic,
    ) -> Mirror {
        Mirror {
            fixed: Some(fixed),
            ports: plans.clone(),
            port_rules,
            local,
        }
    }

    /// The local-traffic match the ports were compiled with.
    pub fn local(&self) -> &LocalTraffic {
        &self.local
    }

    pub fn is_loaded(&self) -> bool {
        self.fixed.is_some()
    }

    /// Every rule of each of kproxy's `chains` (table, chain) as the mirror says the kernel
    /// holds it (a fixed chain's own rules, then the ports' dispatch rules in port order, as a
    /// load writes them; or a port's chain), compiling every port again once for all of them;
    /// `None` when one of them is not kproxy's. O(ports).
    pub fn chains_rules(
        &self,
        chains: &BTreeSet<(Table, String)>,
        family: IpFamily,
        config: &BackendConfig,
    ) -> Option<BTreeMap<(Table, String), Vec<String>>> {
        let fixed = self.fixed.as_ref()?;
        // Fixed chains start with their own rules; a port's chain is None until its port.
        let mut out: BTreeMap<(Table, String), Option<Vec<String>>> = chains
            .iter()
            .map(|(table, chain)| {
                let own = fixed
                    .chains
                    .iter()
                    .find(|(t, c, _)| t == table && c == chain)
                    .map(|(_, _, rules)| rules.clone());
                ((*table, chain.clone()), own)
            })
            .collect();
        let fixed_chains: BTreeSet<(Table, String)> = out
            .iter()
            .filter(|(_, own)| own.is_some())
            .map(|(key, _)| key.clone())
            .collect();
        for planned in self.ports.values() {
            let port = compile_port(planned, family, config, &self.local);
            for (table, chain, args) in &port.dispatch {
                let key = (*table, chain.to_string());
                if fixed_chains.contains(&key)
                    && let Some(Some(rules)) = out.get_mut(&key)
                {
                    rules.push(args.clone());
                }
            }
            for (key, rules) in &port.chains {
                if let Some(slot @ None) = out.get_mut(key) {
                    *slot = Some(rules.clone());
                }
            }
        }
        out.into_iter()
            .map(|(key, rules)| Some((key, rules?)))
            .collect()
    }

    /// Rules kproxy owns per table (the `…_iptables_total{table}` metric).
    pub fn rules_per_table(&self) -> BTreeMap<Table, usize> {
        let mut out: BTreeMap<Table, usize> = Table::ALL.iter().map(|t| (*t, 0)).collect();
        if let Some(fixed) = &self.fixed {
            for (table, _, rules) in &fixed.chains {
                *out.entry(*table).or_default() += rules.len();
            }
            for (table, _, _) in &fixed.hooks {
                *out.entry(*table).or_default() += 1;
            }
        }
        for (table, n) in &self.port_rules {
            *out.entry(*table).or_default() += n;
        }
        out
    }

    /// The restore that turns this mirror into `plans` (and, for a full diff, the fixed chains
    /// into `Scope::Full`'s) in `family`, without listing the kernel. The dispatch chains are
    /// fixed chains whose contents are the ports' dispatch rules, so they are never redeclared
    /// here: only single rules are added or deleted.
    pub fn diff(
        &self,
        plans: &Plans,
        scope: Scope<'_>,
        family: IpFamily,
        config: &BackendConfig,
    ) -> Diff {
        let mut out = Diff::default();
        match scope {
            Scope::Full(fixed) => {
                diff_fixed(&mut out.restore, self.fixed.as_ref(), fixed);
                out.fixed = Some(fixed.clone());
                let names: BTreeSet<&ServicePortName> =
                    self.ports.keys().chain(plans.keys()).collect();
                for name in names {
                    self.diff_port(&mut out, name, plans.get(name), family, config);
                }
            }
            Scope::Ports(changed) => {
                for name in changed {
                    self.diff_port(&mut out, name, plans.get(name), family, config);
                }
            }
        }
        out
    }

    /// Adds to `out` what turns port `name` from the mirror's plan into `new`; compiles only
    /// when the plans differ.
    fn diff_port(
        &self,
        out: &mut Diff,
        name: &ServicePortName,
        new: Option<&Arc<Planned>>,
        family: IpFamily,
        config: &BackendConfig,
    ) {
        let old = self.ports.get(name);
        match (old, new) {
            (None, None) => return,
            (Some(o), Some(n)) if Arc::ptr_eq(o, n) => return,
            (Some(o), Some(n)) if o == n => {
                // The same plan in a new allocation: hold the sync loop's, not a copy.
                out.ports.push((name.clone(), Some(n.clone())));
                return;
            }
            _ => {}
        }
        let compile = |p: Option<&Arc<Planned>>| {
            p.map(|p| compile_port(p, family, config, &self.local))
                .unwrap_or_default()
        };
        let (before, after) = (compile(old), compile(new));
        diff_port(&mut out.restore, Some(&before), Some(&after));
        for (table, n) in rules_of(&before) {
            *out.port_rules.entry(table).or_default() -= n as isize;
        }
        for (table, n) in rules_of(&after) {
            *out.port_rules.entry(table).or_default() += n as isize;
        }
        out.ports.push((name.clone(), new.cloned()));
    }

    /// Takes in a diff whose restore succeeded.
    pub fn commit(&mut self, diff: Diff) {
        if let Some(fixed) = diff.fixed {
            self.fixed = Some(fixed);
        }
        for (name, planned) in diff.ports {
            match planned {
                Some(p) => self.ports.insert(name, p),
                None => self.ports.remove(&name),
            };
        }
        for (table, delta) in diff.port_rules {
            let n = self.port_rules.entry(table).or_default();
            *n = n.saturating_add_signed(delta);
        }
    }
}
