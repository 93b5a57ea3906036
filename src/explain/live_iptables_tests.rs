//! The on-demand reading of the kernel's iptables against a fake `-S` lister serving the
//! rules kproxy compiles for the shared example plans: every probe packet's trace is the one
//! through the whole listing, also after a chain was flushed or a rule deleted by hand; only
//! chains the packet enters are listed, each once; a jump to a chain the kernel does not list
//! is a difference.

use std::collections::BTreeMap;

use super::*;
use crate::backends::iptables::IptablesBackend;
use crate::backends::iptables::names::PORTALS;
use crate::backends::nft::fake_kernel_tests::{node, packets};
use crate::backends::{Backend, ProxyMode};
use crate::node::NodeFacts;
use crate::testing::{claimed, cluster_ips, external};

/// One chain's `-S` listing per (table, chain).
type Listings = BTreeMap<(Table, String), Vec<String>>;

const NO_CHAIN: &str = "iptables: No chain/target/match by that name.";

/// The rules kproxy compiles for `family`, loaded whole.
fn compiled(family: IpFamily, n: &NodeFacts) -> Ruleset {
    let mut all = cluster_ips();
    all.extend(external());
    let text =
        IptablesBackend::new(crate::testing::config(), Variant::Nft).render(&claimed(&all), n);
    let (v4, v6) = text.split_at(text.find("# ip6tables-restore").unwrap());
    let mut set = Ruleset::new(family);
    set.restore(if family == IpFamily::V4 { v4 } else { v6 })
        .unwrap();
    set
}

/// What `iptables -t T -S CHAIN` lists of `set`, with another component's chain and hooks.
fn listings(set: &Ruleset) -> Listings {
    let mut kernel = Listings::new();
    let mut table = Table::Nat;
    for line in set.save().lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Table::ALL.into_iter().find(|x| x.as_str() == t).unwrap();
        } else if let Some(decl) = line.strip_prefix(':') {
            let (name, policy) = decl.split_once(' ').unwrap();
            let first = match policy {
                "-" => format!("-N {name}"),
                _ => format!("-P {name} {policy}"),
            };
            kernel.insert((table, name.to_string()), vec![first]);
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split(' ').next().unwrap();
            let listing = kernel.get_mut(&(table, chain.to_string())).unwrap();
            listing.push(line.to_string());
        }
    }
    let prerouting = kernel.get_mut(&(Table::Nat, "PREROUTING".into())).unwrap();
    prerouting.insert(1, "-A PREROUTING -j KUBE-SERVICES".into());
    kernel.insert(
        (Table::Nat, "KUBE-SERVICES".into()),
        vec![
            "-N KUBE-SERVICES".into(),
            "-A KUBE-SERVICES -j RETURN".into(),
        ],
    );
    kernel
}

/// Reads `kernel` on demand for `p`, recording every chain listed.
fn read(kernel: &Listings, p: &ipt::Packet, asked: &mut Vec<(Table, String)>) -> Kernel {
    let family = IpFamily::of(&p.dst);
    let got = read_on_demand(family, p, "iptables-fake", |chains| {
        asked.extend(chains.iter().cloned());
        let listed = chains.iter().map(|c| kernel.get(c).cloned());
        Ok(listed
            .map(|l| l.ok_or_else(|| NO_CHAIN.to_string()))
            .collect())
    });
    got.unwrap()
}

/// Every probe packet of the example plans, as the tracer takes it on `n`.
fn probes(n: &NodeFacts) -> Vec<ipt::Packet> {
    let cfg = crate::testing::config();
    let facts = Facts {
        mode: ProxyMode::Iptables,
        node: n,
        config: &cfg,
    };
    let mut all = cluster_ips();
    all.extend(external());
    packets(&claimed(&all), n)
        .iter()
        .map(|p| {
            let p = Packet {
                proto: p.proto,
                src: p.saddr,
                dst: p.daddr,
                dport: p.dport,
            };
            packet(&facts, &p)
        })
        .collect()
}

/// web's (10.96.0.10:80) own chain, as PORTALS jumps to it.
fn webs_chain(set: &Ruleset) -> String {
    let portals = set.rules(Table::Nat, PORTALS).unwrap();
    let rule = portals
        .iter()
        .find(|r| r.contains("-d 10.96.0.10/32"))
        .unwrap();
    rule.rsplit(' ').next().unwrap().to_string()
}

fn web(n: &NodeFacts) -> ipt::Packet {
    let p = probes(n)
        .into_iter()
        .find(|p| p.dst.to_string() == "10.96.0.10");
    p.filter(|p| p.dport == 80).unwrap()
}

#[test]
fn every_probe_traced_through_the_chains_it_enters_ends_as_through_the_whole_listing() {
    let n = node();
    let sets = IpFamily::ALL.map(|f| (f, compiled(f, &n)));
    let kernels = sets.each_ref().map(|(f, s)| (*f, listings(s)));
    let probes = probes(&n);
    assert!(probes.len() > 50, "{} probes", probes.len());
    for p in &probes {
        let family = IpFamily::of(&p.dst);
        let whole = &sets.iter().find(|(f, _)| *f == family).unwrap().1;
        let kernel = &kernels.iter().find(|(f, _)| *f == family).unwrap().1;
        let mut asked = vec![];
        let Kernel::Rules(partial) = read(kernel, p, &mut asked) else {
            panic!("{p:?}: not read");
        };
        assert_eq!(partial.trace(p), whole.trace(p), "{p:?}");
        assert!(asked.len() < kernel.len(), "{p:?} listed every chain");
    }
}

#[test]
fn a_chain_flushed_or_a_rule_deleted_by_hand_is_seen_as_in_the_whole_listing() {
    let n = node();
    let set = compiled(IpFamily::V4, &n);
    let p = web(&n);
    let chain = webs_chain(&set);
    let sabotages: [(&str, &str); 2] = [(PORTALS, ""), (&chain, "10.0.2.1")];
    for (chain, rule) in sabotages {
        let mut broken = set.clone();
        let gone: Vec<String> = (set.rules(Table::Nat, chain).unwrap().into_iter())
            .filter(|r| r.contains(rule))
            .map(|r| format!("-D {chain} {r}\n"))
            .collect();
        assert!(!gone.is_empty(), "{chain}: nothing to delete");
        broken
            .restore(&format!("*nat\n{}COMMIT\n", gone.concat()))
            .unwrap();
        let Kernel::Rules(partial) = read(&listings(&broken), &p, &mut vec![]) else {
            panic!("{chain}: not read");
        };
        let seen = partial.trace(&p);
        assert_eq!(seen, broken.trace(&p), "{chain}");
        assert_ne!(seen.paths, set.trace(&p).paths, "{chain}: nothing changed");
    }
}

#[test]
fn only_the_chains_the_packet_enters_are_listed_each_once() {
    let n = node();
    let set = compiled(IpFamily::V4, &n);
    let p = web(&n);
    let mut asked = vec![];
    read(&listings(&set), &p, &mut asked);
    let mut once = asked.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), asked.len(), "{asked:?}");
    let entered = set.trace(&p).visited;
    let per_port =
        |c: &&(Table, String)| !ipt::builtins(c.0).contains(&c.1.as_str()) && c.1.len() == 27;
    let listed: Vec<_> = asked.iter().filter(per_port).collect();
    let wanted: Vec<_> = entered.iter().filter(per_port).collect();
    assert_eq!(listed, wanted, "only web's own chains");
    assert!(wanted.iter().any(|c| c.1 == webs_chain(&set)), "{wanted:?}");
    assert!(!asked.contains(&(Table::Nat, "KUBE-SERVICES".into())));
}

#[test]
fn a_jump_to_a_chain_the_kernel_does_not_list_is_a_difference_after_one_more_reading() {
    let n = node();
    let set = compiled(IpFamily::V4, &n);
    let p = web(&n);
    let chain = webs_chain(&set);
    let mut kernel = listings(&set);
    kernel.remove(&(Table::Nat, chain.clone()));
    let mut asked = vec![];
    match read(&kernel, &p, &mut asked) {
        Kernel::Unfollowable(why) => {
            assert!(why.contains(&chain) && why.contains(NO_CHAIN), "{why}")
        }
        other => panic!("a difference, not {other:?}"),
    }
    let times = asked.iter().filter(|c| c.1 == chain).count();
    assert_eq!(times, 2, "read again from the start once: {asked:?}");

    // Missing only while the daemon replaced it: the second reading is the answer.
    let mut first = true;
    let got = read_on_demand(IpFamily::V4, &p, "iptables-fake", |chains| {
        let full = listings(&set);
        let listed = chains.iter().map(|c| {
            let gone = first && c.1 == chain;
            full.get(c)
                .filter(|_| !gone)
                .cloned()
                .ok_or(NO_CHAIN.into())
        });
        let listed = listed.collect();
        first &= !chains.iter().any(|c| c.1 == chain);
        Ok(listed)
    });
    let Ok(Kernel::Rules(partial)) = got else {
        panic!("{got:?}");
    };
    assert_eq!(partial.trace(&p), set.trace(&p));
}

#[test]
fn without_kproxys_entry_chain_the_rules_are_absent() {
    let n = node();
    let mut kernel = listings(&Ruleset::new(IpFamily::V4));
    kernel.remove(&(Table::Nat, "KUBE-SERVICES".into()));
    match read(&kernel, &web(&n), &mut vec![]) {
        Kernel::Absent(what) => assert_eq!(what, "chain KPROXY-SERVICES (iptables-fake)"),
        other => panic!("absent, not {other:?}"),
    }
}

#[test]
fn a_missing_chain_is_told_from_a_listing_that_failed() {
    let nft =
        "iptables v1.8.9 (nf_tables): chain `X' in table `nat' is incompatible, use 'nft' tool.";
    assert!(no_such_chain(nft));
    assert!(no_such_chain(NO_CHAIN));
    assert!(!no_such_chain(
        "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
    ));
}

#[test]
fn a_listing_line_about_another_chain_is_left_out() {
    assert_eq!(saved_form("X", "-N X"), Some(":X -".into()));
    assert_eq!(
        saved_form("INPUT", "-P INPUT DROP"),
        Some(":INPUT DROP".into())
    );
    assert_eq!(
        saved_form("X", "-A X -j RETURN"),
        Some("-A X -j RETURN".into())
    );
    assert_eq!(saved_form("X", "-A Y -j RETURN"), None);
    assert_eq!(saved_form("X", "-N XY"), None);
}

#[test]
fn a_legacy_save_served_chain_by_chain_ends_as_the_whole_listing() {
    let n = node();
    let set = compiled(IpFamily::V4, &n);
    // As iptables-legacy-save prints it, with another component's chain and hook.
    let text = set.save().replace(
        ":PREROUTING ACCEPT\n",
        ":PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n",
    );
    let mut saved = Saved::default();
    Table::ALL.into_iter().for_each(|t| saved.builtins(t));
    let mut table = Table::Nat;
    for line in text.lines() {
        match line.strip_prefix('*') {
            Some(t) => table = Table::ALL.into_iter().find(|x| x.as_str() == t).unwrap(),
            None => saved.line(table, line),
        }
    }
    assert!(!saved.0.contains_key(&(Table::Nat, "KUBE-SERVICES".into())));
    let v4 = probes(&n).into_iter().filter(|p| p.dst.is_ipv4());
    for p in v4 {
        let got = read_on_demand(IpFamily::V4, &p, "iptables-legacy-save", |chains| {
            Ok(saved.list(chains))
        });
        let Ok(Kernel::Rules(partial)) = got else {
            panic!("{p:?}: {got:?}");
        };
        assert_eq!(partial.trace(&p), set.trace(&p), "{p:?}");
    }
}
