//! A node name that names no Node (a wrong `--hostname-override`): the real binary says so once,
//! as a warning, and `/debug/state` shows `node.found: false` until the Node appears (then one
//! info line and `found: true`); from the API server and from a manifests directory. Root only,
//! inside a throwaway network namespace.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::apiserver::ApiServer;
use support::netns::{self, Netns};
use support::objects::{node, service, slice};
use support::{Kproxy, expect_eq};

const WAIT: Duration = Duration::from_secs(20);
const MISSING: &str = "no Node named \"node1\"";
const FOUND: &str = "Node \"node1\" found";

fn found_is(want: bool) -> impl Fn(&Value, &str) -> Result<(), String> {
    move |state, _| {
        expect_eq(state["node"]["found"].clone(), Value::Bool(want))?;
        expect_eq(state["node"]["name"].clone(), Value::from("node1")).map(|_| ())
    }
}

/// Waits for `found: false`, lets the source add the Node, waits for `found: true`, and checks
/// the log: one warning, one info line, in that order.
async fn missing_then_found(kproxy: &mut Kproxy, add_node: impl FnOnce()) {
    kproxy
        .until("node.found false", WAIT, found_is(false))
        .await;
    add_node();
    kproxy.until("node.found true", WAIT, found_is(true)).await;
    let log = kproxy.log();
    let missing: Vec<&str> = log.lines().filter(|l| l.contains(MISSING)).collect();
    let found: Vec<&str> = log.lines().filter(|l| l.contains(FOUND)).collect();
    assert_eq!(missing.len(), 1, "one warning:\n{log}");
    assert!(missing[0].contains("WARN"), "{}", missing[0]);
    assert_eq!(found.len(), 1, "one info line:\n{log}");
    assert!(found[0].contains("INFO"), "{}", found[0]);
    assert!(log.find(MISSING) < log.find(FOUND), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_api_server_does_not_have_is_reported_once_until_it_appears() {
    if !netns::can_run("a_node_the_api_server_does_not_have_is_reported_once_until_it_appears") {
        return;
    }
    let ns = Netns::new("nonode-api");
    let server = ApiServer::start_in(Some(&ns.name)).await;
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(slice("default", "a-1", "a", &["10.0.1.1"], 8080));
    server.apply(node("node2", "192.168.0.2"));
    let mut kproxy = Kproxy::spawn(&ns, &["--master", &server.url()]);
    missing_then_found(&mut kproxy, || {
        server.apply(node("node1", "192.168.0.1"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_manifests_do_not_have_is_reported_once_until_it_appears() {
    if !netns::can_run("a_node_the_manifests_do_not_have_is_reported_once_until_it_appears") {
        return;
    }
    let ns = Netns::new("nonode-files");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, obj: Value| {
        let tmp = dir.path().join(format!(".{name}"));
        std::fs::write(&tmp, serde_json::to_string(&obj).unwrap()).unwrap();
        std::fs::rename(&tmp, dir.path().join(name)).unwrap();
    };
    write("a.json", service("default", "a", "10.96.0.1", 80));
    write("node2.json", node("node2", "192.168.0.2"));
    let mut kproxy = Kproxy::spawn(&ns, &["--manifests", dir.path().to_str().unwrap()]);
    missing_then_found(&mut kproxy, || {
        write("node1.json", node("node1", "192.168.0.1"));
    })
    .await;
}
