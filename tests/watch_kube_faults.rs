//! `watch::kube::run` against a failing test API server: a watch cut in the middle of an event,
//! 410 after 410, a resource answering 403, a slow resource, lists paged with `limit`/`continue`
//! and a `continue` token that expires. In every case what is still there is never deleted.

mod support;

use std::time::Instant;

use kproxy::watch::{Change, Kind};
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::eventually;
use support::objects::{node, service, slice};
use support::source::{ALL, Source, WAIT, svc_summary, wait_for_watch, watches};

/// Service changes received until the next `Listed(Services)`, as (name, port or None).
async fn until_services_listed(source: &mut Source) -> Vec<(String, Option<u16>)> {
    let mut out = Vec::new();
    loop {
        let change = source.next_service().await;
        if change == Change::Listed(Kind::Services) {
            return out;
        }
        out.push(svc_summary(&change).unwrap());
    }
}

fn many_services(n: usize) -> impl Iterator<Item = Value> {
    (0..n).map(|i| {
        let ip = format!("10.96.{}.{}", i / 250, 1 + i % 250);
        service("default", &format!("s{i:05}"), &ip, 80)
    })
}

#[tokio::test]
async fn a_watch_cut_in_the_middle_of_an_event_resumes_from_its_resource_version_and_delivers_it() {
    let server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    let mut source = Source::start(&server).await;
    source.until_listed(&ALL).await;
    wait_for_watch(&server, Kind::Services).await;
    let before = server.resource_version();

    server.cut_watches(Kind::Services, true);
    let t = Instant::now();
    server.apply(service("default", "b", "10.96.0.2", 80));
    assert_eq!(
        svc_summary(&source.next_service().await),
        Some(("b".into(), Some(80))),
        "the event cut in half arrives whole, once"
    );
    println!("watch cut mid-event -> event delivered: {:?}", t.elapsed());
    assert_eq!(
        server.lists(Kind::Services).len(),
        1,
        "resumed, not relisted"
    );
    let resumed = watches(&server, Kind::Services);
    assert!(resumed.len() >= 2, "a second watch was started");
    assert_eq!(
        resumed[resumed.len() - 1].param("resourceVersion"),
        Some(before.to_string()),
        "from the last resourceVersion it had whole"
    );
    server.apply(service("default", "a", "10.96.0.1", 81));
    assert_eq!(
        svc_summary(&source.next_service().await),
        Some(("a".into(), Some(81)))
    );
}

#[tokio::test]
async fn repeated_410s_relist_each_time_and_never_delete_what_is_still_there() {
    let server = ApiServer::start().await;
    for (name, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")] {
        server.apply(service("default", name, ip, 80));
    }
    let mut source = Source::start(&server).await;
    source.until_listed(&ALL).await;
    wait_for_watch(&server, Kind::Services).await;

    // The open watch ends with 410, then the next three watches get 410 at once: four relists.
    server.gone_watches(Kind::Services, 3);
    server.delete(Kind::Services, "default", "c");
    server.compact();
    let t = Instant::now();
    server.expire_watches(Kind::Services);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(until_services_listed(&mut source).await);
    }
    println!("four 410s in a row -> four relists: {:?}", t.elapsed());
    assert_eq!(server.lists(Kind::Services).len(), 5);
    // The first 410 is relisted at once; 410 after 410 backs off (0.8 s doubling).
    let at: Vec<Instant> = server.lists(Kind::Services).iter().map(|r| r.at).collect();
    let gaps: Vec<f64> = at[1..]
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("waits between the relists: {gaps:.2?} s");
    assert!(gaps[2] > 2.0, "410 after 410 backs off: {gaps:?}");
    let deletes: Vec<&String> = seen
        .iter()
        .filter(|(_, port)| port.is_none())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(deletes, ["c"], "only what vanished is deleted, once");
    assert!(
        seen.iter().filter(|(n, _)| n == "a").count() >= 4,
        "a is re-sent by every relist: {seen:?}"
    );
    wait_for_watch(&server, Kind::Services).await;
    server.apply(service("default", "d", "10.96.0.4", 80));
    assert_eq!(
        svc_summary(&source.next_service().await),
        Some(("d".into(), Some(80)))
    );
}

#[tokio::test]
async fn a_forbidden_resource_stops_only_itself_and_is_read_again_once_allowed() {
    let server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(slice("default", "a-1", "a", &["10.0.1.1"], 8080));
    server.apply(node("node1", "192.168.0.1"));
    server.forbid(Kind::Nodes, true);
    let mut source = Source::start(&server).await;
    let first = source
        .until_listed(&[Kind::Services, Kind::EndpointSlices])
        .await;
    assert!(
        !first
            .iter()
            .any(|c| matches!(c, Change::Node(_) | Change::Listed(Kind::Nodes))),
        "Nodes are forbidden: {first:?}"
    );
    wait_for_watch(&server, Kind::EndpointSlices).await;
    // Refused lists back off as failures do (0.8 s doubling): the wait before the fourth retry
    // is over 2 s. kube's own backoff restarts at every list attempt: 0.8-1.6 s forever.
    let (refused, _) = eventually("five refused Node lists", WAIT, || async {
        let lists: Vec<Instant> = server
            .requests_for(Kind::Nodes)
            .iter()
            .map(|r| r.at)
            .collect();
        if lists.len() >= 5 {
            Ok(lists)
        } else {
            Err(format!("{} so far", lists.len()))
        }
    })
    .await;
    let gaps: Vec<f64> = refused
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("waits between refused Node lists: {gaps:.2?} s");
    assert!(gaps[3] > 2.0, "backs off: {gaps:?}");

    // RBAC for EndpointSlices revoked while running: its watch is cut and every retry refused.
    server.forbid(Kind::EndpointSlices, true);
    eventually(
        "a refused EndpointSlices request",
        support::source::WAIT,
        || async {
            let refused = server
                .requests_for(Kind::EndpointSlices)
                .len()
                .saturating_sub(2);
            if refused > 0 {
                Ok(())
            } else {
                Err("none yet".to_string())
            }
        },
    )
    .await;
    server.apply(slice("default", "a-1", "a", &["10.0.1.2"], 8080));
    server.apply(service("default", "a", "10.96.0.1", 81));
    assert_eq!(
        svc_summary(&source.next_service().await),
        Some(("a".into(), Some(81))),
        "Services still flow while EndpointSlices and Nodes are refused"
    );

    server.forbid(Kind::EndpointSlices, false);
    server.forbid(Kind::Nodes, false);
    let t = Instant::now();
    let mut node_seen = false;
    let mut slice_seen = false;
    while !(node_seen && slice_seen) {
        match source.next().await {
            Change::Node(Some(_)) => node_seen = true,
            Change::Slice(key, Some(s)) if key.name == "a-1" => {
                let ips: Vec<String> = s.endpoints.iter().map(|e| e.ip.to_string()).collect();
                slice_seen = ips == ["10.0.1.2"];
            }
            Change::Slice(key, None) => panic!("slice {key:?} deleted while it was refused"),
            _ => {}
        }
    }
    println!("403 lifted -> both kinds read again: {:?}", t.elapsed());
}

#[tokio::test]
async fn a_slow_resource_does_not_hold_up_the_others() {
    let server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(slice("default", "a-1", "a", &["10.0.1.1"], 8080));
    server.delay(Kind::EndpointSlices, std::time::Duration::from_secs(4));
    let t = Instant::now();
    let mut source = Source::start(&server).await;
    let mut order = Vec::new();
    let mut applied = false;
    while !order.contains(&"slices listed") {
        match source.next().await {
            Change::Listed(Kind::Services) => {
                order.push("services listed");
                wait_for_watch(&server, Kind::Services).await;
                server.apply(service("default", "b", "10.96.0.2", 80));
                applied = true;
            }
            Change::Service(key, Some(_)) if key.name == "b" => order.push("b added"),
            Change::Listed(Kind::EndpointSlices) => order.push("slices listed"),
            _ => {}
        }
    }
    println!(
        "slow EndpointSlices (4 s a response) listed after {:?}",
        t.elapsed()
    );
    assert!(applied);
    assert_eq!(order, ["services listed", "b added", "slices listed"]);
    assert_eq!(
        server.lists(Kind::EndpointSlices).len(),
        1,
        "slow is not failed"
    );
}

#[tokio::test]
async fn lists_are_paged_and_an_expired_continue_token_restarts_the_list_deleting_nothing() {
    const N: usize = 1_234;
    let server = ApiServer::start().await;
    server.load(many_services(N));
    let mut source = Source::start(&server).await;
    let first = until_services_listed(&mut source).await;
    assert_eq!(first.len(), N);
    assert!(
        server
            .lists(Kind::Services)
            .iter()
            .all(|r| r.param("limit").as_deref() == Some("500")),
        "every list asks for a page of 500"
    );
    assert_eq!(server.continued_lists(Kind::Services), 2, "3 pages of 500");
    wait_for_watch(&server, Kind::Services).await;

    // A relist whose second page finds its continue token expired: the list starts over.
    server.hold_watches(true);
    server.delete(Kind::Services, "default", "s00007");
    server.compact();
    server.expire_continues(1);
    server.expire_watches(Kind::Services);
    server.hold_watches(false);
    let t = Instant::now();
    let relisted = until_services_listed(&mut source).await;
    println!(
        "relist of {N} with an expired continue token: {:?}",
        t.elapsed()
    );
    let deletes: Vec<&String> = relisted
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        deletes,
        ["s00007"],
        "only the deleted one, though a list broke off"
    );
    assert_eq!(
        relisted.len(),
        500 + N,
        "the broken list's first page, then N-1 updates and one delete"
    );
    // First list: 3 requests; the broken one: 2 (the second got 410); the full one: 3.
    assert_eq!(server.lists(Kind::Services).len(), 8);
    assert_eq!(server.continued_lists(Kind::Services), 5);
}

#[tokio::test]
async fn service_cidrs_arrive_as_changes_and_an_api_server_without_them_stops_nothing() {
    let server = ApiServer::start().await;
    server.apply(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/108"]},
    }));
    let mut source = Source::start(&server).await;
    let changes = source.until_listed(&ALL).await;
    let want = Change::ServiceCidr(
        "kubernetes".into(),
        Some(vec![
            "10.96.0.0/16".parse().unwrap(),
            "fd00:96::/108".parse().unwrap(),
        ]),
    );
    assert!(changes.contains(&want), "{changes:?}");
    wait_for_watch(&server, Kind::ServiceCidrs).await;
    server.delete(Kind::ServiceCidrs, "", "kubernetes");
    assert_eq!(
        source.next().await,
        Change::ServiceCidr("kubernetes".into(), None)
    );

    // An API server that does not serve them (before 1.33): the other kinds list and watch.
    let old = ApiServer::start().await;
    old.serve_kind(Kind::ServiceCidrs, false);
    old.apply(service("default", "web", "10.96.0.20", 80));
    let mut source = Source::start(&old).await;
    let served = [Kind::Services, Kind::EndpointSlices, Kind::Nodes];
    let changes = source.until_listed(&served).await;
    assert!(
        changes.iter().any(|c| matches!(c, Change::Service(..))),
        "{changes:?}"
    );
    // The window in which a failing kind would have been asked again (0.8 s, then 1.6 s).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let asked = old
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/servicecidrs"))
        .count();
    assert_eq!(asked, 1, "asked once, and not again within 5 minutes");
}
