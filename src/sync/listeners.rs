//! The sync loop's listening phases after a successful sync: the healthCheckNodePort servers
//! and nftables mode's localhost NodePort relay, both following the plans just applied.
//!
//! Invariants: they read the plans under the lock and never hold it across an await; a port
//! one Service gives up is released before another Service's server takes it.

use std::collections::BTreeSet;

use super::Syncer;
use crate::model::plan::local_ready;
use crate::model::{NamespacedName, ServicePortName};

impl Syncer {
    /// Phase 5: healthCheckNodePort servers of the Services whose ports changed.
    pub(super) async fn update_health_checks(
        &mut self,
        full: bool,
        changed: &BTreeSet<ServicePortName>,
    ) {
        let wanted: Vec<(NamespacedName, Option<(u16, usize)>)> = {
            let plans = self.shared.plans.read().expect("plans lock");
            let services: BTreeSet<&NamespacedName> = if full {
                plans.keys().map(|n| &n.service).collect()
            } else {
                changed.iter().map(|n| &n.service).collect()
            };
            let model = self.tracker.model();
            services
                .into_iter()
                .map(|svc| {
                    let hc = model.service(svc).and_then(|s| {
                        let port = s.ports.iter().find_map(|p| {
                            let lost = plans
                                .get(&p.name)
                                .is_some_and(|p| p.plan.lost_health_check());
                            p.health_check_node_port
                                .filter(|_| p.external_policy_local() && !lost)
                        })?;
                        let endpoints = s
                            .ports
                            .iter()
                            .filter_map(|p| plans.get(&p.name))
                            .flat_map(|p| p.endpoints.iter());
                        Some((port, local_ready(endpoints, &self.base_node.name).len()))
                    });
                    (svc.clone(), hc)
                })
                .collect()
        };
        if full {
            self.health_checks
                .retain_only(wanted.iter().filter(|w| w.1.is_some()).map(|w| &w.0))
                .await;
        }
        // Stops first: a port given up by one Service may be taken by another in this sync.
        let (stops, starts): (Vec<_>, Vec<_>) = wanted.into_iter().partition(|w| w.1.is_none());
        for (svc, hc) in stops.into_iter().chain(starts) {
            self.health_checks.set(&svc, hc).await;
        }
    }

    /// Phase 5b: the localhost NodePort relay, when it runs, follows the changed ports (all
    /// on a full sync).
    pub(super) fn update_relay(&mut self, full: bool, changed: &BTreeSet<ServicePortName>) {
        if let Some(relay) = &mut self.relay {
            let plans = self.shared.plans.read().expect("plans lock");
            relay.update(&plans, (!full).then_some(changed));
        }
    }
}
