//! Tests of the sync loop with the recording fake backend: gating on initial lists, partial
//! syncs of exactly the changed ports, full resync after failure and on node change, shutdown.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Shared, Syncer, Timing, run};
use crate::backends::fake::{Call, FakeBackend};
use crate::health::service::ServiceHealthServers;
use crate::metrics::Metrics;
use crate::model::*;
use crate::node::NodeFacts;
use crate::watch::{Change, Kind};

pub(super) fn nn(name: &str) -> NamespacedName {
    NamespacedName::new("default", name)
}

pub(super) fn spn(name: &str) -> ServicePortName {
    ServicePortName::new(nn(name), "http", Protocol::Tcp)
}

pub(super) fn service(name: &str, port: u16) -> Change {
    let sp = ServicePort::cluster_ip(spn(name), "10.96.0.10".parse().unwrap(), port);
    service_with(name, sp)
}

/// Service `name` with the one port `sp`, as a source sends it.
pub(super) fn service_with(name: &str, sp: ServicePort) -> Change {
    Change::Service(
        nn(name),
        Some(
            Service {
                name: nn(name),
                ports: vec![sp],
                has_selector: true,
                origin: None,
            }
            .into(),
        ),
    )
}

pub(super) struct Harness {
    pub(super) tx: mpsc::UnboundedSender<Change>,
    pub(super) fake: FakeBackend,
    pub(super) shared: Arc<Shared>,
    pub(super) metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

pub(super) fn start(min_sync: Duration) -> Harness {
    start_with(min_sync, Box::new(crate::conntrack::Noop), Metrics::new())
}

/// A loop whose metrics are `metrics` (a proxy mode, served families); the fake backend
/// claims that mode.
pub(super) fn start_metrics(min_sync: Duration, metrics: Metrics) -> Harness {
    start_with(min_sync, Box::new(crate::conntrack::Noop), metrics)
}

fn start_with(
    min_sync: Duration,
    conntrack: Box<dyn crate::conntrack::Reconciler>,
    metrics: Metrics,
) -> Harness {
    let fake = FakeBackend::default();
    fake.recorded.lock().unwrap().mode = Some(metrics.mode());
    let metrics = Arc::new(metrics);
    let shared = Arc::new(Shared::default());
    let syncer = Syncer::new(
        Box::new(fake.clone()),
        conntrack,
        NodeFacts::new("node1"),
        metrics.clone(),
        shared.clone(),
        ServiceHealthServers::default(),
    )
    .with_fixed_addresses();
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let timing = Timing {
        min_sync_period: min_sync,
        sync_period: Duration::from_secs(30),
    };
    let task = tokio::spawn(run(syncer, rx, timing, async {
        let _ = stopped.await;
    }));
    Harness {
        tx,
        fake,
        shared,
        metrics,
        stop: Some(stop),
        task,
    }
}

impl Harness {
    /// Lets the loop run until it is idle (paused clock: no real time passes).
    pub(super) async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    pub(super) fn listed(&self) {
        self.tx.send(Change::Listed(Kind::Services)).unwrap();
        self.tx.send(Change::Listed(Kind::EndpointSlices)).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn no_sync_runs_before_services_and_slices_are_both_listed() {
    let h = start(Duration::ZERO);
    h.tx.send(service("web", 80)).unwrap();
    h.tx.send(Change::Listed(Kind::Services)).unwrap();
    h.settle().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    h.settle().await;
    assert!(h.fake.calls().is_empty(), "{:?}", h.fake.calls());
    h.tx.send(Change::Listed(Kind::EndpointSlices)).unwrap();
    h.settle().await;
    assert_eq!(h.fake.calls(), vec![Call::Full { ports: 1 }]);
    assert!(h.shared.health.status().0);
}

#[tokio::test(start_paused = true)]
async fn a_partial_sync_carries_exactly_the_changed_service_ports() {
    let h = start(Duration::ZERO);
    h.tx.send(service("web", 80)).unwrap();
    h.tx.send(service("db", 5432)).unwrap();
    h.listed();
    h.settle().await;
    h.tx.send(service("db", 5433)).unwrap();
    h.settle().await;
    assert_eq!(
        h.fake.calls(),
        vec![
            Call::Full { ports: 2 },
            Call::Partial {
                changed: BTreeSet::from([spn("db")])
            }
        ]
    );
    assert_eq!(
        h.fake.recorded.lock().unwrap().state[&spn("db")].port.port,
        5433
    );
    assert_eq!(h.metrics.service_changes_total.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_no_op_update_triggers_no_sync() {
    let h = start(Duration::ZERO);
    h.tx.send(service("web", 80)).unwrap();
    h.listed();
    h.settle().await;
    h.tx.send(service("web", 80)).unwrap();
    h.settle().await;
    assert_eq!(h.fake.calls(), vec![Call::Full { ports: 1 }]);
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_sync_the_retry_is_a_full_resync_with_every_port() {
    let h = start(Duration::ZERO);
    h.tx.send(service("web", 80)).unwrap();
    h.tx.send(service("db", 5432)).unwrap();
    h.listed();
    h.settle().await;
    h.fake.recorded.lock().unwrap().fail_next = 1;
    h.tx.send(service("db", 5433)).unwrap();
    h.settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    h.settle().await;
    assert_eq!(
        h.fake.calls(),
        vec![
            Call::Full { ports: 2 },
            Call::Partial {
                changed: BTreeSet::from([spn("db")])
            },
            Call::Full { ports: 2 },
        ]
    );
    assert_eq!(
        h.fake.recorded.lock().unwrap().state[&spn("db")].port.port,
        5433
    );
    assert_eq!(h.metrics.sync_failures.get(), 1);
    for family in ["IPv4", "IPv6"] {
        assert_eq!(
            (h.metrics.nftables_sync_failures)
                .with_label_values(&[family])
                .get(),
            1,
            "the fake is an nftables backend applying both families at once"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_change_makes_the_next_sync_full() {
    let h = start(Duration::ZERO);
    h.tx.send(service("web", 80)).unwrap();
    h.listed();
    h.settle().await;
    let node = NodeInfo {
        name: "node1".into(),
        zone: Some("zone-a".into()),
        ..Default::default()
    };
    h.tx.send(Change::Node(Some(node))).unwrap();
    h.settle().await;
    assert_eq!(
        h.fake.calls(),
        vec![Call::Full { ports: 1 }, Call::Full { ports: 1 }]
    );
    assert_eq!(
        h.shared.node.read().unwrap().zone.as_deref(),
        Some("zone-a")
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_loop_and_leaves_the_rules_in_place() {
    let mut h = start(Duration::ZERO);
    h.tx.send(service("web", 80)).unwrap();
    h.listed();
    h.settle().await;
    h.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut h.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h.fake.calls(),
        vec![Call::Full { ports: 1 }],
        "no cleanup on shutdown"
    );
    assert_eq!(h.fake.recorded.lock().unwrap().state.len(), 1);
}

/// GET / on 127.0.0.1:port; (status line, body) or None while nothing listens.
pub(super) async fn hc_get(port: u16) -> Option<(String, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((
        head.lines().next()?.to_string(),
        serde_json::from_str(body).ok()?,
    ))
}

#[tokio::test]
async fn a_local_policy_service_gets_a_health_check_server_that_follows_its_local_endpoints() {
    let hc_port = crate::testing::low_port();
    let h = start(Duration::ZERO);
    let mut sp = ServicePort::cluster_ip(spn("web"), "10.96.0.20".parse().unwrap(), 80);
    sp.service_type = ServiceType::LoadBalancer;
    sp.node_port = Some(30080);
    sp.external_traffic_policy = TrafficPolicy::Local;
    sp.health_check_node_port = Some(hc_port);
    let svc = Service {
        name: nn("web"),
        ports: vec![sp],
        has_selector: true,
        origin: None,
    };
    h.tx.send(Change::Service(nn("web"), Some(svc.into())))
        .unwrap();
    let slice = |node: &str| Slice {
        service: nn("web"),
        family: IpFamily::V4,
        ports: vec![SlicePort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        endpoints: vec![SliceEndpoint {
            ip: "10.244.1.5".parse().unwrap(),
            ready: true,
            serving: true,
            terminating: false,
            place: crate::model::types::Place::intern(crate::model::types::Place {
                node_name: Some(node.into()),
                zone: None,
                zone_hints: BTreeSet::new(),
                node_hints: BTreeSet::new(),
            }),
        }],
        trigger_time: None,
    };
    h.tx.send(Change::Slice(nn("web-1"), Some(slice("node1").into())))
        .unwrap();
    h.listed();
    let until = |want: &'static str| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((status, body)) = hc_get(hc_port).await
                && status.contains(want)
            {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {want} on the health check port"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let body = until("200").await;
    assert_eq!(body["localEndpoints"], 1);
    assert_eq!(body["service"]["name"], "web");
    // The endpoint moves to another node: this node has none left.
    h.tx.send(Change::Slice(nn("web-1"), Some(slice("node2").into())))
        .unwrap();
    assert_eq!(until("503").await["localEndpoints"], 0);
}

#[tokio::test(start_paused = true)]
async fn drift_reported_by_the_backend_is_counted_and_repaired_by_a_full_resync() {
    let h = start(Duration::ZERO);
    h.tx.send(service("web", 80)).unwrap();
    h.listed();
    h.settle().await;
    tokio::time::advance(super::DRIFT_CHECK_PERIOD * 3).await;
    h.settle().await;
    assert_eq!(
        h.fake.calls(),
        vec![Call::Full { ports: 1 }],
        "no drift, no sync"
    );
    h.fake.recorded.lock().unwrap().drift = Some("chain services has 0 rules, want 9".into());
    tokio::time::advance(super::DRIFT_CHECK_PERIOD).await;
    h.settle().await;
    assert_eq!(
        h.fake.calls(),
        vec![Call::Full { ports: 1 }, Call::Full { ports: 1 }]
    );
    assert_eq!(h.metrics.drift_repairs.get(), 1);
}

/// Counts reconciliations.
struct Counting(Arc<std::sync::atomic::AtomicUsize>);

impl crate::conntrack::Reconciler for Counting {
    fn reconcile(
        &mut self,
        _plans: &crate::backends::Plans,
        _node: &NodeFacts,
    ) -> Result<usize, crate::conntrack::ConntrackError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(0)
    }
}

#[tokio::test(start_paused = true)]
async fn conntrack_is_reconciled_after_full_syncs_and_udp_changes_but_not_tcp_only_ones() {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = start_with(
        Duration::ZERO,
        Box::new(Counting(count.clone())),
        Metrics::new(),
    );
    let reconciled = || count.load(std::sync::atomic::Ordering::Relaxed);
    h.tx.send(service("web", 80)).unwrap();
    h.listed();
    h.settle().await;
    assert_eq!(reconciled(), 1, "after the first, full sync");
    h.tx.send(service("web", 81)).unwrap();
    h.settle().await;
    assert_eq!(reconciled(), 1, "a TCP-only change needs no reconcile");
    let dns = ServicePort::cluster_ip(
        ServicePortName::new(nn("dns"), "dns", Protocol::Udp),
        "10.96.0.53".parse().unwrap(),
        53,
    );
    h.tx.send(Change::Service(
        nn("dns"),
        Some(
            Service {
                name: nn("dns"),
                ports: vec![dns],
                has_selector: true,
                origin: None,
            }
            .into(),
        ),
    ))
    .unwrap();
    h.settle().await;
    assert_eq!(reconciled(), 2, "a UDP port changed");
    assert_eq!(h.fake.calls().len(), 3, "{:?}", h.fake.calls());
}
