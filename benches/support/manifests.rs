//! The generated bench cluster (`support::service` / `support::slice`) as Kubernetes manifests for
//! `kproxy --manifests DIR`: Services and EndpointSlices as JSON `List`s, 100 Services per file,
//! and this node's Node.
//!
//! Invariants: Service i here is the same Service as `support::service(i)` (type, VIP, NodePort,
//! LB IP and source range, affinity) and its slice has the endpoints of `support::slice(i, eps,
//! 0)`; objects carry what the API server would fill in, so kproxy's validation accepts them.
//! Files are written under a temporary name and renamed into place (kproxy never reads half a
//! file). A Service listed in `own_file` gets its slice in a file of its own,
//! `slice-<i>.json`, so a bench can change it without re-parsing the rest.

use std::net::IpAddr;
use std::path::Path;

use serde_json::{Value, json};

fn as_service(change: &kproxy::watch::Change) -> Option<&kproxy::model::Service> {
    match change {
        kproxy::watch::Change::Service(_, Some(s)) => Some(s),
        _ => None,
    }
}

/// Service i as a v1 Service object.
pub fn service(i: u32) -> Value {
    let change = super::service(i);
    let svc = as_service(&change).expect("support::service yields a Service");
    let p = &svc.ports[0];
    let vip = p.cluster_ips[0].to_string();
    let mut port = json!({"name": "http", "protocol": "TCP", "port": p.port, "targetPort": 8080});
    if let Some(np) = p.node_port {
        port["nodePort"] = json!(np);
    }
    let kind = match p.service_type {
        kproxy::model::ServiceType::NodePort => "NodePort",
        kproxy::model::ServiceType::LoadBalancer => "LoadBalancer",
        _ => "ClusterIP",
    };
    let mut spec = json!({
        "type": kind,
        "clusterIP": vip,
        "clusterIPs": [vip],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "selector": {"app": format!("svc-{i}")},
        "sessionAffinity": "None",
        "internalTrafficPolicy": "Cluster",
        "ports": [port],
    });
    if kind != "ClusterIP" {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    if let Some(t) = p.affinity_timeout_seconds {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
    }
    if !p.load_balancer_source_ranges.is_empty() {
        let ranges: Vec<String> = p
            .load_balancer_source_ranges
            .iter()
            .map(|r| r.to_string())
            .collect();
        spec["loadBalancerSourceRanges"] = json!(ranges);
    }
    let ingress: Vec<Value> = p
        .load_balancer_ips
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "default", "name": format!("svc-{i}")},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress}},
    })
}

/// The EndpointSlice of Service i with `endpoints` (address, node name), all ready.
pub fn slice_of(i: u32, endpoints: &[(IpAddr, String)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node)| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "default",
            "name": format!("svc-{i}-abcde"),
            "labels": {
                "kubernetes.io/service-name": format!("svc-{i}"),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    })
}

/// The slice of `support::slice(i, eps, 0)` as an object.
pub fn slice(i: u32, eps: u32) -> Value {
    let endpoints: Vec<(IpAddr, String)> = match super::slice(i, eps, 0) {
        kproxy::watch::Change::Slice(_, Some(s)) => s
            .endpoints
            .iter()
            .map(|e| (e.ip, e.place.node_name.clone().unwrap_or_default()))
            .collect(),
        _ => unreachable!("support::slice yields a slice"),
    };
    slice_of(i, &endpoints)
}

/// This node (`support::NODE`) with InternalIP `address`.
pub fn node(address: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": super::NODE, "labels": {"kubernetes.io/hostname": super::NODE}},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    })
}

/// Writes `value` to `dir/name` atomically (temporary name, then rename).
pub fn write(dir: &Path, name: &str, value: &Value) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(value).expect("JSON")).expect("write manifest");
    std::fs::rename(&tmp, dir.join(name)).expect("rename manifest");
}

/// Writes the cluster of `n` Services × `eps` endpoints and the Node into `dir` (see the module
/// invariants); the Services in `own_file` get no slice here: the caller writes theirs.
pub fn write_cluster(dir: &Path, n: u32, eps: u32, own_file: &[u32], node_address: &str) {
    write(dir, "node.json", &node(node_address));
    for chunk in 0..n.div_ceil(100) {
        let items: Vec<Value> = (chunk * 100..((chunk + 1) * 100).min(n))
            .flat_map(|i| {
                let slice = (!own_file.contains(&i)).then(|| slice(i, eps));
                std::iter::once(service(i)).chain(slice)
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        write(dir, &format!("services-{chunk:04}.json"), &list);
    }
}
