//! Tests of parsing one manifests file: document splitting, Lists, JSON, per-document
//! rejection, namespace defaulting and Endpoints mirroring.

use super::*;
use crate::model::{IpFamily, Protocol};

fn parse(file: &str, text: &str) -> Parsed {
    parse_file(file, text.as_bytes(), "node1")
}

fn service_yaml(name: &str, port: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{clusterIP: 10.96.0.10, selector: {{app: x}}, ports: [{{port: {port}}}]}}\n"
    )
}

fn keys(p: &Parsed) -> Vec<String> {
    p.objects.iter().map(|(k, _)| k.to_string()).collect()
}

fn reasons(p: &Parsed) -> Vec<(usize, Option<usize>, RejectReason)> {
    p.rejected
        .iter()
        .map(|r| (r.document, r.item, r.rejection.reason))
        .collect()
}

#[test]
fn documents_are_split_at_markers_and_blank_documents_dropped() {
    let text = "# leading comment\n---\na: 1\n--- {b: 2}\n...\n# only a comment\n---\n\n---\nc: |\n  ---x\n";
    assert_eq!(
        split_documents(text),
        ["\na: 1\n", " {b: 2}\n", "\nc: |\n  ---x\n"]
    );
    assert_eq!(split_documents("a: 1\n"), ["a: 1\n"]);
    assert!(split_documents("").is_empty());
}

#[test]
fn every_document_of_a_multi_document_file_is_read() {
    let text = format!(
        "{}---\n{}",
        service_yaml("a", "80"),
        service_yaml("b", "81")
    );
    let p = parse("two.yaml", &text);
    assert_eq!(keys(&p), ["Service default/a", "Service default/b"]);
    assert!(p.rejected.is_empty());
}

#[test]
fn each_bad_document_is_rejected_alone_with_its_index_and_reason() {
    let docs = [
        service_yaml("good-0", "80"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n".to_string(),
        service_yaml("wrong-type", "eighty"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: ip, namespace: default}\n\
         spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}\n"
            .to_string(),
        service_yaml("range", "65536"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: proto, namespace: default}\n\
         spec: {clusterIP: 10.96.0.10, ports: [{port: 80, protocol: ICMP}]}\n"
            .to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: default}\n\
         spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n"
            .to_string(),
        "just a string\n".to_string(),
        service_yaml("good-8", "88"),
    ];
    let p = parse("mixed.yaml", &docs.join("---\n"));
    assert_eq!(
        keys(&p),
        ["Service default/good-0", "Service default/good-8"]
    );
    assert_eq!(
        reasons(&p),
        [
            (1, None, RejectReason::Parse),
            (2, None, RejectReason::WrongType),
            (3, None, RejectReason::BadIp),
            (4, None, RejectReason::BadPort),
            (5, None, RejectReason::BadProtocol),
            (6, None, RejectReason::MissingName),
            (7, None, RejectReason::WrongType),
        ]
    );
}

#[test]
fn a_file_that_is_not_text_is_one_parse_rejection() {
    let p = parse_file("bin.yaml", &[0xff, 0xfe, 0x00, 0x9f], "node1");
    assert_eq!(reasons(&p), [(0, None, RejectReason::Parse)]);
}

#[test]
fn list_items_are_read_one_by_one() {
    let text = "apiVersion: v1\nkind: List\nitems:\n\
                - {apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}\n\
                - {apiVersion: v1, kind: Service, metadata: {name: b}, spec: {clusterIP: 10.96.0.2, ports: [{port: 0}]}}\n\
                - {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n\
                - {apiVersion: v1, kind: Service, metadata: {name: d}, spec: {clusterIP: 10.96.0.4, ports: [{port: 80}]}}\n";
    let p = parse("list.yaml", text);
    assert_eq!(keys(&p), ["Service default/a", "Service default/d"]);
    assert_eq!(reasons(&p), [(0, Some(1), RejectReason::BadPort)]);
}

#[test]
fn a_typed_list_lends_its_kind_to_items_without_one() {
    let text = "apiVersion: v1\nkind: ServiceList\nitems:\n\
                - {metadata: {name: a, namespace: x}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}\n";
    assert_eq!(keys(&parse("svcs.yaml", text)), ["Service x/a"]);
}

#[test]
fn a_json_file_is_read_as_json() {
    let json = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "j"},
                   "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}}"#;
    assert_eq!(keys(&parse("svc.json", json)), ["Service default/j"]);
    assert_eq!(
        reasons(&parse("broken.json", "{\"kind\": ")),
        [(0, None, RejectReason::Parse)]
    );
}

#[test]
fn unknown_kinds_are_skipped_without_a_rejection() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
                apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: k}\n";
    let p = parse("other.yaml", text);
    assert!(p.objects.is_empty() && p.rejected.is_empty(), "{p:?}");
}

#[test]
fn a_document_without_kind_or_api_version_is_the_wrong_type() {
    let p = parse(
        "x.yaml",
        "metadata: {name: a}\n---\nkind: Service\nmetadata: {name: b}\n",
    );
    assert_eq!(
        reasons(&p),
        [
            (0, None, RejectReason::WrongType),
            (1, None, RejectReason::WrongType)
        ]
    );
}

#[test]
fn only_this_nodes_node_is_kept() {
    let text = "apiVersion: v1\nkind: Node\nmetadata: {name: node2}\n---\n\
                apiVersion: v1\nkind: Node\nmetadata: {name: node1, labels: {topology.kubernetes.io/zone: z}}\n";
    let p = parse("nodes.yaml", text);
    let [(Key::Node, Object::Node(n))] = &p.objects[..] else {
        panic!("{p:?}")
    };
    assert_eq!((n.name.as_str(), n.zone.as_deref()), ("node1", Some("z")));
}

#[test]
fn yaml_merge_keys_are_applied() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: m}\n\
                spec:\n  <<: {clusterIP: 10.96.0.9}\n  ports: [{port: 80}]\n";
    let p = parse("merge.yaml", text);
    let [
        (
            _,
            Object::Service {
                service: Some(s), ..
            },
        ),
    ] = &p.objects[..]
    else {
        panic!("{p:?}")
    };
    assert_eq!(
        s.ports[0].cluster_ips,
        vec!["10.96.0.9".parse::<std::net::IpAddr>().unwrap()]
    );
}

const ENDPOINTS: &str = "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets:\n\
    - addresses: [{ip: 192.0.2.1, nodeName: node1}, {ip: 'fd00::1'}]\n\
    \x20 notReadyAddresses: [{ip: 192.0.2.2}]\n\
    \x20 ports: [{name: http, port: 8080}]\n\
    - addresses: [{ip: 192.0.2.3}]\n\
    \x20 ports: [{name: dns, port: 53, protocol: UDP}]\n";

#[test]
fn endpoints_mirror_to_one_slice_per_subset_and_family() {
    let p = parse("ep.yaml", ENDPOINTS);
    let [(Key::Endpoints(key), Object::Endpoints(m))] = &p.objects[..] else {
        panic!("{p:?}")
    };
    assert_eq!(key, &NamespacedName::new("default", "ext"));
    assert!(m.enabled);
    let names: Vec<&str> = m.slices.iter().map(|(k, _)| k.name.as_str()).collect();
    assert_eq!(names, ["ext-mirror-0", "ext-mirror-1", "ext-mirror-2"]);
    let (_, v4) = &m.slices[0];
    assert_eq!(v4.service, NamespacedName::new("default", "ext"));
    assert_eq!(v4.family, IpFamily::V4);
    let eps: Vec<_> = v4
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.ready, e.place.node_name.clone()))
        .collect();
    assert_eq!(
        eps,
        [
            ("192.0.2.1".into(), true, Some("node1".into())),
            ("192.0.2.2".into(), false, None)
        ]
    );
    assert_eq!(m.slices[1].1.family, IpFamily::V6);
    assert_eq!(m.slices[2].1.ports[0].protocol, Protocol::Udp);
}

#[test]
fn endpoints_with_skip_mirror_or_a_bad_address_are_not_mirrored() {
    let skip = ENDPOINTS.replace(
        "metadata: {name: ext}",
        "metadata: {name: ext, labels: {endpointslice.kubernetes.io/skip-mirror: 'true'}}",
    );
    let p = parse("ep.yaml", &skip);
    let [(_, Object::Endpoints(m))] = &p.objects[..] else {
        panic!("{p:?}")
    };
    assert!(!m.enabled);
    let bad = ENDPOINTS.replace("192.0.2.3", "192.0.2.256");
    assert_eq!(
        reasons(&parse("ep.yaml", &bad)),
        [(0, None, RejectReason::BadIp)]
    );
}

#[test]
fn json_read_straight_into_objects_gives_what_the_yaml_path_gives_for_the_same_text() {
    // YAML is a superset of JSON: the same text as `.yaml` takes the generic path.
    let cases = [
        // A List whose items name their kind, one of them refused (port 0), one skipped.
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
             "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"},
             "spec": {"clusterIP": "10.96.0.2", "ports": [{"port": 0}]}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "a-1", "labels": {"kubernetes.io/service-name": "a"}},
             "addressType": "IPv4", "ports": [{"port": 8080}],
             "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node1"}]}]}"#,
        // A typed List lends its kind to items without one.
        r#"{"apiVersion": "v1", "kind": "ServiceList", "items": [
            {"metadata": {"name": "d", "namespace": "x"},
             "spec": {"clusterIP": "10.96.0.4", "ports": [{"port": 80}]}}]}"#,
        // The wrong type for a field, a document without a kind, null, this node.
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "e"}, "spec": {"ports": 7}}"#,
        r#"{"metadata": {"name": "f"}}"#,
        "null",
        r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1",
             "labels": {"topology.kubernetes.io/zone": "z1"}}}"#,
        // Items that are not a sequence.
        r#"{"apiVersion": "v1", "kind": "List", "items": {"a": 1}}"#,
    ];
    for text in cases {
        let (json, yaml) = (parse("x.json", text), parse("x.yaml", text));
        assert_eq!(keys(&json), keys(&yaml), "{text}");
        assert_eq!(reasons(&json), reasons(&yaml), "{text}");
        let details = |p: &Parsed| -> Vec<String> {
            p.rejected.iter().map(|r| r.rejection.to_string()).collect()
        };
        assert_eq!(details(&json), details(&yaml), "{text}");
        assert_eq!(format!("{:?}", json.objects), format!("{:?}", yaml.objects));
    }
    assert!(!keys(&parse("x.json", cases[0])).is_empty());
}
