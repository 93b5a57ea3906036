//! Conflict resolution between Services: who wins, who is planned again when that changes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::claims::{Claim, Claims, without};
use crate::model::{
    NamespacedName, Protocol, ServicePort, ServicePortName, ServiceType, TrafficPolicy,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(svc: &str, port: &str) -> ServicePortName {
    ServicePortName::new(NamespacedName::new("default", svc), port, Protocol::Tcp)
}

/// A LoadBalancer port of `svc` at 192.0.2.60:80, created `age` seconds after the epoch.
fn lb(svc: &str, cluster_ip: &str, age: Option<u64>) -> ServicePort {
    let mut p = ServicePort::cluster_ip(name(svc, "http"), ip(cluster_ip), 80);
    p.service_type = ServiceType::LoadBalancer;
    p.load_balancer_ips = vec![ip("192.0.2.60")];
    p.created = age.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    p
}

fn shared() -> Claim {
    Claim::Address {
        ip: ip("192.0.2.60"),
        protocol: Protocol::Tcp,
        port: 80,
    }
}

fn names(n: &ServicePortName) -> BTreeSet<ServicePortName> {
    BTreeSet::from([n.clone()])
}

#[test]
fn the_older_service_keeps_a_shared_address_and_the_newer_gets_it_when_the_older_goes() {
    let mut c = Claims::default();
    let (a, b) = (
        lb("a", "10.96.0.1", Some(200)),
        lb("b", "10.96.0.2", Some(100)),
    );
    assert!(c.update(&a.name, Some(&a)).is_empty());
    // b is older: it takes the address from a, which must be planned again.
    assert_eq!(c.update(&b.name, Some(&b)), names(&a.name));
    let lost = c.lost(&a.name);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].claim, shared());
    assert_eq!(lost[0].winner, b.name.service);
    assert!(c.lost(&b.name).is_empty());
    assert_eq!(c.lost_count(), 1);
    // b goes: a gets the address back.
    assert_eq!(c.update(&b.name, None), names(&a.name));
    assert!(c.lost(&a.name).is_empty());
    assert_eq!(c.lost_count(), 0);
}

#[test]
fn a_service_without_a_creation_time_comes_after_every_dated_one_then_names_decide() {
    let mut c = Claims::default();
    let (undated, dated) = (lb("a", "10.96.0.1", None), lb("z", "10.96.0.2", Some(9)));
    c.update(&undated.name, Some(&undated));
    c.update(&dated.name, Some(&dated));
    assert_eq!(c.lost(&undated.name).len(), 1);
    let mut c = Claims::default();
    let (x, y) = (lb("x", "10.96.0.1", None), lb("y", "10.96.0.2", None));
    c.update(&y.name, Some(&y));
    c.update(&x.name, Some(&x));
    assert_eq!(c.lost(&y.name).len(), 1, "x is first by name");
    assert!(c.lost(&x.name).is_empty());
}

#[test]
fn an_unchanged_port_and_a_port_without_conflicts_affect_nobody() {
    let mut c = Claims::default();
    let (a, b) = (lb("a", "10.96.0.1", Some(1)), lb("b", "10.96.0.2", Some(2)));
    let mut b2 = b.clone();
    b2.load_balancer_ips = vec![ip("192.0.2.61")];
    c.update(&a.name, Some(&a));
    c.update(&b2.name, Some(&b2));
    assert!(c.update(&b2.name, Some(&b2)).is_empty());
    assert_eq!(c.lost_count(), 0);
    // b moves onto a's address: b (newer) loses, a is not affected (it keeps winning).
    assert!(c.update(&b.name, Some(&b)).is_empty());
    assert_eq!(c.lost(&b.name).len(), 1);
}

#[test]
fn a_health_check_node_port_is_won_by_a_service_for_all_its_ports() {
    let hc = |svc: &str, port: &str, age: u64| {
        let vip = if svc == "old" {
            "10.96.0.8"
        } else {
            "10.96.0.9"
        };
        let mut p = lb(svc, vip, Some(age));
        p.name = name(svc, port);
        p.load_balancer_ips = vec![];
        p.port = if port == "http" { 80 } else { 443 };
        p.external_traffic_policy = TrafficPolicy::Local;
        p.node_port = Some(if svc == "old" { 30000 } else { 31000 } + p.port);
        p.health_check_node_port = Some(32000);
        p
    };
    let mut c = Claims::default();
    let (o1, o2, n1) = (
        hc("old", "http", 1),
        hc("old", "https", 1),
        hc("new", "http", 2),
    );
    c.update(&o1.name, Some(&o1));
    c.update(&o2.name, Some(&o2));
    c.update(&n1.name, Some(&n1));
    assert!(c.lost(&o1.name).is_empty() && c.lost(&o2.name).is_empty());
    let lost: Vec<Claim> = c.lost(&n1.name).into_iter().map(|l| l.claim).collect();
    assert!(lost.contains(&Claim::HealthCheckNodePort { port: 32000 }));
    // The owner's ports go one by one: `new` wins once the last one is gone.
    assert!(c.update(&o1.name, None).is_empty());
    assert_eq!(c.update(&o2.name, None), names(&n1.name));
    assert!(c.lost(&n1.name).is_empty());
}

#[test]
fn a_port_is_planned_without_what_it_lost() {
    let mut c = Claims::default();
    let (a, mut b) = (lb("a", "10.96.0.1", Some(1)), lb("b", "10.96.0.2", Some(2)));
    b.node_port = Some(30080);
    b.external_ips = vec![ip("192.0.2.7")];
    let mut a2 = a.clone();
    a2.node_port = Some(30080);
    c.update(&a2.name, Some(&a2));
    c.update(&b.name, Some(&b));
    let kept = without(&b, &c.lost(&b.name));
    assert!(kept.load_balancer_ips.is_empty());
    assert_eq!(kept.node_port, None);
    assert_eq!(kept.external_ips, [ip("192.0.2.7")]);
    assert_eq!(kept.cluster_ips, [ip("10.96.0.2")]);
}
