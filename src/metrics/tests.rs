//! The registry as upstream's: names, help texts, buckets, `ip_family` labels, the metrics each
//! proxy mode registers, `kubernetes_build_info` and `process_*`.

use std::collections::BTreeSet;

use super::*;

/// Sets a value in every metric, so that whatever is registered shows in the text.
fn touch_everything(m: &Metrics) {
    m.observe_sync(true, 0.002);
    m.observe_sync(false, 0.002);
    m.synced_at(1.0);
    m.queued_at(1.0);
    m.set_no_local_endpoints(IpFamily::V4, 1, 2);
    for family in IpFamily::ALL {
        let f = &[family.as_str()];
        m.network_programming_duration
            .with_label_values(f)
            .observe(1.0);
        for c in [
            &m.nftables_sync_failures,
            &m.nftables_cleanup_failures,
            &m.iptables_restore_failures,
            &m.iptables_partial_restore_failures,
        ] {
            c.with_label_values(f).inc();
        }
        for g in [&m.iptables_rules_total, &m.iptables_rules_last] {
            g.with_label_values(&["nat", family.as_str()]).set(3);
        }
    }
    m.healthz_total.with_label_values(&["200"]).inc();
    m.livez_total.with_label_values(&["200"]).inc();
}

/// The metric names in the text (the `# TYPE` lines).
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn upstream_names_help_texts_labels_and_buckets_are_exposed() {
    let m = Metrics::for_mode(ProxyMode::Iptables, &IpFamily::ALL);
    touch_everything(&m);
    let text = m.render();
    for line in [
        "# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds",
        "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"} 0",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv6\",le=\"16.384\"} 2",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 1",
        "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"300\"} 1",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"} 1",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"external\"} 2",
        "# HELP kubeproxy_sync_proxy_rules_iptables_last Number of iptables rules written by kube-proxy in last sync",
        "# TYPE kubeproxy_sync_proxy_rules_iptables_last gauge",
        "kubeproxy_sync_proxy_rules_iptables_last{ip_family=\"IPv6\",table=\"nat\"} 3",
        "kubeproxy_sync_proxy_rules_iptables_total{ip_family=\"IPv4\",table=\"nat\"} 3",
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip_family=\"IPv6\"} 1",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
        "kubeproxy_sync_proxy_rules_service_changes_pending 0",
        "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv6\"} 0",
        "kproxy_rejected_objects_total{reason=\"bad_ip\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn each_mode_registers_what_upstream_registers_for_it() {
    let common = [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "kubeproxy_proxy_healthz_total",
        "kubeproxy_proxy_livez_total",
        "kubernetes_build_info",
        "process_resident_memory_bytes",
    ];
    let full_partial = [
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    ];
    let iptables = [
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
        "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
        "kubeproxy_sync_proxy_rules_iptables_total",
        "kubeproxy_sync_proxy_rules_iptables_last",
    ];
    let nftables = [
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
    ];
    for mode in ProxyMode::ALL {
        let m = Metrics::for_mode(mode, &IpFamily::ALL);
        touch_everything(&m);
        let have = names(&m.render());
        let mut want: BTreeSet<&str> = common.into();
        match mode {
            ProxyMode::Iptables => want.extend(full_partial.iter().chain(&iptables)),
            ProxyMode::Nftables => want.extend(full_partial.iter().chain(&nftables)),
            ProxyMode::Ipvs => {
                want.insert("kubeproxy_sync_proxy_rules_iptables_restore_failures_total");
            }
        }
        let every = common
            .iter()
            .chain(&full_partial)
            .chain(&iptables)
            .chain(&nftables);
        for name in every {
            assert_eq!(
                have.contains(*name),
                want.contains(name),
                "{name} in {mode} mode: {have:#?}"
            );
        }
    }
}

#[test]
fn every_served_family_has_its_series_before_the_first_sync_and_no_other() {
    let dual = Metrics::new().render();
    let single = Metrics::for_mode(ProxyMode::Nftables, &[IpFamily::V4]).render();
    for family in ["IPv4", "IPv6"] {
        let sample = format!(
            "kubeproxy_sync_proxy_rules_duration_seconds_count{{ip_family=\"{family}\"}} 0"
        );
        assert!(dual.contains(&sample), "{sample} in\n{dual}");
        assert_eq!(single.contains(&sample), family == "IPv4", "{sample}");
    }
    let failures = "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv6\"} 0";
    assert!(dual.contains(failures), "{dual}");
    assert!(!single.contains(failures), "{single}");
}

#[test]
fn build_info_is_one_with_component_base_labels_and_kproxy_version() {
    let text = Metrics::new().render();
    let line = text
        .lines()
        .find(|l| l.starts_with("kubernetes_build_info{"))
        .unwrap_or_else(|| panic!("no kubernetes_build_info in\n{text}"));
    assert!(line.ends_with("} 1"), "{line}");
    for (name, value) in build_info::labels() {
        assert!(
            line.contains(&format!("{name}=\"{value}\"")),
            "{name} in {line}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        line.contains(&format!("git_version=\"v{version}\"")),
        "{line}"
    );
    assert!(line.contains("compiler=\"rustc\""), "{line}");
    assert!(line.contains("platform=\"linux/"), "{line}");
    let labels = line.matches("=\"").count();
    assert_eq!(labels, 9, "{line}");
}

#[test]
fn process_metrics_are_exposed_with_the_go_clients_types() {
    let text = Metrics::new().render();
    for line in [
        "# TYPE process_cpu_seconds_total counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_virtual_memory_bytes gauge",
        "# TYPE process_virtual_memory_max_bytes gauge",
        "# TYPE process_start_time_seconds gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE process_max_fds gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}");
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
