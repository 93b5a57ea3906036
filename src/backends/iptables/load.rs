//! The restore of a whole ruleset, streamed: what adoption (the first full sync, and the first
//! after a failure or drift) sends, written to `iptables-restore`'s stdin while the ports are
//! compiled (`Load::write`), and what `--dry-run` prints (`plan`).
//!
//! Invariants: the text is what a `Restore` (`restore.rs`) holding every fixed chain and every
//! port's rules, as diffs from nothing, plus adoption's adjustments (`adopt::adjust`) prints
//! (pinned by `golden/`): per table, the declarations sorted, the fixed chains' rules, the ports'
//! chain rules in port order, adoption's deletions and insertions, the ports' dispatch rules as
//! appends in port order, chain deletions, COMMIT. The ports are compiled several times
//! (`Ports` is called once per pass and must yield the same rules each time): `Load::new`
//! learns every chain to declare and keeps the port chains of the tables after nat (few: filter
//! chains exist only for some eTP=Local and firewall cases); `write` compiles again to stream
//! the nat chains' rules, and once more per table that has dispatch rules to stream those. So
//! memory is O(chains), never O(rules), and nothing of the text is held.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use super::adopt::{self, Adjust, Saved};
use super::compile::{FamilyRules, Fixed, PortRules, Table, compile_port};
use crate::backends::{BackendConfig, Plans};
use crate::model::IpFamily;
use crate::node::LocalTraffic;

/// Hands every port's rules, in name order, to the function it is given.
pub type Ports<'a> = dyn Fn(&mut dyn FnMut(&PortRules)) + 'a;

/// The table whose port chains `write` compiles again instead of holding (almost every rule).
const STREAMED: Table = Table::Nat;

/// One table's part of the load, apart from the rules streamed.
#[derive(Debug, Default)]
struct Part {
    /// Chains declared: every desired one, and the unwanted ones before their `-X`.
    declare: BTreeSet<String>,
    /// Lines of the fixed chains' rules and the ports' chain rules.
    rules: usize,
    /// The ports' chain rules (`-A <chain> <rule>`), outside the streamed table.
    held: Vec<String>,
    adjust: Adjust,
    /// The ports' dispatch rules, appended (`-A <chain> <args>`) by a pass of their own.
    appends: usize,
}

impl Part {
    fn is_empty(&self) -> bool {
        self.declare.is_empty()
            && self.adjust.deletes.is_empty()
            && self.adjust.inserts.is_empty()
            && self.appends == 0
    }

    fn len(&self) -> usize {
        self.declare.len()
            + self.rules
            + self.adjust.deletes.len()
            + self.adjust.inserts.len()
            + self.appends
            + self.adjust.remove.len()
    }
}

/// One family's load, planned: everything but the streamed rules.
#[derive(Debug)]
pub struct Load<'a> {
    fixed: &'a Fixed,
    parts: BTreeMap<Table, Part>,
    port_rules: BTreeMap<Table, usize>,
}

impl<'a> Load<'a> {
    /// Plans the load of `fixed` and `ports` over what `saved` shows (empty: a fresh host).
    pub fn new(fixed: &'a Fixed, saved: &BTreeMap<Table, Saved>, ports: &Ports<'_>) -> Load<'a> {
        let mut parts: BTreeMap<Table, Part> =
            Table::ALL.iter().map(|t| (*t, Part::default())).collect();
        let mut port_rules: BTreeMap<Table, usize> = BTreeMap::new();
        for (table, chain, rules) in &fixed.chains {
            let part = parts.entry(*table).or_default();
            part.declare.insert(chain.to_string());
            part.rules += rules.len();
        }
        ports(&mut |port| {
            for ((table, chain), rules) in &port.chains {
                let part = parts.entry(*table).or_default();
                part.declare.insert(chain.clone());
                part.rules += rules.len();
                if *table != STREAMED {
                    part.held
                        .extend(rules.iter().map(|r| format!("-A {chain} {r}")));
                }
                *port_rules.entry(*table).or_default() += rules.len();
            }
            for (table, _, _) in &port.dispatch {
                parts.entry(*table).or_default().appends += 1;
                *port_rules.entry(*table).or_default() += 1;
            }
        });
        for (table, part) in &mut parts {
            part.adjust = adopt::adjust(*table, &fixed.hooks, saved.get(table), &part.declare);
            part.declare.extend(part.adjust.remove.iter().cloned());
        }
        Load {
            fixed,
            parts,
            port_rules,
        }
    }

    /// Lines of input, `*table` and `COMMIT` excluded (as `Restore::len`).
    pub fn len(&self) -> usize {
        self.parts
            .values()
            .filter(|p| !p.is_empty())
            .map(Part::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.values().all(Part::is_empty)
    }

    /// Rules the load writes per table (`-A` and `-I` lines, as `TableOps::rules_written`).
    pub fn rules_written(&self) -> impl Iterator<Item = (Table, usize)> + '_ {
        (self.parts.iter())
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, p)| (*t, p.rules + p.adjust.inserts.len() + p.appends))
    }

    /// The transactions it makes: one per table it writes (`COMMIT`), as `Restore::commits`.
    pub fn commits(&self) -> u32 {
        self.parts.values().filter(|p| !p.is_empty()).count() as u32
    }

    /// Rules the ports own per table once loaded (for the mirror).
    pub fn port_rules(&self) -> &BTreeMap<Table, usize> {
        &self.port_rules
    }

    /// Writes the load to `out`, compiling the ports again (the same `ports` as `new`).
    pub fn write(&self, out: &mut dyn Write, ports: &Ports<'_>) -> io::Result<()> {
        for (table, part) in &self.parts {
            if part.is_empty() {
                continue;
            }
            writeln!(out, "*{table}")?;
            for chain in &part.declare {
                writeln!(out, ":{chain} - [0:0]")?;
            }
            for (_, chain, rules) in self.fixed.chains.iter().filter(|c| c.0 == *table) {
                for rule in rules {
                    writeln!(out, "-A {chain} {rule}")?;
                }
            }
            if *table == STREAMED {
                stream(out, ports, &mut |port, line| {
                    let chains = port.chains.iter().filter(|c| c.0.0 == *table);
                    for ((_, chain), rules) in chains {
                        for rule in rules {
                            line(format_args!("-A {chain} {rule}"))?;
                        }
                    }
                    Ok(())
                })?;
            }
            let lines = part.held.iter().chain(&part.adjust.deletes);
            for line in lines.chain(&part.adjust.inserts) {
                writeln!(out, "{line}")?;
            }
            if part.appends > 0 {
                stream(out, ports, &mut |port, line| {
                    for (_, chain, args) in port.dispatch.iter().filter(|d| d.0 == *table) {
                        line(format_args!("-A {chain} {args}"))?;
                    }
                    Ok(())
                })?;
            }
            for chain in &part.adjust.remove {
                writeln!(out, "-X {chain}")?;
            }
            writeln!(out, "COMMIT")?;
        }
        Ok(())
    }

    /// The load as text.
    pub fn text(&self, ports: &Ports<'_>) -> String {
        let mut out = Vec::new();
        self.write(&mut out, ports).expect("writing to memory");
        String::from_utf8(out).expect("rules are text")
    }
}

/// Compiles every port again and writes the lines `each` gives for it; stops at the first
/// error.
fn stream(
    out: &mut dyn Write,
    ports: &Ports<'_>,
    each: &mut dyn FnMut(&PortRules, &mut Line<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let mut result = Ok(());
    ports(&mut |port| {
        if result.is_ok() {
            result = each(port, &mut |line| writeln!(out, "{line}"));
        }
    });
    result
}

/// Writes one line.
type Line<'a> = dyn FnMut(std::fmt::Arguments<'_>) -> io::Result<()> + 'a;

/// Every port of `plans` compiled for `family`, one at a time.
pub fn compiled<'a>(
    plans: &'a Plans,
    family: IpFamily,
    config: &'a BackendConfig,
    local: &'a LocalTraffic,
) -> impl Fn(&mut dyn FnMut(&PortRules)) + 'a {
    move |f| {
        for planned in plans.values() {
            f(&compile_port(planned, family, config, local));
        }
    }
}

/// The load of an already compiled ruleset over what `saved` shows, as text (tests).
pub fn plan(desired: &FamilyRules, saved: &BTreeMap<Table, Saved>) -> String {
    let ports = |f: &mut dyn FnMut(&PortRules)| desired.ports.values().for_each(&mut *f);
    Load::new(&desired.fixed, saved, &ports).text(&ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cluster_ips, external, node};

    fn config() -> BackendConfig {
        BackendConfig {
            localhost_nodeports: true,
            ..crate::testing::config()
        }
    }

    #[test]
    fn a_streamed_load_counts_the_lines_it_writes_without_table_headers() {
        let mut plans = cluster_ips();
        plans.extend(external());
        let config = config();
        let fixed = super::super::compile::compile_fixed(IpFamily::V4, &node(), &config);
        let local = node().local_traffic;
        let ports = compiled(&plans, IpFamily::V4, &config, &local);
        let load = Load::new(&fixed, &BTreeMap::new(), &ports);
        let text = load.text(&ports);
        let headers = text
            .lines()
            .filter(|l| l.starts_with('*') || *l == "COMMIT")
            .count();
        assert_eq!(load.len(), text.lines().count() - headers, "{text}");
        assert!(!load.is_empty());
        let commits = text.lines().filter(|l| *l == "COMMIT").count();
        assert_eq!(
            load.commits() as usize,
            commits,
            "one transaction per table"
        );
        assert_eq!(commits, 2, "nat and filter");
    }
}
