//! The real kproxy binary against the test API server (`--master`), observed through
//! `/debug/state`, `/metrics` and `/healthz`: initial list, add, modify, delete, a 410 relist that
//! must not disturb what is still there, and the API server going away and coming back.

mod support;

use std::time::{Duration, Instant};

use kproxy::watch::Kind;
use serde_json::Value;
use support::apiserver::ApiServer;
use support::netns::{self, Netns};
use support::objects::{node, service, slice};
use support::{Kproxy, endpoint_ips, eventually, expect_eq, http_get_in, service_ports};

const WAIT: Duration = Duration::from_secs(20);
const SERVICE_CHANGES: &str = "kubeproxy_sync_proxy_rules_service_changes_total";
const ENDPOINT_CHANGES: &str = "kubeproxy_sync_proxy_rules_endpoint_changes_total";
const FULL_SYNCS: &str =
    "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}";

fn port(name: &str) -> String {
    format!("default/{name}:http/TCP")
}

fn verdict(state: &Value, name: &str) -> String {
    state["servicePorts"][port(name)]["plan"]["families"][0]["internal"]["verdict"]
        .as_str()
        .unwrap_or("<none>")
        .to_string()
}

/// Waits until `/debug/state` satisfies `check`; returns the state and how long it took.
async fn state_where(
    kproxy: &mut Kproxy,
    what: &str,
    check: impl Fn(&Value) -> Result<(), String>,
) -> (Value, Duration) {
    kproxy.until(what, WAIT, |state, _| check(state)).await
}

fn ports_are(names: &[&str]) -> impl Fn(&Value) -> Result<(), String> {
    let mut want: Vec<String> = names.iter().map(|n| port(n)).collect();
    want.sort();
    move |s| expect_eq(service_ports(s), want.clone()).map(|_| ())
}

fn endpoints_are(name: &str, ips: &[&str]) -> impl Fn(&Value) -> Result<(), String> {
    let (p, want): (String, Vec<String>) =
        (port(name), ips.iter().map(|s| s.to_string()).collect());
    move |s| expect_eq(endpoint_ips(s, &p), want.clone()).map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_follows_list_add_modify_delete_and_a_410_relist() {
    if !netns::can_run("binary_follows_list_add_modify_delete_and_a_410_relist") {
        return;
    }
    let ns = Netns::new("api");
    let server = ApiServer::start_in(Some(&ns.name)).await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(slice(
        "default",
        "a-1",
        "a",
        &["10.0.1.1", "10.0.1.2"],
        8080,
    ));
    server.apply(service("default", "b", "10.96.0.2", 80));
    server.apply(slice("default", "b-1", "b", &["10.0.2.1"], 8080));
    server.apply(service("default", "c", "10.96.0.3", 80));
    server.apply(node("node1", "192.168.0.1"));

    let started = Instant::now();
    let mut kproxy = Kproxy::spawn(&ns, &["--master", &server.url()]);
    let (state, _) =
        state_where(&mut kproxy, "the initial list", ports_are(&["a", "b", "c"])).await;
    println!("spawn -> initial list served: {:?}", started.elapsed());
    assert_eq!(endpoint_ips(&state, &port("a")), ["10.0.1.1", "10.0.1.2"]);
    assert_eq!(
        state["servicePorts"][port("a")]["endpoints"][0]["port"],
        8080
    );
    assert_eq!(verdict(&state, "a"), "endpoints");
    assert_eq!(verdict(&state, "c"), "reject", "no endpoints: reject");
    let (healthz, netns) = (kproxy.healthz, ns.name.clone());
    let (health, _) = eventually("/healthz 200 after a sync", WAIT, || async {
        let (code, body) = http_get_in(Some(&netns), healthz, "/healthz")
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if code == 200 && v["lastUpdated"].as_str().is_some_and(|s| !s.is_empty()) {
            Ok(v)
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await;
    assert_eq!(health["nodeEligible"], true);
    assert!(kproxy.metric(FULL_SYNCS).await.unwrap() >= 1.0);

    // Add.
    let t = Instant::now();
    server.apply(service("default", "d", "10.96.0.4", 80));
    server.apply(slice("default", "d-1", "d", &["10.0.4.1"], 8080));
    state_where(
        &mut kproxy,
        "d with its endpoint",
        endpoints_are("d", &["10.0.4.1"]),
    )
    .await;
    println!("add -> served: {:?}", t.elapsed());

    // Modify: endpoints, then the Service's port.
    let t = Instant::now();
    server.apply(slice("default", "a-1", "a", &["10.0.1.3"], 8080));
    state_where(
        &mut kproxy,
        "a's new endpoints",
        endpoints_are("a", &["10.0.1.3"]),
    )
    .await;
    println!("endpoint change -> served: {:?}", t.elapsed());
    server.apply(service("default", "d", "10.96.0.4", 81));
    state_where(&mut kproxy, "d on port 81", |s| {
        expect_eq(
            s["servicePorts"][port("d")]["port"]["port"].clone(),
            Value::from(81),
        )
        .map(|_| ())
    })
    .await;

    // Delete.
    let t = Instant::now();
    // One at a time: the two kinds come over separate watches, and the change counters read
    // below must not still be waiting for the slice's delete.
    server.delete(Kind::EndpointSlices, "default", "b-1");
    state_where(&mut kproxy, "b's endpoints gone", endpoints_are("b", &[])).await;
    server.delete(Kind::Services, "default", "b");
    state_where(&mut kproxy, "b gone", ports_are(&["a", "c", "d"])).await;
    println!("delete -> served: {:?}", t.elapsed());

    // 410: both watches miss changes (c deleted), then relist.
    let services_before = kproxy.metric(SERVICE_CHANGES).await.unwrap();
    let endpoints_before = kproxy.metric(ENDPOINT_CHANGES).await.unwrap();
    eventually("open watches", WAIT, || async {
        expect_eq(
            (
                server.open_watches(Kind::Services),
                server.open_watches(Kind::EndpointSlices),
            ),
            (1, 1),
        )
    })
    .await;
    server.hold_watches(true);
    server.delete(Kind::Services, "default", "c");
    let t = Instant::now();
    server.expire_watches(Kind::Services);
    server.expire_watches(Kind::EndpointSlices);
    server.hold_watches(false);
    let (state, _) = state_where(
        &mut kproxy,
        "c gone after the relist",
        ports_are(&["a", "d"]),
    )
    .await;
    println!("410 -> relist served: {:?}", t.elapsed());
    assert_eq!(endpoint_ips(&state, &port("a")), ["10.0.1.3"]);
    assert_eq!(server.lists(Kind::Services).len(), 2);
    // The slices relist changed nothing; a marker slice sent after it proves it was processed.
    eventually("the slices re-watch", WAIT, || async {
        expect_eq(server.open_watches(Kind::EndpointSlices), 1)
    })
    .await;
    assert_eq!(server.lists(Kind::EndpointSlices).len(), 2);
    server.apply(slice("default", "d-2", "d", &["10.0.4.2"], 8080));
    state_where(
        &mut kproxy,
        "the marker",
        endpoints_are("d", &["10.0.4.1", "10.0.4.2"]),
    )
    .await;
    assert_eq!(
        kproxy.metric(SERVICE_CHANGES).await.unwrap(),
        services_before + 1.0,
        "only c's delete changed a Service: nothing was flushed and re-added"
    );
    assert_eq!(
        kproxy.metric(ENDPOINT_CHANGES).await.unwrap(),
        endpoints_before + 1.0,
        "only the marker slice changed endpoints"
    );
    assert_eq!(
        kproxy
            .metric("kproxy_rejected_objects_total{reason=\"bad_ip\"}")
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keeps_serving_while_the_api_server_is_down_and_catches_up_when_it_returns() {
    if !netns::can_run("binary_keeps_serving_while_the_api_server_is_down") {
        return;
    }
    let ns = Netns::new("api");
    let mut server = ApiServer::start_in(Some(&ns.name)).await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(slice("default", "a-1", "a", &["10.0.1.1"], 8080));
    server.apply(node("node1", "192.168.0.1"));
    let mut kproxy = Kproxy::spawn(&ns, &["--master", &server.url()]);
    state_where(
        &mut kproxy,
        "the initial list",
        endpoints_are("a", &["10.0.1.1"]),
    )
    .await;
    eventually("open watches", WAIT, || async {
        expect_eq(
            (
                server.open_watches(Kind::Services),
                server.open_watches(Kind::EndpointSlices),
            ),
            (1, 1),
        )
    })
    .await;

    // Down: changes made meanwhile; rules stay as they were.
    server.stop().await;
    server.apply(service("default", "e", "10.96.0.5", 80));
    server.apply(slice("default", "e-1", "e", &["10.0.5.1"], 8080));
    server.apply(slice("default", "a-1", "a", &["10.0.1.9"], 8080));
    let (state, _) = state_where(
        &mut kproxy,
        "a still served",
        endpoints_are("a", &["10.0.1.1"]),
    )
    .await;
    assert_eq!(service_ports(&state), [port("a")]);
    let (code, _) = kproxy.get("/healthz").await.unwrap();
    assert_eq!(
        code, 200,
        "nothing queued while the API server is away: still healthy"
    );

    let t = Instant::now();
    server.resume().await;
    state_where(&mut kproxy, "changes made while down", |s| {
        ports_are(&["a", "e"])(s)?;
        endpoints_are("a", &["10.0.1.9"])(s)?;
        endpoints_are("e", &["10.0.5.1"])(s)
    })
    .await;
    println!(
        "API server back -> caught up (watch resumed from its resourceVersion): {:?}",
        t.elapsed()
    );
    assert_eq!(
        server.lists(Kind::Services).len(),
        1,
        "resumed without a relist"
    );

    // Down again, with the history compacted meanwhile: the watcher relists on 410.
    eventually("open watches", WAIT, || async {
        expect_eq(
            (
                server.open_watches(Kind::Services),
                server.open_watches(Kind::EndpointSlices),
            ),
            (1, 1),
        )
    })
    .await;
    server.stop().await;
    server.delete(Kind::Services, "default", "e");
    server.delete(Kind::EndpointSlices, "default", "e-1");
    server.compact();
    let t = Instant::now();
    server.resume().await;
    let (state, _) = state_where(&mut kproxy, "e gone after the relist", ports_are(&["a"])).await;
    println!(
        "API server back with compacted history -> relisted and caught up: {:?}",
        t.elapsed()
    );
    assert_eq!(endpoint_ips(&state, &port("a")), ["10.0.1.9"]);
    assert_eq!(server.lists(Kind::Services).len(), 2);
    let (code, _) = kproxy.get("/healthz").await.unwrap();
    assert_eq!(code, 200);
}

/// `/healthz` and `/livez` as (code, body).
async fn health(netns: Option<&str>, addr: std::net::SocketAddr) -> ((u16, Value), (u16, Value)) {
    let parse =
        |(code, body): (u16, String)| (code, serde_json::from_str(&body).unwrap_or_default());
    let healthz = http_get_in(netns, addr, "/healthz").await;
    let livez = http_get_in(netns, addr, "/livez").await;
    (parse(healthz.unwrap()), parse(livez.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_fails_healthz_but_not_livez_in_every_mode() {
    if !netns::can_run("a_draining_node_fails_healthz_but_not_livez_in_every_mode") {
        return;
    }
    for mode in ["nftables", "iptables"] {
        let ns = Netns::new("drain");
        let server = ApiServer::start_in(Some(&ns.name)).await;
        server.apply(service("default", "a", "10.96.0.1", 80));
        server.apply(slice("default", "a-1", "a", &["10.0.1.1"], 8080));
        server.apply(node("node1", "192.168.0.1"));
        let mut kproxy = Kproxy::spawn(&ns, &["--master", &server.url(), "--proxy-mode", mode]);
        state_where(
            &mut kproxy,
            "the initial list",
            endpoints_are("a", &["10.0.1.1"]),
        )
        .await;
        let (netns, addr) = (kproxy.netns.clone(), kproxy.healthz);
        let netns = netns.as_deref();
        let ((code, body), _) = health(netns, addr).await;
        assert_eq!(
            (code, &body["nodeEligible"]),
            (200, &Value::Bool(true)),
            "{mode}"
        );

        // The Cluster Autoscaler taints the node before deleting it.
        let mut tainted = node("node1", "192.168.0.1");
        tainted["spec"]["taints"] = serde_json::json!([{"key": "ToBeDeletedByClusterAutoscaler",
            "value": "1700000000", "effect": "NoSchedule"}]);
        server.apply(tainted);
        let (((code, body), (live, live_body)), took) =
            eventually("/healthz 503 for the tainted node", WAIT, || async {
                let h = health(netns, addr).await;
                match h.0.0 {
                    503 => Ok(h),
                    other => Err(format!("/healthz {other}")),
                }
            })
            .await;
        println!("{mode}: taint -> /healthz 503 in {took:?}");
        assert_eq!(body["nodeEligible"], Value::Bool(false), "{mode}: {body}");
        assert_eq!(code, 503);
        assert_eq!(live, 200, "{mode}: /livez ignores the node: {live_body}");
        let (state, _) = state_where(
            &mut kproxy,
            "still served",
            endpoints_are("a", &["10.0.1.1"]),
        )
        .await;
        assert_eq!(
            verdict(&state, "a"),
            "endpoints",
            "{mode}: draining changes no rule"
        );

        // Untainted (the autoscaler changed its mind): eligible again.
        server.apply(node("node1", "192.168.0.1"));
        eventually("/healthz 200 again", WAIT, || async {
            expect_eq(health(netns, addr).await.0.0, 200)
        })
        .await;

        // Deleted: not eligible.
        server.delete(Kind::Nodes, "", "node1");
        eventually("/healthz 503 for the deleted node", WAIT, || async {
            expect_eq(health(netns, addr).await.0.0, 503)
        })
        .await;
        assert_eq!(
            health(netns, addr).await.1.0,
            200,
            "{mode}: /livez still 200"
        );
    }
}
