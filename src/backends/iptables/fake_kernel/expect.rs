//! Fixtures of the fake-kernel tests: the golden loads in a fake, packets, and `expected`, a
//! packet's fate derived from the plans alone (never from compile), plus the probe packets of
//! a set of service ports.
//!
//! Invariants: the node is `testing::node()` (`node-a`, 192.168.0.2 / fd00::2), the
//! configuration that of the golden files; every assertion prints the packet's paths.
//! `expected`, `probes` and `same_fates` also judge `backends::property_tests`' random cases.

use super::*;
use crate::node::{LocalTraffic, NodeFacts};

/// The golden files' configuration.
pub(super) fn iptables_config() -> BackendConfig {
    BackendConfig {
        localhost_nodeports: true,
        ..config()
    }
}

/// The part of a golden file that is `family`'s restore input.
pub(super) fn golden_part(text: &str, family: IpFamily) -> &str {
    let (v4, v6) = text
        .strip_prefix("# IPv4\n")
        .and_then(|t| t.split_once("# IPv6\n"))
        .expect("a golden file has an IPv4 and an IPv6 part");
    match family {
        IpFamily::V4 => v4,
        IpFamily::V6 => v6,
    }
}

/// A fake of `family` that restored `input`.
pub(super) fn restored(family: IpFamily, input: &str) -> Ruleset {
    let mut fake = Ruleset::new(family);
    if let Err(e) = fake.restore(input) {
        panic!("the fake refused the load: {e}\n{input}");
    }
    fake
}

pub(super) fn golden(text: &str, family: IpFamily) -> Ruleset {
    restored(family, golden_part(text, family))
}

/// Both families' fakes after a fresh load of `plans` (what `adopt_and_load` restores on a
/// host without kproxy's chains).
pub(super) fn fresh(plans: &Plans, cfg: &BackendConfig) -> BTreeMap<IpFamily, Ruleset> {
    fresh_on(plans, cfg, &node())
}

/// `fresh` on another node than `testing::node()`.
pub(super) fn fresh_on(
    plans: &Plans,
    cfg: &BackendConfig,
    node: &NodeFacts,
) -> BTreeMap<IpFamily, Ruleset> {
    let rules = compile(plans, node, cfg);
    rules
        .iter()
        .map(|(f, r)| {
            let input = load::plan(r, &Default::default());
            (*f, restored(*f, &input))
        })
        .collect()
}

pub(super) fn packet(src: &str, dst: &str, proto: Protocol, dport: u16) -> Packet {
    Packet {
        src: ip(src),
        dst: ip(dst),
        proto,
        dport,
        from_node: false,
        local: node().local_addresses,
    }
}

pub(super) fn from_node(src: &str, dst: &str, proto: Protocol, dport: u16) -> Packet {
    Packet {
        from_node: true,
        ..packet(src, dst, proto, dport)
    }
}

pub(super) fn to(addr: &str, from: &str) -> Fate {
    Fate::Delivered {
        to: addr.parse().unwrap(),
        from: ip(from),
    }
}

pub(super) fn filter(kind: &str, chain: &str) -> Fate {
    match kind {
        "drop" => Fate::Dropped {
            table: Table::Filter,
            chain: chain.into(),
        },
        with => Fate::Rejected {
            table: Table::Filter,
            chain: chain.into(),
            with: with.into(),
        },
    }
}

/// `got` holds exactly the fates of `want`, each with its probability (to 1e-6).
pub(crate) fn same_fates<'a>(
    got: &BTreeMap<Fate, f64>,
    mut want: impl ExactSizeIterator<Item = (&'a Fate, &'a f64)>,
) -> bool {
    got.len() == want.len() && want.all(|(f, pr)| got.get(f).is_some_and(|g| (g - pr).abs() < 1e-6))
}

/// The packet's fates are exactly `want`, with these probabilities.
#[track_caller]
pub(super) fn assert_fates(fake: &Ruleset, p: &Packet, want: &[(Fate, f64)]) -> Outcome {
    let out = fake.trace(p);
    let same = same_fates(&out.fates(), want.iter().map(|(f, pr)| (f, pr)));
    assert!(same, "{p:?}\n  takes\n{out}  but should {want:?}");
    out
}

/// What the plans say happens to `p`, from the plans alone (README "The path of a packet"):
/// `kproxy explain`'s answer in iptables mode on a node whose addresses (and NodePort
/// addresses) are `p.local`, as iptables' paths: every endpoint with its chance, from the
/// node's address when masqueraded (or when a pod reaches itself); rejects and drops in
/// filter's `KPROXY-REJECTS` (`KPROXY-NODEPORT-REJECTS` for a NodePort); a packet no Service
/// takes is delivered as it was.
pub(crate) fn expected(
    plans: &Plans,
    cfg: &BackendConfig,
    local: &LocalTraffic,
    p: &Packet,
) -> BTreeMap<Fate, f64> {
    use crate::explain::{self, AddressKind, Verdict};
    let family = IpFamily::of(&p.dst);
    let own = |a: &IpAddr| IpFamily::of(a) == family && !a.is_loopback();
    let node_addr = *p.local.iter().find(|a| own(a)).expect("a node address");
    let mut node = NodeFacts::new("node-a");
    node.local_addresses = p.local.clone();
    node.nodeport_ips = p.local.clone();
    node.local_traffic = local.clone();
    let facts = explain::Facts {
        mode: crate::backends::ProxyMode::Iptables,
        node: &node,
        config: cfg,
    };
    let packet = explain::Packet {
        proto: p.proto,
        src: p.src,
        dst: p.dst,
        dport: p.dport,
    };
    let e = explain::explain(plans, &facts, &packet);
    let chain = match e.address_kind {
        Some(AddressKind::NodePort) => "KPROXY-NODEPORT-REJECTS",
        _ => "KPROXY-REJECTS",
    };
    let one = |fate: Fate| BTreeMap::from([(fate, 1.0)]);
    match e.verdict {
        Verdict::Dnat => {
            let mut out = BTreeMap::new();
            for (&to, chance) in e.endpoints.iter().zip(&e.chances) {
                let from = if e.masquerade || to.ip() == p.src {
                    node_addr
                } else {
                    p.src
                };
                *out.entry(Fate::Delivered { to, from }).or_insert(0.0) += chance;
            }
            out
        }
        Verdict::Reject => one(match (p.proto, family) {
            (Protocol::Tcp, _) => filter("tcp-reset", chain),
            (_, IpFamily::V4) => filter("icmp-port-unreachable", chain),
            (_, IpFamily::V6) => filter("icmp6-port-unreachable", chain),
        }),
        Verdict::Drop => one(filter("drop", chain)),
        Verdict::NotAService => one(Fate::Delivered {
            to: SocketAddr::new(p.dst, p.dport),
            from: p.src,
        }),
    }
}

/// Sources per family: an allowed external client, a disallowed one, a pod, the node.
pub(super) fn sources(family: IpFamily) -> [(&'static str, bool); 4] {
    match family {
        IpFamily::V4 => [
            ("203.0.113.9", false),
            ("198.51.100.200", false),
            ("10.0.5.5", false),
            ("192.168.0.2", true),
        ],
        IpFamily::V6 => [
            ("2001:db8:ffff::9", false),
            ("2001:db8:eeee::9", false),
            ("fd10::99", false),
            ("fd00::2", true),
        ],
    }
}

/// Packets to every VIP port and NodePort of `plans` (and to the next port, which may be no
/// Service) from every kind of source, and from the node to its localhost NodePorts.
pub(crate) fn probes<'a>(plans: impl IntoIterator<Item = &'a ServicePort>) -> Vec<Packet> {
    let mut dests = Vec::new();
    for p in plans {
        let proto = p.name.protocol;
        let vips = p.cluster_ips.iter().chain(&p.external_ips);
        for vip in vips.chain(&p.load_balancer_ips) {
            dests.push((*vip, proto, p.port));
            dests.push((*vip, proto, p.port.wrapping_add(1)));
        }
        if let Some(np) = p.node_port {
            for addr in node().local_addresses {
                dests.push((addr, proto, np));
                dests.push((addr, proto, np.wrapping_add(1)));
            }
        }
    }
    dests.sort();
    dests.dedup();
    let mut out = Vec::new();
    for (dst, proto, dport) in dests {
        let family = IpFamily::of(&dst);
        for (src, from_node) in sources(family) {
            let mut p = packet(src, &dst.to_string(), proto, dport);
            p.from_node = from_node;
            out.push(p);
        }
        if family == IpFamily::V4 && node().local_addresses.contains(&dst) {
            out.push(from_node("127.0.0.1", "127.0.0.1", proto, dport));
        }
    }
    out
}

/// Every probe of `plans` reaches in `fakes` what the plans say.
#[track_caller]
pub(super) fn assert_probes_match_plans(
    fakes: &BTreeMap<IpFamily, Ruleset>,
    plans: &Plans,
    cfg: &BackendConfig,
    probes: &[Packet],
    context: &str,
) {
    for p in probes {
        let want = expected(plans, cfg, &node().local_traffic, p);
        let want: Vec<(Fate, f64)> = want.into_iter().collect();
        let fake = &fakes[&IpFamily::of(&p.dst)];
        let out = fake.trace(p);
        let same = same_fates(&out.fates(), want.iter().map(|(f, pr)| (f, pr)));
        assert!(
            same,
            "{context}: {p:?}\n  takes\n{out}  but the plans say {want:?}"
        );
    }
}
