//! The sync loop: drains source changes into the change tracker, and, when the bounded-frequency
//! runner says so, runs `sync()`: take the pending changes, plan, backend sync, metrics, health
//! checks, conntrack reconcile.
//!
//! Invariants: `Shared::plans` always holds the desired plan of every service port (also after a
//! failed apply); the backend holds what was last applied; any failure makes the next sync full.
//! No sync runs before Services and EndpointSlices have both finished their initial list.
//! A deleted Node leaves its last facts in force (only `/healthz` changes); a Node's changed
//! facts make the next sync full.

mod apply;
mod listeners;
pub mod quarantine;
mod record;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::backends::{Backend, Plans};
use crate::conntrack::Reconciler;
use crate::health::service::ServiceHealthServers;
use crate::metrics::Metrics;
use crate::model::plan::claims::Claims;
use crate::model::plan::{Planned, Targets, plan_claimed};
use crate::model::tracker::ChangeTracker;
use crate::model::{IpFamily, ServicePortName};
use crate::node::NodeFacts;
pub use crate::state::Shared;
use crate::watch::{Change, ChangeRx, Kind};
pub use apply::Outcome;
use runner::{Due, Runner};

/// How a sync loop is set up.
pub struct Syncer {
    tracker: ChangeTracker,
    /// Shared with the blocking threads that run the kernel work (`apply::blocking`).
    backend: Arc<Mutex<Box<dyn Backend>>>,
    conntrack: Arc<Mutex<Box<dyn Reconciler>>>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    health_checks: ServiceHealthServers,
    /// Node name and host addresses; the Node object's facts are merged in at plan time.
    base_node: NodeFacts,
    listed: HashSet<Kind>,
    /// Trigger times older than this were set before kproxy started: not our latency.
    started: SystemTime,
    /// Trigger times of changes not yet applied successfully, with the slice's family.
    trigger_times: Vec<(IpFamily, SystemTime)>,
    /// Per-port contribution to the no-local-endpoints gauges: (internal, external) for IPv4
    /// and IPv6 (`family_index`); ports that contribute nothing are absent.
    no_local: BTreeMap<ServicePortName, [(bool, bool); 2]>,
    /// List the host's addresses on full syncs (off in tests that fix them).
    gather_addresses: bool,
    /// The drift probe failed last time (its error is logged once, not every period).
    drift_probe_failing: bool,
    /// Who claims which address, NodePort and healthCheckNodePort.
    claims: Claims,
    /// What the kernel refused, kept out of it.
    quarantine: quarantine::Quarantine,
    /// nftables mode's localhost NodePorts (`--nodeport-addresses` with `localhost`).
    relay: Option<crate::relay::LocalhostRelay>,
    /// Services' `externalIPs` are served (the AllowServiceExternalIPs feature gate).
    external_ips: bool,
    /// The Node's InternalIPs, when it has a Node, stand for the host's addresses (a dry run
    /// of manifests that describe another machine).
    addresses_from_node: bool,
}

impl Syncer {
    pub fn new(
        backend: Box<dyn Backend>,
        conntrack: Box<dyn Reconciler>,
        base_node: NodeFacts,
        metrics: Arc<Metrics>,
        shared: Arc<Shared>,
        mut health_checks: ServiceHealthServers,
    ) -> Syncer {
        health_checks.report_health_of(shared.clone());
        Syncer {
            tracker: ChangeTracker::default(),
            backend: Arc::new(Mutex::new(backend)),
            conntrack: Arc::new(Mutex::new(conntrack)),
            metrics,
            shared,
            health_checks,
            base_node,
            listed: HashSet::new(),
            started: SystemTime::now(),
            trigger_times: Vec::new(),
            drift_probe_failing: false,
            no_local: BTreeMap::new(),
            gather_addresses: true,
            claims: Claims::default(),
            quarantine: quarantine::Quarantine::default(),
            relay: None,
            external_ips: true,
            addresses_from_node: false,
        }
    }

    /// Ignores Services' `externalIPs`, as upstream with the AllowServiceExternalIPs feature
    /// gate off (KEP-5707): no rules, no claims, as if the field were empty.
    pub fn without_external_ips(mut self) -> Syncer {
        self.external_ips = false;
        self
    }

    /// Serves localhost NodePorts through the userspace relay (nftables mode, KEP-6032).
    pub fn with_localhost_relay(mut self) -> Syncer {
        self.relay = Some(crate::relay::LocalhostRelay::default());
        self
    }

    /// Uses `base_node.local_addresses` as given instead of listing the host's (for tests).
    pub fn with_fixed_addresses(mut self) -> Syncer {
        self.gather_addresses = false;
        self
    }

    /// Takes the Node's InternalIPs as this host's addresses once the source sent the Node
    /// (`--dry-run --manifests`: the files describe a node, maybe not this machine); the
    /// host's own until then, or without a Node.
    pub fn with_addresses_from_node(mut self) -> Syncer {
        self.addresses_from_node = true;
        self
    }

    /// Services and EndpointSlices have both finished their initial list.
    pub fn ready(&self) -> bool {
        self.listed.contains(&Kind::Services) && self.listed.contains(&Kind::EndpointSlices)
    }

    /// Feeds one change to the tracker; true when it changed the model.
    pub fn apply(&mut self, change: Change) -> bool {
        let changed = match change {
            Change::Service(name, svc) => {
                let svc = match svc {
                    Some(svc) if !self.external_ips => Some(without_external_ips(svc)),
                    other => other,
                };
                let c = self.tracker.update_service(&name, svc);
                if c {
                    self.metrics.service_changes_total.inc();
                }
                c
            }
            Change::Slice(key, slice) => {
                let c = self.tracker.update_slice(&key, slice);
                if c {
                    self.metrics.endpoint_changes_total.inc();
                }
                c
            }
            Change::Node(node) => {
                let known = self.tracker.node().is_some();
                self.shared.health.node_seen(node.as_ref(), known);
                let name = &self.base_node.name;
                self.shared.node_presence.seen(name, node.is_some());
                match node {
                    // Deleted (or now invalid): upstream exits to start over (k/k#138183);
                    // kproxy keeps serving on the Node's last facts (InternalIPs, zone,
                    // podCIDRs) while /healthz says the node is not eligible.
                    None if known => false,
                    node => self.tracker.update_node(node),
                }
            }
            Change::ServiceCidr(name, cidrs) => self.tracker.update_service_cidr(name, cidrs),
            Change::Listed(kind) => {
                if kind == Kind::Nodes {
                    self.shared.node_presence.listed(&self.base_node.name);
                }
                self.listed.insert(kind);
                false
            }
        };
        self.metrics
            .service_changes_pending
            .set(self.tracker.pending_service_changes() as i64);
        self.metrics
            .endpoint_changes_pending
            .set(self.tracker.pending_endpoint_changes() as i64);
        changed
    }

    /// --dry-run: plans every service port from what the sources sent and returns the ruleset
    /// the backend would program. Touches nothing.
    pub async fn render(&mut self) -> String {
        self.render_where(None).await
    }

    /// `render`, of only the service ports `keep` chooses (all of them without it).
    pub async fn render_where(&mut self, keep: Option<&dyn Fn(&Planned) -> bool>) -> String {
        let (_, changed) = self.take_changes(Due::Full);
        self.refresh_node_facts().await;
        self.plan(true, changed);
        let plans = self.shared.plans.read().expect("plans lock");
        let node = self.shared.node.read().expect("node lock");
        let backend = self.backend.lock().expect("backend lock");
        match keep {
            None => backend.render(&plans, &node),
            Some(keep) => {
                let kept = plans.iter().filter(|(_, p)| keep(p));
                let kept: Plans = kept.map(|(k, p)| (k.clone(), p.clone())).collect();
                backend.render(&kept, &node)
            }
        }
    }

    /// One sync, as a list of phases. Returns whether the backend applied it.
    pub async fn sync(&mut self, due: Due) -> Outcome {
        let started = std::time::Instant::now();
        let (full, changed) = self.take_changes(due);
        if full {
            self.refresh_node_facts().await;
        }
        let t_node = started.elapsed();
        let changed = apply::in_place(|| self.plan(full, changed));
        let t_plan = started.elapsed();
        let outcome = self.backend_sync(full, &changed).await;
        let t_backend = started.elapsed();
        let ok = outcome.applied();
        self.record_metrics(full, ok, t_backend);
        if ok {
            self.update_health_checks(full, &changed).await;
            self.update_relay(full, &changed);
            self.reconcile_conntrack(full, &changed).await;
        }
        tracing::debug!(
            full,
            changed = changed.len(),
            node = ?t_node,
            plan = ?(t_plan - t_node),
            backend = ?(t_backend - t_plan),
            after = ?(started.elapsed() - t_backend),
            "sync phases"
        );
        outcome
    }

    /// Phase 1: checkout the tracker; a node change upgrades the sync to full.
    fn take_changes(&mut self, due: Due) -> (bool, BTreeSet<ServicePortName>) {
        let checkout = self.tracker.checkout();
        self.trigger_times.extend(
            checkout
                .trigger_times
                .into_iter()
                .filter(|(_, t)| *t >= self.started),
        );
        self.metrics.service_changes_pending.set(0);
        self.metrics.endpoint_changes_pending.set(0);
        (due == Due::Full || checkout.node_changed, checkout.changed)
    }

    /// Node facts for this sync: the Node object's, plus the host's addresses (full syncs only).
    async fn refresh_node_facts(&mut self) {
        let from_node = self
            .tracker
            .model()
            .node()
            .filter(|_| self.addresses_from_node)
            .map(|n| n.internal_ips.clone());
        if let Some(addrs) = from_node {
            if addrs != self.base_node.local_addresses {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                tracing::info!(
                    "the Node's InternalIPs stand for this host's addresses: {}",
                    list.join(", ")
                );
            }
            self.base_node.local_addresses = addrs;
        } else if self.gather_addresses {
            match crate::node::local_addresses().await {
                Ok(addrs) => self.base_node.local_addresses = addrs,
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the previous list of local addresses")
                }
            }
        }
        let mut facts = self
            .base_node
            .clone()
            .with_node(self.tracker.model().node());
        facts.service_cidrs = self.tracker.model().service_cidrs();
        let mut node = self.shared.node.write().expect("node lock");
        if node.local_traffic != facts.local_traffic || node.name.is_empty() {
            crate::node::log_local_traffic(&facts);
        }
        *node = facts;
    }

    /// Phase 2: plan the changed service ports (every port on a full sync), and those that won
    /// or lost an address, NodePort or healthCheckNodePort by the change. Returns the set the
    /// backend must touch on a partial sync.
    fn plan(
        &mut self,
        full: bool,
        mut changed: BTreeSet<ServicePortName>,
    ) -> BTreeSet<ServicePortName> {
        let node = self.shared.node.read().expect("node lock").clone();
        let model = self.tracker.model();
        let mut plans = self.shared.plans.write().expect("plans lock");
        let mut names: BTreeSet<ServicePortName> = if full {
            let mut all: BTreeSet<_> = plans.keys().cloned().collect();
            all.extend(model.ports().map(|p| p.name.clone()));
            all
        } else {
            changed.clone()
        };
        let mut affected = BTreeSet::new();
        for name in &names {
            affected.extend(self.claims.update(name, model.port(name)));
        }
        changed.extend(affected.iter().cloned());
        names.extend(affected);
        for name in &names {
            let planned = model.port(name).map(|port| {
                let endpoints = model.endpoints(name);
                let lost = self.claims.lost(name);
                let before = plans.get(name).map(|p| p.plan.conflicts.as_slice());
                for c in lost.iter().filter(|c| !before.unwrap_or(&[]).contains(c)) {
                    tracing::warn!(
                        port = %name,
                        winner = %c.winner,
                        "{} and {} both claim {}: {} is older (or first by name) and keeps it; {name} is not served there",
                        name.service, c.winner, c.claim, c.winner
                    );
                }
                let plan = plan_claimed(port, &endpoints, &node, lost);
                Arc::new(Planned {
                    port: port.clone(),
                    endpoints,
                    plan,
                })
            });
            let no_local = planned.as_ref().map(|p| {
                let mut n = [(false, false); 2];
                for f in &p.plan.families {
                    n[family_index(f.family)] = (
                        f.internal == Targets::Drop,
                        f.external == Some(Targets::Drop),
                    );
                }
                n
            });
            match planned {
                Some(p) => plans.insert(name.clone(), p),
                None => plans.remove(name),
            };
            match no_local {
                Some(n) if n != [(false, false); 2] => self.no_local.insert(name.clone(), n),
                _ => self.no_local.remove(name),
            };
        }
        self.metrics
            .service_port_conflicts
            .set(i64::try_from(self.claims.lost_count()).unwrap_or(i64::MAX));
        changed
    }

    /// Between syncs: whether the backend's rules were changed by someone else. Counted, logged
    /// and answered by the caller with a full resync. The check talks to the kernel (IPVS mode
    /// lists every virtual server), so it runs off the async workers.
    pub async fn drifted(&mut self) -> bool {
        let backend = self.backend.clone();
        let result = apply::blocking(move || backend.lock().expect("backend lock").drift()).await;
        let failing = std::mem::replace(&mut self.drift_probe_failing, result.is_err());
        match result {
            Ok(None) => false,
            Ok(Some(what)) => {
                tracing::warn!(drift = %what, "kproxy's rules were changed by someone else; repairing with a full resync");
                self.metrics.drift_repairs.inc();
                true
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot check kproxy's rules for drift");
                }
                false
            }
        }
    }
}

/// `svc` with no `externalIPs` (shared as it is when it has none).
fn without_external_ips(svc: Arc<crate::model::Service>) -> Arc<crate::model::Service> {
    if svc.ports.iter().all(|p| p.external_ips.is_empty()) {
        return svc;
    }
    let mut svc = (*svc).clone();
    for port in &mut svc.ports {
        port.external_ips.clear();
    }
    Arc::new(svc)
}

/// The slot of `family` in per-family arrays.
fn family_index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Timing of the loop.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

/// Runs the sync loop until `shutdown` resolves. Rules are left in place on exit.
pub async fn run(
    mut syncer: Syncer,
    mut rx: ChangeRx,
    timing: Timing,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut runner = Runner::new(timing.min_sync_period, timing.sync_period, Instant::now());
    let mut sources_open = true;
    syncer.shared.health.queued();
    syncer.metrics.queued_at(unix_seconds(SystemTime::now()));
    runner.request_full();
    let mut drift_check = tokio::time::interval(DRIFT_CHECK_PERIOD);
    drift_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = if syncer.ready() {
            runner.next_wakeup(Instant::now())
        } else {
            far_future()
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            change = rx.recv(), if sources_open => match change {
                Some(c) => {
                    let mut any = syncer.apply(c);
                    while let Ok(c) = rx.try_recv() {
                        any |= syncer.apply(c);
                    }
                    if any && runner.request() {
                        syncer.shared.health.queued();
                        syncer.metrics.queued_at(unix_seconds(SystemTime::now()));
                    }
                }
                None => {
                    tracing::warn!("every source has stopped; serving the last known state");
                    sources_open = false;
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
            _ = drift_check.tick(), if syncer.ready() => {
                if syncer.drifted().await {
                    runner.request_repair();
                }
            }
        }
        if !syncer.ready() {
            continue;
        }
        if let Some(due) = runner.due(Instant::now()) {
            // SIGTERM is answered during a long sync too: the kernel work goes on in its thread
            // and applies atomically or not at all; the next kproxy adopts what it finds.
            let outcome = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                outcome = syncer.sync(due) => outcome,
            };
            match outcome {
                Outcome::Applied => runner.done(due, true, Instant::now()),
                Outcome::Retry => runner.retry(due, Instant::now()),
                Outcome::Resync => runner.done(due, false, Instant::now()),
            }
        }
    }
    tracing::info!("sync loop stopped; rules left in place");
}

/// How often the loop asks the backend whether someone else changed kproxy's rules. The
/// nftables backend (and IPVS mode's companion table) answers by reading the kernel's change
/// notifications, one `recv` when nothing happened; backends whose checks cost more pace
/// themselves.
pub const DRIFT_CHECK_PERIOD: Duration = Duration::from_millis(100);

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod conflict_tests;
#[cfg(test)]
mod isolation_tests;
#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod tests;
