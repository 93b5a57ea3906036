//! User-space cost of an IPVS-mode sync: model change → plan → compile → diff → netlink
//! messages encoded and decoded back (the fake kernel round-trips every message), for one
//! endpoint changed, one Service added and a cold full sync, through the real `Syncer` and
//! `IpvsBackend`, for 1k / 10k Services × 10 endpoints (see `support` for the mix). No kernel,
//! no root: this host has no IP_VS, so the kernel's share is not measured here.
//!
//! Invariants: each iteration is a real change (endpoint sets alternate between generations,
//! added Services have fresh names); the messages a change sends are counted and printed once.

mod support;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kproxy::backends::ipvs::IpvsBackend;
use kproxy::backends::ipvs::fake_kernel::FakeKernel;
use kproxy::model::IpFamily;
use kproxy::sync::runner::Due;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut g = c.benchmark_group("userspace_ipvs");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for n in support::sizes() {
        let kernel = FakeKernel::default();
        let backend = IpvsBackend::new(&support::config(), Box::new(kernel.clone()))
            .with_families(vec![IpFamily::V4]);
        let (mut syncer, _shared) = support::syncer(Box::new(backend), n);
        g.bench_function(BenchmarkId::new("full_sync", n), |b| {
            b.iter(|| {
                *kernel.state() = Default::default();
                assert!(rt.block_on(syncer.sync(Due::Full)).applied());
            })
        });
        let messages = |k: &FakeKernel| k.state().ipvs_messages;
        println!(
            "{n} Services: a cold full sync sent {} IPVS messages",
            messages(&kernel)
        );
        let mut generation = 0;
        let before = messages(&kernel);
        syncer.apply(support::slice_one_replaced(n / 2, 10, 1));
        assert!(rt.block_on(syncer.sync(Due::Partial)).applied());
        println!(
            "{n} Services: one endpoint changed sent {} IPVS messages",
            messages(&kernel) - before
        );
        g.bench_function(BenchmarkId::new("one_endpoint_changed", n), |b| {
            b.iter(|| {
                generation += 1;
                syncer.apply(support::slice_one_replaced(n / 2, 10, generation));
                assert!(rt.block_on(syncer.sync(Due::Partial)).applied());
            })
        });
        let mut next = n;
        g.bench_function(BenchmarkId::new("one_service_added", n), |b| {
            b.iter(|| {
                syncer.apply(support::service(next));
                syncer.apply(support::slice(next, 10, 0));
                next += 1;
                assert!(rt.block_on(syncer.sync(Due::Partial)).applied());
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
