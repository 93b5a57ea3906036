//! Table-driven tests of `plan`, one row per rule, mirroring upstream kube-proxy's
//! `pkg/proxy/topology_test.go` (`TestCategorizeEndpoints`) and the verdicts its proxiers derive.
//!
//! Invariants: the node is always `node-a` in `zone-a`; endpoints default to ready, on `node-b`
//! (remote), port 80, without hints; expectations are written as `ip:port` lists, `reject` or
//! `drop`, so a row reads like the ruleset it stands for.

use std::collections::BTreeSet;

use super::{Plan, Targets, plan};
use crate::model::{
    Endpoint, NamespacedName, Protocol, ServicePort, ServicePortName, ServiceType, TrafficPolicy,
};
use crate::node::NodeFacts;

const NODE: &str = "node-a";
const ZONE: &str = "zone-a";

fn svc() -> ServicePort {
    let name = ServicePortName::new(NamespacedName::new("default", "web"), "http", Protocol::Tcp);
    ServicePort::cluster_ip(name, "10.96.0.10".parse().unwrap(), 80)
}

/// Builders for the service port of a row.
trait Svc {
    fn node_port(self) -> Self;
    fn external_ip(self) -> Self;
    fn load_balancer(self) -> Self;
    fn itp_local(self) -> Self;
    fn etp_local(self) -> Self;
}

impl Svc for ServicePort {
    fn node_port(mut self) -> Self {
        self.service_type = ServiceType::NodePort;
        self.node_port = Some(30080);
        self
    }
    fn external_ip(mut self) -> Self {
        self.external_ips = vec!["192.0.2.10".parse().unwrap()];
        self
    }
    fn load_balancer(mut self) -> Self {
        self.service_type = ServiceType::LoadBalancer;
        self.load_balancer_ips = vec!["198.51.100.7".parse().unwrap()];
        self
    }
    fn itp_local(mut self) -> Self {
        self.internal_traffic_policy = TrafficPolicy::Local;
        self
    }
    fn etp_local(mut self) -> Self {
        self.external_traffic_policy = TrafficPolicy::Local;
        self.health_check_node_port = Some(32000);
        self
    }
}

/// A ready endpoint on another node, port 80, without hints.
fn ep(ip: &str) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port: 80,
        ready: true,
        serving: true,
        terminating: false,
        place: crate::model::types::Place::intern(crate::model::types::Place {
            node_name: Some("node-b".into()),
            zone: None,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }),
    }
}

/// Builders for the endpoints of a row.
trait Ep {
    fn local(self) -> Self;
    fn on(self, node: Option<&str>) -> Self;
    fn port(self, port: u16) -> Self;
    fn not_ready(self) -> Self;
    /// Serving and terminating (and so not ready): the fallback candidate.
    fn terminating(self) -> Self;
    fn terminating_not_serving(self) -> Self;
    fn zones(self, zones: &[&str]) -> Self;
    fn nodes(self, nodes: &[&str]) -> Self;
}

impl Ep for Endpoint {
    fn local(self) -> Self {
        self.on(Some(NODE))
    }
    fn on(mut self, node: Option<&str>) -> Self {
        std::sync::Arc::make_mut(&mut self.place).node_name = node.map(String::from);
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    fn not_ready(mut self) -> Self {
        (self.ready, self.serving, self.terminating) = (false, false, false);
        self
    }
    fn terminating(mut self) -> Self {
        (self.ready, self.serving, self.terminating) = (false, true, true);
        self
    }
    fn terminating_not_serving(mut self) -> Self {
        (self.ready, self.serving, self.terminating) = (false, false, true);
        self
    }
    fn zones(mut self, zones: &[&str]) -> Self {
        std::sync::Arc::make_mut(&mut self.place).zone_hints =
            zones.iter().map(|z| z.to_string()).collect();
        self
    }
    fn nodes(mut self, nodes: &[&str]) -> Self {
        std::sync::Arc::make_mut(&mut self.place).node_hints =
            nodes.iter().map(|n| n.to_string()).collect();
        self
    }
}

struct Row {
    name: &'static str,
    port: ServicePort,
    /// None: the node has no zone label.
    zone: Option<&'static str>,
    endpoints: Vec<Endpoint>,
    /// The plan as `summary` writes it.
    want: &'static str,
}

fn row(name: &'static str, port: ServicePort, endpoints: Vec<Endpoint>, want: &'static str) -> Row {
    Row {
        name,
        port,
        zone: Some(ZONE),
        endpoints,
        want,
    }
}

fn targets(t: &Targets) -> String {
    match t {
        Targets::Reject => "reject".into(),
        Targets::Drop => "drop".into(),
        Targets::Endpoints(eps) => {
            assert!(!eps.is_empty(), "Targets::Endpoints must never be empty");
            let ips: Vec<String> = eps.iter().map(|e| format!("{}:{}", e.ip, e.port)).collect();
            ips.join(" ")
        }
    }
}

/// One line per plan of a single-family port: `int T | ext[+masq] T | short-circuit T | local
/// N`, where T is a list of `ip:port`, `reject` or `drop`, and the `ext` and `short-circuit`
/// parts appear only when set.
fn summary(plan: &Plan) -> String {
    assert_eq!(plan.families.len(), 1, "a single-family port");
    let p = &plan.families[0];
    let mut out = format!("int {}", targets(&p.internal));
    let masq = if p.masquerade_external { "+masq" } else { "" };
    match &p.external {
        Some(t) => out += &format!(" | ext{masq} {}", targets(t)),
        None => out += masq,
    }
    if let Some(t) = &p.external_from_local {
        out += &format!(" | short-circuit {}", targets(t));
    }
    out + &format!(" | local {}", plan.local_endpoints)
}

fn rows() -> Vec<Row> {
    let (a, b, c, d) = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4");
    vec![
        // Readiness and the terminating fallback.
        row(
            "ready endpoints are used, sorted by address whatever the slice order",
            svc(),
            vec![ep("10.0.0.10"), ep(b), ep("10.0.0.9")],
            "int 10.0.0.2:80 10.0.0.9:80 10.0.0.10:80 | local 0",
        ),
        row(
            "endpoints of one address are sorted by port and kept once, the ready copy winning",
            svc(),
            vec![ep(a).port(8080), ep(a).port(80), ep(a).port(80).not_ready()],
            "int 10.0.0.1:80 10.0.0.1:8080 | local 0",
        ),
        row(
            "not-ready endpoints are excluded",
            svc(),
            vec![ep(a).not_ready(), ep(b)],
            "int 10.0.0.2:80 | local 0",
        ),
        row(
            "serving-terminating endpoints are used when no endpoint is ready",
            svc(),
            vec![
                ep(a).terminating().local(),
                ep(b).terminating(),
                ep(c).not_ready(),
            ],
            "int 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        row(
            "terminating endpoints are not used while any endpoint is ready",
            svc(),
            vec![ep(a).terminating(), ep(b)],
            "int 10.0.0.2:80 | local 0",
        ),
        row(
            "topology is ignored by the terminating fallback",
            svc(),
            vec![
                ep(a).terminating().zones(&["zone-b"]),
                ep(b).terminating().zones(&[ZONE]),
            ],
            "int 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        // Reject: nothing usable anywhere.
        row(
            "terminating endpoints that are not serving are never used, so traffic is rejected",
            svc(),
            vec![ep(a).terminating_not_serving()],
            "int reject | local 0",
        ),
        row(
            "a service without endpoints rejects internal and external traffic",
            svc().node_port(),
            vec![],
            "int reject | ext+masq reject | local 0",
        ),
        row(
            "only not-ready endpoints means reject, not drop, even under Local policies",
            svc().node_port().itp_local().etp_local(),
            vec![ep(a).not_ready().local(), ep(b).not_ready()],
            "int reject | ext reject | short-circuit reject | local 0",
        ),
        row(
            "internalTrafficPolicy Local without any endpoints rejects rather than drops",
            svc().itp_local(),
            vec![],
            "int reject | local 0",
        ),
        // Topology: zone hints.
        row(
            "zone hints keep the ready endpoints hinted for this node's zone",
            svc(),
            vec![
                ep(a).zones(&[ZONE]),
                ep(b).zones(&["zone-b"]),
                ep(c).zones(&["zone-c"]),
                ep(d).zones(&[ZONE]),
            ],
            "int 10.0.0.1:80 10.0.0.4:80 | local 0",
        ),
        row(
            "an endpoint hinted for several zones is used if one of them is this zone",
            svc(),
            vec![
                ep(a).zones(&["zone-b", ZONE]),
                ep(b).zones(&["zone-b", "zone-c"]),
                ep(c).zones(&[ZONE]),
            ],
            "int 10.0.0.1:80 10.0.0.3:80 | local 0",
        ),
        row(
            "zone hints are ignored when a ready endpoint has none",
            svc(),
            vec![ep(a).zones(&[ZONE]), ep(b).zones(&["zone-b"]), ep(c)],
            "int 10.0.0.1:80 10.0.0.2:80 10.0.0.3:80 | local 0",
        ),
        row(
            "zone hints are ignored when none is for this node's zone",
            svc(),
            vec![ep(a).zones(&["zone-b"]), ep(b).zones(&["zone-c"])],
            "int 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        Row {
            zone: None,
            ..row(
                "zone hints are ignored when the node has no zone label",
                svc(),
                vec![ep(a).zones(&[ZONE]), ep(b).zones(&["zone-b"])],
                "int 10.0.0.1:80 10.0.0.2:80 | local 0",
            )
        },
        row(
            "a not-ready endpoint hinted for this zone is still excluded",
            svc(),
            vec![
                ep(a).zones(&[ZONE]),
                ep(b).zones(&["zone-b"]),
                ep(c).zones(&[ZONE]).not_ready(),
            ],
            "int 10.0.0.1:80 | local 0",
        ),
        row(
            "zone hints are ignored when only not-ready endpoints are hinted for this zone",
            svc(),
            vec![
                ep(a).zones(&[ZONE]).not_ready(),
                ep(b).zones(&["zone-b"]),
                ep(c).zones(&["zone-c"]),
            ],
            "int 10.0.0.2:80 10.0.0.3:80 | local 0",
        ),
        row(
            "a not-ready endpoint without hints does not disable zone hints",
            svc(),
            vec![
                ep(a).zones(&[ZONE]),
                ep(b).zones(&["zone-b"]),
                ep(c).not_ready(),
            ],
            "int 10.0.0.1:80 | local 0",
        ),
        // Topology: node hints (PreferSameNode; gate PreferSameTrafficDistribution enabled).
        row(
            "node hints keep the ready endpoints hinted for this node",
            svc(),
            vec![
                ep(a).nodes(&[NODE]),
                ep(b).nodes(&["node-b"]),
                ep(c).nodes(&[NODE]),
            ],
            "int 10.0.0.1:80 10.0.0.3:80 | local 0",
        ),
        row(
            "node hints win over zone hints when both apply",
            svc(),
            vec![
                ep(a).nodes(&[NODE]).zones(&[ZONE]),
                ep(b).nodes(&["node-b"]).zones(&[ZONE]),
            ],
            "int 10.0.0.1:80 | local 0",
        ),
        row(
            "node hints are ignored when a ready endpoint has none, and zone hints apply",
            svc(),
            vec![
                ep(a).nodes(&[NODE]).zones(&["zone-b"]),
                ep(b).zones(&[ZONE]),
                ep(c).zones(&[ZONE]),
            ],
            "int 10.0.0.2:80 10.0.0.3:80 | local 0",
        ),
        row(
            "node hints are ignored when none is for this node, and zone hints apply",
            svc(),
            vec![
                ep(a).nodes(&["node-b"]).zones(&[ZONE]),
                ep(b).nodes(&["node-c"]).zones(&["zone-b"]),
            ],
            "int 10.0.0.1:80 | local 0",
        ),
        row(
            "node hints for other nodes and no zone hints mean no topology",
            svc(),
            vec![ep(a).nodes(&["node-b"]), ep(b).nodes(&["node-c"])],
            "int 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        // internalTrafficPolicy Local.
        row(
            "internalTrafficPolicy Local sends ClusterIP traffic to local ready endpoints only",
            svc().itp_local(),
            vec![ep(a).local(), ep(b), ep(c).local().not_ready()],
            "int 10.0.0.1:80 | local 1",
        ),
        row(
            "internalTrafficPolicy Local ignores topology",
            svc().itp_local(),
            vec![
                ep(a).local().zones(&["zone-b"]),
                ep(b).local().zones(&[ZONE]),
                ep(c).zones(&[ZONE]),
            ],
            "int 10.0.0.1:80 10.0.0.2:80 | local 2",
        ),
        row(
            "internalTrafficPolicy Local with only remote endpoints drops ClusterIP traffic",
            svc().itp_local(),
            vec![ep(a), ep(b)],
            "int drop | local 0",
        ),
        row(
            "internalTrafficPolicy Local falls back to local serving-terminating endpoints",
            svc().itp_local(),
            vec![ep(a).local().terminating(), ep(b), ep(c).terminating()],
            "int 10.0.0.1:80 | local 0",
        ),
        row(
            "internalTrafficPolicy Local with only remote terminating endpoints drops",
            svc().itp_local(),
            vec![ep(a).terminating(), ep(b).terminating()],
            "int drop | local 0",
        ),
        // externalTrafficPolicy Local.
        row(
            "externalTrafficPolicy Local sends external traffic to local endpoints only",
            svc().node_port().etp_local(),
            vec![ep(a).local(), ep(b)],
            "int 10.0.0.1:80 10.0.0.2:80 | ext 10.0.0.1:80 \
             | short-circuit 10.0.0.1:80 10.0.0.2:80 | local 1",
        ),
        row(
            "externalTrafficPolicy Local without local endpoints drops external traffic",
            svc().load_balancer().node_port().etp_local(),
            vec![ep(a), ep(b)],
            "int 10.0.0.1:80 10.0.0.2:80 | ext drop \
             | short-circuit 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        row(
            "externalTrafficPolicy Local falls back to local serving-terminating endpoints",
            svc().node_port().etp_local(),
            vec![
                ep(a),
                ep(b).local().not_ready(),
                ep(c).local().terminating(),
                ep(d).terminating(),
            ],
            "int 10.0.0.1:80 | ext 10.0.0.3:80 | short-circuit 10.0.0.1:80 | local 0",
        ),
        row(
            "externalTrafficPolicy Local ignores topology, the short-circuit does not",
            svc().node_port().etp_local(),
            vec![
                ep(a).local().zones(&[ZONE]),
                ep(b).local().zones(&["zone-b"]),
                ep(c).zones(&["zone-c"]),
                ep(d).zones(&[ZONE]),
            ],
            "int 10.0.0.1:80 10.0.0.4:80 | ext 10.0.0.1:80 10.0.0.2:80 \
             | short-circuit 10.0.0.1:80 10.0.0.4:80 | local 2",
        ),
        row(
            "with both policies Local, the short-circuit still reaches every endpoint",
            svc().node_port().itp_local().etp_local(),
            vec![ep(a).local(), ep(b)],
            "int 10.0.0.1:80 | ext 10.0.0.1:80 | short-circuit 10.0.0.1:80 10.0.0.2:80 | local 1",
        ),
        row(
            "with both policies Local and only remote endpoints, only the short-circuit serves",
            svc().external_ip().itp_local().etp_local(),
            vec![ep(a), ep(b)],
            "int drop | ext drop | short-circuit 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        row(
            "with both policies Local, the short-circuit falls back to terminating endpoints",
            svc().node_port().itp_local().etp_local(),
            vec![ep(a).terminating(), ep(b).terminating()],
            "int drop | ext drop | short-circuit 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        row(
            "externalTrafficPolicy Local is ignored without external access",
            svc().etp_local(),
            vec![ep(a), ep(b).local()],
            "int 10.0.0.1:80 10.0.0.2:80 | local 1",
        ),
        // External access and masquerade.
        row(
            "a ClusterIP-only port has no external targets and no masquerade",
            svc(),
            vec![ep(a)],
            "int 10.0.0.1:80 | local 0",
        ),
        row(
            "externalIPs make a port externally accessible, masqueraded under Cluster policy",
            svc().external_ip(),
            vec![ep(a), ep(b)],
            "int 10.0.0.1:80 10.0.0.2:80 | ext+masq 10.0.0.1:80 10.0.0.2:80 | local 0",
        ),
        row(
            "LoadBalancer IPs make a port externally accessible, with topology as for ClusterIPs",
            svc().load_balancer(),
            vec![ep(a).zones(&[ZONE]), ep(b).zones(&["zone-b"])],
            "int 10.0.0.1:80 | ext+masq 10.0.0.1:80 | local 0",
        ),
        row(
            "internalTrafficPolicy Local does not restrict external traffic under Cluster policy",
            svc().node_port().itp_local(),
            vec![ep(a).local(), ep(b)],
            "int 10.0.0.1:80 | ext+masq 10.0.0.1:80 10.0.0.2:80 | local 1",
        ),
        // Locality and the healthCheckNodePort count.
        row(
            "an endpoint is local only when its nodeName is this node",
            svc().itp_local(),
            vec![
                ep(a).on(None),
                ep(b).on(Some("node-b")),
                ep(c).on(Some("node-a2")),
            ],
            "int drop | local 0",
        ),
        row(
            "local endpoints are counted by distinct ready IP",
            svc().node_port().etp_local(),
            vec![
                ep(a).local().port(80),
                ep(a).local().port(81),
                ep(b).local(),
            ],
            "int 10.0.0.1:80 10.0.0.1:81 10.0.0.2:80 | ext 10.0.0.1:80 10.0.0.1:81 10.0.0.2:80 \
             | short-circuit 10.0.0.1:80 10.0.0.1:81 10.0.0.2:80 | local 2",
        ),
        row(
            "local serving-terminating endpoints are not counted even when they serve",
            svc().node_port().etp_local(),
            vec![ep(a).local().terminating(), ep(b)],
            "int 10.0.0.2:80 | ext 10.0.0.1:80 | short-circuit 10.0.0.2:80 | local 0",
        ),
    ]
}

#[test]
fn plan_follows_upstream_traffic_policy_one_row_per_rule() {
    let rows = rows();
    let mut failures = Vec::new();
    for r in &rows {
        let mut node = NodeFacts::new(NODE);
        node.zone = r.zone.map(String::from);
        let got = summary(&plan(&r.port, &r.endpoints, &node));
        if got != r.want {
            failures.push(format!("{}\n   got: {got}\n  want: {}", r.name, r.want));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn plan_does_not_depend_on_endpoint_order() {
    let eps = vec![
        ep("10.0.0.3").local(),
        ep("10.0.0.1").zones(&[ZONE]),
        ep("10.0.0.2").terminating(),
    ];
    let mut reversed = eps.clone();
    reversed.reverse();
    let port = svc().node_port().etp_local();
    let node = NodeFacts::new(NODE);
    assert_eq!(plan(&port, &eps, &node), plan(&port, &reversed, &node));
}
