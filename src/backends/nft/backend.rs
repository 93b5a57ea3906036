//! `NftBackend`: the `Backend` contract on top of compile, diff and a `Transport`.
//!
//! Invariants: the mirror changes only after the transport accepted a transaction. A
//! transaction of element operations only goes as one netlink batch when the transport sends
//! those (libnftables'), else as `nft -f` text; both are one atomic transaction. The first full
//! sync (and the first after any failure, drift or cleanup) adopts: it lists kproxy's tables and
//! reconciles them element by element in bounded transactions (`reconcile.rs`, at most
//! `CHUNK_OPS` element operations each); the tables and the elements that are still right are
//! never removed, so packets keep flowing across a restart. Later full syncs diff against the
//! mirror; partial syncs diff only the changed ports and never list the kernel. A failure is
//! logged with nft's message, counted (`failures()`; the sync loop exports
//! kubeproxy_sync_proxy_rules_nftables_sync_failures_total) and makes the next full sync adopt
//! again. `drift` asks the transport what others committed to kproxy's tables (the kernel's
//! change notifications, `nftables::monitor`), or, when it watches nothing, compares the
//! kernel's rule count per chain with the mirror's; either makes the next full sync adopt,
//! which repairs what differs.

use crate::backends::error::Step;
use std::collections::BTreeSet;

use super::compile::{compile, render};
use super::diff::{self, Found, Mirror, Parts, Scope, Sink, Unwanted};
use super::encode;
use super::read;
use super::reconcile;
use super::transaction::Transaction;
use crate::backends::{Backend, BackendConfig, BackendError, Plans, ProxyMode, SyncReport};
use crate::model::{IpFamily, ServicePortName};
use crate::nftables::transport::{NftError, Transport};
use crate::node::NodeFacts;

pub struct NftBackend<T: Transport> {
    config: BackendConfig,
    transport: T,
    mirror: Mirror,
    /// The next full sync lists the kernel and replaces the tables' contents.
    adopt: bool,
    /// Sets and chains someone else changed: the next full sync repairs them in place.
    repair: super::repair::Repair,
    failures: u64,
    batches: u64,
    /// Adoptions so far (start-up, failures, drift that could not be repaired in place).
    adoptions: u64,
}

impl<T: Transport> NftBackend<T> {
    pub fn new(config: BackendConfig, transport: T) -> Self {
        NftBackend {
            config,
            transport,
            mirror: Mirror::default(),
            adopt: true,
            repair: Default::default(),
            failures: 0,
            batches: 0,
            adoptions: 0,
        }
    }

    /// Failed applies so far (the nftables sync-failure metric).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// Adoptions so far: how often the tables were read whole and reconciled.
    pub fn adoptions(&self) -> u64 {
        self.adoptions
    }

    /// Transactions sent as netlink element batches so far (the rest went as text).
    pub fn element_batches(&self) -> u64 {
        self.batches
    }

    /// Sends a transaction: as one element batch when the transport sends those and the
    /// transaction is only elements `encode` knows, else as text. A failure is logged, counted,
    /// and makes the next full sync adopt.
    fn send(&mut self, tx: &Transaction) -> Result<SyncReport, BackendError> {
        let operations = tx.len();
        if !tx.is_empty() {
            let batch = self
                .transport
                .sends_element_batches()
                .then(|| encode::batch(tx))
                .flatten();
            let result = match batch {
                Some(batch) => {
                    self.batches += 1;
                    self.transport.apply_elements(batch)
                }
                None => self.transport.apply(&tx.to_string()),
            };
            result.map_err(|e| {
                self.failures += 1;
                self.adopt = true;
                tracing::warn!(error = %e, operations, "nftables transaction failed");
                BackendError::at(Step::Apply, e)
            })?;
        }
        Ok(SyncReport { operations })
    }

    /// Adoption: lists kproxy's tables, then reconciles them with `parts` in bounded
    /// transactions (see `reconcile.rs`); with nothing listed, streams the load instead
    /// (`load.rs`). The mirror is replaced only when every transaction
    /// went through; a failure part-way leaves `adopt` set, so the next full sync lists again.
    fn adopt_and_load(&mut self, parts: Parts) -> Result<SyncReport, BackendError> {
        // What others changed so far is in what is about to be read.
        let _ = self.transport.foreign_changes();
        self.adoptions += 1;
        let mut found = [None, None];
        for (slot, family) in found.iter_mut().zip([IpFamily::V4, IpFamily::V6]) {
            let mut f = Found::default();
            let shape = read::read(&mut self.transport, family, &mut |set, k, v| {
                f.element(set, &k, &v)
            })
            .map_err(|e| BackendError::at(Step::Adopt, e))?;
            *slot = shape.map(|(chains, sets)| {
                f.chains = chains;
                f.sets = sets;
                f
            });
        }
        let mut sink = Adopting {
            backend: self,
            operations: 0,
        };
        let mirror = diff::load(parts, found, reconcile::CHUNK_OPS, &mut sink)?;
        let operations = sink.operations;
        self.mirror = mirror;
        self.adopt = false;
        Ok(SyncReport { operations })
    }

    /// What the next full sync does about `foreign` changes: repair in place the sets whose
    /// elements and the chains whose rules changed, adopt for anything else.
    fn plan_repair(&mut self, foreign: &crate::nftables::monitor::Foreign) {
        use crate::nftables::monitor::Kind;
        let touched = foreign.commits.iter().flat_map(|c| c.2.keys());
        for (kind, _, family, _, name) in touched {
            // Only kproxy's ip and ip6 tables are watched.
            let Some(family) = crate::nfnetlink::ip_family(*family) else {
                self.adopt = true;
                continue;
            };
            match kind {
                Kind::Element if super::repair::repairable_set(name) => {
                    self.repair.sets.insert((family, name.clone()));
                }
                Kind::Rule => {
                    self.repair.chains.insert((family, name.clone()));
                }
                _ => self.adopt = true,
            }
        }
        if foreign.lost || foreign.unseen || foreign.more > 0 {
            self.adopt = true;
        }
    }

    /// Makes the sets and chains someone else changed what the mirror says; false when they
    /// cannot be repaired in place (then the caller adopts).
    fn repair_sets(&mut self) -> Result<bool, BackendError> {
        let sets = std::mem::take(&mut self.repair);
        let txs =
            super::repair::transactions(&mut self.transport, &self.mirror, &sets).map_err(|e| {
                self.adopt = true;
                BackendError::at(Step::Adopt, e)
            })?;
        let Some(txs) = txs else {
            return Ok(false);
        };
        for tx in &txs {
            self.send(tx)?;
        }
        Ok(true)
    }

    /// kproxy's table in `family` as adoption reads it, collected as texts (`read.rs`).
    pub fn listing(&mut self, family: IpFamily) -> Result<Option<reconcile::Listed>, NftError> {
        read::listing(&mut self.transport, family)
    }
}

/// An adoption's sink: sends through the backend, reads the table again for what no port
/// wanted.
struct Adopting<'a, T: Transport> {
    backend: &'a mut NftBackend<T>,
    operations: usize,
}

impl<T: Transport> Sink for Adopting<'_, T> {
    type Error = BackendError;

    fn send(&mut self, tx: Transaction) -> Result<(), BackendError> {
        self.operations += self.backend.send(&tx)?.operations;
        Ok(())
    }

    fn unwanted(
        &mut self,
        family: IpFamily,
        pick: Unwanted,
    ) -> Result<Vec<(&'static str, String)>, BackendError> {
        let mut out = Vec::new();
        // An element can come twice (a set listed again as text after one of its elements
        // did not decode); deleting it twice would fail the transaction.
        let mut taken = std::collections::HashSet::new();
        read::read(&mut self.backend.transport, family, &mut |set, k, _| {
            let name = super::skeleton::SETS.iter().find(|s| s.name == set);
            if let Some(s) = name.filter(|_| pick(set, &k))
                && taken.insert(super::elements::ElemId::of(&[set, &k]))
            {
                out.push((s.name, k));
            }
        })
        .map_err(|e| BackendError::at(Step::Adopt, e))?;
        Ok(out)
    }
}

impl<T: Transport> Backend for NftBackend<T> {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Nftables
    }

    fn sync_full(&mut self, plans: &Plans, node: &NodeFacts) -> Result<SyncReport, BackendError> {
        let parts = Parts::new(plans, node, &self.config);
        if !self.adopt && !self.repair.is_empty() && !self.repair_sets()? {
            self.adopt = true;
        }
        if self.adopt {
            self.repair = Default::default();
            return self.adopt_and_load(parts);
        }
        let d = diff::into_diff(&self.mirror, parts, Scope::Full);
        let report = self.send(&d.tx)?;
        self.mirror.commit(d);
        Ok(report)
    }

    fn sync_partial(
        &mut self,
        plans: &Plans,
        changed: &BTreeSet<ServicePortName>,
        node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        if self.adopt || !self.mirror.is_loaded() {
            return Err(BackendError::not_loaded());
        }
        let parts = Parts::new(plans, node, &self.config);
        let d = diff::into_diff(&self.mirror, parts, Scope::Ports(changed));
        let report = self.send(&d.tx)?;
        self.mirror.commit(d);
        Ok(report)
    }

    fn drift(&mut self) -> Result<Option<String>, BackendError> {
        if let Some(foreign) = self.transport.foreign_changes() {
            let foreign = foreign.map_err(|e| BackendError::at(Step::Probe, NftError::from(e)))?;
            if foreign.is_empty() || self.adopt || !self.mirror.is_loaded() {
                return Ok(None);
            }
            self.plan_repair(&foreign);
            return Ok(Some(foreign.to_string()));
        }
        if self.adopt || !self.mirror.is_loaded() {
            return Ok(None);
        }
        for family in [IpFamily::V4, IpFamily::V6] {
            let found = self
                .transport
                .rule_counts(family, super::skeleton::TABLE)
                .map_err(|e| BackendError::at(Step::Probe, e))?;
            let want = self.mirror.expected_rule_counts(family);
            if found != want {
                self.adopt = true;
                return Ok(Some(describe_drift(family, &want, &found)));
            }
        }
        Ok(None)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        // `add` first makes the delete succeed when a table is already gone.
        let script: String = IpFamily::ALL
            .into_iter()
            .map(|family| {
                let f = crate::nftables::family_name(family);
                let t = super::skeleton::TABLE;
                format!("add table {f} {t}\ndelete table {f} {t}\n")
            })
            .collect();
        self.transport
            .apply(&script)
            .map_err(|e| BackendError::at(Step::Cleanup, e))?;
        self.mirror = Mirror::default();
        self.adopt = true;
        Ok(())
    }

    fn cleanup_plan(&mut self) -> Result<Vec<String>, BackendError> {
        let mut out = Vec::new();
        for family in IpFamily::ALL {
            let table = super::skeleton::TABLE;
            let listed = self
                .transport
                .list_table(family, table)
                .map_err(|e| BackendError::at(Step::CleanupPlan, e))?;
            if let Some(text) = listed {
                let count = |word: &str| {
                    text.lines()
                        .filter(|l| l.trim_start().starts_with(word))
                        .count()
                };
                out.push(format!(
                    "nftables table {} {table} ({} chains, {} sets and maps)",
                    crate::nftables::family_name(family),
                    count("chain "),
                    count("set ") + count("map ")
                ));
            }
        }
        Ok(out)
    }

    fn render(&self, plans: &Plans, node: &NodeFacts) -> String {
        format!(
            "# kproxy nftables ruleset for node {:?} (--dry-run; `nft -f` syntax)\n{}",
            node.name,
            render(&compile(plans, node, &self.config))
        )
    }
}

/// Whether a notification is about kproxy's tables (the monitor's interest).
pub fn kproxy_tables(touch: &crate::nftables::monitor::Touch<'_>) -> bool {
    touch.table == super::skeleton::TABLE && crate::nfnetlink::ip_family(touch.family).is_some()
}

/// One line naming the first chains whose rule counts differ, e.g. `ip kproxy: chain services
/// has 0 rules, want 9`.
fn describe_drift(
    family: IpFamily,
    want: &std::collections::BTreeMap<String, usize>,
    found: &std::collections::BTreeMap<String, usize>,
) -> String {
    let names: BTreeSet<&String> = want.keys().chain(found.keys()).collect();
    let diffs: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let (w, f) = (
                want.get(name).copied().unwrap_or(0),
                found.get(name).copied().unwrap_or(0),
            );
            (w != f).then(|| format!("chain {name} has {f} rules, want {w}"))
        })
        .take(3)
        .collect();
    format!(
        "{} {}: {}",
        super::transaction::family_name(family),
        super::skeleton::TABLE,
        diffs.join("; ")
    )
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
