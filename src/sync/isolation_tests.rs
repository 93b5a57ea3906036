//! Poison-pill isolation through the real `Syncer`, on the nftables and IPVS fake kernels: one
//! service port the kernel refuses among 1,000 leaves 999 programmed, is quarantined (gauge,
//! `Shared::quarantined`), a good Service's later change still reaches the kernel, and the bad
//! one is tried again when it changes. Also the bisection itself, on a synthetic kernel.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::quarantine::{self, Unit};
use super::runner::Due;
use super::{Outcome, Shared, Syncer};
use crate::backends::error::{Cause, Step};
use crate::backends::{Backend, BackendError};
use crate::health::service::ServiceHealthServers;
use crate::metrics::Metrics;
use crate::model::*;
use crate::node::NodeFacts;
use crate::watch::{Change, Kind};

const N: u32 = 1000;
const BAD: u32 = 617;

fn vip(i: u32) -> IpAddr {
    IpAddr::from([10, 96, (i / 250) as u8, (i % 250) as u8 + 1])
}

fn port_name(i: u32) -> ServicePortName {
    ServicePortName::new(
        NamespacedName::new("default", format!("svc-{i}")),
        "http",
        Protocol::Tcp,
    )
}

fn service(i: u32) -> Change {
    let name = port_name(i).service.clone();
    Change::Service(
        name.clone(),
        Some(
            Service {
                name,
                ports: vec![ServicePort::cluster_ip(port_name(i), vip(i), 80)],
                has_selector: true,
                origin: Some(Arc::from(format!("svc-{i}.yaml"))),
            }
            .into(),
        ),
    )
}

fn slice(i: u32, generation: u8) -> Change {
    let service = port_name(i).service.clone();
    let key = NamespacedName::new("default", format!("svc-{i}-x"));
    let endpoint = |k: u8| SliceEndpoint {
        ip: IpAddr::from([10, 1, (i % 250) as u8, k + generation]),
        ready: true,
        serving: true,
        terminating: false,
        place: crate::model::types::Place::intern(crate::model::types::Place {
            node_name: Some("node-b".into()),
            zone: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }),
    };
    Change::Slice(
        key,
        Some(
            Slice {
                service,
                family: IpFamily::V4,
                ports: vec![SlicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }],
                endpoints: vec![endpoint(1), endpoint(2)],
                trigger_time: None,
            }
            .into(),
        ),
    )
}

fn syncer(backend: Box<dyn Backend>) -> (Syncer, Arc<Shared>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared::default());
    let mut node = NodeFacts::new("node-a");
    node.local_addresses = vec!["192.168.0.2".parse().unwrap()];
    node.nodeport_ips = node.local_addresses.clone();
    let mut s = Syncer::new(
        backend,
        Box::new(crate::conntrack::Noop),
        node,
        metrics.clone(),
        shared.clone(),
        ServiceHealthServers::default(),
    )
    .with_fixed_addresses();
    for i in 0..N {
        s.apply(service(i));
        s.apply(slice(i, 0));
    }
    s.apply(Change::Listed(Kind::Services));
    s.apply(Change::Listed(Kind::EndpointSlices));
    (s, shared, metrics)
}

/// Runs the whole scenario against a backend whose kernel refuses `BAD`'s ClusterIP; `has`
/// tells whether the kernel holds a ClusterIP, `endpoint` whether it holds an endpoint.
async fn one_refused_among_a_thousand(
    backend: Box<dyn Backend>,
    has: impl Fn(IpAddr) -> bool,
    endpoint: impl Fn(IpAddr) -> bool,
) {
    let (mut s, shared, metrics) = syncer(backend);
    assert_eq!(s.sync(Due::Full).await, Outcome::Applied);
    let held = (0..N).filter(|i| has(vip(*i))).count();
    assert_eq!(held, N as usize - 1, "999 of 1,000 programmed");
    assert!(!has(vip(BAD)));
    assert_eq!(metrics.quarantined_service_ports.get(), 1);
    {
        let q = shared.quarantined.read().unwrap();
        let (unit, why) = q.iter().next().unwrap();
        assert_eq!(unit, &(port_name(BAD), IpFamily::V4));
        assert_eq!(why.origin.as_deref(), Some("svc-617.yaml"));
        assert!(why.error.contains("refused"), "{}", why.error);
    }
    // A good Service's endpoint change reaches the kernel in a partial sync.
    s.apply(slice(3, 10));
    assert_eq!(s.sync(Due::Partial).await, Outcome::Applied);
    assert!(endpoint(IpAddr::from([10, 1, 3, 11])));
    // The bad one changes: tried again, refused again, quarantined again; the rest stays.
    s.apply(slice(BAD, 10));
    assert_eq!(s.sync(Due::Partial).await, Outcome::Applied);
    assert_eq!(metrics.quarantined_service_ports.get(), 1);
    assert_eq!((0..N).filter(|i| has(vip(*i))).count(), N as usize - 1);
    // A full resync retries it and keeps it out, still serving the rest.
    assert_eq!(s.sync(Due::Full).await, Outcome::Applied);
    assert_eq!(metrics.quarantined_service_ports.get(), 1);
    assert!(endpoint(IpAddr::from([10, 1, 3, 11])));
}

#[tokio::test]
async fn a_full_resync_that_fails_for_another_reason_keeps_the_quarantine() {
    use crate::backends::nft::NftBackend;
    use crate::backends::nft::fake_kernel::FakeKernel;
    let kernel = FakeKernel::new();
    kernel.with(|k| k.poison = Some(format!("{} . tcp . 80", vip(BAD))));
    let backend = NftBackend::new(crate::testing::config(), kernel.clone());
    let (mut s, shared, metrics) = syncer(Box::new(backend));
    assert_eq!(s.sync(Due::Full).await, Outcome::Applied);
    assert_eq!(metrics.quarantined_service_ports.get(), 1);
    // The next full resync meets an unrelated failure (not a refusal): nothing is learnt about
    // the quarantined port, which stays quarantined.
    kernel.with(|k| k.fail_next = 1);
    assert_eq!(s.sync(Due::Full).await, Outcome::Resync);
    assert_eq!(metrics.quarantined_service_ports.get(), 1);
    assert_eq!(shared.quarantined.read().unwrap().len(), 1);
}

#[tokio::test]
async fn nftables_programs_999_of_1000_when_the_kernel_refuses_one() {
    use crate::backends::nft::NftBackend;
    use crate::backends::nft::fake_kernel::FakeKernel;
    let kernel = FakeKernel::new();
    kernel.with(|k| k.poison = Some(format!("{} . tcp . 80", vip(BAD))));
    let backend = NftBackend::new(crate::testing::config(), kernel.clone());
    let listing = move || kernel.listing(IpFamily::V4).unwrap_or_default();
    let l2 = listing.clone();
    one_refused_among_a_thousand(
        Box::new(backend),
        // The dispatch element, which names its Service port.
        move |ip| listing().contains(&format!("{ip} . tcp . 80 comment ")),
        move |ip| l2().contains(&format!(": {ip} . 8080")),
    )
    .await;
}

#[tokio::test]
async fn ipvs_programs_999_of_1000_when_the_kernel_refuses_one() {
    use crate::backends::ipvs::IpvsBackend;
    use crate::backends::ipvs::fake_kernel::FakeKernel;
    let kernel = FakeKernel::default();
    kernel.state().poison = Some(vip(BAD));
    let backend = IpvsBackend::new(&crate::testing::config(), Box::new(kernel.clone()))
        .with_families(vec![IpFamily::V4]);
    let k2 = kernel.clone();
    one_refused_among_a_thousand(
        Box::new(backend),
        move |ip| kernel.state().services.keys().any(|k| k.addr == ip),
        move |ip| {
            k2.state()
                .services
                .values()
                .any(|(_, dests)| dests.keys().any(|d| d.addr == ip))
        },
    )
    .await;
}

fn refused(what: &str) -> BackendError {
    BackendError::at(
        Step::Apply,
        Cause::Injected(format!(
            "Error: Could not process rule: File exists ({what})"
        )),
    )
}

fn unit(i: u32) -> Unit {
    (port_name(i), IpFamily::V4)
}

#[test]
fn bisection_finds_every_culprit_in_a_few_attempts_and_ends_on_the_good_set() {
    let units: Vec<Unit> = (0..N).map(unit).collect();
    let bad: BTreeSet<Unit> = [unit(5), unit(617), unit(618)].into_iter().collect();
    let mut attempts = 0;
    let mut last = BTreeSet::new();
    let culprits = quarantine::isolate(units, Vec::new(), |set| {
        attempts += 1;
        if set.iter().any(|u| bad.contains(u)) {
            return Err(refused("bad"));
        }
        last = set.clone();
        Ok(())
    })
    .unwrap();
    let found: BTreeSet<Unit> = culprits.into_iter().map(|(u, _)| u).collect();
    assert_eq!(found, bad);
    assert_eq!(
        last.len(),
        N as usize - 3,
        "the kernel ends with every good unit"
    );
    assert!(attempts <= 70, "{attempts} attempts");
    println!("3 culprits among 1,000: {attempts} attempts");
}

#[test]
fn a_skeleton_the_kernel_refuses_is_nobodys_fault_and_other_errors_stop_the_search() {
    let units: Vec<Unit> = (0..10).map(unit).collect();
    let e =
        quarantine::isolate(units.clone(), Vec::new(), |_| Err(refused("skeleton"))).unwrap_err();
    assert!(e.to_string().contains("skeleton"), "{e}");
    let e = quarantine::isolate(units, Vec::new(), |set| {
        if set.is_empty() {
            Ok(())
        } else {
            Err(BackendError::at(
                Step::Apply,
                Cause::Injected("the connection dropped".into()),
            ))
        }
    })
    .unwrap_err();
    assert_eq!(e.class(), crate::backends::error::Class::Resync);
}
