//! Live tests of `NftCli`, each inside a throwaway network namespace, and the `Netns` guard
//! other live tests share.
//!
//! Invariants: nothing runs outside a namespace this test created; the namespace is deleted on
//! drop, also when the test fails; without root (or without `nft` / `ip`) the tests skip, and
//! under CI=true a skip is a failure. Only tables named kproxy are touched.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::backends::nft::diff::{Mirror, Parts, Scope, transaction};
use crate::model::IpFamily;
use crate::nftables::{NftCli, NftError, Transport};
use crate::testing::{cluster_ips, config, external, node};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace `kp-t-<pid>-<n>`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace, or `None` (after a skip notice) when we cannot make one. Panics
    /// under CI=true instead of skipping.
    pub fn new() -> Option<Netns> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        let name = format!(
            "kp-t-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let made = root
            && Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success());
        if !made {
            assert!(!ci, "CI=true but cannot create a network namespace (root?)");
            eprintln!("skipped: needs root, ip and nft");
            return None;
        }
        Some(Netns { name })
    }

    /// Runs a command in the namespace and returns its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn nft_cli_applies_a_script_and_lists_only_existing_tables() {
    let Some(ns) = Netns::new() else { return };
    let mut nft = NftCli::in_netns(&ns.name);
    assert_eq!(nft.list_table(IpFamily::V4, "kproxy").unwrap(), None);
    nft.apply("add table ip kproxy\nadd chain ip kproxy probe\n")
        .unwrap();
    let listed = nft.list_table(IpFamily::V4, "kproxy").unwrap().unwrap();
    assert!(listed.contains("chain probe"), "{listed}");
    assert_eq!(nft.list_table(IpFamily::V6, "kproxy").unwrap(), None);
}

#[test]
fn nft_cli_puts_nfts_message_into_the_error() {
    let Some(ns) = Netns::new() else { return };
    let mut nft = NftCli::in_netns(&ns.name);
    let err = nft
        .apply("add rule ip kproxy no-such-chain accept\n")
        .unwrap_err();
    assert!(matches!(err, NftError::ApplyRefused { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("No such file or directory"), "{text}");
}

#[test]
fn nft_cli_loads_a_full_transaction_from_an_empty_mirror() {
    let Some(ns) = Netns::new() else { return };
    let mut nft = NftCli::in_netns(&ns.name);
    for plans in [cluster_ips(), external()] {
        let parts = Parts::new(&plans, &node(), &config());
        let tx = transaction(&Mirror::default(), &parts, Scope::Full);
        let script = tx.to_string();
        let start = Instant::now();
        nft.apply(&script)
            .unwrap_or_else(|e| panic!("{e}\n{script}"));
        eprintln!(
            "full load of {} ops applied in {:?}",
            tx.len(),
            start.elapsed()
        );
        let listed = ns.run(&["nft", "list", "ruleset"]);
        assert!(listed.contains("table ip kproxy"), "{listed}");
        assert!(listed.contains("table ip6 kproxy"), "{listed}");
        nft.apply("delete table ip kproxy\ndelete table ip6 kproxy\n")
            .unwrap();
    }
}
