//! Live tests of `NftLib` (libnftables in-process), each inside a throwaway network namespace:
//! it applies what `nft -f` applies, refuses what it refuses with nft's message, stays in its
//! namespace, and keeps working across many transactions on one context.
//!
//! Invariants: as `transport_tests` (root only; skip without, failure under CI=true); the
//! library must load wherever `nft` is installed (it is the nftables package's own), so a
//! missing library is a failure, not a skip.

use crate::backends::nft::diff::{Mirror, Parts, Scope, transaction};
use crate::backends::nft::transport_tests::Netns;
use crate::model::IpFamily;
use crate::nftables::transport::{NftError, Transport};
use crate::nftables::{Nft, NftLib};
use crate::testing::{cluster_ips, config, external, node};

fn lib(ns: &Netns) -> NftLib {
    NftLib::in_netns(&ns.name).unwrap_or_else(|e| panic!("libnftables must load here: {e}"))
}

#[test]
fn libnftables_applies_a_full_transaction_and_its_changes_as_nft_does() {
    let Some(ns) = Netns::new() else { return };
    let mut t = lib(&ns);
    for plans in [cluster_ips(), external()] {
        let parts = Parts::new(&plans, &node(), &config());
        let tx = transaction(&Mirror::default(), &parts, Scope::Full);
        let script = tx.to_string();
        t.apply(&script).unwrap_or_else(|e| panic!("{e}\n{script}"));
        let listed = ns.run(&["nft", "list", "ruleset"]);
        assert!(listed.contains("table ip kproxy"), "{listed}");
        assert!(listed.contains("table ip6 kproxy"), "{listed}");
        assert!(t.list_table(IpFamily::V4, "kproxy").unwrap().is_some());
        t.apply("delete table ip kproxy\ndelete table ip6 kproxy\n")
            .unwrap();
        assert_eq!(t.list_table(IpFamily::V4, "kproxy").unwrap(), None);
    }
}

#[test]
fn libnftables_puts_nfts_message_into_the_error_and_applies_nothing_of_a_refused_script() {
    let Some(ns) = Netns::new() else { return };
    let mut t = lib(&ns);
    let err = t
        .apply("add table ip kproxy\nadd chain ip kproxy half\nadd rule ip kproxy nope accept\n")
        .unwrap_err();
    assert!(matches!(err, NftError::ApplyRefused { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("No such file or directory"), "{text}");
    assert_eq!(
        t.list_table(IpFamily::V4, "kproxy").unwrap(),
        None,
        "a refused script left something behind"
    );
    // The error buffer was emptied: the next good script succeeds and reports nothing stale.
    t.apply("add table ip kproxy\n").unwrap();
    let err = t
        .apply("add rule ip kproxy other accept\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("other") && !err.contains("nope"), "{err}");
}

#[test]
fn libnftables_programs_only_its_own_namespace() {
    let Some(ns) = Netns::new() else { return };
    let chain = format!("only-in-{}", ns.name);
    lib(&ns)
        .apply(&format!(
            "add table ip kproxy\nadd chain ip kproxy {chain}\n"
        ))
        .unwrap();
    assert!(ns.run(&["nft", "list", "ruleset"]).contains(&chain));
    let host = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft on the host");
    assert!(
        !String::from_utf8_lossy(&host.stdout).contains(&chain),
        "the transaction reached the host's own namespace"
    );
}

#[test]
fn one_libnftables_context_keeps_working_across_many_element_changes() {
    let Some(ns) = Netns::new() else { return };
    let mut t = lib(&ns);
    t.apply("add table ip kproxy\nadd set ip kproxy s { type ipv4_addr; }\n")
        .unwrap();
    for i in 0..200u32 {
        let ip = format!("10.0.{}.{}", i / 250, i % 250);
        t.apply(&format!("add element ip kproxy s {{ {ip} }}\n"))
            .unwrap();
        if i % 2 == 0 {
            t.apply(&format!("delete element ip kproxy s {{ {ip} }}\n"))
                .unwrap();
        }
    }
    let listed = ns.run(&["nft", "list", "set", "ip", "kproxy", "s"]);
    let count = listed.matches("10.0.").count();
    assert_eq!(count, 100, "{listed}");
    // Someone else's change between two of ours is seen (the context's cache follows the
    // kernel's generation).
    ns.run(&["nft", "add", "element", "ip", "kproxy", "s", "{ 10.9.9.9 }"]);
    t.apply("delete element ip kproxy s { 10.9.9.9 }\n")
        .unwrap();
}

#[test]
fn the_detected_transport_is_libnftables_unless_the_command_is_asked_for() {
    assert_eq!(Nft::detect(true).kind(), "nft command");
    assert_eq!(
        Nft::open(crate::nftables::NftTransport::Netlink).kind(),
        "nft command, elements over netlink"
    );
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok()
    {
        assert_eq!(Nft::detect(false).kind(), "libnftables");
    }
}
