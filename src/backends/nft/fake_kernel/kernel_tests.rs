//! Tests of the fake kernel itself (it refuses what nft 1.0.6 / kernel 6.18 refuse, atomically;
//! its listing is what adoption parses), of the tracer's black-hole checks, and of the backend
//! where it meets kernel rules: nested source ranges, two Services claiming one VIP port (through the claims), IPv6
//! ClientIP affinity, a chunked adoption. Tests whose doc starts with "Was a bug" are
//! regression tests of backend bugs these tests found.
//!
//! Invariants: every refusal modelled here was observed with `nft -f` in a throwaway netns
//! (see the module docs of `fake_kernel.rs`); plans come from `tests.rs` and `diff_tests.rs`.

use crate::backends::nft::NftBackend;
use crate::backends::nft::diff_tests::many;
use crate::backends::nft::fake_kernel::{ApplyError, FakeKernel, Outcome, Packet};
use crate::backends::nft::fake_kernel_tests::{
    assert_same_state, assert_traces_match_plans, assert_traces_on, config, loaded, node, packets,
};
use crate::backends::nft::reconcile::parse_listing;
use crate::backends::{Backend, Plans};
use crate::model::{IpFamily, Protocol, ServicePort, ServiceType};
use crate::testing::{add, claimed, cluster_ips, ep, external, ip, name};

const BASE: &str = "add table ip kproxy
add map ip kproxy services { type ipv4_addr . inet_proto . inet_service : verdict; }
add set ip kproxy allow { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }
add set ip kproxy cidrs { type ipv4_addr; flags interval; }
add chain ip kproxy lb-1
add chain ip kproxy entry
add rule ip kproxy entry ip daddr . meta l4proto . th dport vmap @services
add element ip kproxy services { 10.96.0.1 . tcp . 80 : goto lb-1 }
";

fn base() -> FakeKernel {
    let k = FakeKernel::new();
    k.apply_script(BASE).unwrap();
    k
}

fn refused(k: &FakeKernel, script: &str) -> ApplyError {
    let before = k.tables();
    let e = k.apply_script(script).expect_err(script);
    assert_eq!(
        k.tables(),
        before,
        "a refused script changed the kernel: {script}"
    );
    e
}

#[test]
fn an_element_that_exists_with_another_value_is_refused_and_nothing_changes() {
    let k = base();
    let e = refused(
        &k,
        "add element ip kproxy services { 10.96.0.2 . tcp . 80 : drop }\n\
         add element ip kproxy services { 10.96.0.1 . tcp . 80 : drop }\n",
    );
    assert!(matches!(e, ApplyError::Exists { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("File exists"), "{e}");
    k.apply_script("add element ip kproxy services { 10.96.0.1 . tcp . 80 : goto lb-1 }\n")
        .expect("re-adding an identical element is fine");
}

#[test]
fn an_elements_comment_is_kept_and_listed_as_nft_does_and_a_longer_one_than_nfts_is_refused() {
    let k = base();
    k.apply_script(
        "add element ip kproxy services { 10.96.0.2 . tcp . 80 comment \"ns/a:p\" : goto lb-1 }\n",
    )
    .unwrap();
    // As the kernel: adding it again, with another comment, keeps the first one.
    k.apply_script(
        "add element ip kproxy services { 10.96.0.2 . tcp . 80 comment \"x\" : goto lb-1 }\n",
    )
    .unwrap();
    let listing = k.listing(IpFamily::V4).unwrap();
    assert!(
        listing.contains("10.96.0.2 . tcp . 80 comment \"ns/a:p\" : goto lb-1"),
        "{listing}"
    );
    let tables = k.tables();
    let t = &tables.v4.as_ref().unwrap().sets["services"];
    assert_eq!(
        t.elements["10.96.0.2 . tcp . 80"], "goto lb-1",
        "the tracer's view"
    );
    let long = "c".repeat(129);
    refused(
        &k,
        &format!(
            "add element ip kproxy services {{ 10.96.0.3 . tcp . 80 comment \"{long}\" : drop }}\n"
        ),
    );
}

#[test]
fn deleting_a_missing_table_set_chain_or_element_is_refused() {
    let k = base();
    for script in [
        "delete element ip kproxy services { 10.96.0.9 . tcp . 80 }",
        "delete chain ip kproxy nothing",
        "delete set ip kproxy nothing",
        "flush map ip kproxy allow",
        "add element ip kproxy nothing { 10.96.0.9 }",
        "add element ip kproxy services { 10.96.0.9 . tcp . 80 : goto nothing }",
        "add rule ip kproxy entry ip daddr @nothing drop",
        "add rule ip kproxy entry jump nothing",
        "delete table ip6 kproxy",
    ] {
        let e = refused(&k, script);
        assert!(matches!(e, ApplyError::NoSuch { .. }), "{script}: {e}");
    }
}

#[test]
fn a_chain_jumped_to_or_a_set_used_by_a_rule_is_busy_until_its_users_go_first() {
    let k = base();
    let e = refused(&k, "delete chain ip kproxy lb-1");
    assert!(matches!(e, ApplyError::Busy { .. }), "{e}");
    k.apply_script("add rule ip kproxy lb-1 drop\nadd rule ip kproxy entry jump lb-1\n")
        .unwrap();
    let e = refused(
        &k,
        "delete element ip kproxy services { 10.96.0.1 . tcp . 80 }\ndelete chain ip kproxy lb-1",
    );
    assert!(matches!(e, ApplyError::Busy { line: 2, .. }), "{e}");
    let e = refused(&k, "delete map ip kproxy services");
    assert!(matches!(e, ApplyError::Busy { .. }), "{e}");
    k.apply_script(
        "flush chain ip kproxy entry\ndelete element ip kproxy services { 10.96.0.1 . tcp . 80 }\n\
         delete chain ip kproxy lb-1\ndelete map ip kproxy services\n",
    )
    .expect("a chain with rules of its own goes once nothing jumps to it");
}

#[test]
fn wrong_types_families_redeclarations_and_foreign_tables_are_refused() {
    let k = base();
    for script in [
        "add element ip kproxy services { fd96::1 . tcp . 80 : drop }",
        "add element ip kproxy services { 10.96.0.1 . tcp : drop }",
        "add element ip kproxy services { 10.96.0.1 . tcp . 80 }",
        "add element ip kproxy allow { 10.96.0.1 . tcp . 80 . 10.0.0.0/8 : drop }",
        "add rule ip kproxy entry ip6 daddr . meta l4proto . th dport vmap @services",
        "add map ip kproxy services { type ipv4_addr . inet_proto . inet_service : ipv4_addr; }",
        "add chain ip kproxy entry { type nat hook output priority -100; policy accept; }",
        "add table ip filter",
        "add element ip kproxy services { 10.96.0.1 . tcp . 80 : goto lb-1 ",
    ] {
        refused(&k, script);
    }
    k.apply_script(
        "add map ip kproxy services { type ipv4_addr . inet_proto . inet_service : verdict; }",
    )
    .expect("an identical redeclaration is fine");
}

#[test]
fn overlapping_intervals_are_refused_as_the_kernel_does_bigger_first() {
    let k = base();
    let e = refused(
        &k,
        "add element ip kproxy cidrs { 10.0.0.0/8, 10.1.0.0/16 }",
    );
    assert!(matches!(e, ApplyError::ConflictingIntervals { .. }), "{e}");
    let e = refused(
        &k,
        "add element ip kproxy allow { 10.96.0.1 . tcp . 80 . 10.0.0.0/8, 10.96.0.1 . tcp . 80 . 10.1.0.0/16 }",
    );
    assert!(matches!(e, ApplyError::Exists { .. }), "{e}");
    // The kernel checks only the new range's ends: a covering range added last slips through.
    k.apply_script(
        "add element ip kproxy allow { 10.96.0.1 . tcp . 80 . 10.1.0.0/16, 10.96.0.1 . tcp . 80 . 10.0.0.0/8 }",
    )
    .unwrap();
    k.apply_script("add element ip kproxy allow { 10.96.0.1 . tcp . 80 . 10.1.0.0/16 }")
        .expect("the identical range again is fine");
}

#[test]
fn nft_aborts_on_a_packet_path_update_of_a_map_keyed_by_two_ipv6_addresses() {
    let k = FakeKernel::new();
    k.apply_script(
        "add table ip6 kproxy\n\
         add map ip6 kproxy affinity { type ipv6_addr . ipv6_addr : ipv6_addr; flags dynamic,timeout; timeout 3h; }\n\
         add map ip6 kproxy one { type ipv6_addr : ipv6_addr; flags dynamic,timeout; timeout 3h; }\n\
         add chain ip6 kproxy c\n\
         add rule ip6 kproxy c update @one { ip6 saddr timeout 10s : ip6 daddr }\n",
    )
    .expect("a 16-byte key is fine");
    let e = refused(
        &k,
        "add rule ip6 kproxy c update @affinity { ip6 saddr . ct original ip6 daddr timeout 10800s : ip6 daddr }",
    );
    assert!(matches!(e, ApplyError::Aborted { .. }), "{e}");
}

#[test]
fn the_listing_parses_back_into_every_chain_set_and_element_and_rule_counts_skip_empty_chains() {
    let (_, k) = loaded(&external(), &config());
    let tables = k.tables();
    for family in [IpFamily::V4, IpFamily::V6] {
        let t = tables.get(family).unwrap();
        let listed = parse_listing(&k.listing(family).unwrap());
        assert_eq!(listed.chains, t.chains.keys().cloned().collect());
        assert_eq!(listed.sets.len(), t.sets.len());
        for (name, set) in &t.sets {
            assert_eq!(listed.sets[name].0, set.kind, "{name}");
            assert_eq!(listed.sets[name].1, set.listed(), "{name}");
        }
        let counts = k.rule_counts_of(family);
        assert!(!counts.contains_key("affinity-remember") || counts["affinity-remember"] == 2);
        assert!(counts.values().all(|n| *n > 0));
    }
    k.apply_script("delete table ip6 kproxy\n").unwrap();
    assert_eq!(k.listing(IpFamily::V6), None);
    assert!(k.rule_counts_of(IpFamily::V6).is_empty());
}

fn to_web() -> Packet {
    Packet {
        saddr: ip("10.0.5.5"),
        daddr: ip("10.96.0.10"),
        proto: Protocol::Tcp,
        dport: 80,
        from_local: false,
    }
}

fn broken(k: &FakeKernel, want: &str) {
    let t = k.trace(IpFamily::V4, &to_web());
    let Outcome::Broken(why) = &t.outcome else {
        panic!("expected a broken trace ({want}), got {t:?}");
    };
    assert!(why.contains(want), "{why}");
}

fn tamper(k: &FakeKernel, set: &str, key: &str, value: Option<&str>) {
    k.with(|s| {
        let Some(t) = s.tables.v4.as_mut() else {
            return;
        };
        let elements = &mut t.sets.get_mut(set).unwrap().elements;
        match value {
            Some(v) => elements.insert(key.into(), v.into()),
            None => elements.remove(key),
        };
    });
}

#[test]
fn the_tracer_fails_on_what_a_kernel_would_black_hole() {
    let (_, k) = loaded(&cluster_ips(), &config());
    tamper(&k, "services", "10.96.0.10 . tcp . 80", Some("goto lb-9"));
    broken(&k, "chain lb-9, which does not exist");

    let (_, k) = loaded(&cluster_ips(), &config());
    k.with(|s| {
        let lb3 = s
            .tables
            .v4
            .as_mut()
            .unwrap()
            .chains
            .get_mut("lb-3")
            .unwrap();
        lb3.rules[1] = lb3.rules[1].replace("mod 3", "mod 2");
    });
    broken(&k, "chain lb-3 draws numgen mod 2");

    let (_, k) = loaded(&cluster_ips(), &config());
    tamper(&k, "endpoints-tcp", "10.96.0.10 . tcp . 80 . 1", None);
    broken(&k, "has no element 10.96.0.10 . tcp . 80 . 1");

    let (_, k) = loaded(&cluster_ips(), &config());
    k.apply_script(
        "add element ip kproxy endpoints-tcp { 10.96.0.10 . tcp . 80 . 3 : 10.0.9.9 . 80 }\n",
    )
    .unwrap();
    broken(&k, "a slot beyond the mod 3");

    let (_, k) = loaded(&cluster_ips(), &config());
    k.with(|s| s.tables.v4.as_mut().unwrap().sets.remove("cluster-cidrs"));
    broken(&k, "set cluster-cidrs, which does not exist");
}

#[test]
fn an_affinity_hit_sends_the_client_to_its_remembered_endpoint_on_that_port() {
    let (_, k) = loaded(&external(), &config());
    let p = Packet {
        daddr: ip("10.96.1.3"),
        dport: 2000,
        ..to_web()
    };
    assert!(matches!(k.trace(IpFamily::V4, &p).outcome, Outcome::Dnat(eps) if eps.len() == 2));
    k.apply_script("add element ip kproxy affinity { 10.0.5.5 . 10.96.1.3 : 10.0.2.7 }\n")
        .unwrap();
    let want = Outcome::Dnat(vec!["10.0.2.7:2000".parse().unwrap()]);
    assert_eq!(k.trace(IpFamily::V4, &p).outcome, want);
}

/// Was a bug: an IPv6 (or dual-stack) Service with sessionAffinity ClientIP.
/// Its `affinity-10800` chain's rules (`update @affinity { ip6 saddr . ct original ip6 daddr
/// timeout …s : ip6 daddr }`) make nft 1.0.6 abort (observed in a netns: exit 134, assertion in
/// netlink_linearize.c), so the transaction fails; adoption re-sends every rule, so every later
/// full sync fails too and the node's rules stop following the cluster. Compile now leaves
/// affinity out for IPv6 VIPs (they load-balance without it).
#[test]
fn an_ipv6_service_with_client_ip_affinity_is_programmed() {
    let mut plans = Plans::new();
    let mut sticky = ServicePort::cluster_ip(name("sticky6", "", Protocol::Tcp), ip("fd96::7"), 80);
    sticky.affinity_timeout_seconds = Some(10800);
    let eps = vec![
        ep("fd10::7:1", 8080, "node-a"),
        ep("fd10::7:2", 8080, "node-b"),
    ];
    add(&mut plans, sticky, eps);
    let kernel = FakeKernel::new();
    let mut b = NftBackend::new(config(), kernel.clone());
    if let Err(e) = b.sync_full(&plans, &node()) {
        panic!("the load failed: {e}");
    }
    assert_traces_match_plans(&kernel, &plans, &config());
}

/// Nested loadBalancerSourceRanges (a /24 inside a /8): the kernel refuses the inner one once
/// the outer is in ("File exists"), which failed every sync until compile kept the outer only.
#[test]
fn overlapping_load_balancer_source_ranges_are_programmed() {
    let mut plans = Plans::new();
    let mut lb = ServicePort::cluster_ip(name("lb", "", Protocol::Tcp), ip("10.96.3.1"), 443);
    lb.service_type = ServiceType::LoadBalancer;
    lb.load_balancer_ips = vec![ip("198.51.100.9")];
    lb.load_balancer_source_ranges = vec![
        "203.0.0.0/8".parse().unwrap(),
        "203.0.113.0/24".parse().unwrap(),
    ];
    add(&mut plans, lb, vec![ep("10.0.2.1", 8443, "node-b")]);
    let kernel = FakeKernel::new();
    let mut b = NftBackend::new(config(), kernel.clone());
    if let Err(e) = b.sync_full(&plans, &node()) {
        panic!("the kernel refused the load: {e}");
    }
    assert_traces_match_plans(&kernel, &plans, &config());
}

/// Two Services claiming one externalIP port (a misconfiguration Kubernetes allows), planned
/// through the claims as the sync loop does: packets reach the whole endpoint set of the older
/// one (first by name), never a mixture or a missing slot, while its endpoints change; when it
/// goes, the other gets the port in the same partial sync, as a fresh load would have it.
#[test]
fn two_services_claiming_one_external_ip_port_send_packets_to_the_older_until_it_goes() {
    let shared = |svc: &str, cluster: &str| {
        let mut p = ServicePort::cluster_ip(name(svc, "", Protocol::Tcp), ip(cluster), 80);
        p.external_ips = vec![ip("192.0.2.50")];
        p
    };
    let eps = |subnet: u8, n: u8| {
        (1..=n)
            .map(|i| ep(&format!("10.0.{subnet}.{i}"), 80, "node-a"))
            .collect()
    };
    let mut wanted = Plans::new();
    add(&mut wanted, shared("a", "10.96.4.1"), eps(1, 1));
    add(&mut wanted, shared("b", "10.96.4.2"), eps(2, 3));
    let mut plans = claimed(&wanted);
    let (mut b, kernel) = loaded(&plans, &config());
    let probe = Packet {
        saddr: ip("203.0.113.9"),
        daddr: ip("192.0.2.50"),
        proto: Protocol::Tcp,
        dport: 80,
        from_local: false,
    };
    let reaches = |plans: &Plans, svc: &str| {
        let t = kernel.trace(IpFamily::V4, &probe);
        let Outcome::Dnat(mut got) = t.outcome else {
            panic!("{probe:?} reaches {t:?}");
        };
        got.sort();
        let mut whole: Vec<_> = plans[&name(svc, "", Protocol::Tcp)]
            .endpoints
            .iter()
            .map(|e| std::net::SocketAddr::new(e.ip, e.port))
            .collect();
        whole.sort();
        assert_eq!(got, whole, "{svc}'s endpoint set");
    };
    // Syncs what changed between `plans` and `wanted`, as the sync loop would.
    let mut sync = |plans: &mut Plans, wanted: &Plans| {
        let next = claimed(wanted);
        let changed = plans
            .keys()
            .chain(next.keys())
            .filter(|n| plans.get(*n) != next.get(*n))
            .cloned()
            .collect();
        b.sync_partial(&next, &changed, &node()).unwrap();
        *plans = next;
    };
    reaches(&plans, "a");
    for n in [2, 4, 1] {
        add(&mut wanted, shared("a", "10.96.4.1"), eps(1, n));
        sync(&mut plans, &wanted);
        reaches(&plans, "a");
        assert_traces_match_plans(&kernel, &plans, &config());
    }
    wanted.remove(&name("a", "", Protocol::Tcp));
    sync(&mut plans, &wanted);
    reaches(&plans, "b");
    let (_, fresh) = loaded(&plans, &config());
    assert_same_state(&kernel, &fresh, "once the conflict is over");
}

#[test]
fn a_chunked_adoption_never_sends_a_packet_where_nothing_waits() {
    let (old, new) = (many(1200, 5), many(1500, 8));
    let (_, kernel) = loaded(&old, &config());
    let replay = FakeKernel::new();
    for script in kernel.with(|s| s.applied.clone()) {
        replay.apply_script(&script).unwrap();
    }
    let before = kernel.with(|s| s.applied.len());
    NftBackend::new(config(), kernel.clone())
        .sync_full(&new, &node())
        .unwrap();
    let scripts = kernel.with(|s| s.applied[before..].to_vec());
    assert!(
        scripts.len() > 2,
        "large enough to be chunked: {} transactions",
        scripts.len()
    );
    let probes: Vec<Packet> = packets(&new, &node())
        .into_iter()
        .filter(|p| p.saddr == ip("10.0.5.5"))
        .collect();
    for (i, script) in scripts.iter().enumerate() {
        replay.apply_script(script).unwrap();
        for (p, t) in probes.iter().zip(replay.trace_all(&probes)) {
            if let Outcome::Broken(why) = t.outcome {
                // Slots beyond N, added before the verdict that uses them, are harmless.
                assert!(
                    why.contains("a slot beyond"),
                    "after transaction {i}: {p:?}: {why}"
                );
            }
        }
    }
    let (_, fresh) = loaded(&new, &config());
    assert_same_state(&kernel, &fresh, "after a chunked adoption");
}

/// `node()` under --detect-local-mode=NodeCIDR, its Node listing `pod_cidrs`.
fn node_cidr(pod_cidrs: &[&str]) -> crate::node::NodeFacts {
    let mut n = node();
    n.detect_local = crate::node::DetectLocal::NodeCidr;
    let cidrs: Vec<ipnet::IpNet> = pod_cidrs.iter().map(|c| c.parse().unwrap()).collect();
    n.local_traffic = n.detect_local.resolve(&cidrs);
    n
}

fn services_chain(k: &FakeKernel) -> Vec<String> {
    k.tables().v4.expect("the ip table").chains["services"]
        .rules
        .clone()
}

fn pod_cidrs_in_kernel(k: &FakeKernel) -> Vec<String> {
    let t = k.tables().v4.expect("the ip table");
    t.sets["cluster-cidrs"].elements.keys().cloned().collect()
}

#[test]
fn node_cidr_mode_follows_the_nodes_pod_cidrs_in_full_syncs_and_in_its_masquerade_rule() {
    let k = FakeKernel::new();
    let mut b = NftBackend::new(config(), k.clone());
    let plans = cluster_ips();
    b.sync_full(&plans, &node_cidr(&[])).unwrap();
    let outside = |k: &FakeKernel| {
        services_chain(k)
            .iter()
            .any(|r| r.contains("saddr != @cluster-cidrs"))
    };
    assert!(
        !outside(&k),
        "no pod CIDR yet, no masquerade rule: {:?}",
        services_chain(&k)
    );
    for cidrs in [
        &["10.244.0.0/16"][..],
        &["10.244.9.0/24"],
        &["10.244.0.0/16", "fd00::/64"],
    ] {
        let n = node_cidr(cidrs);
        b.sync_full(&plans, &n).unwrap();
        assert_eq!(pod_cidrs_in_kernel(&k), [cidrs[0]]);
        assert!(outside(&k), "{:?}", services_chain(&k));
        // A pod outside the Node's CIDR is masqueraded on its way to a ClusterIP.
        assert_traces_on(&k, &plans, &config(), &n);
    }
    b.sync_full(&plans, &node_cidr(&[])).unwrap();
    assert!(!outside(&k), "{:?}", services_chain(&k));
    assert!(pod_cidrs_in_kernel(&k).is_empty());
}

/// Was a bug: a restart after the Node's podCIDRs changed added the new pod CIDR beside the old
/// one during adoption, which the kernel refuses (the intervals overlap), every sync.
#[test]
fn a_restart_adopts_a_table_whose_pod_cidr_overlaps_the_new_one() {
    let k = FakeKernel::new();
    let plans = cluster_ips();
    let mut b = NftBackend::new(config(), k.clone());
    b.sync_full(&plans, &node_cidr(&["10.244.0.0/16"])).unwrap();
    let mut restarted = NftBackend::new(config(), k.clone());
    restarted
        .sync_full(&plans, &node_cidr(&["10.244.9.0/24"]))
        .unwrap();
    assert_eq!(pod_cidrs_in_kernel(&k), ["10.244.9.0/24"]);
}
