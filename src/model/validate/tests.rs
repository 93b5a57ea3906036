//! Tests of validation: what the API server would accept becomes model values with upstream's
//! defaults, what it would refuse is rejected with the right reason, and ignored objects are
//! `Ok(None)`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use ipnet::IpNet;

use super::*;
use crate::model::Protocol;

fn svc(yaml: &str) -> K8sService {
    serde_yaml_ng::from_str(yaml).expect("test Service YAML")
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml_ng::from_str(yaml).expect("test EndpointSlice YAML")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A ClusterIP Service `default/web` with `spec_extra` appended to its spec (indented 2).
fn web(spec_extra: &str) -> K8sService {
    svc(&format!(
        "metadata: {{name: web, namespace: default}}\n\
         spec:\n  clusterIP: 10.96.0.10\n{spec_extra}"
    ))
}

fn valid_service(s: &K8sService) -> Service {
    service(s).expect("valid").expect("not ignored")
}

fn rejected(s: &K8sService) -> RejectReason {
    service(s).expect_err("rejected").reason
}

#[test]
fn every_reject_reason_has_its_own_label() {
    let labels: HashSet<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), RejectReason::ALL.len());
}

#[test]
fn a_minimal_service_gets_upstreams_defaults() {
    let s = valid_service(&web("  ports: [{port: 80}]\n"));
    assert_eq!(s.name, NamespacedName::new("default", "web"));
    assert!(!s.has_selector);
    let [p] = &s.ports[..] else {
        panic!("one port expected: {:?}", s.ports)
    };
    assert_eq!(p.name.port, "");
    assert_eq!(p.name.protocol, Protocol::Tcp);
    assert_eq!(p.service_type, ServiceType::ClusterIP);
    assert_eq!(p.cluster_ips, vec![ip("10.96.0.10")]);
    assert_eq!(p.port, 80);
    assert_eq!(p.node_port, None);
    assert_eq!(p.affinity_timeout_seconds, None);
    assert_eq!(p.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(p.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(p.health_check_node_port, None);
    assert_eq!(p.traffic_distribution, None);
}

#[test]
fn each_service_port_becomes_its_own_model_port() {
    let s = valid_service(&web(
        "  selector: {app: web}\n  trafficDistribution: PreferClose\n  ports:\n\
         \x20 - {name: http, port: 80}\n\
         \x20 - {name: dns, port: 53, protocol: UDP}\n\
         \x20 - {name: assoc, port: 9000, protocol: SCTP}\n",
    ));
    assert!(s.has_selector);
    let ports: Vec<_> = s
        .ports
        .iter()
        .map(|p| (p.name.port.as_str(), p.name.protocol, p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", Protocol::Tcp, 80),
            ("dns", Protocol::Udp, 53),
            ("assoc", Protocol::Sctp, 9000)
        ]
    );
    assert!(
        s.ports
            .iter()
            .all(|p| p.traffic_distribution.as_deref() == Some("PreferClose"))
    );
}

#[test]
fn headless_external_name_proxy_named_and_unallocated_services_are_ignored() {
    for s in [
        svc("metadata: {name: h, namespace: d}\nspec: {clusterIP: None, ports: [{port: 80}]}"),
        svc("metadata: {name: h, namespace: d}\nspec: {clusterIPs: [None], ports: [{port: 80}]}"),
        svc("metadata: {name: e, namespace: d}\nspec: {type: ExternalName, externalName: a.b}"),
        svc("metadata: {name: u, namespace: d}\nspec: {ports: [{port: 80}]}"),
        svc("metadata: {name: n, namespace: d}"),
        svc(
            "metadata:\n  name: p\n  namespace: d\n  labels: {service.kubernetes.io/service-proxy-name: other}\n\
             spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        ),
    ] {
        assert_eq!(service(&s), Ok(None), "{s:?}");
    }
}

#[test]
fn cluster_ips_come_from_cluster_ips_with_cluster_ip_as_fallback() {
    let dual = svc("metadata: {name: d, namespace: d}\n\
                    spec: {clusterIP: 10.96.0.5, clusterIPs: [10.96.0.5, 'fd00::5'], ports: [{port: 80}]}");
    assert_eq!(
        valid_service(&dual).ports[0].cluster_ips,
        vec![ip("10.96.0.5"), ip("fd00::5")]
    );
    let single = web("  ports: [{port: 80}]\n");
    assert_eq!(
        valid_service(&single).ports[0].cluster_ips,
        vec![ip("10.96.0.10")]
    );
}

#[test]
fn bad_or_inconsistent_cluster_ips_are_rejected() {
    let bad = svc(
        "metadata: {name: d, namespace: d}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
    );
    assert_eq!(rejected(&bad), RejectReason::BadIp);
    let same_family = svc("metadata: {name: d, namespace: d}\n\
                           spec: {clusterIPs: [10.96.0.5, 10.96.0.6], ports: [{port: 80}]}");
    assert_eq!(rejected(&same_family), RejectReason::Invalid);
    let mismatch = svc("metadata: {name: d, namespace: d}\n\
                        spec: {clusterIP: 10.96.0.7, clusterIPs: [10.96.0.5], ports: [{port: 80}]}");
    assert_eq!(rejected(&mismatch), RejectReason::Invalid);
}

#[test]
fn a_service_without_name_or_namespace_is_rejected() {
    for yaml in [
        "metadata: {namespace: d}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        "metadata: {name: x}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        "metadata: {name: Web, namespace: d}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        "metadata: {name: 1web, namespace: d}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
    ] {
        assert_eq!(rejected(&svc(yaml)), RejectReason::MissingName, "{yaml}");
    }
}

#[test]
fn ports_out_of_range_duplicate_or_unnamed_among_several_are_rejected() {
    for extra in [
        "  ports: [{port: 0}]\n",
        "  ports: [{port: 70000}]\n",
        "  type: NodePort\n  ports: [{port: 80, nodePort: 70000}]\n",
        "  ports: [{port: 80, nodePort: 30080}]\n",
        "  ports: [{name: a, port: 80}, {name: a, port: 81}]\n",
        "  ports: [{name: a, port: 80}, {port: 81}]\n",
        "  ports: [{name: a, port: 80}, {name: b, port: 80}]\n",
        "  ports: [{name: A_B, port: 80}]\n",
        "  ports: []\n",
    ] {
        assert_eq!(rejected(&web(extra)), RejectReason::BadPort, "{extra}");
    }
}

#[test]
fn an_unknown_protocol_is_rejected() {
    assert_eq!(
        rejected(&web("  ports: [{port: 80, protocol: tcp}]\n")),
        RejectReason::BadProtocol
    );
    assert_eq!(
        rejected(&web("  ports: [{port: 80, protocol: ICMP}]\n")),
        RejectReason::BadProtocol
    );
}

#[test]
fn node_port_and_external_ips_are_kept() {
    let s = valid_service(&web(
        "  type: NodePort\n  externalIPs: [192.0.2.10]\n  ports: [{port: 80, nodePort: 30080}]\n",
    ));
    let p = &s.ports[0];
    assert_eq!(p.service_type, ServiceType::NodePort);
    assert_eq!(p.node_port, Some(30080));
    assert_eq!(p.external_ips, vec![ip("192.0.2.10")]);
    assert_eq!(
        rejected(&web(
            "  externalIPs: [example.com]\n  ports: [{port: 80}]\n"
        )),
        RejectReason::BadIp
    );
}

#[test]
fn a_load_balancer_takes_its_ingress_ips_and_trimmed_source_ranges() {
    let s = valid_service(&svc("metadata: {name: lb, namespace: d}\n\
         spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.20\n  ports: [{port: 443, nodePort: 30443}]\n\
         \x20 loadBalancerSourceRanges: [' 198.51.100.0/24 ', '203.0.113.7/24']\n\
         status:\n  loadBalancer:\n    ingress:\n\
         \x20     - ip: 203.0.113.10\n\
         \x20     - hostname: lb.example.com\n\
         \x20     - {ip: 203.0.113.11, ipMode: Proxy}\n\
         \x20     - {ip: 203.0.113.12, ipMode: VIP}\n"));
    let p = &s.ports[0];
    assert_eq!(
        p.load_balancer_ips,
        vec![ip("203.0.113.10"), ip("203.0.113.12")]
    );
    let ranges: Vec<String> = p
        .load_balancer_source_ranges
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(ranges, ["198.51.100.0/24", "203.0.113.0/24"]);
}

#[test]
fn a_source_range_that_is_not_a_cidr_is_invalid() {
    let s = web(
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [198.51.100.0]\n  ports: [{port: 80}]\n",
    );
    assert_eq!(rejected(&s), RejectReason::Invalid);
}

#[test]
fn client_ip_affinity_defaults_to_three_hours_and_is_bounded_by_a_day() {
    let default = web("  sessionAffinity: ClientIP\n  ports: [{port: 80}]\n");
    assert_eq!(
        valid_service(&default).ports[0].affinity_timeout_seconds,
        Some(10_800)
    );
    let set = |t: i64| {
        web(&format!(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {t}}}}}\n\
             \x20 ports: [{{port: 80}}]\n"
        ))
    };
    assert_eq!(
        valid_service(&set(60)).ports[0].affinity_timeout_seconds,
        Some(60)
    );
    assert_eq!(
        valid_service(&set(86_400)).ports[0].affinity_timeout_seconds,
        Some(86_400)
    );
    assert_eq!(rejected(&set(0)), RejectReason::Invalid);
    assert_eq!(rejected(&set(86_401)), RejectReason::Invalid);
    assert_eq!(
        rejected(&web("  sessionAffinity: Cookie\n  ports: [{port: 80}]\n")),
        RejectReason::Invalid
    );
}

#[test]
fn traffic_policies_accept_local_cluster_and_the_old_global_spelling() {
    let s = valid_service(&web(
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n\
         \x20 healthCheckNodePort: 32000\n  ports: [{port: 80, nodePort: 30080}]\n",
    ));
    let p = &s.ports[0];
    assert_eq!(p.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(p.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(p.health_check_node_port, Some(32000));
    let global = valid_service(&web(
        "  externalTrafficPolicy: Global\n  ports: [{port: 80}]\n",
    ));
    assert_eq!(
        global.ports[0].external_traffic_policy,
        TrafficPolicy::Cluster
    );
    assert_eq!(
        rejected(&web(
            "  internalTrafficPolicy: Node\n  ports: [{port: 80}]\n"
        )),
        RejectReason::Invalid
    );
}

#[test]
fn a_health_check_node_port_counts_only_for_local_load_balancers() {
    let node_port = web(
        "  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n\
         \x20 ports: [{port: 80, nodePort: 30080}]\n",
    );
    assert_eq!(
        valid_service(&node_port).ports[0].health_check_node_port,
        None
    );
    let out_of_range = web(
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 70000\n\
         \x20 ports: [{port: 80}]\n",
    );
    assert_eq!(rejected(&out_of_range), RejectReason::BadPort);
}

#[test]
fn an_unknown_service_type_is_invalid() {
    assert_eq!(
        rejected(&web("  type: Magic\n  ports: [{port: 80}]\n")),
        RejectReason::Invalid
    );
}

const SLICE_HEAD: &str = "metadata:\n  name: web-abc\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\n";

fn valid_slice(body: &str) -> (NamespacedName, Slice) {
    endpoint_slice(&slice(&format!("{SLICE_HEAD}{body}")))
        .expect("valid")
        .expect("not ignored")
}

fn rejected_slice(body: &str) -> RejectReason {
    endpoint_slice(&slice(&format!("{SLICE_HEAD}{body}")))
        .expect_err("rejected")
        .reason
}

#[test]
fn a_slice_is_keyed_by_its_own_name_and_belongs_to_its_labelled_service() {
    let (key, s) = valid_slice("addressType: IPv4\nendpoints: []\n");
    assert_eq!(key, NamespacedName::new("default", "web-abc"));
    assert_eq!(s.service, NamespacedName::new("default", "web"));
    assert_eq!(s.family, IpFamily::V4);
    assert!(s.ports.is_empty() && s.endpoints.is_empty());
    assert_eq!(s.trigger_time, None);
}

#[test]
fn endpoint_conditions_resolve_as_upstream() {
    let (_, s) = valid_slice(
        "addressType: IPv4\nendpoints:\n\
         - addresses: [10.244.1.1]\n\
         - {addresses: [10.244.1.2], conditions: {ready: false}}\n\
         - {addresses: [10.244.1.3], conditions: {ready: false, serving: true, terminating: true}}\n",
    );
    let conds: Vec<_> = s
        .endpoints
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conds,
        [
            (true, true, false),
            (false, false, false),
            (false, true, true)
        ]
    );
}

#[test]
fn only_the_first_address_of_an_endpoint_is_used_and_topology_is_kept() {
    let (_, s) = valid_slice(
        "addressType: IPv6\nendpoints:\n\
         - addresses: ['fd00:10:244::1', 'fd00:10:244::2']\n\
         \x20 nodeName: node1\n  zone: zone-a\n\
         \x20 hints: {forZones: [{name: zone-a}], forNodes: [{name: node1}]}\n",
    );
    let [e] = &s.endpoints[..] else {
        panic!("one endpoint expected")
    };
    assert_eq!(e.ip, ip("fd00:10:244::1"));
    assert_eq!(e.place.node_name.as_deref(), Some("node1"));
    assert_eq!(e.place.zone.as_deref(), Some("zone-a"));
    assert_eq!(e.place.zone_hints, BTreeSet::from(["zone-a".to_string()]));
    assert_eq!(e.place.node_hints, BTreeSet::from(["node1".to_string()]));
}

#[test]
fn an_address_of_the_wrong_family_or_no_address_is_a_bad_ip() {
    assert_eq!(
        rejected_slice("addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n"),
        RejectReason::BadIp
    );
    assert_eq!(
        rejected_slice("addressType: IPv6\nendpoints: [{addresses: [10.0.0.1]}]\n"),
        RejectReason::BadIp
    );
    assert_eq!(
        rejected_slice("addressType: IPv4\nendpoints: [{addresses: [nope]}]\n"),
        RejectReason::BadIp
    );
    assert_eq!(
        rejected_slice("addressType: IPv4\nendpoints: [{addresses: []}]\n"),
        RejectReason::BadIp
    );
    assert_eq!(
        rejected_slice("addressType: IPX\nendpoints: []\n"),
        RejectReason::Invalid
    );
}

#[test]
fn slice_ports_default_their_name_and_protocol_and_skip_an_unset_port() {
    let (_, s) = valid_slice(
        "addressType: IPv4\nendpoints: []\nports:\n- {port: 8080}\n- {name: dns, port: 53, protocol: UDP}\n- {name: none}\n",
    );
    let ports: Vec<_> = s
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol))
        .collect();
    assert_eq!(
        ports,
        [("", 8080, Protocol::Tcp), ("dns", 53, Protocol::Udp)]
    );
    assert_eq!(
        rejected_slice("addressType: IPv4\nendpoints: []\nports: [{port: 0}]\n"),
        RejectReason::BadPort
    );
    assert_eq!(
        rejected_slice("addressType: IPv4\nendpoints: []\nports: [{port: 80, protocol: HTTP}]\n"),
        RejectReason::BadProtocol
    );
}

#[test]
fn headless_fqdn_and_unowned_slices_are_ignored() {
    for yaml in [
        "metadata:\n  name: a\n  namespace: d\n  labels: {kubernetes.io/service-name: s, service.kubernetes.io/headless: ''}\n\
         addressType: IPv4\nendpoints: []\n",
        "metadata:\n  name: a\n  namespace: d\n  labels: {kubernetes.io/service-name: s}\naddressType: FQDN\nendpoints: []\n",
        "metadata: {name: a, namespace: d}\naddressType: IPv4\nendpoints: []\n",
    ] {
        assert_eq!(endpoint_slice(&slice(yaml)), Ok(None), "{yaml}");
    }
    let nameless = slice("metadata: {namespace: d}\naddressType: IPv4\nendpoints: []\n");
    assert_eq!(
        endpoint_slice(&nameless).map_err(|r| r.reason),
        Err(RejectReason::MissingName)
    );
}

#[test]
fn the_trigger_time_annotation_is_parsed_and_a_bad_one_ignored() {
    let with = |t: &str| {
        slice(&format!(
            "metadata:\n  name: a\n  namespace: d\n  labels: {{kubernetes.io/service-name: s}}\n\
             \x20 annotations: {{endpoints.kubernetes.io/last-change-trigger-time: '{t}'}}\n\
             addressType: IPv4\nendpoints: []\n"
        ))
    };
    let (_, s) = endpoint_slice(&with("2024-01-02T03:04:05Z"))
        .unwrap()
        .unwrap();
    assert_eq!(
        s.trigger_time,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645))
    );
    let (_, s) = endpoint_slice(&with("yesterday")).unwrap().unwrap();
    assert_eq!(s.trigger_time, None);
}

#[test]
fn a_node_yields_its_zone_internal_ips_and_pod_cidrs() {
    let n: Node = serde_yaml_ng::from_str(
        "metadata:\n  name: node1\n  labels: {topology.kubernetes.io/zone: zone-a}\n\
         spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, 'fd00:10:244:1::/64']}\n\
         status:\n  addresses:\n  - {type: Hostname, address: node1}\n  - {type: InternalIP, address: 10.0.0.11}\n\
         \x20 - {type: ExternalIP, address: 192.0.2.11}\n",
    )
    .unwrap();
    let info = node(&n).unwrap();
    assert_eq!(info.name, "node1");
    assert_eq!(info.zone.as_deref(), Some("zone-a"));
    assert_eq!(info.internal_ips, vec![ip("10.0.0.11")]);
    let cidrs: Vec<String> = info.pod_cidrs.iter().map(|c| c.to_string()).collect();
    assert_eq!(cidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
}

#[test]
fn a_node_being_deleted_or_tainted_for_deletion_is_draining_and_other_taints_are_not() {
    let yaml = |extra: &str| -> Node {
        serde_yaml_ng::from_str(&format!("metadata:\n  name: n\n{extra}")).unwrap()
    };
    assert!(!node(&yaml("")).unwrap().draining);
    let tainted = "spec:\n  taints:\n  - {key: ToBeDeletedByClusterAutoscaler, value: '1', effect: NoSchedule}\n";
    assert!(node(&yaml(tainted)).unwrap().draining);
    let other =
        "spec:\n  taints:\n  - {key: node.kubernetes.io/unschedulable, effect: NoSchedule}\n";
    assert!(
        !node(&yaml(other)).unwrap().draining,
        "cordoned is not draining"
    );
    let deleted = "  deletionTimestamp: '2026-12-07T10:00:00Z'\n";
    assert!(node(&yaml(deleted)).unwrap().draining);
}

#[test]
fn a_node_falls_back_to_pod_cidr_and_rejects_a_missing_name_or_bad_ip() {
    let n: Node =
        serde_yaml_ng::from_str("metadata: {name: n}\nspec: {podCIDR: 10.244.2.0/24}").unwrap();
    assert_eq!(
        node(&n).unwrap().pod_cidrs,
        vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
    );
    let nameless: Node = serde_yaml_ng::from_str("metadata: {}").unwrap();
    assert_eq!(
        node(&nameless).map_err(|r| r.reason),
        Err(RejectReason::MissingName)
    );
    let bad: Node = serde_yaml_ng::from_str(
        "metadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: x}]}",
    )
    .unwrap();
    assert_eq!(node(&bad).map_err(|r| r.reason), Err(RejectReason::BadIp));
}

#[test]
fn a_service_key_is_namespace_slash_name_valid_as_the_api_server_checks_a_service() {
    let key = service_key("kube-system/kube-dns").unwrap();
    assert_eq!(
        (key.namespace.as_str(), key.name.as_str()),
        ("kube-system", "kube-dns")
    );
    for bad in [
        "",
        "web",
        "/web",
        "default/",
        "default/web/x",
        "Default/web",
        "default/9web",
    ] {
        assert_eq!(
            service_key(bad).map_err(|r| r.reason),
            Err(RejectReason::MissingName),
            "{bad:?}"
        );
    }
}
