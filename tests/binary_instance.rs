//! One kproxy per network namespace, and signals: a second daemon in the namespace of a running
//! one exits at once, non-zero, naming the first's pid in one line, while one in another
//! namespace runs; SIGHUP is logged once and ignored, and SIGTERM still stops kproxy with 0.
//! Root only, inside throwaway network namespaces, on the bundled example manifests.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::Kproxy;
use support::netns::{self, Netns};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_kproxy_in_one_network_namespace_exits_at_once_naming_the_first() {
    if !netns::can_run("a_second_kproxy_in_one_network_namespace_exits") {
        return;
    }
    let (ns, other) = (Netns::new("one"), Netns::new("other"));
    let mut first = Kproxy::spawn(&ns, &["--manifests", EXAMPLE]);
    first.until_synced().await;
    // Other ports than the first's, so only the lock can stop it.
    let started = Instant::now();
    let mut second = ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--manifests", EXAMPLE, "--hostname-override", "node1"])
        .args(["--metrics-bind-address", "127.0.0.1:10250"])
        .args(["--healthz-bind-address", "127.0.0.1:10257"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second kproxy");
    let Some(status) = support::exit_within(&mut second, Duration::from_secs(10)) else {
        panic!("the second kproxy still runs after 10 s");
    };
    let out = second.wait_with_output().expect("its output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "second kproxy exited after {:?} with {status}: {stderr}",
        started.elapsed()
    );
    assert!(!status.success(), "it must fail: {stderr}");
    let naming = format!("another kproxy (pid {})", first.pid());
    assert_eq!(
        stderr.matches(&naming).count(),
        1,
        "one line naming the first: {stderr}"
    );
    assert!(
        !stderr.contains("kproxy started"),
        "it started nothing: {stderr}"
    );
    first.assert_running();
    // The lock is the namespace's: a kproxy in another one runs beside the first.
    let mut beside = Kproxy::spawn(&other, &["--manifests", EXAMPLE]);
    beside.until_synced().await;
    assert!(first.stop().success());
    assert!(beside.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_logged_once_and_ignored_and_sigterm_still_stops_kproxy() {
    if !netns::can_run("sighup_is_logged_once_and_ignored") {
        return;
    }
    let ns = Netns::new("hup");
    let mut k = Kproxy::spawn(&ns, &["--manifests", EXAMPLE]);
    k.until_synced().await;
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    let rc = unsafe { libc::kill(k.pid() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0, "SIGHUP: {}", std::io::Error::last_os_error());
    let line = "SIGHUP: ignored";
    support::eventually("the SIGHUP log line", Duration::from_secs(10), || {
        let log = k.log();
        async move {
            match log.matches(line).count() {
                1 => Ok(()),
                n => Err(format!("{n} lines saying {line:?}")),
            }
        }
    })
    .await;
    // Still serving: it answers and syncs again.
    k.until_synced().await;
    k.assert_running();
    let status = k.stop();
    assert!(status.success(), "SIGTERM after SIGHUP: {status}");
    assert_eq!(k.log().matches(line).count(), 1, "{}", k.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_first_sync_exits_zero_at_once() {
    if !netns::can_run("sigterm_during_a_long_first_sync") {
        return;
    }
    use support::objects::{node, service, slice};
    let ns = Netns::new("st");
    let dir = tempfile::tempdir().unwrap();
    // 3,000 Services: the first sync through iptables-restore takes seconds.
    let mut docs = vec![node("node1", "192.168.0.1").to_string()];
    for i in 0..3000u32 {
        let (a, b) = (i / 250, i % 250);
        let name = format!("s{i}");
        docs.push(service("default", &name, &format!("10.96.{a}.{b}"), 80).to_string());
        let ips: Vec<String> = (1..=5).map(|e| format!("10.1{e}.{a}.{b}")).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        docs.push(slice("default", &format!("{name}-1"), &name, &ips, 8080).to_string());
    }
    std::fs::write(dir.path().join("all.yaml"), docs.join("\n---\n")).unwrap();
    let args = [
        "--manifests",
        dir.path().to_str().unwrap(),
        "--proxy-mode",
        "iptables",
        "--iptables-variant",
        "nft",
    ];
    let mut k = Kproxy::spawn(&ns, &args);
    // Mid-sync: kproxy's iptables-restore child is running.
    let started = Instant::now();
    while !restoring(k.pid()) {
        k.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never saw the first sync's restore; log:\n{}",
            k.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let loaded = started.elapsed();
    let stopping = Instant::now();
    let status = k.stop();
    let took = stopping.elapsed();
    println!(
        "restore running after {loaded:?}; SIGTERM during the first sync -> exit {status} after {took:?} (requirement: 2 s)"
    );
    assert!(status.success(), "SIGTERM during a sync: {status}");
}

/// Whether a child of `pid` is an iptables restore (comm `iptables-nft-re`, `xtables-nft-mul`).
fn restoring(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.split_whitespace().any(|child| {
            std::fs::read_to_string(format!("/proc/{child}/comm"))
                .is_ok_and(|comm| comm.contains("tables"))
        })
    })
}

fn oom_score_adj(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether process `pid` has CAP_SYS_RESOURCE (bit 24 of CapEff), which lowering needs.
fn may_lower_oom_score(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sets_its_oom_score_adjustment_to_upstreams_default_or_the_flags() {
    if !netns::can_run("the_daemon_sets_its_oom_score_adjustment") {
        return;
    }
    for (args, want) in [(&[][..], "-999"), (&["--oom-score-adj", "500"][..], "500")] {
        let ns = Netns::new("oom");
        let mut all = vec!["--manifests", EXAMPLE];
        all.extend_from_slice(args);
        let mut k = Kproxy::spawn(&ns, &all);
        k.until_synced().await;
        let (got, log) = (oom_score_adj(k.pid()), k.log());
        let refused = "cannot set /proc/self/oom_score_adj";
        if want.starts_with('-') && !may_lower_oom_score(k.pid()) {
            // Lowering needs CAP_SYS_RESOURCE (a container without it): one line, and on.
            assert_ne!(got, want, "{args:?}");
            assert_eq!(log.matches(refused).count(), 1, "{log}");
            println!("no CAP_SYS_RESOURCE here: -999 refused, as the log says");
        } else {
            assert_eq!(got, want, "{args:?}; log:\n{log}");
            assert!(!log.contains(refused), "{log}");
        }
        k.assert_running();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_health_port_is_retried_every_5_s_unless_bind_address_hard_fail() {
    if !netns::can_run("a_busy_health_port_is_retried") {
        return;
    }
    // Someone (an upstream kube-proxy not yet stopped, say) holds the health port.
    let ns = Netns::new("busy");
    let holder = ns.run(|| std::net::TcpListener::bind("127.0.0.1:10256").expect("hold 10256"));
    let mut k = Kproxy::spawn(&ns, &["--manifests", EXAMPLE]);
    k.until_synced().await;
    let refused = "cannot bind; retrying every 5 s";
    assert_eq!(k.log().matches(refused).count(), 1, "{}", k.log());
    let freed = Instant::now();
    drop(holder);
    support::eventually(
        "/healthz once the port is free",
        Duration::from_secs(30),
        || {
            let (netns, addr) = (k.netns.clone(), k.healthz);
            async move {
                match support::http_get_in(netns.as_deref(), addr, "/healthz").await {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    println!("health port freed -> served in {:?}", freed.elapsed());
    k.assert_running();

    // With --bind-address-hard-fail: exit non-zero at once, naming the address, before any sync.
    let ns = Netns::new("hard");
    let _holder = ns.run(|| std::net::TcpListener::bind("127.0.0.1:10256").expect("hold 10256"));
    let mut k = Kproxy::spawn(&ns, &["--manifests", EXAMPLE, "--bind-address-hard-fail"]);
    let status = k.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "{status}");
    let log = k.log();
    assert!(log.contains("127.0.0.1:10256"), "{log}");
    assert!(!log.contains(refused), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_mode_programs_the_masquerade_bit_of_its_config_section() {
    if !netns::can_run("nftables_mode_programs_the_masquerade_bit") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: nftables\nnftables:\n  masqueradeBit: 5\n",
    )
    .expect("write the config");
    let ns = Netns::new("mbit");
    let config = config.display().to_string();
    let mut k = Kproxy::spawn(&ns, &["--manifests", EXAMPLE, "--config", &config]);
    k.until_synced().await;
    for (chain, want) in [
        (
            "mark-for-masquerade",
            "meta mark set meta mark | 0x00000020",
        ),
        (
            "masquerading",
            "meta mark & 0x00000020 == 0x00000000 return",
        ),
    ] {
        let listed = ns.exec("nft", &["list", "chain", "ip", "kproxy", chain]);
        assert!(listed.contains(want), "{chain}: {listed}");
        assert!(!listed.contains("0x00004000"), "{chain}: {listed}");
    }
    k.assert_running();
}
