//! `NftBackend` on a `FakeKernel`: full syncs of representative plans traced packet by packet
//! against what `model::plan` decided, adoption of older states, drift and its repair. The
//! fake kernel's own refusals and the tracer's black-hole checks are in
//! `fake_kernel/kernel_tests.rs`; the long randomized sequence of partial syncs (and its replay
//! through real nft, root only) is in `fake_kernel/random_tests.rs`.
//!
//! Invariants: the node is `tests::node()` (`node-a`, 192.168.0.2 / fd00::2); `expected` derives
//! each packet's fate from the plans alone (never from compile), so the traces check compile,
//! diff, transaction and the fake kernel together; every helper panics with the packet, both
//! answers and the state when they disagree. `expected` and `packets` also judge
//! `backends::property_tests`' random cases.

#[path = "fake_kernel/kernel_tests.rs"]
mod kernel;
#[path = "fake_kernel/older_kproxy.rs"]
mod older;
#[path = "fake_kernel/random_tests.rs"]
mod random;

use std::net::{IpAddr, SocketAddr};

use super::NftBackend;
use super::fake_kernel::{FakeKernel, Outcome, Packet, Table, Tables, Trace};
use crate::backends::{Backend, BackendConfig, Plans};
use crate::model::{IpFamily, Protocol, ServicePort, ServiceType, TrafficPolicy};
use crate::node::NodeFacts;
use crate::testing::{add, cluster_ips, ep, external, ip, name};

/// `testing::node()` with pods in both families, so pod traffic is recognised in both.
pub(crate) fn node() -> NodeFacts {
    crate::testing::node_with_pods(&["10.0.0.0/16", "fd10::/64"])
}

/// The configuration of these tests.
pub(super) fn config() -> BackendConfig {
    BackendConfig {
        masquerade_all: false,
        nft_transport: Default::default(),
        localhost_nodeports: false,
        iptables_variant: Default::default(),
        masquerade_bit: None,
        ..Default::default()
    }
}

/// A backend that fully synced `plans` into a fresh fake kernel.
pub(super) fn loaded(plans: &Plans, cfg: &BackendConfig) -> (NftBackend<FakeKernel>, FakeKernel) {
    let kernel = FakeKernel::new();
    let mut b = NftBackend::new(cfg.clone(), kernel.clone());
    if let Err(e) = b.sync_full(plans, &node()) {
        panic!("a full sync into an empty fake kernel failed: {e}");
    }
    (b, kernel)
}

/// What the plans say happens to `p` (README "The path of a packet"): `kproxy explain`'s
/// answer in nftables mode, which reads the plans alone.
pub(crate) fn expected(plans: &Plans, cfg: &BackendConfig, node: &NodeFacts, p: &Packet) -> Trace {
    use crate::explain::{self, Verdict};
    let facts = explain::Facts {
        mode: crate::backends::ProxyMode::Nftables,
        node,
        config: cfg,
    };
    let packet = explain::Packet {
        proto: p.proto,
        src: p.saddr,
        dst: p.daddr,
        dport: p.dport,
    };
    let e = explain::explain(plans, &facts, &packet);
    let outcome = match e.verdict {
        Verdict::Dnat => Outcome::Dnat(e.endpoints.clone()),
        Verdict::Reject => Outcome::Reject,
        Verdict::Drop => Outcome::Drop,
        Verdict::NotAService => Outcome::NotAService,
    };
    Trace {
        outcome,
        masquerade: e.masquerade,
    }
}

/// Sources per family: an allowed external client, a disallowed one, a pod, the node.
fn sources(family: IpFamily) -> [(IpAddr, bool); 4] {
    match family {
        IpFamily::V4 => [
            (ip("203.0.113.9"), false),
            (ip("198.51.100.200"), false),
            (ip("10.0.5.5"), false),
            (ip("192.168.0.2"), true),
        ],
        IpFamily::V6 => [
            (ip("2001:db8:ffff::9"), false),
            (ip("2001:db8:eeee::9"), false),
            (ip("fd10::99"), false),
            (ip("fd00::2"), true),
        ],
    }
}

/// Packets to every VIP port and NodePort of `plans` (and to the next port, which may be no
/// Service), from every kind of source.
pub(crate) fn packets(plans: &Plans, node: &NodeFacts) -> Vec<Packet> {
    packets_of_all(&[plans], node)
}

/// `packets` of several plans, each packet once.
pub(super) fn packets_of_all(all: &[&Plans], node: &NodeFacts) -> Vec<Packet> {
    let mut dests: Vec<(IpAddr, Protocol, u16)> = Vec::new();
    for planned in all.iter().flat_map(|plans| plans.values()) {
        let p = &planned.port;
        let vips = p
            .cluster_ips
            .iter()
            .chain(&p.external_ips)
            .chain(&p.load_balancer_ips);
        for vip in vips {
            dests.push((*vip, p.name.protocol, p.port));
            dests.push((*vip, p.name.protocol, p.port.wrapping_add(1)));
        }
        for addr in p.node_port.iter().flat_map(|_| &node.nodeport_ips) {
            let np = p.node_port.unwrap_or_default();
            dests.push((*addr, p.name.protocol, np));
            dests.push((*addr, p.name.protocol, np.wrapping_add(1)));
        }
    }
    dests.sort();
    dests.dedup();
    let mut out = Vec::new();
    for (daddr, proto, dport) in dests {
        for (saddr, from_local) in sources(IpFamily::of(&daddr)) {
            out.push(Packet {
                saddr,
                daddr,
                proto,
                dport,
                from_local,
            });
        }
    }
    out
}

/// Every packet of `packets` reaches in `kernel` what the plans say.
pub(super) fn assert_traces_match_plans(kernel: &FakeKernel, plans: &Plans, cfg: &BackendConfig) {
    assert_traces_on(kernel, plans, cfg, &node());
}

/// `assert_traces_match_plans` on another node.
pub(super) fn assert_traces_on(
    kernel: &FakeKernel,
    plans: &Plans,
    cfg: &BackendConfig,
    node: &NodeFacts,
) {
    let probes = packets(plans, node);
    for (p, got) in probes.iter().zip(kernel.trace_all(&probes)) {
        let want = expected(plans, cfg, node, p);
        assert!(
            got == want,
            "{p:?}\n  reaches {got:?}\n  but the plans say {want:?}\n{}",
            listings(kernel)
        );
    }
}

pub(super) fn listings(kernel: &FakeKernel) -> String {
    [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .filter_map(|f| kernel.listing(f))
        .collect()
}

/// The first lines where two kernels' listings differ.
pub(super) fn state_diff(a: &FakeKernel, b: &FakeKernel) -> String {
    let (la, lb) = (listings(a), listings(b));
    let (la, lb): (Vec<&str>, Vec<&str>) = (la.lines().collect(), lb.lines().collect());
    let mut out = String::new();
    for l in la.iter().filter(|l| !lb.contains(l)).take(10) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in lb.iter().filter(|l| !la.contains(l)).take(10) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}

pub(super) fn assert_same_state(got: &FakeKernel, fresh: &FakeKernel, context: &str) {
    assert!(
        got.tables() == fresh.tables(),
        "{context}: the kernel differs from a fresh load (- kernel, + fresh):\n{}",
        state_diff(got, fresh)
    );
}

/// The fewest operations that turn `before` into `after`: one per element added or removed,
/// two per element whose value changed, one per chain removed, one plus its rules per chain
/// added.
pub(super) fn min_ops(before: &Tables, after: &Tables) -> usize {
    let empty = Table::default();
    let mut ops = 0;
    for family in [IpFamily::V4, IpFamily::V6] {
        let (b, a) = (
            before.get(family).unwrap_or(&empty),
            after.get(family).unwrap_or(&empty),
        );
        for (name, set) in &a.sets {
            let old = b.sets.get(name).map(|s| &s.elements);
            for (k, v) in &set.elements {
                ops += match old.and_then(|o| o.get(k)) {
                    None => 1,
                    Some(ov) if ov != v => 2,
                    Some(_) => 0,
                };
            }
            ops += old.map_or(0, |o| {
                o.keys().filter(|k| !set.elements.contains_key(*k)).count()
            });
        }
        for (name, chain) in &a.chains {
            match b.chains.get(name) {
                None => ops += 1 + chain.rules.len(),
                Some(c) if c.rules != chain.rules => ops += 1 + chain.rules.len(),
                Some(_) => {}
            }
        }
        ops += b
            .chains
            .keys()
            .filter(|c| !a.chains.contains_key(*c))
            .count();
    }
    ops
}

/// Local policies without local endpoints (Drop), a Service without endpoints (Reject), UDP
/// and SCTP, a dual-stack NodePort, an eTP=Local LoadBalancer with IPv6 source ranges.
fn policies() -> Plans {
    let mut plans = Plans::new();
    let remote = vec![
        ep("10.0.2.1", 8080, "node-b"),
        ep("10.0.3.1", 8080, "node-c"),
    ];
    let mut lb = ServicePort::cluster_ip(
        name("remote-lb", "http", Protocol::Tcp),
        ip("10.96.2.1"),
        80,
    );
    lb.service_type = ServiceType::LoadBalancer;
    lb.node_port = Some(30080);
    lb.load_balancer_ips = vec![ip("198.51.100.8")];
    lb.external_traffic_policy = TrafficPolicy::Local;
    add(&mut plans, lb, remote.clone());
    let mut itp =
        ServicePort::cluster_ip(name("itp-local", "", Protocol::Udp), ip("10.96.2.2"), 53);
    itp.internal_traffic_policy = TrafficPolicy::Local;
    add(&mut plans, itp, remote);
    let empty = ServicePort::cluster_ip(name("empty", "", Protocol::Sctp), ip("10.96.2.3"), 7000);
    add(&mut plans, empty, vec![]);
    let mut dual = ServicePort::cluster_ip(name("dual", "dns", Protocol::Udp), ip("10.96.2.4"), 53);
    dual.cluster_ips.push(ip("fd96::2:4"));
    dual.service_type = ServiceType::NodePort;
    dual.node_port = Some(30053);
    let eps = vec![
        ep("10.0.1.4", 5353, "node-a"),
        ep("10.0.2.4", 5353, "node-b"),
        ep("fd10::2:4", 5353, "node-b"),
    ];
    add(&mut plans, dual, eps);
    let mut v6 = ServicePort::cluster_ip(name("v6-lb", "", Protocol::Tcp), ip("fd96::2:5"), 443);
    v6.service_type = ServiceType::LoadBalancer;
    v6.node_port = Some(30443);
    v6.load_balancer_ips = vec![ip("2001:db8:100::5")];
    v6.load_balancer_source_ranges = vec!["2001:db8:ffff::/48".parse().unwrap()];
    v6.external_traffic_policy = TrafficPolicy::Local;
    let eps = vec![
        ep("fd10::1:5", 8443, "node-a"),
        ep("fd10::2:5", 8443, "node-b"),
    ];
    add(&mut plans, v6, eps);
    plans
}

#[test]
fn cluster_ips_reach_their_endpoints_and_a_service_without_endpoints_rejects() {
    let (_, kernel) = loaded(&cluster_ips(), &config());
    assert_traces_match_plans(&kernel, &cluster_ips(), &config());
    let to_web = Packet {
        saddr: ip("10.0.5.5"),
        daddr: ip("10.96.0.10"),
        proto: Protocol::Tcp,
        dport: 80,
        from_local: false,
    };
    let want: Vec<SocketAddr> = ["10.0.1.1:8080", "10.0.2.1:8080", "10.0.3.1:8080"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        kernel.trace(IpFamily::V4, &to_web).outcome,
        Outcome::Dnat(want)
    );
    let dns = Packet {
        daddr: ip("10.96.0.53"),
        proto: Protocol::Udp,
        dport: 53,
        ..to_web
    };
    assert_eq!(kernel.trace(IpFamily::V4, &dns).outcome, Outcome::Reject);
}

#[test]
fn load_balancers_node_ports_external_ips_and_affinity_reach_what_the_plans_say() {
    let (_, kernel) = loaded(&external(), &config());
    assert_traces_match_plans(&kernel, &external(), &config());
    let outsider = Packet {
        saddr: ip("198.51.100.200"),
        daddr: ip("198.51.100.7"),
        proto: Protocol::Tcp,
        dport: 443,
        from_local: false,
    };
    assert_eq!(kernel.trace(IpFamily::V4, &outsider).outcome, Outcome::Drop);
    let allowed = Packet {
        saddr: ip("203.0.113.9"),
        ..outsider.clone()
    };
    let local_only = Outcome::Dnat(vec!["10.0.1.1:8443".parse().unwrap()]);
    assert_eq!(kernel.trace(IpFamily::V4, &allowed).outcome, local_only);
    // The node is not in the source ranges: dropped, as upstream does. Its NodePort is open.
    let from_node = Packet {
        saddr: ip("192.168.0.2"),
        from_local: true,
        ..outsider
    };
    assert_eq!(
        kernel.trace(IpFamily::V4, &from_node).outcome,
        Outcome::Drop
    );
    let node_port = Packet {
        daddr: ip("192.168.0.2"),
        dport: 30443,
        ..from_node
    };
    let t = kernel.trace(IpFamily::V4, &node_port);
    assert!(
        matches!(&t.outcome, Outcome::Dnat(eps) if eps.len() == 2),
        "{t:?}"
    );
    assert!(
        t.masquerade,
        "the node's traffic to an eTP=Local NodePort is masqueraded"
    );
}

#[test]
fn local_policies_without_local_endpoints_drop_and_udp_sctp_ipv6_and_dual_stack_work() {
    for masquerade_all in [false, true] {
        let cfg = BackendConfig {
            masquerade_all,
            ..config()
        };
        let (_, kernel) = loaded(&policies(), &cfg);
        assert_traces_match_plans(&kernel, &policies(), &cfg);
    }
    let (_, kernel) = loaded(&policies(), &config());
    let p = Packet {
        saddr: ip("203.0.113.9"),
        daddr: ip("198.51.100.8"),
        proto: Protocol::Tcp,
        dport: 80,
        from_local: false,
    };
    assert_eq!(kernel.trace(IpFamily::V4, &p).outcome, Outcome::Drop);
    let np6 = Packet {
        saddr: ip("2001:db8:eeee::9"),
        daddr: ip("fd00::2"),
        proto: Protocol::Udp,
        dport: 30053,
        from_local: false,
    };
    let t = kernel.trace(IpFamily::V6, &np6);
    assert_eq!(
        t.outcome,
        Outcome::Dnat(vec!["[fd10::2:4]:5353".parse().unwrap()])
    );
    assert!(t.masquerade, "eTP=Cluster NodePort traffic is masqueraded");
}

#[test]
fn another_masquerade_bit_marks_and_masquerades_the_same_packets() {
    let cfg = BackendConfig {
        masquerade_bit: Some(5),
        ..config()
    };
    let (b, kernel) = loaded(&policies(), &cfg);
    assert_traces_match_plans(&kernel, &policies(), &cfg);
    for family in [IpFamily::V4, IpFamily::V6] {
        let listing = kernel.listing(family).unwrap();
        assert!(
            listing.contains("meta mark set meta mark | 0x00000020"),
            "{listing}"
        );
        assert!(!listing.contains("0x00004000"), "{listing}");
    }
    let rendered = FakeKernel::new();
    rendered
        .apply_script(&b.render(&policies(), &node()))
        .unwrap();
    assert_same_state(&rendered, &kernel, "render vs. sync, bit 5");
}

#[test]
fn the_dry_run_ruleset_loads_into_the_state_the_backend_programs() {
    for plans in [cluster_ips(), external(), policies()] {
        let (b, kernel) = loaded(&plans, &config());
        let rendered = FakeKernel::new();
        let text = b.render(&plans, &node());
        if let Err(e) = rendered.apply_script(&text) {
            panic!("the fake kernel refused the rendered ruleset: {e}\n{text}");
        }
        assert_same_state(&rendered, &kernel, "render vs. sync");
    }
}

#[test]
fn a_restart_on_an_older_state_adopts_it_into_what_a_fresh_load_holds() {
    let old = external();
    let mut new = policies();
    new.extend(cluster_ips());
    let (_, kernel) = loaded(&old, &config());
    let mut restarted = NftBackend::new(config(), kernel.clone());
    restarted.sync_full(&new, &node()).unwrap();
    let (_, fresh) = loaded(&new, &config());
    assert_same_state(&kernel, &fresh, "after adoption");
    assert_traces_match_plans(&kernel, &new, &config());
    assert_eq!(restarted.drift().unwrap(), None);
    assert_eq!(restarted.sync_full(&new, &node()).unwrap().operations, 0);
}

#[test]
fn a_restart_adopts_a_table_an_older_kproxy_wrote_with_leftover_chains_sets_and_elements() {
    let kernel = FakeKernel::new();
    kernel.apply_script(older::OLDER_KPROXY).unwrap();
    let mut b = NftBackend::new(config(), kernel.clone());
    b.sync_full(&cluster_ips(), &node()).unwrap();
    let (_, fresh) = loaded(&cluster_ips(), &config());
    assert_same_state(&kernel, &fresh, "after adopting an older kproxy's table");
    assert_traces_match_plans(&kernel, &cluster_ips(), &config());
    // Its elements had no comments: they were written again with them, once. The next
    // restart finds every element right, as over a table this kproxy loaded fresh.
    let listed = kernel.listing(IpFamily::V4).unwrap();
    assert!(
        listed.contains("10.96.0.10 . tcp . 80 comment \"default/web:http\" : goto lb-3"),
        "{listed}"
    );
    let again = NftBackend::new(config(), kernel.clone())
        .sync_full(&cluster_ips(), &node())
        .unwrap();
    let over_fresh = NftBackend::new(config(), fresh.clone())
        .sync_full(&cluster_ips(), &node())
        .unwrap();
    assert_eq!(again.operations, over_fresh.operations);
    assert_same_state(&kernel, &fresh, "after a second restart");
}

#[test]
fn drift_is_reported_breaks_traffic_and_is_repaired_by_the_next_full_sync() {
    let plans = external();
    let (mut b, kernel) = loaded(&plans, &config());
    assert_eq!(b.drift().unwrap(), None);
    kernel
        .apply_script("flush chain ip kproxy services\n")
        .unwrap();
    let p = Packet {
        saddr: ip("10.0.5.5"),
        daddr: ip("10.96.1.2"),
        proto: Protocol::Sctp,
        dport: 9000,
        from_local: false,
    };
    // Nothing DNATs it any more, so `cluster-ips-check` rejects it as a ClusterIP's unknown port.
    assert_eq!(kernel.trace(IpFamily::V4, &p).outcome, Outcome::Reject);
    let what = b.drift().unwrap().expect("a flushed chain is drift");
    assert!(what.contains("chain services has 0 rules"), "{what}");
    b.sync_full(&plans, &node()).unwrap();
    let (_, fresh) = loaded(&plans, &config());
    assert_same_state(&kernel, &fresh, "after the repair");
    assert_eq!(b.drift().unwrap(), None);

    // Someone else's rule, and a deleted dynamic chain's rules, are drift too.
    kernel
        .apply_script("add rule ip6 kproxy services drop\n")
        .unwrap();
    assert!(b.drift().unwrap().is_some());
    b.sync_full(&plans, &node()).unwrap();
    assert_same_state(&kernel, &fresh, "after removing the stranger's rule");
    kernel.apply_script("flush chain ip kproxy lb-2\n").unwrap();
    let to_lb2 = Packet {
        daddr: ip("10.96.1.1"),
        proto: Protocol::Tcp,
        dport: 443,
        ..p
    };
    assert_eq!(
        kernel.trace(IpFamily::V4, &to_lb2).outcome,
        Outcome::Reject,
        "an empty lb-2 returns it undnatted, to be rejected as a ClusterIP's unknown port"
    );
    assert!(
        b.drift()
            .unwrap()
            .unwrap()
            .contains("chain lb-2 has 0 rules")
    );
    b.sync_full(&plans, &node()).unwrap();
    assert_same_state(&kernel, &fresh, "after refilling lb-2");
    assert_traces_match_plans(&kernel, &plans, &config());
}

#[test]
fn a_refused_transaction_changes_nothing_and_the_next_full_sync_repairs() {
    let plans = cluster_ips();
    let (mut b, kernel) = loaded(&plans, &config());
    let before = kernel.tables();
    kernel.with(|s| s.fail_next = 1);
    let mut new = plans.clone();
    new.remove(&name("web", "http", Protocol::Tcp));
    let changed = [name("web", "http", Protocol::Tcp)].into_iter().collect();
    assert!(b.sync_partial(&new, &changed, &node()).is_err());
    assert_eq!(kernel.tables(), before);
    assert_eq!(b.failures(), 1);
    b.sync_full(&new, &node()).unwrap();
    let (_, fresh) = loaded(&new, &config());
    assert_same_state(&kernel, &fresh, "after the repair");
}
