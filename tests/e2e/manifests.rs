//! Kubernetes objects for the e2e scenarios, as JSON: a Service builder (`Svc`), an
//! EndpointSlice builder (`Slice`) whose endpoints are the topology's pods, v1 Endpoints, this
//! node's Node, and the atomic file write kproxy's `--manifests` poller needs.
//!
//! Invariants: objects carry the defaults the API server fills in (so they validate as real
//! objects would); a Service selects `app: <name>` unless made selector-less; a slice is named
//! `<service>-v4` / `<service>-v6` and labelled with its Service; an endpoint's `nodeName` is its
//! pod's (`Host::node_name`: pod-c is on node2). Files are written to a temporary name in the
//! same directory and renamed into place, so kproxy never reads half a file.

use std::path::Path;

use serde_json::{Value, json};

use crate::topology::{Host, Node};

/// A Service under construction.
pub struct Svc(Value);

impl Svc {
    /// A ClusterIP Service `default/<name>` of the family of `cluster_ip`, without ports yet.
    pub fn new(name: &str, cluster_ip: &str) -> Svc {
        let family = if cluster_ip.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        };
        Svc(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": "default", "name": name},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": cluster_ip,
                "clusterIPs": [cluster_ip],
                "ipFamilies": [family],
                "ipFamilyPolicy": "SingleStack",
                "selector": {"app": name},
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster",
                "ports": [],
            },
        }))
    }

    /// A headless Service (`clusterIP: None`).
    pub fn headless(name: &str) -> Svc {
        let mut s = Svc::new(name, "None");
        s.0["spec"]["clusterIPs"] = json!(["None"]);
        s
    }

    fn port(mut self, name: &str, protocol: &str, port: u16, target: u16) -> Svc {
        let ports = self.0["spec"]["ports"].as_array_mut().expect("ports");
        ports.push(json!({"name": name, "protocol": protocol, "port": port, "targetPort": target}));
        self
    }

    pub fn tcp(self, name: &str, port: u16, target: u16) -> Svc {
        self.port(name, "TCP", port, target)
    }

    pub fn udp(self, name: &str, port: u16, target: u16) -> Svc {
        self.port(name, "UDP", port, target)
    }

    fn spec(&mut self, field: &str, value: Value) -> &mut Svc {
        self.0["spec"][field] = value;
        self
    }

    /// Type NodePort (unless already LoadBalancer), with `node_port` on the port named `port`.
    pub fn node_port(mut self, port: &str, node_port: u16) -> Svc {
        if self.0["spec"]["type"] == "ClusterIP" {
            self.spec("type", json!("NodePort"));
            self.spec("externalTrafficPolicy", json!("Cluster"));
        }
        let ports = self.0["spec"]["ports"].as_array_mut().expect("ports");
        let p = ports
            .iter_mut()
            .find(|p| p["name"] == port)
            .unwrap_or_else(|| panic!("no port named {port}"));
        p["nodePort"] = json!(node_port);
        self
    }

    /// Type LoadBalancer with `ip` as its (VIP-mode) ingress address.
    pub fn load_balancer(mut self, ip: &str) -> Svc {
        self.spec("type", json!("LoadBalancer"));
        if self.0["spec"]["externalTrafficPolicy"].is_null() {
            self.spec("externalTrafficPolicy", json!("Cluster"));
        }
        self.0["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Svc {
        self.spec("externalIPs", json!(ips));
        self
    }

    /// A second ClusterIP of the other family (`ipFamilyPolicy: RequireDualStack`).
    pub fn dual_stack(mut self, second: &str) -> Svc {
        let first = self.0["spec"]["clusterIP"].clone();
        let families = if second.contains(':') {
            ["IPv4", "IPv6"]
        } else {
            ["IPv6", "IPv4"]
        };
        self.spec("clusterIPs", json!([first, second]));
        self.spec("ipFamilies", json!(families));
        self.spec("ipFamilyPolicy", json!("RequireDualStack"));
        self
    }

    /// `metadata.creationTimestamp` (RFC 3339): of two Services claiming one address and
    /// port, the older keeps it.
    pub fn created(mut self, at: &str) -> Svc {
        self.0["metadata"]["creationTimestamp"] = json!(at);
        self
    }

    pub fn source_ranges(mut self, cidrs: &[&str]) -> Svc {
        self.spec("loadBalancerSourceRanges", json!(cidrs));
        self
    }

    /// externalTrafficPolicy: Local.
    pub fn external_local(mut self) -> Svc {
        self.spec("externalTrafficPolicy", json!("Local"));
        self
    }

    /// internalTrafficPolicy: Local.
    pub fn internal_local(mut self) -> Svc {
        self.spec("internalTrafficPolicy", json!("Local"));
        self
    }

    pub fn health_check_node_port(mut self, port: u16) -> Svc {
        self.spec("healthCheckNodePort", json!(port));
        self
    }

    /// sessionAffinity: ClientIP with the default timeout.
    pub fn client_ip_affinity(mut self) -> Svc {
        self.spec("sessionAffinity", json!("ClientIP"));
        self.spec(
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": 10800}}),
        );
        self
    }

    /// sessionAffinity: ClientIP with `seconds` of timeout.
    pub fn client_ip_affinity_for(mut self, seconds: u32) -> Svc {
        self.spec("sessionAffinity", json!("ClientIP"));
        self.spec(
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": seconds}}),
        );
        self
    }

    /// No selector: endpoints come from a hand-written v1 Endpoints.
    pub fn without_selector(mut self) -> Svc {
        self.0["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("selector");
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Svc {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }
}

impl From<Svc> for Value {
    fn from(s: Svc) -> Value {
        s.0
    }
}

/// An endpoint's conditions.
#[derive(Clone, Copy, Debug)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

pub const READY: Conditions = Conditions {
    ready: true,
    serving: true,
    terminating: false,
};
pub const NOT_READY: Conditions = Conditions {
    ready: false,
    serving: false,
    terminating: false,
};
/// Terminating but still serving (a pod draining gracefully).
pub const DRAINING: Conditions = Conditions {
    ready: false,
    serving: true,
    terminating: true,
};
/// Terminating and no longer serving.
pub const GONE: Conditions = Conditions {
    ready: false,
    serving: false,
    terminating: true,
};

/// An EndpointSlice under construction.
pub struct Slice {
    v6: bool,
    value: Value,
}

impl Slice {
    fn new(service: &str, v6: bool) -> Slice {
        let family = if v6 { "IPv6" } else { "IPv4" };
        Slice {
            v6,
            value: json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "namespace": "default",
                    "name": format!("{service}-{}", if v6 { "v6" } else { "v4" }),
                    "labels": {
                        "kubernetes.io/service-name": service,
                        "endpointslice.kubernetes.io/managed-by":
                            "endpointslice-controller.k8s.io",
                    },
                },
                "addressType": family,
                "endpoints": [],
                "ports": [],
            }),
        }
    }

    /// The IPv4 slice of Service `service`.
    pub fn v4(service: &str) -> Slice {
        Slice::new(service, false)
    }

    /// The IPv6 slice of Service `service`.
    pub fn v6(service: &str) -> Slice {
        Slice::new(service, true)
    }

    fn port(mut self, name: &str, protocol: &str, port: u16) -> Slice {
        let ports = self.value["ports"].as_array_mut().expect("ports");
        ports.push(json!({"name": name, "protocol": protocol, "port": port}));
        self
    }

    pub fn tcp(self, name: &str, port: u16) -> Slice {
        self.port(name, "TCP", port)
    }

    pub fn udp(self, name: &str, port: u16) -> Slice {
        self.port(name, "UDP", port)
    }

    /// Ready endpoints on these pods.
    pub fn ready(self, hosts: &[Host]) -> Slice {
        hosts.iter().fold(self, |s, h| s.endpoint(*h, READY))
    }

    /// An endpoint on pod `host` with `conditions`.
    pub fn endpoint(mut self, host: Host, c: Conditions) -> Slice {
        let ip = if self.v6 { host.v6() } else { host.v4() };
        let endpoints = self.value["endpoints"].as_array_mut().expect("endpoints");
        endpoints.push(json!({
            "addresses": [ip],
            "conditions": {"ready": c.ready, "serving": c.serving, "terminating": c.terminating},
            "nodeName": host.node_name(),
        }));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Slice {
        self.value["metadata"]["labels"][key] = json!(value);
        self
    }
}

impl From<Slice> for Value {
    fn from(s: Slice) -> Value {
        s.value
    }
}

/// A v1 Endpoints `default/<name>`: `hosts` ready on TCP port `http` = `port`.
pub fn endpoints(name: &str, hosts: &[Host], port: u16) -> Value {
    let addresses: Vec<Value> = hosts
        .iter()
        .map(|h| json!({"ip": h.v4(), "nodeName": h.node_name()}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"namespace": "default", "name": name},
        "subsets": [{
            "addresses": addresses,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }],
    })
}

/// This node's Node (`node1`), with both InternalIPs.
pub fn this_node() -> Value {
    this_node_with_pod_cidrs(&["10.244.0.0/16", "fd00:244::/32"])
}

/// `this_node()` with other `spec.podCIDRs`.
pub fn this_node_with_pod_cidrs(cidrs: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node1", "labels": {"kubernetes.io/hostname": "node1",
            "topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": Node.v4()},
            {"type": "InternalIP", "address": Node.v6()},
            {"type": "Hostname", "address": "node1"},
        ]},
    })
}

/// `this_node()` tainted `ToBeDeletedByClusterAutoscaler` (the autoscaler is about to remove
/// it: KEP-3836 draining).
pub fn this_node_draining() -> Value {
    let mut node = this_node();
    node["spec"]["taints"] = json!([{"key": "ToBeDeletedByClusterAutoscaler",
        "value": "1733500000", "effect": "NoSchedule"}]);
    node
}

/// `objects` as one `kind: List` JSON document.
pub fn list(objects: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()
}

/// Writes `dir/name` atomically: a temporary file in the same directory, renamed into place.
pub fn write_atomically(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).expect("write temporary manifest");
    std::fs::rename(&tmp, dir.join(name)).expect("rename manifest into place");
}

/// The ClusterIP of the scenarios' usual Service, `web`.
pub const WEB: &str = "10.96.0.10";

/// Service `web` at `WEB`: port 8080/TCP (`http`) and 5353/UDP (`dns`), the servers' own ports.
/// Its ports being the servers' ports, a connection to `WEB` that is not DNATed reaches `ext`,
/// which owns the Service range, and is answered by it.
pub fn web_service() -> Value {
    use crate::topology::{DNS, HTTP};
    Svc::new("web", WEB)
        .tcp("http", HTTP, HTTP)
        .udp("dns", DNS, DNS)
        .into()
}

/// `web_service()` and its slice, with ready endpoints on `hosts`.
pub fn web(hosts: &[Host]) -> Vec<Value> {
    use crate::topology::{DNS, HTTP};
    let slice = Slice::v4("web")
        .tcp("http", HTTP)
        .udp("dns", DNS)
        .ready(hosts);
    vec![web_service(), slice.into()]
}
