//! Start-up (and after any failure or drift): reconcile the kernel's iptables with the desired
//! ruleset without flushing what works. Reads `iptables-save` of the nat and filter tables once,
//! line by line (`SaveParser`), and decides what the load (`load.rs`) does besides writing every
//! desired chain (`adjust`).
//!
//! Invariants: every desired chain is declared and refilled in the same table commit, so a
//! packet never sees it empty (each table is one atomic commit in iptables-nft and -legacy);
//! kproxy's hooks already in the built-in chains are kept when they are exactly right; only
//! rules that jump to `KPROXY-*` chains are ever deleted from built-in chains; `KPROXY-*` chains
//! that are no longer wanted are deleted last. Other components' rules are never touched.
//! Parsing and planning are pure (`parse_save`, `adjust`); only kproxy's chains and the jumps
//! into them are kept from a listing, never the listing itself.

use std::collections::{BTreeMap, BTreeSet};

use super::compile::Table;
use crate::backends::leftovers::PREFIX;

/// What `iptables-save` shows of kproxy in one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    /// `KPROXY-*` chains.
    pub chains: BTreeSet<String>,
    /// Rules in other chains that jump or go to a `KPROXY-*` chain: (chain, arguments).
    pub jumps: Vec<(String, String)>,
}

/// Reads `iptables-save` output (any tables) line by line into what kproxy owns per table, so
/// the listing itself is never held.
#[derive(Debug, Default)]
pub struct SaveParser {
    out: BTreeMap<Table, Saved>,
    table: Option<Table>,
}

impl SaveParser {
    pub fn line(&mut self, line: &str) {
        if let Some(t) = line.strip_prefix('*') {
            self.table = Table::ALL.into_iter().find(|x| x.as_str() == t.trim());
            if let Some(t) = self.table {
                self.out.entry(t).or_default();
            }
            return;
        }
        let Some(t) = self.table else { return };
        let saved = self.out.entry(t).or_default();
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(PREFIX) {
                saved.chains.insert(name.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, args) = rule.split_once(' ').unwrap_or((rule, ""));
            if !chain.starts_with(PREFIX) && jumps_to_kproxy(args) {
                saved.jumps.push((chain.to_string(), args.to_string()));
            }
        }
    }

    pub fn finish(self) -> BTreeMap<Table, Saved> {
        self.out
    }
}

/// Whether a rule's arguments (`-A CHAIN` cut off) jump or go to a `KPROXY-*` chain.
pub fn jumps_to_kproxy(args: &str) -> bool {
    !kproxy_targets(args).is_empty()
}

/// The `KPROXY-*` chains a rule (its arguments, or its whole `-A CHAIN …` line) jumps or goes to.
pub fn kproxy_targets(args: &str) -> Vec<&str> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let jumps = words.windows(2).filter(|w| matches!(w[0], "-j" | "-g"));
    jumps
        .map(|w| w[1])
        .filter(|t| t.starts_with(PREFIX))
        .collect()
}

/// Parses `iptables-save` output (any tables) into what kproxy owns per table.
pub fn parse_save(save: &str) -> BTreeMap<Table, Saved> {
    let mut parser = SaveParser::default();
    for line in save.lines() {
        parser.line(line);
    }
    parser.finish()
}

/// What adoption does in one table besides writing every desired chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adjust {
    /// `-D <chain> <args>`: stray or duplicate jumps into `KPROXY-*` chains.
    pub deletes: Vec<String>,
    /// `-I <chain> 1 <args>`: missing hooks, at the top of their built-in chain.
    pub inserts: Vec<String>,
    /// `KPROXY-*` chains that are no longer wanted (to declare, so flush, and delete).
    pub remove: BTreeSet<String>,
}

/// What turns `saved` (one table) into the desired hooks, given the chains the restore
/// `declared`: missing hooks inserted, stray or duplicate jumps deleted, unwanted `KPROXY-*`
/// chains removed.
pub fn adjust(
    table: Table,
    hooks: &[(Table, &'static str, String)],
    saved: Option<&Saved>,
    declared: &BTreeSet<String>,
) -> Adjust {
    let mut out = Adjust::default();
    let empty = Saved::default();
    let saved = saved.unwrap_or(&empty);
    let mut wanted: Vec<(&str, &str)> = hooks
        .iter()
        .filter(|(t, _, _)| *t == table)
        .map(|(_, chain, args)| (*chain, args.as_str()))
        .collect();
    for (chain, args) in &saved.jumps {
        match wanted
            .iter()
            .position(|w| *w == (chain.as_str(), args.as_str()))
        {
            Some(i) => {
                wanted.remove(i);
            }
            None => out.deletes.push(format!("-D {chain} {args}")),
        }
    }
    // Reversed, so that each built-in chain ends up with the hooks in their listed order.
    for (chain, args) in wanted.into_iter().rev() {
        out.inserts.push(format!("-I {chain} 1 {args}"));
    }
    out.remove = saved
        .chains
        .iter()
        .filter(|c| !declared.contains(*c))
        .cloned()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "\
# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KPROXY-SERVICES - [0:0]
:KPROXY-SVC-OLD - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES
-A PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES
-A PREROUTING -j KUBE-SERVICES
-A KPROXY-SERVICES -j KPROXY-SVC-OLD
COMMIT
*mangle
:KPROXY-X - [0:0]
COMMIT
";

    #[test]
    fn the_save_parser_keeps_only_kproxys_chains_and_the_jumps_into_them() {
        let saved = parse_save(SAVE);
        let nat = &saved[&Table::Nat];
        assert_eq!(
            nat.chains,
            BTreeSet::from(["KPROXY-SERVICES".into(), "KPROXY-SVC-OLD".into()])
        );
        assert_eq!(nat.jumps.len(), 2, "{:?}", nat.jumps);
        assert!(!saved.contains_key(&Table::Filter));
    }

    #[test]
    fn adoption_keeps_one_right_hook_deletes_the_duplicate_and_removes_stale_chains() {
        let node = crate::node::NodeFacts::new("n");
        let config = crate::backends::BackendConfig::default();
        let desired = super::super::compile::FamilyRules {
            fixed: super::super::compile::compile_fixed(crate::model::IpFamily::V4, &node, &config),
            ports: Default::default(),
        };
        let text = super::super::load::plan(&desired, &parse_save(SAVE));
        let lines: Vec<&str> = text.lines().collect();
        let dup =
            "-D PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES";
        assert_eq!(lines.iter().filter(|l| **l == dup).count(), 1, "{text}");
        assert!(
            lines.contains(
                &"-I OUTPUT 1 -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES"
            ),
            "{text}"
        );
        assert!(!text.contains("-I PREROUTING"), "{text}");
        assert!(lines.contains(&"-X KPROXY-SVC-OLD"), "{text}");
        assert!(
            !text.contains("KUBE-SERVICES"),
            "never touches upstream's rules: {text}"
        );
        // Every desired chain is declared and refilled in the same commit.
        assert!(lines.contains(&":KPROXY-SERVICES - [0:0]"));
        assert!(lines.contains(&"-A KPROXY-SERVICES -j KPROXY-PORTALS"));
    }
}
