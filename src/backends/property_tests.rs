//! Property tests of the whole pipeline on random manifests (`manifests.rs`, `services.rs`,
//! `endpoints.rs`, `hostile.rs`): parse and validate as the `--manifests` source's first scan
//! does, plan as the sync loop does (`Syncer::render`, the dry-run path, claims included),
//! then compile for nftables, iptables and IPVS and load each ruleset into the backend's fake
//! kernel, and trace packets (`backends.rs`); a fixed-seed sample also goes through real
//! `nft -c` and `iptables-restore` (`real_tools.rs`, root only).
//!
//! Invariants: no stage panics, whatever the input (a panic fails the case and is shrunk like
//! any other failure); every fake kernel accepts what its backend compiles; packets to
//! ordinary addresses meet in all three fake kernels what the plans say. The runs are
//! deterministic (`SEED`; `PROPTEST_RNG_SEED` and `PROPTEST_CASES` override it and `CASES`),
//! failures are not persisted to files (the shrunk case is printed as the files' text), and a
//! tally checks that enough cases plan something, reach an endpoint, are refused somewhere and
//! are ordinary enough for the backends' own oracles, so the test cannot pass vacuously.

mod backends;
mod endpoints;
mod hostile;
mod manifests;
mod pools;
mod real_tools;
mod services;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use crate::backends::nft::NftBackend;
use crate::backends::nft::fake_kernel::FakeKernel;
use crate::backends::{BackendConfig, Plans};
use crate::conntrack::Noop;
use crate::health::service::ServiceHealthServers;
use crate::metrics::Metrics;
use crate::node::{DetectLocal, NodeFacts, NodePortAddresses};
use crate::state::Shared;
use crate::sync::Syncer;
use crate::watch::{Change, Kind};
use manifests::{Case, Setup};
use pools::NODE;

/// Cases of the main test: 3,000 take about 27 s on two cores in the debug test profile.
const CASES: u32 = 3000;
const SEED: u64 = 0x5eed_0018;

/// What the front half of the pipeline made of one case.
struct Pipeline {
    plans: Plans,
    node: NodeFacts,
    config: BackendConfig,
    /// The nftables dry-run output (`kproxy --dry-run --manifests`).
    nft_text: String,
    /// Documents refused.
    rejected: usize,
}

fn backend_config(setup: &Setup) -> BackendConfig {
    BackendConfig {
        masquerade_all: setup.masquerade_all,
        localhost_nodeports: setup.localhost_nodeports,
        ..crate::testing::config()
    }
}

/// The node the daemon would start with: `node-a` at 192.168.0.2 and fd00::2.
fn base_node(setup: &Setup) -> NodeFacts {
    let mut node = NodeFacts::new(NODE);
    node.local_addresses = crate::testing::node().local_addresses;
    let cidrs = ["10.0.0.0/16", "fd10::/64"].map(|c| c.parse().expect("a CIDR"));
    node.detect_local = DetectLocal::ClusterCidr(if setup.cluster_cidrs {
        cidrs.into()
    } else {
        Vec::new()
    });
    node.nodeport_addresses = match setup.nodeport_addresses {
        0 => NodePortAddresses::all(),
        1 => NodePortAddresses::primary(),
        _ => NodePortAddresses::cidrs(vec!["192.168.0.0/16".parse().expect("a CIDR")]),
    };
    node
}

fn metrics() -> Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Arc::new(Metrics::new())).clone()
}

/// Parse, validate and plan `case` as `kproxy --dry-run --manifests` does.
fn pipeline(case: &Case) -> Pipeline {
    let (changes, rejected) = crate::watch::manifests::first_scan(&case.files(), NODE);
    let config = backend_config(&case.setup);
    let shared = Arc::new(Shared::default());
    let backend = NftBackend::new(config.clone(), FakeKernel::new());
    let mut syncer = Syncer::new(
        Box::new(backend),
        Box::new(Noop),
        base_node(&case.setup),
        metrics(),
        shared.clone(),
        ServiceHealthServers::default(),
    )
    .with_fixed_addresses();
    let listed = [Kind::Services, Kind::EndpointSlices, Kind::Nodes].map(Change::Listed);
    for change in changes.into_iter().chain(listed) {
        syncer.apply(change);
    }
    let nft_text = futures::executor::block_on(syncer.render());
    let plans = shared.plans.read().expect("plans lock").clone();
    let node = shared.node.read().expect("node lock").clone();
    Pipeline {
        plans,
        node,
        config,
        nft_text,
        rejected: rejected.len(),
    }
}

/// A runner with `cases` cases from `seed` (unless the environment says otherwise).
fn runner(cases: u32, seed: u64) -> TestRunner {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    TestRunner::new(config)
}

/// Counts over a run, to show it is not vacuous.
#[derive(Debug, Default)]
struct Tally {
    cases: AtomicUsize,
    planned: AtomicUsize,
    ports: AtomicUsize,
    documents: AtomicUsize,
    rejected: AtomicUsize,
    to_endpoints: AtomicUsize,
    rejects_or_drops: AtomicUsize,
    /// Cases the backends' own oracles checked, and the packets they sent.
    ordinary: AtomicUsize,
    ordinary_packets: AtomicUsize,
}

impl Tally {
    fn case(&self, case: &Case, p: &Pipeline) {
        self.cases.fetch_add(1, Relaxed);
        self.planned
            .fetch_add(usize::from(!p.plans.is_empty()), Relaxed);
        self.ports.fetch_add(p.plans.len(), Relaxed);
        self.documents.fetch_add(case.documents(), Relaxed);
        self.rejected.fetch_add(p.rejected, Relaxed);
    }

    fn probe(&self, fate: &backends::Fate) {
        match fate {
            backends::Fate::Endpoints(_) => &self.to_endpoints,
            _ => &self.rejects_or_drops,
        }
        .fetch_add(1, Relaxed);
    }

    fn ordinary(&self, packets: usize) {
        self.ordinary.fetch_add(1, Relaxed);
        self.ordinary_packets.fetch_add(packets, Relaxed);
    }

    /// Most cases planned something.
    #[track_caller]
    fn assert_some_planned(&self) {
        let n = |a: &AtomicUsize| a.load(Relaxed);
        assert!(
            n(&self.planned) * 2 > n(&self.cases),
            "too few cases plan: {self:?}"
        );
    }

    /// Most cases planned something, packets reached endpoints and were refused, enough
    /// cases were ordinary, and some documents were refused but most were not.
    #[track_caller]
    fn assert_not_vacuous(&self) {
        self.assert_some_planned();
        let n = |a: &AtomicUsize| a.load(Relaxed);
        let (cases, documents) = (n(&self.cases), n(&self.documents));
        eprintln!("{self:?}");
        assert!(n(&self.to_endpoints) > cases / 2, "too few DNATs: {self:?}");
        assert!(
            n(&self.rejects_or_drops) > cases / 10,
            "too few refusals: {self:?}"
        );
        assert!(
            n(&self.ordinary) > cases / 10,
            "too few ordinary cases: {self:?}"
        );
        let rejected = n(&self.rejected);
        assert!(
            rejected > cases / 20 && rejected * 3 < documents,
            "{self:?}"
        );
    }
}

/// Runs `check` on `cases` random cases from `seed`, counting in `tally`; panics with the
/// shrunk case on failure.
fn run(
    cases: u32,
    seed: u64,
    tally: &Tally,
    check: impl Fn(&Pipeline) -> Result<(), TestCaseError>,
) {
    let result = runner(cases, seed).run(&manifests::case(), |case| {
        let p = pipeline(&case);
        tally.case(&case, &p);
        check(&p)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_manifests_compile_without_panics_into_rulesets_fake_kernels_accept_and_route_as_planned()
{
    let tally = Tally::default();
    run(CASES, SEED, &tally, |p| {
        backends::nftables(p, &tally)?;
        backends::iptables(p)?;
        backends::ipvs(p)
    });
    tally.assert_not_vacuous();
}
