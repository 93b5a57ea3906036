//! `explain` against the mode's tracer on the rules kproxy compiles: every probe packet of the
//! shared example plans (each address and NodePort of every port and the port after it, from
//! an admitted client, a refused one, a pod and the node) agrees, in every mode; a ruleset
//! with a service's rule missing differs for that service only; the rules of only the ports
//! that concern a packet (what `kproxy explain` compiles) answer as the whole ruleset does.

use super::*;
use crate::backends::iptables::{IptablesBackend, variant::Variant};
use crate::backends::nft::NftBackend;
use crate::backends::nft::fake_kernel::FakeKernel;
use crate::backends::nft::fake_kernel_tests::{node, packets};
use crate::backends::{Backend, BackendConfig, Plans};
use crate::explain::trace::compiled;
use crate::explain::{Facts, Packet, explain};
use crate::testing::{claimed, cluster_ips, external};

fn rules(mode: ProxyMode, cfg: &BackendConfig, plans: &Plans, n: &NodeFacts) -> String {
    match mode {
        ProxyMode::Nftables => NftBackend::new(cfg.clone(), FakeKernel::new()).render(plans, n),
        ProxyMode::Iptables => IptablesBackend::new(cfg.clone(), Variant::Nft).render(plans, n),
        ProxyMode::Ipvs => {
            let kernel = Box::new(crate::backends::ipvs::fake_kernel::FakeKernel::default());
            crate::backends::ipvs::IpvsBackend::new(cfg, kernel).render(plans, n)
        }
    }
}

fn answers(mode: ProxyMode, plans: &Plans, rules: &str) -> Vec<(String, String)> {
    let n = node();
    let cfg = crate::testing::config();
    let facts = Facts {
        mode,
        node: &n,
        config: &cfg,
    };
    packets(plans, &n)
        .iter()
        .map(|p| {
            let packet = Packet {
                proto: p.proto,
                src: p.saddr,
                dst: p.daddr,
                dport: p.dport,
            };
            let e = explain(plans, &facts, &packet);
            let said = compiled(&facts, rules, &packet, &e);
            (
                format!("{packet}: {} ({})", e.verdict.as_str(), e.reason),
                said,
            )
        })
        .collect()
}

#[test]
fn every_probe_of_the_example_plans_agrees_with_the_compiled_rules_in_every_mode() {
    let mut all = cluster_ips();
    all.extend(external());
    let all = claimed(&all);
    for mode in ProxyMode::ALL {
        let text = rules(mode, &crate::testing::config(), &all, &node());
        let answers = answers(mode, &all, &text);
        assert!(answers.len() > 100, "{} probes", answers.len());
        let verdicts: std::collections::BTreeSet<&str> = answers
            .iter()
            .map(|(p, _)| {
                p.split(": ")
                    .nth(1)
                    .unwrap_or("")
                    .split(' ')
                    .next()
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(
            verdicts.len(),
            4,
            "{mode}: probes meet every verdict: {verdicts:?}"
        );
        for (packet, said) in &answers {
            assert_eq!(said, "agrees", "{mode}: {packet}");
        }
    }
}

#[test]
fn a_compiled_ruleset_missing_a_services_dispatch_differs_for_that_service_only() {
    let plans = cluster_ips();
    for mode in ProxyMode::ALL {
        let text = rules(mode, &crate::testing::config(), &plans, &node());
        let cut = match mode {
            // As an operator would: `nft delete element` after the load.
            ProxyMode::Nftables => {
                let del = "delete element ip kproxy services { 10.96.0.10 . tcp . 80 }\n";
                format!("{text}{del}")
            }
            ProxyMode::Ipvs => {
                let cut = text.lines().filter(|l| !l.contains("-t 10.96.0.10:80 "));
                cut.map(|l| format!("{l}\n")).collect()
            }
            ProxyMode::Iptables => {
                let needle = "-d 10.96.0.10/32 -p tcp";
                let kept = text.lines().filter(|l| !l.contains(needle));
                kept.map(|l| format!("{l}\n")).collect()
            }
        };
        assert_ne!(cut, text);
        let answers = answers(mode, &plans, &cut);
        let differ: Vec<&(String, String)> =
            answers.iter().filter(|(_, s)| s != "agrees").collect();
        assert!(!differ.is_empty(), "{mode}: nothing differs");
        for (packet, said) in differ {
            assert!(
                packet.contains("-> 10.96.0.10:80"),
                "{mode}: {packet} {said}"
            );
            assert!(
                said.starts_with("differs: verdict "),
                "{mode}: {packet} {said}"
            );
        }
    }
}

#[test]
fn the_rules_of_only_the_ports_that_concern_a_packet_answer_as_the_whole_ruleset_does() {
    let mut all = cluster_ips();
    all.extend(external());
    let all = claimed(&all);
    let n = node();
    let cfg = crate::testing::config();
    for mode in ProxyMode::ALL {
        let facts = Facts {
            mode,
            node: &n,
            config: &cfg,
        };
        let whole = rules(mode, &cfg, &all, &n);
        let mut fewer = 0;
        for p in packets(&all, &n) {
            let packet = Packet {
                proto: p.proto,
                src: p.saddr,
                dst: p.daddr,
                dport: p.dport,
            };
            let kept: Plans = all
                .iter()
                .filter(|(_, pl)| crate::explain::concerns(pl, &packet))
                .map(|(k, pl)| (k.clone(), pl.clone()))
                .collect();
            fewer += usize::from(kept.len() < all.len());
            let e = explain(&all, &facts, &packet);
            let part = rules(mode, &cfg, &kept, &n);
            assert_eq!(
                compiled(&facts, &part, &packet, &e),
                compiled(&facts, &whole, &packet, &e),
                "{mode}: {packet} ({} of {} ports)",
                kept.len(),
                all.len()
            );
        }
        assert!(fewer > 100, "{mode}: only {fewer} probes left ports out");
    }
}
