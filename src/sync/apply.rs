//! Phase 3 of a sync: hand the plans to the backend, and act on how it failed (the class of its
//! `BackendError`): a refusal is isolated to the service ports that cause it, which are
//! quarantined while everything else is programmed (`quarantine.rs`); anything else is retried.
//!
//! Invariants: the backend never sees a quarantined (port, family); quarantined ports are
//! tried again when they change (partial syncs) and on every full resync; a full resync whose
//! retry is refused first tries everything but the previous quarantine, so a permanent poison
//! pill costs two full syncs per resync period, not a bisection.

use std::collections::{BTreeMap, BTreeSet};

use super::Syncer;
use super::quarantine::{self, Quarantined, Unit};
use crate::backends::error::{Class, Step};
use crate::backends::{BackendError, Plans, ProxyMode, SyncReport};
use crate::model::ServicePortName;
use crate::node::NodeFacts;

/// How a sync ended, for the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything that could be programmed was (quarantined ports aside).
    Applied,
    /// The kernel was busy: run the same sync again soon.
    Retry,
    /// Resync in full (after a backoff).
    Resync,
}

impl Outcome {
    pub fn applied(self) -> bool {
        self == Outcome::Applied
    }
}

impl Syncer {
    /// Phase 3: hand the plans to the backend.
    pub(super) fn backend_sync(
        &mut self,
        full: bool,
        changed: &BTreeSet<ServicePortName>,
    ) -> Outcome {
        let shared = self.shared.clone();
        let plans = shared.plans.read().expect("plans lock");
        let node = shared.node.read().expect("node lock");
        let previous = if full {
            self.quarantine.take()
        } else {
            self.quarantine.release(changed);
            BTreeMap::new()
        };
        let result = match self.sync_once(full, changed, &plans, &node) {
            Err(e) if e.class() == Class::Refused => {
                self.count_failure(full, &e);
                tracing::warn!(error = %e, "the kernel refused the sync; finding the service ports that cause it");
                self.isolate(full, changed, previous, &plans, &node)
            }
            other => other,
        };
        self.metrics
            .quarantined_service_ports
            .set(i64::try_from(self.quarantine.len()).unwrap_or(i64::MAX));
        *shared.quarantined.write().expect("quarantine lock") = self.quarantine.units().clone();
        match result {
            Ok(report) => {
                for (table, n) in self.backend.rules_per_table() {
                    let gauge = self
                        .metrics
                        .iptables_rules_total
                        .with_label_values(&[table]);
                    gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                tracing::debug!(
                    full,
                    changed = changed.len(),
                    operations = report.operations,
                    quarantined = self.quarantine.len(),
                    "synced"
                );
                Outcome::Applied
            }
            Err(e) => {
                self.count_failure(full, &e);
                match e.class() {
                    Class::Transient => {
                        tracing::warn!(error = %e, full, "sync failed; retrying it");
                        Outcome::Retry
                    }
                    Class::Fatal => {
                        tracing::error!(error = %e, full, "cannot program the kernel; retrying as a full resync, but this needs the node fixed");
                        Outcome::Resync
                    }
                    Class::Resync | Class::Refused => {
                        tracing::error!(error = %e, full, "sync failed; retrying as a full resync");
                        Outcome::Resync
                    }
                }
            }
        }
    }

    fn count_failure(&self, full: bool, e: &BackendError) {
        match self.backend.mode() {
            ProxyMode::Nftables => self.metrics.nftables_sync_failures.inc(),
            ProxyMode::Iptables if e.step() == Step::Apply => {
                self.metrics.iptables_restore_failures.inc();
                if !full {
                    self.metrics.iptables_partial_restore_failures.inc();
                }
            }
            _ => {}
        }
    }

    /// One backend sync of `plans` without the quarantined units.
    fn sync_once(
        &mut self,
        full: bool,
        changed: &BTreeSet<ServicePortName>,
        plans: &Plans,
        node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        let filtered;
        let programmed = if self.quarantine.is_empty() {
            plans
        } else {
            filtered = self.quarantine.filter(plans);
            &filtered
        };
        if full {
            self.backend.sync_full(programmed, node)
        } else {
            self.backend.sync_partial(programmed, changed, node)
        }
    }

    /// Bisects the refused sync down to the units that cause it, quarantines them, and leaves
    /// the kernel programmed with everything else.
    fn isolate(
        &mut self,
        full: bool,
        changed: &BTreeSet<ServicePortName>,
        previous: BTreeMap<Unit, Quarantined>,
        plans: &Plans,
        node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        let held: BTreeSet<&Unit> = self.quarantine.units().keys().collect();
        let units: Vec<Unit> = quarantine::units_of(plans)
            .into_iter()
            .filter(|u| !held.contains(u))
            .collect();
        let suspect = |u: &Unit| match (full, previous.is_empty()) {
            (true, true) => true,
            (true, false) => previous.contains_key(u),
            (false, _) => changed.contains(&u.0),
        };
        let (suspects, others): (Vec<Unit>, Vec<Unit>) = units.into_iter().partition(suspect);
        let started = std::time::Instant::now();
        let mut attempts = 0usize;
        let backend = &mut self.backend;
        let culprits = quarantine::isolate(suspects, others, |set| {
            attempts += 1;
            backend
                .sync_full(&quarantine::subset(plans, set), node)
                .map(|_| ())
        })?;
        let model = self.tracker.model();
        for ((name, family), error) in culprits {
            let origin = model
                .service(&name.service)
                .and_then(|s| s.origin.as_deref().map(str::to_string));
            tracing::error!(
                port = %name,
                family = family.as_str(),
                file = origin.as_deref().unwrap_or("-"),
                error = %error,
                "quarantined {name} ({}): the kernel refuses it; every other Service is programmed, and it is tried again when it changes and at the next full resync",
                family.as_str()
            );
            let why = Quarantined {
                error: error.to_string(),
                origin,
            };
            self.quarantine.insert((name, family), why);
        }
        tracing::info!(
            attempts,
            quarantined = self.quarantine.len(),
            took = ?started.elapsed(),
            "isolation done"
        );
        Ok(SyncReport::default())
    }
}
