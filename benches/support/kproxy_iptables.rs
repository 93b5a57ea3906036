//! kproxy's own iptables backend (`kproxy::backends::iptables::IptablesBackend`) in the
//! `kernel_iptables` bench: for each variant and cluster size, a cold start (the first
//! `sync_full`, which adopts: `iptables-save`, then one restore per family) into a fresh,
//! empty network namespace (ten times at 1k, three at 10k); one endpoint changed in one Service
//! and one Service added (and removed), each a `sync_partial` of one service port, through
//! criterion, or outside it, three and two times, when one run takes over `SLOW`; the restore
//! input size of each kind of sync; and where an endpoint change's time goes (`split`: the same
//! input through the restore command, an empty restore, the kernel's system calls under strace).
//!
//! Invariants: every sync runs on the calling (bench) thread after it entered a throwaway
//! namespace made for it (`Netns::enter`, checked against the host's namespace), so the
//! backend's `iptables-*-restore` children run there; a failed sync panics (the bench fails);
//! after the cold starts, the partial syncs and the split, the kernel's v4 rules that name a
//! `KPROXY-` chain (`iptables-save`) must be exactly as many as the backend's v4 mirror holds;
//! every partial sync of one kind restores the same number of lines, and that number is the
//! same at every cluster size (it must not grow with the Services). Plans come from the real
//! `Syncer` on the fake backend. In test mode (no `--bench`): 1k Services only, one cold start,
//! one run of each partial sync, one round of the split.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode};
use kproxy::backends::fake::FakeBackend;
use kproxy::backends::iptables::mirror::Scope;
use kproxy::backends::iptables::{IptablesBackend, Variant};
use kproxy::backends::{Backend, BackendConfig, Plans};
use kproxy::model::{IpFamily, ServicePortName};
use kproxy::node::NodeFacts;
use kproxy::sync::Syncer;
use kproxy::sync::runner::Due;

use super::netns::{Netns, have};
use super::{command, nft_split, timings};

/// The plans of a loaded cluster and of each change timed.
pub struct Fixture {
    pub n: u32,
    pub node: NodeFacts,
    /// `n` Services × 10 endpoints.
    pub base: Plans,
    /// Service n/2 with one of its ten endpoints replaced.
    pub one: Plans,
    /// Service n added.
    pub added: Plans,
}

/// The plans of `n` Services × 10 endpoints and of the changes, from the real `Syncer`.
pub fn fixture(n: u32) -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut syncer, shared) = super::syncer(Box::new(FakeBackend::default()), n);
    let sync = |syncer: &mut Syncer| {
        assert!(rt.block_on(syncer.sync(Due::Full)).applied());
        shared.plans.read().expect("plans").clone()
    };
    let base = sync(&mut syncer);
    syncer.apply(super::slice_one_replaced(n / 2, 10, 1));
    let one = sync(&mut syncer);
    syncer.apply(super::slice(n / 2, 10, 0));
    syncer.apply(super::service(n));
    syncer.apply(super::slice(n, 10, 0));
    let added = sync(&mut syncer);
    assert_eq!((base.len(), added.len()), (n as usize, n as usize + 1));
    let node = shared.node.read().expect("node").clone();
    Fixture {
        n,
        node,
        base,
        one,
        added,
    }
}

/// What the backend runs: `BackendConfig` as every bench, plus localhost NodePorts (upstream's
/// iptables default).
pub fn config() -> BackendConfig {
    BackendConfig {
        localhost_nodeports: true,
        ..super::config()
    }
}

/// The bench's name for `variant` (`iptables_nft`, `iptables_legacy`).
fn label(variant: Variant) -> String {
    format!("iptables_{}", variant.as_str())
}

/// True when every tool the backend runs for `variant` is there (else a skip, see `have`).
pub fn have_tools(variant: Variant) -> bool {
    let bench = format!("kernel_iptables kproxy {}", label(variant));
    IpFamily::ALL
        .into_iter()
        .flat_map(|f| [variant.restore(f), variant.save(f), variant.cli(f)])
        .all(|p| have(&bench, &p))
}

/// Restore input lines per kind of sync, per cluster size, for the invariant that partial
/// syncs do not grow with the cluster.
#[derive(Default)]
pub struct Lines(BTreeMap<(String, u32), BTreeSet<usize>>);

impl Lines {
    fn record(&mut self, what: &str, n: u32, lines: usize) {
        self.0
            .entry((what.to_string(), n))
            .or_default()
            .insert(lines);
    }

    /// Prints every kind's line count; panics if a partial kind varied or grew with `n`.
    pub fn check(&self, variant: Variant) {
        let mut per_kind: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        for ((what, n), seen) in &self.0 {
            println!(
                "restore input kproxy {}/{what}/{n}: {seen:?} lines",
                label(variant)
            );
            if what != "cold_start" {
                assert_eq!(seen.len(), 1, "{what}/{n}: every sync the same size");
                per_kind.entry(what).or_default().extend(seen);
            }
        }
        for (what, seen) in per_kind {
            assert_eq!(seen.len(), 1, "{what}: the same size at every cluster size");
        }
    }
}

/// The v4 `-A` lines of the nat and filter tables that name a `KPROXY-` chain (kproxy's rules
/// and its hooks) must be exactly the backend's v4 mirror.
fn check_kernel(variant: Variant, backend: &IptablesBackend, what: &str) {
    let save = variant.save(IpFamily::V4);
    let kernel: usize = ["nat", "filter"]
        .into_iter()
        .map(|t| {
            command::run(&save, &["-t", t], "")
                .stdout
                .lines()
                .filter(|l| l.starts_with("-A ") && l.contains("KPROXY-"))
                .count()
        })
        .sum();
    let mirror: usize = backend
        .mirror(IpFamily::V4)
        .expect("v4 loaded")
        .rules_per_table()
        .values()
        .sum();
    assert_eq!(kernel, mirror, "{what}: kproxy's v4 rules in the kernel");
}

/// Enters a fresh namespace for `variant`, checked not to be the host's; `None` (a skip) without
/// root.
fn fresh(variant: Variant, host: &Path) -> Option<Netns> {
    let ns = Netns::enter(&format!("kernel_iptables kproxy {}", label(variant)))?;
    let here = std::fs::read_link("/proc/thread-self/ns/net").expect("thread netns");
    assert_ne!(
        here, host,
        "the bench thread must be in its throwaway namespace"
    );
    Some(ns)
}

/// One run longer than this is not given to criterion (ten samples and a warm-up would take
/// minutes: iptables-legacy at 10k replaces the whole nat table, ~9 s, on every restore).
const SLOW: Duration = Duration::from_secs(1);

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Measures `op` (one run; returns the duration to report) as criterion's `group/what/n`, or, when
/// its first run takes longer than `SLOW`, `slow_runs` times in all outside criterion. In test
/// mode: once, through criterion. Returns whether it was slow.
fn measure(
    (g, group): (&mut Group, &str),
    what: &str,
    n: u32,
    test: bool,
    slow_runs: usize,
    mut op: impl FnMut() -> Duration,
) -> bool {
    if !test && op() > SLOW {
        for _ in 1..slow_runs {
            op();
        }
        println!("{group}/{what}/{n}: {slow_runs} runs outside criterion (each over {SLOW:?})");
        return true;
    }
    g.bench_function(BenchmarkId::new(what, n), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| op()).sum())
    });
    false
}

/// Every measurement of `variant` at `f.n` Services (see the module doc); `lines` collects the
/// input sizes.
pub fn bench(c: &mut Criterion, variant: Variant, f: &Fixture, host: &Path, lines: &mut Lines) {
    let test = !std::env::args().any(|a| a == "--bench");
    let n = f.n;
    let group = format!("kernel_kproxy_{}", label(variant));
    let name = |what: &str| format!("kproxy_{}/{what}/{n}", label(variant));

    // Cold starts, each into a fresh namespace, outside criterion (whose minimum of ten samples
    // would take minutes at 10k); the last namespace and backend are kept for the rest.
    let reps = match (test, n) {
        (true, _) => 1,
        (false, ..=1_000) => 10,
        (false, _) => 3,
    };
    let mut kept = None;
    for _ in 0..reps {
        // The previous namespace goes first, so the kernel's teardown of its tables does not
        // overlap the next timing.
        drop(kept.take());
        std::thread::sleep(Duration::from_millis(200));
        let Some(ns) = fresh(variant, host) else {
            return;
        };
        let mut backend = IptablesBackend::new(config(), variant);
        timings::time(&name("cold_start"), || {
            backend.sync_full(&f.base, &f.node).expect("cold start");
        });
        lines.record("cold_start", n, backend.last_restore_lines());
        kept = Some((backend, ns));
    }
    let (mut backend, _ns) = kept.expect("at least one cold start");
    check_kernel(variant, &backend, &name("cold_start"));

    let mut g = c.benchmark_group(&group);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(2));

    let changed: BTreeSet<_> = [super::port_name(n / 2)].into_iter().collect();
    let mut flip = false;
    let slow = measure((&mut g, &group), "one_endpoint_changed", n, test, 3, || {
        flip = !flip;
        let plans = if flip { &f.one } else { &f.base };
        let took = timings::time(&name("one_endpoint_changed"), || {
            backend
                .sync_partial(plans, &changed, &f.node)
                .expect("partial sync");
        });
        lines.record("one_endpoint_changed", n, backend.last_restore_lines());
        took
    });
    if flip {
        backend
            .sync_partial(&f.base, &changed, &f.node)
            .expect("back to base");
    }

    let new: BTreeSet<_> = [super::port_name(n)].into_iter().collect();
    measure((&mut g, &group), "one_service_added", n, test, 2, || {
        let took = timings::time(&name("one_service_added"), || {
            backend.sync_partial(&f.added, &new, &f.node).expect("add");
        });
        lines.record("one_service_added", n, backend.last_restore_lines());
        timings::time(&name("one_service_removed"), || {
            backend
                .sync_partial(&f.base, &new, &f.node)
                .expect("remove");
        });
        lines.record("one_service_removed", n, backend.last_restore_lines());
        took
    });
    g.finish();
    check_kernel(variant, &backend, &name("partial syncs"));

    split(variant, f, &backend, if test || slow { 1 } else { 10 });
    check_kernel(variant, &backend, &name("split"));
    backend.cleanup().expect("cleanup");
}

/// Where one endpoint change's time goes. Each round: the exact restore input the backend would
/// send (rebuilt from its mirror with the same pure functions) through the restore command
/// directly; its undo under `strace -T`, summed per system call that talks to the kernel
/// (iptables-nft: netlink `sendmsg`, inside which nf_tables checks and commits the batch;
/// `recvmsg`, the cache dumps; `close`, closing the netlink socket, which waits for the
/// kernel's deferred release of the rules the batch deleted, as with `nft`; iptables-legacy:
/// `getsockopt`, the table read; `setsockopt`, the table replaced); and an empty restore
/// (`*nat`, `COMMIT`: process start and the table's cache or read, no write). Change and undo
/// alternate, so the kernel ends as `backend`'s mirror says.
fn split(variant: Variant, f: &Fixture, backend: &IptablesBackend, rounds: usize) {
    let n = f.n;
    let name = |what: &str| {
        format!(
            "kproxy_{}/split_one_endpoint_changed/{what}/{n}",
            label(variant)
        )
    };
    let port = super::port_name(n / 2);
    let changed: BTreeSet<ServicePortName> = [port.clone()].into_iter().collect();
    let mirror = backend.mirror(IpFamily::V4).expect("v4 loaded");
    let scope = Scope::Ports(&changed);
    let change = mirror.diff(&f.one, scope, IpFamily::V4, &config());
    let mut after = mirror.clone();
    after.commit(change.clone());
    let change = change.restore.to_string();
    let undo = after
        .diff(&f.base, scope, IpFamily::V4, &config())
        .restore
        .to_string();
    assert!(!change.is_empty() && !undo.is_empty());
    let restore = variant.restore(IpFamily::V4);
    let args = ["-w", "5", "--noflush"];
    let trace = nft_split::have_strace("kernel_iptables time split");
    let calls = match variant {
        Variant::Nft => &["sendmsg", "recvmsg", "close"][..],
        Variant::Legacy => &["getsockopt", "setsockopt"][..],
    };
    let filter = format!("trace={}", calls.join(","));
    for _ in 0..rounds {
        timings::record(
            &name("restore command, same input"),
            command::run(&restore, &args, &change).took,
        );
        if trace {
            let mut traced = vec!["-f", "-qq", "-T", "-e", &filter, restore.as_str()];
            traced.extend(args);
            let err = command::run("strace", &traced, &undo).stderr;
            for call in calls {
                let took: f64 = err
                    .lines()
                    .filter(|l| {
                        l.split_once('(')
                            .is_some_and(|(head, _)| head.ends_with(call))
                    })
                    .filter_map(|l| l.rsplit_once('<')?.1.strip_suffix('>')?.parse::<f64>().ok())
                    .sum();
                timings::record(
                    &name(&format!("kernel: {call} under strace")),
                    Duration::from_secs_f64(took),
                );
            }
        } else {
            command::run(&restore, &args, &undo);
        }
        timings::record(
            &name("restore command, empty input"),
            command::run(&restore, &args, "*nat\nCOMMIT\n").took,
        );
    }
}
