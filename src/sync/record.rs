//! Phases 4 and 6 of a sync: recording what it did (durations, timestamps, network
//! programming latency, no-local-endpoint gauges, health) and reconciling conntrack.
//!
//! Invariants: metrics are recorded once per sync, after the backend returned; conntrack runs
//! on a blocking thread and only when a UDP or SCTP port (or a full sync) asks for it.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::{Syncer, apply, family_index, unix_seconds};
use crate::model::{Protocol, ServicePortName};

impl Syncer {
    /// Phase 4: durations, timestamps, latency, no-local-endpoint gauges, health. One sync
    /// programs every family the node serves, so the duration and timestamps of each family's
    /// series are this sync's (`metrics` says why); latency and no-local counts are per family.
    pub(super) fn record_metrics(&mut self, full: bool, ok: bool, took: Duration) {
        let m = &self.metrics;
        m.observe_sync(full, took.as_secs_f64());
        if full {
            self.shared.full_syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            self.shared.partial_syncs.fetch_add(1, Ordering::Relaxed);
        }
        if !ok {
            m.sync_failures.inc();
            return;
        }
        let now = SystemTime::now();
        m.synced_at(unix_seconds(now));
        for (family, t) in self.trigger_times.drain(..) {
            // A slice of a family the node does not serve has no proxier upstream.
            if !m.families().contains(&family) {
                continue;
            }
            if let Ok(latency) = now.duration_since(t) {
                m.network_programming_duration
                    .with_label_values(&[family.as_str()])
                    .observe(latency.as_secs_f64());
            }
        }
        for family in m.families() {
            let i = family_index(*family);
            let internal = self.no_local.values().filter(|n| n[i].0).count();
            let external = self.no_local.values().filter(|n| n[i].1).count();
            m.set_no_local_endpoints(*family, internal, external);
        }
        self.shared.health.updated();
    }

    /// Phase 6: delete conntrack flows that point at endpoints no longer serving. Stale flows
    /// arise only where a UDP or SCTP port changed (an endpoint left, a Service appeared), or
    /// before kproxy's rules existed (the first, full sync), so a partial sync that touched only
    /// TCP ports skips the dump (which costs ~0.25 s with 100,000 UDP flows).
    pub(super) async fn reconcile_conntrack(
        &mut self,
        full: bool,
        changed: &BTreeSet<ServicePortName>,
    ) {
        if !full && changed.iter().all(|p| p.protocol == Protocol::Tcp) {
            return;
        }
        let (shared, conntrack) = (self.shared.clone(), self.conntrack.clone());
        apply::blocking(move || {
            let plans = shared.plans.read().expect("plans lock");
            let node = shared.node.read().expect("node lock");
            let result = conntrack
                .lock()
                .expect("conntrack lock")
                .reconcile(&plans, &node);
            if let Err(e) = result {
                tracing::warn!(error = %e, "conntrack reconcile failed");
            }
        })
        .await;
    }
}
