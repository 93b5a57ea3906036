//! Tests of the command line: defaults, upstream spellings, value syntax and one-line errors.

mod client;
mod durations;
mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::*;

fn parse_args(args: &[&str]) -> Result<Parsed, ConfigError> {
    let argv = std::iter::once("kproxy").chain(args.iter().copied());
    parse_with(argv, &|| Ok(" Node-1.Example\n".to_owned()))
}

/// The resolved config for `args`; panics on help, version or an error.
fn run(args: &[&str]) -> Config {
    match parse_args(args) {
        Ok(Parsed::Run(config)) => config,
        other => panic!("{args:?}: expected a config, got {other:?}"),
    }
}

/// The error for `args`, checked to be one line.
fn error(args: &[&str]) -> String {
    match parse_args(args) {
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{args:?}: multi-line error {text:?}");
            text
        }
        other => panic!("{args:?}: expected an error, got {other:?}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn defaults_match_upstream() {
    let c = run(&[]);
    assert_eq!(c.mode, ProxyMode::Nftables);
    assert_eq!(c.kubeconfig, None);
    assert_eq!(c.master, None);
    assert_eq!(c.node_name, "node-1.example");
    assert!(c.cluster_cidrs.is_empty());
    // nftables mode's default, as upstream's; the other modes' is every address.
    assert_eq!(c.nodeport_addresses, NodePortAddresses::primary());
    assert!(!c.masquerade_all);
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(c.metrics_bind_address, addr("127.0.0.1:10249"));
    assert_eq!(c.healthz_bind_address, addr("0.0.0.0:10256"));
    assert_eq!(c.config_file, None);
    assert!(!c.cleanup);
    assert_eq!(c.verbosity, 0);
    assert_eq!(c.manifests, None);
    assert!(!c.dry_run);
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

const EQUALS_FORM: &[&str] = &[
    "--proxy-mode=iptables",
    "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf",
    "--master=https://10.0.0.1:6443",
    "--hostname-override=Worker-3",
    "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
    "--nodeport-addresses=192.168.0.0/16",
    "--masquerade-all=true",
    "--iptables-sync-period=1m30s",
    "--iptables-min-sync-period=250ms",
    "--metrics-bind-address=0.0.0.0:10249",
    "--healthz-bind-address=[::]:10256",
    "--cleanup=true",
    "--v=4",
    "--log-format=json",
    "--manifests=/etc/kproxy/manifests",
    "--dry-run=true",
];

fn check_all_flags(c: &Config) {
    assert_eq!(c.mode, ProxyMode::Iptables);
    assert_eq!(
        c.kubeconfig,
        Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(c.master.as_deref(), Some("https://10.0.0.1:6443"));
    assert_eq!(c.node_name, "worker-3");
    assert_eq!(
        c.cluster_cidrs,
        vec![net("10.244.0.0/16"), net("fd00:10:244::/56")]
    );
    assert_eq!(
        c.nodeport_addresses,
        NodePortAddresses::cidrs(vec![net("192.168.0.0/16")])
    );
    assert!(c.masquerade_all);
    assert_eq!(c.sync_period, Duration::from_secs(90));
    assert_eq!(c.min_sync_period, Duration::from_millis(250));
    assert_eq!(c.metrics_bind_address, addr("0.0.0.0:10249"));
    assert_eq!(c.healthz_bind_address, addr("[::]:10256"));
    assert!(c.cleanup);
    assert_eq!(c.verbosity, 4);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.manifests, Some(PathBuf::from("/etc/kproxy/manifests")));
    assert!(c.dry_run);
    // The one warning: --manifests makes --kubeconfig and --master pointless.
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].starts_with("--manifests "),
        "{:?}",
        c.warnings
    );
}

#[test]
fn every_upstream_flag_parses_in_the_equals_form() {
    check_all_flags(&run(EQUALS_FORM));
}

#[test]
fn every_value_flag_parses_in_the_space_form() {
    // Booleans take no separate word in pflag, so they keep the `=` form.
    let args: Vec<&str> = EQUALS_FORM
        .iter()
        .flat_map(|a| match a.split_once('=') {
            Some((f, v)) if !v.starts_with("true") => vec![f, v],
            _ => vec![*a],
        })
        .collect();
    check_all_flags(&run(&args));
}

#[test]
fn verbosity_takes_every_klog_spelling() {
    for args in [
        &["-v=2"][..],
        &["-v", "2"],
        &["-v2"],
        &["--v=2"],
        &["--v", "2"],
    ] {
        assert_eq!(run(args).verbosity, 2, "{args:?}");
    }
}

#[test]
fn boolean_flags_take_no_value_or_a_go_boolean() {
    assert!(run(&["--masquerade-all"]).masquerade_all);
    for (value, want) in [
        ("true", true),
        ("1", true),
        ("T", true),
        ("false", false),
        ("F", false),
        ("0", false),
    ] {
        let flag = format!("--masquerade-all={value}");
        assert_eq!(run(&[&flag]).masquerade_all, want, "{flag}");
    }
    assert_eq!(
        error(&["--masquerade-all=yes"]),
        "--masquerade-all: invalid boolean \"yes\" (want true or false)"
    );
    // As in pflag, a boolean's value cannot be a separate word.
    assert_eq!(
        error(&["--masquerade-all", "false"]),
        "unexpected argument \"false\" (kproxy takes only flags)"
    );
}

#[test]
fn bind_addresses_take_ip_port_bracketed_v6_or_a_bare_ip() {
    for (value, metrics, healthz) in [
        ("0.0.0.0:9000", "0.0.0.0:9000", "0.0.0.0:9000"),
        ("[::1]:9000", "[::1]:9000", "[::1]:9000"),
        ("10.1.2.3", "10.1.2.3:10249", "10.1.2.3:10256"),
        ("::", "[::]:10249", "[::]:10256"),
        ("[fd00::1]", "[fd00::1]:10249", "[fd00::1]:10256"),
    ] {
        let c = run(&[
            &format!("--metrics-bind-address={value}"),
            &format!("--healthz-bind-address={value}"),
        ]);
        assert_eq!(c.metrics_bind_address, addr(metrics), "{value}");
        assert_eq!(c.healthz_bind_address, addr(healthz), "{value}");
    }
}

#[test]
fn an_ipv6_bind_address_makes_the_server_defaults_ipv6() {
    let c = run(&["--bind-address=::"]);
    assert_eq!(c.metrics_bind_address, addr("[::1]:10249"));
    assert_eq!(c.healthz_bind_address, addr("[::]:10256"));
    assert_eq!(
        run(&["--bind-address=0.0.0.0"]).metrics_bind_address,
        addr("127.0.0.1:10249")
    );
}

#[test]
fn each_kind_of_bad_value_is_a_one_line_error_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--proxy-mode=foo"],
            "--proxy-mode: unknown value \"foo\" (want nftables, iptables or ipvs)",
        ),
        (
            &["--sync-period=abc"],
            "--sync-period: invalid duration \"abc\"",
        ),
        (
            &["--iptables-sync-period", "10"],
            "--iptables-sync-period: missing unit in duration \"10\" (e.g. \"30s\", \"1m30s\")",
        ),
        (
            &["--iptables-min-sync-period=1d"],
            "--iptables-min-sync-period: unknown unit \"d\" in duration \"1d\" (want ns, us, ms, s, m or h)",
        ),
        (
            &["--iptables-min-sync-period=-1s"],
            "--iptables-min-sync-period: negative duration \"-1s\"",
        ),
        (
            &["--iptables-sync-period=0s"],
            "--iptables-sync-period: must be greater than 0",
        ),
        (
            &["--sync-period=0"],
            "--sync-period: must be greater than 0",
        ),
        (
            &["--metrics-bind-address=localhost:10249"],
            "--metrics-bind-address: invalid address \"localhost:10249\" (want IP, IP:port or [IPv6]:port)",
        ),
        (
            &["--healthz-bind-address="],
            "--healthz-bind-address: empty address (disabling the server is not supported)",
        ),
        (
            &["--bind-address=0.0.0.0:1"],
            "--bind-address: invalid IP address \"0.0.0.0:1\"",
        ),
        (
            &["--cluster-cidr=10.0.0.0/33"],
            "--cluster-cidr: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            &["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"],
            "--cluster-cidr: \"10.0.0.0/8,10.1.0.0/16\" holds two CIDRs of one family (want at most one IPv4 and one IPv6)",
        ),
        (
            &["--cluster-cidr=10.0.0.0/8,fd00::/8,11.0.0.0/8"],
            "--cluster-cidr: \"10.0.0.0/8,fd00::/8,11.0.0.0/8\" holds more than two CIDRs (want at most one IPv4 and one IPv6)",
        ),
        (
            &["--nodeport-addresses=10.0.0.1"],
            "--nodeport-addresses: invalid CIDR \"10.0.0.1\" (want CIDRs, or the keywords primary, localhost, all)",
        ),
        (&["-v=high"], "--v: invalid level \"high\" (want 0 to 255)"),
        (
            &["--log-format=xml"],
            "--log-format: unknown value \"xml\" (want text or json)",
        ),
        (
            &["--hostname-override=  "],
            "--hostname-override: empty hostname-override is invalid",
        ),
        (
            &["--oom-score-adj=lots"],
            "--oom-score-adj: invalid value \"lots\" (want an integer from -1000 to 1000)",
        ),
        (
            &["--oom-score-adj=-1001"],
            "--oom-score-adj: invalid value \"-1001\" (want an integer from -1000 to 1000)",
        ),
        (
            &["--conntrack-tcp-timeout-established=1y"],
            "--conntrack-tcp-timeout-established: unknown unit \"y\" in duration \"1y\" (want ns, us, ms, s, m or h)",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(error(args), *want, "{args:?}");
    }
}

#[test]
fn a_missing_value_is_a_one_line_error_naming_the_flag() {
    let e = error(&["--kubeconfig"]);
    assert!(e.contains("--kubeconfig"), "{e}");
}

#[test]
fn an_unknown_flag_is_an_error() {
    for args in [
        &["--foo"][..],
        &["--foo=bar"],
        &["--foo", "bar"],
        &["--proxy-mode=ipvs", "--foo"],
    ] {
        assert_eq!(error(args), "unknown flag --foo", "{args:?}");
    }
    assert_eq!(error(&["-x"]), "unknown flag -x");
    assert_eq!(
        error(&["--udp-timeout=250ms"]),
        "unknown flag --udp-timeout"
    );
    assert_eq!(
        error(&["run"]),
        "unexpected argument \"run\" (kproxy takes only flags)"
    );
    assert_eq!(parse_args(&["--foo"]).map(drop).unwrap_err().exit_code(), 2);
}

#[test]
fn help_and_version_are_returned_not_printed() {
    match parse_args(&["--help"]) {
        Ok(Parsed::Help(text)) => {
            assert!(text.contains("--proxy-mode"), "{text}");
            assert!(text.contains("--conntrack-max-per-core"), "{text}");
            assert!(text.contains("--init-only"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(parse_args(&["-h"]), Ok(Parsed::Help(_))));
    match parse_args(&["--version"]) {
        Ok(Parsed::Version(text)) => assert!(
            text.starts_with(concat!("kproxy ", env!("CARGO_PKG_VERSION"), " (commit "))
                && text.contains(", built "),
            "{text}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ignored_upstream_flags_are_accepted_with_a_warning() {
    let c = run(&[
        "--healthz-port=10256",
        "--profiling",
        "--ipvs-exclude-cidrs=10.0.0.0/8",
    ]);
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings.contains(
        &"--healthz-port=10256 is accepted for kube-proxy compatibility and ignored".to_owned()
    ));
    for (name, _) in IGNORED_FLAGS {
        assert!(
            flags::command()
                .get_arguments()
                .any(|a| a.get_id() == *name),
            "{name}"
        );
    }
}

#[test]
fn underscores_in_flag_names_are_dashes() {
    let c = run(&["--hostname_override=n2", "--masquerade_all"]);
    assert_eq!(c.node_name, "n2");
    assert!(c.masquerade_all);
}

#[test]
fn a_repeated_flag_keeps_its_last_value_and_a_list_flag_accumulates() {
    assert_eq!(
        run(&["--proxy-mode=ipvs", "--proxy-mode=iptables"]).mode,
        ProxyMode::Iptables
    );
    let c = run(&[
        "--nodeport-addresses=10.0.0.0/8",
        "--nodeport-addresses",
        "fd00::/8,192.168.1.1/24",
    ]);
    assert_eq!(
        c.nodeport_addresses,
        NodePortAddresses::cidrs(vec![
            net("10.0.0.0/8"),
            net("fd00::/8"),
            net("192.168.1.0/24")
        ])
    );
}

#[test]
fn nodeport_addresses_take_keywords_and_cidrs_in_any_combination_and_default_by_mode() {
    assert_eq!(
        run(&["--nodeport-addresses=primary"]).nodeport_addresses,
        NodePortAddresses::primary()
    );
    let ipt = |extra: &str| run(&["--proxy-mode=iptables", extra]).nodeport_addresses;
    assert_eq!(ipt("--nodeport-addresses=all"), NodePortAddresses::all());
    // Empty is unset: the mode's default.
    assert_eq!(ipt("--nodeport-addresses="), NodePortAddresses::all());
    assert_eq!(
        run(&["--nodeport-addresses="]).nodeport_addresses,
        NodePortAddresses::primary()
    );
    assert_eq!(
        run(&["--proxy-mode=ipvs"]).nodeport_addresses,
        NodePortAddresses::all()
    );
    let mixed = run(&[
        "--nodeport-addresses=primary,localhost",
        "--nodeport-addresses=10.0.0.0/8",
    ]);
    let want = NodePortAddresses {
        primary: true,
        localhost: true,
        ..NodePortAddresses::cidrs(vec![net("10.0.0.0/8")])
    };
    assert_eq!(mixed.nodeport_addresses, want);
    assert!(mixed.warnings.is_empty(), "{:?}", mixed.warnings);
    let ipvs = run(&["--proxy-mode=ipvs", "--nodeport-addresses=localhost"]);
    assert_eq!(
        ipvs.warnings.len(),
        1,
        "IPVS has no localhost NodePorts: {:?}",
        ipvs.warnings
    );
    let e = error(&["--nodeport-addresses=primary,lo"]);
    assert!(
        e.contains("--nodeport-addresses") && e.contains("\"lo\"") && e.contains("localhost"),
        "{e}"
    );
}

#[test]
fn sync_period_flags_follow_the_mode_and_kproxys_own_flags_win() {
    let c = run(&[
        "--proxy-mode=ipvs",
        "--ipvs-sync-period=10s",
        "--ipvs-min-sync-period=0",
    ]);
    assert_eq!(
        (c.sync_period, c.min_sync_period),
        (Duration::from_secs(10), Duration::ZERO)
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let c = run(&["--ipvs-sync-period=10s"]);
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(
        c.warnings,
        vec!["--ipvs-sync-period does not apply in nftables mode and is ignored"]
    );

    let c = run(&[
        "--iptables-sync-period=10s",
        "--sync-period=20s",
        "--min-sync-period=0s",
    ]);
    assert_eq!(
        (c.sync_period, c.min_sync_period),
        (Duration::from_secs(20), Duration::ZERO)
    );
}

#[test]
fn the_node_name_is_the_trimmed_lower_cased_override_or_host_name() {
    assert_eq!(
        run(&["--hostname-override= Big-Node "]).node_name,
        "big-node"
    );
    // An empty override is unset, as upstream.
    assert_eq!(run(&["--hostname-override="]).node_name, "node-1.example");
    let e = parse_with(["kproxy"], &|| {
        Err("reading /proc/sys/kernel/hostname: gone".into())
    });
    assert_eq!(
        e.map(drop).unwrap_err().to_string(),
        "cannot determine the node name: reading /proc/sys/kernel/hostname: gone (set --hostname-override)"
    );
    let e = parse_with(["kproxy"], &|| Ok("\n".into()));
    assert!(matches!(e, Err(ConfigError::NodeName(_))));
}

#[test]
fn the_backend_config_carries_cidrs_and_masquerading() {
    let c = run(&["--cluster-cidr=10.244.0.0/16", "--masquerade-all"]);
    assert_eq!(
        c.backend_config(),
        BackendConfig {
            conntrack_tcp_be_liberal: false,
            masquerade_all: true,
            nft_transport: Default::default(),
            localhost_nodeports: true,
            iptables_variant: Default::default(),
            masquerade_bit: Some(14),
            ipvs_scheduler: "rr".into(),
            ipvs_strict_arp: false,
            ipvs_timeouts: Default::default(),
        }
    );
}

#[test]
fn nftables_transport_selects_how_nftables_is_reached_and_a_bad_value_is_refused() {
    use crate::nftables::NftTransport;
    let transport = |args: &[&str]| run(args).backend_config().nft_transport;
    assert_eq!(transport(&[]), NftTransport::default());
    assert_eq!(
        transport(&["--nftables-transport=library"]),
        NftTransport::Library
    );
    assert_eq!(
        transport(&["--nftables-transport", "netlink"]),
        NftTransport::Netlink
    );
    assert_eq!(
        transport(&["--nftables-transport", "command"]),
        NftTransport::Command
    );
    let e = error(&["--nftables-transport=json"]);
    assert!(
        e.contains("--nftables-transport") && e.contains("library, netlink or command"),
        "{e}"
    );
}

#[test]
fn the_masquerade_bit_comes_from_the_flag_or_the_file_and_is_checked() {
    assert_eq!(run(&[]).backend_config().masquerade_bit, Some(14));
    for mode in ["iptables", "ipvs"] {
        let c = run(&["--iptables-masquerade-bit=15", "--proxy-mode", mode]);
        assert_eq!(c.backend_config().masquerade_bit, Some(15), "{mode}");
    }
    // As upstream, nftables mode reads only nftables.masqueradeBit.
    let c = run(&["--iptables-masquerade-bit=15", "--proxy-mode", "nftables"]);
    assert_eq!(c.backend_config().masquerade_bit, Some(14));
    let e = error(&["--iptables-masquerade-bit=32"]);
    assert!(
        e.contains("--iptables-masquerade-bit") && e.contains("0 to 31"),
        "{e}"
    );
}

#[test]
fn the_oom_score_adjustment_defaults_to_upstreams_and_comes_from_the_flag_or_the_file() {
    assert_eq!(run(&[]).oom_score_adj, -999);
    assert_eq!(run(&["--oom-score-adj=-500"]).oom_score_adj, -500);
    assert!(
        run(&["--oom-score-adj=0"]).warnings.is_empty(),
        "acted on, not ignored"
    );
}

#[test]
fn bind_address_hard_fail_is_off_by_default_and_comes_from_the_flag() {
    assert!(!run(&[]).bind_address_hard_fail);
    let c = run(&["--bind-address-hard-fail"]);
    assert!(c.bind_address_hard_fail);
    assert!(
        c.warnings.is_empty(),
        "acted on, not ignored: {:?}",
        c.warnings
    );
}
