//! `watch::kube::run` against the test API server over real HTTP: initial list, live changes,
//! 410 relists, server restarts, selectors, rejections.

mod support;

use std::time::Instant;

use kproxy::watch::kube::{LABEL_SELECTOR, SERVICE_FIELD_SELECTOR};
use kproxy::watch::{Change, Kind};
use support::apiserver::ApiServer;
use support::eventually;
use support::objects::{node, service, slice, with_label};
use support::source::{ALL, Source, WAIT, nn, svc_summary, wait_for_watch, watches};

#[tokio::test]
async fn initial_list_sends_every_valid_object_then_listed_once_per_kind() {
    let server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.10", 80));
    server.apply(service("default", "b", "10.96.0.11", 443));
    server.apply(with_label(
        service("default", "other", "10.96.0.12", 80),
        "service.kubernetes.io/service-proxy-name",
        "someone-else",
    ));
    server.apply(service("default", "broken", "10.96.0.300", 80));
    server.apply(slice(
        "default",
        "a-1",
        "a",
        &["10.0.1.1", "10.0.1.2"],
        8080,
    ));
    server.apply(with_label(
        slice("default", "h-1", "h", &["10.0.9.9"], 80),
        "service.kubernetes.io/headless",
        "",
    ));
    server.apply(node("node1", "192.168.0.1"));
    server.apply(node("node2", "192.168.0.2"));

    let start = Instant::now();
    let mut source = Source::start(&server).await;
    let changes = source.until_listed(&ALL).await;
    println!("initial list of 3 kinds took {:?}", start.elapsed());

    let mut services: Vec<_> = changes.iter().filter_map(svc_summary).collect();
    services.sort();
    assert_eq!(
        services,
        vec![("a".into(), Some(80)), ("b".into(), Some(443))]
    );
    let slices: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Slice(key, Some(s)) => {
                Some((key.name.clone(), s.service.name.clone(), s.endpoints.len()))
            }
            Change::Slice(key, None) => panic!("delete of {key} on an initial list"),
            _ => None,
        })
        .collect();
    assert_eq!(slices, vec![("a-1".to_string(), "a".to_string(), 2)]);
    let nodes: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Node(n) => Some(n.clone().expect("node1 present")),
            _ => None,
        })
        .collect();
    assert_eq!(nodes.len(), 1, "only this node: {nodes:?}");
    assert_eq!(nodes[0].name, "node1");
    assert_eq!(nodes[0].zone.as_deref(), Some("zone-a"));
    assert_eq!(
        nodes[0].internal_ips,
        vec!["192.168.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    for kind in ALL {
        let listed = changes
            .iter()
            .filter(|c| **c == Change::Listed(kind))
            .count();
        assert_eq!(listed, 1, "Listed({kind:?}) once");
    }
    // Every change of a kind comes before that kind's Listed.
    let listed_at = |k| {
        changes
            .iter()
            .position(|c| *c == Change::Listed(k))
            .unwrap()
    };
    let last_service = changes
        .iter()
        .rposition(|c| matches!(c, Change::Service(..)))
        .unwrap();
    assert!(last_service < listed_at(Kind::Services));
    assert_eq!(
        source.rejected("bad_ip"),
        1.0,
        "the broken Service is counted once"
    );
}

#[tokio::test]
async fn add_modify_and_delete_arrive_as_changes() {
    let server = ApiServer::start().await;
    let mut source = Source::start(&server).await;
    assert_eq!(
        source.until_listed(&ALL).await.len(),
        ALL.len(),
        "empty lists: only one Listed per kind"
    );
    wait_for_watch(&server, Kind::Services).await;
    wait_for_watch(&server, Kind::EndpointSlices).await;

    let t = Instant::now();
    server.apply(service("default", "web", "10.96.0.20", 80));
    assert_eq!(
        svc_summary(&source.next().await),
        Some(("web".into(), Some(80)))
    );
    println!("add -> change: {:?}", t.elapsed());

    let t = Instant::now();
    server.apply(service("default", "web", "10.96.0.20", 8080));
    assert_eq!(
        svc_summary(&source.next().await),
        Some(("web".into(), Some(8080)))
    );
    println!("modify -> change: {:?}", t.elapsed());

    server.apply(slice("default", "web-1", "web", &["10.0.0.5"], 8080));
    match source.next().await {
        Change::Slice(key, Some(s)) => {
            assert_eq!(key, nn("web-1"));
            assert_eq!(s.endpoints[0].ip.to_string(), "10.0.0.5");
            assert_eq!(s.ports[0].port, 8080);
        }
        other => panic!("expected the slice, got {other:?}"),
    }

    let t = Instant::now();
    server.delete(Kind::Services, "default", "web");
    assert_eq!(source.next().await, Change::Service(nn("web"), None));
    println!("delete -> change: {:?}", t.elapsed());
    server.delete(Kind::EndpointSlices, "default", "web-1");
    assert_eq!(source.next().await, Change::Slice(nn("web-1"), None));
}

#[tokio::test]
async fn relist_after_410_resends_present_objects_and_deletes_only_what_vanished() {
    let server = ApiServer::start().await;
    for (name, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")] {
        server.apply(service("default", name, ip, 80));
    }
    let mut source = Source::start(&server).await;
    source.until_listed(&ALL).await;
    wait_for_watch(&server, Kind::Services).await;

    // The watch misses a delete and a modify, then is told its resourceVersion is too old.
    server.hold_watches(true);
    server.delete(Kind::Services, "default", "b");
    server.apply(service("default", "c", "10.96.0.3", 81));
    let t = Instant::now();
    server.expire_watches(Kind::Services);
    server.hold_watches(false);

    let mut after = Vec::new();
    loop {
        let change = source.next_service().await;
        if change == Change::Listed(Kind::Services) {
            break;
        }
        after.push(svc_summary(&change).unwrap());
    }
    println!("410 -> relist complete: {:?}", t.elapsed());
    assert_eq!(
        after,
        vec![
            ("a".into(), Some(80)),
            ("c".into(), Some(81)),
            ("b".into(), None)
        ],
        "a re-sent unchanged, c updated, only b deleted"
    );
    let lists = server.lists(Kind::Services).len();
    assert_eq!(lists, 2, "exactly one relist");
}

#[tokio::test]
async fn watch_resumes_after_server_restart_and_picks_up_changes_made_while_down() {
    let mut server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    let mut source = Source::start(&server).await;
    source.until_listed(&ALL).await;
    wait_for_watch(&server, Kind::Services).await;

    server.stop().await;
    server.apply(service("default", "b", "10.96.0.2", 80));
    server.delete(Kind::Services, "default", "a");
    let t = Instant::now();
    server.resume().await;

    assert_eq!(
        svc_summary(&source.next_service().await),
        Some(("b".into(), Some(80)))
    );
    assert_eq!(source.next_service().await, Change::Service(nn("a"), None));
    println!(
        "server back -> changes made while down received: {:?}",
        t.elapsed()
    );
    let lists = server.lists(Kind::Services).len();
    assert_eq!(
        lists, 1,
        "history was kept, so the watch resumed without a relist"
    );
}

#[tokio::test]
async fn server_restart_with_compacted_history_relists_without_flushing() {
    let mut server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(service("default", "keep", "10.96.0.3", 80));
    let mut source = Source::start(&server).await;
    source.until_listed(&ALL).await;
    wait_for_watch(&server, Kind::Services).await;

    server.stop().await;
    server.apply(service("default", "b", "10.96.0.2", 80));
    server.delete(Kind::Services, "default", "a");
    server.compact();
    let t = Instant::now();
    server.resume().await;

    let mut after = Vec::new();
    loop {
        let change = source.next_service().await;
        if change == Change::Listed(Kind::Services) {
            break;
        }
        after.push(svc_summary(&change).unwrap());
    }
    println!(
        "server back with compacted history -> relist complete: {:?}",
        t.elapsed()
    );
    assert_eq!(
        after,
        vec![
            ("b".into(), Some(80)),
            ("keep".into(), Some(80)),
            ("a".into(), None)
        ]
    );
    let lists = server.lists(Kind::Services).len();
    assert_eq!(lists, 2, "410 on re-watch forced one relist");
}

#[tokio::test]
async fn selectors_and_bookmarks_are_sent_as_upstream() {
    let mut server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    let mut source = Source::start(&server).await;
    source.until_listed(&ALL).await;
    for kind in ALL {
        wait_for_watch(&server, kind).await;
    }

    let expected = |kind| match kind {
        Kind::Services | Kind::EndpointSlices => {
            ("labelSelector", Some(LABEL_SELECTOR.to_string()))
        }
        Kind::Nodes => ("fieldSelector", Some("metadata.name=node1".to_string())),
        // Every ServiceCIDR: no selector at all.
        Kind::ServiceCidrs => ("labelSelector", None),
    };
    for r in server.requests_for(Kind::Services) {
        assert_eq!(
            r.param("fieldSelector").as_deref(),
            Some(SERVICE_FIELD_SELECTOR),
            "headless Services filtered by the API server, as upstream: {r:?}"
        );
    }
    for kind in ALL {
        let requests = server.requests_for(kind);
        assert_eq!(
            requests.len(),
            2,
            "one list and one watch for {kind:?}: {requests:?}"
        );
        let (param, value) = expected(kind);
        for r in &requests {
            assert_eq!(r.method, "GET");
            assert_eq!(r.param(param), value, "{kind:?}: {r:?}");
        }
        let watch = requests
            .iter()
            .find(|r| r.is_watch())
            .expect("a watch request");
        assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
    }
    assert_eq!(
        server.requests().len(),
        2 * ALL.len(),
        "no discovery or other requests"
    );

    // A bookmark moves the resourceVersion a re-watch starts from.
    server.apply(node("node2", "192.168.0.2"));
    server.bookmark(Kind::Services);
    let bookmarked = server.resource_version();
    // Restart until a re-watch shows where the watcher resumes: the bookmark is replayed to a
    // re-watch from an older resourceVersion, so this converges even if the first restart
    // raced the bookmark's delivery.
    let t = Instant::now();
    let rv = loop {
        let before = watches(&server, Kind::Services).len();
        server.stop().await;
        server.resume().await;
        let (rv, _) = eventually("a resumed Services watch", WAIT, || async {
            let watches = watches(&server, Kind::Services);
            match watches.get(before) {
                Some(r) => Ok(r.param("resourceVersion").unwrap_or_default()),
                None => Err(format!("{} watch requests", watches.len())),
            }
        })
        .await;
        if rv == bookmarked.to_string() || t.elapsed() > WAIT {
            break rv;
        }
    };
    let took = t.elapsed();
    println!("re-watch from the bookmark after restart: {took:?}");
    assert_eq!(rv, bookmarked.to_string());
    drop(source);
}

#[tokio::test]
async fn service_that_becomes_invalid_is_deleted_and_counted_once() {
    let server = ApiServer::start().await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    let mut source = Source::start(&server).await;
    source.until_listed(&ALL).await;
    wait_for_watch(&server, Kind::Services).await;

    server.apply(service("default", "a", "10.96.0.1", 0));
    assert_eq!(source.next_service().await, Change::Service(nn("a"), None));
    assert_eq!(source.rejected("bad_port"), 1.0);

    // A relist sees the same broken object again: not counted again, nothing sent but Listed.
    server.expire_watches(Kind::Services);
    assert_eq!(source.next_service().await, Change::Listed(Kind::Services));
    assert_eq!(source.rejected("bad_port"), 1.0);

    wait_for_watch(&server, Kind::Services).await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    assert_eq!(
        svc_summary(&source.next_service().await),
        Some(("a".into(), Some(80)))
    );
}
