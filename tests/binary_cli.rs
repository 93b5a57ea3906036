//! The kproxy binary's command-line contract: exit 2 with one line on bad flags, --dry-run on
//! the bundled example cluster, --cleanup, and a clean exit 0 on SIGTERM/SIGINT.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;

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

#[test]
fn dry_run_on_the_example_cluster_prints_every_service_port_and_exits_0() {
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    let out = kproxy()
        .args(["--proxy-mode", "nftables", "--manifests", manifests])
        .args(["--hostname-override", "node1", "--dry-run"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "kube-system/kube-dns:dns/UDP ClusterIP clusterIPs 10.96.0.10 port 53",
        "default/shop:http/TCP NodePort clusterIPs 10.96.10.30 port 80 nodePort 30080 affinity ClientIP 600s",
        "default/legacy:http/TCP ClusterIP clusterIPs 10.96.10.50 port 8000 externalIP 192.0.2.50",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    // eTP=Local without an endpoint on node1 drops external traffic.
    assert!(stdout.contains("default/api:https/TCP"), "{stdout}");
    let api = stdout.split("default/api:https/TCP").nth(1).unwrap();
    assert!(
        api.lines().nth(2).unwrap().contains("external: drop"),
        "{api}"
    );
}

#[test]
fn cleanup_exits_0() {
    let out = kproxy().args(["--cleanup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_until_synced_then_signal(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let mut child = kproxy()
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
    while std::net::TcpStream::connect(("127.0.0.1", metrics)).is_err() {
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
