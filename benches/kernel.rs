//! Kernel cost of a sync (issue 4, parts 2 to 4), nftables backend: a cold start into an empty
//! kernel, one endpoint changed (one of ten replaced), one endpoint set changed (all ten), one
//! Service added, through each transport (`library`, `netlink`, `command`), each timed until the
//! transaction returned (the kernel has committed), for 1k and 10k
//! Services × 10 endpoints (50k with KPROXY_BENCH_LARGE=1); the time split of one endpoint
//! change (ours, the nft process, the kernel); and upstream's ruleset shape as the baseline.
//! Every single operation is also recorded for the median / p90 table printed at the end.
//!
//! Invariants: root only; everything happens in a throwaway network namespace that this
//! process's bench thread enters with setns (so `nft` runs there without `ip netns exec`), and
//! the namespace is deleted at the end. Without root the benches print why and do nothing
//! (under CI=true that is a failure).
//! Plans come from the real `Syncer` on the recording transport (`support`).

mod support;

use support::netns::Netns;
use support::nft_split as split;
use support::{timings, upstream};

use std::collections::BTreeSet;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use kproxy::backends::nft::fake_transport::FakeTransport;
use kproxy::backends::nft::{Nft, NftBackend, NftCli, NftLib};
use kproxy::backends::{Backend, Plans};
use kproxy::nftables::transport::Transport;
use kproxy::nftables::{NftNetlink, NftTransport};
use kproxy::node::NodeFacts;
use kproxy::sync::Syncer;
use kproxy::sync::runner::Due;

/// Plans of a loaded cluster and of each change the benches time.
struct Fixture {
    node: NodeFacts,
    /// `n` Services × 10 endpoints.
    base: Plans,
    /// Service n/2 with one of its endpoints replaced.
    one: Plans,
    /// Service n/2 with all ten endpoints replaced.
    moved: Plans,
    /// Service n added.
    added: Plans,
}

fn plans(rt: &tokio::runtime::Runtime, n: u32) -> Fixture {
    let (mut syncer, shared) = support::syncer(
        Box::new(NftBackend::new(support::config(), FakeTransport::default())),
        n,
    );
    let sync = |syncer: &mut Syncer| {
        assert!(rt.block_on(syncer.sync(Due::Full)).applied());
        shared.plans.read().expect("plans").clone()
    };
    let base = sync(&mut syncer);
    syncer.apply(support::slice_one_replaced(n / 2, 10, 1));
    let one = sync(&mut syncer);
    syncer.apply(support::slice(n / 2, 10, 1));
    let moved = sync(&mut syncer);
    syncer.apply(support::slice(n / 2, 10, 0));
    syncer.apply(support::service(n));
    syncer.apply(support::slice(n, 10, 0));
    let added = sync(&mut syncer);
    let node = shared.node.read().expect("node").clone();
    Fixture {
        node,
        base,
        one,
        moved,
        added,
    }
}

fn bench(c: &mut Criterion) {
    let Some(_ns) = Netns::enter("kernel bench") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for n in support::sizes() {
        let f = plans(&rt, n);
        let changed: BTreeSet<_> = [support::port_name(n / 2)].into_iter().collect();
        for (group, which) in [
            ("kernel_nftables_libnftables", NftTransport::Library),
            ("kernel_nftables_netlink", NftTransport::Netlink),
            ("kernel_nftables_command", NftTransport::Command),
        ] {
            let mut g = c.benchmark_group(group);
            g.sample_size(10).measurement_time(Duration::from_secs(10));
            let mut backend = steps(&mut g, group, which, n, &f);
            if which == NftTransport::Library {
                split(n, &f, &changed, &mut backend);
                backend.cleanup().expect("cleanup");
                split_cold_start(n, &f);
            }
            backend.cleanup().expect("cleanup");
            g.finish();
        }
    }
}

/// The transport of a bench backend (in this thread's namespace), never a silent fallback.
fn transport(which: NftTransport) -> Nft {
    match which {
        NftTransport::Command => Nft::Cli(NftCli::default()),
        NftTransport::Netlink => Nft::Netlink(NftNetlink::default()),
        NftTransport::Library => Nft::Lib(NftLib::open().expect("libnftables (it ships with nft)")),
    }
}

/// Cold start, one endpoint changed, one endpoint set changed, one Service added, through
/// `transport(which)`; returns the backend, holding the base plans.
fn steps(
    g: &mut BenchmarkGroup<'_, WallTime>,
    group: &str,
    which: NftTransport,
    n: u32,
    f: &Fixture,
) -> NftBackend<Nft> {
    let node = &f.node;
    let name = |what: &str| format!("{group}/{what}/{n}");
    g.bench_function(BenchmarkId::new("cold_start", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut cleaner = NftBackend::new(support::config(), NftCli::default());
                cleaner.cleanup().expect("cleanup");
                let mut backend = NftBackend::new(support::config(), transport(which));
                total += timings::time(&name("cold_start"), || {
                    backend.sync_full(&f.base, node).expect("cold start");
                });
            }
            total
        })
    });
    let mut backend = NftBackend::new(support::config(), transport(which));
    backend.sync_full(&f.base, node).expect("load");
    let changed: BTreeSet<_> = [support::port_name(n / 2)].into_iter().collect();
    for (what, other) in [
        ("one_endpoint_changed", &f.one),
        ("one_endpoint_set_changed", &f.moved),
    ] {
        let mut flip = false;
        g.bench_function(BenchmarkId::new(what, n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    flip = !flip;
                    let plans = if flip { other } else { &f.base };
                    total += timings::time(&name(what), || {
                        backend
                            .sync_partial(plans, &changed, node)
                            .expect("partial sync");
                    });
                }
                total
            })
        });
        if flip {
            backend
                .sync_partial(&f.base, &changed, node)
                .expect("back to base");
        }
    }
    let new: BTreeSet<_> = [support::port_name(n)].into_iter().collect();
    g.bench_function(BenchmarkId::new("one_service_added", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += timings::time(&name("one_service_added"), || {
                    backend.sync_partial(&f.added, &new, node).expect("add");
                });
                backend.sync_partial(&f.base, &new, node).expect("remove");
            }
            total
        })
    });
    backend
}

/// The time split of a cold start: kproxy's own part (compile every port, diff against an empty
/// mirror, print the chunks: the backend on the recording transport) and the kernel's batch
/// `sendmsg`s (those chunks through `nft` under strace, into an empty kernel); the rest of a
/// cold start is nft's parsing and evaluation. Three rounds; leaves the kernel empty.
fn split_cold_start(n: u32, f: &Fixture) {
    let name = |what: &str| format!("split_cold_start/{what}/{n}");
    let empty = || {
        NftBackend::new(support::config(), NftCli::default())
            .cleanup()
            .expect("cleanup")
    };
    for _ in 0..3 {
        let fake = FakeTransport::default();
        let mut ours = NftBackend::new(support::config(), fake.clone());
        timings::time(&name("ours (compile, diff, text)"), || {
            ours.sync_full(&f.base, &f.node)
                .expect("recorded cold start");
        });
        let chunks = fake.state.lock().expect("fake").applied.clone();
        if split::have_strace("kernel bench time split") {
            let batch = chunks.iter().map(|c| split::nft_traced(c).batch).sum();
            timings::record(&name("kernel: batch sendmsg"), batch);
            empty();
        }
    }
}

/// The time split of one endpoint change (issue 4, part 4): kproxy's own part (compile, diff,
/// transaction text: the same backend on the recording transport), the `nft` process on that
/// exact text, of which (under strace) the kernel's batch `sendmsg` and the close of nft's
/// netlink socket, an `nft -f -` of an empty script (process start), and libnftables on the
/// same text. `backend` holds the base plans in the kernel and is left so.
fn split(
    n: u32,
    f: &Fixture,
    changed: &BTreeSet<kproxy::model::ServicePortName>,
    backend: &mut NftBackend<Nft>,
) {
    let name = |what: &str| format!("split_one_endpoint_changed/{what}/{n}");
    let fake = FakeTransport::default();
    let mut ours = NftBackend::new(support::config(), fake.clone());
    ours.sync_full(&f.base, &f.node)
        .expect("load the recording backend");
    let rounds = 20;
    let mut scripts = Vec::new();
    for _ in 0..rounds {
        for plans in [&f.one, &f.base] {
            fake.state.lock().expect("fake").applied.clear();
            timings::time(&name("ours (compile, diff, text)"), || {
                ours.sync_partial(plans, changed, &f.node).expect("partial");
            });
            let applied = fake.state.lock().expect("fake").applied.clone();
            assert_eq!(applied.len(), 1, "one transaction per partial sync");
            scripts.push(applied[0].clone());
        }
    }
    let trace = split::have_strace("kernel bench time split");
    for (k, script) in scripts.iter().enumerate() {
        // Even rounds are timed plainly, odd ones under strace; each pair leaves the base.
        if (k / 2) % 2 == 0 {
            timings::record(&name("nft process (all of it)"), split::nft(script));
        } else if trace {
            let t = split::nft_traced(script);
            timings::record(&name("kernel: batch sendmsg"), t.batch);
            timings::record(&name("kernel: netlink socket close"), t.close);
        } else {
            split::nft(script);
        }
        timings::record(&name("nft on an empty script"), split::nft(""));
    }
    let mut lib = NftLib::open().expect("libnftables");
    for script in &scripts {
        timings::time(&name("libnftables (all of it)"), || {
            lib.apply(script).expect("libnftables apply");
        });
    }
    // The kernel holds the base plans again, as `backend`'s mirror says; prove the mirror and
    // the kernel agree by applying a real change through it.
    backend
        .sync_partial(&f.one, changed, &f.node)
        .and_then(|_| backend.sync_partial(&f.base, changed, &f.node))
        .expect("the kernel still matches the mirror after the split");
}

/// Upstream's ruleset shape (`support::upstream`) through `nft -f`: the baseline. 1k by
/// default; 10k (minutes per load: 184 s measured for 10k × 10) with KPROXY_BENCH_UPSTREAM_10K=1.
fn baseline(c: &mut Criterion) {
    let Some(_ns) = Netns::enter("kernel bench") else {
        return;
    };
    let mut sizes = vec![1_000];
    if std::env::var("KPROXY_BENCH_UPSTREAM_10K").as_deref() == Ok("1") {
        sizes.push(10_000);
    }
    let drop_table = format!(
        "add table ip {t}\ndelete table ip {t}\n",
        t = upstream::TABLE
    );
    let mut g = c.benchmark_group("kernel_upstream_shape_nftables");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for n in sizes {
        let load = upstream::ruleset(n, 10);
        g.bench_function(BenchmarkId::new("cold_start", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    split::nft(&drop_table);
                    let took = split::nft(&load);
                    timings::record(
                        &format!("kernel_upstream_shape_nftables/cold_start/{n}"),
                        took,
                    );
                    total += took;
                }
                total
            })
        });
        split::nft(&drop_table);
        split::nft(&load);
        let mut generation = 0;
        g.bench_function(BenchmarkId::new("one_endpoint_set_changed", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    generation += 1;
                    let change = upstream::endpoints_moved(n / 2, 10, generation);
                    let took = split::nft(&change);
                    timings::record(
                        &format!("kernel_upstream_shape_nftables/one_endpoint_set_changed/{n}"),
                        took,
                    );
                    total += took;
                    split::nft(&upstream::stale_endpoints(n / 2, 10, generation - 1));
                }
                total
            })
        });
        split::nft(&drop_table);
    }
    g.finish();
}

fn report(_: &mut Criterion) {
    timings::report();
}

criterion_group!(benches, bench, baseline, report);
criterion_main!(benches);
