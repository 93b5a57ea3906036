//! What each backend must do with one case's plans: compile without panicking, load into its
//! fake kernel without a refusal, send a pod's packet to every ClusterIP and port where the
//! plan says (one of its endpoints, each equally likely; or reject; or drop), and, in an
//! ordinary case, send every packet its own fake-kernel tests send (to every address, port
//! and NodePort, from every kind of source) where that backend's oracle says.
//!
//! Invariants: every expectation reads only the plans, never a backend's compile; only
//! ordinary addresses are traced, where a packet's fate depends on the plans alone: a
//! ClusterIP in the service ranges (10.96.0.0/16, fd96::/64) whose endpoints are all in the
//! pod ranges (10.0.0.0/16, fd10::/64) and none a service address; an ordinary case has only
//! such addresses (external ones in the documentation ranges) and NodePorts on every node
//! address, which the oracles assume. The odd addresses the manifests also use (the node's
//! own, loopback, a VIP as an endpoint, which iptables mode's filter-table rejects see again
//! after DNAT, as upstream's) are compiled and loaded but not traced. A failure names the
//! backend, the packet and both answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use proptest::test_runner::TestCaseError;

use super::{Pipeline, Tally};
use crate::backends::iptables::fake_kernel_tests::expect as ipt_oracle;
use crate::backends::iptables::fixed::compile_fixed;
use crate::backends::iptables::load::{self, Load};
use crate::backends::iptables::ruleset::{self as ipt, Ruleset};
use crate::backends::ipvs::IpvsBackend;
use crate::backends::ipvs::random_tests as ipvs_oracle;
use crate::backends::nft::NftBackend;
use crate::backends::nft::fake_kernel::{FakeKernel, Outcome, Packet};
use crate::backends::nft::fake_kernel_tests as nft_oracle;
use crate::backends::{Backend, ipvs};
use crate::model::plan::Targets;
use crate::model::{IpFamily, Protocol};
use crate::node::NodePortAddresses;

/// Where the test's ordinary ClusterIPs come from.
const SERVICE_RANGES: &[&str] = &["10.96.0.0/16", "fd96::/64"];
/// Where its ordinary externalIPs and LoadBalancer IPs come from.
const EXTERNAL_RANGES: &[&str] = &["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"];
/// Where its ordinary endpoints come from.
const POD_RANGES: &[&str] = &["10.0.0.0/16", "fd10::/64"];

fn within(ranges: &[&str], ip: &IpAddr) -> bool {
    let net = |r: &&str| r.parse::<IpNet>().expect("a CIDR");
    ranges.iter().map(net).any(|r| r.contains(ip))
}

/// Every address some Service is reached at.
fn vips(p: &Pipeline) -> BTreeSet<IpAddr> {
    let of_port = |port: &crate::model::ServicePort| {
        let vips = port.cluster_ips.iter().chain(&port.external_ips);
        vips.chain(&port.load_balancer_ips)
            .copied()
            .collect::<Vec<_>>()
    };
    p.plans.values().flat_map(|pl| of_port(&pl.port)).collect()
}

/// An endpoint address whose traffic depends on the plans alone.
fn ordinary_endpoint(vips: &BTreeSet<IpAddr>, ip: &IpAddr) -> bool {
    within(POD_RANGES, ip) && !vips.contains(ip)
}

/// A case the backends' own oracles apply to (see the module doc).
fn ordinary(p: &Pipeline) -> bool {
    let vips = vips(p);
    let vip_ok = |ip: &IpAddr| within(SERVICE_RANGES, ip) || within(EXTERNAL_RANGES, ip);
    let endpoints = p.plans.values().flat_map(|pl| &pl.endpoints);
    p.node.nodeport_addresses == NodePortAddresses::all()
        && vips.iter().all(vip_ok)
        && endpoints
            .into_iter()
            .all(|e| ordinary_endpoint(&vips, &e.ip))
}

/// A pod's address in each family (inside the cluster CIDRs when the setup has them).
fn pod(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => "10.0.5.5".parse().expect("an address"),
        IpFamily::V6 => "fd10::99".parse().expect("an address"),
    }
}

/// What the plans say a packet meets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    Endpoints(BTreeSet<SocketAddr>),
    Reject,
    Drop,
}

/// A pod's packet to a ClusterIP and port, and what it must meet.
#[derive(Clone, Debug)]
struct Probe {
    saddr: IpAddr,
    daddr: IpAddr,
    proto: Protocol,
    dport: u16,
    want: Fate,
}

fn fate(targets: &Targets) -> Fate {
    match targets {
        Targets::Endpoints(eps) => {
            Fate::Endpoints(eps.iter().map(|e| SocketAddr::new(e.ip, e.port)).collect())
        }
        Targets::Reject => Fate::Reject,
        Targets::Drop => Fate::Drop,
    }
}

/// Every ClusterIP and port of the plans in the service ranges, from a pod, when its
/// endpoints are ordinary.
fn probes(p: &Pipeline) -> Vec<Probe> {
    let vips = vips(p);
    let mut out = Vec::new();
    for planned in p.plans.values() {
        for fp in &planned.plan.families {
            if let Targets::Endpoints(eps) = &fp.internal
                && !eps.iter().all(|e| ordinary_endpoint(&vips, &e.ip))
            {
                continue;
            }
            let traced = (fp.cluster_ips.iter()).filter(|ip| within(SERVICE_RANGES, ip));
            for daddr in traced {
                out.push(Probe {
                    saddr: pod(fp.family),
                    daddr: *daddr,
                    proto: planned.port.name.protocol,
                    dport: planned.port.port,
                    want: fate(&fp.internal),
                });
            }
        }
    }
    out
}

fn fail(backend: &str, what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{backend}: {what}"))
}

/// The nftables backend: a full sync into a fresh fake kernel, the dry-run text (rendered by
/// the pipeline) loading into exactly that state, a second full sync that changes nothing,
/// and the packets.
pub(super) fn nftables(p: &Pipeline, tally: &Tally) -> Result<(), TestCaseError> {
    let kernel = FakeKernel::new();
    let mut b = NftBackend::new(p.config.clone(), kernel.clone());
    b.sync_full(&p.plans, &p.node).map_err(|e| {
        fail(
            "nftables",
            format!("the fake kernel refused a full sync: {e}"),
        )
    })?;
    let rendered = FakeKernel::new();
    rendered.apply_script(&p.nft_text).map_err(|e| {
        let text = &p.nft_text;
        fail(
            "nftables",
            format!("the fake kernel refused the dry-run ruleset: {e}\n{text}"),
        )
    })?;
    if rendered.tables() != kernel.tables() {
        return Err(fail(
            "nftables",
            "the dry-run ruleset is not what a full sync programs",
        ));
    }
    let again = b.sync_full(&p.plans, &p.node);
    if !matches!(again, Ok(ref r) if r.operations == 0) {
        return Err(fail("nftables", format!("a second full sync: {again:?}")));
    }
    for probe in probes(p) {
        let packet = Packet {
            saddr: probe.saddr,
            daddr: probe.daddr,
            proto: probe.proto,
            dport: probe.dport,
            from_local: false,
        };
        let trace = kernel.trace(IpFamily::of(&probe.daddr), &packet);
        let got = match &trace.outcome {
            Outcome::Dnat(eps) => Some(Fate::Endpoints(eps.iter().copied().collect())),
            Outcome::Reject => Some(Fate::Reject),
            Outcome::Drop => Some(Fate::Drop),
            Outcome::NotAService | Outcome::Broken(_) => None,
        };
        if got.as_ref() != Some(&probe.want) {
            let t = &trace.outcome;
            return Err(fail("nftables", format!("{probe:?} meets {t:?}")));
        }
        tally.probe(&probe.want);
    }
    if ordinary(p) {
        let packets = nft_oracle::packets(&p.plans, &p.node);
        for (packet, got) in packets.iter().zip(kernel.trace_all(&packets)) {
            let want = nft_oracle::expected(&p.plans, &p.config, &p.node, packet);
            if got != want {
                let what = format!("{packet:?} meets {got:?}, the plans say {want:?}");
                return Err(fail("nftables", what));
            }
        }
        tally.ordinary(packets.len());
    }
    Ok(())
}

/// The iptables backend's fresh load of one family (what `render` prints and a first sync
/// restores on a host without kproxy's chains).
pub(super) fn iptables_load(p: &Pipeline, family: IpFamily) -> String {
    let fixed = compile_fixed(family, &p.node, &p.config);
    let ports = load::compiled(&p.plans, family, &p.config, &p.node.local_traffic);
    Load::new(&fixed, &BTreeMap::new(), &ports).text(&ports)
}

/// The iptables backend: each family's fresh load into a fresh `Ruleset`, and the
/// packets (every path of one: the endpoints each with probability 1/n).
pub(super) fn iptables(p: &Pipeline) -> Result<(), TestCaseError> {
    let mut fakes = BTreeMap::new();
    for family in IpFamily::ALL {
        let text = iptables_load(p, family);
        let mut fake = Ruleset::new(family);
        fake.restore(&text).map_err(|e| {
            let f = family.as_str();
            fail(
                "iptables",
                format!("the fake refused the {f} load: {e}\n{text}"),
            )
        })?;
        fakes.insert(family, fake);
    }
    for probe in probes(p) {
        let packet = ipt::Packet {
            src: probe.saddr,
            dst: probe.daddr,
            proto: probe.proto,
            dport: probe.dport,
            from_node: false,
            local: p.node.local_addresses.clone(),
        };
        let out = fakes[&IpFamily::of(&probe.daddr)].trace(&packet);
        let fates = out.fates();
        let every = |pred: fn(&ipt::Fate) -> bool| !fates.is_empty() && fates.keys().all(pred);
        let ok = match &probe.want {
            Fate::Reject => every(|f| matches!(f, ipt::Fate::Rejected { .. })),
            Fate::Drop => every(|f| matches!(f, ipt::Fate::Dropped { .. })),
            Fate::Endpoints(eps) => {
                let to = |f: &ipt::Fate| match f {
                    ipt::Fate::Delivered { to, .. } => Some(*to),
                    _ => None,
                };
                let mut reached: BTreeMap<Option<SocketAddr>, f64> = BTreeMap::new();
                for (f, pr) in &fates {
                    *reached.entry(to(f)).or_default() += pr;
                }
                let share = 1.0 / eps.len() as f64;
                let fair = |e: &SocketAddr| reached.get(&Some(*e)).map(|pr| (pr - share).abs());
                reached.len() == eps.len() && eps.iter().all(|e| fair(e) < Some(1e-6))
            }
        };
        if !ok {
            return Err(fail("iptables", format!("{probe:?} takes\n{out}")));
        }
    }
    if ordinary(p) {
        let packets = ipt_oracle::probes(p.plans.values().map(|pl| &pl.port));
        for packet in &packets {
            let want = ipt_oracle::expected(&p.plans, &p.config, &p.node.local_traffic, packet);
            let out = fakes[&IpFamily::of(&packet.dst)].trace(packet);
            if !ipt_oracle::same_fates(&out.fates(), want.iter()) {
                let what = format!("{packet:?} takes\n{out}  but the plans say {want:?}");
                return Err(fail("iptables", what));
            }
        }
    }
    Ok(())
}

/// The IPVS backend: a full sync into a fresh fake kernel (servers, destinations, addresses and
/// the companion tables' elements), its dry-run text, and the packets (the companion sets
/// first, then the virtual server, as `ipvs::random_tests` traces them).
pub(super) fn ipvs(p: &Pipeline) -> Result<(), TestCaseError> {
    let kernel = ipvs::fake_kernel::FakeKernel::default();
    let mut b =
        IpvsBackend::new(&p.config, Box::new(kernel.clone())).with_families(IpFamily::ALL.to_vec());
    b.sync_full(&p.plans, &p.node)
        .map_err(|e| fail("ipvs", format!("the fake kernel refused a full sync: {e}")))?;
    let _ = b.render(&p.plans, &p.node);
    let state = kernel.state();
    for probe in probes(p) {
        let packet = ipvs_oracle::Packet {
            saddr: probe.saddr,
            daddr: probe.daddr,
            proto: probe.proto,
            dport: probe.dport,
        };
        let want = match &probe.want {
            Fate::Endpoints(eps) => {
                ipvs_oracle::Fate::Dnat(eps.iter().map(|e| (e.ip(), e.port())).collect())
            }
            Fate::Reject => ipvs_oracle::Fate::Reject,
            Fate::Drop => ipvs_oracle::Fate::Drop,
        };
        let got = ipvs_oracle::trace(&state, &packet);
        if got != want {
            return Err(fail("ipvs", format!("{probe:?} meets {got:?}")));
        }
    }
    if ordinary(p) {
        for packet in ipvs_oracle::packets(&p.plans, &p.node) {
            let got = ipvs_oracle::trace(&state, &packet);
            let want = ipvs_oracle::expected(&p.plans, &p.node, &packet);
            if got != want {
                let what = format!("{packet:?} meets {got:?}, the plans say {want:?}");
                return Err(fail("ipvs", what));
            }
        }
    }
    Ok(())
}
