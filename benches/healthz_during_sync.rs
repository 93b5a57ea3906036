//! `/healthz` and `/metrics` latency while kproxy runs a long kernel sync: the real binary in
//! iptables-legacy mode loads 10,000 Services × 10 endpoints (one `iptables-legacy-restore` of
//! several seconds) in a throwaway network namespace, pinned to one CPU (`taskset -c 0`, so the
//! async runtime has a single worker, as a node's kube-proxy with a one-CPU limit has); a
//! client polls `/healthz` every 10 ms from the start until the first sync is done and reports
//! the slowest answer and the 99th percentile. The kernel work runs on a blocking thread, so
//! the answers do not wait for the restore.
//!
//! Invariants: root only (without root the bench says why and does nothing; a failure under
//! CI=true); nothing leaves the namespace, deleted on drop. Without `--bench` it runs 500
//! Services once, which still checks every step.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::http::get;
use support::netns::Netns;
use support::{manifests, timings};

const BENCH: &str = "healthz during sync bench";

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let Some(_ns) = Netns::enter(BENCH) else {
        return;
    };
    for tool in ["iptables-legacy-restore", "taskset"] {
        if !support::netns::have(BENCH, tool) {
            return;
        }
    }
    let n = if bench { 10_000 } else { 500 };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    std::fs::create_dir(&cluster).expect("cluster dir");
    manifests::write_cluster(&cluster, n, 10, &[], "192.168.0.2");
    let log = std::fs::File::create(dir.path().join("kproxy.log")).expect("log");
    let started = Instant::now();
    let cpus = std::env::var("KPROXY_BENCH_CPUS").unwrap_or_else(|_| "0".into());
    let mut child = Command::new("taskset")
        .args(["-c", &cpus])
        .arg(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--proxy-mode", "iptables", "--iptables-variant", "legacy"])
        .args([
            "--hostname-override",
            support::NODE,
            "--min-sync-period",
            "0s",
        ])
        .arg("--manifests")
        .arg(&cluster)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn kproxy");
    let healthz: SocketAddr = "127.0.0.1:10256".parse().expect("static");
    let metrics: SocketAddr = "127.0.0.1:10249".parse().expect("static");
    let mut answers: Vec<Duration> = Vec::new();
    // (when, how long) of every answer slower than 100 ms.
    let mut slow: Vec<(Duration, Duration)> = Vec::new();
    let synced = loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "kproxy exited; log in {}",
            dir.path().display()
        );
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no sync in 600 s"
        );
        let t = Instant::now();
        if get(healthz, "/healthz").is_ok() {
            answers.push(t.elapsed());
            if t.elapsed() > Duration::from_millis(100) {
                slow.push((t - started, t.elapsed()));
            }
        }
        if get(metrics, "/metrics").is_ok_and(|m| {
            m.lines()
                .filter_map(|l| {
                    l.strip_prefix(
                        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} ",
                    )
                })
                .any(|v| v.trim().parse::<f64>().is_ok_and(|v| v > 0.0))
        }) {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.kill();
    let _ = child.wait();
    answers.sort();
    assert!(!answers.is_empty(), "/healthz never answered");
    let max = answers[answers.len() - 1];
    let p99 = answers[(answers.len() * 99 / 100).min(answers.len() - 1)];
    println!(
        "/healthz during the first sync of {n} Services × 10 endpoints (iptables-legacy, CPUs {cpus}): \
         {} answers, p99 {p99:.2?}, slowest {max:.2?}; first sync done {synced:.2?} after start",
        answers.len()
    );
    if std::env::var_os("KPROXY_BENCH_KEEP_LOG").is_some() {
        let kept = dir.keep();
        println!("kproxy's log: {}", kept.join("kproxy.log").display());
    }
    for (at, took) in &slow {
        println!("  slow answer at {at:.2?} after start: {took:.2?}");
    }
    timings::record(
        &format!("healthz_during_sync/iptables_legacy_{n}/slowest"),
        max,
    );
    timings::report();
}
