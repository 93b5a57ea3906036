//! The fixtures every backend's tests share: the node, the example plans (ClusterIPs, external
//! traffic, n generated Services), the backend configuration, golden files and `nft -c`.
//!
//! Invariants: compiled for tests only; the node is `node-a` with node address 192.168.0.2 /
//! fd00::2; the same plans drive the golden tests of the three backends.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backends::{BackendConfig, Plans};
use crate::model::plan::{Planned, plan};
use crate::model::{
    Endpoint, NamespacedName, Protocol, ServicePort, ServicePortName, ServiceType, TrafficPolicy,
};
use crate::node::NodeFacts;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn name(svc: &str, port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new(NamespacedName::new("default", svc), port, protocol)
}

pub(crate) fn ep(addr: &str, port: u16, node: &str) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        port,
        ready: true,
        serving: true,
        terminating: false,
        place: crate::model::types::Place::on_node(node),
    }
}

/// `node-a` at 192.168.0.2 and fd00::2, whose pods are 10.0.0.0/16 (--cluster-cidr).
pub(crate) fn node() -> NodeFacts {
    node_with_pods(&["10.0.0.0/16"])
}

/// `node()` with pods (the ClusterCIDR mode's CIDRs) in `cidrs`.
pub(crate) fn node_with_pods(cidrs: &[&str]) -> NodeFacts {
    let mut n = NodeFacts::new("node-a");
    n.local_addresses = vec![ip("192.168.0.2"), ip("fd00::2")];
    n.nodeport_ips = n.local_addresses.clone();
    let cidrs = cidrs.iter().map(|c| c.parse().expect("a CIDR")).collect();
    n.detect_local = crate::node::DetectLocal::ClusterCidr(cidrs);
    n.local_traffic = n.detect_local.resolve(&[]);
    n
}

pub(crate) fn add(plans: &mut Plans, port: ServicePort, endpoints: Vec<Endpoint>) {
    let p = plan(&port, &endpoints, &node());
    plans.insert(
        port.name.clone(),
        Arc::new(Planned {
            port,
            endpoints,
            plan: p,
        }),
    );
}

/// `plans` planned again as the sync loop plans them: through the claims, so of two ports that
/// claim one address and port (or NodePort) only the older (then first by name) has it.
pub(crate) fn claimed(plans: &Plans) -> Plans {
    let mut claims = crate::model::plan::claims::Claims::default();
    for (name, planned) in plans {
        claims.update(name, Some(&planned.port));
    }
    plans
        .iter()
        .map(|(name, p)| {
            let lost = claims.lost(name);
            let plan = crate::model::plan::plan_claimed(&p.port, &p.endpoints, &node(), lost);
            let planned = Planned {
                port: p.port.clone(),
                endpoints: p.endpoints.clone(),
                plan,
            };
            (name.clone(), Arc::new(planned))
        })
        .collect()
}

/// ClusterIPs: three endpoints over TCP, a UDP port without endpoints, an IPv6 Service.
pub(crate) fn cluster_ips() -> Plans {
    let mut plans = Plans::new();
    let eps = vec![
        ep("10.0.1.1", 8080, "node-a"),
        ep("10.0.2.1", 8080, "node-b"),
        ep("10.0.3.1", 8080, "node-c"),
    ];
    add(
        &mut plans,
        ServicePort::cluster_ip(name("web", "http", Protocol::Tcp), ip("10.96.0.10"), 80),
        eps,
    );
    add(
        &mut plans,
        ServicePort::cluster_ip(name("dns", "dns", Protocol::Udp), ip("10.96.0.53"), 53),
        vec![],
    );
    let v6 = vec![ep("fd10::1", 8080, "node-a"), ep("fd10::2", 8080, "node-b")];
    add(
        &mut plans,
        ServicePort::cluster_ip(name("web6", "http", Protocol::Tcp), ip("fd96::10"), 80),
        v6,
    );
    plans
}

/// External traffic: a LoadBalancer with source ranges under eTP=Local (one local endpoint), a
/// NodePort under eTP=Cluster, and a ClientIP-affinity Service with two ports.
pub(crate) fn external() -> Plans {
    let mut plans = Plans::new();
    let eps = vec![
        ep("10.0.1.1", 8443, "node-a"),
        ep("10.0.2.1", 8443, "node-b"),
    ];
    let mut lb = ServicePort::cluster_ip(name("lb", "https", Protocol::Tcp), ip("10.96.1.1"), 443);
    lb.service_type = ServiceType::LoadBalancer;
    lb.node_port = Some(30443);
    lb.load_balancer_ips = vec![ip("198.51.100.7")];
    lb.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    lb.external_traffic_policy = TrafficPolicy::Local;
    add(&mut plans, lb, eps.clone());
    let mut np = ServicePort::cluster_ip(name("np", "", Protocol::Sctp), ip("10.96.1.2"), 9000);
    np.service_type = ServiceType::NodePort;
    np.node_port = Some(30900);
    np.external_ips = vec![ip("192.0.2.10")];
    add(&mut plans, np, vec![ep("10.0.2.5", 9000, "node-b")]);
    for (port, target) in [("a", 1000), ("b", 2000)] {
        let mut s =
            ServicePort::cluster_ip(name("sticky", port, Protocol::Tcp), ip("10.96.1.3"), target);
        s.affinity_timeout_seconds = Some(10800);
        add(
            &mut plans,
            s,
            vec![
                ep("10.0.1.7", target, "node-a"),
                ep("10.0.2.7", target, "node-b"),
            ],
        );
    }
    plans
}

/// `n` ClusterIP Services `s0`.. with three endpoints each on node-b.
pub(crate) fn services(n: u32) -> Plans {
    let mut plans = Plans::new();
    for i in 0..n {
        let vip = IpAddr::from([10, 96, (i / 250) as u8, (i % 250) as u8 + 1]);
        let eps = (0..3)
            .map(|k| ep(&format!("10.1.{}.{k}", i % 250), 80, "node-b"))
            .collect();
        add(
            &mut plans,
            ServicePort::cluster_ip(name(&format!("s{i}"), "", Protocol::Tcp), vip, 80),
            eps,
        );
    }
    plans
}

pub(crate) fn config() -> BackendConfig {
    BackendConfig {
        masquerade_all: false,
        nft_transport: Default::default(),
        localhost_nodeports: false,
        iptables_variant: Default::default(),
        masquerade_bit: None,
        ..Default::default()
    }
}

/// Compares `actual` with the golden file `dir/file` (relative to the crate), or rewrites the
/// file when KPROXY_BLESS=1.
pub(crate) fn golden_in(dir: &str, file: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(file);
    if std::env::var("KPROXY_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from what was compiled:\n{actual}",
        path.display()
    );
}

/// Checks each of `texts` with `nft -c -f`; skips without root or nft (fails under CI=true).
pub(crate) fn nft_accepts(texts: &[String]) {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let Some(nft) = nft.filter(|_| root) else {
        assert!(
            !ci,
            "CI=true but nft is missing or we are not root: cannot check the ruleset"
        );
        eprintln!("skipped: needs nft and root");
        return;
    };
    for text in texts {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let out = std::process::Command::new(nft)
            .arg("-c")
            .arg("-f")
            .arg(file.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nft -c -f refused:\n{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A TCP port below the kernel's ephemeral range (32768-60999 by default) that nothing holds
/// right now: tests that serve on a port they chose take it from here, so another test's
/// `bind(0)` can never be handed the same port between choosing and binding it.
pub(crate) fn low_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 6_000) as u16;
    loop {
        let port = start + NEXT.fetch_add(1, Ordering::Relaxed) % 6_000;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}
