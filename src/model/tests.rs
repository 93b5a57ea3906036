//! Tests of the model's endpoint merge and of change tracking.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::tracker::ChangeTracker;
use super::*;

fn nn(name: &str) -> NamespacedName {
    NamespacedName::new("default", name)
}

fn port_name(svc: &str, port: &str) -> ServicePortName {
    ServicePortName::new(nn(svc), port, Protocol::Tcp)
}

fn service(name: &str, ports: &[(&str, u16)]) -> Service {
    Service {
        name: nn(name),
        has_selector: true,
        origin: None,
        ports: ports
            .iter()
            .map(|(pname, port)| {
                ServicePort::cluster_ip(
                    port_name(name, pname),
                    "10.96.0.10".parse().unwrap(),
                    *port,
                )
            })
            .collect(),
    }
}

fn endpoint(ip: &str, ready: bool) -> SliceEndpoint {
    SliceEndpoint {
        ip: ip.parse().unwrap(),
        ready,
        serving: ready,
        terminating: false,
        place: crate::model::types::Place::intern(crate::model::types::Place {
            node_name: None,
            zone: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }),
    }
}

fn slice(svc: &str, ports: &[(&str, u16)], eps: Vec<SliceEndpoint>) -> Slice {
    Slice {
        service: nn(svc),
        family: IpFamily::V4,
        ports: ports
            .iter()
            .map(|(n, p)| SlicePort {
                name: n.to_string(),
                port: *p,
                protocol: Protocol::Tcp,
            })
            .collect(),
        endpoints: eps,
        trigger_time: None,
    }
}

fn ips(eps: &[Endpoint]) -> Vec<IpAddr> {
    eps.iter().map(|e| e.ip).collect()
}

#[test]
fn endpoints_are_merged_from_every_slice_of_the_service_by_port_name() {
    let mut m = Model::default();
    m.set_service(
        &nn("web"),
        Some(service("web", &[("http", 80), ("metrics", 9090)]).into()),
    );
    m.set_slice(
        &nn("web-a"),
        Some(slice("web", &[("http", 8080)], vec![endpoint("10.0.0.1", true)]).into()),
    );
    m.set_slice(
        &nn("web-b"),
        Some(
            slice(
                "web",
                &[("http", 8080), ("metrics", 9100)],
                vec![endpoint("10.0.0.2", true)],
            )
            .into(),
        ),
    );
    let http = m.endpoints(&port_name("web", "http"));
    assert_eq!(
        ips(&http),
        vec![
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "10.0.0.2".parse().unwrap()
        ]
    );
    assert!(http.iter().all(|e| e.port == 8080));
    let metrics = m.endpoints(&port_name("web", "metrics"));
    assert_eq!(ips(&metrics), vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(metrics[0].port, 9100);
}

#[test]
fn an_address_in_two_slices_is_kept_once_preferring_the_ready_copy() {
    let mut m = Model::default();
    m.set_slice(
        &nn("a"),
        Some(slice("web", &[("", 80)], vec![endpoint("10.0.0.1", false)]).into()),
    );
    m.set_slice(
        &nn("b"),
        Some(slice("web", &[("", 80)], vec![endpoint("10.0.0.1", true)]).into()),
    );
    let eps = m.endpoints(&port_name("web", ""));
    assert_eq!(eps.len(), 1);
    assert!(eps[0].ready);
}

#[test]
fn a_slice_that_moves_to_another_service_leaves_the_first() {
    let mut m = Model::default();
    m.set_slice(
        &nn("s"),
        Some(slice("one", &[("", 80)], vec![endpoint("10.0.0.1", true)]).into()),
    );
    m.set_slice(
        &nn("s"),
        Some(slice("two", &[("", 80)], vec![endpoint("10.0.0.1", true)]).into()),
    );
    assert!(m.endpoints(&port_name("one", "")).is_empty());
    assert_eq!(m.endpoints(&port_name("two", "")).len(), 1);
    assert_eq!(m.slice(&nn("s")).unwrap().service, nn("two"));
}

#[test]
fn a_no_op_service_update_is_dropped() {
    let mut t = ChangeTracker::default();
    assert!(t.update_service(&nn("web"), Some(service("web", &[("http", 80)]).into())));
    t.checkout();
    assert!(!t.update_service(&nn("web"), Some(service("web", &[("http", 80)]).into())));
    assert_eq!(t.pending_service_changes(), 0);
    assert!(t.checkout().changed.is_empty());
}

#[test]
fn a_changed_port_reports_only_that_service_port() {
    let mut t = ChangeTracker::default();
    t.update_service(
        &nn("web"),
        Some(service("web", &[("http", 80), ("https", 443)]).into()),
    );
    assert_eq!(
        t.checkout().changed,
        BTreeSet::from([port_name("web", "http"), port_name("web", "https")])
    );
    t.update_service(
        &nn("web"),
        Some(service("web", &[("http", 8000), ("https", 443)]).into()),
    );
    assert_eq!(t.pending_service_changes(), 1);
    assert_eq!(
        t.checkout().changed,
        BTreeSet::from([port_name("web", "http")])
    );
}

#[test]
fn an_endpoint_change_reports_the_ports_whose_endpoints_changed() {
    let mut t = ChangeTracker::default();
    t.update_service(
        &nn("web"),
        Some(service("web", &[("http", 80), ("metrics", 9090)]).into()),
    );
    t.update_slice(
        &nn("web-a"),
        Some(slice("web", &[("http", 8080)], vec![endpoint("10.0.0.1", true)]).into()),
    );
    t.checkout();
    t.update_slice(
        &nn("web-a"),
        Some(slice("web", &[("http", 8080)], vec![endpoint("10.0.0.2", true)]).into()),
    );
    assert_eq!(t.pending_endpoint_changes(), 1);
    assert_eq!(
        t.checkout().changed,
        BTreeSet::from([port_name("web", "http")])
    );
}

#[test]
fn a_change_undone_before_checkout_reports_nothing() {
    let mut t = ChangeTracker::default();
    t.update_service(&nn("web"), Some(service("web", &[("http", 80)]).into()));
    t.checkout();
    assert!(t.update_service(&nn("web"), Some(service("web", &[("http", 81)]).into())));
    assert!(t.update_service(&nn("web"), Some(service("web", &[("http", 80)]).into())));
    assert!(t.checkout().changed.is_empty());
}

#[test]
fn deleting_a_service_reports_its_ports_and_removes_them() {
    let mut t = ChangeTracker::default();
    t.update_service(&nn("web"), Some(service("web", &[("http", 80)]).into()));
    t.checkout();
    assert!(t.update_service(&nn("web"), None));
    assert_eq!(
        t.checkout().changed,
        BTreeSet::from([port_name("web", "http")])
    );
    assert_eq!(t.model().ports().count(), 0);
    assert!(
        !t.update_service(&nn("web"), None),
        "deleting what is gone is a no-op"
    );
}

#[test]
fn slice_trigger_times_are_collected_with_the_slice_family_until_checkout() {
    let mut t = ChangeTracker::default();
    let mut s = slice("web", &[("", 80)], vec![endpoint("10.0.0.1", true)]);
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    s.trigger_time = Some(when);
    let mut v6 = s.clone();
    v6.family = IpFamily::V6;
    v6.endpoints.clear();
    t.update_slice(&nn("web-a"), Some(s.into()));
    t.update_slice(&nn("web-b"), Some(v6.into()));
    assert_eq!(
        t.checkout().trigger_times,
        vec![(IpFamily::V4, when), (IpFamily::V6, when)]
    );
    assert!(t.checkout().trigger_times.is_empty());
}

#[test]
fn a_node_change_is_reported_once() {
    let mut t = ChangeTracker::default();
    let node = NodeInfo {
        name: "node1".into(),
        zone: Some("a".into()),
        ..Default::default()
    };
    assert!(t.update_node(Some(node.clone())));
    assert!(!t.update_node(Some(node)));
    assert!(t.checkout().node_changed);
    assert!(!t.checkout().node_changed);
}

#[test]
fn a_node_that_only_starts_draining_is_kept_but_replans_nothing() {
    let mut t = ChangeTracker::default();
    let node = NodeInfo {
        name: "node1".into(),
        ..Default::default()
    };
    assert!(t.update_node(Some(node.clone())));
    t.checkout();
    let draining = NodeInfo {
        draining: true,
        ..node
    };
    assert!(!t.update_node(Some(draining)), "no plan reads it");
    assert!(t.node().is_some_and(|n| n.draining), "but it is kept");
    assert!(!t.checkout().node_changed);
}

#[test]
fn service_cidrs_are_the_union_of_every_servicecidr_and_only_real_changes_count() {
    let mut m = Model::default();
    let net = |s: &str| -> ipnet::IpNet { s.parse().unwrap() };
    assert!(m.set_service_cidr("a".into(), Some(vec![net("10.96.0.0/16")])));
    assert!(m.set_service_cidr(
        "b".into(),
        Some(vec![net("10.100.0.0/16"), net("10.96.0.0/16")])
    ));
    assert_eq!(
        m.service_cidrs(),
        [net("10.96.0.0/16"), net("10.100.0.0/16")]
    );
    // `a`'s range is still `b`'s: nothing changes.
    assert!(!m.set_service_cidr("a".into(), None));
    assert!(m.set_service_cidr("b".into(), None));
    assert!(m.service_cidrs().is_empty());
}
