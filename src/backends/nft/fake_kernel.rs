//! `FakeKernel`: an in-memory nftables holding kproxy's `ip kproxy` and `ip6 kproxy` tables (sets
//! and maps with their elements, chains with their rule texts) behind the `Transport` trait, and
//! a packet tracer over them (`trace.rs`), for unit tests of `NftBackend` without root.
//!
//! Invariants: a script is applied atomically (it is parsed whole, applied to a copy, and the
//! copy replaces the tables only when every command succeeded; otherwise nothing changes and
//! the error reads like nft's); the checks are the kernel's as observed on nft 1.0.6 / kernel
//! 6.18 (ENOENT for a missing table, set, chain or element; EEXIST for an element that exists
//! with another value, a set redeclared with another type, or a concatenated interval whose
//! first or last point falls inside another; EBUSY for a chain still jumped to or a set still
//! used by a rule; re-adding an identical element, table, set or chain is fine), plus one crash
//! of nft 1.0.6 itself: a packet-path `update @map { KEY : DATA }` with a key wider than 16
//! bytes (two IPv6 addresses) aborts nft, so the whole script fails. Only kproxy's table name
//! is accepted. Elements are stored as canonical text, which is the text kproxy
//! writes. `FakeKernel` is a cheap handle (`Arc<Mutex<…>>`): clones share one kernel, so a test
//! keeps one to inspect or tamper with what the backend applied.

mod apply;
mod script;
mod trace;
mod types;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

pub use trace::{Outcome, Packet, Trace};

use super::skeleton::TABLE;
use super::transaction::SetKind;
use crate::model::IpFamily;
use crate::nftables::transport::{NftError, Transport};

/// Why the fake kernel refused a script; the message reads like nft's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("/dev/stdin:{line}: Error: syntax error: {msg}")]
    Syntax { line: usize, msg: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: No such file or directory ({what})")]
    NoSuch { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: File exists ({what})")]
    Exists { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: Device or resource busy ({what})")]
    Busy { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: Could not process rule: Operation not supported ({what})")]
    NotSupported { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: conflicting intervals specified ({what})")]
    ConflictingIntervals { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: {what}")]
    Invalid { line: usize, what: String },
    #[error("/dev/stdin:{line}: Error: the fake kernel holds only kproxy's tables, not {table}")]
    ForeignTable { line: usize, table: String },
    /// nft itself crashed (exit 134), so nothing was sent to the kernel.
    #[error(
        "nft: netlink_linearize.c:799: netlink_gen_expr: Assertion `dreg < ctx->reg_low' failed (line {line}: {what})"
    )]
    Aborted { line: usize, what: String },
    #[error("injected failure")]
    Injected,
}

/// One set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub kind: SetKind,
    /// The declaration, normalised (`type …; flags …`).
    pub decl: String,
    pub ty: types::SetType,
    /// Canonical key text -> canonical value text ("" for a plain set).
    pub elements: BTreeMap<String, String>,
    /// Canonical key text -> the element's comment, for the elements that have one. Kept, and
    /// listed, as the kernel keeps an element's user data; the tracer never reads it.
    pub comments: BTreeMap<String, String>,
}

impl Set {
    /// The elements as a listing shows them: a comment in front of its value
    /// (`transaction::commented`), as adoption reads them.
    pub fn listed(&self) -> BTreeMap<String, String> {
        self.elements
            .iter()
            .map(|(k, v)| match self.comments.get(k) {
                Some(c) => (k.clone(), super::transaction::commented(c, v)),
                None => (k.clone(), v.clone()),
            })
            .collect()
    }
}

/// One chain: its base-chain head, if any, and its rules in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: Option<String>,
    pub rules: Vec<String>,
}

/// kproxy's table in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

/// Both families' tables (`None`: the table does not exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub v4: Option<Table>,
    pub v6: Option<Table>,
}

impl Tables {
    pub fn get(&self, family: IpFamily) -> Option<&Table> {
        match family {
            IpFamily::V4 => self.v4.as_ref(),
            IpFamily::V6 => self.v6.as_ref(),
        }
    }

    pub fn get_mut(&mut self, family: IpFamily) -> &mut Option<Table> {
        match family {
            IpFamily::V4 => &mut self.v4,
            IpFamily::V6 => &mut self.v6,
        }
    }
}

/// Everything the fake kernel holds and saw.
#[derive(Debug, Default)]
pub struct KernelState {
    pub tables: Tables,
    /// Every script applied, in order.
    pub applied: Vec<String>,
    /// Every script refused, with the reason.
    pub refused: Vec<(String, ApplyError)>,
    /// Refuse this many upcoming scripts (`ApplyError::Injected`), changing nothing.
    pub fail_next: usize,
    /// Refuse every script with a line that contains this text (`ApplyError::Exists`, as the
    /// kernel refuses an element it cannot take), changing nothing: a poison pill.
    pub poison: Option<String>,
}

/// A handle on one in-memory kernel; clones share it.
#[derive(Clone, Debug, Default)]
pub struct FakeKernel {
    state: Arc<Mutex<KernelState>>,
}

impl FakeKernel {
    pub fn new() -> FakeKernel {
        FakeKernel::default()
    }

    fn lock(&self) -> MutexGuard<'_, KernelState> {
        // A test that panicked while holding the lock left consistent data: tables are only
        // ever replaced whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, to inspect or tamper with it.
    pub fn with<R>(&self, f: impl FnOnce(&mut KernelState) -> R) -> R {
        f(&mut self.lock())
    }

    /// A copy of both tables.
    pub fn tables(&self) -> Tables {
        self.lock().tables.clone()
    }

    /// Applies an `nft -f` script atomically.
    pub fn apply_script(&self, script: &str) -> Result<(), ApplyError> {
        let mut s = self.lock();
        let poisoned = s.poison.as_deref().and_then(|p| {
            script
                .lines()
                .position(|l| l.contains(p))
                .map(|i| ApplyError::Exists {
                    line: i + 1,
                    what: format!("poisoned element {p}"),
                })
        });
        let result = if s.fail_next > 0 {
            s.fail_next -= 1;
            Err(ApplyError::Injected)
        } else if let Some(e) = poisoned {
            Err(e)
        } else {
            script::parse(script)
                .map_err(|e| ApplyError::Syntax {
                    line: e.line,
                    msg: e.msg,
                })
                .and_then(|cmds| {
                    let mut next = s.tables.clone();
                    apply::apply(&mut next, &cmds).map(|()| next)
                })
        };
        match result {
            Ok(next) => {
                s.tables = next;
                s.applied.push(script.to_string());
                Ok(())
            }
            Err(e) => {
                s.refused.push((script.to_string(), e.clone()));
                Err(e)
            }
        }
    }

    /// kproxy's table of `family` as `nft list table` prints it, `None` when it does not exist.
    pub fn listing(&self, family: IpFamily) -> Option<String> {
        self.lock().tables.get(family).map(|t| listing(t, family))
    }

    /// Rules per chain of kproxy's table in `family`; chains without rules are absent, as in a
    /// netlink rule dump.
    pub fn rule_counts_of(&self, family: IpFamily) -> BTreeMap<String, usize> {
        let s = self.lock();
        let Some(t) = s.tables.get(family) else {
            return BTreeMap::new();
        };
        t.chains
            .iter()
            .filter(|(_, c)| !c.rules.is_empty())
            .map(|(n, c)| (n.clone(), c.rules.len()))
            .collect()
    }

    /// Where the first packet of a connection goes, and whether it is marked for masquerade.
    pub fn trace(&self, family: IpFamily, packet: &Packet) -> Trace {
        let s = self.lock();
        trace::trace(s.tables.get(family), family, packet)
    }

    /// `trace` of many packets (each in the family of its destination), reading the rules once.
    pub fn trace_all(&self, packets: &[Packet]) -> Vec<Trace> {
        let s = self.lock();
        let v4 = s.tables.v4.as_ref().map(trace::Program::new);
        let v6 = s.tables.v6.as_ref().map(trace::Program::new);
        packets
            .iter()
            .map(|p| {
                let family = IpFamily::of(&p.daddr);
                let prog = match family {
                    IpFamily::V4 => v4.as_ref(),
                    IpFamily::V6 => v6.as_ref(),
                };
                match prog {
                    Some(prog) => prog.trace(family, p),
                    None => trace::trace(None, family, p),
                }
            })
            .collect()
    }
}

/// nft's listing: sets and maps first, then chains, one `set|map|chain NAME {` line each.
fn listing(t: &Table, family: IpFamily) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table {} {TABLE} {{", apply::family_word(family));
    let mut first = true;
    for (name, set) in &t.sets {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
        let kind = match set.kind {
            SetKind::Set => "set",
            SetKind::Map => "map",
        };
        let _ = writeln!(out, "\t{kind} {name} {{");
        for clause in set.decl.split("; ") {
            let _ = writeln!(out, "\t\t{clause}");
        }
        super::render::write_elements(&mut out, &set.listed());
        let _ = writeln!(out, "\t}}");
    }
    for (name, chain) in &t.chains {
        if !std::mem::take(&mut first) {
            out.push('\n');
        }
        let _ = writeln!(out, "\tchain {name} {{");
        if let Some(head) = &chain.head {
            let _ = writeln!(out, "\t\t{head};");
        }
        for rule in &chain.rules {
            let _ = writeln!(out, "\t\t{rule}");
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str("}\n");
    out
}

impl Transport for FakeKernel {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.apply_script(script)
            .map_err(|e| NftError::ApplyRefused {
                status: "exit status: 1".into(),
                stderr: e.to_string(),
            })
    }

    fn list_table(&mut self, family: IpFamily, _table: &str) -> Result<Option<String>, NftError> {
        Ok(self.listing(family))
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        _table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError> {
        Ok(self.rule_counts_of(family))
    }
}
