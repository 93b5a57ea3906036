//! The IPVS backend against the fake kernel when someone else changed IPVS under it: the dummy
//! interface deleted, `--cleanup` run while kproxy runs or between two runs, servers and
//! destinations added or deleted behind the mirror. Each repair converges in one sync, to
//! exactly what a fresh kproxy programs on an empty kernel, and kproxy's mark decides which
//! servers are its own.

use super::IpvsBackend;
use super::fake_kernel::{FakeKernel, FakeState};
use super::netlink::{DestKey, ServiceKey, VirtualServer};
use crate::backends::{Backend, Plans};
use crate::model::{IpFamily, Protocol};
use crate::testing::{add, cluster_ips, config, ep, external, ip, name, node};

fn backend(kernel: &FakeKernel) -> IpvsBackend {
    IpvsBackend::new(&config(), Box::new(kernel.clone()))
        .with_families(vec![IpFamily::V4, IpFamily::V6])
}

fn plans() -> Plans {
    let mut plans = cluster_ips();
    plans.extend(external());
    plans
}

fn key(addr: &str, protocol: Protocol, port: u16) -> ServiceKey {
    ServiceKey {
        addr: ip(addr),
        protocol,
        port,
    }
}

fn web() -> ServiceKey {
    key("10.96.0.10", Protocol::Tcp, 80)
}

/// A server of another IPVS user (no mark) on `k`.
fn foreign(s: &mut FakeState, k: ServiceKey) {
    let vs = VirtualServer {
        key: k,
        scheduler: "wlc".into(),
        persistence: None,
        owned: false,
    };
    s.services.insert(k, (vs, Default::default()));
}

/// Servers (with destinations), addresses and elements of `kernel`.
fn programmed(kernel: &FakeKernel) -> String {
    let s = kernel.state();
    format!("{:#?}", (&s.services, &s.addresses, &s.elements))
}

/// What a fresh kproxy programs for `plans` on an empty kernel.
fn fresh(plans: &Plans) -> String {
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(plans, &node()).unwrap();
    programmed(&kernel)
}

#[test]
fn every_server_kproxy_programs_carries_its_mark() {
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(&plans(), &node()).unwrap();
    let s = kernel.state();
    assert!(s.services.len() > 5);
    assert!(s.services.values().all(|(vs, _)| vs.owned));
}

#[test]
fn a_deleted_dummy_interface_is_repaired_by_one_full_sync_without_touching_ipvs() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    let sent = kernel.state().ipvs_messages;
    kernel.state().delete_link();
    let what = b.drift().unwrap().expect("the deleted link is noticed");
    assert!(what.contains("kproxy-ipvs0"), "{what}");
    // Before the mark, the servers on the (now unbound) service addresses were nobody's: the
    // full sync re-added them and IPVS answered EEXIST, on every retry.
    b.sync_full(&plans(), &node()).unwrap();
    assert_eq!(
        kernel.state().ipvs_messages,
        sent,
        "the servers were adopted"
    );
    assert_eq!(programmed(&kernel), fresh(&plans()));
    assert_eq!(b.drift().unwrap(), None);
}

#[test]
fn cleanup_while_kproxy_runs_is_noticed_and_repaired() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    backend(&kernel).cleanup().unwrap();
    assert!(kernel.state().services.is_empty());
    assert!(b.drift().unwrap().is_some());
    b.sync_full(&plans(), &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&plans()));
}

#[test]
fn without_the_dummy_interface_cleanup_removes_kproxys_servers_and_no_other() {
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(&plans(), &node()).unwrap();
    let theirs = [
        key("172.16.0.1", Protocol::Tcp, 80),
        // On the node's own address, as kproxy's NodePorts are.
        key("192.168.0.2", Protocol::Tcp, 8443),
    ];
    {
        let mut s = kernel.state();
        s.delete_link();
        s.host_addresses.extend([ip("192.168.0.2"), ip("fd00::2")]);
        theirs.iter().for_each(|k| foreign(&mut s, *k));
    }
    backend(&kernel).cleanup().unwrap();
    let s = kernel.state();
    assert_eq!(s.services.keys().copied().collect::<Vec<_>>(), theirs);
    assert!(s.tables.is_empty());
}

#[test]
fn a_restart_after_cleanup_without_the_interface_serves_at_the_first_sync() {
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(&plans(), &node()).unwrap();
    kernel.state().delete_link();
    backend(&kernel).cleanup().unwrap();
    backend(&kernel).sync_full(&plans(), &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&plans()));
}

#[test]
fn cleanup_never_loads_ip_vs() {
    let kernel = FakeKernel::default();
    kernel.state().ipvs_unloaded = true;
    backend(&kernel).cleanup().unwrap();
    assert!(!kernel.state().autoloaded);
}

#[test]
fn a_full_sync_takes_over_a_foreign_server_at_a_key_it_wants() {
    let kernel = FakeKernel::default();
    let theirs = key("172.16.0.1", Protocol::Tcp, 80);
    {
        let mut s = kernel.state();
        foreign(&mut s, web());
        foreign(&mut s, theirs);
    }
    backend(&kernel).sync_full(&plans(), &node()).unwrap();
    let s = kernel.state();
    assert!(s.services[&web()].0.owned, "marked as kproxy's now");
    assert_eq!(s.services[&web()].0.scheduler, "rr");
    assert_eq!(s.services[&web()].1.len(), 3);
    assert!(
        !s.services[&theirs].0.owned,
        "the other one stays as it was"
    );
}

/// `web`'s endpoints replaced by `eps`.
fn with_web(eps: &[&str]) -> Plans {
    let mut plans = plans();
    let n = name("web", "http", Protocol::Tcp);
    let port = plans[&n].port.clone();
    add(
        &mut plans,
        port,
        eps.iter().map(|e| ep(e, 8080, "node-b")).collect(),
    );
    plans
}

fn changed() -> std::collections::BTreeSet<crate::model::ServicePortName> {
    [name("web", "http", Protocol::Tcp)].into_iter().collect()
}

#[test]
fn a_partial_sync_on_a_server_someone_deleted_reads_it_back_and_recreates_it() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    kernel.state().services.remove(&web());
    let plans = with_web(&["10.0.1.1", "10.0.9.9"]);
    b.sync_partial(&plans, &changed(), &node())
        .expect("ESRCH is repaired within the sync");
    let s = kernel.state();
    let dests: Vec<DestKey> = s.services[&web()].1.keys().copied().collect();
    assert_eq!(
        dests,
        [
            DestKey {
                addr: ip("10.0.1.1"),
                port: 8080
            },
            DestKey {
                addr: ip("10.0.9.9"),
                port: 8080
            }
        ]
    );
}

#[test]
fn a_partial_sync_meeting_servers_and_destinations_added_by_someone_else_converges() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    let plans = with_web(&["10.0.1.1", "10.0.9.9"]);
    // Someone added the destination kproxy is about to add, and deleted one it will drain.
    {
        let mut s = kernel.state();
        let dests = &mut s.services.get_mut(&web()).unwrap().1;
        let mut added = *dests.values().next().unwrap();
        added.key.addr = ip("10.0.9.9");
        dests.insert(added.key, added);
        dests.retain(|d, _| d.addr != ip("10.0.2.1"));
    }
    b.sync_partial(&plans, &changed(), &node())
        .expect("EEXIST and ENOENT are repaired within the sync");
    let s = kernel.state();
    let weights: Vec<(String, u32)> = s.services[&web()]
        .1
        .values()
        .map(|d| (d.key.addr.to_string(), d.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("10.0.1.1".into(), 1),
            ("10.0.3.1".into(), 0),
            ("10.0.9.9".into(), 1)
        ]
    );
    drop(s);
    assert_eq!(b.drift().unwrap(), None);
}

#[test]
fn a_second_refusal_is_an_error_not_a_loop() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    let before = b.mirror().clone();
    kernel.state().services.remove(&web());
    // The re-read server's repair fails too: the sync gives up (the loop's full resync follows).
    kernel.state().fail_second_batch = true;
    let plans = with_web(&["10.0.1.1"]);
    assert!(b.sync_partial(&plans, &changed(), &node()).is_err());
    assert_eq!(b.mirror(), &before, "nothing committed");
    b.sync_full(&plans, &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&plans));
}

#[test]
fn another_users_server_on_a_node_address_survives_syncs_and_cleanup() {
    let kernel = FakeKernel::default();
    let theirs = key("192.168.0.2", Protocol::Tcp, 8443);
    {
        let mut s = kernel.state();
        s.host_addresses.extend([ip("192.168.0.2"), ip("fd00::2")]);
        foreign(&mut s, theirs);
    }
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    b.sync_full(&plans(), &node()).unwrap();
    assert!(kernel.state().services.contains_key(&theirs));
    b.cleanup().unwrap();
    let s = kernel.state();
    assert_eq!(s.services.keys().copied().collect::<Vec<_>>(), [theirs]);
}

#[test]
fn flushed_addresses_of_the_interface_are_noticed_and_bound_again() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    kernel.state().addresses.clear();
    let what = b.drift().unwrap().expect("the flush is noticed");
    assert!(what.contains("no longer bound"), "{what}");
    b.sync_full(&plans(), &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&plans()));
    assert_eq!(b.drift().unwrap(), None);
}

#[test]
fn a_periodic_full_sync_sends_nothing_when_nothing_changed_and_never_recreates_the_tables() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    let (messages, scripts) = {
        let s = kernel.state();
        (s.ipvs_messages, s.scripts)
    };
    b.sync_full(&plans(), &node()).unwrap();
    {
        let s = kernel.state();
        assert_eq!(s.ipvs_messages, messages, "no virtual server re-sent");
        assert_eq!(s.scripts, scripts, "no companion script at all");
    }
    // A port gone: its elements are deleted one by one, the tables stay.
    let mut fewer = plans();
    fewer.remove(&name("lb", "https", Protocol::Tcp));
    kernel.state().tables_created = 0;
    b.sync_full(&fewer, &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&fewer));
    assert_eq!(kernel.state().tables_created, 0, "no table recreated");
    // After drift (a table deleted), the next full sync rewrites them.
    kernel.state().tables.remove("ip");
    assert!(b.drift().unwrap().is_some());
    b.sync_full(&fewer, &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&fewer));
    assert!(kernel.state().tables_created > 0);
}

#[test]
fn a_virtual_server_someone_deleted_is_noticed_by_the_next_scan_and_repaired() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    b.scan_due();
    assert_eq!(b.drift().unwrap(), None, "nothing changed");
    // The last server: the probe's own check looks at the first one only.
    let last = *kernel.state().services.keys().next_back().unwrap();
    kernel.state().services.remove(&last);
    b.scan_due();
    let what = b.drift().unwrap().expect("a deleted server is drift");
    assert!(what.contains("1 of kproxy's"), "{what}");
    b.sync_full(&plans(), &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&plans()));
    b.scan_due();
    assert_eq!(b.drift().unwrap(), None, "repaired");
}

#[test]
fn a_virtual_server_with_kproxys_mark_that_no_service_wants_is_noticed_and_removed() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&plans(), &node()).unwrap();
    let stray = key("10.96.9.9", Protocol::Tcp, 80);
    {
        let mut s = kernel.state();
        let (vs, _) = s.services.values().next().unwrap().clone();
        s.services.insert(
            stray,
            (VirtualServer { key: stray, ..vs }, Default::default()),
        );
    }
    b.scan_due();
    let what = b.drift().unwrap().expect("a stray marked server is drift");
    assert!(what.contains("10.96.9.9:80"), "{what}");
    b.sync_full(&plans(), &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&plans()));
}

#[test]
fn a_destination_someone_deleted_or_reweighted_is_noticed_within_one_rotation_of_scans() {
    for change in ["delete", "reweight"] {
        let kernel = FakeKernel::default();
        let mut b = backend(&kernel);
        b.sync_full(&plans(), &node()).unwrap();
        let servers = kernel.state().services.len();
        {
            let mut s = kernel.state();
            let (_, dests) = s
                .services
                .values_mut()
                .rev()
                .find(|(_, d)| !d.is_empty())
                .unwrap();
            let first = *dests.keys().next().unwrap();
            match change {
                "delete" => {
                    dests.remove(&first);
                }
                _ => dests.get_mut(&first).unwrap().weight += 5,
            }
        }
        let rounds = servers.div_ceil(super::backend::DEST_CHECKS) + 1;
        let found = (0..rounds).find_map(|_| {
            b.scan_due();
            b.drift().unwrap()
        });
        let what = found.unwrap_or_else(|| panic!("{change}: not noticed in {rounds} scans"));
        assert!(what.contains("destination(s) gone"), "{change}: {what}");
        b.sync_full(&plans(), &node()).unwrap();
        assert_eq!(programmed(&kernel), fresh(&plans()), "{change}");
    }
}

#[test]
fn scans_of_many_servers_find_nothing_until_one_is_deleted() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let plans = crate::testing::services(3000);
    b.sync_full(&plans, &node()).unwrap();
    let servers = kernel.state().services.len();
    for _ in 0..servers.div_ceil(super::backend::DEST_CHECKS) + 1 {
        b.scan_due();
        assert_eq!(b.drift().unwrap(), None, "nothing changed");
    }
    let first = *kernel.state().services.keys().next().unwrap();
    kernel.state().services.remove(&first);
    b.scan_due();
    let what = b.drift().unwrap().expect("a deleted server is drift");
    assert!(what.contains("gone"), "{what}");
}

#[test]
fn what_the_scan_finds_is_repaired_in_place_reading_only_those_servers() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let plans = crate::testing::services(500);
    b.sync_full(&plans, &node()).unwrap();
    let servers = kernel.state().services.len();
    assert!(servers >= 500);
    // Someone deletes one server, adds a stray one with kproxy's mark, and deletes a
    // destination of a server the next scan's rotation checks.
    let (gone, checked) = {
        let mut s = kernel.state();
        let gone = *s.services.keys().nth(300).unwrap();
        s.services.remove(&gone);
        let (vs, _) = s.services.values().next().unwrap().clone();
        let stray = key("10.96.250.250", Protocol::Tcp, 80);
        s.services.insert(
            stray,
            (VirtualServer { key: stray, ..vs }, Default::default()),
        );
        let (checked, (_, dests)) = s
            .services
            .iter_mut()
            .find(|(_, (_, d))| !d.is_empty())
            .unwrap();
        let first = *dests.keys().next().unwrap();
        dests.remove(&first);
        (gone, *checked)
    };
    b.scan_due();
    let what = b.drift().unwrap().expect("all three are drift");
    assert!(what.contains("1 of kproxy's"), "{what}");
    assert!(what.contains("10.96.250.250:80"), "{what}");
    assert!(what.contains(&show(&checked)), "{what}");
    let (reads, messages) = {
        let s = kernel.state();
        (s.dest_reads, s.ipvs_messages)
    };
    b.sync_full(&plans, &node()).unwrap();
    let s = kernel.state();
    assert!(
        s.dest_reads - reads <= 3,
        "only the servers concerned are read: {} reads",
        s.dest_reads - reads
    );
    assert!(s.ipvs_messages - messages < 30, "a handful of messages");
    assert!(s.services.contains_key(&gone));
    drop(s);
    assert_eq!(
        programmed(&kernel),
        fresh(&plans),
        "exactly a fresh kproxy's"
    );
    b.scan_due();
    assert_eq!(b.drift().unwrap(), None, "repaired");
}

#[test]
fn a_repair_in_place_also_applies_what_the_plans_changed_meanwhile() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&with_web(&["10.0.0.1", "10.0.0.2"]), &node())
        .unwrap();
    let last = *kernel.state().services.keys().next_back().unwrap();
    kernel.state().services.remove(&last);
    b.scan_due();
    assert!(b.drift().unwrap().is_some());
    let moved = with_web(&["10.0.0.3"]);
    b.sync_full(&moved, &node()).unwrap();
    // What the same move does with nothing deleted: the old destinations drain at weight 0.
    let undisturbed = FakeKernel::default();
    let mut u = backend(&undisturbed);
    u.sync_full(&with_web(&["10.0.0.1", "10.0.0.2"]), &node())
        .unwrap();
    u.sync_partial(&moved, &changed(), &node()).unwrap();
    assert_eq!(programmed(&kernel), programmed(&undisturbed));
}

fn show(k: &ServiceKey) -> String {
    format!("{}:{}", k.addr, k.port)
}

#[test]
fn every_server_removed_is_seen_by_the_first_check_and_a_mass_repair_re_adopts() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let plans = crate::testing::services(1500);
    b.sync_full(&plans, &node()).unwrap();
    kernel.state().services.clear();
    // No scan_due: the first server is the probe's canary, and its absence scans at once.
    let what = b.drift().unwrap().expect("ipvsadm -C is drift");
    assert!(what.contains("virtual servers are gone"), "{what}");
    let gets = kernel.state().ipvs_messages;
    b.sync_full(&plans, &node()).unwrap();
    assert_eq!(programmed(&kernel), fresh(&plans));
    assert!(kernel.state().ipvs_messages > gets);
}

#[test]
fn a_companion_table_someone_deleted_is_rewritten_from_the_mirror_without_reading_ipvs() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let plans = crate::testing::services(300);
    b.sync_full(&plans, &node()).unwrap();
    {
        let mut s = kernel.state();
        s.tables.remove("ip");
        s.elements.retain(|(fam, ..)| *fam != "ip");
    }
    let what = b
        .drift()
        .unwrap()
        .expect("a deleted companion table is drift");
    assert!(what.contains("companion table ip"), "{what}");
    let (reads, messages) = {
        let s = kernel.state();
        (s.dest_reads, s.ipvs_messages)
    };
    b.sync_full(&plans, &node()).unwrap();
    {
        let s = kernel.state();
        assert_eq!(s.dest_reads, reads, "IPVS is not read");
        assert_eq!(s.ipvs_messages, messages, "nor written");
    }
    assert_eq!(programmed(&kernel), fresh(&plans));
    assert_eq!(b.drift().unwrap(), None, "repaired");
}
