//! Tests of what adoption reads from nft's listing, and (root only, in a throwaway namespace) a
//! large load followed by a restart that adopts it.
//!
//! Invariants: the live test runs only inside a namespace it created (skips without root, fails
//! under CI=true).

use std::time::Instant;

use super::parse_listing;
use crate::backends::Backend;
use crate::backends::nft::NftBackend;
use crate::backends::nft::diff_tests::{many, set_endpoints};
use crate::backends::nft::transaction::SetKind;
use crate::backends::nft::transport_tests::Netns;
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
