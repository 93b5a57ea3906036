//! Tests of what the sync loop records in upstream's metrics, per `ip_family`: one sync gives
//! every served family its series, latency and no-local counts follow each family's own
//! objects, failures go to the family that failed.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::loop_tests::{Harness, nn, service, service_with, spn, start_metrics};
use crate::backends::fake::Call;
use crate::backends::{ProxyMode, TableRules};
use crate::metrics::Metrics;
use crate::model::*;
use crate::watch::Change;

const BOTH: [&str; 2] = ["IPv4", "IPv6"];

fn sync_count(h: &Harness, family: &str) -> (u64, u64, u64) {
    let m = &h.metrics;
    let count = |v: &prometheus::HistogramVec| v.with_label_values(&[family]).get_sample_count();
    (
        count(&m.sync_duration),
        count(&m.sync_full_duration),
        count(&m.sync_partial_duration),
    )
}

/// A slice of `family` for "web" with one ready endpoint on `node`, last changed at `trigger`.
fn slice(family: IpFamily, ip: &str, node: &str, trigger: Option<SystemTime>) -> Slice {
    Slice {
        service: nn("web"),
        family,
        ports: vec![SlicePort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: vec![SliceEndpoint {
            ip: ip.parse().unwrap(),
            ready: true,
            serving: true,
            terminating: false,
            place: types::Place::intern(types::Place {
                node_name: Some(node.into()),
                zone: None,
                zone_hints: BTreeSet::new(),
                node_hints: BTreeSet::new(),
            }),
        }],
        trigger_time: trigger,
    }
}

#[tokio::test(start_paused = true)]
async fn a_dual_stack_sync_gives_each_family_its_series_and_no_local_counts_per_family() {
    let h = start_metrics(Duration::ZERO, Metrics::new());
    let mut sp = ServicePort::cluster_ip(spn("web"), "10.96.0.10".parse().unwrap(), 80);
    sp.cluster_ips.push("fd00::10".parse().unwrap());
    sp.internal_traffic_policy = TrafficPolicy::Local;
    h.tx.send(service_with("web", sp)).unwrap();
    // An IPv4 endpoint on another node: IPv4 drops (Local, none here); IPv6 has none at all.
    let v4 = slice(IpFamily::V4, "10.244.1.5", "node2", None);
    h.tx.send(Change::Slice(nn("web-v4"), Some(v4.into())))
        .unwrap();
    h.listed();
    h.settle().await;
    assert_eq!(h.fake.calls(), vec![Call::Full { ports: 1 }]);
    for family in BOTH {
        assert_eq!(sync_count(&h, family), (1, 1, 0), "{family}");
    }
    let m = &h.metrics;
    let ts = |f: &str| m.last_sync_timestamp.with_label_values(&[f]).get();
    assert!(
        ts("IPv4") > 0.0 && ts("IPv4") == ts("IPv6"),
        "one sync, both families"
    );
    let queued = |f: &str| m.last_queued_timestamp.with_label_values(&[f]).get();
    assert!(queued("IPv4") > 0.0 && queued("IPv6") > 0.0);
    let no_local =
        |policy: &str, f: &str| m.no_local_endpoints.with_label_values(&[policy, f]).get();
    assert_eq!(no_local("internal", "IPv4"), 1.0);
    assert_eq!(
        no_local("internal", "IPv6"),
        0.0,
        "IPv6 rejects: no endpoint at all"
    );
    assert_eq!(no_local("external", "IPv4"), 0.0);

    h.tx.send(service("db", 5432)).unwrap();
    h.settle().await;
    for family in BOTH {
        assert_eq!(sync_count(&h, family), (2, 1, 1), "{family}");
    }
    let text = m.render();
    for sample in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 2",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"} 1",
    ] {
        assert!(text.contains(sample), "no {sample} in\n{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_single_stack_node_has_no_ipv6_sync_series() {
    let h = start_metrics(
        Duration::ZERO,
        Metrics::for_mode(ProxyMode::Nftables, &[IpFamily::V4]),
    );
    h.tx.send(service("web", 80)).unwrap();
    let late = slice(IpFamily::V6, "fd00::5", "node1", Some(SystemTime::now()));
    h.tx.send(Change::Slice(nn("web-v6"), Some(late.into())))
        .unwrap();
    h.listed();
    h.settle().await;
    assert_eq!(sync_count(&h, "IPv4"), (1, 1, 0));
    let text = h.metrics.render();
    let ipv6: Vec<&str> = (text.lines())
        .filter(|l| l.contains("IPv6") && !l.starts_with("kubeproxy_conntrack_"))
        .collect();
    assert!(ipv6.is_empty(), "{ipv6:#?}");
}

#[tokio::test(start_paused = true)]
async fn network_programming_latency_counts_trigger_times_after_start_in_the_slice_family() {
    let h = start_metrics(Duration::ZERO, Metrics::new());
    let before_start = SystemTime::now() - Duration::from_secs(3600);
    let count = |f: &str| {
        (h.metrics.network_programming_duration)
            .with_label_values(&[f])
            .get_sample_count()
    };
    h.tx.send(service("web", 80)).unwrap();
    let old = slice(IpFamily::V4, "10.244.1.5", "node1", Some(before_start));
    h.tx.send(Change::Slice(nn("old"), Some(old.into())))
        .unwrap();
    h.listed();
    h.settle().await;
    assert_eq!((count("IPv4"), count("IPv6")), (0, 0));
    let new = slice(IpFamily::V6, "fd00::5", "node1", Some(SystemTime::now()));
    h.tx.send(Change::Slice(nn("new"), Some(new.into())))
        .unwrap();
    h.settle().await;
    assert_eq!(h.fake.calls().len(), 2, "{:?}", h.fake.calls());
    assert_eq!((count("IPv4"), count("IPv6")), (0, 1));
    assert_eq!(h.metrics.endpoint_changes_total.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn iptables_restore_failures_go_to_the_failing_family_and_partial_ones_count_twice() {
    let h = start_metrics(
        Duration::ZERO,
        Metrics::for_mode(ProxyMode::Iptables, &IpFamily::ALL),
    );
    let rules = |family, table, total, last_sync| TableRules {
        family,
        table,
        total,
        last_sync,
    };
    h.fake.recorded.lock().unwrap().rules = vec![
        rules(IpFamily::V4, "nat", 12, 3),
        rules(IpFamily::V4, "filter", 5, 0),
        rules(IpFamily::V6, "nat", 7, 7),
    ];
    h.tx.send(service("web", 80)).unwrap();
    h.listed();
    h.settle().await;
    {
        let mut r = h.fake.recorded.lock().unwrap();
        r.fail_next = 2;
        r.failed_family = Some(IpFamily::V6);
    }
    h.tx.send(service("web", 81)).unwrap();
    h.settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    h.settle().await;
    tokio::time::advance(Duration::from_secs(2)).await;
    h.settle().await;
    let calls = h.fake.calls();
    assert!(
        matches!(calls[1], Call::Partial { .. }) && matches!(calls[2], Call::Full { .. }),
        "{calls:?}"
    );
    let m = &h.metrics;
    let get = |c: &prometheus::IntCounterVec, f: &str| c.with_label_values(&[f]).get();
    assert_eq!(get(&m.iptables_restore_failures, "IPv6"), 2, "{calls:?}");
    assert_eq!(get(&m.iptables_partial_restore_failures, "IPv6"), 1);
    assert_eq!(get(&m.iptables_restore_failures, "IPv4"), 0);
    let text = m.render();
    for sample in [
        "kubeproxy_sync_proxy_rules_iptables_total{ip_family=\"IPv4\",table=\"nat\"} 12",
        "kubeproxy_sync_proxy_rules_iptables_last{ip_family=\"IPv4\",table=\"nat\"} 3",
        "kubeproxy_sync_proxy_rules_iptables_last{ip_family=\"IPv6\",table=\"nat\"} 7",
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv6\"} 2",
    ] {
        assert!(text.contains(sample), "no {sample} in\n{text}");
    }
    assert!(!text.contains("nftables"), "{text}");
}
