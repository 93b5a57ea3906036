//! Conntrack reconciliation after each sync (the sync loop's last phase): UDP has no teardown,
//! so after an endpoint leaves, conntrack keeps sending an existing flow (a DNS client's fixed
//! source port) to it. `CtReconciler` lists the UDP and SCTP flows over ctnetlink and deletes
//! those `stale::Index` calls stale, as upstream's reconciler does (k/k pkg/proxy/conntrack).
//!
//! Invariants: a reconciler never deletes a flow whose reply source is a current serving
//! endpoint of the service port it was sent to, so a kproxy restart (whose first sync
//! reconciles against the full model) leaves every correct flow in place; nothing is ever
//! flushed blindly; TCP is never touched. Errors are returned to the sync loop, which logs them;
//! the next sync tries again on a fresh socket.

pub mod ctnetlink;
pub mod stale;
pub mod tuning;

use std::sync::Arc;
use std::time::Instant;

use crate::backends::Plans;
use crate::metrics::Metrics;
use crate::model::IpFamily;
use crate::node::NodeFacts;
use ctnetlink::{Ctnetlink, CtnetlinkError};
use stale::Index;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening ctnetlink: {0}")]
    Open(CtnetlinkError),
    #[error("listing conntrack entries: {0}")]
    Dump(CtnetlinkError),
    #[error("deleting a conntrack entry: {0}")]
    Delete(CtnetlinkError),
}

/// Called after every successful backend sync with the full set of plans and the node's facts.
pub trait Reconciler: Send {
    /// Deletes stale flows; returns how many were deleted.
    fn reconcile(&mut self, plans: &Plans, node: &NodeFacts) -> Result<usize, ConntrackError>;
}

/// Does nothing: for tests and for `--dry-run`.
pub struct Noop;

impl Reconciler for Noop {
    fn reconcile(&mut self, _plans: &Plans, _node: &NodeFacts) -> Result<usize, ConntrackError> {
        Ok(0)
    }
}

/// The ctnetlink reconciler, in the process's network namespace. Records
/// kubeproxy_conntrack_reconciler_sync_duration_seconds and
/// kubeproxy_conntrack_reconciler_deleted_entries_total per IP family.
pub struct CtReconciler {
    client: Option<Ctnetlink>,
    metrics: Arc<Metrics>,
}

impl CtReconciler {
    pub fn new(metrics: Arc<Metrics>) -> CtReconciler {
        CtReconciler {
            client: None,
            metrics,
        }
    }

    fn family(&mut self, family: IpFamily, index: &Index) -> Result<usize, ConntrackError> {
        let client = match &mut self.client {
            Some(c) => c,
            None => self
                .client
                .insert(Ctnetlink::open().map_err(ConntrackError::Open)?),
        };
        let mut deleted = 0;
        for protocol in index.protocols() {
            let flows = client
                .dump(family, protocol)
                .map_err(ConntrackError::Dump)?;
            for flow in flows.iter().filter(|f| index.is_stale(f)) {
                tracing::debug!(?flow, "deleting a stale conntrack flow");
                if client
                    .delete(family, flow)
                    .map_err(ConntrackError::Delete)?
                {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}

impl Reconciler for CtReconciler {
    fn reconcile(&mut self, plans: &Plans, node: &NodeFacts) -> Result<usize, ConntrackError> {
        let index = Index::new(plans, node);
        let mut total = 0;
        for family in IpFamily::ALL {
            let started = Instant::now();
            let result = if index.is_empty() {
                Ok(0)
            } else {
                self.family(family, &index)
            };
            let label = family.as_str();
            self.metrics
                .conntrack_reconcile_duration
                .with_label_values(&[label])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(n) => {
                    self.metrics
                        .conntrack_deleted_entries
                        .with_label_values(&[label])
                        .inc_by(n as u64);
                    total += n;
                }
                Err(e) => {
                    // A fresh socket next time: this one may be out of step.
                    self.client = None;
                    return Err(e);
                }
            }
        }
        Ok(total)
    }
}
