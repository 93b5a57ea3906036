//! Prometheus metrics under upstream kube-proxy's names (so dashboards keep working), plus
//! kproxy's own `kproxy_*` counters, rendered in the text exposition format.
//!
//! Invariants: one `Metrics` per process, created before any source or backend starts; names,
//! types and histogram buckets match upstream's pkg/proxy/metrics.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::validate::RejectReason;

pub struct Metrics {
    pub registry: Registry,
    pub sync_duration: Histogram,
    pub sync_full_duration: Histogram,
    pub sync_partial_duration: Histogram,
    pub last_sync_timestamp: Gauge,
    pub last_queued_timestamp: Gauge,
    pub network_programming_duration: Histogram,
    pub service_changes_pending: IntGauge,
    pub service_changes_total: IntCounter,
    pub endpoint_changes_pending: IntGauge,
    pub endpoint_changes_total: IntCounter,
    pub no_local_endpoints: GaugeVec,
    pub healthz_total: IntCounterVec,
    pub livez_total: IntCounterVec,
    pub sync_failures: IntCounter,
    pub nftables_sync_failures: IntCounter,
    pub nftables_cleanup_failures: IntCounter,
    pub iptables_restore_failures: IntCounter,
    pub iptables_partial_restore_failures: IntCounter,
    /// Per `table`: rules kproxy owns in iptables mode.
    pub iptables_rules_total: IntGaugeVec,
    /// Full resyncs forced because kproxy's rules were changed by someone else.
    pub drift_repairs: IntCounter,
    /// (service port, claim) pairs lost to an older Service that claims the same address, port
    /// and protocol, NodePort or healthCheckNodePort (`model::plan::claims`).
    pub service_port_conflicts: IntGauge,
    /// (service port, IP family) pairs the kernel refused, kept out of it (`sync::quarantine`).
    pub quarantined_service_ports: IntGauge,
    pub rejected_objects: IntCounterVec,
    /// Per `ip_family`: how long one conntrack reconciliation took, and flows it deleted.
    pub conntrack_reconcile_duration: HistogramVec,
    pub conntrack_deleted_entries: IntCounterVec,
}

/// Upstream's sync-duration buckets: 1 ms × 2^k, 15 buckets.
fn sync_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 15).expect("static bucket parameters")
}

/// Upstream's network-programming buckets: 0.25 s, 0.5 s, 1..59 s, 60..115 s by 5, 2..5 min by 30 s.
fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let sync_duration = hist(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_buckets(),
        );
        let sync_full_duration = hist(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            sync_buckets(),
        );
        let sync_partial_duration = hist(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            sync_buckets(),
        );
        let network_programming_duration = hist(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            programming_buckets(),
        );
        let gauge = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let last_sync_timestamp = gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
        );
        let last_queued_timestamp = gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
        );
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let iptables_rules_total = IntGaugeVec::new(
            Opts::new(
                "kubeproxy_sync_proxy_rules_iptables_total",
                "Total number of iptables rules owned by kube-proxy",
            ),
            &["table"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(iptables_rules_total.clone()))
            .expect("unique metric");
        let no_local_endpoints = GaugeVec::new(
            Opts::new(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
            ),
            &["traffic_policy"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(no_local_endpoints.clone()))
            .expect("unique metric");
        let rejected_objects = counter_vec(
            "kproxy_rejected_objects_total",
            "Objects skipped because the API server would have rejected them, by reason",
            "reason",
        );
        for reason in RejectReason::ALL {
            rejected_objects.with_label_values(&[reason.as_str()]);
        }
        let conntrack_reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
            )
            .buckets(sync_buckets()),
            &["ip_family"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(conntrack_reconcile_duration.clone()))
            .expect("unique metric");
        let conntrack_deleted_entries = counter_vec(
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            "ip_family",
        );
        for family in crate::model::IpFamily::ALL {
            conntrack_reconcile_duration.with_label_values(&[family.as_str()]);
            conntrack_deleted_entries.with_label_values(&[family.as_str()]);
        }
        Metrics {
            sync_duration,
            sync_full_duration,
            sync_partial_duration,
            last_sync_timestamp,
            last_queued_timestamp,
            network_programming_duration,
            service_changes_pending: int_gauge(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            ),
            service_changes_total: counter(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            ),
            endpoint_changes_pending: int_gauge(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            ),
            endpoint_changes_total: counter(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            ),
            no_local_endpoints,
            healthz_total: counter_vec(
                "kubeproxy_proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
                "code",
            ),
            livez_total: counter_vec(
                "kubeproxy_proxy_livez_total",
                "Cumulative proxy livez HTTP status",
                "code",
            ),
            sync_failures: counter(
                "kproxy_sync_failures_total",
                "Backend syncs that failed and were retried as full resyncs",
            ),
            nftables_sync_failures: counter(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "Cumulative proxy nftables sync failures",
            ),
            nftables_cleanup_failures: counter(
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                "Cumulative proxy nftables cleanup failures",
            ),
            iptables_restore_failures: counter(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                "Cumulative proxy iptables restore failures",
            ),
            iptables_partial_restore_failures: counter(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                "Cumulative proxy iptables partial restore failures",
            ),
            iptables_rules_total,
            drift_repairs: counter(
                "kproxy_rules_drift_repairs_total",
                "Full resyncs forced because kproxy's rules in the kernel were changed by someone else",
            ),
            quarantined_service_ports: int_gauge(
                "kproxy_quarantined_service_ports",
                "Service ports (per IP family) the kernel refused, kept out of it until they change",
            ),
            service_port_conflicts: int_gauge(
                "kproxy_service_port_conflicts",
                "Addresses, NodePorts and healthCheckNodePorts a service port claims but an older Service has",
            ),
            rejected_objects,
            conntrack_reconcile_duration,
            conntrack_deleted_entries,
            registry,
        }
    }

    /// Counts one object skipped by validation.
    pub fn reject(&self, reason: RejectReason) {
        self.rejected_objects
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names_and_buckets_are_exposed() {
        let m = Metrics::new();
        m.sync_duration.observe(0.002);
        m.network_programming_duration.observe(1.0);
        m.no_local_endpoints
            .with_label_values(&["internal"])
            .set(0.0);
        let text = m.render();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\"}",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"16.384\"}",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"300\"}",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "kproxy_rejected_objects_total{reason=\"bad_ip\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn programming_buckets_match_upstream_count() {
        // 2 + 59 + 12 + 7 buckets, strictly increasing, ending at five minutes.
        let b = programming_buckets();
        assert_eq!(b.len(), 80);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*b.last().unwrap(), 300.0);
    }
}
