//! The Node's facts as they change (k/k#138183): an InternalIP change moves NodePorts served on
//! `primary` in the next, full, sync without a restart; a deleted Node leaves the last facts in
//! force and the node not eligible; a Node that comes back is followed again. And Services'
//! externalIPs with the AllowServiceExternalIPs gate off.

use std::net::IpAddr;
use std::sync::Arc;

use super::loop_tests::{nn, service_with, spn};
use super::runner::Due;
use super::{Shared, Syncer};
use crate::backends::fake::{Call, FakeBackend};
use crate::health::service::ServiceHealthServers;
use crate::metrics::Metrics;
use crate::model::*;
use crate::node::{NodeFacts, NodePortAddresses};
use crate::watch::{Change, Kind};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(internal_ip: &str, zone: &str) -> Change {
    Change::Node(Some(NodeInfo {
        name: "node1".into(),
        zone: Some(zone.into()),
        internal_ips: vec![ip(internal_ip)],
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        draining: false,
    }))
}

/// A syncer for node1 serving NodePorts on `primary`, with Service `web` (NodePort 30080 and
/// externalIP 192.0.2.7) listed.
fn syncer(edit: impl FnOnce(Syncer) -> Syncer) -> (Syncer, Arc<Shared>, FakeBackend) {
    let fake = FakeBackend::default();
    let shared = Arc::new(Shared::default());
    let mut base = NodeFacts::new("node1");
    base.nodeport_addresses = NodePortAddresses::primary();
    let mut s = edit(
        Syncer::new(
            Box::new(fake.clone()),
            Box::new(crate::conntrack::Noop),
            base,
            Arc::new(Metrics::new()),
            shared.clone(),
            ServiceHealthServers::default(),
        )
        .with_fixed_addresses(),
    );
    let mut sp = ServicePort::cluster_ip(spn("web"), ip("10.96.0.10"), 80);
    sp.service_type = ServiceType::NodePort;
    sp.node_port = Some(30080);
    sp.external_ips = vec![ip("192.0.2.7")];
    s.apply(service_with("web", sp));
    s.apply(Change::Listed(Kind::Services));
    s.apply(Change::Listed(Kind::EndpointSlices));
    (s, shared, fake)
}

fn nodeport_ips(shared: &Shared) -> Vec<IpAddr> {
    shared.node.read().unwrap().nodeport_ips.clone()
}

#[tokio::test]
async fn a_changed_internal_ip_moves_primary_node_ports_in_a_full_sync() {
    let (mut s, shared, fake) = syncer(|s| s);
    s.apply(node("192.168.50.1", "zone-a"));
    s.sync(Due::Full).await;
    assert_eq!(nodeport_ips(&shared), [ip("192.168.50.1")]);

    assert!(s.apply(node("192.168.50.3", "zone-a")), "a fact changed");
    // Due partial, made full by the Node's change.
    s.sync(Due::Partial).await;
    assert_eq!(nodeport_ips(&shared), [ip("192.168.50.3")]);
    assert_eq!(
        fake.calls(),
        [Call::Full { ports: 1 }, Call::Full { ports: 1 }]
    );
}

#[tokio::test]
async fn a_deleted_node_leaves_its_last_facts_in_force_and_the_node_not_eligible() {
    let (mut s, shared, fake) = syncer(|s| s);
    s.apply(node("192.168.50.1", "zone-a"));
    s.sync(Due::Full).await;
    let before = shared.node.read().unwrap().clone();

    assert!(!s.apply(Change::Node(None)), "nothing to replan");
    assert!(!shared.health.node_eligible());
    s.sync(Due::Full).await;
    assert_eq!(
        *shared.node.read().unwrap(),
        before,
        "zone, IPs, podCIDRs kept"
    );
    assert_eq!(fake.calls().len(), 2);
    assert!(matches!(fake.calls()[1], Call::Full { ports: 1 }));

    // Back, with another address: followed again, and eligible.
    assert!(s.apply(node("192.168.50.4", "zone-b")));
    assert!(shared.health.node_eligible());
    s.sync(Due::Partial).await;
    assert_eq!(nodeport_ips(&shared), [ip("192.168.50.4")]);
    assert_eq!(shared.node.read().unwrap().zone.as_deref(), Some("zone-b"));
}

#[tokio::test]
async fn a_node_never_seen_is_no_fact_and_the_node_stays_eligible() {
    let (mut s, shared, _) = syncer(|s| s);
    assert!(!s.apply(Change::Node(None)));
    assert!(shared.health.node_eligible());
    s.sync(Due::Full).await;
    assert!(nodeport_ips(&shared).is_empty(), "primary without a Node");
}

#[tokio::test]
async fn a_node_missing_from_the_sources_list_is_found_false_until_it_appears() {
    let (mut s, shared, _) = syncer(|s| s);
    assert_eq!(shared.node_presence.found(), None, "not listed yet");
    s.apply(Change::Listed(Kind::Nodes));
    assert_eq!(shared.node_presence.found(), Some(false));
    s.apply(node("192.168.50.1", "zone-a"));
    assert_eq!(shared.node_presence.found(), Some(true));
    // A Node sent with the list (as both sources do) is found at once.
    let (mut s, shared, _) = syncer(|s| s);
    s.apply(node("192.168.50.1", "zone-a"));
    s.apply(Change::Listed(Kind::Nodes));
    assert_eq!(shared.node_presence.found(), Some(true));
}

#[tokio::test]
async fn a_dry_run_of_manifests_takes_the_nodes_internal_ips_as_the_hosts_addresses() {
    let all = |s: Syncer| {
        let mut s = s.with_addresses_from_node();
        s.base_node.nodeport_addresses = NodePortAddresses::all();
        s.base_node.local_addresses = vec![ip("192.0.2.2")];
        s
    };
    // Without a Node: the host's.
    let (mut s, shared, _) = syncer(all);
    s.sync(Due::Full).await;
    assert_eq!(nodeport_ips(&shared), [ip("192.0.2.2")]);
    // With one: its InternalIPs, not the host's.
    s.apply(node("10.0.0.11", "zone-a"));
    s.sync(Due::Full).await;
    assert_eq!(nodeport_ips(&shared), [ip("10.0.0.11")]);
    assert_eq!(
        shared.node.read().unwrap().local_addresses,
        [ip("10.0.0.11")]
    );
}

fn external_ips(shared: &Shared) -> Vec<IpAddr> {
    let plans = shared.plans.read().unwrap();
    plans[&spn("web")].plan.families[0].external_ips.clone()
}

#[tokio::test]
async fn external_ips_are_served_unless_the_gate_turns_them_off() {
    let (mut s, shared, _) = syncer(|s| s);
    s.sync(Due::Full).await;
    assert_eq!(external_ips(&shared), [ip("192.0.2.7")]);

    let (mut s, shared, _) = syncer(Syncer::without_external_ips);
    s.sync(Due::Full).await;
    assert!(external_ips(&shared).is_empty());
    let plans = shared.plans.read().unwrap();
    assert_eq!(
        plans[&spn("web")].port.external_ips,
        Vec::<IpAddr>::new(),
        "not claimed either"
    );
    assert_eq!(plans[&spn("web")].port.name.service, nn("web"));
}
