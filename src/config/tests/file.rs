//! Tests of the `--config` file: a kubeadm-generated file loads, flags win, bad files fail.

use std::io::Write;
use std::time::Duration;

use super::{addr, error, net, run};
use crate::backends::ProxyMode;
use crate::config::{DetectLocal, NodePortAddresses};

/// What `kubeadm init` writes into the kube-proxy ConfigMap (v1.31), with a dual-stack pod CIDR.
const KUBEADM: &str = r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

/// A temporary config file holding `text`, and the `--config=` flag naming it.
fn config_file(text: &str) -> (tempfile::NamedTempFile, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    let flag = format!("--config={}", f.path().display());
    (f, flag)
}

/// The kubeadm file with `from` replaced by `to` (which must occur).
fn kubeadm_with(from: &str, to: &str) -> String {
    assert!(KUBEADM.contains(from), "{from}");
    KUBEADM.replacen(from, to, 1)
}

#[test]
fn a_kubeadm_generated_config_file_loads() {
    let (f, flag) = config_file(KUBEADM);
    let c = run(&[&flag, "--hostname-override=$(NODE_NAME)"]);
    assert_eq!(c.config_file.as_deref(), Some(f.path()));
    assert_eq!(c.mode, ProxyMode::Nftables);
    assert_eq!(
        c.kubeconfig.as_deref(),
        Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(c.node_name, "$(node_name)");
    assert_eq!(
        c.cluster_cidrs,
        vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]
    );
    // Unset, in kproxy's default mode (nftables): `primary`, as upstream's nftables mode.
    assert_eq!(c.nodeport_addresses, NodePortAddresses::primary());
    assert!(!c.masquerade_all);
    // Zero durations and empty addresses are unset, so upstream's defaults apply.
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(c.metrics_bind_address, addr("127.0.0.1:10249"));
    assert_eq!(c.healthz_bind_address, addr("0.0.0.0:10256"));
    assert_eq!(c.oom_score_adj, -999, "null: upstream's default");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn the_file_sets_what_kproxy_implements() {
    let text = KUBEADM
        .replace("mode: \"\"", "mode: iptables")
        .replace("hostnameOverride: \"\"", "hostnameOverride: Node-7")
        .replace("metricsBindAddress: \"\"", "metricsBindAddress: 0.0.0.0")
        .replace("healthzBindAddress: \"\"", "healthzBindAddress: 10.0.0.5:8080")
        .replace("nodePortAddresses: null", "nodePortAddresses: [primary]")
        .replace("  verbosity: 0", "  verbosity: 3\n  format: json")
        .replace("oomScoreAdj: null", "oomScoreAdj: -500")
        .replace("bindAddressHardFail: false", "bindAddressHardFail: true")
        .replace(
            "  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs",
            "  masqueradeAll: true\n  masqueradeBit: 14\n  minSyncPeriod: 10s\n  syncPeriod: 1m\nipvs",
        );
    let (_f, flag) = config_file(&text);
    let c = run(&[&flag]);
    assert_eq!(c.mode, ProxyMode::Iptables);
    assert_eq!(c.node_name, "node-7");
    assert_eq!(c.metrics_bind_address, addr("0.0.0.0:10249"));
    assert_eq!(c.healthz_bind_address, addr("10.0.0.5:8080"));
    assert_eq!(c.nodeport_addresses, NodePortAddresses::primary());
    assert!(c.masquerade_all);
    assert_eq!(c.sync_period, Duration::from_secs(60));
    assert_eq!(c.min_sync_period, Duration::from_secs(10));
    assert_eq!(c.verbosity, 3);
    assert_eq!(c.log_format, crate::config::LogFormat::Json);
    assert_eq!(c.oom_score_adj, -500);
    assert!(c.bind_address_hard_fail);
}

/// A file with distinct settings in each mode's section.
fn sectioned(mode: &str) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: \"{mode}\"
iptables:
  masqueradeAll: true
  minSyncPeriod: 11ms
  syncPeriod: 11s
ipvs:
  minSyncPeriod: 12ms
  syncPeriod: 12s
nftables:
  masqueradeAll: false
  minSyncPeriod: 13ms
  syncPeriod: 13s
"
    )
}

#[test]
fn the_section_of_the_chosen_mode_supplies_periods_and_masquerading() {
    for (mode, want_mode, secs, masq) in [
        ("", ProxyMode::Nftables, 11, true), // empty mode: upstream reads the iptables section
        ("iptables", ProxyMode::Iptables, 11, true),
        ("ipvs", ProxyMode::Ipvs, 12, true), // ipvs takes masqueradeAll from iptables
        ("nftables", ProxyMode::Nftables, 13, false),
    ] {
        let (_f, flag) = config_file(&sectioned(mode));
        let c = run(&[&flag]);
        assert_eq!(c.mode, want_mode, "{mode:?}");
        assert_eq!(c.sync_period, Duration::from_secs(secs), "{mode:?}");
        assert_eq!(c.min_sync_period, Duration::from_millis(secs), "{mode:?}");
        assert_eq!(c.masquerade_all, masq, "{mode:?}");
    }
    // A mode given on the command line picks the section too.
    let (_f, flag) = config_file(&sectioned("iptables"));
    let c = run(&[&flag, "--proxy-mode=nftables"]);
    assert_eq!(
        (c.mode, c.sync_period),
        (ProxyMode::Nftables, Duration::from_secs(13))
    );
}

#[test]
fn explicit_flags_override_the_file() {
    let (_f, flag) = config_file(&sectioned("ipvs"));
    let c = run(&[
        &flag,
        "--proxy-mode=iptables",
        "--kubeconfig=/other.conf",
        "--cluster-cidr=10.0.0.0/8",
        "--nodeport-addresses=primary",
        "--masquerade-all=false",
        "--iptables-sync-period=5s",
        "--metrics-bind-address=0.0.0.0:1",
        "--healthz-bind-address=0.0.0.0:2",
        "--hostname-override=flag-node",
        "-v=6",
        "--logging-format=json",
    ]);
    assert_eq!(c.mode, ProxyMode::Iptables);
    assert_eq!(
        c.kubeconfig.as_deref(),
        Some(std::path::Path::new("/other.conf"))
    );
    assert_eq!(c.cluster_cidrs, vec![net("10.0.0.0/8")]);
    assert_eq!(c.nodeport_addresses, NodePortAddresses::primary());
    assert!(!c.masquerade_all);
    assert_eq!(c.sync_period, Duration::from_secs(5));
    assert_eq!(c.min_sync_period, Duration::from_millis(11));
    assert_eq!(c.metrics_bind_address, addr("0.0.0.0:1"));
    assert_eq!(c.healthz_bind_address, addr("0.0.0.0:2"));
    assert_eq!(c.node_name, "flag-node");
    assert_eq!(c.verbosity, 6);
    assert_eq!(c.log_format, crate::config::LogFormat::Json);
}

#[test]
fn an_unknown_file_field_is_a_warning_naming_it_as_upstreams_lenient_decoding() {
    let text = kubeadm_with(
        "portRange: \"\"",
        "portRange: \"\"\nresourceContainer: /kube-proxy",
    )
    .replace("  min: null", "  min: null\n  max: 0");
    let (_f, flag) = config_file(&text);
    let c = run(&[&flag]);
    assert_eq!(
        c.warnings,
        vec![
            "unknown field \"conntrack.max\" in the --config file is ignored",
            "unknown field \"resourceContainer\" in the --config file is ignored",
        ]
    );
}

#[test]
fn a_wrong_api_version_or_kind_is_an_error() {
    for (from, to, want) in [
        (
            "v1alpha1",
            "v1alpha2",
            "apiVersion: unsupported value \"kubeproxy.config.k8s.io/v1alpha2\" (want kubeproxy.config.k8s.io/v1alpha1)",
        ),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n",
            "",
            "apiVersion: unsupported value \"\" (want kubeproxy.config.k8s.io/v1alpha1)",
        ),
        (
            "kind: KubeProxyConfiguration",
            "kind: KubeletConfiguration",
            "kind: unsupported value \"KubeletConfiguration\" (want KubeProxyConfiguration)",
        ),
    ] {
        let (f, flag) = config_file(&kubeadm_with(from, to));
        let want = format!("--config {}: {want}", f.path().display());
        assert_eq!(error(&[&flag]), want);
    }
}

#[test]
fn a_bad_file_value_is_a_one_line_error_naming_the_field() {
    for (from, to, want) in [
        (
            "mode: \"\"",
            "mode: userspace",
            "mode: unknown value \"userspace\" (want nftables, iptables or ipvs)",
        ),
        (
            "oomScoreAdj: null",
            "oomScoreAdj: 5000",
            "oomScoreAdj: want an integer from -1000 to 1000",
        ),
        (
            "  syncPeriod: 0s\nipvs",
            "  syncPeriod: 30\nipvs",
            "iptables.syncPeriod: want a string",
        ),
        (
            "  minSyncPeriod: 0s\n  syncPeriod: 0s\nnodePort",
            "  minSyncPeriod: -1s\n  syncPeriod: 0s\nnodePort",
            "nftables.minSyncPeriod: negative duration \"-1s\"",
        ),
        (
            "  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs",
            "  masqueradeAll: \"yes\"\nipvs",
            "iptables.masqueradeAll: want true or false",
        ),
        (
            "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56",
            "clusterCIDR: 10.244.0.0",
            "clusterCIDR: invalid CIDR \"10.244.0.0\"",
        ),
        (
            "metricsBindAddress: \"\"",
            "metricsBindAddress: localhost",
            "metricsBindAddress: invalid address \"localhost\" (want IP, IP:port or [IPv6]:port)",
        ),
        (
            "nodePortAddresses: null",
            "nodePortAddresses: 10.0.0.0/8",
            "nodePortAddresses: want a list of strings",
        ),
        (
            "conntrack:\n",
            "conntrack: 5\nx:\n",
            "conntrack: want a mapping",
        ),
        (
            "  verbosity: 0",
            "  verbosity: -1",
            "logging.verbosity: want an integer from 0 to 255",
        ),
        ("kind: KubeProxyConfiguration", "kind: [", "invalid YAML"),
    ] {
        let (f, flag) = config_file(&kubeadm_with(from, to));
        let got = error(&[&flag]);
        let want = format!("--config {}: {want}", f.path().display());
        assert!(got.starts_with(&want), "{to:?}: {got}");
    }
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let e = error(&["--config=/nonexistent/kube-proxy.yaml"]);
    assert!(
        e.starts_with("--config /nonexistent/kube-proxy.yaml: cannot read: "),
        "{e}"
    );
}

#[test]
fn an_ipv6_bind_address_in_the_file_makes_the_server_defaults_ipv6() {
    let (_f, flag) = config_file(&kubeadm_with("bindAddress: 0.0.0.0", "bindAddress: \"::\""));
    let c = run(&[&flag]);
    assert_eq!(c.metrics_bind_address, addr("[::1]:10249"));
    assert_eq!(c.healthz_bind_address, addr("[::]:10256"));
}

#[test]
fn the_detect_local_mode_and_its_interface_come_from_the_file_and_flags_win() {
    let text = kubeadm_with(
        "detectLocalMode: \"\"",
        "detectLocalMode: InterfaceNamePrefix",
    )
    .replacen(
        "  interfaceNamePrefix: \"\"",
        "  interfaceNamePrefix: veth",
        1,
    );
    let (_f, flag) = config_file(&text);
    let c = run(&[&flag]);
    assert_eq!(
        c.detect_local,
        DetectLocal::InterfaceNamePrefix("veth".into())
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = run(&[
        &flag,
        "--detect-local-mode=BridgeInterface",
        "--pod-bridge-interface=cbr0",
    ]);
    assert_eq!(c.detect_local, DetectLocal::BridgeInterface("cbr0".into()));
    let c = run(&[&flag, "--detect-local-mode", "NodeCIDR"]);
    assert_eq!(c.detect_local, DetectLocal::NodeCidr);
}

#[test]
fn the_detect_local_mode_defaults_to_the_cluster_cidr_as_upstream() {
    let c = run(&["--cluster-cidr=10.244.0.0/16"]);
    let want = DetectLocal::ClusterCidr(vec![net("10.244.0.0/16")]);
    assert_eq!(c.detect_local, want);
    let (_f, flag) = config_file(KUBEADM);
    let cidrs = vec![net("10.244.0.0/16"), net("fd00:10:244::/56")];
    assert_eq!(run(&[&flag]).detect_local, DetectLocal::ClusterCidr(cidrs));
}

#[test]
fn an_interface_mode_without_its_interface_or_an_unknown_mode_is_refused() {
    let e = error(&["--detect-local-mode=BridgeInterface"]);
    assert!(e.contains("--pod-bridge-interface"), "{e}");
    let text = kubeadm_with(
        "detectLocalMode: \"\"",
        "detectLocalMode: InterfaceNamePrefix",
    );
    let (_f, flag) = config_file(&text);
    let e = error(&[&flag]);
    assert!(e.contains("detectLocal.interfaceNamePrefix"), "{e}");
    let e = error(&["--detect-local-mode=nodecidr"]);
    assert!(
        e.contains("--detect-local-mode") && e.contains("NodeCIDR"),
        "{e}"
    );
    let text = kubeadm_with("detectLocalMode: \"\"", "detectLocalMode: Bogus");
    let (_f, flag) = config_file(&text);
    let e = error(&[&flag]);
    assert!(e.contains("detectLocalMode"), "{e}");
}

#[test]
fn the_ipvs_scheduler_and_strict_arp_come_from_the_file_or_the_flags() {
    let c = run(&[]).backend_config();
    assert_eq!(
        (c.ipvs_scheduler.as_str(), c.ipvs_strict_arp),
        ("rr", false)
    );
    let text = kubeadm_with(
        "  scheduler: \"\"\n  strictARP: false",
        "  scheduler: sh\n  strictARP: true",
    );
    let (_file, flag) = config_file(&text);
    let c = run(&[&flag]).backend_config();
    assert_eq!((c.ipvs_scheduler.as_str(), c.ipvs_strict_arp), ("sh", true));
    let c = run(&[&flag, "--ipvs-scheduler=lc", "--ipvs-strict-arp=false"]).backend_config();
    assert_eq!(
        (c.ipvs_scheduler.as_str(), c.ipvs_strict_arp),
        ("lc", false)
    );
    let (_bad, bad) = config_file(&kubeadm_with("  strictARP: false", "  strictARP: 3"));
    let e = error(&[&bad]);
    assert!(e.contains("ipvs.strictARP"), "{e}");
}

#[test]
fn ipvs_timeouts_come_from_the_flags_or_the_file_and_zero_keeps_the_kernels() {
    let t = run(&[]).backend_config().ipvs_timeouts;
    assert_eq!(t, Default::default());
    let text = kubeadm_with(
        "  tcpFinTimeout: 0s\n  tcpTimeout: 0s\n  udpTimeout: 0s",
        "  tcpFinTimeout: 30s\n  tcpTimeout: 0s\n  udpTimeout: 1m",
    );
    let (_file, flag) = config_file(&text);
    let t = run(&[&flag]).backend_config().ipvs_timeouts;
    assert_eq!(
        (t.tcp, t.tcp_fin, t.udp),
        (
            None,
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(60))
        )
    );
    let t = run(&[&flag, "--ipvs-tcp-timeout=15m", "--ipvs-udp-timeout=0"])
        .backend_config()
        .ipvs_timeouts;
    assert_eq!(
        (t.tcp, t.tcp_fin, t.udp),
        (
            Some(Duration::from_secs(900)),
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(60))
        )
    );
}

#[test]
fn nftables_mode_takes_its_masquerade_bit_from_its_own_section_as_upstream() {
    let text = |mode: &str| {
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: \"{mode}\"\niptables:\n  masqueradeBit: 15\nnftables:\n  masqueradeBit: 5\n"
        )
    };
    for (mode, want) in [("nftables", 5), ("iptables", 15), ("ipvs", 15), ("", 15)] {
        let (_f, flag) = config_file(&text(mode));
        assert_eq!(
            run(&[&flag]).backend_config().masquerade_bit,
            Some(want),
            "{mode:?}"
        );
    }
}

#[test]
fn an_ipvs_scheduler_ipvs_does_not_have_is_refused_in_ipvs_mode_naming_the_flag_or_field() {
    for name in crate::config::values::IPVS_SCHEDULERS {
        let c = run(&["--proxy-mode=ipvs", &format!("--ipvs-scheduler={name}")]);
        assert_eq!(c.ipvs_scheduler, name);
    }
    let e = error(&["--proxy-mode=ipvs", "--ipvs-scheduler=bogus"]);
    assert!(
        e.starts_with("--ipvs-scheduler: ") && e.contains("\"bogus\"") && e.contains("mh"),
        "{e}"
    );
    // Other modes never use it and, as upstream, leave it unchecked.
    assert_eq!(run(&["--ipvs-scheduler=bogus"]).ipvs_scheduler, "bogus");
    let (_file, flag) = config_file(&kubeadm_with("  scheduler: \"\"", "  scheduler: bogus"));
    let e = error(&[&flag, "--proxy-mode=ipvs"]);
    assert!(
        e.starts_with("--config ") && e.contains("ipvs.scheduler: ") && e.contains("\"bogus\""),
        "{e}"
    );
    // A valid flag replaces the file's value, which is then not looked at.
    assert_eq!(
        run(&[&flag, "--proxy-mode=ipvs", "--ipvs-scheduler=sh"]).ipvs_scheduler,
        "sh"
    );
}

#[test]
fn manifests_with_api_settings_warns_once_naming_each() {
    let warned = |args: &[&str]| -> Vec<String> {
        run(args)
            .warnings
            .into_iter()
            .filter(|w| w.starts_with("--manifests"))
            .collect()
    };
    let w = warned(&[
        "--manifests=/m",
        "--kubeconfig=/k",
        "--master=https://api:6443",
    ]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("--kubeconfig and --master are ignored"),
        "{w:?}"
    );
    let w = warned(&["--manifests=/m", "--master=https://api:6443"]);
    assert!(w[0].ends_with("--master is ignored"), "{w:?}");
    assert!(warned(&["--manifests=/m"]).is_empty());
    assert!(warned(&["--kubeconfig=/k"]).is_empty());
    // kubeadm's file names a kubeconfig: one file for both sources is no mistake.
    let (_file, flag) = config_file(KUBEADM);
    assert!(warned(&[&flag, "--manifests=/m"]).is_empty());
    assert!(warned(&[&flag]).is_empty());
}
