//! Live tests of `IptablesBackend` with iptables-nft and iptables-legacy, each inside a
//! throwaway network namespace: the load is accepted, a restart adopts without touching the
//! hooks, partial syncs add and remove exactly one Service's rules, drift is noticed and
//! repaired, a failed restore is reported and repaired by the next full sync.
//!
//! Invariants: nothing runs outside a namespace the test created (the backend runs on a thread
//! inside it); without root the tests skip, and under CI=true a skip is a failure.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::IptablesBackend;
use super::adopt;
use super::compile::{FamilyRules, PortRules, compile};
use super::load;
use super::variant::Variant;
use crate::backends::nft::transport_tests::Netns;
use crate::backends::{Backend, BackendConfig, Plans};
use crate::model::{IpFamily, Protocol};
use crate::testing::{cluster_ips, config, external, name, node};

fn iptables_config() -> BackendConfig {
    BackendConfig {
        localhost_nodeports: true,
        ..config()
    }
}

fn plans() -> Plans {
    let mut plans = cluster_ips();
    plans.extend(external());
    plans
}

fn save(ns: &Netns, variant: Variant, family: IpFamily) -> String {
    ns.run(&[&variant.save(family)])
}

/// The `KPROXY-PORTALS` rules `rules` holds.
fn portals(rules: &FamilyRules) -> usize {
    let of_port = |p: &PortRules| {
        p.dispatch
            .iter()
            .filter(|d| d.1 == "KPROXY-PORTALS")
            .count()
    };
    rules.ports.values().map(of_port).sum()
}

fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Polls `drift` (with a deadline) until it reports something.
fn until_drift(b: &mut IptablesBackend) -> String {
    let started = Instant::now();
    loop {
        if let Some(what) = b.drift().unwrap() {
            return what;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "drift never noticed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts `drift` finds nothing, once its rate limit has passed (so the kernel is probed).
fn assert_no_drift(b: &mut IptablesBackend, after: &str) {
    std::thread::sleep(super::backend::PROBE_PERIOD);
    assert_eq!(b.drift().unwrap(), None, "drift reported after {after}");
}

/// `iptables -t nat -F KPROXY-SERVICES`, as someone else would.
fn flush_entry_chain(variant: Variant) {
    let status = std::process::Command::new(variant.cli(IpFamily::V4))
        .args(["-t", "nat", "-F", "KPROXY-SERVICES"])
        .status()
        .unwrap();
    assert!(status.success());
}

fn live(variant: Variant) {
    let Some(ns) = Netns::new() else { return };
    let name_ = ns.name.clone();
    crate::netns::run_in(&name_, move || {
        let mut b = IptablesBackend::new(iptables_config(), variant);
        let report = b.sync_full(&plans(), &node()).expect("the first load");
        assert!(report.operations > 50, "{report:?}");
        let rules = b.table_rules();
        assert_eq!(rules.len(), 4, "two families, two tables: {rules:?}");
        assert!(
            rules.iter().all(|r| r.total > 0 && r.last_sync == r.total),
            "a fresh load writes every rule it owns: {rules:?}"
        );
    })
    .unwrap();
    let v4 = save(&ns, variant, IpFamily::V4);
    let want = compile(&plans(), &node(), &iptables_config());
    assert_eq!(
        lines_with(&v4, "-A KPROXY-PORTALS "),
        portals(&want[&IpFamily::V4]),
        "{v4}"
    );
    assert_eq!(lines_with(&v4, "-j KPROXY-SERVICES"), 2, "{v4}");
    let v6 = save(&ns, variant, IpFamily::V6);
    assert_eq!(lines_with(&v6, "-A KPROXY-PORTALS "), 1, "{v6}");

    // A restart: the hooks iptables-save shows are exactly the ones kproxy wants.
    for family in IpFamily::ALL {
        let saved = adopt::parse_save(&save(&ns, variant, family));
        let again = load::plan(&want[&family], &saved);
        assert!(
            !again
                .lines()
                .any(|l| l.starts_with("-I ") || l.starts_with("-D ") || l.starts_with("-X ")),
            "{} adoption after a load must only rewrite chains in place:\n{again}",
            family.as_str()
        );
    }

    let ns_name = ns.name.clone();
    let repaired = crate::netns::run_in(&ns_name, move || {
        let mut b = IptablesBackend::new(iptables_config(), variant);
        b.sync_full(&plans(), &node()).expect("adoption");
        // Partial: remove one Service.
        let web = name("web", "http", Protocol::Tcp);
        let mut fewer = plans();
        fewer.remove(&web);
        let changed = BTreeSet::from([web]);
        let r = b.sync_partial(&fewer, &changed, &node()).expect("partial");
        assert!(r.operations > 0 && r.operations < 10, "{r:?}");
        let rules = b.table_rules();
        assert!(
            rules.iter().all(|r| r.last_sync == 0),
            "removing a Service deletes rules and writes none: {rules:?}"
        );
        assert_no_drift(&mut b, "kproxy's own partial restore");
        let t = Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            super::probe::snapshot(variant, &IpFamily::ALL).expect("probe");
        }
        eprintln!("{variant:?} drift probe: {:?} each", t.elapsed() / rounds);
        // Someone flushes kproxy's entry chain.
        let cli = variant.cli(IpFamily::V4);
        flush_entry_chain(variant);
        let started = Instant::now();
        let what = until_drift(&mut b);
        eprintln!("drift noticed after {:?}: {what}", started.elapsed());
        b.sync_full(&fewer, &node()).expect("repair");
        assert_no_drift(&mut b, "the repair");
        // How the report names the flushed entry chain (legacy has no chains in the kernel).
        let flushed_entry = match variant {
            Variant::Nft => "KPROXY-SERVICES",
            Variant::Legacy => "IPv4 nat/",
        };
        // A flush just before kproxy's own partial syncs is still drift after them.
        let web = name("web", "http", Protocol::Tcp);
        flush_entry_chain(variant);
        let changed = BTreeSet::from([web]);
        b.sync_partial(&plans(), &changed, &node())
            .expect("partial");
        b.sync_partial(&fewer, &changed, &node()).expect("partial");
        let what = until_drift(&mut b);
        assert!(what.contains(flushed_entry), "{what}");
        b.sync_full(&fewer, &node()).expect("repair");
        assert_no_drift(&mut b, "the repair");
        // And just before a full sync that has nothing to change (its check finds it first;
        // with iptables-nft only kproxy's chain differs, so it is rewritten in place).
        flush_entry_chain(variant);
        b.sync_full(&fewer, &node()).expect("a full sync");
        let what = until_drift(&mut b);
        assert!(what.contains(flushed_entry), "{what}");
        let adoptions = b.adoptions();
        b.sync_full(&fewer, &node()).expect("repair");
        let in_place = b.adoptions() == adoptions;
        assert_eq!(in_place, variant == Variant::Nft, "in place?");
        let v4 = String::from_utf8(
            std::process::Command::new(variant.save(IpFamily::V4))
                .args(["-t", "nat"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert_eq!(lines_with(&v4, "-A KPROXY-SERVICES "), 2, "{v4}");
        // Someone flushes the whole filter table (built-in chains included), as `iptables -F`.
        let status = std::process::Command::new(&cli)
            .args(["-t", "filter", "-F"])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        let what = until_drift(&mut b);
        eprintln!(
            "iptables -t filter -F noticed after {:?}: {what}",
            started.elapsed()
        );
        b.sync_full(&fewer, &node()).expect("repair");
        let filter = std::process::Command::new(variant.save(IpFamily::V4))
            .args(["-t", "filter"])
            .output()
            .unwrap();
        let filter = String::from_utf8_lossy(&filter.stdout);
        assert_eq!(lines_with(&filter, "-j KPROXY-FILTER"), 3, "{filter}");
        // A partial restore that cannot apply (its dispatch rule is gone) fails and is repaired.
        let lb = name("lb", "https", Protocol::Tcp);
        let status = std::process::Command::new(&cli)
            .args(["-t", "nat", "-F", "KPROXY-PORTALS"])
            .status()
            .unwrap();
        assert!(status.success());
        let mut fewer2 = fewer.clone();
        fewer2.remove(&lb);
        let err = b
            .sync_partial(&fewer2, &BTreeSet::from([lb]), &node())
            .expect_err("deleting a rule that is gone fails");
        assert!(err.to_string().contains("restore"), "{err}");
        b.sync_full(&fewer2, &node())
            .expect("the full resync after a failure");
        fewer2
    })
    .unwrap();
    let v4 = save(&ns, variant, IpFamily::V4);
    let want = compile(&repaired, &node(), &iptables_config());
    assert_eq!(
        lines_with(&v4, "-A KPROXY-PORTALS "),
        portals(&want[&IpFamily::V4]),
        "{v4}"
    );
    assert_eq!(lines_with(&v4, "-A KPROXY-SERVICES "), 2, "{v4}");
    assert!(!v4.contains("default/web:http"), "{v4}");
    assert!(!v4.contains("default/lb:https"), "{v4}");

    // --cleanup leaves nothing of kproxy in either family.
    crate::netns::run_in(&ns_name, move || {
        IptablesBackend::new(iptables_config(), variant)
            .cleanup()
            .expect("cleanup");
    })
    .unwrap();
    for family in IpFamily::ALL {
        let text = save(&ns, variant, family);
        assert_eq!(lines_with(&text, "KPROXY-"), 0, "{text}");
    }
}

#[test]
fn iptables_nft_loads_adopts_syncs_partially_and_repairs_drift() {
    live(Variant::Nft);
}

#[test]
fn iptables_legacy_loads_adopts_syncs_partially_and_repairs_drift() {
    live(Variant::Legacy);
}

#[test]
fn a_foreign_rule_naming_a_kproxy_chain_is_repaired_a_few_times_then_lived_with() {
    let Some(ns) = Netns::new() else { return };
    crate::netns::run_in(&ns.name.clone(), move || {
        let mut b = IptablesBackend::new(iptables_config(), Variant::Nft);
        b.sync_full(&plans(), &node()).expect("the first load");
        assert_no_drift(&mut b, "the first load");
        // Not kproxy's, and not removed by its adoption: every probe counts it as a hook.
        let status = std::process::Command::new(Variant::Nft.cli(IpFamily::V4))
            .args(["-t", "nat", "-A", "PREROUTING"])
            .args(["-m", "comment", "--comment", "KPROXY-SERVICES look-alike"])
            .args(["-j", "RETURN"])
            .status()
            .unwrap();
        assert!(status.success());
        let mut repairs = 0;
        for _ in 0..10 {
            b.sync_full(&plans(), &node()).expect("a full sync");
            std::thread::sleep(super::backend::PROBE_PERIOD);
            match b.drift().unwrap() {
                Some(what) => {
                    // The first report is the notification's, the rest the probe's.
                    let said = what.contains("nat/PREROUTING: 1 -> 2")
                        || what.contains("added 1 rule(s) in ip nat PREROUTING");
                    assert!(said, "{what}");
                    repairs += 1;
                }
                None => break,
            }
        }
        // Two repairs, and the third full sync in a row that still finds it lives with it.
        assert_eq!(repairs, 2, "reported as drift until it was lived with");
        b.sync_full(&plans(), &node()).expect("a full sync");
        assert_no_drift(&mut b, "living with it");
    })
    .unwrap();
}

/// What iptables-nft-save shows of both families, without its comment lines (dates).
fn saved_here() -> String {
    IpFamily::ALL
        .into_iter()
        .map(|f| {
            let out = std::process::Command::new(Variant::Nft.save(f))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        })
        .collect()
}

#[test]
fn iptables_nft_chains_someone_else_changed_are_rewritten_in_place_and_the_rest_adopted() {
    let Some(ns) = Netns::new() else { return };
    crate::netns::run_in(&ns.name.clone(), move || {
        let mut b = IptablesBackend::new(iptables_config(), Variant::Nft);
        b.sync_full(&plans(), &node()).expect("the first load");
        let want = saved_here();
        let svc = want
            .lines()
            .find_map(|l| l.strip_prefix(":KPROXY-SVC-"))
            .map(|l| format!("KPROXY-SVC-{}", l.split(' ').next().unwrap()))
            .expect("a service chain");
        let changes: Vec<(Vec<&str>, String, bool)> = vec![
            (
                vec!["-t", "nat", "-F", "KPROXY-PORTALS"],
                "rule(s) in ip nat KPROXY-PORTALS".into(),
                true,
            ),
            (
                vec!["-t", "nat", "-D", "KPROXY-PORTALS", "1"],
                "deleted 1 rule(s) in ip nat KPROXY-PORTALS".into(),
                true,
            ),
            (
                vec![
                    "-t",
                    "nat",
                    "-I",
                    "KPROXY-PORTALS",
                    "-d",
                    "10.255.0.1/32",
                    "-j",
                    "RETURN",
                ],
                "added 1 rule(s) in ip nat KPROXY-PORTALS".into(),
                true,
            ),
            (
                vec!["-t", "nat", "-F", &svc],
                format!("in ip nat {svc}"),
                true,
            ),
            (
                vec!["-t", "filter", "-F", "KPROXY-FILTER"],
                "in ip filter KPROXY-FILTER".into(),
                true,
            ),
            // A hook in a built-in chain: adoption puts it back.
            (
                vec!["-t", "nat", "-D", "PREROUTING", "1"],
                "in ip nat PREROUTING".into(),
                false,
            ),
        ];
        for (args, words, in_place) in changes {
            let status = std::process::Command::new(Variant::Nft.cli(IpFamily::V4))
                .args(&args)
                .status()
                .unwrap();
            assert!(status.success(), "{args:?}");
            let what = until_drift(&mut b);
            assert!(what.contains(&words), "{args:?}: {what}");
            let adoptions = b.adoptions();
            b.sync_full(&plans(), &node()).expect("repair");
            assert_eq!(saved_here(), want, "after {args:?}");
            assert_eq!(b.adoptions() == adoptions, in_place, "{args:?} in place?");
            assert_no_drift(&mut b, "the repair");
        }
        // Two of kproxy's chains flushed in one commit (a dispatch chain and a port's chain):
        // both rewritten in one restore.
        let mut restore = std::process::Command::new(Variant::Nft.restore(IpFamily::V4))
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input = format!("*nat\n:KPROXY-PORTALS - [0:0]\n:{svc} - [0:0]\nCOMMIT\n");
        std::io::Write::write_all(&mut restore.stdin.take().unwrap(), input.as_bytes()).unwrap();
        assert!(restore.wait().unwrap().success());
        let what = until_drift(&mut b);
        assert!(
            what.contains("KPROXY-PORTALS") && what.contains(&svc),
            "{what}"
        );
        let adoptions = b.adoptions();
        b.sync_full(&plans(), &node()).expect("repair");
        assert_eq!(saved_here(), want, "after two chains flushed");
        assert_eq!(b.adoptions(), adoptions, "two chains repaired in place");
        assert_no_drift(&mut b, "the repair");
    })
    .unwrap();
}
