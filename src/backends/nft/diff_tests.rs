//! Tests of the mirror and the diff: sizes of partial transactions, Services added, removed and
//! changed, and the full diff against an empty or an equal mirror.
//!
//! Invariants: pure; plans are built with the helpers of `tests.rs` (node `node-a`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::compile::compile;
use super::diff::{Mirror, Parts, Scope, diff, transaction};
use super::transaction::{DynChain, Op, Transaction, skeleton};
use crate::backends::Plans;
use crate::model::{IpFamily, Protocol, ServicePort, ServicePortName};
use crate::testing::{add, cluster_ips, config, ep, external, name, node};

/// `n` ClusterIP Services with `eps` endpoints each.
pub(super) fn many(n: u32, eps: u32) -> Plans {
    let mut plans = Plans::new();
    for i in 0..n {
        let vip = IpAddr::from([10, 96, (i / 250) as u8, (i % 250) as u8 + 1]);
        let endpoints = (0..eps)
            .map(|k| {
                ep(
                    &format!("10.{}.{}.{k}", 1 + i / 250, i % 250),
                    8080,
                    "node-b",
                )
            })
            .collect();
        let port = ServicePort::cluster_ip(svc(i), vip, 80);
        add(&mut plans, port, endpoints);
    }
    plans
}

pub(super) fn svc(i: u32) -> ServicePortName {
    name(&format!("s{i}"), "http", Protocol::Tcp)
}

/// A mirror holding everything in `plans`.
fn applied(plans: &Plans) -> Mirror {
    let mut m = Mirror::default();
    m.commit(diff(
        &m,
        &Parts::new(plans, &node(), &config()),
        Scope::Full,
    ));
    m
}

/// Replaces the endpoints of Service `i` in `plans`.
pub(super) fn set_endpoints(plans: &mut Plans, i: u32, endpoints: &[&str]) {
    let port = plans[&svc(i)].port.clone();
    add(
        plans,
        port,
        endpoints.iter().map(|a| ep(a, 8080, "node-b")).collect(),
    );
}

fn partial(mirror: &Mirror, plans: &Plans, changed: &[ServicePortName]) -> Transaction {
    let changed: BTreeSet<ServicePortName> = changed.iter().cloned().collect();
    let parts = Parts::new(plans, &node(), &config());
    transaction(mirror, &parts, Scope::Ports(&changed))
}

fn position(tx: &Transaction, pred: impl Fn(&Op) -> bool) -> Option<usize> {
    tx.ops().iter().position(pred)
}

#[test]
fn one_endpoint_change_costs_the_same_among_1000_and_10000_services() {
    let mut sizes = Vec::new();
    for n in [1000, 10_000] {
        let mut plans = many(n, 10);
        let mirror = applied(&plans);
        let mut eps: Vec<String> = (0..10).map(|k| format!("10.1.7.{k}")).collect();
        eps[5] = "10.200.0.5".into();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        set_endpoints(&mut plans, 7, &eps);
        let tx = partial(&mirror, &plans, &[svc(7)]);
        eprintln!("{n} Services: {} ops\n{tx}", tx.len());
        sizes.push(tx.len());
    }
    assert_eq!(sizes[0], sizes[1]);
    // Slots follow the plan's endpoint order, so the new endpoint (sorting last) renumbers slots
    // 5..9 (delete + add each), plus the hairpin elements of the old and the new endpoint.
    assert_eq!(sizes[0], 12);
}

#[test]
fn an_added_service_creates_its_chain_before_its_elements() {
    let mut plans = many(3, 2);
    let mirror = applied(&plans);
    let vip = IpAddr::from([10, 96, 9, 9]);
    let new = name("new", "http", Protocol::Tcp);
    let eps = vec![
        ep("10.9.0.1", 80, "node-b"),
        ep("10.9.0.2", 80, "node-b"),
        ep("10.9.0.3", 80, "node-b"),
    ];
    add(
        &mut plans,
        ServicePort::cluster_ip(new.clone(), vip, 80),
        eps,
    );
    let tx = partial(&mirror, &plans, std::slice::from_ref(&new));
    let text = tx.to_string();
    assert!(text.contains(
        "add element ip kproxy services { 10.96.9.9 . tcp . 80 comment \"default/new:http\" : goto lb-3 }"
    ));
    assert!(text.contains("10.96.9.9 . tcp . 80 . 2 : 10.9.0.3 . 80"));
    let chain = position(&tx, |op| matches!(op, Op::AddChain(_, c, _) if c == "lb-3"));
    let element = position(&tx, |op| matches!(op, Op::AddElement(_, "services", ..)));
    assert!(chain.is_some() && chain < element, "{text}");
    assert!(
        !tx.ops()
            .iter()
            .any(|op| matches!(op, Op::DeleteElement(..)))
    );
}

#[test]
fn a_removed_service_deletes_its_elements_and_then_its_last_chain() {
    let mut plans = many(3, 2);
    set_endpoints(&mut plans, 1, &["10.1.1.0", "10.1.1.1", "10.1.1.2"]);
    let mirror = applied(&plans);
    plans.remove(&svc(1));
    let tx = partial(&mirror, &plans, &[svc(1)]);
    let last = position(&tx, |op| matches!(op, Op::DeleteElement(_, "services", _)));
    let chain = position(&tx, |op| matches!(op, Op::DeleteChain(_, c) if c == "lb-3"));
    assert!(last.is_some() && last < chain, "{tx}");
    // services, 3 endpoint slots, cluster-ports, cluster-ips, 3 hairpin elements, the chain.
    assert_eq!(tx.len(), 10, "{tx}");
    assert!(
        !tx.ops()
            .iter()
            .any(|op| matches!(op, Op::AddElement(..) | Op::AddChain(..)))
    );
}

#[test]
fn a_changed_port_moves_the_service_elements_to_the_new_key() {
    let mut plans = many(3, 2);
    let mirror = applied(&plans);
    let mut port = plans[&svc(2)].port.clone();
    port.port = 8443;
    let eps = plans[&svc(2)].endpoints.clone();
    add(&mut plans, port, eps);
    let text = partial(&mirror, &plans, &[svc(2)]).to_string();
    assert!(text.contains("delete element ip kproxy services { 10.96.0.3 . tcp . 80 }"));
    assert!(text.contains(
        "add element ip kproxy services { 10.96.0.3 . tcp . 8443 comment \"default/s2:http\" : goto lb-2 }"
    ));
    assert!(
        !text.contains("hairpin"),
        "endpoints did not change:\n{text}"
    );
}

#[test]
fn a_full_diff_against_an_empty_mirror_is_a_complete_load() {
    for plans in [cluster_ips(), external(), many(50, 3)] {
        let parts = Parts::new(&plans, &node(), &config());
        let tx = transaction(&Mirror::default(), &parts, Scope::Full);
        let d = compile(&plans, &node(), &config());
        let mut load = Transaction::default();
        load.extend(skeleton(&d));
        for family in [IpFamily::V4, IpFamily::V6] {
            let fam = d.family(family);
            let lb = fam.lb_chains.iter().map(|(p, n)| DynChain::Lb(p, *n));
            let aff = fam
                .affinity_timeouts
                .iter()
                .map(|(p, t)| DynChain::Affinity(p, *t));
            for c in lb.chain(aff) {
                load.extend(c.create(family));
            }
        }
        for family in [IpFamily::V4, IpFamily::V6] {
            for (set, elements) in &d.family(family).sets {
                for (k, v) in elements {
                    load.push(Op::AddElement(family, set, k.clone(), v.clone()));
                }
            }
        }
        assert_eq!(tx, load);
    }
}

#[test]
fn a_full_diff_against_an_equal_mirror_is_empty() {
    for plans in [cluster_ips(), external(), many(50, 3)] {
        let mirror = applied(&plans);
        let parts = Parts::new(&plans, &node(), &config());
        let tx = transaction(&mirror, &parts, Scope::Full);
        assert!(tx.is_empty(), "{tx}");
    }
}

#[test]
fn partial_commits_leave_the_same_mirror_as_a_full_one() {
    let mut plans = many(20, 3);
    let mut mirror = applied(&plans);
    set_endpoints(&mut plans, 4, &["10.1.4.0"]);
    plans.remove(&svc(5));
    let changed: BTreeSet<_> = [svc(4), svc(5)].into_iter().collect();
    let parts = Parts::new(&plans, &node(), &config());
    mirror.commit(diff(&mirror, &parts, Scope::Ports(&changed)));
    assert_eq!(mirror, applied(&plans));
}

#[test]
fn an_uncommitted_diff_leaves_the_mirror_as_it_was() {
    let plans = many(5, 2);
    let mirror = applied(&plans);
    let before = mirror.clone();
    let _ = diff(
        &mirror,
        &Parts::new(&Plans::new(), &node(), &config()),
        Scope::Full,
    );
    assert_eq!(mirror, before);
}

#[test]
fn an_element_two_ports_share_stays_until_the_last_of_them_leaves() {
    // One pod behind two Services: one hairpin pair, wanted by both.
    let (a, b) = (
        name("a", "http", Protocol::Tcp),
        name("b", "http", Protocol::Tcp),
    );
    let mut plans = Plans::new();
    for (svc, vip) in [(&a, [10, 96, 7, 7]), (&b, [10, 96, 7, 8])] {
        let port = ServicePort::cluster_ip(svc.clone(), IpAddr::from(vip), 80);
        add(&mut plans, port, vec![ep("10.1.0.1", 80, "node-b")]);
    }
    let hairpin = |op: &Op| matches!(op, Op::DeleteElement(_, "hairpin", _));
    let load = transaction(
        &Mirror::default(),
        &Parts::new(&plans, &node(), &config()),
        Scope::Full,
    );
    let pairs = load
        .ops()
        .iter()
        .filter(|op| matches!(op, Op::AddElement(_, "hairpin", ..)))
        .count();
    assert_eq!(pairs, 1, "one pair for both: {load}");
    let mut mirror = applied(&plans);
    for (gone, deleted) in [(&a, false), (&b, true)] {
        plans.remove(gone);
        let changed = BTreeSet::from([gone.clone()]);
        let d = diff(
            &mirror,
            &Parts::new(&plans, &node(), &config()),
            Scope::Ports(&changed),
        );
        assert_eq!(
            position(&d.tx, hairpin).is_some(),
            deleted,
            "{gone} left: {}",
            d.tx
        );
        mirror.commit(d);
    }
    let node_only = applied(&Plans::new()).records();
    assert_eq!(
        mirror.records(),
        node_only,
        "only the node's records are left"
    );
}
