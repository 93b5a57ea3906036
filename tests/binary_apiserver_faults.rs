//! The real kproxy binary (nftables mode, in a network namespace) against a failing test API
//! server, with the kernel's own change notifications (`nft monitor`) as the witness that no rule
//! of a Service still present is ever removed: an outage of minutes, a resource answering 403,
//! and 50,000 Services listed in pages then relisted.

mod support;

use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use kproxy::nftables::monitor::{Kind, Monitor, Touched};
use kproxy::watch::Kind as Watched;
use support::apiserver::ApiServer;
use support::netns::{self, Netns};
use support::objects::{node, service, slice};
use support::{Kproxy, endpoint_ips, eventually, expect_eq, service_ports};

const WAIT: Duration = Duration::from_secs(30);

fn port(name: &str) -> String {
    format!("default/{name}:http/TCP")
}

/// `nft monitor` in the namespace, its output collected in a file; killed on drop.
struct NftMonitor {
    child: Child,
    out: tempfile::NamedTempFile,
}

impl NftMonitor {
    /// Starts it and waits until it reports a probe table, so nothing after is missed.
    async fn start(ns: &Netns) -> NftMonitor {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        // nft's stdout to a file is block-buffered: stdbuf makes it line-buffered.
        let append = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(out.path())
                .expect("open the monitor's output")
        };
        let child = ns
            .cmd("stdbuf")
            .args(["-oL", "nft", "monitor"])
            .stdout(append())
            .stderr(append())
            .spawn()
            .expect("nft monitor");
        let monitor = NftMonitor { child, out };
        // Until it has subscribed, it misses the probe: add and delete it until it is seen.
        eventually("nft monitor running", WAIT, || async {
            ns.exec("nft", &["add", "table", "inet", "monitor_probe"]);
            ns.exec("nft", &["delete", "table", "inet", "monitor_probe"]);
            let text = monitor.text();
            match text.contains("monitor_probe") {
                true => Ok(()),
                false => Err(format!("not yet: {}", &text[..text.len().min(500)])),
            }
        })
        .await;
        monitor
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let _ = self.out.reopen().and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Lines that remove something of kproxy's (elements, rules, chains, sets, tables, flushes).
    fn removals(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.starts_with("delete") || l.starts_with("flush"))
            .filter(|l| !l.contains("monitor_probe"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server has recorded at least `n` requests for `kind` (lists and watches).
async fn at_least_requests(server: &ApiServer, kind: Watched, n: usize) {
    eventually(&format!("{n} {kind:?} requests"), WAIT, || async {
        match server.requests_for(kind).len() {
            got if got >= n => Ok(()),
            got => Err(format!("{got} so far")),
        }
    })
    .await;
}

fn warnings_about(log: &str, kind: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains("watch") && l.contains(kind))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_minutes_keeps_every_rule_and_catches_up_by_a_diff() {
    if !netns::can_run("an_outage_of_minutes_keeps_every_rule_and_catches_up_by_a_diff") {
        return;
    }
    const OUTAGE: Duration = Duration::from_secs(90);
    let ns = Netns::new("outage");
    let mut server = ApiServer::start_in(Some(&ns.name)).await;
    for (name, vip, ep) in [
        ("a", "10.96.0.1", "10.0.1.1"),
        ("b", "10.96.0.2", "10.0.2.1"),
        ("c", "10.96.0.3", "10.0.3.1"),
    ] {
        server.apply(service("default", name, vip, 80));
        server.apply(slice("default", &format!("{name}-1"), name, &[ep], 8080));
    }
    server.apply(node("node1", "192.168.0.1"));
    let mut kproxy = Kproxy::spawn(
        &ns,
        &["--master", &server.url(), "--proxy-mode", "nftables"],
    );
    kproxy
        .until("the initial list", WAIT, |s, _| {
            expect_eq(service_ports(s), vec![port("a"), port("b"), port("c")]).map(drop)
        })
        .await;
    let monitor = NftMonitor::start(&ns).await;

    // Down for minutes, the history compacted meanwhile (etcd compacts every 5 minutes): b's
    // endpoint moves, c goes, e comes.
    server.stop().await;
    server.apply(slice("default", "b-1", "b", &["10.0.2.2"], 8080));
    server.delete(Watched::Services, "default", "c");
    server.delete(Watched::EndpointSlices, "default", "c-1");
    server.apply(service("default", "e", "10.96.0.5", 80));
    server.apply(slice("default", "e-1", "e", &["10.0.5.1"], 8080));
    server.compact();
    let down = Instant::now();
    let mut checks = 0;
    while down.elapsed() < OUTAGE {
        let (code, _) = kproxy.get("/healthz").await.expect("/healthz answers");
        assert_eq!(
            code, 200,
            "nothing queued while the API server is away: healthy"
        );
        kproxy.assert_running();
        checks += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(
        monitor.removals().is_empty(),
        "nothing removed during the outage: {:?}",
        monitor.removals()
    );
    let log = kproxy.log();
    for kind in ["Services", "EndpointSlices", "Nodes"] {
        let n = warnings_about(&log, kind);
        assert!(
            (1..=2).contains(&n),
            "{kind}: one warning, one reminder a minute, not one a retry ({n}):\n{log}"
        );
    }

    let back = Instant::now();
    server.resume().await;
    let (state, _) = kproxy
        .until(
            "caught up after the outage",
            Duration::from_secs(90),
            |s, _| {
                expect_eq(service_ports(s), vec![port("a"), port("b"), port("e")])?;
                expect_eq(endpoint_ips(s, &port("b")), vec!["10.0.2.2".to_string()]).map(drop)
            },
        )
        .await;
    println!(
        "API server down {:?} ({checks} health checks, all 200); back -> caught up in {:?}",
        down.elapsed() - back.elapsed(),
        back.elapsed()
    );
    assert_eq!(endpoint_ips(&state, &port("a")), ["10.0.1.1"]);
    let removals = monitor.removals();
    assert!(
        !removals
            .iter()
            .any(|l| l.contains("10.96.0.1 ") || l.contains("10.0.1.1")),
        "nothing of a (unchanged) removed: {removals:?}"
    );
    assert!(
        removals.iter().any(|l| l.contains("10.96.0.3 ")),
        "c's dispatch removed: {removals:?}"
    );
    assert!(
        kproxy.log().contains("receiving again"),
        "the end of the outage is told"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_resource_is_warned_about_once_and_the_others_are_still_served() {
    if !netns::can_run("a_forbidden_resource_is_warned_about_once_and_the_others_are_still_served")
    {
        return;
    }
    let ns = Netns::new("forbid");
    let server = ApiServer::start_in(Some(&ns.name)).await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(slice("default", "a-1", "a", &["10.0.1.1"], 8080));
    server.apply(node("node1", "192.168.0.1"));
    server.forbid(Watched::Nodes, true);
    let mut kproxy = Kproxy::spawn(
        &ns,
        &["--master", &server.url(), "--proxy-mode", "nftables"],
    );
    kproxy
        .until("a served without its Node", WAIT, |s, _| {
            expect_eq(endpoint_ips(s, &port("a")), vec!["10.0.1.1".to_string()]).map(drop)
        })
        .await;
    // Three refusals at least (0.8 s, then 1.6 s apart): one warning, naming what to check.
    at_least_requests(&server, Watched::Nodes, 3).await;
    let log = kproxy.log();
    assert_eq!(warnings_about(&log, "Nodes"), 1, "{log}");
    assert!(
        log.contains("RBAC"),
        "the warning says what to check:\n{log}"
    );
    assert!(
        log.contains("forbidden"),
        "and the API server's own words:\n{log}"
    );

    // EndpointSlices refused while running: a's endpoints stay; Services still flow.
    let monitor = NftMonitor::start(&ns).await;
    server.forbid(Watched::EndpointSlices, true);
    at_least_requests(&server, Watched::EndpointSlices, 3).await;
    server.apply(slice("default", "a-1", "a", &["10.0.1.2"], 8080));
    server.apply(service("default", "b", "10.96.0.2", 80));
    let (state, _) = kproxy
        .until("b served while slices are refused", WAIT, |s, _| {
            expect_eq(service_ports(s), vec![port("a"), port("b")]).map(drop)
        })
        .await;
    assert_eq!(
        endpoint_ips(&state, &port("a")),
        ["10.0.1.1"],
        "kept as last seen"
    );
    assert!(
        monitor.removals().is_empty(),
        "nothing removed while refused: {:?}",
        monitor.removals()
    );

    server.forbid(Watched::EndpointSlices, false);
    let t = Instant::now();
    kproxy
        .until("slices read again", WAIT, |s, _| {
            expect_eq(endpoint_ips(s, &port("a")), vec!["10.0.1.2".to_string()]).map(drop)
        })
        .await;
    println!(
        "403 lifted -> EndpointSlices read again in {:?}",
        t.elapsed()
    );
}

/// The ClusterIP and endpoint of the `i`th of many Services.
fn nth(i: usize) -> (String, String, String) {
    (
        format!("s{i:05}"),
        format!("10.96.{}.{}", i / 250, 1 + i % 250),
        format!("10.100.{}.{}", i / 250, 1 + i % 250),
    )
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn dispatch_elements(ns: &Netns) -> usize {
    let out = ns
        .cmd("nft")
        .args(["-j", "list", "map", "ip", "kproxy", "services"])
        .output()
        .expect("nft");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["map"]["elem"].as_array())
        .map(Vec::len)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_services_are_listed_in_pages_and_a_relist_removes_only_what_vanished() {
    if !netns::can_run("fifty_thousand_services_are_listed_in_pages") {
        return;
    }
    const N: usize = 50_000;
    let ns = Netns::new("page");
    let server = ApiServer::start_in(Some(&ns.name)).await;
    server.load((0..N).flat_map(|i| {
        let (name, vip, ep) = nth(i);
        [
            service("default", &name, &vip, 80),
            slice("default", &format!("{name}-1"), &name, &[&ep], 8080),
        ]
    }));
    server.apply(node("node1", "192.168.0.1"));
    let t = Instant::now();
    let kproxy = Kproxy::spawn(
        &ns,
        &["--master", &server.url(), "--proxy-mode", "nftables"],
    );
    eventually(
        "every Service in the kernel",
        Duration::from_secs(300),
        || async { expect_eq(dispatch_elements(&ns), N) },
    )
    .await;
    let first_peak = vm_hwm_kib(kproxy.pid());
    println!(
        "{N} Services + {N} EndpointSlices listed in pages and programmed in {:?}; VmHWM {first_peak} KiB",
        t.elapsed(),
    );
    for kind in [Watched::Services, Watched::EndpointSlices] {
        let lists = server.lists(kind);
        assert!(
            lists
                .iter()
                .all(|r| r.param("limit").as_deref() == Some("500")),
            "{kind:?}: pages of 500"
        );
        assert_eq!(lists.len(), N / 500, "{kind:?}: one request a page");
    }

    // A relist of both kinds (history compacted) while one Service was deleted. The witness is
    // kproxy's own nf_tables subscription (`nft monitor` builds a cache of the whole ruleset
    // first, which at this size takes minutes): every deletion, counted by object.
    let mut kernel =
        Monitor::open(Some(&ns.name), |t| t.deleted && t.table == "kproxy").expect("subscribe");
    let mut removed = Touched::new();
    let mut take = |kernel: &mut Monitor| {
        let seen = kernel.foreign().expect("notifications");
        assert!(
            !seen.lost,
            "notifications lost: anything may have been removed"
        );
        for (_, _, touched) in seen.commits {
            for (what, n) in touched {
                *removed.entry(what).or_default() += n;
            }
        }
        removed.clone()
    };
    let (gone, _, _) = nth(7);
    server.hold_watches(true);
    server.delete(Watched::Services, "default", &gone);
    server.delete(Watched::EndpointSlices, "default", &format!("{gone}-1"));
    server.compact();
    let t = Instant::now();
    server.expire_watches(Watched::Services);
    server.expire_watches(Watched::EndpointSlices);
    server.hold_watches(false);
    eventually(
        "the vanished Service removed",
        Duration::from_secs(300),
        || async { expect_eq(dispatch_elements(&ns), N - 1).map(drop) },
    )
    .await;
    let relist_peak = vm_hwm_kib(kproxy.pid());
    println!(
        "relist of {N}+{N} -> the one that vanished removed in {:?}; VmHWM {relist_peak} KiB",
        t.elapsed(),
    );
    // A relist forwards what it reads and keeps keys: no second copy of the cluster (which
    // raised the peak by a third, 151 to 203 MiB in this debug build).
    assert!(
        relist_peak < first_peak + first_peak / 5,
        "the relist raised the peak from {first_peak} to {relist_peak} KiB"
    );
    assert_eq!(server.continued_lists(Watched::Services), 2 * (N / 500 - 1));
    let removed = take(&mut kernel);
    println!("removed by the relist: {removed:?}");
    let total: usize = removed.values().sum();
    assert!(
        total <= 10,
        "only the vanished Service's rules removed, not a flush: {removed:?}"
    );
    assert!(
        !removed
            .keys()
            .any(|(kind, ..)| matches!(kind, Kind::Table | Kind::Set)),
        "no table or set removed: {removed:?}"
    );
}
