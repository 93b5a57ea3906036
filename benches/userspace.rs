//! User-space cost of a sync (issue 4, part 1): model change → plan → compile → diff →
//! transaction text, for one endpoint changed, one endpoint set changed, one Service added and
//! a full sync, through the real `Syncer` and `NftBackend` on the recording transport, for
//! 1k / 10k / 50k Services × 10 endpoints (see `support` for the mix). No kernel, no root.
//!
//! Invariants: each measured iteration is a real change (endpoint sets alternate between two
//! generations; added Services have fresh names); the recording transport is emptied between
//! iterations so memory stays flat; the full-sync bench uses the plans of exactly n Services
//! (taken before Services are added); sizes above 10k run only with KPROXY_BENCH_LARGE=1.

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kproxy::backends::nft::NftBackend;
use kproxy::backends::nft::diff::{Mirror, Parts, Scope, diff};
use kproxy::backends::nft::fake_transport::FakeTransport;
use kproxy::sync::runner::Due;
use kproxy::sync::{Shared, Syncer};

/// A syncer holding `n` Services, fully synced once, and its transport and shared state.
fn loaded(rt: &tokio::runtime::Runtime, n: u32) -> (Syncer, FakeTransport, Arc<Shared>) {
    let fake = FakeTransport::default();
    let (mut syncer, shared) = support::syncer(
        Box::new(NftBackend::new(support::config(), fake.clone())),
        n,
    );
    assert!(
        rt.block_on(syncer.sync(Due::Full)).applied(),
        "the initial full sync"
    );
    fake.state.lock().expect("fake transport").applied.clear();
    (syncer, fake, shared)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("userspace");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for n in support::sizes() {
        let (mut syncer, fake, shared) = loaded(&rt, n);
        // Taken now: the Service-added bench below grows the model.
        let plans = shared.plans.read().expect("plans").clone();
        let node = shared.node.read().expect("node").clone();
        let mut generation = 0;
        g.bench_function(BenchmarkId::new("one_endpoint_changed", n), |b| {
            b.iter(|| {
                generation += 1;
                syncer.apply(support::slice_one_replaced(n / 2, 10, generation));
                assert!(rt.block_on(syncer.sync(Due::Partial)).applied());
                fake.state.lock().expect("fake transport").applied.clear();
            })
        });
        g.bench_function(BenchmarkId::new("one_endpoint_set_changed", n), |b| {
            b.iter(|| {
                generation += 1;
                syncer.apply(support::slice(n / 2, 10, generation));
                assert!(rt.block_on(syncer.sync(Due::Partial)).applied());
                fake.state.lock().expect("fake transport").applied.clear();
            })
        });
        let mut next = n;
        g.bench_function(BenchmarkId::new("one_service_added", n), |b| {
            b.iter(|| {
                syncer.apply(support::service(next));
                syncer.apply(support::slice(next, 10, 0));
                next += 1;
                assert!(rt.block_on(syncer.sync(Due::Partial)).applied());
                fake.state.lock().expect("fake transport").applied.clear();
            })
        });
        // A cold full sync's user-space part: compile every port, diff against an empty mirror,
        // print the transaction.
        g.bench_function(BenchmarkId::new("full_sync_text", n), |b| {
            b.iter(|| {
                let parts = Parts::new(&plans, &node, &support::config());
                let d = diff(&Mirror::default(), &parts, Scope::Full);
                d.tx.to_string().len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
