//! The kproxy binary's command-line contract: exit 2 with one line on bad flags, --dry-run on
//! the bundled example cluster, --cleanup, and a clean exit 0 on SIGTERM/SIGINT. Every run that
//! could program a kernel happens inside a throwaway network namespace.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;
use support::netns::{self, Netns};

fn kproxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kproxy"))
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_flag() {
    for (args, needle) in [
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["--proxy-mode", "userspace"], "--proxy-mode"),
        (vec!["--sync-period=forever"], "--sync-period"),
        (vec!["--min-sync-period", "-1s"], "--min-sync-period"),
        (vec!["--cluster-cidr", "10.0.0.0/33"], "--cluster-cidr"),
        (
            vec!["--metrics-bind-address", "nowhere:x"],
            "--metrics-bind-address",
        ),
        (vec!["--config", "/nonexistent/kproxy.yaml"], "--config"),
    ] {
        let out = kproxy().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Root-only: a dry run on a manifests directory that is missing, or that it cannot list (root
/// without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, through `setpriv`, on a mode-000
/// directory), exits non-zero at once with one line naming the directory; it waited forever.
#[test]
fn a_dry_run_on_a_manifests_directory_it_cannot_list_exits_at_once_naming_it() {
    if !netns::can_run("a_dry_run_on_a_manifests_directory_it_cannot_list") {
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let locked = parent.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let missing = parent.path().join("missing");
    for dir in [&locked, &missing] {
        let started = Instant::now();
        let mut child = Command::new("setpriv")
            .args(["--bounding-set", "-dac_override,-dac_read_search", "--"])
            .arg(env!("CARGO_BIN_EXE_kproxy"))
            .args(["--manifests", dir.to_str().unwrap()])
            .args(["--hostname-override", "node1", "--dry-run"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv kproxy");
        let Some(status) = support::exit_within(&mut child, Duration::from_secs(10)) else {
            panic!("--dry-run on {} still runs after 10 s", dir.display());
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "{}: {status} after {:?}: {stderr}",
            dir.display(),
            started.elapsed()
        );
        assert!(!status.success(), "{}: {stderr}", dir.display());
        let naming: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(dir.to_str().unwrap()))
            .collect();
        assert_eq!(naming.len(), 1, "one line names it: {stderr}");
        assert!(out.stdout.is_empty(), "no ruleset printed");
    }
}

fn dry_run(mode: &str) -> String {
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    let out = kproxy()
        .args(["--proxy-mode", mode, "--manifests", manifests])
        .args(["--hostname-override", "node1", "--dry-run"])
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
fn ipvs_dry_run_prints_the_virtual_servers_addresses_and_companion_rules() {
    let stdout = dry_run("ipvs");
    for line in [
        // ClusterIPs, UDP and TCP, with their endpoints (ipvsadm-restore syntax).
        "-A -u 10.96.0.10:53 -s rr",
        "-a -u 10.96.0.10:53 -r 10.244.1.2:53 -m -w 1",
        // ClientIP affinity as persistence, on the ClusterIP and the NodePort (on node1's
        // InternalIPs from the manifests, not this host's addresses).
        "-A -t 10.96.10.30:80 -s rr -p 600",
        "-A -t 10.0.0.11:30080 -s rr -p 600",
        // An externalIP is bound to the dummy interface and masqueraded.
        "192.0.2.50/32",
        "add element ip kproxy-ipvs external-masq { 192.0.2.50 . tcp . 8000 }",
        "table ip kproxy-ipvs {",
        "table ip6 kproxy-ipvs {",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    // eTP=Local without an endpoint on node1: a server without destinations, and a drop.
    assert!(stdout.lines().any(|l| l == "-A -t 10.0.0.11:30444 -s rr"));
    assert!(!stdout.contains("-a -t 10.0.0.11:30444 "), "{stdout}");
    assert!(stdout.contains("add element ip kproxy-ipvs dropped { 10.0.0.11 . tcp . 30444 }"));
}

#[test]
fn nftables_dry_run_prints_the_ruleset_for_the_example_cluster() {
    let stdout = dry_run("nftables");
    for needle in [
        "table ip kproxy {",
        "table ip6 kproxy {",
        // kube-dns: two ready endpoints, over UDP and TCP; the dispatch element names it.
        "10.96.0.10 . udp . 53 comment \"kube-system/kube-dns:dns\" : goto lb-2",
        "10.96.0.10 . udp . 53 . 1 : 10.244.2.2 . 53",
        // The LoadBalancer with eTP=Local and no endpoint on node1: external traffic dropped.
        "203.0.113.11 . tcp . 443 comment \"default/api:https\" : drop",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
}

/// Root-only: in a throwaway namespace holding kproxy's tables and someone else's, `--cleanup`
/// exits 0, removes kproxy's tables in both families and leaves the other table alone.
#[test]
fn cleanup_removes_kproxys_tables_and_nothing_else() {
    if !netns::can_run("cleanup_removes_kproxys_tables_and_nothing_else") {
        return;
    }
    let ns = Netns::new("cleanup");
    let mut load = ns
        .cmd("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin
        .take()
        .unwrap()
        .write_all(
            b"table ip kproxy { chain c { type nat hook output priority -100; }; }\n\
              table ip6 kproxy { set s { type ipv6_addr; }; }\n\
              table inet other { chain c { type filter hook input priority 0; }; }\n",
        )
        .unwrap();
    assert!(load.wait().unwrap().success());
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--cleanup"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = ns.exec("nft", &["list", "tables"]);
    assert_eq!(tables.trim(), "table inet other", "after --cleanup");
}

fn run_until_synced_then_signal(signal: &str) {
    if !netns::can_run("run_until_synced_then_signal") {
        return;
    }
    let ns = Netns::new("signal");
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let mut child = ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args([
            "--manifests",
            dir.path().to_str().unwrap(),
            "--hostname-override",
            "node1",
        ])
        .args(["--metrics-bind-address", &format!("127.0.0.1:{metrics}")])
        .args([
            "--healthz-bind-address",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let lines =
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(20);
    let listening =
        |ns: &Netns| ns.run(move || std::net::TcpStream::connect(("127.0.0.1", metrics)));
    while listening(&ns).is_err() {
        assert!(Instant::now() < deadline, "kproxy never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kproxy did not stop on {signal}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = lines.join().unwrap().join("\n");
    assert_eq!(exit.code(), Some(0), "{log}");
    assert!(log.contains("rules left in place"), "{log}");
}

#[test]
fn sigterm_stops_kproxy_with_exit_0_leaving_rules_in_place() {
    run_until_synced_then_signal("-TERM");
}

#[test]
fn sigint_stops_kproxy_with_exit_0() {
    run_until_synced_then_signal("-INT");
}

#[test]
fn iptables_dry_run_prints_the_restore_input_for_the_example_cluster() {
    let stdout = dry_run("iptables");
    for needle in [
        "-restore\n*nat\n",
        ":KPROXY-PORTALS - [0:0]",
        "-I PREROUTING 1 -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES",
        // kube-dns: two ready endpoints, over UDP; every rule names it.
        "-d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp --dport 53 -j KPROXY-SVC-",
        "-p udp -m comment --comment \"kube-system/kube-dns:dns\" -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.244.",
        // The LoadBalancer with eTP=Local and no endpoint on node1: external traffic dropped.
        "-d 203.0.113.11/32 -p tcp -m comment --comment \"default/api:https loadbalancer IP\" -m tcp --dport 443 -j DROP",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
}

/// Root-only: both iptables variants' `-restore --test` accept the iptables --dry-run output,
/// family by family, inside a throwaway network namespace.
#[test]
fn iptables_dry_run_output_is_accepted_by_iptables_restore_test() {
    if !netns::can_run("iptables_dry_run_output_is_accepted_by_iptables_restore_test") {
        return;
    }
    let stdout = dry_run("iptables");
    let ns = Netns::new("ipt");
    let mut parts = stdout.split("\n# ").skip(1);
    for family in ["iptables", "ip6tables"] {
        let part = parts.next().expect("one part per family");
        let input = format!("{}\n", part.split_once('\n').unwrap().1.trim_end());
        for variant in ["nft", "legacy"] {
            let program = format!("{family}-{variant}-restore");
            let mut check = ns
                .cmd(&program)
                .args(["--noflush", "--test"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            check
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let result = check.wait_with_output().unwrap();
            assert!(
                result.status.success(),
                "{program} --test rejected the dry-run output: {}\n{input}",
                String::from_utf8_lossy(&result.stderr)
            );
        }
    }
}

/// Root-only: `nft -c -f -` (check, do not apply) accepts the nftables --dry-run output, inside
/// a throwaway network namespace. Without root or nft it skips, except under CI=true.
#[test]
fn nftables_dry_run_output_is_accepted_by_nft_check() {
    if !netns::can_run("nftables_dry_run_output_is_accepted_by_nft_check") {
        return;
    }
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    let out = kproxy()
        .args(["--proxy-mode", "nftables", "--manifests", manifests])
        .args(["--hostname-override", "node1", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ns = Netns::new("cli");
    let mut check = ns
        .cmd("nft")
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let result = check.wait_with_output().unwrap();
    assert!(
        result.status.success(),
        "nft -c rejected the dry-run output: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Logs written to a pipe carry no ANSI colour, whatever NO_COLOR says; an error prints each of
/// its causes once (kube's kubeconfig error and kproxy's both include the file system's).
#[test]
fn an_error_names_each_cause_once_and_logs_to_a_pipe_have_no_colour() {
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    let logged = kproxy()
        .args(["--manifests", manifests, "--hostname-override", "node1"])
        .args(["--dry-run", "-v", "4"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&logged.stderr);
    assert!(logged.status.success(), "{stderr}");
    assert!(stderr.contains(" INFO "), "some log lines: {stderr}");
    assert!(!stderr.contains('\x1b'), "no escape sequence: {stderr:?}");

    // --dry-run: nothing on the node is touched before the kubeconfig is read.
    let out = kproxy()
        .args(["--dry-run", "--kubeconfig", "/nonexistent/kubeconfig"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kproxy: ") && last.contains("/nonexistent/kubeconfig"),
        "{stderr}"
    );
    assert_eq!(
        last.matches("No such file or directory").count(),
        1,
        "the cause once: {last}"
    );
}

#[test]
fn version_names_the_version_commit_build_date_and_compiler() {
    let out = kproxy().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let prefix = concat!("kproxy ", env!("CARGO_PKG_VERSION"), " (commit ");
    let rest = text
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{text}"));
    let (commit, rest) = rest.split_once(", ").unwrap_or_else(|| panic!("{text}"));
    assert!(
        commit == "unknown" || commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{text}"
    );
    let built = rest
        .trim_start_matches("dirty, ")
        .strip_prefix("built ")
        .unwrap_or_else(|| panic!("{text}"));
    // 2026-12-07T15:00:00Z, then the compiler.
    assert_eq!(&built[4..5], "-", "{text}");
    assert_eq!(&built[19..22], "Z, ", "{text}");
    assert!(built[22..].starts_with("rustc "), "{text}");
    assert!(text.ends_with(")\n"), "{text:?}");
}

/// Root-only (to drop to an unprivileged user): a dry run as nobody, in every mode, warns about
/// nothing it never uses (libnftables, nf_tables change monitors).
#[test]
fn an_unprivileged_dry_run_warns_about_nothing_it_does_not_use() {
    if !netns::can_run("an_unprivileged_dry_run_warns_about_nothing_it_does_not_use") {
        return;
    }
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    for mode in ["nftables", "iptables", "ipvs"] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_kproxy"))
            .args(["--proxy-mode", mode, "--manifests", manifests])
            .args(["--hostname-override", "node1", "--dry-run"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        assert!(!out.stdout.is_empty(), "{mode}");
        let warned: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains("libnftables"))
            .collect();
        assert!(warned.is_empty(), "{mode}: {warned:?}");
    }
}
