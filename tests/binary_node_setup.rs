//! The privileged node setup: conntrack tuning (`--conntrack-*`) in the namespace kproxy runs
//! in, iptables mode's INVALID rule following liberal TCP tracking, and `--init-only` (the setup
//! alone, then exit 0 with no rule programmed), and none of it before the source is reached (a
//! kubeconfig that cannot be read fails first). Root only, inside throwaway network namespaces,
//! whose conntrack timeouts are their own; `nf_conntrack_max` is the host's and read-only
//! there, which shows the warning path. The table size and IPVS's modules are set up for real
//! only in the throwaway VM (tests/e2e's `ipvs::init_only_…`), never on the host.

mod support;

use std::process::Stdio;
use std::time::Instant;

use support::Kproxy;
use support::netns::{self, Netns};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");

/// A conntrack sysctl as `ns` sees it.
fn sysctl(ns: &Netns, name: &str) -> u64 {
    let v = ns.exec("cat", &[&format!("/proc/sys/net/netfilter/{name}")]);
    v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conntrack_flags_set_the_namespaces_timeouts_and_a_read_only_table_size_is_one_warning() {
    if !netns::can_run("conntrack_flags_set_the_namespaces_timeouts") {
        return;
    }
    // Upstream's defaults: 24 h and 1 h; the UDP timeouts stay the kernel's.
    let ns = Netns::new("ctdef");
    let udp = sysctl(&ns, "nf_conntrack_udp_timeout");
    let mut k = Kproxy::spawn(&ns, &["--manifests", EXAMPLE]);
    k.until_synced().await;
    assert_eq!(sysctl(&ns, "nf_conntrack_tcp_timeout_established"), 86_400);
    assert_eq!(sysctl(&ns, "nf_conntrack_tcp_timeout_close_wait"), 3_600);
    assert_eq!(sysctl(&ns, "nf_conntrack_udp_timeout"), udp);
    assert!(!k.log().contains("cannot set nf_"), "{}", k.log());
    k.stop();

    // Given values, and a table size above the host's, which this namespace cannot write.
    let ns = Netns::new("ctset");
    let max = sysctl(&ns, "nf_conntrack_max");
    let min = format!("--conntrack-min={}", max + 1);
    let args = [
        "--manifests",
        EXAMPLE,
        "--conntrack-tcp-timeout-established=2h",
        "--conntrack-tcp-timeout-close-wait=90s",
        "--conntrack-udp-timeout=45s",
        "--conntrack-udp-timeout-stream=100s",
        "--conntrack-tcp-be-liberal",
        &min,
    ];
    let mut k = Kproxy::spawn(&ns, &args);
    k.until_synced().await;
    for (name, want) in [
        ("nf_conntrack_tcp_timeout_established", 7_200),
        ("nf_conntrack_tcp_timeout_close_wait", 90),
        ("nf_conntrack_udp_timeout", 45),
        ("nf_conntrack_udp_timeout_stream", 100),
        ("nf_conntrack_tcp_be_liberal", 1),
        ("nf_conntrack_max", max),
    ] {
        assert_eq!(sysctl(&ns, name), want, "{name}");
    }
    let log = k.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot set nf_"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("nf_conntrack_max") && warnings[0].contains(&(max + 1).to_string()),
        "{log}"
    );
    k.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_mode_drops_invalid_forwarded_packets_unless_tcp_is_tracked_liberally() {
    if !netns::can_run("iptables_mode_drops_invalid_forwarded_packets") {
        return;
    }
    let rule = "-m conntrack --ctstate INVALID";
    for (liberal, want) in [(false, true), (true, false)] {
        let ns = Netns::new(if liberal { "ctlib" } else { "ctinv" });
        let mut args = vec!["--manifests", EXAMPLE, "--proxy-mode", "iptables"];
        if liberal {
            args.push("--conntrack-tcp-be-liberal");
        }
        let mut k = Kproxy::spawn(&ns, &args);
        k.until_synced().await;
        for save in ["iptables-save", "ip6tables-save"] {
            let saved = ns.exec(save, &["-t", "filter"]);
            let forward: Vec<&str> = saved
                .lines()
                .filter(|l| l.starts_with("-A KPROXY-FORWARD"))
                .collect();
            assert_eq!(
                forward
                    .iter()
                    .any(|l| l.contains(rule) && l.ends_with("-j DROP")),
                want,
                "liberal={liberal} {save}:\n{saved}"
            );
            assert!(
                forward
                    .last()
                    .is_some_and(|l| l.ends_with("-j KPROXY-FILTER")),
                "{saved}"
            );
            assert!(
                saved.contains(
                    "-A FORWARD -m comment --comment \"kproxy forwarding rules\" -j KPROXY-FORWARD"
                ),
                "{saved}"
            );
        }
        k.stop();
    }
}

#[test]
fn init_only_sets_up_the_node_programs_nothing_and_exits_zero() {
    if !netns::can_run("init_only_sets_up_the_node_programs_nothing") {
        return;
    }
    let ns = Netns::new("initonly");
    ns.exec(
        "sh",
        &["-c", "echo 0 > /proc/sys/net/ipv4/conf/all/route_localnet"],
    );
    let started = Instant::now();
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args([
            "--init-only",
            "--proxy-mode=iptables",
            "--conntrack-tcp-timeout-established=3h",
            // Nothing answers there: --init-only never reaches an API server.
            "--master=https://127.0.0.1:1",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run kproxy");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    println!("--init-only took {:?}", started.elapsed());
    assert!(log.contains("--init-only: the node is set up"), "{log}");
    assert_eq!(sysctl(&ns, "nf_conntrack_tcp_timeout_established"), 10_800);
    let localnet = ns.exec("cat", &["/proc/sys/net/ipv4/conf/all/route_localnet"]);
    assert_eq!(
        localnet.trim(),
        "1",
        "iptables mode's localhost NodePorts need it"
    );
    let saved = ns.exec("iptables-save", &[]);
    assert!(
        !saved.contains("KPROXY"),
        "--init-only programs no rule:\n{saved}"
    );
    let tables = ns.exec("nft", &["list", "tables"]);
    assert!(!tables.contains("kproxy"), "{tables}");
}

#[test]
fn a_kubeconfig_that_cannot_be_read_fails_before_the_host_is_touched() {
    if !netns::can_run("a_kubeconfig_that_cannot_be_read_fails") {
        return;
    }
    let ns = Netns::new("badkcfg");
    let before = sysctl(&ns, "nf_conntrack_tcp_timeout_established");
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig"])
        .stdin(Stdio::null())
        .output()
        .expect("run kproxy");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("/nonexistent/kubeconfig"), "{log}");
    assert_eq!(
        sysctl(&ns, "nf_conntrack_tcp_timeout_established"),
        before,
        "conntrack was tuned before the kubeconfig was read:\n{log}"
    );
    assert!(!log.contains("nf_conntrack"), "{log}");
}
