//! Kubernetes objects for tests, as JSON, with the defaults the API server would have filled in
//! (so they validate as real objects would).

use serde_json::{Value, json};

/// A ClusterIP Service `ns/name` with one TCP port named `http`.
pub fn service(ns: &str, name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "selector": {"app": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": 8080}],
        },
    })
}

/// An IPv4 EndpointSlice `ns/name` of Service `ns/service`: ready endpoints at `ips`, port
/// `http` = `port`, on node `node1`.
pub fn slice(ns: &str, name: &str, service: &str, ips: &[&str], port: u16) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| {
            json!({"addresses": [ip], "conditions": {"ready": true, "serving": true,
                "terminating": false}, "nodeName": "node1"})
        })
        .collect();
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "namespace": ns,
            "name": name,
            "labels": {"kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": port}],
    })
}

/// A Node with an InternalIP and a zone label.
pub fn node(name: &str, ip: &str) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": "zone-a",
            "kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip},
            {"type": "Hostname", "address": name}]},
    })
}

/// Sets a label on an object.
pub fn with_label(mut obj: Value, key: &str, value: &str) -> Value {
    obj["metadata"]["labels"][key] = json!(value);
    obj
}
