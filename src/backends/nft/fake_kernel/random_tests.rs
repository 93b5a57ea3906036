//! A long randomized (seeded, deterministic) sequence of plan changes applied through
//! `sync_partial` on one `FakeKernel`, checked after every step against a fresh full sync into
//! a fresh `FakeKernel`: same traces for every packet, same state, and a transaction exactly as
//! large as the change; and (root only) the same transactions replayed through real nft in a
//! throwaway netns, which must accept each one and end with the same chains and elements.
//!
//! Invariants: the generator only builds what the API server accepts, with every VIP, NodePort
//! and port number unique (no two Services claim one VIP port; `backends::random_world`,
//! shared with the iptables backend); `Rng` is a 64-bit xorshift, so a failure replays from
//! its step number.

use crate::backends::random_world::World;

use crate::backends::Backend;
use crate::backends::nft::NftBackend;
use crate::backends::nft::fake_kernel::{FakeKernel, Outcome};
use crate::backends::nft::fake_kernel_tests::{
    assert_same_state, config, expected, loaded, min_ops, node, packets_of_all,
};
use crate::backends::nft::reconcile::parse_listing;
use crate::backends::nft::transport_tests::Netns;
use crate::model::IpFamily;
use crate::nftables::transport::{NftCli, Transport};

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const STEPS: usize = 300;

#[test]
fn a_long_random_sequence_of_partial_syncs_matches_a_fresh_full_sync_at_every_step() {
    random_sequence(STEPS);
}

/// Every transaction the fake kernel accepted along a random sequence, real nft accepts too,
/// and the two end with the same chains and elements (root only, in a throwaway netns).
#[test]
fn live_nft_accepts_the_random_sequence_and_ends_where_the_fake_kernel_does() {
    let Some(ns) = Netns::new() else { return };
    let kernel = random_sequence(60);
    let mut nft = NftCli::in_netns(&ns.name);
    for (i, script) in kernel.with(|s| s.applied.clone()).iter().enumerate() {
        if let Err(e) = nft.apply(script) {
            panic!("nft refused transaction {i}, which the fake kernel accepted: {e}\n{script}");
        }
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let real = nft
            .list_table(family, "kproxy")
            .unwrap()
            .map(|l| parse_listing(&l));
        let fake = kernel.listing(family).map(|l| parse_listing(&l));
        assert_eq!(real, fake, "{family:?}");
    }
}

/// Runs `steps` random steps with every check; returns the kernel the partial syncs drove.
fn random_sequence(steps: usize) -> FakeKernel {
    let mut world = World::new(SEED);
    let mut plans = world.plans();
    let (mut backend, kernel) = loaded(&plans, &config());
    let mut total_ops = 0;
    let (cfg, nd) = (config(), node());
    for step in 0..steps {
        let (changed, what) = world.step();
        let old = std::mem::replace(&mut plans, world.plans());
        let before = kernel.tables();
        let report = match backend.sync_partial(&plans, &changed, &node()) {
            Ok(r) => r,
            Err(e) => panic!("step {step} ({what:?}): the partial sync failed: {e}"),
        };
        let (_, fresh) = loaded(&plans, &config());
        let context = format!("step {step} ({what:?}, changed {changed:?})");
        assert_same_state(&kernel, &fresh, &context);
        let probes = packets_of_all(&[&old, &plans], &node());
        let (got, want) = (kernel.trace_all(&probes), fresh.trace_all(&probes));
        for ((p, got), want) in probes.iter().zip(got).zip(want) {
            assert_eq!(got, want, "{context}: {p:?}");
            assert!(
                !matches!(got.outcome, Outcome::Broken(_)),
                "{context}: {p:?}: {got:?}"
            );
            let planned = expected(&plans, &cfg, &nd, p);
            assert_eq!(got, planned, "{context}: {p:?} against the plans");
        }
        let least = min_ops(&before, &kernel.tables());
        assert_eq!(
            report.operations, least,
            "{context}: the transaction is not minimal"
        );
        total_ops += report.operations;
        if step % 25 == 24 {
            assert_eq!(backend.drift().unwrap(), None, "{context}");
            let full = backend.sync_full(&plans, &node()).unwrap();
            assert_eq!(
                full.operations, 0,
                "{context}: a full resync found differences"
            );
        }
    }
    eprintln!(
        "{steps} steps, {total_ops} operations, {} Services at the end",
        world.len()
    );
    let mut again = NftBackend::new(config(), kernel.clone());
    again.sync_full(&plans, &node()).unwrap();
    let (_, fresh) = loaded(&plans, &config());
    assert_same_state(&kernel, &fresh, "after a restart at the end");
    kernel
}
