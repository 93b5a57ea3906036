//! `Ruleset`: one family's iptables (the nat and filter tables, their built-in chains and
//! user chains, each a list of parsed rules) that applies `iptables-restore --noflush` input
//! with real iptables' semantics, prints an `iptables-save`-like listing, and traces a new
//! connection's first packet through the hooks (`trace.rs`) to the endpoint it reaches. The
//! fake kernel of the iptables backend's tests (compile, diff and adoption without root), and
//! `kproxy explain`'s model of the rules it compiles and, with --live, of `iptables-save`.
//!
//! Invariants: each `*table` … `COMMIT` is applied to a copy that replaces the table only
//! when every line succeeded and the commit checks pass (no jump loop a hook reaches; DNAT
//! only reachable from PREROUTING/OUTPUT, MASQUERADE only from POSTROUTING, REJECT only from
//! INPUT/FORWARD/OUTPUT, as x_tables checks a table; iptables-legacy reports these at COMMIT
//! as the fake does, iptables-nft at the rule's line); on the first error nothing of that
//! table changes, tables committed before it stay, and the error names the line. Lines are
//! applied in order, so every check sees the table as the lines before left it (as libiptc
//! and nf_tables transactions do): a rule's `-j`/`-g` must name an existing user chain, `-X`
//! refuses a built-in, a referenced or a non-empty chain, `-D` needs a rule with the same
//! normalized text (`rule.rs`). Rules the fake does not know are refused, never ignored.
//! `-m recent` lists and a clock (seconds) belong to the fake; a list disappears when no rule
//! names it any more, as xt_recent's do.

mod bpf;
mod extensions;
mod rule;
mod trace;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use trace::{Fate, Outcome, Packet, Path};

use super::compile::Table;
use crate::model::IpFamily;
use rule::{Cond, Rule, Target};

/// The built-in chains of each table, in hook order.
pub fn builtins(table: Table) -> &'static [&'static str] {
    match table {
        Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
    }
}

/// The kernel's limit on a chain name (XT_EXTENSION_MAXNAMELEN 29, NUL included).
const MAX_CHAIN_NAME: usize = 28;

/// One chain: built-in (with a policy) or user-defined, and its rules in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub builtin: bool,
    pub policy_drop: bool,
    pub rules: Vec<Rule>,
}

type Chains = BTreeMap<String, Chain>;

/// One family's nat and filter tables, the `-m recent` lists and the clock.
#[derive(Clone, Debug)]
pub struct Ruleset {
    family: IpFamily,
    tables: BTreeMap<Table, Chains>,
    /// Seconds since the fake booted.
    now: u64,
    /// `-m recent` lists: address → when it was last set or updated.
    recent: BTreeMap<String, BTreeMap<IpAddr, u64>>,
}

impl Ruleset {
    /// Empty tables with their built-in chains (policy ACCEPT), as on a fresh host.
    pub fn new(family: IpFamily) -> Ruleset {
        let tables = Table::ALL
            .into_iter()
            .map(|t| {
                let chains = builtins(t).iter().map(|c| {
                    let chain = Chain {
                        builtin: true,
                        policy_drop: false,
                        rules: vec![],
                    };
                    (c.to_string(), chain)
                });
                (t, chains.collect())
            })
            .collect();
        Ruleset {
            family,
            tables,
            now: 0,
            recent: BTreeMap::new(),
        }
    }

    /// Applies `iptables-restore --noflush` input; see the module's invariants.
    pub fn restore(&mut self, input: &str) -> Result<(), String> {
        let mut open: Option<(Table, Chains)> = None;
        let mut last = 0;
        for (i, raw) in input.lines().enumerate() {
            last = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |msg: String| format!("line {} failed ({line}): {msg}", i + 1);
            if let Some(name) = line.strip_prefix('*') {
                if open.is_some() {
                    return Err(fail("COMMIT expected before another table".into()));
                }
                let table = Table::ALL.into_iter().find(|t| t.as_str() == name.trim());
                let table = table.ok_or_else(|| {
                    fail(format!(
                        "table `{name}' is not one the fake holds (nat, filter)"
                    ))
                })?;
                open = Some((table, self.tables[&table].clone()));
            } else if line == "COMMIT" {
                let (table, chains) = open
                    .take()
                    .ok_or_else(|| fail("COMMIT outside a table".into()))?;
                commit_checks(table, &chains).map_err(fail)?;
                self.tables.insert(table, chains);
                self.forget_unused_lists();
            } else {
                let (table, chains) = open
                    .as_mut()
                    .ok_or_else(|| fail("a command outside `*table' … COMMIT".into()))?;
                apply(*table, chains, line, self.family).map_err(fail)?;
            }
        }
        match open {
            Some(_) => Err(format!("line {}: COMMIT expected", last + 1)),
            None => Ok(()),
        }
    }

    /// Every table, chains sorted by name, each chain's rules in order: equal listings mean
    /// equal rulesets.
    pub fn save(&self) -> String {
        let mut out = String::new();
        for (table, chains) in &self.tables {
            out.push_str(&format!("*{table}\n"));
            for (name, c) in chains {
                let policy = match (c.builtin, c.policy_drop) {
                    (false, _) => "-",
                    (true, false) => "ACCEPT",
                    (true, true) => "DROP",
                };
                out.push_str(&format!(":{name} {policy}\n"));
            }
            for (name, c) in chains {
                for r in &c.rules {
                    let sep = if r.text.is_empty() { "" } else { " " };
                    out.push_str(&format!("-A {name}{sep}{}\n", r.text));
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }

    /// The normalized rules of a chain, `None` when it does not exist.
    pub fn rules(&self, table: Table, chain: &str) -> Option<Vec<String>> {
        let c = self.tables[&table].get(chain)?;
        Some(c.rules.iter().map(|r| r.text.clone()).collect())
    }

    pub(crate) fn chain(&self, table: Table, chain: &str) -> Option<&Chain> {
        self.tables[&table].get(chain)
    }

    /// Where the first packet of a new connection goes (`trace.rs`).
    pub fn trace(&self, packet: &Packet) -> Outcome {
        trace::trace(self, packet)
    }

    /// Records what one traced path did to the `-m recent` lists (the connection was made),
    /// at the current time.
    pub fn connect(&mut self, path: &Path) {
        for (list, addr) in &path.recent {
            self.recent
                .entry(list.clone())
                .or_default()
                .insert(*addr, self.now);
        }
    }

    /// Moves the fake clock on.
    pub fn advance(&mut self, seconds: u64) {
        self.now += seconds;
    }

    /// When `addr` was last set or updated in list `name`.
    pub fn recent_seen(&self, name: &str, addr: &IpAddr) -> Option<u64> {
        self.recent.get(name)?.get(addr).copied()
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    /// Drops the lists no rule names any more (xt_recent frees a list with its last rule).
    fn forget_unused_lists(&mut self) {
        let named: BTreeSet<&str> = (self.tables.values())
            .flat_map(|chains| chains.values())
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.tests)
            .filter_map(|t| match &t.cond {
                Cond::RecentSet(l) | Cond::RecentUpdate(l, _) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        let named: BTreeSet<String> = named.into_iter().map(String::from).collect();
        self.recent.retain(|l, _| named.contains(l));
    }
}

fn no_chain(chain: &str) -> String {
    format!("No chain/target/match by that name: {chain}")
}

/// Applies one command line to a table's working copy.
fn apply(table: Table, chains: &mut Chains, line: &str, family: IpFamily) -> Result<(), String> {
    if let Some(decl) = line.strip_prefix(':') {
        let mut w = decl.split_whitespace();
        let (name, policy) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
        return match chains.get_mut(name) {
            Some(c) if c.builtin => match policy {
                "ACCEPT" | "DROP" => {
                    c.policy_drop = policy == "DROP";
                    Ok(())
                }
                _ => Err(format!("Bad built-in chain policy `{policy}'")),
            },
            _ if policy != "-" => Err(format!(
                "Can't set policy `{policy}' on `{name}': Bad built-in chain name"
            )),
            Some(c) => {
                c.rules.clear();
                Ok(())
            }
            None => new_chain(chains, name),
        };
    }
    let words = rule::words(line)?;
    let (cmd, chain) = (words[0].as_str(), words.get(1).map_or("", String::as_str));
    let args = words.get(2..).unwrap_or_default();
    match cmd {
        "-N" | "--new-chain" => {
            if chains.contains_key(chain) {
                return Err("Chain already exists".into());
            }
            new_chain(chains, chain)
        }
        "-F" | "--flush" if chain.is_empty() => {
            chains.values_mut().for_each(|c| c.rules.clear());
            Ok(())
        }
        "-F" | "--flush" => {
            let c = chains.get_mut(chain).ok_or_else(|| no_chain(chain))?;
            c.rules.clear();
            Ok(())
        }
        "-X" | "--delete-chain" => {
            let c = chains.get(chain).ok_or_else(|| no_chain(chain))?;
            if c.builtin {
                return Err(format!(
                    "Can't delete built-in chain {chain}: Invalid argument"
                ));
            }
            if references(chains, chain) > 0 {
                return Err(format!("Too many links: chain {chain} is still referenced"));
            }
            if !c.rules.is_empty() {
                return Err(format!("Directory not empty: chain {chain} has rules"));
            }
            chains.remove(chain);
            Ok(())
        }
        "-A" | "--append" | "-I" | "--insert" => {
            let insert = cmd.starts_with("-I") || cmd == "--insert";
            let len = chains
                .get(chain)
                .ok_or_else(|| no_chain(chain))?
                .rules
                .len();
            let (at, args) = match args.first().map(|a| a.parse::<usize>()) {
                Some(Ok(n)) if insert => (n, &args[1..]),
                _ if insert => (1, args),
                _ => (len + 1, args),
            };
            if at == 0 || at > len + 1 {
                return Err("Index of insertion too big".into());
            }
            let rule = Rule::parse(args, family)?;
            admit(table, chains, &rule)?;
            chains
                .get_mut(chain)
                .expect("checked")
                .rules
                .insert(at - 1, rule);
            Ok(())
        }
        "-D" | "--delete" => {
            let c = chains.get_mut(chain).ok_or_else(|| no_chain(chain))?;
            let at = match args {
                [n] if n.parse::<usize>().is_ok() => {
                    let n: usize = n.parse().expect("checked");
                    (1..=c.rules.len()).contains(&n).then(|| n - 1)
                }
                _ => {
                    let text = Rule::parse(args, family)?.text;
                    c.rules.iter().position(|r| r.text == text)
                }
            };
            let at = at.ok_or("Bad rule (does a matching rule exist in that chain?)")?;
            c.rules.remove(at);
            Ok(())
        }
        _ => Err(format!("unknown or unsupported command `{cmd}'")),
    }
}

fn new_chain(chains: &mut Chains, name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with(['-', '!']) || rule::is_target(name) {
        return Err(format!("Invalid chain name `{name}'"));
    }
    if name.len() > MAX_CHAIN_NAME {
        return Err(format!(
            "chain name `{name}' too long (must be under {} chars)",
            MAX_CHAIN_NAME + 1
        ));
    }
    let chain = Chain {
        builtin: false,
        policy_drop: false,
        rules: vec![],
    };
    chains.insert(name.to_string(), chain);
    Ok(())
}

/// Rules that jump or go to `chain`.
fn references(chains: &Chains, chain: &str) -> usize {
    (chains.values())
        .flat_map(|c| &c.rules)
        .filter(|r| matches!(&r.target, Target::Jump(t) | Target::Goto(t) if t == chain))
        .count()
}

/// What a rule needs from its table before it is added.
fn admit(table: Table, chains: &Chains, rule: &Rule) -> Result<(), String> {
    match (&rule.target, table) {
        (Target::Jump(c) | Target::Goto(c), _) => match chains.get(c) {
            None => Err(format!("Couldn't load target `{c}': No such file or directory")),
            Some(target) if target.builtin => Err(format!("cannot jump to built-in chain {c}")),
            Some(_) => Ok(()),
        },
        (Target::Dnat(..) | Target::Masquerade, Table::Filter) => {
            Err("x_tables: this NAT target is only valid in the nat table".into())
        }
        (Target::Drop, Table::Nat) => Err(
            "The \"nat\" table is not intended for filtering, the use of DROP is therefore inhibited."
                .into(),
        ),
        _ => Ok(()),
    }
}

/// The checks the kernel makes on a whole table when it is committed, from its hooks: no chain
/// a hook reaches reaches itself (a loop among unreachable chains is accepted, as by both
/// variants), and every target is reachable only from hooks it may be used from.
fn commit_checks(table: Table, chains: &Chains) -> Result<(), String> {
    let mut hooks: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for hook in builtins(table) {
        walk(chains, hook, hook, &mut vec![], &mut hooks)?;
    }
    for (name, from) in &hooks {
        for r in &chains[*name].rules {
            let (what, allowed): (&str, &[&str]) = match r.target {
                Target::Dnat(..) => ("DNAT", &["PREROUTING", "OUTPUT"]),
                Target::Masquerade => ("MASQUERADE", &["POSTROUTING"]),
                Target::Reject(_) => ("REJECT", &["INPUT", "FORWARD", "OUTPUT"]),
                _ => continue,
            };
            if let Some(bad) = from.iter().find(|h| !allowed.contains(h)) {
                return Err(format!(
                    "Invalid argument: x_tables: {what} target in chain {name} is used from hook {bad}, but only usable from {}",
                    allowed.join("/")
                ));
            }
        }
    }
    Ok(())
}

/// Follows jumps from `chain`, recording that `hook` reaches each chain; a loop is an error.
fn walk<'a>(
    chains: &'a Chains,
    chain: &'a str,
    hook: &'a str,
    stack: &mut Vec<&'a str>,
    hooks: &mut BTreeMap<&'a str, BTreeSet<&'a str>>,
) -> Result<(), String> {
    if stack.contains(&chain) {
        return Err(format!(
            "Too many levels of symbolic links: a loop through {}",
            stack.join(" -> ")
        ));
    }
    if !hooks.entry(chain).or_default().insert(hook) {
        return Ok(());
    }
    stack.push(chain);
    for r in &chains[chain].rules {
        if let Target::Jump(t) | Target::Goto(t) = &r.target {
            walk(chains, t, hook, stack, hooks)?;
        }
    }
    stack.pop();
    Ok(())
}
