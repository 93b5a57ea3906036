//! Random endpoints for the property tests: EndpointSlice endpoints (ready, serving and
//! terminating conditions, node names, zones and hints, IPv4 and IPv6), free-standing slices
//! (for a Service or none, of any address type, with their own ports), v1 Endpoints (mirrored
//! into slices) and Nodes.
//!
//! Invariants: an endpoint's address is the n-th of its slice's family unless a rare odd one
//! replaces it, so a slice's addresses mostly match its addressType; node names and zones come
//! from the same pools as the Node's, so local and topology-aware endpoints occur.

use proptest::collection::vec;
use proptest::option::{of, weighted};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

use super::pools::{
    NAMES, NODE, ODD_IPS, ODD_NAMES, ODD_PORT_NAMES, ODD_PROTOCOLS, ODD_RANGES, PORT_NAMES,
    PROTOCOLS, TARGETS, number, pick,
};

const EP_V4: [&str; 5] = ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.5.5", "10.0.3.1"];
const EP_V6: [&str; 3] = ["fd10::1", "fd10::2", "fd10::99"];
const ODD_EP: [&str; 8] = [
    "127.0.0.1",
    "0.0.0.0",
    "::ffff:10.0.1.1",
    "::1",
    "fe80::1",
    "10.96.0.1",
    "10.0.1.256",
    "fd10::1",
];
const NODES: [&str; 4] = [NODE, "node-b", "node-c", ""];
const ZONES: [&str; 3] = ["zone-a", "zone-b", ""];

/// An address of an endpoint: the `n`th of its slice's family, or an odd one.
#[derive(Clone, Copy, Debug)]
enum Addr {
    Pool(usize),
    Odd(&'static str),
}

impl Addr {
    fn text(self, v6: bool) -> &'static str {
        match self {
            Addr::Pool(n) if v6 => EP_V6[n % EP_V6.len()],
            Addr::Pool(n) => EP_V4[n % EP_V4.len()],
            Addr::Odd(a) => a,
        }
    }
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        40 => (0..8usize).prop_map(Addr::Pool),
        1 => select(&ODD_EP[..]).prop_map(Addr::Odd),
    ]
}

#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    addresses: Vec<Addr>,
    conditions: Option<(Option<bool>, Option<bool>, Option<bool>)>,
    node: Option<&'static str>,
    zone: Option<&'static str>,
    hints: Option<(Vec<&'static str>, Vec<&'static str>)>,
}

pub(super) fn endpoint() -> impl Strategy<Value = Endpoint> {
    let flag = || of(any::<bool>());
    let hints = (vec(select(&ZONES[..]), 0..2), vec(select(&NODES[..]), 0..2));
    (
        prop_oneof![40 => vec(addr(), 1..2), 1 => vec(addr(), 0..4)],
        weighted(0.4, (flag(), flag(), flag())),
        of(select(&NODES[..])),
        of(select(&ZONES[..])),
        weighted(0.2, hints),
    )
        .prop_map(|(addresses, conditions, node, zone, hints)| Endpoint {
            addresses,
            conditions,
            node,
            zone,
            hints,
        })
}

impl Endpoint {
    fn json(&self, v6: bool) -> Value {
        let addresses: Vec<&str> = self.addresses.iter().map(|a| a.text(v6)).collect();
        let mut o = json!({ "addresses": addresses });
        if let Some((ready, serving, terminating)) = self.conditions {
            let mut c = Map::new();
            let flags = [
                ("ready", ready),
                ("serving", serving),
                ("terminating", terminating),
            ];
            for (k, v) in flags {
                if let Some(v) = v {
                    c.insert(k.into(), json!(v));
                }
            }
            o["conditions"] = Value::Object(c);
        }
        if let Some(n) = self.node {
            o["nodeName"] = json!(n);
        }
        if let Some(z) = self.zone {
            o["zone"] = json!(z);
        }
        if let Some((zones, nodes)) = &self.hints {
            let names =
                |v: &Vec<&str>| -> Vec<Value> { v.iter().map(|n| json!({ "name": n })).collect() };
            o["hints"] = json!({"forZones": names(zones), "forNodes": names(nodes)});
        }
        o
    }
}

/// An EndpointSlice document.
pub(super) fn slice_json(
    meta: Value,
    address_type: &str,
    ports: Vec<Value>,
    endpoints: &[Endpoint],
) -> Value {
    let v6 = address_type == "IPv6";
    let endpoints: Vec<Value> = endpoints.iter().map(|e| e.json(v6)).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// A slice of its own: of a Service that may not exist, with ports that may not match.
#[derive(Clone, Debug)]
pub(super) struct Slice {
    service: Option<&'static str>,
    suffix: u8,
    namespace: Option<&'static str>,
    address_type: &'static str,
    headless_label: bool,
    /// (name override, port, protocol) of each port; the index names it by default.
    ports: Vec<(Option<&'static str>, Option<i64>, Option<&'static str>)>,
    endpoints: Vec<Endpoint>,
}

pub(super) fn slice() -> impl Strategy<Value = Slice> {
    let slice_port = (
        weighted(0.05, select(&ODD_PORT_NAMES[..])),
        prop_oneof![12 => number(&TARGETS).prop_map(Some), 1 => Just(None)],
        of(pick(&PROTOCOLS, &ODD_PROTOCOLS)),
    );
    let address_type = prop_oneof![
        6 => Just("IPv4"),
        3 => Just("IPv6"),
        1 => select(&["FQDN", "IPv5"][..]),
    ];
    (
        weighted(0.9, pick(&NAMES, &ODD_NAMES)),
        2..5u8,
        weighted(0.3, pick(&["default", "kube-system"], &["Default"])),
        address_type,
        weighted(0.03, Just(())),
        vec(slice_port, 0..4),
        vec(endpoint(), 0..5),
    )
        .prop_map(
            |(service, suffix, namespace, ty, headless, ports, endpoints)| Slice {
                service,
                suffix,
                namespace,
                address_type: ty,
                headless_label: headless.is_some(),
                ports,
                endpoints,
            },
        )
}

impl Slice {
    pub(super) fn json(&self) -> Value {
        let owner = self.service.unwrap_or("orphan");
        let mut labels = Map::new();
        if let Some(s) = self.service {
            labels.insert("kubernetes.io/service-name".into(), json!(s));
        }
        if self.headless_label {
            labels.insert("service.kubernetes.io/headless".into(), json!(""));
        }
        let mut meta = json!({"name": format!("{owner}-{}", self.suffix), "labels": labels});
        if let Some(ns) = self.namespace {
            meta["namespace"] = json!(ns);
        }
        let n = self.ports.len();
        let ports: Vec<Value> = (self.ports.iter().enumerate())
            .map(|(i, (name, port, protocol))| {
                let mut o = Map::new();
                if let Some(name) = name.or((n > 1).then_some(PORT_NAMES[i % 3])) {
                    o.insert("name".into(), json!(name));
                }
                if let Some(p) = port {
                    o.insert("port".into(), json!(p));
                }
                if let Some(p) = protocol {
                    o.insert("protocol".into(), json!(p));
                }
                Value::Object(o)
            })
            .collect();
        slice_json(meta, self.address_type, ports, &self.endpoints)
    }
}

#[derive(Clone, Debug)]
pub(super) struct Node {
    name: &'static str,
    zone: Option<&'static str>,
    addresses: Vec<(&'static str, &'static str)>,
    pod_cidrs: Vec<&'static str>,
}

pub(super) fn node() -> impl Strategy<Value = Node> {
    let address = (
        select(&["InternalIP", "ExternalIP", "Hostname"][..]),
        pick(&["192.168.0.2", "fd00::2", "192.168.0.3"], &ODD_IPS),
    );
    (
        pick(&[NODE, "node-b"], &["Node-A", ""]),
        of(select(&ZONES[..])),
        vec(address, 0..3),
        vec(pick(&["10.0.0.0/24", "fd10::/64"], &ODD_RANGES), 0..3),
    )
        .prop_map(|(name, zone, addresses, pod_cidrs)| Node {
            name,
            zone,
            addresses,
            pod_cidrs,
        })
}

impl Node {
    pub(super) fn json(&self) -> Value {
        let mut meta = json!({ "name": self.name });
        if let Some(z) = self.zone {
            meta["labels"] = json!({"topology.kubernetes.io/zone": z});
        }
        let addresses: Vec<Value> = (self.addresses.iter())
            .map(|(t, a)| json!({"type": t, "address": a}))
            .collect();
        let mut spec = json!({});
        if let Some(first) = self.pod_cidrs.first() {
            spec = json!({"podCIDR": first, "podCIDRs": self.pod_cidrs});
        }
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": meta,
            "spec": spec,
            "status": {"addresses": addresses},
        })
    }
}

/// v1 Endpoints of a (selector-less) Service, mirrored into slices.
#[derive(Clone, Debug)]
pub(super) struct Endpoints {
    name: &'static str,
    ready: Vec<Addr>,
    not_ready: Vec<Addr>,
    node: Option<&'static str>,
    ports: Vec<(Option<&'static str>, i64, Option<&'static str>)>,
}

pub(super) fn endpoints() -> impl Strategy<Value = Endpoints> {
    let port = (
        of(select(&PORT_NAMES[..])),
        number(&TARGETS),
        of(select(&PROTOCOLS[..])),
    );
    (
        pick(&NAMES, &ODD_NAMES),
        vec(addr(), 0..3),
        vec(addr(), 0..2),
        of(select(&NODES[..])),
        vec(port, 0..3),
    )
        .prop_map(|(name, ready, not_ready, node, ports)| Endpoints {
            name,
            ready,
            not_ready,
            node,
            ports,
        })
}

impl Endpoints {
    pub(super) fn json(&self) -> Value {
        let address = |a: &Addr| {
            let mut o = json!({ "ip": a.text(false) });
            if let Some(n) = self.node {
                o["nodeName"] = json!(n);
            }
            o
        };
        let ports: Vec<Value> = (self.ports.iter())
            .map(|(name, port, protocol)| {
                let mut o = json!({ "port": port });
                if let Some(n) = name {
                    o["name"] = json!(n);
                }
                if let Some(p) = protocol {
                    o["protocol"] = json!(p);
                }
                o
            })
            .collect();
        let subset = json!({
            "addresses": self.ready.iter().map(address).collect::<Vec<_>>(),
            "notReadyAddresses": self.not_ready.iter().map(address).collect::<Vec<_>>(),
            "ports": ports,
        });
        json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": self.name},
            "subsets": [subset],
        })
    }
}
