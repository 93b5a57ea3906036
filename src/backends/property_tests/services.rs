//! Random Services for the property tests, each with the EndpointSlices written for it:
//! ClusterIP, NodePort, LoadBalancer, ExternalName and headless; single and dual stack;
//! externalIPs, LoadBalancer ingress, source ranges, ClientIP affinity, traffic policies,
//! TCP, UDP and SCTP ports, named ports and a healthCheckNodePort.
//!
//! Invariants: the ports of one Service get distinct names and numbers, and a nodePort only
//! where the type allows one, unless a rare override says otherwise, so most Services are
//! valid; a Service's own slices repeat its port names and protocols and take the family of
//! its ClusterIPs, so most planned ports have endpoints.

use proptest::collection::vec;
use proptest::option::{of, weighted};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

use super::endpoints::{self, Endpoint};
use super::pools::{
    NAMES, ODD_IPS, ODD_NAMES, ODD_PORT_NAMES, ODD_PROTOCOLS, ODD_RANGES, PORT_NAMES, PROTOCOLS,
    TARGETS, number, pick,
};

const CLUSTER_V4: [&str; 5] = [
    "10.96.0.1",
    "10.96.0.2",
    "10.96.0.3",
    "10.96.0.4",
    "10.96.0.5",
];
const CLUSTER_V6: [&str; 3] = ["fd96::1", "fd96::2", "fd96::3"];
const EXTERNAL: [&str; 5] = [
    "192.0.2.1",
    "2001:db8:e::1",
    "192.0.2.2",
    "10.96.0.1",
    "192.168.0.2",
];
const INGRESS: [&str; 4] = [
    "198.51.100.1",
    "2001:db8:100::1",
    "198.51.100.2",
    "192.0.2.1",
];
const RANGES: [&str; 8] = [
    "203.0.113.0/24",
    "2001:db8:ffff::/48",
    "0.0.0.0/0",
    "::/0",
    "192.0.2.128/25",
    " 198.51.100.0/24 ",
    "10.1.2.3/8",
    "::ffff:0:0/96",
];
const PORTS: [i64; 5] = [80, 443, 53, 8080, 9000];
const NODE_PORTS: [i64; 4] = [30000, 30001, 30002, 32767];

#[derive(Clone, Debug)]
struct Port {
    /// Overrides the name the port's index gives it.
    name: Option<&'static str>,
    protocol: Option<&'static str>,
    /// Overrides the number the Service's offset and the index give it.
    number: Option<i64>,
    node_port: Option<i64>,
}

fn port() -> impl Strategy<Value = Port> {
    (
        weighted(0.03, select(&ODD_PORT_NAMES[..])),
        of(pick(&PROTOCOLS, &ODD_PROTOCOLS)),
        weighted(0.03, number(&PORTS)),
        weighted(0.6, number(&NODE_PORTS)),
    )
        .prop_map(|(name, protocol, number, node_port)| Port {
            name,
            protocol,
            number,
            node_port,
        })
}

/// A slice written for its Service.
#[derive(Clone, Debug)]
struct OwnSlice {
    suffix: u8,
    /// IPv6 when the Service has both families.
    v6: bool,
    target: i64,
    endpoints: Vec<Endpoint>,
}

fn own_slice() -> impl Strategy<Value = OwnSlice> {
    (
        0..3u8,
        any::<bool>(),
        number(&TARGETS),
        vec(endpoints::endpoint(), 0..5),
    )
        .prop_map(|(suffix, v6, target, endpoints)| OwnSlice {
            suffix,
            v6,
            target,
            endpoints,
        })
}

#[derive(Clone, Debug)]
pub(super) struct Service {
    name: &'static str,
    namespace: Option<&'static str>,
    type_: Option<&'static str>,
    cluster_ips: Vec<&'static str>,
    /// 0: `clusterIP` only, 1: `clusterIPs` only, 2: both.
    ips_field: u8,
    ports: Vec<Port>,
    first_port: usize,
    external_ips: Vec<&'static str>,
    ingress: Vec<(Option<&'static str>, Option<&'static str>)>,
    source_ranges: Vec<&'static str>,
    affinity: Option<(&'static str, Option<i64>)>,
    policies: (Option<&'static str>, Option<&'static str>),
    health_check_node_port: Option<i64>,
    selector: bool,
    created: Option<&'static str>,
    proxy_name_label: bool,
    slices: Vec<OwnSlice>,
}

fn cluster_ips() -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        5 => select(&CLUSTER_V4[..]).prop_map(|a| vec![a]),
        2 => select(&CLUSTER_V6[..]).prop_map(|a| vec![a]),
        3 => (select(&CLUSTER_V4[..]), select(&CLUSTER_V6[..])).prop_map(|(a, b)| vec![a, b]),
        1 => (select(&CLUSTER_V6[..]), select(&CLUSTER_V4[..])).prop_map(|(a, b)| vec![a, b]),
        1 => vec(prop_oneof![select(&CLUSTER_V4[..]), select(&ODD_IPS[..])], 0..4),
    ]
}

pub(super) fn service() -> impl Strategy<Value = Service> {
    let head = (
        pick(&NAMES, &ODD_NAMES),
        weighted(0.3, pick(&["default", "kube-system"], &["Default", ""])),
        of(pick(
            &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
            &["Bogus", "clusterip"],
        )),
        cluster_ips(),
        0..3u8,
        vec(port(), 1..4),
        0..PORTS.len(),
    );
    let ingress = (
        of(pick(&INGRESS, &ODD_IPS)),
        weighted(0.2, pick(&["VIP", "Proxy"], &["Bogus"])),
    );
    let external = (
        vec(pick(&EXTERNAL, &ODD_IPS), 0..3),
        vec(ingress, 0..3),
        vec(pick(&RANGES, &ODD_RANGES), 0..3),
    );
    let policy = || of(pick(&["Cluster", "Local"], &["Global", "local", ""]));
    let affinity = (
        pick(&["ClientIP", "None"], &["Sticky"]),
        of(number(&[10800, 1, 86400, 60])),
    );
    let rest = (
        weighted(0.2, affinity),
        (policy(), policy()),
        weighted(0.5, number(&[30100, 30101, 30000])),
        any::<bool>(),
        of(pick(
            &["2024-01-01T00:00:00Z", "2023-06-01T12:00:00Z"],
            &["yesterday", "2024-13-01T00:00:00Z"],
        )),
        weighted(0.03, Just(())),
        vec(own_slice(), 0..3),
    );
    (head, external, rest).prop_map(|(h, e, r)| Service {
        name: h.0,
        namespace: h.1,
        type_: h.2,
        cluster_ips: h.3,
        ips_field: h.4,
        ports: h.5,
        first_port: h.6,
        external_ips: e.0,
        ingress: e.1,
        source_ranges: e.2,
        affinity: r.0,
        policies: r.1,
        health_check_node_port: r.2,
        selector: r.3,
        created: r.4,
        proxy_name_label: r.5.is_some(),
        slices: r.6,
    })
}

impl Service {
    /// The name of port `i`: none for a lone port, else by index.
    fn port_name(&self, i: usize) -> Option<&'static str> {
        let p = &self.ports[i];
        p.name
            .or((self.ports.len() > 1).then_some(PORT_NAMES[i % 3]))
    }

    fn metadata(&self) -> Value {
        let mut meta = json!({"name": self.name});
        if let Some(ns) = self.namespace {
            meta["namespace"] = json!(ns);
        }
        if let Some(t) = self.created {
            meta["creationTimestamp"] = json!(t);
        }
        if self.proxy_name_label {
            meta["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
        }
        meta
    }

    /// The Service's document, then its slices'.
    pub(super) fn json(&self) -> Vec<Value> {
        let mut spec = Map::new();
        let mut put = |k: &str, v: Value| spec.insert(k.to_string(), v);
        if let Some(t) = self.type_ {
            put("type", json!(t));
            if t == "ExternalName" {
                put("externalName", json!("example.com"));
            }
        }
        if self.ips_field != 1
            && let Some(first) = self.cluster_ips.first()
        {
            put("clusterIP", json!(first));
        }
        if self.ips_field != 0 {
            put("clusterIPs", json!(self.cluster_ips));
        }
        // A ClusterIP Service with a nodePort is refused: only the hostile mutations write one.
        let external = matches!(self.type_, Some("NodePort" | "LoadBalancer"));
        let ports: Vec<Value> = (self.ports.iter().enumerate())
            .map(|(i, p)| {
                let number = PORTS[(self.first_port + i) % PORTS.len()];
                let mut o = json!({ "port": p.number.unwrap_or(number) });
                if let Some(name) = self.port_name(i) {
                    o["name"] = json!(name);
                }
                if let Some(proto) = p.protocol {
                    o["protocol"] = json!(proto);
                }
                if let Some(np) = p.node_port.filter(|_| external) {
                    o["nodePort"] = json!(np);
                }
                o
            })
            .collect();
        put("ports", Value::Array(ports));
        if !self.external_ips.is_empty() {
            put("externalIPs", json!(self.external_ips));
        }
        if !self.source_ranges.is_empty() {
            put("loadBalancerSourceRanges", json!(self.source_ranges));
        }
        if let Some((affinity, timeout)) = self.affinity {
            put("sessionAffinity", json!(affinity));
            if let Some(t) = timeout {
                let config = json!({"clientIP": {"timeoutSeconds": t}});
                put("sessionAffinityConfig", config);
            }
        }
        if let Some(p) = self.policies.0 {
            put("externalTrafficPolicy", json!(p));
        }
        if let Some(p) = self.policies.1 {
            put("internalTrafficPolicy", json!(p));
        }
        if let Some(p) = self.health_check_node_port {
            put("healthCheckNodePort", json!(p));
        }
        if self.selector {
            put("selector", json!({"app": self.name}));
        }
        let ingress: Vec<Value> = (self.ingress.iter())
            .map(|(ip, mode)| {
                let mut o = match ip {
                    Some(ip) => json!({ "ip": ip }),
                    None => json!({"hostname": "lb.example.com"}),
                };
                if let Some(m) = mode {
                    o["ipMode"] = json!(m);
                }
                o
            })
            .collect();
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(),
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        });
        let slices = self.slices.iter().map(|s| self.slice_json(s));
        std::iter::once(service).chain(slices).collect()
    }

    fn slice_json(&self, s: &OwnSlice) -> Value {
        let has = |v6: bool| self.cluster_ips.iter().any(|a| a.contains(':') == v6);
        let v6 = if has(true) && has(false) {
            s.v6
        } else {
            has(true)
        };
        let ports: Vec<Value> = (0..self.ports.len())
            .map(|i| {
                let mut o = json!({ "port": s.target.saturating_add(i as i64) });
                if let Some(name) = self.port_name(i) {
                    o["name"] = json!(name);
                }
                if let Some(proto) = self.ports[i].protocol {
                    o["protocol"] = json!(proto);
                }
                o
            })
            .collect();
        let mut meta = json!({
            "name": format!("{}-{}", self.name, s.suffix),
            "labels": {"kubernetes.io/service-name": self.name},
        });
        if let Some(ns) = self.namespace {
            meta["namespace"] = json!(ns);
        }
        endpoints::slice_json(meta, if v6 { "IPv6" } else { "IPv4" }, ports, &s.endpoints)
    }
}
