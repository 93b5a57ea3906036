//! A long randomized (seeded, deterministic) sequence of Service and endpoint additions,
//! changes and removals applied to `Ruleset` (one per family) as the backend's partial
//! syncs apply them (`Mirror::diff` of the changed ports, committed as
//! `IptablesBackend::sync_partial` does), and in parallel as full syncs (`Scope::Full`),
//! checked after every step: every restore is accepted, both end where a fresh load of the
//! plans does, and the changed Services' packets reach what the plans say; every 25 steps all
//! Services' packets, a full sync's diff against the partial syncs' mirror (empty), its rule
//! counts (a fresh load's), and a restart's adoption over the partially synced fake (exactly a
//! fresh load).
//!
//! Invariants: the generator is shared with the nftables test (`backends::random_world`: only what
//! the API server accepts, every VIP, NodePort and port number unique), with ClientIP affinity
//! in both families; states compare as `save()` text with the rules of the four dispatch
//! chains as a set, because a partial sync appends a port's dispatch rules where a fresh load
//! writes them in name order (each rule of these chains matches its own VIP or NodePort, and
//! the traces, compared with a fresh load's, check that the order changes nothing); `Rng` is
//! a 64-bit xorshift, so a failure replays from its step number.

use std::collections::{BTreeMap, BTreeSet};

use crate::backends::random_world::World;
use std::process::Command;

use super::super::adopt;
use super::super::compile::{compile, compile_fixed};
use super::super::load::{self, Load};
use super::super::mirror::{Mirror, Scope};
use super::super::ruleset::{Fate, Packet, Ruleset};
use super::{expected, probes, same_fates};
use crate::backends::iptables::variant::Variant;
use crate::backends::nft::transport_tests::Netns;
use crate::backends::process::run_piped;
use crate::backends::{BackendConfig, Plans};
use crate::model::{IpFamily, ServicePort, ServicePortName};

/// `testing::node()` with pods in both families, so pod traffic is recognised in both.
fn node() -> crate::node::NodeFacts {
    crate::testing::node_with_pods(&["10.0.0.0/16", "fd10::/64"])
}

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const STEPS: usize = 300;
/// The dispatch chains, whose rules compare as a set.
const DISPATCH: [&str; 4] = [
    "KPROXY-PORTALS",
    "KPROXY-NODEPORTS",
    "KPROXY-REJECTS",
    "KPROXY-NODEPORT-REJECTS",
];

/// Localhost NodePorts on.
fn random_config() -> BackendConfig {
    BackendConfig {
        localhost_nodeports: true,
        ..crate::testing::config()
    }
}

/// The fakes a backend drives and its mirrors.
struct Driven {
    fakes: BTreeMap<IpFamily, Ruleset>,
    mirrors: BTreeMap<IpFamily, Mirror>,
    /// Every restore input accepted, in order.
    log: Vec<(IpFamily, String)>,
}

/// A fresh load, as `adopt_and_load` does it on a host without kproxy's chains.
fn load(plans: &Plans, cfg: &BackendConfig) -> Driven {
    let mut d = Driven {
        fakes: BTreeMap::new(),
        mirrors: BTreeMap::new(),
        log: Vec::new(),
    };
    for family in IpFamily::ALL {
        let mut fake = Ruleset::new(family);
        let fixed = compile_fixed(family, &node(), cfg);
        let local = node().local_traffic;
        let ports = load::compiled(plans, family, cfg, &local);
        let planned = Load::new(&fixed, &Default::default(), &ports);
        let input = planned.text(&ports);
        if let Err(e) = fake.restore(&input) {
            panic!("the fake refused a fresh load: {e}\n{input}");
        }
        d.fakes.insert(family, fake);
        d.log.push((family, input));
        let port_rules = planned.port_rules().clone();
        d.mirrors.insert(
            family,
            Mirror::loaded(fixed, plans, port_rules, local.clone()),
        );
    }
    d
}

/// `IptablesBackend::sync_partial` without the processes: returns the restore lines.
fn sync_partial(
    d: &mut Driven,
    plans: &Plans,
    changed: &BTreeSet<ServicePortName>,
    cfg: &BackendConfig,
) -> Result<usize, String> {
    let mut lines = 0;
    for family in IpFamily::ALL {
        let diff = d.mirrors[&family].diff(plans, Scope::Ports(changed), family, cfg);
        let input = &diff.restore;
        if !input.is_empty() {
            let text = input.to_string();
            let fake = d.fakes.get_mut(&family).expect("loaded");
            fake.restore(&text)
                .map_err(|e| format!("{}: {e}\n{text}", family.as_str()))?;
            lines += input.len();
            d.log.push((family, text));
        }
        d.mirrors.get_mut(&family).expect("loaded").commit(diff);
    }
    Ok(lines)
}

/// `IptablesBackend::sync_full` after the first (no adoption): the diff against the mirror.
fn sync_full(d: &mut Driven, plans: &Plans, cfg: &BackendConfig) -> Result<(), String> {
    for family in IpFamily::ALL {
        let fixed = compile_fixed(family, &node(), cfg);
        let diff = d.mirrors[&family].diff(plans, Scope::Full(&fixed), family, cfg);
        if !diff.restore.is_empty() {
            let text = diff.restore.to_string();
            let fake = d.fakes.get_mut(&family).expect("loaded");
            fake.restore(&text)
                .map_err(|e| format!("{}: {e}\n{text}", family.as_str()))?;
        }
        d.mirrors.get_mut(&family).expect("loaded").commit(diff);
    }
    Ok(())
}

/// A restart: adoption reads `save()` and rewrites every chain; the result must be exactly a
/// fresh load, dispatch rules in order included.
#[track_caller]
fn assert_restart_adopts_into_a_fresh_load(
    d: &Driven,
    fresh: &Driven,
    plans: &Plans,
    context: &str,
) {
    for (family, rules) in compile(plans, &node(), &random_config()) {
        let mut fake = d.fakes[&family].clone();
        let plan = load::plan(&rules, &adopt::parse_save(&fake.save()));
        if let Err(e) = fake.restore(&plan) {
            panic!("{context}: the fake refused the adoption: {e}\n{plan}");
        }
        assert_eq!(
            fake.save(),
            fresh.fakes[&family].save(),
            "{context}: after adoption:\n{plan}"
        );
    }
}

/// `save()` with the dispatch chains' rules sorted.
fn canonical(save: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = save.lines().collect();
    fn chain_of(l: &str) -> Option<&str> {
        l.strip_prefix("-A ").and_then(|r| r.split(' ').next())
    }
    let mut i = 0;
    while i < lines.len() {
        let chain = chain_of(lines[i]);
        let end = (i + 1..lines.len())
            .find(|j| chain_of(lines[*j]) != chain)
            .unwrap_or(lines.len());
        if chain.is_some_and(|c| DISPATCH.contains(&c)) {
            lines[i..end].sort_unstable();
        }
        i = end;
    }
    lines
}

#[track_caller]
fn assert_same_state(got: &Driven, fresh: &Driven, context: &str) {
    for family in IpFamily::ALL {
        let (g, f) = (got.fakes[&family].save(), fresh.fakes[&family].save());
        let (g, f) = (canonical(&g), canonical(&f));
        if g != f {
            let minus = g.iter().filter(|l| !f.contains(l)).take(10);
            let plus = f.iter().filter(|l| !g.contains(l)).take(10);
            let diff: Vec<String> = (minus.map(|l| format!("- {l}")))
                .chain(plus.map(|l| format!("+ {l}")))
                .collect();
            panic!(
                "{context}: {} differs from a fresh load (- partial syncs, + fresh):\n{}",
                family.as_str(),
                diff.join("\n")
            );
        }
    }
}

/// Every probe reaches in `got` what the plans say, and the same as in `fresh`.
#[track_caller]
fn assert_probes(got: &Driven, fresh: &Driven, plans: &Plans, probes: &[Packet], context: &str) {
    let cfg = random_config();
    for p in probes {
        let family = IpFamily::of(&p.dst);
        let (out, again) = (got.fakes[&family].trace(p), fresh.fakes[&family].trace(p));
        let want = expected(plans, &cfg, &node().local_traffic, p);
        let got_fates = out.fates();
        assert!(
            same_fates(&got_fates, want.iter()),
            "{context}: {p:?}\n  takes\n{out}  but the plans say {want:?}\n{}",
            plans_of(plans, p)
        );
        assert!(
            same_fates(&got_fates, again.fates().iter()),
            "{context}: {p:?}\n  takes\n{out}  but after a fresh load\n{again}"
        );
        let total: f64 = out.paths.iter().map(|p| p.probability).sum();
        assert!((total - 1.0).abs() < 1e-9, "{context}: {p:?}\n{out}");
    }
}

/// The plans of the Services `p` is for, for failure messages.
fn plans_of(plans: &Plans, p: &Packet) -> String {
    let relevant = plans.values().filter(|pl| {
        let port = &pl.port;
        let vips = port.cluster_ips.iter().chain(&port.external_ips);
        let vip = vips.chain(&port.load_balancer_ips).any(|v| *v == p.dst);
        (vip && port.port == p.dport) || port.node_port == Some(p.dport)
    });
    relevant.map(|pl| format!("{pl:#?}\n")).collect()
}

#[test]
fn random_partial_and_full_syncs_end_where_a_fresh_load_does_and_packets_reach_what_the_plans_say()
{
    random_sequence(STEPS);
}

/// Every restore the fake accepted along a random sequence, real iptables-restore (nft and
/// legacy) accepts too, and each ends with the fake's rules, chain by chain in order (root
/// only, in throwaway namespaces).
#[test]
fn live_iptables_accepts_every_restore_of_a_random_sequence_and_ends_where_the_fake_does() {
    let driven = random_sequence(60);
    for variant in [Variant::Nft, Variant::Legacy] {
        let Some(ns) = Netns::new() else { return };
        for (i, (family, text)) in driven.log.iter().enumerate() {
            let mut cmd = Command::new("ip");
            let restore = variant.restore(*family);
            cmd.args(["netns", "exec", &ns.name, &restore, "-w", "5", "--noflush"]);
            let out = run_piped(cmd, Some(text)).expect("ip netns exec");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{restore} refused restore {i}, which the fake accepted: {stderr}\n{text}"
            );
        }
        for family in IpFamily::ALL {
            let real = ns.run(&[&variant.save(family)]);
            let fake = driven.fakes[&family].save();
            assert_eq!(
                rules_by_chain(&real),
                rules_by_chain(&fake),
                "{}:\n{real}",
                variant.as_str()
            );
        }
    }
}

/// An iptables-save listing as (table, chain) → its rules in order.
fn rules_by_chain(save: &str) -> BTreeMap<(String, String), Vec<&str>> {
    let mut out: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split(' ').next().unwrap_or_default();
            out.entry((table.clone(), chain.to_string())).or_default();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, args) = rule.split_once(' ').unwrap_or((rule, ""));
            out.entry((table.clone(), chain.to_string()))
                .or_default()
                .push(args);
        }
    }
    out
}

/// Runs `steps` random steps with every check; returns what the partial syncs drove.
fn random_sequence(steps: usize) -> Driven {
    let cfg = random_config();
    let mut world = World::new(SEED);
    let mut plans = world.plans();
    let mut driven = load(&plans, &cfg);
    let mut full = load(&plans, &cfg);
    let (mut total_lines, mut traced) = (0, 0);
    let mut outcomes: BTreeSet<&'static str> = BTreeSet::new();
    for step in 0..steps {
        let (changed, what) = world.step();
        let old = std::mem::replace(&mut plans, world.plans());
        let context = format!("step {step} ({what:?}, changed {changed:?})");
        match sync_partial(&mut driven, &plans, &changed, &cfg) {
            Ok(lines) => total_lines += lines,
            Err(e) => panic!("{context}: the fake refused the partial restore: {e}"),
        }
        if let Err(e) = sync_full(&mut full, &plans, &cfg) {
            panic!("{context}: the fake refused the full sync's restore: {e}");
        }
        let fresh = load(&plans, &cfg);
        assert_same_state(&driven, &fresh, &context);
        assert_same_state(&full, &fresh, &format!("{context} (full syncs)"));
        let full_check = step % 25 == 24 || step + 1 == steps;
        let ports: Vec<&ServicePort> = if full_check {
            plans.values().map(|p| &p.port).collect()
        } else {
            let touched = old
                .iter()
                .chain(&plans)
                .filter(|(n, _)| changed.contains(*n));
            touched.map(|(_, p)| &p.port).collect()
        };
        let probes = probes(ports);
        assert_probes(&driven, &fresh, &plans, &probes, &context);
        traced += probes.len();
        for p in &probes {
            for fate in driven.fakes[&IpFamily::of(&p.dst)].trace(p).fates().keys() {
                outcomes.insert(match fate {
                    Fate::Delivered { to, from } if *from == p.src && to.ip() != p.dst => "DNAT",
                    Fate::Delivered { to, .. } if to.ip() != p.dst => "DNAT, masqueraded",
                    Fate::Delivered { .. } => "untouched",
                    Fate::Dropped { .. } => "dropped",
                    Fate::Rejected { .. } => "rejected",
                    Fate::Broken(_) => "broken",
                });
            }
        }
        if full_check {
            assert_restart_adopts_into_a_fresh_load(&driven, &fresh, &plans, &context);
            for family in IpFamily::ALL {
                let fixed = compile_fixed(family, &node(), &cfg);
                let mirror = &driven.mirrors[&family];
                let diff = mirror
                    .diff(&plans, Scope::Full(&fixed), family, &cfg)
                    .restore;
                assert!(
                    diff.is_empty(),
                    "{context}: a full sync after partial ones: {diff}"
                );
                assert_eq!(
                    mirror.rules_per_table(),
                    fresh.mirrors[&family].rules_per_table(),
                    "{context}: the rules the partial syncs' mirror counts"
                );
            }
        }
    }
    eprintln!(
        "{steps} steps, {total_lines} restore lines, {traced} packets traced, {} Services at the end",
        world.len()
    );
    let want = [
        "DNAT",
        "DNAT, masqueraded",
        "dropped",
        "rejected",
        "untouched",
    ];
    if steps == STEPS {
        let want = want.into_iter().collect();
        assert_eq!(outcomes, want, "the sequence covers every fate");
    }
    driven
}
