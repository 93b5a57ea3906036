//! The iptables backend's rules on a `Ruleset`: the golden fresh loads traced packet by
//! packet (load balancing, rejects, traffic policies, source ranges, hairpin, affinity across
//! ports), adoption over a loaded fake, and the fake's own iptables-restore semantics. The
//! long randomized sequence of partial syncs (and its replay through real iptables-nft and
//! iptables-legacy, root only) is in `fake_kernel/random_tests.rs`.
//!
//! Invariants: the node is `testing::node()` (`node-a`, 192.168.0.2 / fd00::2) and the
//! configuration that of the golden files (`iptables_config`); `expected` derives a packet's
//! fate from the plans alone (never from compile), so traces check compile, diff and the fake
//! together; every assertion prints the packet's paths when it fails.

#[path = "fake_kernel/expect.rs"]
pub(crate) mod expect;
#[path = "fake_kernel/random_tests.rs"]
mod random;
#[path = "fake_kernel/restore_tests.rs"]
mod restore;
use expect::*;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::adopt;
use super::compile::{Table, compile};
use super::load;
use super::ruleset::{Fate, Outcome, Packet, Ruleset};
use crate::backends::{BackendConfig, Plans};
use crate::model::{IpFamily, Protocol, ServicePort, ServiceType};
use crate::testing::{add, cluster_ips, config, external, ip, name, node};

const CLUSTER_IPS: &str = include_str!("golden/cluster_ips.rules");
const EXTERNAL: &str = include_str!("golden/external.rules");

#[test]
fn the_golden_fresh_loads_are_accepted_and_hold_every_rule_they_write() {
    for text in [CLUSTER_IPS, EXTERNAL] {
        for family in IpFamily::ALL {
            let input = golden_part(text, family);
            let fake = restored(family, input);
            let written = input
                .lines()
                .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
                .count();
            let saved = fake.save();
            assert_eq!(saved.matches("\n-A ").count(), written, "{saved}");
            // The hooks are the only rules of the built-in chains, each the first.
            for (table, chain) in [(Table::Nat, "PREROUTING"), (Table::Filter, "FORWARD")] {
                let rules = fake.rules(table, chain).unwrap();
                assert_eq!(rules.len(), 1, "{rules:?}");
                assert!(rules[0].contains("-j KPROXY-"), "{rules:?}");
            }
            // The same input again is accepted (every chain is declared, so flushed, first)
            // but inserts the hooks twice: why a restart adopts instead.
            let mut again = fake.clone();
            again.restore(input).unwrap();
            assert_ne!(
                again.save(),
                saved,
                "a second blind load duplicates the hooks"
            );
        }
    }
    assert_eq!(
        golden_part(CLUSTER_IPS, IpFamily::V4),
        load::plan(
            &compile(&cluster_ips(), &node(), &iptables_config())[&IpFamily::V4],
            &Default::default()
        ),
        "the golden file is the fresh load of the fixtures (tests::cluster_ips_compile_to_…)"
    );
}

#[test]
fn every_probe_of_the_golden_plans_reaches_what_the_plans_say() {
    for (text, plans) in [(CLUSTER_IPS, cluster_ips()), (EXTERNAL, external())] {
        let fakes: BTreeMap<_, _> = IpFamily::ALL
            .into_iter()
            .map(|f| (f, golden(text, f)))
            .collect();
        let probes = probes(plans.values().map(|p| &p.port));
        assert!(probes.len() >= 24, "{}", probes.len());
        assert_probes_match_plans(&fakes, &plans, &iptables_config(), &probes, "golden");
    }
}

#[test]
fn clusterip_traffic_from_a_pod_reaches_each_endpoint_with_probability_one_in_n() {
    let v4 = golden(CLUSTER_IPS, IpFamily::V4);
    let third = 1.0 / 3.0;
    let p = packet("10.0.5.5", "10.96.0.10", Protocol::Tcp, 80);
    let out = assert_fates(
        &v4,
        &p,
        &[
            (to("10.0.1.1:8080", "10.0.5.5"), third),
            (to("10.0.2.1:8080", "10.0.5.5"), third),
            (to("10.0.3.1:8080", "10.0.5.5"), third),
        ],
    );
    assert_eq!(out.paths.len(), 3, "one path per DNAT rule:\n{out}");
    assert!(
        out.paths[0]
            .via
            .iter()
            .any(|c| c.starts_with("nat KPROXY-SVC-"))
    );
    // The node's own traffic (outside the cluster CIDR) is masqueraded to its address.
    let p = from_node("192.168.0.2", "10.96.0.10", Protocol::Tcp, 80);
    assert!(
        (v4.trace(&p).probability(
            |f| matches!(f, Fate::Delivered { from, .. } if *from == ip("192.168.0.2"))
        ) - 1.0)
            .abs()
            < 1e-9
    );
    let v6 = golden(CLUSTER_IPS, IpFamily::V6);
    let p = packet("fd10::99", "fd96::10", Protocol::Tcp, 80);
    assert_fates(
        &v6,
        &p,
        &[
            (to("[fd10::1]:8080", "fd10::99"), 0.5),
            (to("[fd10::2]:8080", "fd10::99"), 0.5),
        ],
    );
    // The wrong port is no Service: delivered untouched.
    let p = packet("10.0.5.5", "10.96.0.10", Protocol::Tcp, 81);
    assert_fates(&v4, &p, &[(to("10.96.0.10:81", "10.0.5.5"), 1.0)]);
}

#[test]
fn a_service_without_endpoints_is_rejected_in_filter_tcp_with_a_reset() {
    let v4 = golden(CLUSTER_IPS, IpFamily::V4);
    let p = packet("10.0.5.5", "10.96.0.53", Protocol::Udp, 53);
    let rejected = filter("icmp-port-unreachable", "KPROXY-REJECTS");
    assert_fates(&v4, &p, &[(rejected.clone(), 1.0)]);
    let p = from_node("192.168.0.2", "10.96.0.53", Protocol::Udp, 53);
    assert_fates(&v4, &p, &[(rejected, 1.0)]);

    let mut plans = Plans::new();
    let port = ServicePort::cluster_ip(name("empty", "", Protocol::Tcp), ip("10.96.0.9"), 443);
    add(&mut plans, port, vec![]);
    let fakes = fresh(&plans, &iptables_config());
    let p = packet("10.0.5.5", "10.96.0.9", Protocol::Tcp, 443);
    assert_fates(
        &fakes[&IpFamily::V4],
        &p,
        &[(filter("tcp-reset", "KPROXY-REJECTS"), 1.0)],
    );
}

#[test]
fn an_etp_local_nodeport_from_an_external_host_reaches_only_local_endpoints_keeping_the_source() {
    let v4 = golden(EXTERNAL, IpFamily::V4);
    let p = packet("198.51.100.200", "192.168.0.2", Protocol::Tcp, 30443);
    assert_fates(&v4, &p, &[(to("10.0.1.1:8443", "198.51.100.200"), 1.0)]);
    // A pod short-circuits to every endpoint, unmasqueraded; the node, masqueraded.
    let p = packet("10.0.5.5", "192.168.0.2", Protocol::Tcp, 30443);
    let both = |from| {
        [
            (to("10.0.1.1:8443", from), 0.5),
            (to("10.0.2.1:8443", from), 0.5),
        ]
    };
    assert_fates(&v4, &p, &both("10.0.5.5"));
    let p = from_node("192.168.0.2", "192.168.0.2", Protocol::Tcp, 30443);
    assert_fates(&v4, &p, &both("192.168.0.2"));
    // Localhost NodePorts (route_localnet) are masqueraded off the loopback.
    let p = from_node("127.0.0.1", "127.0.0.1", Protocol::Tcp, 30443);
    assert_fates(&v4, &p, &both("192.168.0.2"));
}

#[test]
fn an_etp_cluster_nodeport_and_external_ip_are_masqueraded_to_the_nodes_address() {
    let v4 = golden(EXTERNAL, IpFamily::V4);
    for dst in ["192.168.0.2", "192.0.2.10"] {
        let dport = if dst == "192.0.2.10" { 9000 } else { 30900 };
        let p = packet("198.51.100.200", dst, Protocol::Sctp, dport);
        assert_fates(&v4, &p, &[(to("10.0.2.5:9000", "192.168.0.2"), 1.0)]);
    }
    let p = from_node("127.0.0.1", "127.0.0.1", Protocol::Sctp, 30900);
    assert_fates(&v4, &p, &[(to("10.0.2.5:9000", "192.168.0.2"), 1.0)]);
    // Something else on the loopback range is not for outsiders.
    let p = packet("198.51.100.200", "127.0.0.1", Protocol::Tcp, 22);
    assert_fates(&v4, &p, &[(filter("drop", "KPROXY-FILTER"), 1.0)]);
}

#[test]
fn a_load_balancer_ip_with_source_ranges_admits_an_allowed_source_and_drops_another() {
    let v4 = golden(EXTERNAL, IpFamily::V4);
    let p = packet("203.0.113.9", "198.51.100.7", Protocol::Tcp, 443);
    let out = assert_fates(&v4, &p, &[(to("10.0.1.1:8443", "203.0.113.9"), 1.0)]);
    assert!(
        out.paths[0]
            .via
            .iter()
            .any(|c| c.starts_with("nat KPROXY-FW-"))
    );
    for src in ["198.51.100.200", "10.0.5.5", "192.168.0.2"] {
        let mut p = packet(src, "198.51.100.7", Protocol::Tcp, 443);
        p.from_node = src == "192.168.0.2";
        let out = v4.trace(&p);
        assert_eq!(
            out.only(),
            Some(&filter("drop", "KPROXY-REJECTS")),
            "{p:?}\n{out}"
        );
    }
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_masqueraded_in_both_families() {
    let v4 = golden(CLUSTER_IPS, IpFamily::V4);
    let third = 1.0 / 3.0;
    let p = packet("10.0.1.1", "10.96.0.10", Protocol::Tcp, 80);
    let out = assert_fates(
        &v4,
        &p,
        &[
            (to("10.0.1.1:8080", "192.168.0.2"), third),
            (to("10.0.2.1:8080", "10.0.1.1"), third),
            (to("10.0.3.1:8080", "10.0.1.1"), third),
        ],
    );
    assert!(
        out.paths[0]
            .via
            .contains(&"nat KPROXY-POSTROUTING".to_string())
    );
    let v6 = golden(CLUSTER_IPS, IpFamily::V6);
    let p = packet("fd10::2", "fd96::10", Protocol::Tcp, 80);
    assert_fates(
        &v6,
        &p,
        &[
            (to("[fd10::1]:8080", "fd10::2"), 0.5),
            (to("[fd10::2]:8080", "fd00::2"), 0.5),
        ],
    );
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_endpoint_across_both_ports_of_sticky() {
    let mut v4 = golden(EXTERNAL, IpFamily::V4);
    let (client, other) = ("10.0.5.5", "10.0.6.6");
    let first = packet(client, "10.96.1.3", Protocol::Tcp, 1000);
    let out = assert_fates(
        &v4,
        &first,
        &[
            (to("10.0.1.7:1000", client), 0.5),
            (to("10.0.2.7:1000", client), 0.5),
        ],
    );
    let chosen = out
        .paths
        .iter()
        .find(|p| p.fate == to("10.0.2.7:1000", client))
        .unwrap();
    v4.connect(chosen);
    let second = packet(client, "10.96.1.3", Protocol::Tcp, 2000);
    assert_fates(&v4, &second, &[(to("10.0.2.7:2000", client), 1.0)]);
    assert_fates(&v4, &first, &[(to("10.0.2.7:1000", client), 1.0)]);
    let p = packet(other, "10.96.1.3", Protocol::Tcp, 2000);
    assert_eq!(v4.trace(&p).fates().len(), 2, "another client is balanced");
    // The affinity lasts `timeoutSeconds` after the last connection, then it is balanced again.
    v4.advance(10_800);
    assert_fates(&v4, &second, &[(to("10.0.2.7:2000", client), 1.0)]);
    v4.advance(1);
    assert_eq!(v4.trace(&second).fates().len(), 2);
}

#[test]
fn affinity_is_refreshed_by_each_connection_and_forgotten_with_the_service() {
    let mut v4 = golden(EXTERNAL, IpFamily::V4);
    let p = packet("10.0.5.5", "10.96.1.3", Protocol::Tcp, 1000);
    let out = v4.trace(&p);
    v4.connect(&out.paths[0]);
    v4.advance(10_000);
    let again = v4.trace(&p);
    assert_eq!(again.paths.len(), 1, "{again}");
    v4.connect(&again.paths[0]);
    v4.advance(10_000);
    assert_eq!(v4.trace(&p).paths.len(), 1, "refreshed 10000 s ago");
    // A fresh load without the Service frees its lists: back on it later, nobody is sticky.
    let list = out.paths[0].recent[0].0.clone();
    assert!(v4.recent_seen(&list, &ip("10.0.5.5")).is_some());
    let plans: Plans = external()
        .into_iter()
        .filter(|(n, _)| n.service.name != "sticky")
        .collect();
    let rules = &compile(&plans, &node(), &iptables_config())[&IpFamily::V4];
    let saved = adopt::parse_save(&v4.save());
    v4.restore(&load::plan(rules, &saved)).unwrap();
    assert_eq!(v4.recent_seen(&list, &ip("10.0.5.5")), None);
}

#[test]
fn adoption_over_a_loaded_fake_rewrites_chains_in_place_and_changes_nothing() {
    for (text, plans) in [(CLUSTER_IPS, cluster_ips()), (EXTERNAL, external())] {
        let desired = compile(&plans, &node(), &iptables_config());
        for family in IpFamily::ALL {
            let mut fake = golden(text, family);
            let before = fake.save();
            let plan = load::plan(&desired[&family], &adopt::parse_save(&before));
            assert!(
                !plan
                    .lines()
                    .any(|l| l.starts_with("-I ") || l.starts_with("-D ") || l.starts_with("-X ")),
                "{plan}"
            );
            fake.restore(&plan).unwrap();
            assert_eq!(fake.save(), before);
        }
    }
}

#[test]
fn adoption_of_another_ruleset_ends_where_a_fresh_load_does_and_keeps_foreign_rules() {
    let cfg = iptables_config();
    let mut fake = golden(EXTERNAL, IpFamily::V4);
    let foreign = "*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n\
        -I PREROUTING 1 -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES\n\
        -A OUTPUT -j KPROXY-CANARY\nCOMMIT\n";
    fake.restore(foreign).unwrap();
    let desired = &compile(&cluster_ips(), &node(), &cfg)[&IpFamily::V4];
    let plan = load::plan(desired, &adopt::parse_save(&fake.save()));
    fake.restore(&plan).unwrap();
    let mut want = fresh(&cluster_ips(), &cfg).remove(&IpFamily::V4).unwrap();
    want.restore("*nat\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n")
        .unwrap();
    assert_eq!(fake.save(), want.save(), "adoption:\n{plan}");
}

/// Found by this fake: the dispatch rules are a set sorted by text, so a firewall `-d LB … -j
/// DROP` once landed in KPROXY-REJECTS before the allowed sources' REJECT and dropped them;
/// a per-port filter chain now orders them.
#[test]
fn an_allowed_source_of_a_firewalled_load_balancer_without_endpoints_is_rejected() {
    let mut plans = Plans::new();
    let mut lb = ServicePort::cluster_ip(name("lb", "https", Protocol::Tcp), ip("10.96.1.1"), 443);
    lb.service_type = ServiceType::LoadBalancer;
    lb.node_port = Some(30443);
    lb.load_balancer_ips = vec![ip("198.51.100.7")];
    lb.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    add(&mut plans, lb, vec![]);
    let fakes = fresh(&plans, &iptables_config());
    let p = packet("203.0.113.9", "198.51.100.7", Protocol::Tcp, 443);
    assert_fates(
        &fakes[&IpFamily::V4],
        &p,
        &[(filter("tcp-reset", "KPROXY-REJECTS"), 1.0)],
    );
}

/// Found by this fake: under eTP=Local, pods (and the node) reaching an external destination
/// use the cluster-wide targets (`Plan::external_from_local`). When those have no endpoint in
/// this family (they reject) while the external targets drop (no local endpoint), pods once got
/// the external verdict (a timeout instead of a refusal); a filter chain now tells them apart.
#[test]
fn a_pod_on_an_etp_local_node_port_without_endpoints_in_its_family_is_rejected() {
    let mut plans = Plans::new();
    let mut np = ServicePort::cluster_ip(name("np", "", Protocol::Tcp), ip("10.96.1.2"), 80);
    np.cluster_ips.push(ip("fd96::1:2"));
    np.service_type = ServiceType::NodePort;
    np.node_port = Some(30080);
    np.external_traffic_policy = crate::model::TrafficPolicy::Local;
    add(
        &mut plans,
        np,
        vec![crate::testing::ep("10.0.2.1", 80, "node-b")],
    );
    let cfg = iptables_config();
    let node = crate::testing::node_with_pods(&["10.0.0.0/16", "fd10::/64"]);
    let fakes = fresh_on(&plans, &cfg, &node);
    let p = packet("fd10::99", "fd00::2", Protocol::Tcp, 30080);
    let rejected = filter("tcp-reset", "KPROXY-NODEPORT-REJECTS");
    assert_eq!(
        expected(&plans, &cfg, &node.local_traffic, &p),
        BTreeMap::from([(rejected.clone(), 1.0)])
    );
    assert_fates(&fakes[&IpFamily::V6], &p, &[(rejected, 1.0)]);
}
