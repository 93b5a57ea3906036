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
//! keeps one to inspect or tamper with what the backend applied. The tables, the script
//! syntax, the kernel's checks and the tracer are `ruleset`'s (shipped: `kproxy explain` uses
//! them); only this handle, its bookkeeping and its injected failures are test-only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::ruleset::{self, trace};
pub use super::ruleset::{ApplyError, Outcome, Packet, Table, Tables, Trace};
use crate::model::IpFamily;
use crate::nftables::transport::{NftError, Transport};

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
            let mut next = s.tables.clone();
            ruleset::apply_script(&mut next, script).map(|()| next)
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
        self.lock()
            .tables
            .get(family)
            .map(|t| ruleset::listing(t, family))
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
