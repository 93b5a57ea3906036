//! Conntrack reconciliation after each sync: the hook the sync loop calls. The ctnetlink
//! reconciler that deletes stale UDP/SCTP flows lands with the conntrack issue.
//!
//! Invariants: a reconciler never deletes a flow whose reply source is a current serving endpoint.

use crate::backends::Plans;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("listing conntrack entries: {0}")]
    Dump(String),
    #[error("deleting a conntrack entry: {0}")]
    Delete(String),
}

/// Called after every successful backend sync with the full set of plans.
pub trait Reconciler: Send {
    fn reconcile(&mut self, plans: &Plans) -> Result<usize, ConntrackError>;
}

/// Does nothing: the reconciler until the conntrack issue lands, and in tests.
pub struct Noop;

impl Reconciler for Noop {
    fn reconcile(&mut self, _plans: &Plans) -> Result<usize, ConntrackError> {
        Ok(0)
    }
}
