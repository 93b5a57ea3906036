//! Fixtures of the fake-kernel tests: the golden loads in a fake, packets, and `expected`, a
//! packet's fate derived from the plans alone (never from compile), plus the probe packets of
//! a set of service ports.
//!
//! Invariants: the node is `testing::node()` (`node-a`, 192.168.0.2 / fd00::2), the
//! configuration that of the golden files; every assertion prints the packet's paths.
//! `expected`, `probes` and `same_fates` also judge `backends::property_tests`' random cases.

use super::*;
use crate::model::plan::FamilyPlan;
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
/// ClusterIPs go to the internal targets, masqueraded from outside the cluster CIDR; external
/// destinations to the external targets, or for pods and the node under eTP=Local to the
/// cluster-wide ones; firewalled LoadBalancer IPs drop other sources; a pod reaching itself is
/// masqueraded; without usable endpoints the verdict is rejected or dropped in filter.
pub(crate) fn expected(
    plans: &Plans,
    cfg: &BackendConfig,
    local: &LocalTraffic,
    p: &Packet,
) -> BTreeMap<Fate, f64> {
    let family = IpFamily::of(&p.dst);
    let own = |a: &IpAddr| IpFamily::of(a) == family && !a.is_loopback();
    let node_addr = *p.local.iter().find(|a| own(a)).expect("a node address");
    let from_pod = local.matches(&p.src, "");
    let src_local = p.src.is_loopback() || p.local.contains(&p.src);
    let one = |fate: Fate| BTreeMap::from([(fate, 1.0)]);
    let reject = |chain: &str| match (p.proto, family) {
        (Protocol::Tcp, _) => filter("tcp-reset", chain),
        (_, IpFamily::V4) => filter("icmp-port-unreachable", chain),
        (_, IpFamily::V6) => filter("icmp6-port-unreachable", chain),
    };
    let go = |targets: &Targets, masq: bool, chain: &str| match targets {
        Targets::Endpoints(eps) => {
            let eps: Vec<_> = eps
                .iter()
                .filter(|e| IpFamily::of(&e.ip) == family)
                .collect();
            if eps.is_empty() {
                return one(reject(chain));
            }
            let mut out = BTreeMap::new();
            for e in &eps {
                let from = if masq || e.ip == p.src {
                    node_addr
                } else {
                    p.src
                };
                let fate = Fate::Delivered {
                    to: SocketAddr::new(e.ip, e.port),
                    from,
                };
                *out.entry(fate).or_insert(0.0) += 1.0 / eps.len() as f64;
            }
            out
        }
        Targets::Reject => one(reject(chain)),
        Targets::Drop => one(filter("drop", chain)),
    };
    let external = |fp: &FamilyPlan, ext: &Targets, chain: &str| match &fp.external_from_local {
        Some(local) if from_pod => go(local, fp.masquerade_external, chain),
        Some(local) if src_local => go(local, true, chain),
        _ => go(ext, fp.masquerade_external, chain),
    };
    for planned in plans.values() {
        let port = &planned.port;
        let Some(fp) = planned.plan.family(family) else {
            continue;
        };
        if port.name.protocol != p.proto || port.port != p.dport {
            continue;
        }
        if fp.cluster_ips.contains(&p.dst) {
            let masq = cfg.masquerade_all || (local.detects(family) && !from_pod);
            return go(&fp.internal, masq, "KPROXY-REJECTS");
        }
        let Some(ext) = &fp.external else { continue };
        let lb = fp.load_balancer_ips.contains(&p.dst);
        if !lb && !fp.external_ips.contains(&p.dst) {
            continue;
        }
        let admitted = |ranges: &Vec<ipnet::IpNet>| ranges.iter().any(|r| r.contains(&p.src));
        if lb && fp.source_ranges.as_ref().is_some_and(|r| !admitted(r)) {
            return one(filter("drop", "KPROXY-REJECTS"));
        }
        return external(fp, ext, "KPROXY-REJECTS");
    }
    let localhost = family == IpFamily::V4 && cfg.localhost_nodeports && p.dst.is_loopback();
    if p.local.contains(&p.dst) || localhost {
        for planned in plans.values() {
            let port = &planned.port;
            if let Some(fp) = planned.plan.family(family)
                && fp.node_port == Some(p.dport)
                && port.name.protocol == p.proto
                && let Some(ext) = &fp.external
            {
                return external(fp, ext, "KPROXY-NODEPORT-REJECTS");
            }
        }
    }
    one(Fate::Delivered {
        to: SocketAddr::new(p.dst, p.dport),
        from: p.src,
    })
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
