//! `kproxy explain --live` in iptables mode: kproxy's part of the kernel's nat and filter
//! tables of the packet's family, loaded into the tracer's `Ruleset` (`kernel`) for the chains
//! the packet reaches only. Every chain starts as an empty stub (the built-in ones with policy
//! ACCEPT); the packet is traced, the stubs it entered are listed, all of one round at once,
//! the chains their kproxy rules jump to become new stubs, and again, until the packet enters
//! no stub (`on_demand`). The listings:
//!
//! - iptables-nft: `iptables-nft -t TABLE -S CHAIN`, one process per chain, which reads that
//!   chain alone (0.09 s for the 10,001 rules of KPROXY-PORTALS at 10,000 Services, where
//!   `iptables-nft-save -t nat` takes 1.4 s).
//! - iptables-legacy: `iptables-legacy-save -t nat` and `-t filter` once (`Saved`), served
//!   chain by chain: the kernel hands a legacy table over as one blob, so listing one chain
//!   costs as much as saving the table (0.22 s against 0.35 s at 10,000 Services), but only
//!   the chains the packet enters are parsed.
//!
//! Invariants: the answer is the one the whole listing gives: a trace reads only the chains it
//! enters, and the fixpoint is reached only when every chain it entered holds what the kernel
//! listed (a stub is never part of an answer). kproxy's part is the same as `iptables-save`'s
//! (`ours`): the built-in chains' policies and their jumps into `KPROXY-*` chains, the
//! `KPROXY-*` chains whole; other components' rules are left out (the model refuses rules it
//! does not know). Per-chain listings are not one snapshot: a chain the packet enters that the
//! kernel does not list (the daemon replaced it between two listings) is read again from the
//! start once, then is a difference, never an agreement. Only reads: a legacy table the
//! kernel does not have is not saved (that would create it).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use super::{Facts, Packet};
use crate::backends::iptables::adopt::{jumps_to_kproxy, kproxy_targets};
use crate::backends::iptables::compile::Table;
use crate::backends::iptables::names::SERVICES;
use crate::backends::iptables::restore_error::RestoreError;
use crate::backends::iptables::ruleset::{self as ipt, Ruleset};
use crate::backends::iptables::{Variant, VariantChoice, tools};
use crate::backends::leftovers::PREFIX;
use crate::backends::process::{RunError, spawn};
use crate::model::IpFamily;

/// Why kproxy's chains could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// iptables-save or `iptables -S` failed: run as root in the node's network namespace.
    #[error("listing kproxy's iptables chains: {0}")]
    Save(#[from] RestoreError),
    /// kproxy's chains as iptables lists them do not load into the tracer's model.
    #[error("reading kproxy's iptables chains as saved ({family:?}): {message}")]
    Saved { family: IpFamily, message: String },
}

/// kproxy's rules in the kernel, as far as the tracer can take them.
#[derive(Debug)]
pub enum Kernel {
    Rules(Ruleset),
    /// kproxy's entry chain is not there: what is missing, for the answer.
    Absent(String),
    /// Rules the tracer cannot follow for this packet: a difference.
    Unfollowable(String),
}

/// What `iptables -t TABLE -S CHAIN` printed; `Err` with the tool's message when the kernel
/// has no such chain.
pub type Listed = Result<Vec<String>, String>;

/// How many listings run at once.
const AT_ONCE: usize = 16;

/// The tracer's packet for `p` on this node.
pub(super) fn packet(f: &Facts, p: &Packet) -> ipt::Packet {
    ipt::Packet {
        src: p.src,
        dst: p.dst,
        proto: p.proto,
        dport: p.dport,
        from_node: super::from_node(&p.src, f.node),
        local: f.node.local_addresses.clone(),
    }
}

/// kproxy's part of the kernel's tables of `p`'s family, read with the daemon's variant: the
/// one given, or under `auto` the one whose nat table holds kproxy's entry chain (the one the
/// daemon chose); only when both or neither do, the host's detection (`resolve`, which reads
/// every rule of both variants: seconds at 10,000 Services).
pub fn kernel(f: &Facts, p: &Packet) -> Result<Kernel, ReadError> {
    let family = p.family();
    let packet = packet(f, p);
    let nft = || {
        let program = Variant::Nft.cli(family);
        read_on_demand(family, &packet, &program, |chains| list(&program, chains))
    };
    let choice = f.config.iptables_variant;
    if choice == VariantChoice::Fixed(Variant::Nft) {
        return nft();
    }
    let saved = Saved::read(family);
    let variant = match choice {
        VariantChoice::Fixed(v) => v,
        VariantChoice::Auto => {
            let entry = [(Table::Nat, SERVICES.to_string())];
            // A variant whose tool is missing or fails has no chain.
            let listed = list(&Variant::Nft.cli(family), &entry);
            let in_nft = matches!(listed.as_deref(), Ok([Ok(_)]));
            let in_legacy = saved.as_ref().is_ok_and(|s| s.0.contains_key(&entry[0]));
            match (in_nft, in_legacy) {
                (true, false) => Variant::Nft,
                (false, true) => Variant::Legacy,
                _ => choice.resolve(),
            }
        }
    };
    match variant {
        Variant::Nft => nft(),
        Variant::Legacy => {
            let saved = saved?;
            let program = Variant::Legacy.save(family);
            read_on_demand(family, &packet, &program, |chains| Ok(saved.list(chains)))
        }
    }
}

/// `on_demand`, read once more from the start when a chain was missing; `program` names the
/// lister in the answer.
pub fn read_on_demand(
    family: IpFamily,
    packet: &ipt::Packet,
    program: &str,
    mut list: impl FnMut(&[(Table, String)]) -> Result<Vec<Listed>, RestoreError>,
) -> Result<Kernel, ReadError> {
    let mut again = true;
    loop {
        match on_demand(family, packet, &mut list)? {
            Found::Rules(set) => return Ok(Kernel::Rules(set)),
            Found::NoEntry => {
                return Ok(Kernel::Absent(format!("chain {SERVICES} ({program})")));
            }
            // The daemon may have replaced the chains between two listings.
            Found::Missing { .. } if again => again = false,
            Found::Missing {
                table,
                chain,
                message,
            } => {
                return Ok(Kernel::Unfollowable(format!(
                    "a jump to {table} chain {chain}, which {program} does not list ({message})"
                )));
            }
        }
    }
}

/// What one pass of `on_demand` found.
#[derive(Debug)]
enum Found {
    Rules(Ruleset),
    /// No `KPROXY-SERVICES`.
    NoEntry,
    /// A chain that a rule jumps to is not listed.
    Missing {
        table: Table,
        chain: String,
        message: String,
    },
}

/// The fixpoint: trace, list the stubs the packet entered, declare the chains they jump to as
/// stubs, until the packet enters no stub. `KPROXY-SERVICES` is listed in the first round
/// whatever the packet does, so that its absence is told apart.
fn on_demand(
    family: IpFamily,
    packet: &ipt::Packet,
    list: &mut impl FnMut(&[(Table, String)]) -> Result<Vec<Listed>, RestoreError>,
) -> Result<Found, ReadError> {
    let mut set = Ruleset::new(family);
    let builtins = Table::ALL
        .into_iter()
        .flat_map(|t| ipt::builtins(t).iter().map(move |c| (t, c.to_string())));
    // Declared in `set` with no rules read yet.
    let mut stubs: BTreeSet<(Table, String)> = builtins.collect();
    // Declared in `set` or being listed.
    let mut known = stubs.clone();
    let entry = (Table::Nat, SERVICES.to_string());
    known.insert(entry.clone());
    let mut want = vec![entry.clone()];
    loop {
        let visited = set.trace(packet).visited;
        want.extend(visited.into_iter().filter(|c| stubs.remove(c)));
        if want.is_empty() {
            return Ok(Found::Rules(set));
        }
        let listed = list(&want)?;
        let mut round = Round::default();
        for ((table, chain), lines) in want.drain(..).zip(listed) {
            let lines = match lines {
                Ok(lines) => lines,
                Err(_) if (table, &chain) == (entry.0, &entry.1) => return Ok(Found::NoEntry),
                Err(message) => {
                    return Ok(Found::Missing {
                        table,
                        chain,
                        message,
                    });
                }
            };
            for line in lines.iter().filter_map(|l| saved_form(&chain, l)) {
                if !ours(table, &line) {
                    continue;
                }
                if line.starts_with(':') {
                    round.declare(table, line);
                    continue;
                }
                for target in kproxy_targets(&line) {
                    if known.insert((table, target.to_string())) {
                        stubs.insert((table, target.to_string()));
                        round.declare(table, format!(":{target} -"));
                    }
                }
                round.rules.entry(table).or_default().push(line);
            }
        }
        set.restore(&round.input())
            .map_err(|message| ReadError::Saved { family, message })?;
    }
}

/// One round's restore input per table: declarations first, so that every jump finds its chain.
#[derive(Default)]
struct Round {
    declared: BTreeMap<Table, Vec<String>>,
    rules: BTreeMap<Table, Vec<String>>,
}

impl Round {
    fn declare(&mut self, table: Table, line: String) {
        self.declared.entry(table).or_default().push(line);
    }

    fn input(&self) -> String {
        let mut out = String::new();
        for table in Table::ALL {
            let lines = self.declared.get(&table).into_iter().flatten();
            let mut lines = lines
                .chain(self.rules.get(&table).into_iter().flatten())
                .peekable();
            if lines.peek().is_none() {
                continue;
            }
            out.push_str(&format!("*{}\n", table.as_str()));
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// A line of `-S chain` as iptables-save prints it (`-P C POLICY` is `:C POLICY`, `-N C` is
/// `:C -`); `None` for anything that is not about `chain`.
fn saved_form(chain: &str, line: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    let (cmd, name) = (words.next()?, words.next()?);
    if name != chain {
        return None;
    }
    match (cmd, words.next()) {
        ("-P", Some(policy)) => Some(format!(":{chain} {policy}")),
        ("-N", None) => Some(format!(":{chain} -")),
        ("-A", _) => Some(line.trim().to_string()),
        _ => None,
    }
}

/// Lists `chains` with `program -w 5 -t TABLE -S CHAIN`, up to `AT_ONCE` processes at a time.
/// A chain the kernel does not have is a value, any other failure an error.
fn list(program: &str, chains: &[(Table, String)]) -> Result<Vec<Listed>, RestoreError> {
    let run = |source| RestoreError::Run {
        program: program.to_string(),
        source,
    };
    let mut out = Vec::with_capacity(chains.len());
    for batch in chains.chunks(AT_ONCE) {
        let mut children = Vec::with_capacity(batch.len());
        let mut started = Ok(());
        for (table, chain) in batch {
            let mut cmd = Command::new(program);
            cmd.args(["-w", "5", "-t", table.as_str(), "-S", chain])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            match spawn(&mut cmd) {
                Ok(child) => children.push(child),
                Err(e) => {
                    started = Err(run(RunError::Spawn(e)));
                    break;
                }
            }
        }
        // Every child started is waited for, even when another one could not start.
        let done: Vec<_> = children.into_iter().map(|c| c.wait_with_output()).collect();
        started?;
        for ((table, chain), output) in batch.iter().zip(done) {
            let output = output.map_err(|e| run(RunError::Wait(e)))?;
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if output.status.success() {
                let text = String::from_utf8_lossy(&output.stdout);
                out.push(Ok(text.lines().map(String::from).collect()));
            } else if no_such_chain(&stderr) {
                out.push(Err(stderr));
            } else {
                return Err(RestoreError::Save {
                    program: format!("{program} -t {table} -S {chain}"),
                    message: stderr,
                });
            }
        }
    }
    Ok(out)
}

/// Whether `-S chain` failed because the kernel has no such chain (iptables-nft 1.8.9 calls a
/// missing chain "incompatible"; a chain it cannot show is as unfollowable).
fn no_such_chain(stderr: &str) -> bool {
    ["No chain/target/match by that name", "incompatible"]
        .iter()
        .any(|m| stderr.contains(m))
}

/// kproxy's part of a family's legacy tables as `iptables-legacy-save -t TABLE` lists them,
/// kept per (table, chain) as `-S CHAIN` would list it; a built-in chain of a table the kernel
/// does not have lists as empty, policy ACCEPT.
#[derive(Debug, Default)]
pub struct Saved(BTreeMap<(Table, String), Vec<String>>);

impl Saved {
    fn read(family: IpFamily) -> Result<Saved, ReadError> {
        let program = Variant::Legacy.save(family);
        let names = match family {
            IpFamily::V4 => "/proc/net/ip_tables_names",
            IpFamily::V6 => "/proc/net/ip6_tables_names",
        };
        // No file: no legacy table at all.
        let names = std::fs::read_to_string(names).unwrap_or_default();
        let mut saved = Saved::default();
        for table in Table::ALL {
            saved.builtins(table);
            if names.lines().any(|l| l.trim() == table.as_str()) {
                tools::save(&program, table.as_str(), &mut |line| {
                    saved.line(table, line)
                })?;
            }
        }
        Ok(saved)
    }

    fn builtins(&mut self, table: Table) {
        for chain in ipt::builtins(table) {
            let policy = vec![format!("-P {chain} ACCEPT")];
            self.0.insert((table, chain.to_string()), policy);
        }
    }

    /// Keeps a line of `iptables-save -t table` that is kproxy's.
    fn line(&mut self, table: Table, line: &str) {
        if !ours(table, line) {
            return;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let mut words = decl.split_whitespace();
            let (Some(chain), Some(policy)) = (words.next(), words.next()) else {
                return;
            };
            let first = match policy {
                "-" => format!("-N {chain}"),
                _ => format!("-P {chain} {policy}"),
            };
            self.0.insert((table, chain.to_string()), vec![first]);
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if let Some(lines) = self.0.get_mut(&(table, chain.to_string())) {
                lines.push(line.to_string());
            }
        }
    }

    fn list(&self, chains: &[(Table, String)]) -> Vec<Listed> {
        let listed = chains.iter().map(|c| self.0.get(c).cloned());
        listed
            .map(|l| l.ok_or_else(|| "not in its listing".to_string()))
            .collect()
    }
}

/// Whether a line of `iptables-save -t table` belongs to kproxy's part.
fn ours(table: Table, line: &str) -> bool {
    if let Some(decl) = line.strip_prefix(':') {
        let name = decl.split_whitespace().next().unwrap_or_default();
        return name.starts_with(PREFIX) || ipt::builtins(table).contains(&name);
    }
    let Some(rule) = line.strip_prefix("-A ") else {
        return false;
    };
    let (chain, args) = rule.split_once(' ').unwrap_or((rule, ""));
    chain.starts_with(PREFIX) || jumps_to_kproxy(args)
}

#[cfg(test)]
#[path = "live_iptables_tests.rs"]
mod tests;
