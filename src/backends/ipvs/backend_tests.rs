//! The IPVS backend against the fake kernel: full and partial syncs, adoption by a restarted
//! kproxy, draining, failures and their repair, drift, cleanup.

use std::collections::BTreeSet;

use super::IpvsBackend;
use super::fake_kernel::{FakeKernel, FakeState};
use super::netlink::{DestKey, ServiceKey};
use crate::backends::{Backend, Plans};
use crate::model::{IpFamily, Protocol, ServicePort, ServicePortName};
use crate::testing::{add, cluster_ips, config, ep, external, ip, name, node, services};

fn backend(kernel: &FakeKernel) -> IpvsBackend {
    IpvsBackend::new(&config(), Box::new(kernel.clone()))
        .with_families(vec![IpFamily::V4, IpFamily::V6])
}

fn key(addr: &str, protocol: Protocol, port: u16) -> ServiceKey {
    ServiceKey {
        addr: ip(addr),
        protocol,
        port,
    }
}

fn dest(addr: &str, port: u16) -> DestKey {
    DestKey {
        addr: ip(addr),
        port,
    }
}

fn weights(s: &FakeState, k: &ServiceKey) -> Vec<(String, u32)> {
    s.services[k]
        .1
        .values()
        .map(|d| (format!("{}:{}", d.key.addr, d.key.port), d.weight))
        .collect()
}

/// Makes IPVS count `n` active connections on destination `d` of `k`.
fn set_active(kernel: &FakeKernel, k: &ServiceKey, d: &DestKey, n: u32) {
    let mut s = kernel.state();
    s.services.get_mut(k).unwrap().1.get_mut(d).unwrap().active = n;
}

fn changed(names: &[&ServicePortName]) -> BTreeSet<ServicePortName> {
    names.iter().map(|n| (*n).clone()).collect()
}

fn web() -> ServicePortName {
    name("web", "http", Protocol::Tcp)
}

/// cluster_ips() with web's endpoints replaced by `eps`.
fn with_web_endpoints(eps: &[&str]) -> Plans {
    let mut plans = cluster_ips();
    let port = plans[&web()].port.clone();
    add(
        &mut plans,
        port,
        eps.iter().map(|e| ep(e, 8080, "node-b")).collect(),
    );
    plans
}

#[test]
fn a_full_sync_programs_servers_addresses_sets_and_sysctls() {
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(&external(), &node()).unwrap();
    let s = kernel.state();
    let sticky = key("10.96.1.3", Protocol::Tcp, 1000);
    assert_eq!(s.services[&sticky].0.persistence, Some(10800));
    assert_eq!(s.services[&sticky].0.scheduler, "rr");
    assert_eq!(
        weights(&s, &sticky),
        [("10.0.1.7:1000".into(), 1), ("10.0.2.7:1000".into(), 1)]
    );
    // The LB under eTP=Local uses only the local endpoint; its NodePort too.
    let lb = key("198.51.100.7", Protocol::Tcp, 443);
    assert_eq!(weights(&s, &lb), [("10.0.1.1:8443".into(), 1)]);
    assert!(
        s.services
            .contains_key(&key("192.168.0.2", Protocol::Tcp, 30443))
    );
    let bound: Vec<String> = s.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        bound,
        [
            "10.96.1.1",
            "10.96.1.2",
            "10.96.1.3",
            "192.0.2.10",
            "198.51.100.7"
        ]
    );
    assert!(s.elements.contains(&(
        "ip",
        "firewall-allow",
        "198.51.100.7 . tcp . 443 . 203.0.113.0/24".into()
    )));
    assert_eq!(s.sysctls["net/ipv4/vs/conntrack"], "1");
    assert_eq!(s.sysctls["net/ipv4/vs/conn_reuse_mode"], "0");
    assert!(!s.sysctls.contains_key("net/ipv4/conf/all/arp_ignore"));
}

#[test]
fn a_restarted_kproxy_adopts_the_kernel_state_without_an_ipvs_message() {
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(&external(), &node()).unwrap();
    let (before, services) = {
        let s = kernel.state();
        (s.ipvs_messages, s.services.clone())
    };
    let mut again = backend(&kernel);
    again.sync_full(&external(), &node()).unwrap();
    let s = kernel.state();
    assert_eq!(s.ipvs_messages, before, "no IPVS message on adoption");
    assert_eq!(s.services, services);
    drop(s);
    assert_eq!(again.drift().unwrap(), None);
}

#[test]
fn a_partial_sync_sends_only_the_messages_of_the_changed_port() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let mut plans = services(1000);
    b.sync_full(&plans, &node()).unwrap();
    let before = kernel.state().ipvs_messages;
    let s5 = name("s5", "", Protocol::Tcp);
    let port = plans[&s5].port.clone();
    add(
        &mut plans,
        port,
        vec![ep("10.1.5.0", 80, "node-b"), ep("10.1.5.9", 80, "node-b")],
    );
    let report = b.sync_partial(&plans, &changed(&[&s5]), &node()).unwrap();
    let s = kernel.state();
    // One destination added, two drained (TCP): three messages, no addresses. The new
    // endpoint's hairpin element is added; the removed endpoints' stay, because s255, s505 and
    // s755 use the same endpoint addresses.
    assert_eq!(s.ipvs_messages - before, 3);
    let k = key("10.96.0.6", Protocol::Tcp, 80);
    assert_eq!(
        weights(&s, &k),
        [
            ("10.1.5.0:80".into(), 1),
            ("10.1.5.1:80".into(), 0),
            ("10.1.5.2:80".into(), 0),
            ("10.1.5.9:80".into(), 1)
        ]
    );
    assert_eq!(
        report.operations,
        3 + 1,
        "3 IPVS messages, 1 hairpin element"
    );
}

#[test]
fn a_removed_tcp_endpoint_drains_at_weight_zero_until_it_has_no_connections() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&cluster_ips(), &node()).unwrap();
    let plans = with_web_endpoints(&["10.0.1.1", "10.0.2.1"]);
    b.sync_partial(&plans, &changed(&[&web()]), &node())
        .unwrap();
    let k = key("10.96.0.10", Protocol::Tcp, 80);
    let gone = dest("10.0.3.1", 8080);
    assert_eq!(kernel.state().services[&k].1[&gone].weight, 0);
    assert_eq!(b.draining().collect::<Vec<_>>(), [&(k, gone)]);
    // With a connection left it stays; once none is left, the next check deletes it.
    set_active(&kernel, &k, &gone, 1);
    b.finish_drains().unwrap();
    assert!(kernel.state().services[&k].1.contains_key(&gone));
    set_active(&kernel, &k, &gone, 0);
    b.finish_drains().unwrap();
    assert!(!kernel.state().services[&k].1.contains_key(&gone));
    assert_eq!(b.draining().count(), 0);
    assert!(!b.mirror().servers[&k].dests.contains_key(&gone));
}

#[test]
fn a_draining_endpoint_that_comes_back_gets_its_weight_back() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&cluster_ips(), &node()).unwrap();
    let fewer = with_web_endpoints(&["10.0.1.1"]);
    b.sync_partial(&fewer, &changed(&[&web()]), &node())
        .unwrap();
    b.sync_partial(&cluster_ips(), &changed(&[&web()]), &node())
        .unwrap();
    let k = key("10.96.0.10", Protocol::Tcp, 80);
    assert!(weights(&kernel.state(), &k).iter().all(|(_, w)| *w == 1));
    assert_eq!(b.draining().count(), 0);
}

#[test]
fn a_removed_udp_endpoint_is_deleted_at_once() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let dns = name("dns", "dns", Protocol::Udp);
    let mut plans = cluster_ips();
    let port = plans[&dns].port.clone();
    add(
        &mut plans,
        port.clone(),
        vec![ep("10.0.5.1", 53, "node-b"), ep("10.0.5.2", 53, "node-b")],
    );
    b.sync_full(&plans, &node()).unwrap();
    add(&mut plans, port, vec![ep("10.0.5.1", 53, "node-b")]);
    b.sync_partial(&plans, &changed(&[&dns]), &node()).unwrap();
    let k = key("10.96.0.53", Protocol::Udp, 53);
    assert_eq!(weights(&kernel.state(), &k), [("10.0.5.1:53".into(), 1)]);
    assert_eq!(b.draining().count(), 0);
}

#[test]
fn a_cluster_ip_shared_by_two_ports_stays_bound_until_the_last_port_goes() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let mut plans = external();
    b.sync_full(&plans, &node()).unwrap();
    let (a, bb) = (
        name("sticky", "a", Protocol::Tcp),
        name("sticky", "b", Protocol::Tcp),
    );
    plans.remove(&a);
    b.sync_partial(&plans, &changed(&[&a]), &node()).unwrap();
    assert!(kernel.state().addresses.contains(&ip("10.96.1.3")));
    assert!(
        !kernel
            .state()
            .services
            .contains_key(&key("10.96.1.3", Protocol::Tcp, 1000))
    );
    plans.remove(&bb);
    b.sync_partial(&plans, &changed(&[&bb]), &node()).unwrap();
    let s = kernel.state();
    assert!(!s.addresses.contains(&ip("10.96.1.3")));
    assert!(
        !s.elements
            .iter()
            .any(|(_, _, k)| k.starts_with("10.96.1.3 "))
    );
}

#[test]
fn a_deleted_service_port_removes_its_servers_addresses_and_elements() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    let mut plans = external();
    b.sync_full(&plans, &node()).unwrap();
    let lb = name("lb", "https", Protocol::Tcp);
    plans.remove(&lb);
    b.sync_partial(&plans, &changed(&[&lb]), &node()).unwrap();
    let s = kernel.state();
    assert!(
        !s.services
            .keys()
            .any(|k| k.port == 30443 || k.addr == ip("198.51.100.7"))
    );
    assert!(!s.addresses.contains(&ip("198.51.100.7")));
    assert!(
        !s.elements
            .iter()
            .any(|(_, set, _)| set.starts_with("firewall"))
    );
    drop(s);
    // What is left is exactly what a fresh kproxy would program.
    let fresh = FakeKernel::default();
    backend(&fresh).sync_full(&plans, &node()).unwrap();
    let (s, f) = (kernel.state(), fresh.state());
    assert_eq!(
        (&s.services, &s.addresses, &s.elements),
        (&f.services, &f.addresses, &f.elements)
    );
}

#[test]
fn virtual_servers_that_are_not_kproxys_are_left_alone() {
    let kernel = FakeKernel::default();
    let foreign = key("172.16.0.1", Protocol::Tcp, 80);
    let mut b = backend(&kernel);
    b.sync_full(&cluster_ips(), &node()).unwrap();
    {
        let mut s = kernel.state();
        let vs = super::netlink::VirtualServer {
            key: foreign,
            scheduler: "wlc".into(),
            persistence: None,
            owned: false,
        };
        s.services.insert(foreign, (vs, Default::default()));
    }
    // A stale server of kproxy's (on a bound address) goes; the foreign one stays.
    let mut plans = cluster_ips();
    plans.remove(&web());
    backend(&kernel).sync_full(&plans, &node()).unwrap();
    let s = kernel.state();
    assert!(s.services.contains_key(&foreign));
    assert!(
        !s.services
            .contains_key(&key("10.96.0.10", Protocol::Tcp, 80))
    );
    assert!(!s.addresses.contains(&ip("10.96.0.10")));
}

#[test]
fn a_failed_partial_sync_changes_no_mirror_and_the_full_resync_repairs_it() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&cluster_ips(), &node()).unwrap();
    let before = b.mirror().clone();
    let plans = with_web_endpoints(&["10.0.9.1", "10.0.9.2"]);
    kernel.state().fail_ipvs_after = Some(1);
    assert!(
        b.sync_partial(&plans, &changed(&[&web()]), &node())
            .is_err()
    );
    assert_eq!(b.mirror(), &before);
    b.sync_full(&plans, &node()).unwrap();
    let fresh = FakeKernel::default();
    backend(&fresh).sync_full(&plans, &node()).unwrap();
    let k = key("10.96.0.10", Protocol::Tcp, 80);
    let live: Vec<_> = weights(&kernel.state(), &k)
        .into_iter()
        .filter(|(_, w)| *w > 0)
        .collect();
    assert_eq!(live, weights(&fresh.state(), &k));
}

#[test]
fn flushed_servers_a_missing_table_or_link_are_reported_as_drift() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&cluster_ips(), &node()).unwrap();
    assert_eq!(b.drift().unwrap(), None);
    kernel.state().services.clear();
    assert!(b.drift().unwrap().unwrap().contains("virtual server"));
    b.sync_full(&cluster_ips(), &node()).unwrap();
    kernel.state().tables.remove("ip6");
    assert!(b.drift().unwrap().unwrap().contains("ip6 kproxy-ipvs"));
    b.sync_full(&cluster_ips(), &node()).unwrap();
    kernel.state().delete_link();
    assert!(b.drift().unwrap().unwrap().contains("kproxy-ipvs0"));
    b.sync_full(&cluster_ips(), &node()).unwrap();
    assert_eq!(b.drift().unwrap(), None);
}

#[test]
fn cleanup_removes_kproxys_servers_link_and_tables_only() {
    let kernel = FakeKernel::default();
    let mut b = backend(&kernel);
    b.sync_full(&external(), &node()).unwrap();
    let foreign = key("172.16.0.1", Protocol::Tcp, 80);
    {
        let mut s = kernel.state();
        s.host_addresses.extend([ip("192.168.0.2"), ip("fd00::2")]);
        let vs = super::netlink::VirtualServer {
            key: foreign,
            scheduler: "wlc".into(),
            persistence: None,
            owned: false,
        };
        s.services.insert(foreign, (vs, Default::default()));
    }
    // The plan names kproxy's servers, the interface and the tables, and changes nothing.
    let servers = kernel.state().services.len();
    let plan = b.cleanup_plan().unwrap();
    assert_eq!(kernel.state().services.len(), servers);
    assert!(kernel.state().link);
    let listed: Vec<&String> = plan
        .iter()
        .filter(|l| l.starts_with("IPVS virtual server "))
        .collect();
    assert_eq!(listed.len(), servers - 1, "{plan:?}");
    assert!(!plan.iter().any(|l| l.contains("172.16.0.1")), "{plan:?}");
    assert!(
        plan.iter()
            .any(|l| l.starts_with("interface kproxy-ipvs0 (addresses ")),
        "{plan:?}"
    );
    assert_eq!(
        plan[plan.len() - 2..],
        [
            "nftables table ip kproxy-ipvs",
            "nftables table ip6 kproxy-ipvs"
        ]
    );
    b.cleanup().unwrap();
    let s = kernel.state();
    assert_eq!(s.services.keys().collect::<Vec<_>>(), [&foreign]);
    assert!(!s.link && s.addresses.is_empty());
    assert!(s.tables.is_empty() && s.elements.is_empty());
    drop(s);
    assert_eq!(b.cleanup_plan().unwrap(), Vec::<String>::new());
}

#[test]
fn strict_arp_and_the_scheduler_come_from_the_configuration() {
    let kernel = FakeKernel::default();
    let mut cfg = config();
    cfg.ipvs_strict_arp = true;
    cfg.ipvs_scheduler = "lc".into();
    let mut b = IpvsBackend::new(&cfg, Box::new(kernel.clone())).with_families(vec![IpFamily::V4]);
    let mut plans = Plans::new();
    add(
        &mut plans,
        ServicePort::cluster_ip(web(), ip("10.96.0.10"), 80),
        vec![ep("10.0.1.1", 8080, "node-b")],
    );
    b.sync_full(&plans, &node()).unwrap();
    let s = kernel.state();
    assert_eq!(s.sysctls["net/ipv4/conf/all/arp_ignore"], "1");
    assert_eq!(s.sysctls["net/ipv4/conf/all/arp_announce"], "2");
    assert_eq!(
        s.services[&key("10.96.0.10", Protocol::Tcp, 80)]
            .0
            .scheduler,
        "lc"
    );
}

#[test]
fn connection_timeouts_are_set_once_and_only_when_given() {
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(&cluster_ips(), &node()).unwrap();
    assert!(
        kernel.state().timeouts.is_empty(),
        "the kernel's defaults stay"
    );
    let kernel = FakeKernel::default();
    let mut cfg = config();
    cfg.ipvs_timeouts.tcp_fin = Some(std::time::Duration::from_secs(30));
    let mut b = IpvsBackend::new(&cfg, Box::new(kernel.clone())).with_families(vec![IpFamily::V4]);
    b.sync_full(&cluster_ips(), &node()).unwrap();
    b.sync_full(&cluster_ips(), &node()).unwrap();
    assert_eq!(
        kernel.state().timeouts,
        [super::netlink::CmdAttr::TimeoutTcpFin(30)]
    );
}

#[test]
fn a_streamed_full_sync_builds_the_mirror_that_diffing_every_port_at_once_builds() {
    // 1,000 Services: a cold full sync sends its messages in several batches.
    let plans = services(1000);
    let streamed = FakeKernel::default();
    let mut a = backend(&streamed);
    a.sync_full(&plans, &node()).unwrap();
    let diffed = FakeKernel::default();
    let mut b = backend(&diffed);
    b.sync_full(&Plans::new(), &node()).unwrap();
    let every: BTreeSet<ServicePortName> = plans.keys().cloned().collect();
    b.sync_partial(&plans, &every, &node()).unwrap();
    assert_eq!(a.mirror(), b.mirror());
    let (s, d) = (streamed.state(), diffed.state());
    assert_eq!(
        (&s.services, &s.addresses, &s.elements),
        (&d.services, &d.addresses, &d.elements)
    );
}

#[test]
fn a_cold_start_sends_the_companion_elements_with_their_batches_and_a_restart_in_one_script() {
    let plans = services(1000);
    let kernel = FakeKernel::default();
    backend(&kernel).sync_full(&plans, &node()).unwrap();
    let cold = kernel.state().scripts;
    assert!(cold > 1, "no table was there: one script per batch");
    // The tables are there now: replacing them must never leave an element missing.
    backend(&kernel).sync_full(&plans, &node()).unwrap();
    assert_eq!(kernel.state().scripts, cold + 1);
    let fresh = FakeKernel::default();
    backend(&fresh).sync_full(&plans, &node()).unwrap();
    let (s, f) = (kernel.state(), fresh.state());
    assert_eq!(
        (&s.services, &s.addresses, &s.elements, &s.tables),
        (&f.services, &f.addresses, &f.elements, &f.tables)
    );
}
