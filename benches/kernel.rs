//! Kernel cost of a sync (issue 4, parts 2 and 3), nftables backend: a cold start into an empty
//! kernel, one endpoint set changed, one Service added, each timed until `nft` returned (the
//! kernel has committed), for 1k and 10k Services × 10 endpoints (50k with
//! KPROXY_BENCH_LARGE=1); and the same steps for upstream's ruleset shape as the baseline.
//!
//! Invariants: root only; everything happens in a throwaway network namespace that this
//! process's bench thread enters with setns (so `nft` runs there without `ip netns exec`), and
//! the namespace is deleted at the end. Without root the benches print why and do nothing
//! (under CI=true that is a failure).
//! Plans come from the real `Syncer` on the recording transport (`support`).

mod support;

use support::upstream;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kproxy::backends::nft::transport::FakeTransport;
use kproxy::backends::nft::{NftBackend, NftCli};
use kproxy::backends::{Backend, Plans};
use kproxy::health::service::ServiceHealthServers;
use kproxy::metrics::Metrics;
use kproxy::node::NodeFacts;
use kproxy::sync::runner::Due;
use kproxy::sync::{Shared, Syncer};

/// The throwaway namespace, entered by this thread; deleted on drop.
struct Netns(String);

impl Netns {
    fn enter() -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the kernel benches cannot run: they need root"
            );
            eprintln!("kernel benches skipped: they need root (a throwaway network namespace)");
            return None;
        }
        let name = format!("kp-bench-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("kernel benches skipped: `ip netns add {name}` failed");
            return None;
        }
        let ns = Netns(name);
        kproxy::netns::enter(&ns.0).expect("enter the bench namespace");
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Runs `nft -f -` with `script`; panics with nft's message on failure.
fn nft(script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(script.as_bytes())
        .expect("write to nft");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft -f refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Plans of `n` Services; of Service n/2 with its endpoints moved; of Service n added.
fn plans(rt: &tokio::runtime::Runtime, n: u32) -> (Plans, Plans, Plans, NodeFacts) {
    let shared = Arc::new(Shared::default());
    let mut node = NodeFacts::new(support::NODE);
    node.local_addresses = vec!["192.168.0.2".parse().expect("static address")];
    let mut syncer = Syncer::new(
        Box::new(NftBackend::new(support::config(), FakeTransport::default())),
        Box::new(kproxy::conntrack::Noop),
        node,
        Arc::new(Metrics::new()),
        shared.clone(),
        ServiceHealthServers::default(),
    )
    .with_fixed_addresses();
    for c in support::cluster(n, 10) {
        syncer.apply(c);
    }
    let sync = |syncer: &mut Syncer| {
        assert!(rt.block_on(syncer.sync(Due::Full)));
        shared.plans.read().expect("plans").clone()
    };
    let base = sync(&mut syncer);
    syncer.apply(support::slice(n / 2, 10, 1));
    let moved = sync(&mut syncer);
    syncer.apply(support::slice(n / 2, 10, 0));
    syncer.apply(support::service(n));
    syncer.apply(support::slice(n, 10, 0));
    let added = sync(&mut syncer);
    let node = shared.node.read().expect("node").clone();
    (base, moved, added, node)
}

fn bench(c: &mut Criterion) {
    let Some(_ns) = Netns::enter() else { return };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("kernel_nftables");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for n in support::sizes() {
        let (base, moved, added, node) = plans(&rt, n);
        g.bench_function(BenchmarkId::new("cold_start", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut cleaner = NftBackend::new(support::config(), NftCli::default());
                    cleaner.cleanup().expect("cleanup");
                    let mut backend = NftBackend::new(support::config(), NftCli::default());
                    let start = Instant::now();
                    backend.sync_full(&base, &node).expect("cold start");
                    total += start.elapsed();
                }
                total
            })
        });
        let mut backend = NftBackend::new(support::config(), NftCli::default());
        backend.sync_full(&base, &node).expect("load");
        let changed: BTreeSet<_> = [support::port_name(n / 2)].into_iter().collect();
        let mut flip = false;
        g.bench_function(BenchmarkId::new("one_endpoint_set_changed", n), |b| {
            b.iter(|| {
                flip = !flip;
                let plans = if flip { &moved } else { &base };
                backend
                    .sync_partial(plans, &changed, &node)
                    .expect("partial sync")
            })
        });
        backend.sync_full(&base, &node).expect("back to base");
        let new: BTreeSet<_> = [support::port_name(n)].into_iter().collect();
        g.bench_function(BenchmarkId::new("one_service_added", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    backend.sync_partial(&added, &new, &node).expect("add");
                    total += start.elapsed();
                    backend.sync_partial(&base, &new, &node).expect("remove");
                }
                total
            })
        });
        backend.cleanup().expect("cleanup");
    }
    g.finish();
}

/// Upstream's ruleset shape (`support::upstream`) through `nft -f`: the baseline. 1k by
/// default; 10k (minutes per load: 184 s measured for 10k × 10) with KPROXY_BENCH_UPSTREAM_10K=1.
fn baseline(c: &mut Criterion) {
    let Some(_ns) = Netns::enter() else { return };
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
                    nft(&drop_table);
                    let start = Instant::now();
                    nft(&load);
                    total += start.elapsed();
                }
                total
            })
        });
        nft(&drop_table);
        nft(&load);
        let mut generation = 0;
        g.bench_function(BenchmarkId::new("one_endpoint_set_changed", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    generation += 1;
                    let change = upstream::endpoints_moved(n / 2, 10, generation);
                    let start = Instant::now();
                    nft(&change);
                    total += start.elapsed();
                    nft(&upstream::stale_endpoints(n / 2, 10, generation - 1));
                }
                total
            })
        });
        nft(&drop_table);
    }
    g.finish();
}

criterion_group!(benches, bench, baseline);
criterion_main!(benches);
