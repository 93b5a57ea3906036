//! Tests of start-up reconciliation: parsing nft's listing, the order and size of the chunked
//! transactions, and (root only, in a throwaway namespace) a large load followed by a restart
//! that adopts it.
//!
//! Invariants: the live test runs only inside a namespace it created (skips without root, fails
//! under CI=true).

use std::time::Instant;

use super::{CHUNK_OPS, Listed, parse_listing, plan};
use crate::backends::nft::NftBackend;
use crate::backends::nft::diff::{Mirror, Parts, Scope, diff};
use crate::backends::nft::diff_tests::{many, set_endpoints};
use crate::backends::nft::transaction::{Op, SetKind, Transaction};
use crate::backends::nft::transport_tests::Netns;
use crate::backends::{Backend, Plans};
use crate::model::IpFamily;
use crate::nftables::transport::NftCli;
use crate::testing::{config, node};

const LISTING: &str = "table ip kproxy {
\tmap services {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.10 . tcp . 53 : goto lb-2,
\t\t\t     10.96.0.10 . udp . 53 : goto lb-2 }
\t}

\tmap endpoints-tcp {
\t\ttypeof ip daddr . meta l4proto . tcp dport . numgen random mod 1 : ip daddr . tcp dport
\t\telements = { 10.96.0.10 . tcp . 53 . 0 : 10.244.1.2 . 53 }
\t}

\tset firewall-allow {
\t\ttype ipv4_addr . inet_proto . inet_service . ipv4_addr
\t\tflags interval
\t\telements = { 203.0.113.10 . tcp . 443 . 198.51.100.0/24,
\t\t\t     203.0.113.10 . tcp . 80 . 198.51.100.0/24 }
\t}

\tset cluster-cidrs {
\t\ttype ipv4_addr
\t\tflags interval
\t}

\tchain lb-2 {
\t\tdnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints-tcp
\t}
}
";

#[test]
fn nft_listings_parse_into_chains_sets_and_elements_over_several_lines() {
    let l = parse_listing(LISTING);
    assert_eq!(l.chains.iter().collect::<Vec<_>>(), ["lb-2"]);
    let (kind, services) = &l.sets["services"];
    assert_eq!(*kind, SetKind::Map);
    assert_eq!(services["10.96.0.10 . udp . 53"], "goto lb-2");
    assert_eq!(services.len(), 2);
    assert_eq!(
        l.sets["endpoints-tcp"].1["10.96.0.10 . tcp . 53 . 0"],
        "10.244.1.2 . 53"
    );
    let (kind, allow) = &l.sets["firewall-allow"];
    assert_eq!(*kind, SetKind::Set);
    assert_eq!(allow["203.0.113.10 . tcp . 80 . 198.51.100.0/24"], "");
    assert!(l.sets["cluster-cidrs"].1.is_empty());
}

fn load(plans: &Plans) -> Transaction {
    diff(
        &Mirror::default(),
        &Parts::new(plans, &node(), &config()),
        Scope::Full,
    )
    .tx
}

fn is_verdict_element(op: &Op) -> bool {
    matches!(op, Op::AddElement(_, "services" | "nodeports", ..))
}

#[test]
fn a_cold_start_is_split_into_bounded_chunks_with_endpoints_before_the_verdicts_using_them() {
    let plans = many(2000, 10);
    let txs = plan(load(&plans), &[(IpFamily::V4, None), (IpFamily::V6, None)]);
    let total: usize = txs.iter().map(Transaction::len).sum();
    assert!(txs.len() >= 3, "{} transactions", txs.len());
    assert_eq!(total, load(&plans).len(), "nothing lost, nothing added");
    assert!(
        txs[0]
            .ops()
            .iter()
            .all(|op| !matches!(op, Op::AddElement(..)))
    );
    for tx in &txs[1..] {
        assert!(tx.len() <= CHUNK_OPS, "{}", tx.len());
    }
    let ops: Vec<&Op> = txs.iter().flat_map(|t| t.ops()).collect();
    let first_verdict = ops.iter().position(|op| is_verdict_element(op)).unwrap();
    let last_slot = ops
        .iter()
        .rposition(|op| matches!(op, Op::AddElement(_, "endpoints-tcp", ..)))
        .unwrap();
    assert!(
        last_slot < first_verdict,
        "every slot exists before any Service points at it"
    );
}

#[test]
fn adopting_keeps_what_is_right_replaces_what_changed_and_deletes_leftovers_last() {
    let mut plans = many(3, 2);
    let old: Listed =
        {
            // The kernel as a previous run left it: s1 had other endpoints, s9 existed, lb-7 too.
            let mut older = many(3, 2);
            set_endpoints(&mut older, 1, &["10.9.9.1", "10.9.9.2"]);
            let text = crate::backends::nft::compile::render(
                &crate::backends::nft::compile::compile(&older, &node(), &config()),
            );
            let v4 = text.split("table ip6 ").next().unwrap();
            let mut l = parse_listing(v4);
            l.sets
                .get_mut("services")
                .unwrap()
                .1
                .insert("10.96.0.99 . tcp . 80".into(), "goto lb-7".into());
            l.chains.insert("lb-7".into());
            l
        };
    set_endpoints(&mut plans, 2, &["10.1.0.2", "10.77.0.1"]);
    let txs = plan(
        load(&plans),
        &[(IpFamily::V4, Some(old)), (IpFamily::V6, None)],
    );
    let ops: Vec<&Op> = txs.iter().flat_map(|t| t.ops()).collect();
    let text: String = txs.iter().map(|t| t.to_string()).collect();
    assert!(text.starts_with("flush chain ip kproxy "), "{text}");
    assert!(
        !text.contains("flush map") && !text.contains("flush set"),
        "{text}"
    );
    assert!(
        !text.contains("element ip kproxy affinity ")
            && !text.contains("flush map ip kproxy affinity"),
        "the affinity map's entries are never touched: {text}"
    );
    // s0 is unchanged: none of its elements is sent.
    assert!(!text.contains("10.96.0.1 . tcp . 80 . 0"), "{text}");
    // s1 moved back: delete + add of each slot, adjacent.
    let slot = "10.96.0.2 . tcp . 80 . 0";
    let del = ops
        .iter()
        .position(|op| matches!(op, Op::DeleteElement(_, "endpoints-tcp", k) if k == slot))
        .unwrap();
    assert!(matches!(ops[del + 1], Op::AddElement(_, "endpoints-tcp", k, _) if k == slot));
    // The stale Service goes before its chain, which goes last.
    let stale = ops
        .iter()
        .position(
            |op| matches!(op, Op::DeleteElement(_, "services", k) if k == "10.96.0.99 . tcp . 80"),
        )
        .unwrap();
    assert_eq!(
        ops.last(),
        Some(&&Op::DeleteChain(IpFamily::V4, "lb-7".into()))
    );
    assert!(stale < ops.len() - 1);
}

#[test]
fn a_large_load_and_a_restart_that_adopts_it_live_in_a_netns() {
    let Some(ns) = Netns::new() else { return };
    let mut plans = many(3000, 10);
    let mut b = NftBackend::new(config(), NftCli::in_netns(&ns.name));
    let start = Instant::now();
    let report = b.sync_full(&plans, &node()).unwrap();
    eprintln!(
        "cold start, 3000 Services x 10 endpoints: {} ops in {:?}",
        report.operations,
        start.elapsed()
    );
    set_endpoints(&mut plans, 7, &["10.200.0.1", "10.200.0.2"]);
    let mut again = NftBackend::new(config(), NftCli::in_netns(&ns.name));
    let start = Instant::now();
    let report = again.sync_full(&plans, &node()).unwrap();
    eprintln!(
        "restart adopting it with one Service changed: {} ops in {:?}",
        report.operations,
        start.elapsed()
    );
    assert!(
        report.operations < 400,
        "{} ops: rules and one Service, not the load",
        report.operations
    );
    let listed = ns.run(&["nft", "list", "table", "ip", "kproxy"]);
    let l = parse_listing(&listed);
    let want = crate::backends::nft::compile::compile(&plans, &node(), &config());
    for (set, elements) in &want.v4.sets {
        let got = l.sets.get(*set).map(|(_, e)| e.clone()).unwrap_or_default();
        assert_eq!(&got, elements, "set {set} after adoption");
    }
    assert_eq!(again.drift().unwrap(), None);
}
