//! Live tests of drift repair in nftables mode, each in a throwaway network namespace: every
//! kind of change someone else makes to kproxy's table is reported by the next drift check
//! (naming the process and what it changed), and the next full sync puts the table back exactly
//! as it was: in place (sets read back, chains reloaded) when only elements or rules changed,
//! by adoption otherwise. kproxy's own syncs are never drift, on every transport, and a change
//! made while one of kproxy's large writes runs unsubscribed is drift too.
//!
//! Invariants: root only (skip without, failure under CI=true); nothing outside the
//! namespaces is touched.

use crate::backends::Backend;
use crate::backends::nft::transport_tests::Netns;
use crate::backends::nft::{NftBackend, kproxy_tables};
use crate::model::IpFamily;
use crate::nftables::transport::{NftCli, Transport};
use crate::nftables::{NftLib, NftNetlink, Watched};
use crate::testing::{cluster_ips, config, external, node, services};

fn listing(ns: &Netns) -> String {
    let v4 = ns.run(&["nft", "list", "table", "ip", "kproxy"]);
    let v6 = ns.run(&["nft", "list", "table", "ip6", "kproxy"]);
    format!("{v4}{v6}")
}

fn watched<T: Transport>(ns: &Netns, inner: T) -> NftBackend<Watched<T>> {
    NftBackend::new(config(), Watched::new(inner, Some(&ns.name), kproxy_tables))
}

/// The handle of the last rule of a chain (`nft -a`).
fn last_handle(ns: &Netns, chain: &str) -> String {
    let text = ns.run(&["nft", "-a", "list", "chain", "ip", "kproxy", chain]);
    let handle = text.rsplit("# handle ").next().unwrap_or_default();
    handle
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// (what someone does, the words the drift report must hold, repaired in place).
fn changes(ns: &Netns) -> Vec<(Vec<String>, &'static str, bool)> {
    let nft = |args: &str| -> Vec<String> {
        std::iter::once("nft".to_string())
            .chain(args.split(' ').map(str::to_string))
            .collect()
    };
    let handle = last_handle(ns, "nat-prerouting");
    vec![
        (
            nft("flush map ip kproxy services"),
            "element(s) of ip kproxy services",
            true,
        ),
        (
            nft("delete element ip6 kproxy services { fd96::10 . tcp . 80 }"),
            "deleted 1 element(s) of ip6 kproxy services",
            true,
        ),
        (
            nft("add element ip kproxy services { 10.255.0.1 . tcp . 1 : drop }"),
            "added 1 element(s) of ip kproxy services",
            true,
        ),
        (
            nft("flush chain ip kproxy services"),
            "rule(s) in ip kproxy services",
            true,
        ),
        (
            nft(&format!(
                "delete rule ip kproxy nat-prerouting handle {handle}"
            )),
            "deleted 1 rule(s) in ip kproxy nat-prerouting",
            true,
        ),
        (
            nft("add rule ip kproxy nat-output drop"),
            "added 1 rule(s) in ip kproxy nat-output",
            true,
        ),
        (
            nft("add chain ip kproxy intruder"),
            "added chain ip kproxy intruder",
            false,
        ),
        (
            nft("delete table ip kproxy"),
            "deleted table ip kproxy",
            false,
        ),
    ]
}

fn every_foreign_change_is_reported_and_repaired<T: Transport>(make: impl Fn(&Netns) -> T) {
    let Some(ns) = Netns::new() else { return };
    let mut b = watched(&ns, make(&ns));
    let mut plans = cluster_ips();
    plans.extend(external());
    b.sync_full(&plans, &node()).unwrap();
    let want = listing(&ns);
    assert!(want.contains("fd96::10 . tcp . 80"), "{want}");
    assert_eq!(b.drift().unwrap(), None, "kproxy's own load is not drift");
    for (args, words, in_place) in changes(&ns) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let what = b
            .drift()
            .unwrap()
            .unwrap_or_else(|| panic!("{args:?} is drift"));
        assert!(what.contains(words), "{args:?}: {what}");
        assert!(what.contains("(nft)"), "names the process: {what}");
        let adoptions = b.adoptions();
        b.sync_full(&plans, &node()).unwrap();
        assert_eq!(listing(&ns), want, "after {args:?}");
        assert_eq!(b.adoptions() == adoptions, in_place, "{args:?} in place?");
        assert_eq!(b.drift().unwrap(), None, "the repair is kproxy's own");
    }
}

#[test]
fn live_every_foreign_change_is_reported_and_repaired_through_the_nft_command() {
    every_foreign_change_is_reported_and_repaired(|ns| NftCli::in_netns(&ns.name));
}

#[test]
fn live_every_foreign_change_is_reported_and_repaired_through_libnftables() {
    every_foreign_change_is_reported_and_repaired(|ns| {
        NftLib::in_netns(&ns.name).expect("libnftables must load here")
    });
}

#[test]
fn live_every_foreign_change_is_reported_and_repaired_through_netlink() {
    every_foreign_change_is_reported_and_repaired(|ns| NftNetlink::in_netns(&ns.name));
}

/// The `nft` command, and someone else deleting an element of `services` right after kproxy's
/// first large script went in: inside kproxy's write, while its notifications are off.
struct Meddling {
    cli: NftCli,
    ns: String,
    done: bool,
}

impl Transport for Meddling {
    fn apply(&mut self, script: &str) -> Result<(), crate::nftables::NftError> {
        self.cli.apply(script)?;
        if !self.done && script.len() > crate::nftables::monitor::LARGE * 40 {
            self.done = true;
            let del = "delete element ip kproxy services { 10.96.0.1 . tcp . 80 }";
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &self.ns, "nft", del])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        Ok(())
    }

    fn list_table(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<Option<String>, crate::nftables::NftError> {
        self.cli.list_table(family, table)
    }

    fn list_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
    ) -> Result<Option<String>, crate::nftables::NftError> {
        self.cli.list_set(family, table, set)
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<std::collections::BTreeMap<String, usize>, crate::nftables::NftError> {
        self.cli.rule_counts(family, table)
    }
}

#[test]
fn live_a_change_during_kproxys_large_unsubscribed_write_is_drift_and_repaired() {
    let Some(ns) = Netns::new() else { return };
    let meddling = Meddling {
        cli: NftCli::in_netns(&ns.name),
        ns: ns.name.clone(),
        done: false,
    };
    let mut b = watched(&ns, meddling);
    let plans = services(500);
    b.sync_full(&plans, &node()).unwrap();
    let dispatch = || {
        let get = "get element ip kproxy services { 10.96.0.1 . tcp . 80 }";
        ns.run(&["nft", get]).contains("goto")
    };
    assert!(!dispatch(), "the meddler deleted it");
    let what = b
        .drift()
        .unwrap()
        .expect("a change during the write is drift");
    assert!(
        what.contains("during one of kproxy's large writes"),
        "{what}"
    );
    b.sync_full(&plans, &node()).unwrap();
    assert!(dispatch(), "repaired");
    assert_eq!(b.drift().unwrap(), None, "the repair is kproxy's own");
}
