//! Upstream's ProxyHealthServer state: the oldest update queued and not yet applied, and the
//! last successful sync; `/healthz` is unhealthy when an update waited past the timeout.
//!
//! Invariants: the oldest queued update counts (a later one does not reset it); every method
//! takes the lock for a few instructions only. The Node's eligibility is kept apart: it makes
//! `/healthz` fail, never `/livez` or a healthCheckNodePort's `serviceProxyHealthy`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Upstream's ProxyHealthServer state: the oldest queued-but-unapplied update and the last
/// successful sync.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    inner: Mutex<HealthInner>,
    /// False while the Node is draining (KEP-3836); true until a Node says otherwise.
    node_eligible: AtomicBool,
}

#[derive(Debug, Default)]
struct HealthInner {
    oldest_queued: Option<Instant>,
    last_updated: Option<SystemTime>,
}

impl Default for ProxyHealth {
    fn default() -> Self {
        ProxyHealth::new(Duration::from_secs(60))
    }
}

impl ProxyHealth {
    /// `timeout` is 2 × sync-period.
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            timeout,
            inner: Mutex::new(HealthInner::default()),
            node_eligible: AtomicBool::new(true),
        }
    }

    /// An update was queued (kept if one is already waiting: the oldest counts).
    pub fn queued(&self) {
        let mut i = self.inner.lock().expect("health lock");
        i.oldest_queued.get_or_insert_with(Instant::now);
    }

    /// Every queued update has been applied.
    pub fn updated(&self) {
        let mut i = self.inner.lock().expect("health lock");
        i.oldest_queued = None;
        i.last_updated = Some(SystemTime::now());
    }

    /// The Node as received (`None`: gone), `known` whether one was seen before. A Node that
    /// goes away was deleted (upstream reads its deletionTimestamp): not eligible; none seen
    /// yet (starting, or --manifests without one) is. A change is logged once.
    pub fn node_seen(&self, node: Option<&crate::model::NodeInfo>, known: bool) {
        let eligible = match node {
            Some(n) => !n.draining,
            None => !known,
        };
        if self.node_eligible.swap(eligible, Ordering::Relaxed) != eligible {
            let why = match eligible {
                true => "eligible again: /healthz answers 200",
                false => {
                    "draining (deleted, or tainted ToBeDeletedByClusterAutoscaler): /healthz answers 503"
                }
            };
            tracing::info!(eligible, "node {why}");
        }
    }

    /// Whether the Node may take traffic (not being deleted, not tainted for deletion): what
    /// `/healthz` adds to `status`, and `/livez` and healthCheckNodePorts do not.
    pub fn node_eligible(&self) -> bool {
        self.node_eligible.load(Ordering::Relaxed)
    }

    /// The proxy's own health (the node aside), and the last successful sync.
    pub fn status(&self) -> (bool, Option<SystemTime>) {
        let i = self.inner.lock().expect("health lock");
        let healthy = i.oldest_queued.is_none_or(|q| q.elapsed() < self.timeout);
        (healthy, i.last_updated)
    }
}
