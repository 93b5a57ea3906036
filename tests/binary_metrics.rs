//! `/metrics` of the real binary as upstream kube-proxy exports it, in nftables and iptables
//! mode: the sync series of every IP family the node serves under `ip_family` (so dashboards
//! that `sum by (ip_family)` work), only the running mode's own metrics (upstream's
//! `RegisterMetrics(mode)`), `kubeproxy_sync_proxy_rules_iptables_last`,
//! `kubernetes_build_info` and `process_*`. Root only, inside throwaway network namespaces, on
//! the bundled example manifests (which hold a dual-stack Service).

mod support;

use std::time::{Duration, SystemTime};

use support::Kproxy;
use support::netns::{self, Netns};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");

/// The families kproxy serves here: IPv4, and IPv6 unless the kernel has it off.
fn families() -> Vec<&'static str> {
    let mut f = vec!["IPv4"];
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        f.push("IPv6");
    }
    f
}

/// The value of `sample`, or what is missing.
fn value(text: &str, sample: &str) -> Result<f64, String> {
    support::metric(text, sample).ok_or_else(|| format!("no {sample}"))
}

/// Everything but the mode's own metrics, once every served family has synced.
fn check_common(text: &str) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for family in families() {
        let f = format!("{{ip_family=\"{family}\"}}");
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
        ] {
            let n = value(text, &format!("{name}{f}"))?;
            (n >= 1.0)
                .then_some(())
                .ok_or_else(|| format!("{name}{f} = {n}"))?;
        }
        for name in [
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        ] {
            let t = value(text, &format!("{name}{f}"))?;
            (t > now - 600.0 && t <= now + 1.0)
                .then_some(())
                .ok_or_else(|| format!("{name}{f} = {t}, now {now}"))?;
        }
        value(
            text,
            &format!("kubeproxy_sync_partial_proxy_rules_duration_seconds_count{f}"),
        )?;
        value(
            text,
            &format!("kubeproxy_network_programming_duration_seconds_count{f}"),
        )?;
        value(
            text,
            &format!(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{ip_family=\"{family}\",traffic_policy=\"internal\"}}"
            ),
        )?;
    }
    let build = text
        .lines()
        .find(|l| l.starts_with("kubernetes_build_info{"))
        .ok_or("no kubernetes_build_info")?;
    let version = format!("git_version=\"v{}\"", env!("CARGO_PKG_VERSION"));
    (build.ends_with("} 1") && build.contains(&version) && build.contains("compiler=\"rustc\""))
        .then_some(())
        .ok_or_else(|| format!("build info: {build}"))?;
    let rss = value(text, "process_resident_memory_bytes")?;
    let start = value(text, "process_start_time_seconds")?;
    let fds = value(text, "process_open_fds")?;
    (rss > 1e6 && start > now - 600.0 && start <= now + 1.0 && fds >= 3.0)
        .then_some(())
        .ok_or_else(|| format!("process: rss {rss}, start {start} (now {now}), fds {fds}"))?;
    value(text, "process_cpu_seconds_total")?;
    value(text, "process_max_fds")?;
    value(text, "process_virtual_memory_bytes")?;
    Ok(())
}

/// The metric names of the text.
fn names(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exports_upstreams_metrics_per_ip_family_and_per_mode_with_build_and_process_info() {
    if !netns::can_run("binary_exports_upstreams_metrics_per_ip_family") {
        return;
    }
    for mode in ["nftables", "iptables"] {
        let ns = Netns::new("metrics");
        let mut kproxy = Kproxy::spawn(&ns, &["--manifests", EXAMPLE, "--proxy-mode", mode]);
        let (_, took) = kproxy
            .until(
                &format!("{mode}: every family synced"),
                Duration::from_secs(30),
                |_, m| check_common(m),
            )
            .await;
        println!("{mode}: upstream's metrics complete {took:?} after start");
        let text = kproxy.metrics_text().await.unwrap();
        let names = names(&text);
        let (own, other) = match mode {
            "nftables" => ("_nftables_", "_iptables_"),
            _ => ("_iptables_", "_nftables_"),
        };
        assert!(
            !names.iter().any(|n| n.contains(other)),
            "{mode} mode registers no {other} metric: {names:#?}"
        );
        assert!(
            names.iter().any(|n| n.contains(own)),
            "{mode} mode registers its {own} metrics: {names:#?}"
        );
        for family in families() {
            let f = format!("{{ip_family=\"{family}\"}}");
            if mode == "nftables" {
                let failures =
                    format!("kubeproxy_sync_proxy_rules_nftables_sync_failures_total{f}");
                assert_eq!(support::metric(&text, &failures), Some(0.0), "{text}");
                continue;
            }
            for table in ["nat", "filter"] {
                let labels = format!("{{ip_family=\"{family}\",table=\"{table}\"}}");
                let total = support::metric(
                    &text,
                    &format!("kubeproxy_sync_proxy_rules_iptables_total{labels}"),
                );
                let last = support::metric(
                    &text,
                    &format!("kubeproxy_sync_proxy_rules_iptables_last{labels}"),
                );
                // The first sync loads everything: it wrote every rule kproxy owns, unless a
                // later sync has already written less.
                assert!(
                    total.is_some_and(|t| t > 0.0) && last.is_some_and(|l| l <= total.unwrap()),
                    "{family} {table}: total {total:?}, last {last:?}\n{text}"
                );
            }
        }
        assert!(kproxy.stop().success(), "{mode}: {}", kproxy.log());
    }
}
