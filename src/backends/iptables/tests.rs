//! Golden tests of the iptables compile step (the exact restore input a fresh node gets), the
//! size of partial restores, and real-kernel checks that both iptables variants accept the
//! ruleset and that adoption is idempotent.
//!
//! Invariants: fixtures are the shared ones (`crate::testing`), so both backends are pinned
//! on the same plans; golden files live in `golden/` and are rewritten when KPROXY_BLESS=1.

use std::collections::BTreeSet;

use super::compile::{Table, compile, compile_fixed};
use super::load;
use super::mirror::{Mirror, Scope};
use crate::backends::{BackendConfig, Plans};
use crate::model::{IpFamily, Protocol, ServicePort};
use crate::testing::{add, cluster_ips, config, ep, external, ip, name, node, services};

fn iptables_config() -> BackendConfig {
    BackendConfig {
        localhost_nodeports: true,
        ..config()
    }
}

/// The restore input of both families on a host without kproxy's chains.
fn fresh_load(plans: &Plans) -> String {
    compile(plans, &node(), &iptables_config())
        .iter()
        .map(|(family, rules)| {
            format!(
                "# {}\n{}",
                family.as_str(),
                load::plan(rules, &Default::default())
            )
        })
        .collect()
}

fn golden(file: &str, actual: &str) {
    crate::testing::golden_in("src/backends/iptables/golden", file, actual);
}

#[test]
fn cluster_ips_compile_to_the_golden_restore_input() {
    golden("cluster_ips.rules", &fresh_load(&cluster_ips()));
}

#[test]
fn external_traffic_compiles_to_the_golden_restore_input() {
    golden("external.rules", &fresh_load(&external()));
}

/// The v4 mirror after a load of `plans`.
fn loaded(plans: &Plans, config: &BackendConfig) -> Mirror {
    let fixed = compile_fixed(IpFamily::V4, &node(), config);
    let local = node().local_traffic;
    let ports = load::compiled(plans, IpFamily::V4, config, &local);
    let load = load::Load::new(&fixed, &Default::default(), &ports);
    let port_rules = load.port_rules().clone();
    Mirror::loaded(fixed, plans, port_rules, local.clone())
}

/// The restore input of a partial sync that changes one Service's endpoints and adds another.
fn partial_input(n: u32) -> String {
    partial_input_restore(n).to_string()
}

fn partial_input_restore(n: u32) -> super::restore::Restore {
    let config = iptables_config();
    let mut plans = services(n);
    let mirror = loaded(&plans, &config);
    let changed_name = name("s1", "", Protocol::Tcp);
    let added = name("added", "", Protocol::Tcp);
    add(
        &mut plans,
        ServicePort::cluster_ip(changed_name.clone(), ip("10.96.0.2"), 80),
        vec![ep("10.1.1.9", 80, "node-b")],
    );
    add(
        &mut plans,
        ServicePort::cluster_ip(added.clone(), ip("10.99.0.1"), 80),
        vec![ep("10.2.0.1", 80, "node-b")],
    );
    let changed = BTreeSet::from([changed_name, added]);
    let scope = Scope::Ports(&changed);
    mirror.diff(&plans, scope, IpFamily::V4, &config).restore
}

#[test]
fn a_partial_restore_is_the_same_size_among_ten_or_ten_thousand_services() {
    let small = partial_input(10);
    let large = partial_input(10_000);
    assert_eq!(
        small, large,
        "the input must not depend on the number of Services"
    );
    // One chain rewritten (the changed Service), one chain and one dispatch rule added.
    assert_eq!(small.matches(":KPROXY-SVC-").count(), 2, "{small}");
    assert_eq!(small.matches("-A KPROXY-PORTALS ").count(), 1, "{small}");
    assert!(
        !small.contains(":KPROXY-PORTALS"),
        "never redeclares a dispatch chain: {small}"
    );
}

#[test]
fn a_removed_service_loses_its_dispatch_rule_before_its_chain() {
    let config = iptables_config();
    let mut plans = services(3);
    let mirror = loaded(&plans, &config);
    let gone = BTreeSet::from([name("s1", "", Protocol::Tcp)]);
    plans.remove(&name("s1", "", Protocol::Tcp));
    let diff = mirror.diff(&plans, Scope::Ports(&gone), IpFamily::V4, &config);
    let text = diff.restore.to_string();
    let delete = text
        .find("-D KPROXY-PORTALS ")
        .expect("dispatch rule deleted");
    let remove = text.find("-X KPROXY-SVC-").expect("chain removed");
    assert!(delete < remove, "{text}");
    assert!(
        text.contains(":KPROXY-SVC-"),
        "declared (flushed) before -X: {text}"
    );
}

#[test]
fn no_chain_per_endpoint_and_a_dispatch_rule_per_vip() {
    let desired = compile(&services(100), &node(), &iptables_config());
    let v4 = &desired[&IpFamily::V4];
    let chains: usize = v4.ports.values().map(|p| p.chains.len()).sum();
    assert_eq!(chains, 100, "one chain per ClusterIP-only service port");
    let dispatch: usize = v4.ports.values().map(|p| p.dispatch.len()).sum();
    assert_eq!(dispatch, 100);
    assert!(
        v4.ports
            .values()
            .all(|p| p.chains.keys().all(|(t, _)| *t == Table::Nat))
    );
}

#[test]
fn the_masquerade_bit_sets_the_mark_everywhere_it_is_used() {
    let config = BackendConfig {
        masquerade_bit: Some(15),
        ..iptables_config()
    };
    let fixed = super::compile::compile_fixed(IpFamily::V4, &node(), &config);
    let text: Vec<&String> = fixed.chains.iter().flat_map(|(_, _, r)| r).collect();
    let marks = text.iter().filter(|r| r.contains("0x8000")).count();
    assert_eq!(marks, 3, "mark, check, clear: {text:?}");
    assert!(!text.iter().any(|r| r.contains("0x4000")), "{text:?}");
}

/// `-A` and `-I` lines per table of a restore input.
fn added_rules(text: &str) -> Vec<(Table, usize)> {
    let mut out: Vec<(Table, usize)> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            let table = Table::ALL.into_iter().find(|x| x.as_str() == t).unwrap();
            out.push((table, 0));
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            out.last_mut().expect("a rule inside a table").1 += 1;
        }
    }
    out
}

#[test]
fn rules_written_are_the_added_rules_of_each_table_as_upstreams_iptables_last_counts() {
    let config = iptables_config();
    let mut plans = cluster_ips();
    plans.extend(external());
    let fixed = compile_fixed(IpFamily::V4, &node(), &config);
    let local = node().local_traffic;
    let ports = load::compiled(&plans, IpFamily::V4, &config, &local);
    let fresh = load::Load::new(&fixed, &Default::default(), &ports);
    let text = fresh.text(&ports);
    let written: Vec<(Table, usize)> = fresh.rules_written().collect();
    assert_eq!(written, added_rules(&text), "{text}");
    assert!(written.iter().all(|(_, n)| *n > 0), "{written:?}");

    let partial = partial_input_restore(10);
    let written: Vec<(Table, usize)> = (partial.tables.iter())
        .filter(|(_, ops)| !ops.is_empty())
        .map(|(t, ops)| (*t, ops.rules_written()))
        .collect();
    let text = partial.to_string();
    assert_eq!(written, added_rules(&text), "{text}");
    let rules: usize = written.iter().map(|(_, n)| n).sum();
    assert!(
        rules > 0 && rules < partial.len(),
        "chain declarations are input but no rules: {text}"
    );
}

#[test]
fn every_rule_of_a_service_port_names_it_in_a_comment() {
    let mut plans = cluster_ips();
    plans.extend(external());
    // A name too long for nft's 128 bytes is cut there in iptables too, as upstream does.
    let long = name(&"s".repeat(63), &"p".repeat(63), Protocol::Tcp);
    add(
        &mut plans,
        ServicePort::cluster_ip(long.clone(), ip("10.96.7.7"), 80),
        vec![ep("10.0.7.1", 80, "node-a")],
    );
    let mut seen = 0;
    for rules in compile(&plans, &node(), &iptables_config()).values() {
        for (port, rules) in &rules.ports {
            let comment = crate::backends::comment::service_port(port);
            assert!(comment.len() <= 128);
            let texts = rules
                .chains
                .values()
                .flatten()
                .chain(rules.dispatch.iter().map(|(_, _, r)| r));
            for rule in texts {
                assert!(
                    rule.contains(&format!("-m comment --comment \"{comment}"))
                        || rule.contains(&format!(" for {comment} external destinations\"")),
                    "{port}: {rule}"
                );
                seen += 1;
            }
        }
    }
    assert!(seen > 30, "{seen} rules");
    let cut = crate::backends::comment::service_port(&long);
    assert_eq!(cut.len(), 128, "{cut}");
}
