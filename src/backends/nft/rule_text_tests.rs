//! The rules kproxy compiles, loaded into a real kernel (a throwaway network namespace), read
//! back over netlink and written as text: the same texts, chain by chain, in both families, for
//! the shared example plans (ClusterIPs, NodePorts, externalIPs, LoadBalancer IPs with source
//! ranges, affinity, traffic policies); and what kproxy does not write comes out as words the
//! tracer refuses.
//!
//! Invariants: as `transport_tests` (root only; skip without, failure under CI=true).

use std::collections::BTreeMap;

use super::*;
use crate::backends::Backend;
use crate::backends::nft::NftBackend;
use crate::backends::nft::fake_kernel::FakeKernel;
use crate::backends::nft::ruleset::{self, Tables};
use crate::backends::nft::transport_tests::Netns;
use crate::nftables::{listing, rules};
use crate::testing::{claimed, cluster_ips, config, external, node};

/// Every chain's rules as read from the kernel in `ns` and written as text.
fn kernel_rules(ns: &Netns, family: IpFamily) -> BTreeMap<String, Vec<String>> {
    let read = crate::netns::run_in(&ns.name, move || {
        let anon = |set: &str| {
            let mut keys = Vec::new();
            listing::elements(family, "kproxy", set, |e| keys.push(e.key.to_vec()))
                .expect("anonymous set");
            keys
        };
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rule in rules::rules(family, "kproxy").expect("rule dump") {
            let t = text(&rule.exprs, family, &anon);
            out.entry(rule.chain).or_default().push(t);
        }
        out
    })
    .expect("in the namespace");
    read.into_iter()
        .map(|(c, rs)| (c, rs.into_iter().map(|r| sub_second(&r)).collect()))
        .collect()
}

/// The kernel keeps timeouts in jiffies: a timeout under a second reads back rounded up to one.
fn sub_second(rule: &str) -> String {
    let mut words: Vec<String> = rule.split(' ').map(str::to_string).collect();
    for i in 1..words.len() {
        let ms = words[i]
            .strip_suffix("ms")
            .and_then(|n| n.parse::<u64>().ok());
        if words[i - 1] == "timeout" && ms.is_some_and(|ms| ms < 1000) {
            words[i] = "(under a second)".into();
        }
    }
    words.join(" ")
}

#[test]
fn every_compiled_rule_reads_back_from_the_kernel_as_the_text_kproxy_wrote() {
    let mut all = cluster_ips();
    all.extend(external());
    let all = claimed(&all);
    let script = NftBackend::new(config(), FakeKernel::new()).render(&all, &node());
    let Some(ns) = Netns::new() else {
        return;
    };
    let loaded = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())?;
            c.wait()
        })
        .expect("nft -f");
    assert!(loaded.success(), "nft -f refused the compiled ruleset");
    let mut tables = Tables::default();
    ruleset::apply_script(&mut tables, &script).expect("the compiled ruleset loads");
    let mut compared = 0;
    for family in [IpFamily::V4, IpFamily::V6] {
        let compiled = tables.get(family).expect("a table per family");
        let kernel = kernel_rules(&ns, family);
        for (chain, c) in &compiled.chains {
            let want: Vec<String> = c.rules.iter().map(|r| sub_second(r)).collect();
            let got = kernel.get(chain).cloned().unwrap_or_default();
            assert_eq!(got, want, "{family:?} chain {chain}");
            compared += want.len();
        }
        let extra: Vec<&String> = kernel
            .keys()
            .filter(|c| !compiled.chains.contains_key(*c))
            .collect();
        assert!(extra.is_empty(), "chains kproxy did not write: {extra:?}");
    }
    assert!(compared > 80, "only {compared} rules compared");
}

fn expr(name: &str, attrs: &[(u16, Vec<u8>)]) -> Expr {
    Expr {
        name: name.into(),
        attrs: attrs.to_vec(),
    }
}

fn be(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[test]
fn an_expression_kproxy_never_writes_comes_out_as_a_word_the_tracer_refuses() {
    let rule = [
        expr(
            "payload",
            &[(1, be(1)), (2, be(1)), (3, be(16)), (4, be(4))],
        ),
        expr("log", &[]),
    ];
    let t = text(&rule, IpFamily::V4, &|_| vec![]);
    assert_eq!(t, "unknown-expression-log");
    let odd_offset = [expr(
        "payload",
        &[(1, be(1)), (2, be(1)), (3, be(20)), (4, be(4))],
    )];
    let anon = |_: &str| vec![];
    let lookup = expr("lookup", &[(1, b"cluster-ips\0".to_vec()), (2, be(1))]);
    let t = text(&[odd_offset[0].clone(), lookup], IpFamily::V4, &anon);
    assert!(t.starts_with("unknown-payload"), "{t}");
}
