//! Prometheus metrics under upstream kube-proxy's names (so dashboards keep working), plus
//! kproxy's own `kproxy_*` counters, rendered in the text exposition format.
//!
//! Registration follows upstream's `metrics.RegisterMetrics(mode)`: the metrics every mode
//! has, then the running mode's own (`iptables_*` only in iptables mode, `nftables_*` only in
//! nftables mode, full/partial sync durations in the two modes that sync partially upstream).
//! Every metric object exists in every mode, so callers never ask which mode runs: what is not
//! registered is simply not exposed. Beside them, as component-base exposes them,
//! `kubernetes_build_info` (`build_info.rs`) and `process_*` (`process.rs`).
//!
//! IP families: upstream runs one proxier per family, each observing its own series with an
//! `ip_family` label ("IPv4", "IPv6"; k/k#129173). kproxy syncs both families in one sync, so
//! the per-sync series (durations, timestamps) are recorded once for every family the node
//! serves (`families`), each with that sync's values; what is known per family is recorded per
//! family: network-programming latency (the EndpointSlice's address type), no-local-endpoint
//! counts (the family's plan), iptables rule counts, and iptables-restore failures (the
//! family whose restore failed; nftables applies both families in one transaction, so its
//! failures count for both). Series of every served family exist from the start, so
//! `sum by (ip_family)` sees each one before the first sync. IPVS mode's
//! `…_iptables_restore_failures_total` counts failures of its companion nftables table, the
//! part upstream programs with iptables-restore (`sync::apply`).
//!
//! Invariants: one `Metrics` per process, created before any source or backend starts; names,
//! types, help texts, labels and histogram buckets match upstream's pkg/proxy/metrics.

mod build_info;
pub use build_info::version;
mod process;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backends::ProxyMode;
use crate::model::IpFamily;
use crate::model::validate::RejectReason;

pub struct Metrics {
    pub registry: Registry,
    mode: ProxyMode,
    families: Vec<IpFamily>,
    /// Per `ip_family`: every sync, full syncs, partial syncs.
    pub sync_duration: HistogramVec,
    pub sync_full_duration: HistogramVec,
    pub sync_partial_duration: HistogramVec,
    /// Per `ip_family`, Unix seconds.
    pub last_sync_timestamp: GaugeVec,
    pub last_queued_timestamp: GaugeVec,
    /// Per `ip_family` (the EndpointSlice's address type).
    pub network_programming_duration: HistogramVec,
    pub service_changes_pending: IntGauge,
    pub service_changes_total: IntCounter,
    pub endpoint_changes_pending: IntGauge,
    pub endpoint_changes_total: IntCounter,
    /// Per `traffic_policy` ("internal", "external") and `ip_family`.
    pub no_local_endpoints: GaugeVec,
    pub healthz_total: IntCounterVec,
    pub livez_total: IntCounterVec,
    pub sync_failures: IntCounter,
    /// Per `ip_family`.
    pub nftables_sync_failures: IntCounterVec,
    pub nftables_cleanup_failures: IntCounterVec,
    pub iptables_restore_failures: IntCounterVec,
    pub iptables_partial_restore_failures: IntCounterVec,
    /// Per `table` and `ip_family`: rules kproxy owns in iptables mode, and rules the last
    /// sync wrote.
    pub iptables_rules_total: IntGaugeVec,
    pub iptables_rules_last: IntGaugeVec,
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

const IP_FAMILY: &str = "ip_family";

fn histogram(name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

fn int_gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

impl Metrics {
    /// kproxy's default mode (nftables) on a dual-stack node: what tests and benches use.
    pub fn new() -> Metrics {
        Metrics::for_mode(ProxyMode::Nftables, &IpFamily::ALL)
    }

    /// Every metric, with those upstream's `RegisterMetrics(mode)` registers for `mode`
    /// exposed, and a series of each `ip_family` metric for every one of `families`.
    pub fn for_mode(mode: ProxyMode, families: &[IpFamily]) -> Metrics {
        let f = &[IP_FAMILY];
        let m = Metrics {
            registry: Registry::new(),
            mode,
            families: families.to_vec(),
            sync_duration: histogram(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                sync_buckets(),
                f,
            ),
            sync_full_duration: histogram(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                sync_buckets(),
                f,
            ),
            sync_partial_duration: histogram(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
                sync_buckets(),
                f,
            ),
            last_sync_timestamp: gauge(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                f,
            ),
            last_queued_timestamp: gauge(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                f,
            ),
            network_programming_duration: histogram(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                programming_buckets(),
                f,
            ),
            service_changes_pending: IntGauge::new(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            )
            .expect("valid gauge"),
            service_changes_total: IntCounter::new(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            )
            .expect("valid counter"),
            endpoint_changes_pending: IntGauge::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            )
            .expect("valid gauge"),
            endpoint_changes_total: IntCounter::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            )
            .expect("valid counter"),
            no_local_endpoints: gauge(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                &["traffic_policy", IP_FAMILY],
            ),
            healthz_total: counter(
                "kubeproxy_proxy_healthz_total",
                "Cumulative proxy healthz HTTP status",
                &["code"],
            ),
            livez_total: counter(
                "kubeproxy_proxy_livez_total",
                "Cumulative proxy livez HTTP status",
                &["code"],
            ),
            sync_failures: IntCounter::new(
                "kproxy_sync_failures_total",
                "Backend syncs that failed and were retried as full resyncs",
            )
            .expect("valid counter"),
            nftables_sync_failures: counter(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "Cumulative proxy nftables sync failures",
                f,
            ),
            nftables_cleanup_failures: counter(
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                "Cumulative proxy nftables cleanup failures",
                f,
            ),
            iptables_restore_failures: counter(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                "Cumulative proxy iptables restore failures",
                f,
            ),
            iptables_partial_restore_failures: counter(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                "Cumulative proxy iptables partial restore failures",
                f,
            ),
            iptables_rules_total: int_gauge(
                "kubeproxy_sync_proxy_rules_iptables_total",
                "Total number of iptables rules owned by kube-proxy",
                &["table", IP_FAMILY],
            ),
            iptables_rules_last: int_gauge(
                "kubeproxy_sync_proxy_rules_iptables_last",
                "Number of iptables rules written by kube-proxy in last sync",
                &["table", IP_FAMILY],
            ),
            drift_repairs: IntCounter::new(
                "kproxy_rules_drift_repairs_total",
                "Full resyncs forced because kproxy's rules in the kernel were changed by someone else",
            )
            .expect("valid counter"),
            quarantined_service_ports: IntGauge::new(
                "kproxy_quarantined_service_ports",
                "Service ports (per IP family) the kernel refused, kept out of it until they change",
            )
            .expect("valid gauge"),
            service_port_conflicts: IntGauge::new(
                "kproxy_service_port_conflicts",
                "Addresses, NodePorts and healthCheckNodePorts a service port claims but an older Service has",
            )
            .expect("valid gauge"),
            rejected_objects: counter(
                "kproxy_rejected_objects_total",
                "Objects skipped because the API server would have rejected them, by reason",
                &["reason"],
            ),
            conntrack_reconcile_duration: histogram(
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
                sync_buckets(),
                f,
            ),
            conntrack_deleted_entries: counter(
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                f,
            ),
        };
        m.register();
        m.create_series();
        m
    }

    /// Upstream's `RegisterMetrics(mode)`, plus kproxy's own metrics, `kubernetes_build_info`
    /// and `process_*`.
    fn register(&self) {
        let everywhere: Vec<Box<dyn Collector>> = vec![
            // Upstream's core metrics for all backends.
            Box::new(self.sync_duration.clone()),
            Box::new(self.last_queued_timestamp.clone()),
            Box::new(self.last_sync_timestamp.clone()),
            Box::new(self.endpoint_changes_pending.clone()),
            Box::new(self.endpoint_changes_total.clone()),
            Box::new(self.service_changes_pending.clone()),
            Box::new(self.service_changes_total.clone()),
            Box::new(self.healthz_total.clone()),
            Box::new(self.livez_total.clone()),
            Box::new(self.network_programming_duration.clone()),
            Box::new(self.no_local_endpoints.clone()),
            // The conntrack reconciler runs in every Linux mode.
            Box::new(self.conntrack_reconcile_duration.clone()),
            Box::new(self.conntrack_deleted_entries.clone()),
            // component-base's.
            Box::new(build_info::build_info()),
            Box::new(process::ProcessCollector::new()),
            // kproxy's own.
            Box::new(self.sync_failures.clone()),
            Box::new(self.drift_repairs.clone()),
            Box::new(self.quarantined_service_ports.clone()),
            Box::new(self.service_port_conflicts.clone()),
            Box::new(self.rejected_objects.clone()),
        ];
        let own: Vec<Box<dyn Collector>> = match self.mode {
            ProxyMode::Iptables => vec![
                Box::new(self.sync_full_duration.clone()),
                Box::new(self.sync_partial_duration.clone()),
                Box::new(self.iptables_restore_failures.clone()),
                Box::new(self.iptables_partial_restore_failures.clone()),
                Box::new(self.iptables_rules_total.clone()),
                Box::new(self.iptables_rules_last.clone()),
            ],
            ProxyMode::Ipvs => vec![Box::new(self.iptables_restore_failures.clone())],
            ProxyMode::Nftables => vec![
                Box::new(self.sync_full_duration.clone()),
                Box::new(self.sync_partial_duration.clone()),
                Box::new(self.nftables_sync_failures.clone()),
                Box::new(self.nftables_cleanup_failures.clone()),
            ],
        };
        for c in everywhere.into_iter().chain(own) {
            self.registry.register(c).expect("unique metric");
        }
    }

    /// The series that exist before anything happens: every reject reason, and every
    /// `ip_family` metric for each served family.
    fn create_series(&self) {
        for reason in RejectReason::ALL {
            self.rejected_objects.with_label_values(&[reason.as_str()]);
        }
        for family in IpFamily::ALL {
            let f = &[family.as_str()];
            // The reconciler looks at both families whatever the node serves.
            self.conntrack_reconcile_duration.with_label_values(f);
            self.conntrack_deleted_entries.with_label_values(f);
        }
        for family in &self.families {
            let f = &[family.as_str()];
            for h in [
                &self.sync_duration,
                &self.sync_full_duration,
                &self.sync_partial_duration,
                &self.network_programming_duration,
            ] {
                h.with_label_values(f);
            }
            for c in [
                &self.nftables_sync_failures,
                &self.nftables_cleanup_failures,
                &self.iptables_restore_failures,
                &self.iptables_partial_restore_failures,
            ] {
                c.with_label_values(f);
            }
            for policy in ["internal", "external"] {
                self.no_local_endpoints
                    .with_label_values(&[policy, family.as_str()]);
            }
        }
    }

    /// The proxy mode whose metrics are registered.
    pub fn mode(&self) -> ProxyMode {
        self.mode
    }

    /// The IP families this node serves: each gets its own series of the per-sync metrics.
    pub fn families(&self) -> &[IpFamily] {
        &self.families
    }

    /// One sync (of every served family) took `seconds`: observed for each family, as
    /// upstream's proxier of each family observes its own sync.
    pub fn observe_sync(&self, full: bool, seconds: f64) {
        let kind = if full {
            &self.sync_full_duration
        } else {
            &self.sync_partial_duration
        };
        for family in &self.families {
            let f = &[family.as_str()];
            self.sync_duration.with_label_values(f).observe(seconds);
            kind.with_label_values(f).observe(seconds);
        }
    }

    /// Every served family was synced successfully at `unix_seconds`.
    pub fn synced_at(&self, unix_seconds: f64) {
        for family in &self.families {
            self.last_sync_timestamp
                .with_label_values(&[family.as_str()])
                .set(unix_seconds);
        }
    }

    /// A sync of every served family was queued at `unix_seconds`.
    pub fn queued_at(&self, unix_seconds: f64) {
        for family in &self.families {
            self.last_queued_timestamp
                .with_label_values(&[family.as_str()])
                .set(unix_seconds);
        }
    }

    /// Service ports whose plan in `family` drops internal (external) traffic: Local policy and
    /// no local endpoint, while the family has endpoints elsewhere.
    pub fn set_no_local_endpoints(&self, family: IpFamily, internal: usize, external: usize) {
        for (policy, n) in [("internal", internal), ("external", external)] {
            self.no_local_endpoints
                .with_label_values(&[policy, family.as_str()])
                .set(n as f64);
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
mod tests;
