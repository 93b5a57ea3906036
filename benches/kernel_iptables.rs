//! Kernel cost of kproxy's iptables backend and, as its baseline, of upstream kube-proxy's
//! iptables mode (issue 4), through iptables-nft and through iptables-legacy, for 1k and 10k
//! Services × 10 endpoints (50k with KPROXY_BENCH_LARGE=1).
//!
//! kproxy (`support::kproxy_iptables`): the real `IptablesBackend` on plans from the real
//! `Syncer`: a cold start (the first `sync_full`, into a fresh empty namespace), one endpoint
//! changed in one Service, one Service added and removed (each a `sync_partial` of one service
//! port), each timed until the backend returned (its restores exited successfully), with the
//! restore input's size in lines, and the time split of one endpoint change. In test mode only
//! 1k, once each.
//!
//! Upstream: its ruleset shape (`support::upstream_iptables`) loaded with `iptables-restore -w 5
//! -W 100000 --noflush --counters`, as upstream runs it: a full restore into an empty kernel,
//! and upstream's partial restore after one Service's endpoints all moved, each timed from
//! spawning the restore until it exited successfully (the kernel has the rules). Prints each
//! input's size.
//!
//! Invariants: root only; every restore runs in a throwaway network namespace that the bench
//! thread enters with setns (checked against the process's first namespace before any iptables
//! call), so the host's rules are never touched; the namespaces are deleted at the end. Without
//! root, or without a variant's binaries, that part prints why and is skipped (a failure under
//! CI=true); a failed sync or restore fails the bench. Upstream, before timing anything: the
//! generator's text is checked (pure asserts), then `iptables-restore --test` and real loads of
//! small rulesets must succeed; after each full restore the kernel must hold n × 10 × 2 KUBE-SEP
//! rules. Between full restores both tables are emptied and upstream's jumps reinstalled
//! (untimed); partial restores alternate between two generations, so every one is a real change.
//! kproxy: see `support::kproxy_iptables` (the kernel's rules checked against the backend's
//! mirror; partial inputs the same size at every cluster size). Single-operation timings (median,
//! p90) are printed at the end.
//!
//! iptables-nft 1.8.9's `--noflush` restore is quadratic in the number of chains: each command
//! inserts its chain's name into a sorted linked list (nft-cache.c `cache_chain_list_insert`;
//! perf: ~96 % in that loop's strcmp). Upstream's full restore takes ~5 s at 1k Services and tens
//! of minutes at 10k, so above `NFT_NOFLUSH_MAX` it is timed only with KPROXY_BENCH_UPSTREAM_10K=1
//! (once, outside criterion); otherwise the partial benches start from the same rules loaded by a
//! flushing restore (no `--noflush`, timed once for the record).

mod support;

use support::kproxy_iptables as ours;
use support::netns::{Netns, have};
use support::timings;
use support::upstream_iptables as ipt;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};

/// One iptables flavour: its restore, save and iptables binaries.
struct Variant {
    name: &'static str,
    restore: &'static str,
    save: &'static str,
    iptables: &'static str,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        name: "iptables_nft",
        restore: "iptables-nft-restore",
        save: "iptables-nft-save",
        iptables: "iptables-nft",
    },
    Variant {
        name: "iptables_legacy",
        restore: "iptables-legacy-restore",
        save: "iptables-legacy-save",
        iptables: "iptables-legacy",
    },
];

/// Upstream's restore flags (pkg/util/iptables: the wait flags for iptables ≥ 1.6.2, NoFlushTables,
/// RestoreCounters). iptables-nft takes no lock and ignores `-w`; legacy takes the xtables lock
/// (and ignores `-W`, with a deprecation warning).
const RESTORE_FLAGS: [&str; 6] = ["-w", "5", "-W", "100000", "--noflush", "--counters"];

/// Runs `program args` with `stdin`; panics with its stderr unless it exits successfully.
fn run(program: &str, args: &[&str], stdin: &str) -> String {
    support::command::run(program, args, stdin).stdout
}

fn restore(v: &Variant, text: &str) {
    run(v.restore, &RESTORE_FLAGS, text);
}

/// `iptables-restore --test`: parses `text` against the kernel's tables, commits nothing.
fn restore_test(v: &Variant, text: &str) {
    let mut args = RESTORE_FLAGS.to_vec();
    args.push("--test");
    run(v.restore, &args, text);
}

/// The number of `-A KUBE-SEP-…` rules in the nat table, per `iptables-save`.
fn sep_rules(v: &Variant) -> usize {
    lines(&run(v.save, &["-t", "nat"], ""), "-A KUBE-SEP-")
}

fn lines(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

/// The pure generator's shape, checked once (harness = false runs no #[test]).
fn check_generator() {
    assert_eq!(
        ipt::hash16("ns1/svc1:p80tcp"),
        "XPGD46QRK7WJZT7O",
        "upstream's test name"
    );
    let full = ipt::full(10, 3);
    assert_eq!(lines(&full, ":KUBE-SVC-"), 10);
    assert_eq!(lines(&full, ":KUBE-SEP-"), 30);
    assert_eq!(
        lines(&full, ":KUBE-EXT-"),
        3,
        "two NodePorts and one LoadBalancer"
    );
    assert_eq!(
        lines(&full, ":KUBE-FW-"),
        1,
        "one LoadBalancer with a source range"
    );
    assert_eq!(lines(&full, "-A KUBE-SEP-"), 60);
    assert_eq!(
        lines(&full, "-A KUBE-SERVICES "),
        10 + 1 + 1,
        "VIPs, one LB IP, nodeports"
    );
    assert_eq!(lines(&full, "-A KUBE-NODEPORTS "), 3);
    assert_eq!(full.matches("--probability 0.3333333333 ").count(), 10);
    assert_eq!(full.matches("--rcheck --seconds 10800 --reap").count(), 3);
    assert_eq!(full.matches(" --set -m tcp").count(), 3);
    assert_eq!(full.matches("COMMIT\n").count(), 2);
    assert!(
        full.contains("-m comment --comment default/svc-0:http -s 100.0.0.0 -j KUBE-MARK-MASQ")
    );
    let large = ipt::full(400, 3);
    assert!(
        large
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SEP-"))
            .all(|l| !l.contains("comment"))
    );
    for (partial, seps, deleted) in [
        (ipt::partial_endpoints_moved(10, 3, 5, 1), 6, 3),
        (ipt::partial_one_endpoint_changed(10, 3, 5, 1), 4, 1),
    ] {
        let whole = |t: &str, c: &str| -> Vec<String> {
            t.lines()
                .filter(|l| l.starts_with(c))
                .map(String::from)
                .collect()
        };
        for chain in [
            "-A KUBE-SERVICES ",
            "-A KUBE-NODEPORTS ",
            "-A KUBE-PROXY-FIREWALL ",
        ] {
            assert_eq!(whole(&partial, chain), whole(&full, chain), "{chain} whole");
        }
        let svc: Vec<_> = whole(&partial, ":KUBE-SVC-");
        assert_eq!(
            svc,
            [format!(":{} - [0:0]", ipt::service_chain(5))],
            "only Service 5's chain"
        );
        assert_eq!(
            lines(&partial, ":KUBE-SEP-"),
            seps,
            "new and stale endpoint chains"
        );
        assert_eq!(lines(&partial, "-X KUBE-SEP-"), deleted);
        for x in whole(&partial, "-X ") {
            assert!(
                full.contains(&format!(":{} - [0:0]", &x[3..])),
                "{x}: a chain of the full sync"
            );
        }
    }
}

/// Upstream's jumps from the built-in chains (`iptables -N`, then `-I`).
fn install_jumps(v: &Variant) {
    for j in ipt::JUMPS {
        let list = run(v.iptables, &["-w", "-t", j.table, "-S"], "");
        if !list.lines().any(|l| l == format!("-N {}", j.to)) {
            run(v.iptables, &["-w", "-t", j.table, "-N", j.to], "");
        }
        let mut args = vec!["-w", "-t", j.table, "-I", j.from];
        args.extend_from_slice(j.args);
        args.extend_from_slice(&["-j", j.to]);
        run(v.iptables, &args, "");
    }
}

/// Back to the state before upstream's first sync: both tables empty, then only the jumps (and
/// their target chains).
fn reset(v: &Variant) {
    for table in ["filter", "nat"] {
        run(v.iptables, &["-w", "-t", table, "-F"], "");
        run(v.iptables, &["-w", "-t", table, "-X"], "");
    }
    install_jumps(v);
}

/// `--test` and a real load of small rulesets (with comments, and in large cluster mode), then
/// both kinds of partial sync: a syntax error fails here with iptables' message.
fn check_in_kernel(v: &Variant) {
    for (n, eps) in [(10, 3), (400, 3)] {
        reset(v);
        restore_test(v, &ipt::full(n, eps));
        restore(v, &ipt::full(n, eps));
        assert_eq!(sep_rules(v), (n * eps * 2) as usize);
        for generation in [1, 0] {
            let moved = ipt::partial_endpoints_moved(n, eps, n / 2, generation);
            restore_test(v, &moved);
            restore(v, &moved);
            restore(
                v,
                &ipt::partial_one_endpoint_changed(n, eps, n / 2, generation),
            );
        }
        assert_eq!(sep_rules(v), (n * eps * 2) as usize, "stale chains deleted");
    }
}

/// The texts of one cluster size.
struct Texts {
    n: u32,
    full: String,
    /// Service n/2's endpoints all at generation 0 / 1.
    moved: [String; 2],
}

fn texts(n: u32) -> Texts {
    let t = Texts {
        n,
        full: ipt::full(n, 10),
        moved: [0, 1].map(|g| ipt::partial_endpoints_moved(n, 10, n / 2, g)),
    };
    for (what, text) in [("full", &t.full), ("partial_endpoints_moved", &t.moved[1])] {
        println!(
            "input {n} Services × 10 endpoints, {what}: {} bytes, {} lines",
            text.len(),
            text.lines().count()
        );
    }
    t
}

/// The network namespace of the calling thread.
fn netns() -> PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").expect("read /proc/thread-self/ns/net")
}

/// The bench thread's namespace before either part entered a throwaway one.
fn host() -> &'static PathBuf {
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(netns)
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Above this many Services, iptables-nft's `--noflush` full restore is not in the default run.
const NFT_NOFLUSH_MAX: u32 = 1_000;

/// The full restore of `t` from `reset`, then the rules checked.
fn full_restore(g: &mut Group, v: &Variant, t: &Texts) {
    let n = t.n;
    let name = format!("{}/full_restore/{n}", v.name);
    let upstream_10k = std::env::var("KPROXY_BENCH_UPSTREAM_10K").as_deref() == Ok("1");
    if v.name == "iptables_nft" && n > NFT_NOFLUSH_MAX {
        reset(v);
        if upstream_10k {
            timings::time(&name, || restore(v, &t.full));
        } else {
            println!("{name}: not in the default run (quadratic, see the module doc)");
            let flushing = format!("{}/full_restore_without_noflush/{n}", v.name);
            let flags: Vec<&str> = RESTORE_FLAGS
                .into_iter()
                .filter(|f| *f != "--noflush")
                .collect();
            timings::time(&flushing, || drop(run(v.restore, &flags, &t.full)));
            install_jumps(v);
        }
    } else {
        // One warm-up, then ten samples of one restore each (at 10k criterion warns that they do
        // not fit in the target time: intended).
        g.measurement_time(Duration::from_secs(1));
        g.bench_function(BenchmarkId::new("full_restore", n), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        reset(v);
                        timings::time(&name, || restore(v, &t.full))
                    })
                    .sum()
            })
        });
    }
    let loaded = sep_rules(v);
    assert_eq!(
        loaded,
        (n * 10 * 2) as usize,
        "{name}: KUBE-SEP rules in the kernel"
    );
}

/// Upstream's partial restore after Service n/2's endpoints moved, alternating generations.
fn partial_restore(g: &mut Group, v: &Variant, t: &Texts) {
    let name = format!("{}/partial_endpoints_moved/{}", v.name, t.n);
    let mut generation = 0;
    g.measurement_time(Duration::from_secs(3));
    g.bench_function(BenchmarkId::new("partial_endpoints_moved", t.n), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    generation ^= 1;
                    timings::time(&name, || restore(v, &t.moved[generation]))
                })
                .sum()
        })
    });
    let kept = sep_rules(v);
    assert_eq!(
        kept,
        (t.n * 10 * 2) as usize,
        "{name}: stale chains deleted"
    );
}

/// Upstream's shape, for each variant.
fn upstream(c: &mut Criterion) {
    check_generator();
    let host = host().clone();
    let all: Vec<Texts> = support::sizes().into_iter().map(texts).collect();
    for v in &VARIANTS {
        let bench = format!("kernel_iptables {}", v.name);
        if ![v.restore, v.save, v.iptables]
            .iter()
            .all(|p| have(&bench, p))
        {
            continue;
        }
        let Some(_ns) = Netns::enter(&bench) else {
            return;
        };
        let inside = netns() != host;
        assert!(
            inside,
            "the bench thread must be in its throwaway namespace"
        );
        check_in_kernel(v);
        let mut g = c.benchmark_group(format!("kernel_upstream_{}", v.name));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1));
        for t in &all {
            full_restore(&mut g, v, t);
            partial_restore(&mut g, v, t);
        }
        g.finish();
        reset(v);
    }
}

/// kproxy's backend, for each variant (`support::kproxy_iptables`; 1k only in test mode).
fn kproxy(c: &mut Criterion) {
    let host = host().clone();
    let mut sizes = support::sizes();
    if !std::env::args().any(|a| a == "--bench") {
        sizes.truncate(1);
    }
    let fixtures: Vec<_> = sizes.into_iter().map(ours::fixture).collect();
    for variant in [
        kproxy::backends::iptables::Variant::Nft,
        kproxy::backends::iptables::Variant::Legacy,
    ] {
        if !ours::have_tools(variant) {
            continue;
        }
        let mut lines = ours::Lines::default();
        for f in &fixtures {
            ours::bench(c, variant, f, &host, &mut lines);
        }
        lines.check(variant);
    }
}

fn report(_: &mut Criterion) {
    timings::report();
}

criterion_group!(benches, upstream, kproxy, report);
criterion_main!(benches);
