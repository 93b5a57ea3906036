//! kproxy removes its other modes' leftovers and nothing else: at start-up in nftables mode
//! (`KPROXY-*` iptables chains in iptables-nft and iptables-legacy, IPv4 and IPv6, `KPROXY-*`
//! ipsets) and with --cleanup (also its nftables tables); `--cleanup --dry-run` and
//! `--cleanup-kube-proxy --dry-run` list what they would remove and remove nothing. Root only,
//! inside a throwaway network namespace; upstream's `KUBE-*` chains and another table stay.

mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::netns::{self, Netns};

const RULES: &str = "*nat
:KPROXY-SERVICES - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -j KPROXY-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KPROXY-SERVICES -p tcp -d 10.96.0.1 --dport 443 -j DNAT --to-destination 10.0.0.1:6443
COMMIT
";

const RULES6: &str = "*filter
:KPROXY-FIREWALL - [0:0]
-A INPUT -j KPROXY-FIREWALL
COMMIT
";

fn restore(ns: &Netns, program: &str, input: &str) {
    let mut child = ns
        .cmd(program)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "{program}");
}

/// Runs `kproxy FLAG` in `ns` to completion; panics with its stderr unless it exits 0.
fn run_kproxy(ns: &Netns, flag: &str) {
    kproxy_stdout(ns, &[flag]);
}

/// Plants kproxy leftovers of every kind, plus upstream's chain, in `ns`.
fn plant(ns: &Netns) {
    restore(ns, "iptables-nft-restore", RULES);
    restore(ns, "iptables-legacy-restore", RULES);
    restore(ns, "ip6tables-nft-restore", RULES6);
    ns.exec(
        "ipset",
        &["create", "KPROXY-LB-SOURCES", "hash:ip,port,net"],
    );
    ns.exec("ipset", &["create", "KUBE-LOOP-BACK", "hash:ip,port,ip"]);
}

/// Every iptables chain name in every variant and family, one list.
fn chains(ns: &Netns) -> String {
    [
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
    ]
    .iter()
    .map(|p| ns.exec(p, &[]))
    .flat_map(|s| {
        s.lines()
            .filter(|l| l.starts_with(':'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    })
    .collect::<Vec<_>>()
    .join("\n")
}

fn assert_only_upstream_left(ns: &Netns) {
    let chains = chains(ns);
    assert!(!chains.contains("KPROXY"), "{chains}");
    assert!(
        chains.contains("KUBE-SERVICES"),
        "upstream's chain must stay: {chains}"
    );
    let sets = ns.exec("ipset", &["list", "-n"]);
    assert_eq!(sets.trim(), "KUBE-LOOP-BACK");
}

#[test]
fn starting_in_nftables_mode_removes_kproxys_iptables_and_ipset_leftovers_only() {
    if !netns::can_run(
        "starting_in_nftables_mode_removes_kproxys_iptables_and_ipset_leftovers_only",
    ) {
        return;
    }
    let ns = Netns::new("leftovers");
    plant(&ns);
    assert!(chains(&ns).contains("KPROXY-SERVICES"));
    let dir = tempfile::tempdir().unwrap();
    let mut kproxy = support::Kproxy::spawn(&ns, &["--manifests", dir.path().to_str().unwrap()]);
    let start = Instant::now();
    loop {
        kproxy.assert_running();
        let tables = ns.exec("nft", &["list", "tables"]);
        if tables.contains("table ip kproxy") && !chains(&ns).contains("KPROXY") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "leftovers still there: {}",
            chains(&ns)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "start -> leftovers removed and kproxy's tables loaded: {:?}",
        start.elapsed()
    );
    assert_only_upstream_left(&ns);
}

#[test]
fn cleanup_removes_every_mode_s_objects_and_leaves_upstream_s() {
    if !netns::can_run("cleanup_removes_every_mode_s_objects_and_leaves_upstream_s") {
        return;
    }
    let ns = Netns::new("cleanup-all");
    plant(&ns);
    run_kproxy(&ns, "--cleanup");
    assert_only_upstream_left(&ns);
}

/// Upstream kube-proxy's objects of every kind (iptables mode's chains with their jumps, IPVS
/// mode's nat KUBE-FIREWALL, the nftables mode's table, an ipset), the kubelet's chains, and
/// one of kproxy's chains.
const UPSTREAM: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KPROXY-SERVICES - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A PREROUTING -j KPROXY-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp --dport 443 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP -j KUBE-SEP-ABCDEFGHIJKLMNOP
-A KUBE-SEP-ABCDEFGHIJKLMNOP -p tcp -j DNAT --to-destination 10.0.0.1:6443
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
*filter
:KUBE-FORWARD - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A FORWARD -j KUBE-FORWARD
-A INPUT -j KUBE-FIREWALL
COMMIT
";

#[test]
fn cleanup_kube_proxy_removes_upstreams_objects_and_leaves_the_kubelets_and_kproxys() {
    if !netns::can_run(
        "cleanup_kube_proxy_removes_upstreams_objects_and_leaves_the_kubelets_and_kproxys",
    ) {
        return;
    }
    let ns = Netns::new("cleanup-kp");
    restore(&ns, "iptables-nft-restore", UPSTREAM);
    restore(&ns, "iptables-legacy-restore", UPSTREAM);
    ns.exec("nft", &["add", "table", "ip", "kube-proxy"]);
    ns.exec("nft", &["add", "table", "ip6", "kube-proxy"]);
    ns.exec("nft", &["add", "table", "ip", "other"]);
    ns.exec("ipset", &["create", "KUBE-LOOP-BACK", "hash:ip,port,ip"]);
    run_kproxy(&ns, "--cleanup-kube-proxy");
    for save in ["iptables-nft-save", "iptables-legacy-save"] {
        let text = ns.exec(save, &[]);
        let mut chains: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split_whitespace().next().unwrap())
            .filter(|c| c.starts_with("KUBE-") || c.starts_with("KPROXY-"))
            .collect();
        chains.sort();
        // nat: the kubelet's canary and kproxy's chain; filter: the kubelet's two.
        assert_eq!(
            chains,
            [
                "KPROXY-SERVICES",
                "KUBE-FIREWALL",
                "KUBE-KUBELET-CANARY",
                "KUBE-KUBELET-CANARY"
            ],
            "{save}:\n{text}"
        );
        assert!(
            text.contains("-A INPUT -j KUBE-FIREWALL"),
            "{save}:\n{text}"
        );
        assert!(
            text.contains("-A PREROUTING -j KPROXY-SERVICES"),
            "{save}:\n{text}"
        );
        assert!(!text.contains("-j KUBE-SERVICES"), "{save}:\n{text}");
    }
    let tables = ns.exec("nft", &["list", "tables"]);
    assert!(!tables.contains("kube-proxy"), "{tables}");
    assert!(tables.contains("table ip other"), "{tables}");
    assert_eq!(ns.exec("ipset", &["list", "-n"]).trim(), "");
}

/// Runs `kproxy ARGS` in `ns` to completion; its stdout, or a panic with its stderr unless it
/// exits 0.
fn kproxy_stdout(ns: &Netns, args: &[&str]) -> String {
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cleanup_dry_run_lists_every_mode_s_objects_and_removes_none() {
    if !netns::can_run("cleanup_dry_run_lists_every_mode_s_objects_and_removes_none") {
        return;
    }
    let ns = Netns::new("cleanup-dry");
    plant(&ns);
    ns.exec("nft", &["add", "table", "ip", "kproxy"]);
    ns.exec("nft", &["add", "table", "ip", "other"]);
    let before = (chains(&ns), ns.exec("nft", &["list", "tables"]));
    let listed = kproxy_stdout(&ns, &["--cleanup", "--dry-run"]);
    println!("{listed}");
    for line in [
        "nftables table ip kproxy (0 chains, 0 sets and maps)",
        "iptables-nft nat: rule -A PREROUTING -j KPROXY-SERVICES",
        "iptables-nft nat: chain KPROXY-SERVICES",
        "iptables-legacy nat: chain KPROXY-SERVICES",
        "ip6tables-nft filter: rule -A INPUT -j KPROXY-FIREWALL",
        "ip6tables-nft filter: chain KPROXY-FIREWALL",
        "ipset KPROXY-LB-SOURCES",
    ] {
        assert!(listed.lines().any(|l| l == line), "{line:?} in\n{listed}");
    }
    assert!(
        !listed.contains("KUBE-") && !listed.contains("other"),
        "{listed}"
    );
    assert_eq!((chains(&ns), ns.exec("nft", &["list", "tables"])), before);
    assert!(
        ns.exec("ipset", &["list", "-n"])
            .contains("KPROXY-LB-SOURCES")
    );
    // The real thing removes what was listed; a second listing finds nothing.
    run_kproxy(&ns, "--cleanup");
    assert_only_upstream_left(&ns);
    let again = kproxy_stdout(&ns, &["--cleanup", "--dry-run"]);
    assert_eq!(again, "# --cleanup --dry-run: nothing to remove\n");
}

#[test]
fn cleanup_kube_proxy_dry_run_lists_upstreams_objects_and_removes_none() {
    if !netns::can_run("cleanup_kube_proxy_dry_run_lists_upstreams_objects_and_removes_none") {
        return;
    }
    let ns = Netns::new("cleanup-kp-dry");
    restore(&ns, "iptables-nft-restore", UPSTREAM);
    ns.exec("nft", &["add", "table", "ip", "kube-proxy"]);
    ns.exec("ipset", &["create", "KUBE-LOOP-BACK", "hash:ip,port,ip"]);
    let before = ns.exec("iptables-nft-save", &[]);
    let listed = kproxy_stdout(&ns, &["--cleanup-kube-proxy", "--dry-run"]);
    println!("{listed}");
    for line in [
        "iptables-nft nat: rule -A PREROUTING -j KUBE-SERVICES",
        "iptables-nft nat: chain KUBE-SVC-ABCDEFGHIJKLMNOP",
        "iptables-nft filter: chain KUBE-FORWARD",
        "nftables table ip kube-proxy",
        "ipset KUBE-LOOP-BACK",
    ] {
        assert!(listed.lines().any(|l| l == line), "{line:?} in\n{listed}");
    }
    // Never the kubelet's or kproxy's.
    assert!(!listed.contains("KUBE-KUBELET-CANARY"), "{listed}");
    assert!(!listed.contains("filter: chain KUBE-FIREWALL"), "{listed}");
    assert!(!listed.contains("KPROXY-"), "{listed}");
    let after = ns.exec("iptables-nft-save", &[]);
    let rules = |save: &str| -> Vec<String> {
        save.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(rules(&after), rules(&before));
    assert!(ns.exec("nft", &["list", "tables"]).contains("kube-proxy"));
    assert_eq!(ns.exec("ipset", &["list", "-n"]).trim(), "KUBE-LOOP-BACK");
}
