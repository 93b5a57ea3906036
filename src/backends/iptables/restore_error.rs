//! Why an iptables tool kproxy runs failed (`iptables-restore`, `iptables-save`, the drift
//! probe, the cleanup), named after the step.
//!
//! Invariants: what the tool printed is kept whole, for the log and for `backends::error` to
//! classify.

use super::probe;
use crate::backends::leftovers::LeftoverError;
use crate::backends::process::RunError;

/// Why an iptables tool failed, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("running {program}: {source}")]
    Run { program: String, source: RunError },
    /// `iptables-restore` refused its input; `message` is what it printed.
    #[error("{program}: {message}")]
    Refused { program: String, message: String },
    /// `iptables-save` failed.
    #[error("{program}: {message}")]
    Save { program: String, message: String },
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
    #[error(transparent)]
    Monitor(#[from] crate::nftables::monitor::MonitorError),
    #[error(transparent)]
    Cleanup(#[from] LeftoverError),
}
