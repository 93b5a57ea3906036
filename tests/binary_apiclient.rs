//! The API client's settings and the feature gates with the real binary: `--kube-api-qps` and
//! `--kube-api-burst` pace every list and watch kproxy starts against the test API server
//! (relists too; a list's further pages take no token), measured on the server's clock;
//! content types and feature gates are checked at start (`--write-config-to` exits before
//! touching anything: warnings, exit 2, the written gates); AllowServiceExternalIPs=false drops
//! externalIPs from the ruleset (`--dry-run`); ComponentFlagz=false takes `/flagz` off the
//! metrics address. The pacing and the z-pages run as root in throwaway network namespaces; the
//! rest needs nothing.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use kproxy::watch::Kind;
use support::apiserver::{ApiServer, Request};
use support::netns::{self, Netns};
use support::objects::{node, service, slice};
use support::{Kproxy, eventually, expect_eq, service_ports};

const WAIT: Duration = Duration::from_secs(30);
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");

fn kproxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--hostname-override", "node1"])
        .args(args)
        .output()
        .expect("run kproxy")
}

/// The warning lines of a run's log.
fn warnings(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_owned)
        .collect()
}

/// Runs `--write-config-to` with `args`: its exit code, warnings, and the file written.
fn write_config(args: &[&str]) -> (Option<i32>, Vec<String>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kube-proxy.yaml");
    let out = kproxy(&[args, &["--write-config-to", path.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    (out.status.code(), warnings(&out), stderr, written)
}

/// Waits until the server has recorded `n` requests; returns them in arrival order.
async fn requests(server: &ApiServer, n: usize) -> Vec<Request> {
    let (mut seen, _) = eventually(&format!("{n} requests"), WAIT, || async {
        let seen = server.requests();
        match seen.len() >= n {
            true => Ok(seen),
            false => Err(format!("{} requests", seen.len())),
        }
    })
    .await;
    seen.sort_by_key(|r| r.at);
    seen
}

/// The gaps between consecutive requests, in arrival order.
fn gaps(seen: &[Request]) -> Vec<Duration> {
    seen.windows(2).map(|w| w[1].at - w[0].at).collect()
}

/// Starts kproxy with `args` against a fresh test API server holding Service `a`, its slice,
/// `more` other Services and the Node, and waits until `a` is served.
async fn started(role: &str, more: usize, args: &[&str]) -> (Netns, ApiServer, Kproxy) {
    let ns = Netns::new(role);
    let server = ApiServer::start_in(Some(&ns.name)).await;
    server.load((0..more).map(|i| {
        let ip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
        service("default", &format!("s{i}"), &ip, 80)
    }));
    server.apply(service("default", "a", "10.96.0.1", 80));
    server.apply(slice("default", "a-1", "a", &["10.0.1.1"], 8080));
    server.apply(node("node1", "192.168.0.1"));
    let url = server.url();
    let mut kproxy = Kproxy::spawn(&ns, &[&["--master", url.as_str()], args].concat());
    kproxy
        .until("the initial list", WAIT, |state, _| {
            let ports = service_ports(state);
            match ports.len() == more + 1 && ports.contains(&"default/a:http/TCP".to_owned()) {
                true => Ok(()),
                false => Err(format!("{} service ports", ports.len())),
            }
        })
        .await;
    (ns, server, kproxy)
}

fn continues(r: &Request) -> bool {
    r.param("continue").is_some_and(|c| !c.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_qps_and_burst_pace_every_list_and_watch_and_relist_but_not_further_pages() {
    if !netns::can_run("kube_api_qps_and_burst_pace_every_list_and_watch") {
        return;
    }
    // Unlimited: the four kinds' lists and watches go out at once.
    let (_ns, server, _kproxy) = started("qps-off", 0, &["--kube-api-qps=-1"]).await;
    let first = requests(&server, 8).await;
    let spread = first[7].at - first[0].at;
    println!("unlimited: 8 requests within {spread:?}");
    assert!(spread < Duration::from_millis(400), "{:?}", gaps(&first));

    // 2 a second, no burst: one list or watch every 0.5 s, whatever asks; 1,100 more Services
    // make each Services list three pages, the two further ones free.
    let (_ns, server, mut kproxy) =
        started("qps", 1100, &["--kube-api-qps=2", "--kube-api-burst=1"]).await;
    // Four kinds (Services, EndpointSlices, Nodes, ServiceCIDRs): a list and a watch each, and
    // the Services list's two further pages.
    requests(&server, 10).await;
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Nodes] {
        eventually("the watches", WAIT, || async {
            expect_eq(server.open_watches(kind), 1)
        })
        .await;
    }
    // Three relists at once (410 on every watch): three lists and three watches more.
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Nodes] {
        server.expire_watches(kind);
    }
    let seen = requests(&server, 18).await;
    let (pages, started): (Vec<Request>, Vec<Request>) = seen.into_iter().partition(continues);
    assert_eq!(pages.len(), 4, "two further pages of each Services list");
    let lists = started.iter().filter(|r| !r.is_watch()).count();
    assert_eq!((lists, started.len()), (7, 14));
    let gaps = gaps(&started);
    println!("qps 2, burst 1: lists and watches {gaps:?}");
    // The server's clock sees arrivals, which network jitter moves by a few ms either way.
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(450)),
        "{gaps:?}"
    );
    let total = started[13].at - started[0].at;
    assert!(total >= Duration::from_millis(6400), "{total:?}");
    // A further page follows the page before it at once (nothing else is waiting then).
    for page in &pages {
        let before = server
            .requests()
            .into_iter()
            .filter(|r| r.at < page.at)
            .max_by_key(|r| r.at)
            .unwrap();
        let gap = page.at - before.at;
        assert!(gap < Duration::from_millis(300), "{gap:?}");
    }
    kproxy.assert_running();
}

#[test]
fn protobuf_asked_for_on_the_command_line_warns_once_that_kproxy_speaks_json() {
    let (code, warned, stderr, written) =
        write_config(&["--kube-api-content-type=application/vnd.kubernetes.protobuf"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(
        warned[0].contains("speaks only application/json"),
        "{stderr}"
    );
    assert!(
        written.contains("contentType: application/json"),
        "{written}"
    );

    let (code, warned, stderr, _) = write_config(&[
        "--kube-api-content-type=application/json",
        "--kube-api-qps=20",
    ]);
    assert_eq!((code, warned.len()), (Some(0), 0), "{stderr}");
    // Upstream checks no content type: another one is used as JSON, with one warning.
    let (code, warned, stderr, _) = write_config(&["--kube-api-content-type=text/plain"]);
    assert_eq!((code, warned.len()), (Some(0), 1), "{stderr}");
}

#[test]
fn bad_client_and_gate_values_exit_2_with_one_line_naming_the_flag() {
    for (args, needle) in [
        (vec!["--kube-api-qps=fast"], "--kube-api-qps"),
        (vec!["--kube-api-burst=0"], "--kube-api-burst"),
        (vec!["--feature-gates=ComponentFlagz"], "--feature-gates"),
        (
            vec!["--feature-gates=ComponentFlagz=perhaps"],
            "--feature-gates",
        ),
        (
            vec!["--feature-gates=NFTablesProxyMode=false"],
            "locked to true",
        ),
        (
            vec!["--proxy-mode=ipvs", "--feature-gates=KubeProxyIPVS=false"],
            "KubeProxyIPVS",
        ),
    ] {
        let (code, _, stderr, written) = write_config(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(written.is_empty(), "{args:?}: nothing is written");
    }
}

#[test]
fn feature_gates_are_written_and_an_unknown_one_is_warned_about_once() {
    let (code, warned, stderr, written) = write_config(&[
        "--feature-gates=ComponentStatusz=false,NoSuchGate=true",
        "--feature-gates",
        "ContextualLogging=false",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(
        warned[0].contains("unrecognized feature gate NoSuchGate"),
        "{stderr}"
    );
    let doc: serde_json::Value = serde_yaml_ng::from_str(&written).unwrap();
    assert_eq!(
        doc["featureGates"],
        serde_json::json!({"ComponentStatusz": false, "ContextualLogging": false, "NoSuchGate": true})
    );
}

#[test]
fn allow_service_external_ips_false_leaves_external_ips_out_of_the_ruleset() {
    let dry_run = |extra: &[&str]| {
        let out = kproxy(&[&["--manifests", EXAMPLE, "--dry-run"], extra].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // examples/cluster/legacy.json has externalIPs [192.0.2.50].
    assert!(dry_run(&[]).contains("192.0.2.50"));
    let off = dry_run(&["--feature-gates=AllowServiceExternalIPs=false"]);
    assert!(!off.contains("192.0.2.50"), "{off}");
    assert!(off.contains("10.96."), "the rest is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_flagz_false_takes_flagz_off_the_metrics_address() {
    if !netns::can_run("component_flagz_false_takes_flagz_off") {
        return;
    }
    let ns = Netns::new("gates");
    let mut k = Kproxy::spawn(
        &ns,
        &[
            "--manifests",
            EXAMPLE,
            "--feature-gates=ComponentFlagz=false",
        ],
    );
    let start = std::time::Instant::now();
    let statusz = loop {
        match k.get("/statusz").await {
            Ok((200, body)) => break body,
            other => assert!(start.elapsed() < WAIT, "/statusz: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(statusz.contains("/configz"), "{statusz}");
    assert!(!statusz.contains("/flagz"), "{statusz}");
    let (code, _) = k.get("/flagz").await.unwrap();
    assert_eq!(code, 404);
    let (code, _) = k.get("/configz").await.unwrap();
    assert_eq!(code, 200);
}
