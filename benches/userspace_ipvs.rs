//! User-space cost of an IPVS-mode sync: model change → plan → compile → diff → netlink
//! messages encoded and decoded back (the fake kernel round-trips every message), for one
//! endpoint changed, one Service added and a cold full sync, through the real `Syncer` and
//! `IpvsBackend`, for 1k / 10k Services × 10 endpoints (see `support` for the mix). No kernel,
//! no root: this host has no IP_VS, so the kernel's share is not measured here.
//!
//! Before the timings, IPVS mode's memory per size: the heap of a `Syncer` + `IpvsBackend`
//! built over the generated cluster and taken through a cold full sync, measured by a counting
//! global allocator (`heap`): `IPVS user space, N Services × 10: peak heap X MiB, held after
//! sync Y MiB`.
//!
//! Invariants: each iteration is a real change (endpoint sets alternate between generations,
//! added Services have fresh names); the messages a change sends are counted and printed once.
//! The allocator counts only while a measurement runs (outside, one relaxed load per call), and
//! nothing else runs then, so its figures are exact byte deltas from the measurement's start.
//! The peak includes the change list a source would send and the fake kernel's copy of the
//! virtual servers, addresses and set elements (a real kernel holds those outside the
//! process); "held" excludes that copy (its size is printed on its own line).

mod support;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kproxy::backends::ipvs::IpvsBackend;
use kproxy::backends::ipvs::fake_kernel::FakeKernel;
use kproxy::model::IpFamily;
use kproxy::sync::runner::Due;

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

/// A global allocator that forwards to the system's and, while enabled, keeps the net bytes
/// allocated since `start` and their peak.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    pub struct Counting;

    static ON: AtomicBool = AtomicBool::new(false);
    static NET: AtomicI64 = AtomicI64::new(0);
    static PEAK: AtomicI64 = AtomicI64::new(0);

    fn grew(bytes: i64) {
        if ON.load(Ordering::Relaxed) {
            let now = NET.fetch_add(bytes, Ordering::Relaxed) + bytes;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
    }

    // SAFETY: every call forwards to `System` with the caller's arguments unchanged; counting
    // only touches atomics and never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc`, passed on.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size() as i64);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size() as i64);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract for `dealloc`, passed on.
            unsafe { System.dealloc(ptr, layout) };
            grew(-(layout.size() as i64));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's contract for `realloc`, passed on.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                grew(new_size as i64 - layout.size() as i64);
            }
            p
        }
    }

    /// Starts counting from zero.
    pub fn start() {
        NET.store(0, Ordering::Relaxed);
        PEAK.store(0, Ordering::Relaxed);
        ON.store(true, Ordering::SeqCst);
    }

    /// Net bytes allocated since `start`.
    pub fn net() -> i64 {
        NET.load(Ordering::Relaxed)
    }

    /// Stops counting; the peak of the net bytes since `start`.
    pub fn stop() -> i64 {
        ON.store(false, Ordering::SeqCst);
        PEAK.load(Ordering::Relaxed)
    }
}

/// Prints IPVS mode's heap for `n` Services × 10 (see the module docs): a fresh `Syncer` +
/// `IpvsBackend` on a fresh fake kernel, the cluster applied, one cold full sync.
fn heap_of_full_sync(rt: &tokio::runtime::Runtime, n: u32) {
    let mib = |bytes: i64| bytes as f64 / (1024.0 * 1024.0);
    heap::start();
    let kernel = FakeKernel::default();
    let backend = IpvsBackend::new(&support::config(), Box::new(kernel.clone()))
        .with_families(vec![IpFamily::V4]);
    let (mut syncer, shared) = support::syncer(Box::new(backend), n);
    assert!(rt.block_on(syncer.sync(Due::Full)).applied());
    let with_kernel = heap::net();
    *kernel.state() = Default::default();
    let held = heap::net();
    let peak = heap::stop();
    println!(
        "IPVS user space, {n} Services × 10: peak heap {:.1} MiB, held after sync {:.1} MiB",
        mib(peak),
        mib(held)
    );
    println!(
        "IPVS user space, {n} Services × 10: the fake kernel's state {:.1} MiB (in the peak, not \
         in held)",
        mib(with_kernel - held)
    );
    drop((syncer, shared));
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for n in support::sizes() {
        heap_of_full_sync(&rt, n);
    }
    let mut g = c.benchmark_group("userspace_ipvs");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for n in support::sizes() {
        let kernel = FakeKernel::default();
        let backend = IpvsBackend::new(&support::config(), Box::new(kernel.clone()))
            .with_families(vec![IpFamily::V4]);
        let (mut syncer, _shared) = support::syncer(Box::new(backend), n);
        g.bench_function(BenchmarkId::new("full_sync", n), |b| {
            b.iter(|| {
                // A fresh kernel, noticed as drift as the sync loop does (before the first sync
                // there is nothing to drift from), so the full sync rewrites the companion
                // tables too; without the drift check the backend's mirror still holds them and
                // the next partial sync fails on a missing table.
                *kernel.state() = Default::default();
                syncer.drifted();
                assert!(rt.block_on(syncer.sync(Due::Full)).applied());
            })
        });
        // One cold full sync outside criterion too: a label filter may have skipped the above.
        *kernel.state() = Default::default();
        syncer.drifted();
        assert!(rt.block_on(syncer.sync(Due::Full)).applied());
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
