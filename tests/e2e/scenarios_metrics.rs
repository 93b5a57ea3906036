//! `/metrics` as upstream exports it, in every mode: the sync series per IP family
//! (`sum by (ip_family)` dashboards), each mode's own series and not the others' (upstream's
//! `RegisterMetrics(mode)`), `kubernetes_build_info` and `process_*`.
//!
//! Invariants: the e2e node serves both families, so both `ip_family` values must be there.

use crate::client::{Proto::*, at};
use crate::cluster::Cluster;
use crate::manifests::{WEB, web};
use crate::topology::{A, B, C, Client, HTTP};

pub fn metrics_carry_upstreams_names_per_mode_and_ip_family(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    c.until_metric_positive(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
    );
    let text = c.metrics_text();
    for family in ["IPv4", "IPv6"] {
        for series in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_network_programming_duration_seconds_count",
        ] {
            let sample = format!("{series}{{ip_family=\"{family}\"}}");
            assert!(text.contains(&sample), "no {sample} in:\n{text}");
        }
    }
    let has = |name: &str| text.lines().any(|l| l.starts_with(name));
    let (nft, ipt) = (
        has("kubeproxy_sync_proxy_rules_nftables_sync_failures_total"),
        has("kubeproxy_sync_proxy_rules_iptables_total"),
    );
    match c.mode.name {
        "nftables" => assert!(nft && !ipt, "nftables mode's series only:\n{text}"),
        "iptables" => assert!(
            ipt && !nft && has("kubeproxy_sync_proxy_rules_iptables_last"),
            "iptables mode's series only:\n{text}"
        ),
        _ => assert!(!nft && !ipt, "IPVS mode registers neither:\n{text}"),
    }
    assert!(has("kubernetes_build_info{"), "{text}");
    assert!(has("process_resident_memory_bytes"), "{text}");
}
