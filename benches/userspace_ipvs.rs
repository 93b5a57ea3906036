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
//! process); "held" excludes that copy (its size is printed on its own line). A third line gives
//! both figures without the blocks allocated inside a fake kernel call (its state, its script
//! checks, the messages it encodes and decodes back), wherever they are freed: what IPVS
//! mode's own user space holds. It does not include what the live kernel path costs in the
//! process and the fake does not (libnftables parsing a companion script, the socket's
//! buffers).

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kproxy::backends::ipvs::IpvsBackend;
use kproxy::backends::ipvs::fake_kernel::FakeKernel;
use kproxy::backends::ipvs::kernel::{Kernel, KernelError};
use kproxy::backends::ipvs::netlink::{DestState, IpvsMessage, ServiceKey, VirtualServer};
use kproxy::model::IpFamily;
use kproxy::sync::runner::Due;

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

/// A global allocator that forwards to the system's and, while enabled, keeps the net bytes
/// allocated since `start` and their peak, in all and without the fake kernel's own: every
/// block carries a header saying whether it was allocated inside a fake kernel call
/// (`InKernel`), and counts as the fake kernel's until it is freed, wherever that happens.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    pub struct Counting;

    static ON: AtomicBool = AtomicBool::new(false);
    static KERNEL: AtomicBool = AtomicBool::new(false);
    static NET: AtomicI64 = AtomicI64::new(0);
    static PEAK: AtomicI64 = AtomicI64::new(0);
    /// The part of `NET` in blocks allocated inside the fake kernel.
    static NET_KERNEL: AtomicI64 = AtomicI64::new(0);
    /// The peak of `NET - NET_KERNEL`.
    static PEAK_OWN: AtomicI64 = AtomicI64::new(0);

    fn grew(bytes: i64, kernel: bool) {
        if ON.load(Ordering::Relaxed) {
            let now = NET.fetch_add(bytes, Ordering::Relaxed) + bytes;
            PEAK.fetch_max(now, Ordering::Relaxed);
            let k = if kernel {
                NET_KERNEL.fetch_add(bytes, Ordering::Relaxed) + bytes
            } else {
                NET_KERNEL.load(Ordering::Relaxed)
            };
            PEAK_OWN.fetch_max(now - k, Ordering::Relaxed);
        }
    }

    /// The header before each block (at least 16 bytes, so blocks keep their alignment); its
    /// first byte is 1 for a block allocated inside the fake kernel.
    fn header(layout: Layout) -> usize {
        layout.align().max(16)
    }

    fn outer(layout: Layout, size: usize) -> Layout {
        let h = header(layout);
        Layout::from_size_align(size + h, h).expect("a valid layout stays valid with its header")
    }

    // SAFETY: every block is the caller's layout with a header in front, allocated and freed
    // with `System` under the same outer layout; counting only touches atomics and never
    // allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the outer layout has a non-zero size.
            let p = unsafe { System.alloc(outer(layout, layout.size())) };
            if p.is_null() {
                return p;
            }
            let kernel = KERNEL.load(Ordering::Relaxed);
            // SAFETY: the header is inside the block just allocated.
            unsafe { p.write(u8::from(kernel)) };
            grew(layout.size() as i64, kernel);
            // SAFETY: the header's size is less than the block's.
            unsafe { p.add(header(layout)) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `alloc` or `realloc` above, a header after the block's start.
            let base = unsafe { ptr.sub(header(layout)) };
            // SAFETY: the header was written when the block was allocated.
            let kernel = unsafe { base.read() } == 1;
            // SAFETY: the block was allocated with this outer layout.
            unsafe { System.dealloc(base, outer(layout, layout.size())) };
            grew(-(layout.size() as i64), kernel);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let h = header(layout);
            // SAFETY: as in `dealloc`.
            let base = unsafe { ptr.sub(h) };
            // SAFETY: the block was allocated with this outer layout; the new one keeps its
            // alignment; realloc keeps the header's byte.
            let p = unsafe { System.realloc(base, outer(layout, layout.size()), new_size + h) };
            if p.is_null() {
                return p;
            }
            // SAFETY: the header moved with the block.
            let kernel = unsafe { p.read() } == 1;
            grew(new_size as i64 - layout.size() as i64, kernel);
            // SAFETY: as in `alloc`.
            unsafe { p.add(h) }
        }
    }

    /// Starts counting from zero.
    pub fn start() {
        NET.store(0, Ordering::Relaxed);
        PEAK.store(0, Ordering::Relaxed);
        NET_KERNEL.store(0, Ordering::Relaxed);
        PEAK_OWN.store(0, Ordering::Relaxed);
        ON.store(true, Ordering::SeqCst);
    }

    /// Net bytes allocated since `start`, and the part of them the fake kernel allocated.
    pub fn net() -> (i64, i64) {
        (
            NET.load(Ordering::Relaxed),
            NET_KERNEL.load(Ordering::Relaxed),
        )
    }

    /// Stops counting; the peak of the net bytes since `start`, and of those outside the fake
    /// kernel's blocks.
    pub fn stop() -> (i64, i64) {
        ON.store(false, Ordering::SeqCst);
        (
            PEAK.load(Ordering::Relaxed),
            PEAK_OWN.load(Ordering::Relaxed),
        )
    }

    /// Runs `f` as the fake kernel: what it allocates is the fake kernel's.
    pub fn in_kernel<T>(f: impl FnOnce() -> T) -> T {
        KERNEL.store(true, Ordering::Relaxed);
        let out = f();
        KERNEL.store(false, Ordering::Relaxed);
        out
    }
}

/// The fake kernel, with what it allocates counted as its own (`heap::in_kernel`).
struct InKernel(FakeKernel);

impl Kernel for InKernel {
    fn load_ipvs(&mut self) -> Result<(), KernelError> {
        heap::in_kernel(|| self.0.load_ipvs())
    }
    fn ipvs(&mut self, messages: Vec<IpvsMessage>) -> Result<usize, KernelError> {
        heap::in_kernel(|| self.0.ipvs(messages))
    }
    fn ipvs_loaded(&mut self) -> bool {
        heap::in_kernel(|| self.0.ipvs_loaded())
    }
    fn services(&mut self) -> Result<Vec<VirtualServer>, KernelError> {
        heap::in_kernel(|| self.0.services())
    }
    fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestState>, KernelError> {
        heap::in_kernel(|| self.0.dests(service))
    }
    fn service(&mut self, service: &ServiceKey) -> Result<Option<VirtualServer>, KernelError> {
        heap::in_kernel(|| self.0.service(service))
    }
    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError> {
        heap::in_kernel(|| self.0.addresses())
    }
    fn bind(&mut self, add: Vec<IpAddr>, remove: Vec<IpAddr>) -> Result<usize, KernelError> {
        heap::in_kernel(|| self.0.bind(add, remove))
    }
    fn link_present(&mut self) -> Result<bool, KernelError> {
        heap::in_kernel(|| self.0.link_present())
    }
    fn is_local(&mut self, ip: IpAddr) -> Result<bool, KernelError> {
        heap::in_kernel(|| self.0.is_local(ip))
    }
    fn nft(&mut self, script: &str) -> Result<(), KernelError> {
        heap::in_kernel(|| self.0.nft(script))
    }
    fn table_present(&mut self, family: IpFamily, table: &str) -> Result<bool, KernelError> {
        heap::in_kernel(|| self.0.table_present(family, table))
    }
    fn companion_rules(&mut self, family: IpFamily) -> Result<usize, KernelError> {
        heap::in_kernel(|| self.0.companion_rules(family))
    }
    fn sysctl(&mut self, path: &str, value: &str) -> Result<(), KernelError> {
        heap::in_kernel(|| self.0.sysctl(path, value))
    }
    fn delete_link(&mut self) -> Result<bool, KernelError> {
        heap::in_kernel(|| self.0.delete_link())
    }
    fn host_addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError> {
        heap::in_kernel(|| self.0.host_addresses())
    }
}

/// Prints IPVS mode's heap for `n` Services × 10 (see the module docs): a fresh `Syncer` +
/// `IpvsBackend` on a fresh fake kernel, the cluster applied, one cold full sync.
fn heap_of_full_sync(rt: &tokio::runtime::Runtime, n: u32) {
    let mib = |bytes: i64| bytes as f64 / (1024.0 * 1024.0);
    heap::start();
    let kernel = FakeKernel::default();
    let backend = IpvsBackend::new(&support::config(), Box::new(InKernel(kernel.clone())))
        .with_families(vec![IpFamily::V4]);
    let (mut syncer, shared) = support::syncer(Box::new(backend), n);
    assert!(rt.block_on(syncer.sync(Due::Full)).applied());
    let (with_kernel, _) = heap::net();
    *kernel.state() = Default::default();
    let (held, in_kernel) = heap::net();
    let (peak, peak_own) = heap::stop();
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
    println!(
        "IPVS user space, {n} Services × 10: without the blocks the fake kernel allocated (its \
         state, its parsing, the messages it decodes): peak heap {:.1} MiB, held after sync \
         {:.1} MiB",
        mib(peak_own),
        mib(held - in_kernel)
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
                rt.block_on(syncer.drifted());
                assert!(rt.block_on(syncer.sync(Due::Full)).applied());
            })
        });
        // One cold full sync outside criterion too: a label filter may have skipped the above.
        *kernel.state() = Default::default();
        rt.block_on(syncer.drifted());
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
