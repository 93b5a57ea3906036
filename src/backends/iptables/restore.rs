//! The `iptables-restore --noflush` input of a diff as a value (`Restore`), and the diff of one
//! service port's rules and of the fixed chains (`mirror.rs` decides which ports to diff).
//!
//! Invariants: `Display` is exactly what `iptables-restore --noflush` reads; within a table,
//! chain declarations (which create or flush) come first, then the rules of the declared
//! chains, then single-rule deletions, insertions and appends, then chain deletions, so that
//! every jump target exists when the rule naming it is added and no deleted chain is still
//! referenced. A partial diff touches only the changed ports: its size depends on what changed,
//! never on how many Services exist (`a_partial_restore_is_the_same_size_among_ten_or_ten_thousand_services`).
//! Fixed chains are written only when their rules change (a full sync after a node change).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::compile::{Fixed, PortRules, Table};

/// What one table's part of a restore does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableOps {
    /// Chains declared: created when missing, flushed when present.
    pub declare: BTreeSet<String>,
    /// `-A` lines filling declared chains.
    pub rules: Vec<String>,
    /// `-D <chain> <args>` single-rule deletions.
    pub deletes: Vec<String>,
    /// `-I <chain> 1 <args>` insertions (the hooks in built-in chains).
    pub inserts: Vec<String>,
    /// `-A <chain> <args>` single-rule appends to chains that are not declared.
    pub appends: Vec<String>,
    /// Chains deleted (declared above, so they are empty).
    pub remove: BTreeSet<String>,
}

impl TableOps {
    pub fn is_empty(&self) -> bool {
        self.declare.is_empty()
            && self.deletes.is_empty()
            && self.inserts.is_empty()
            && self.appends.is_empty()
    }

    /// Lines between `*table` and `COMMIT`.
    pub fn len(&self) -> usize {
        self.declare.len()
            + self.rules.len()
            + self.deletes.len()
            + self.inserts.len()
            + self.appends.len()
            + self.remove.len()
    }

    /// Rules this part writes (`-A` and `-I` lines), as upstream's `…_iptables_last` counts
    /// them; deletions and chain declarations are not rules.
    pub fn rules_written(&self) -> usize {
        self.rules.len() + self.inserts.len() + self.appends.len()
    }

    /// Declares `chain` and fills it with `rules`.
    pub fn write_chain(&mut self, chain: &str, rules: &[String]) {
        self.declare.insert(chain.to_string());
        self.rules
            .extend(rules.iter().map(|r| format!("-A {chain} {r}")));
    }

    pub fn remove_chain(&mut self, chain: &str) {
        self.declare.insert(chain.to_string());
        self.remove.insert(chain.to_string());
    }
}

/// One family's restore input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restore {
    pub tables: BTreeMap<Table, TableOps>,
}

impl Restore {
    pub fn table(&mut self, table: Table) -> &mut TableOps {
        self.tables.entry(table).or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.values().all(TableOps::is_empty)
    }

    /// The transactions it makes: iptables-nft-restore commits each table of its input on its
    /// own (one `COMMIT` line each).
    pub fn commits(&self) -> u32 {
        self.tables.values().filter(|t| !t.is_empty()).count() as u32
    }

    /// Lines of input, `*table` and `COMMIT` excluded: the size the benchmarks and the
    /// `…_iptables_last` metric report.
    pub fn len(&self) -> usize {
        self.tables
            .values()
            .filter(|t| !t.is_empty())
            .map(TableOps::len)
            .sum()
    }
}

impl fmt::Display for Restore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (table, ops) in &self.tables {
            if ops.is_empty() {
                continue;
            }
            writeln!(f, "*{table}")?;
            for chain in &ops.declare {
                writeln!(f, ":{chain} - [0:0]")?;
            }
            for line in ops
                .rules
                .iter()
                .chain(&ops.deletes)
                .chain(&ops.inserts)
                .chain(&ops.appends)
            {
                writeln!(f, "{line}")?;
            }
            for chain in &ops.remove {
                writeln!(f, "-X {chain}")?;
            }
            writeln!(f, "COMMIT")?;
        }
        Ok(())
    }
}

/// Adds to `out` what turns `old` into `new` for one service port.
pub fn diff_port(out: &mut Restore, old: Option<&PortRules>, new: Option<&PortRules>) {
    let empty = PortRules::default();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    for (key @ (table, chain), rules) in &new.chains {
        if old.chains.get(key) != Some(rules) {
            out.table(*table).write_chain(chain, rules);
        }
    }
    for (table, chain, args) in old.dispatch.difference(&new.dispatch) {
        out.table(*table).deletes.push(format!("-D {chain} {args}"));
    }
    for (table, chain, args) in new.dispatch.difference(&old.dispatch) {
        out.table(*table).appends.push(format!("-A {chain} {args}"));
    }
    for (table, chain) in old.chains.keys() {
        if !new.chains.contains_key(&(*table, chain.clone())) {
            out.table(*table).remove_chain(chain);
        }
    }
}

/// Writes the fixed chains whose rules differ from `old` (all of them when `old` is None).
/// Hooks are not diffed: they are constant and ensured by adoption.
pub fn diff_fixed(out: &mut Restore, old: Option<&Fixed>, new: &Fixed) {
    for (table, chain, rules) in &new.chains {
        let before = old.and_then(|o| {
            o.chains
                .iter()
                .find(|(t, c, _)| t == table && c == chain)
                .map(|(_, _, r)| r)
        });
        if before != Some(rules) {
            out.table(*table).write_chain(chain, rules);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_makes_one_commit_per_table_it_writes() {
        let mut r = Restore::default();
        r.table(Table::Nat)
            .appends
            .push("-A KPROXY-PORTALS -j RETURN".into());
        // A table without operations writes nothing, so commits nothing.
        r.table(Table::Filter);
        let text = r.to_string();
        assert_eq!(
            r.commits() as usize,
            text.matches("COMMIT\n").count(),
            "{text}"
        );
        assert_eq!(r.commits(), 1);
        r.table(Table::Filter)
            .declare
            .insert("KPROXY-FILTER".into());
        assert_eq!(r.commits(), 2);
        assert_eq!(r.to_string().matches("COMMIT\n").count(), 2);
    }
}
