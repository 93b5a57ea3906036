//! Tests of `NftBackend` on a `FakeTransport` (what each sync sends, failure and repair,
//! adoption) and one live test in a throwaway network namespace.
//!
//! Invariants: the live test runs only inside a namespace it created (skips without root, fails
//! under CI=true); plans come from the helpers of `tests.rs`.

use std::collections::BTreeSet;
use std::time::Instant;

use super::NftBackend;
use crate::backends::nft::diff::{Mirror, Parts, Scope, transaction};
use crate::backends::nft::fake_transport::FakeTransport;
use crate::backends::nft::transport_tests::Netns;
use crate::backends::{Backend, Plans};
use crate::model::{IpFamily, Protocol, ServicePortName};
use crate::nftables::transport::NftCli;
use crate::testing::{add, cluster_ips, config, ep, name, node};

fn web() -> ServicePortName {
    name("web", "http", Protocol::Tcp)
}

/// `cluster_ips()` with web's third endpoint 10.0.3.1 replaced by 10.0.4.1.
fn moved(plans: &Plans) -> Plans {
    let mut plans = plans.clone();
    let port = plans[&web()].port.clone();
    let eps = vec![
        ep("10.0.1.1", 8080, "node-a"),
        ep("10.0.2.1", 8080, "node-b"),
        ep("10.0.4.1", 8080, "node-c"),
    ];
    add(&mut plans, port, eps);
    plans
}

fn changed() -> BTreeSet<ServicePortName> {
    [web()].into_iter().collect()
}

fn backend() -> (NftBackend<FakeTransport>, FakeTransport) {
    let fake = FakeTransport::default();
    (NftBackend::new(config(), fake.clone()), fake)
}

#[test]
fn the_first_full_sync_is_a_full_load() {
    let (mut b, fake) = backend();
    let plans = cluster_ips();
    let report = b.sync_full(&plans, &node()).unwrap();
    let parts = Parts::new(&plans, &node(), &config());
    let load = transaction(&Mirror::default(), &parts, Scope::Full);
    let s = fake.state.lock().unwrap();
    assert_eq!(s.applied.len(), 1, "a small load is one transaction");
    // One line per element: the order (and so the grouping into commands) may differ.
    let sorted = |text: &str| {
        let mut lines: Vec<String> = Vec::new();
        for line in text.lines() {
            match line
                .split_once(" { ")
                .filter(|_| line.contains(" element "))
            {
                Some((head, items)) => lines.extend(
                    items
                        .trim_end_matches(" }")
                        .split(", ")
                        .map(|item| format!("{head} {{ {item} }}")),
                ),
                None => lines.push(line.to_string()),
            }
        }
        lines.sort();
        lines
    };
    assert_eq!(sorted(&s.applied[0]), sorted(&load.to_string()));
    assert_eq!(report.operations, load.len());
    assert_eq!(s.lists, 2, "adoption lists both families once");
}

#[test]
fn a_partial_sync_sends_only_the_changed_elements_and_lists_nothing() {
    let (mut b, fake) = backend();
    let plans = cluster_ips();
    b.sync_full(&plans, &node()).unwrap();
    let report = b.sync_partial(&moved(&plans), &changed(), &node()).unwrap();
    let s = fake.state.lock().unwrap();
    assert_eq!(s.lists, 2, "only the first full sync lists the kernel");
    let script = &s.applied[1];
    assert_eq!(
        script,
        "delete element ip kproxy endpoints-tcp { 10.96.0.10 . tcp . 80 . 2 }\n\
         delete element ip kproxy hairpin { 10.0.3.1 . 10.0.3.1 }\n\
         add element ip kproxy endpoints-tcp { 10.96.0.10 . tcp . 80 . 2 : 10.0.4.1 . 8080 }\n\
         add element ip kproxy hairpin { 10.0.4.1 . 10.0.4.1 }\n"
    );
    assert_eq!(report.operations, 4);
}

#[test]
fn a_failed_apply_leaves_the_mirror_and_the_next_full_sync_repairs_it() {
    let (mut b, fake) = backend();
    let plans = cluster_ips();
    b.sync_full(&plans, &node()).unwrap();
    let before = b.mirror().clone();
    fake.state.lock().unwrap().fail_next = 1;
    let new = moved(&plans);
    let err = b.sync_partial(&new, &changed(), &node()).unwrap_err();
    assert!(err.to_string().contains("apply refused"), "{err}");
    assert_eq!(b.mirror(), &before);
    assert_eq!(b.failures(), 1);
    assert!(
        b.sync_partial(&new, &changed(), &node()).is_err(),
        "after a failure only a full sync may run"
    );
    b.sync_full(&new, &node()).unwrap();
    let (mut fresh, _) = backend();
    fresh.sync_full(&new, &node()).unwrap();
    assert_eq!(b.mirror(), fresh.mirror());
    let s = fake.state.lock().unwrap();
    assert!(s.applied[1].contains("10.0.4.1 . 8080"), "{}", s.applied[1]);
}

#[test]
fn adopting_an_existing_table_reloads_its_rules_keeps_its_elements_and_deletes_leftovers_last() {
    let (mut b, fake) = backend();
    let listing = "table ip kproxy {\n\tmap services {\n\t\telements = { 10.96.0.10 . tcp . 80 : goto lb-3 }\n\t}\n\
                   \tmap affinity {\n\t}\n\tset old-stuff {\n\t}\n\tchain services {\n\t}\n\
                   \tchain lb-7 {\n\t}\n}\n";
    fake.state.lock().unwrap().tables.0 = Some(listing.into());
    b.sync_full(&cluster_ips(), &node()).unwrap();
    let s = fake.state.lock().unwrap();
    assert_eq!(s.applied.len(), 1);
    let script = &s.applied[0];
    assert!(script.starts_with("flush chain ip kproxy lb-7\nflush chain ip kproxy services\n"));
    assert!(!script.contains("flush map"), "{script}");
    assert!(
        !script.contains("10.96.0.10 . tcp . 80 : goto lb-3"),
        "an element that is right is not sent again: {script}"
    );
    assert!(!script.contains("delete table"), "{script}");
    assert!(
        script.ends_with("delete chain ip kproxy lb-7\ndelete set ip kproxy old-stuff\n"),
        "{script}"
    );
}

#[test]
fn drift_is_a_rule_count_that_differs_from_the_mirror_and_makes_the_next_full_sync_adopt() {
    let (mut b, fake) = backend();
    assert_eq!(b.drift().unwrap(), None, "nothing loaded: nothing to check");
    b.sync_full(&cluster_ips(), &node()).unwrap();
    {
        let mut s = fake.state.lock().unwrap();
        s.rule_counts = (
            b.mirror().expected_rule_counts(IpFamily::V4),
            b.mirror().expected_rule_counts(IpFamily::V6),
        );
    }
    assert_eq!(b.drift().unwrap(), None);
    fake.state.lock().unwrap().rule_counts.0.remove("services");
    let what = b.drift().unwrap().expect("a flushed chain is drift");
    assert!(
        what.starts_with("ip kproxy: chain services has 0 rules"),
        "{what}"
    );
    let lists = fake.state.lock().unwrap().lists;
    b.sync_full(&cluster_ips(), &node()).unwrap();
    assert_eq!(
        fake.state.lock().unwrap().lists,
        lists + 2,
        "the repair adopts"
    );
}

#[test]
fn cleanup_deletes_both_tables_even_when_absent() {
    let (mut b, fake) = backend();
    b.cleanup().unwrap();
    let s = fake.state.lock().unwrap();
    assert!(s.applied[0].contains("delete table ip kproxy\n"));
    assert!(s.applied[0].contains("delete table ip6 kproxy\n"));
}

#[test]
fn live_full_then_partial_sync_moves_the_endpoint_in_a_netns() {
    let Some(ns) = Netns::new() else { return };
    let mut b = NftBackend::new(config(), NftCli::in_netns(&ns.name));
    let plans = cluster_ips();
    let start = Instant::now();
    let full = b.sync_full(&plans, &node()).unwrap();
    eprintln!(
        "full sync: {} ops in {:?}",
        full.operations,
        start.elapsed()
    );
    let new = moved(&plans);
    let start = Instant::now();
    let partial = b.sync_partial(&new, &changed(), &node()).unwrap();
    eprintln!(
        "partial sync: {} ops in {:?}",
        partial.operations,
        start.elapsed()
    );
    let listed = ns.run(&["nft", "list", "table", "ip", "kproxy"]);
    assert!(listed.contains("10.0.4.1 . 8080"), "{listed}");
    assert!(!listed.contains("10.0.3.1"), "{listed}");

    // A restart adopts the table in place: same contents, no error.
    let mut again = NftBackend::new(config(), NftCli::in_netns(&ns.name));
    let start = Instant::now();
    let adopted = again.sync_full(&new, &node()).unwrap();
    eprintln!(
        "adopting full sync: {} ops in {:?}",
        adopted.operations,
        start.elapsed()
    );
    assert_eq!(ns.run(&["nft", "list", "table", "ip", "kproxy"]), listed);

    // The drift probe agrees with the kernel, then sees someone else's flush.
    let start = Instant::now();
    assert_eq!(
        again.drift().unwrap(),
        None,
        "the mirror's rule counts match"
    );
    eprintln!(
        "drift probe (both families, via a netns thread): {:?}",
        start.elapsed()
    );
    ns.run(&["nft", "flush", "table", "ip6", "kproxy"]);
    let what = again.drift().unwrap().expect("a flushed table is drift");
    assert!(what.starts_with("ip6 kproxy: "), "{what}");
    again.sync_full(&new, &node()).unwrap();
    assert_eq!(again.drift().unwrap(), None, "repaired");

    // What cleanup would remove, read without removing it.
    let plan = again.cleanup_plan().unwrap();
    assert_eq!(plan.len(), 2, "{plan:?}");
    assert!(
        plan[0].starts_with("nftables table ip kproxy ("),
        "{plan:?}"
    );
    assert!(
        plan[1].starts_with("nftables table ip6 kproxy ("),
        "{plan:?}"
    );
    assert!(!plan[0].contains("(0 chains"), "{plan:?}");
    assert!(
        ns.run(&["nft", "list", "tables"])
            .contains("table ip kproxy")
    );
    again.cleanup().unwrap();
    again.cleanup().unwrap();
    assert!(!ns.run(&["nft", "list", "ruleset"]).contains("kproxy"));
    assert_eq!(again.cleanup_plan().unwrap(), Vec::<String>::new());
}
