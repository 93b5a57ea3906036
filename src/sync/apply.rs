//! Phase 3 of a sync: hand the plans to the backend, and act on how it failed (the class of its
//! `BackendError`): a refusal is isolated to the service ports that cause it, which are
//! quarantined while everything else is programmed (`quarantine.rs`); anything else is retried.
//! The kernel work runs off the async runtime (`blocking`), so `/healthz`, `/metrics` and
//! SIGTERM are answered while an `iptables-restore` of 10,000 Services runs.
//!
//! Invariants: the backend never sees a quarantined (port, family); quarantined ports are
//! tried again when they change (partial syncs) and on every full resync; a full resync whose
//! retry is refused first tries everything but the previous quarantine, so a permanent poison
//! pill costs two full syncs per resync period, not a bisection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::quarantine::{self, Quarantine, Quarantined, Unit};
use super::{Shared, Syncer};
use crate::backends::error::{Cause, Class, Step};
use crate::backends::ipvs::kernel::KernelError;
use crate::backends::{Backend, BackendError, Plans, ProxyMode, SyncReport};
use crate::metrics::Metrics;
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

/// Runs blocking kernel work without stalling the runtime's other tasks: on a blocking thread
/// under the multi-threaded runtime (kproxy's), inline under a current-thread one (tests, whose
/// paused clocks must not see a thread they do not know of).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    if multi_threaded() {
        tokio::task::spawn_blocking(f)
            .await
            .expect("a blocking kernel job panicked")
    } else {
        f()
    }
}

/// Whether the calling task runs on a multi-threaded tokio runtime (kproxy's).
fn multi_threaded() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Runs CPU-heavy work that needs the caller's borrows (planning 10,000 ports) in place, but
/// with the runtime's other tasks moved to another worker first (multi-threaded runtime only).
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    if multi_threaded() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Everything phase 3 needs, owned, to run on a blocking thread.
struct Job {
    backend: Arc<Mutex<Box<dyn Backend>>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    quarantine: Quarantine,
    full: bool,
    changed: BTreeSet<ServicePortName>,
}

/// What the job did: the outcome, the quarantine as it left it, and the units it quarantined
/// in this sync with the error of each.
struct Done {
    outcome: Outcome,
    quarantine: Quarantine,
    culprits: Vec<(Unit, BackendError)>,
}

impl Syncer {
    /// Phase 3: hand the plans to the backend.
    pub(super) async fn backend_sync(
        &mut self,
        full: bool,
        changed: &BTreeSet<ServicePortName>,
    ) -> Outcome {
        let job = Job {
            backend: self.backend.clone(),
            shared: self.shared.clone(),
            metrics: self.metrics.clone(),
            quarantine: std::mem::take(&mut self.quarantine),
            full,
            changed: changed.clone(),
        };
        let done = blocking(move || job.run()).await;
        self.quarantine = done.quarantine;
        let model = self.tracker.model();
        for ((name, family), error) in done.culprits {
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
        self.metrics
            .quarantined_service_ports
            .set(i64::try_from(self.quarantine.len()).unwrap_or(i64::MAX));
        *self.shared.quarantined.write().expect("quarantine lock") =
            self.quarantine.units().clone();
        done.outcome
    }
}

impl Job {
    fn run(mut self) -> Done {
        let shared = self.shared.clone();
        let plans = shared.plans.read().expect("plans lock");
        let node = shared.node.read().expect("node lock");
        let mut backend = self.backend.lock().expect("backend lock");
        let previous = if self.full {
            self.quarantine.take()
        } else {
            self.quarantine.release(&self.changed);
            BTreeMap::new()
        };
        let mut culprits = Vec::new();
        let result = match self.sync_once(backend.as_mut(), &plans, &node) {
            Err(e) if e.class() == Class::Refused => {
                self.count_failure(backend.as_ref(), &e);
                tracing::warn!(error = %e, "the kernel refused the sync; finding the service ports that cause it");
                self.isolate(backend.as_mut(), &previous, &plans, &node)
                    .map(|c| culprits = c)
            }
            other => other.map(|report| {
                tracing::debug!(
                    full = self.full,
                    changed = self.changed.len(),
                    operations = report.operations,
                    "synced"
                );
            }),
        };
        let outcome = match result {
            Ok(()) => {
                for r in backend.table_rules() {
                    let labels = &[r.table, r.family.as_str()];
                    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                    let m = &self.metrics;
                    m.iptables_rules_total
                        .with_label_values(labels)
                        .set(gauge(r.total));
                    m.iptables_rules_last
                        .with_label_values(labels)
                        .set(gauge(r.last_sync));
                }
                Outcome::Applied
            }
            Err(e) => {
                self.count_failure(backend.as_ref(), &e);
                // A failure that is no refusal says nothing about what was quarantined: it
                // stays quarantined, and the next full resync tries it again.
                for (unit, why) in previous {
                    self.quarantine.insert(unit, why);
                }
                let full = self.full;
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
        };
        drop(backend);
        Done {
            outcome,
            quarantine: self.quarantine,
            culprits,
        }
    }

    /// Upstream's failure counters, per `ip_family`: the family whose restore failed
    /// (iptables), or every family the node serves when one transaction held them all
    /// (nftables; IPVS mode's companion table, counted where upstream counts IPVS mode's
    /// iptables-restore failures).
    fn count_failure(&self, backend: &dyn Backend, e: &BackendError) {
        let m = &self.metrics;
        let families = match backend.failed_family() {
            Some(f) => vec![f],
            None => m.families().to_vec(),
        };
        let apply = e.step() == Step::Apply;
        let companion = matches!(e.cause(), Cause::Ipvs(KernelError::Nft(_)));
        for family in families {
            let f = &[family.as_str()];
            match backend.mode() {
                ProxyMode::Nftables => m.nftables_sync_failures.with_label_values(f).inc(),
                ProxyMode::Iptables if apply => {
                    m.iptables_restore_failures.with_label_values(f).inc();
                    if !self.full {
                        m.iptables_partial_restore_failures
                            .with_label_values(f)
                            .inc();
                    }
                }
                ProxyMode::Ipvs if apply && companion => {
                    m.iptables_restore_failures.with_label_values(f).inc();
                }
                _ => {}
            }
        }
    }

    /// One backend sync of `plans` without the quarantined units.
    fn sync_once(
        &self,
        backend: &mut dyn Backend,
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
        if self.full {
            backend.sync_full(programmed, node)
        } else {
            backend.sync_partial(programmed, &self.changed, node)
        }
    }

    /// Bisects the refused sync down to the units that cause it and leaves the kernel
    /// programmed with everything else; returns the culprits (the caller quarantines them).
    fn isolate(
        &self,
        backend: &mut dyn Backend,
        previous: &BTreeMap<Unit, Quarantined>,
        plans: &Plans,
        node: &NodeFacts,
    ) -> Result<Vec<(Unit, BackendError)>, BackendError> {
        let held: BTreeSet<&Unit> = self.quarantine.units().keys().collect();
        let units: Vec<Unit> = quarantine::units_of(plans)
            .into_iter()
            .filter(|u| !held.contains(u))
            .collect();
        let suspect = |u: &Unit| match (self.full, previous.is_empty()) {
            (true, true) => true,
            (true, false) => previous.contains_key(u),
            (false, _) => self.changed.contains(&u.0),
        };
        let (suspects, others): (Vec<Unit>, Vec<Unit>) = units.into_iter().partition(suspect);
        let started = std::time::Instant::now();
        let mut attempts = 0usize;
        let culprits = quarantine::isolate(suspects, others, |set| {
            attempts += 1;
            backend
                .sync_full(&quarantine::subset(plans, set), node)
                .map(|_| ())
        })?;
        tracing::info!(
            attempts,
            culprits = culprits.len(),
            took = ?started.elapsed(),
            "isolation done"
        );
        Ok(culprits)
    }
}
