//! The real kproxy binary with `--manifests DIR`: files added, changed, broken, fixed and deleted,
//! observed through `/debug/state` and `/metrics` with a polling deadline.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::netns::{self, Netns};
use support::objects::{node, service, slice};
use support::{Kproxy, endpoint_ips, expect_eq, service_ports};

const WAIT: Duration = Duration::from_secs(20);

fn port(name: &str) -> String {
    format!("default/{name}:http/TCP")
}

/// Writes `name` in `dir` atomically (temp file + rename), as a careful editor or a ConfigMap
/// volume would, so the poller never sees a half-written file.
fn write(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).expect("write temp file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename into place");
}

/// YAML documents (JSON is YAML) separated by `---`.
fn docs(objects: &[Value]) -> String {
    objects
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A Service and its slice, in one file.
fn service_file(name: &str, ip: &str, port: u16, endpoints: &[&str]) -> String {
    docs(&[
        service("default", name, ip, port),
        slice("default", &format!("{name}-1"), name, endpoints, 8080),
    ])
}

/// This node's Node and Service `web` (10.96.0.10:80, one endpoint), each in its file.
fn node_and_web(dir: &Path) {
    write(dir, "node.yaml", &docs(&[node("node1", "192.168.0.1")]));
    write(
        dir,
        "web.yaml",
        &service_file("web", "10.96.0.10", 80, &["10.0.0.1"]),
    );
}

async fn until(
    kproxy: &mut Kproxy,
    what: &str,
    check: impl Fn(&Value, &str) -> Result<(), String>,
) -> Duration {
    kproxy.until(what, WAIT, check).await.1
}

fn ports_are(state: &Value, names: &[&str]) -> Result<(), String> {
    let mut want: Vec<String> = names.iter().map(|n| port(n)).collect();
    want.sort();
    expect_eq(service_ports(state), want).map(|_| ())
}

fn endpoints_are(state: &Value, name: &str, ips: &[&str]) -> Result<(), String> {
    expect_eq(
        endpoint_ips(state, &port(name)),
        ips.iter().map(|s| s.to_string()).collect(),
    )
    .map(|_| ())
}

fn rejected(metrics: &str, reason: &str) -> f64 {
    support::metric(
        metrics,
        &format!("kproxy_rejected_objects_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_a_manifests_directory_through_changes_breakage_and_deletes() {
    if !netns::can_run("binary_serves_a_manifests_directory") {
        return;
    }
    let ns = Netns::new("mf");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "node.yaml", &docs(&[node("node1", "192.168.0.1")]));
    write(
        d,
        "web.yaml",
        &service_file("web", "10.96.0.10", 80, &["10.0.0.1", "10.0.0.2"]),
    );

    let started = Instant::now();
    let mut kproxy = Kproxy::spawn(&ns, &["--manifests", d.to_str().unwrap()]);
    until(&mut kproxy, "web served", |s, _| {
        ports_are(s, &["web"])?;
        endpoints_are(s, "web", &["10.0.0.1", "10.0.0.2"])
    })
    .await;
    println!("spawn -> manifests served: {:?}", started.elapsed());

    // Change the file: endpoints and the Service's port.
    write(
        d,
        "web.yaml",
        &service_file("web", "10.96.0.10", 81, &["10.0.0.3"]),
    );
    let took = until(&mut kproxy, "web's change", |s, _| {
        endpoints_are(s, "web", &["10.0.0.3"])?;
        expect_eq(
            s["servicePorts"][port("web")]["port"]["port"].clone(),
            Value::from(81),
        )
        .map(|_| ())
    })
    .await;
    println!("file changed -> served: {took:?}");

    // A second file.
    write(
        d,
        "api.yaml",
        &service_file("api", "10.96.0.11", 80, &["10.0.1.1"]),
    );
    let took = until(&mut kproxy, "api served", |s, _| {
        ports_are(s, &["api", "web"])?;
        endpoints_are(s, "api", &["10.0.1.1"])
    })
    .await;
    println!("file added -> served: {took:?}");

    // Broken files: one that is not YAML, one whose Service has a bad IP. The rest stays.
    write(
        d,
        "broken.yaml",
        "kind: Service\nmetadata: {name: [unclosed\n",
    );
    write(
        d,
        "bad-ip.yaml",
        &docs(&[service("default", "badip", "10.96.0.300", 80)]),
    );
    let took = until(&mut kproxy, "both rejections counted", |s, m| {
        expect_eq((rejected(m, "parse"), rejected(m, "bad_ip")), (1.0, 1.0))?;
        ports_are(s, &["api", "web"])
    })
    .await;
    println!("broken files -> counted: {took:?}");

    // Fix the broken file.
    write(
        d,
        "broken.yaml",
        &service_file("fixed", "10.96.0.12", 80, &["10.0.2.1"]),
    );
    let took = until(&mut kproxy, "the fixed file served", |s, _| {
        ports_are(s, &["api", "fixed", "web"])?;
        endpoints_are(s, "fixed", &["10.0.2.1"])
    })
    .await;
    println!("file fixed -> served: {took:?}");

    // Delete a file: its objects go, the others stay.
    std::fs::remove_file(d.join("web.yaml")).unwrap();
    let took = until(&mut kproxy, "web gone", |s, _| {
        ports_are(s, &["api", "fixed"])
    })
    .await;
    println!("file deleted -> served: {took:?}");

    let metrics = kproxy.metrics_text().await.unwrap();
    assert_eq!(
        rejected(&metrics, "parse"),
        1.0,
        "each rejection counted once, not per poll"
    );
    assert_eq!(rejected(&metrics, "bad_ip"), 1.0);
    let state = kproxy.state().await.unwrap();
    assert_eq!(
        state["servicePorts"][port("api")]["plan"]["families"][0]["internal"]["verdict"],
        "endpoints"
    );
    let full = support::metric(
        &metrics,
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
    );
    assert!(
        full.is_some_and(|n| n >= 1.0),
        "at least the initial full sync: {full:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_waits_for_a_manifests_directory_that_does_not_exist_yet_and_serves_it() {
    if !netns::can_run("binary_waits_for_a_manifests_directory") {
        return;
    }
    let ns = Netns::new("mw");
    let parent = tempfile::tempdir().unwrap();
    let d = parent.path().join("later");
    let mut kproxy = Kproxy::spawn(&ns, &["--manifests", d.to_str().unwrap()]);
    let (_, took) = support::eventually("the waiting line", WAIT, || {
        let log = kproxy.log();
        async move {
            log.contains("not a directory (yet); waiting for it")
                .then_some(())
                .ok_or_else(|| "not logged yet".to_string())
        }
    })
    .await;
    println!("started without its directory, said so after {took:?}");
    kproxy.assert_running();
    std::fs::create_dir(&d).unwrap();
    node_and_web(&d);
    let took = until(&mut kproxy, "web served and synced", |s, m| {
        ports_are(s, &["web"])?;
        let synced = support::metric(
            m,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
        )
        .unwrap_or(0.0);
        (synced > 0.0)
            .then_some(())
            .ok_or_else(|| "no sync yet".to_string())
    })
    .await;
    println!("directory created -> served and synced: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_an_oversized_and_a_too_deep_file_and_serves_the_rest() {
    if !netns::can_run("binary_refuses_an_oversized") {
        return;
    }
    let ns = Netns::new("ml");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    node_and_web(d);
    let big = format!(
        "{}\n# {}\n",
        service_file("big", "10.96.0.11", 80, &["10.0.0.2"]),
        "x".repeat(20_000)
    );
    write(d, "big.yaml", &big);
    write(
        d,
        "deep.json",
        &format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000)),
    );
    let mut kproxy = Kproxy::spawn(
        &ns,
        &[
            "--manifests",
            d.to_str().unwrap(),
            "--manifests-max-file-size",
            "16Ki",
        ],
    );
    until(&mut kproxy, "web served, big and deep refused", |s, m| {
        ports_are(s, &["web"])?;
        expect_eq(rejected(m, "too_large"), 1.0)?;
        expect_eq(rejected(m, "too_deep"), 1.0).map(|_| ())
    })
    .await;
    let log = kproxy.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("big.yaml")).collect();
    assert_eq!(lines.len(), 1, "one line for the oversized file: {lines:?}");
    assert!(lines[0].contains("16384"), "names the limit: {}", lines[0]);
    let deep: Vec<&str> = log.lines().filter(|l| l.contains("deep.json")).collect();
    assert_eq!(deep.len(), 1, "one line for the deep file: {deep:?}");
    assert!(
        deep[0].contains("deeper than 64 levels"),
        "names the limit: {}",
        deep[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_a_directory_a_fifo_and_a_symlink_loop_named_like_manifests_once_each() {
    if !netns::can_run("binary_logs_a_directory_a_fifo") {
        return;
    }
    let ns = Netns::new("ms");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    node_and_web(d);
    std::fs::create_dir(d.join("dir.yaml")).unwrap();
    let fifo = std::ffi::CString::new(d.join("fifo.yaml").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("loop.yaml", d.join("loop.yaml")).unwrap();
    let mut kproxy = Kproxy::spawn(&ns, &["--manifests", d.to_str().unwrap()]);
    until(&mut kproxy, "web served", |s, _| ports_are(s, &["web"])).await;
    // Rescans (an event on a name that is not a manifest rescans the directory).
    for i in 0..3 {
        std::fs::write(d.join("other.txt"), format!("{i}")).unwrap();
        write(
            d,
            "web.yaml",
            &service_file("web", "10.96.0.10", 80 + i, &["10.0.0.1"]),
        );
        let want = Value::from(80 + i);
        until(&mut kproxy, "web's port", |s, _| {
            expect_eq(
                s["servicePorts"][port("web")]["port"]["port"].clone(),
                want.clone(),
            )
            .map(|_| ())
        })
        .await;
    }
    let log = kproxy.log();
    for (name, what) in [
        ("dir.yaml", "a directory"),
        ("fifo.yaml", "a FIFO"),
        ("loop.yaml", "a symlink loop"),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(name)).collect();
        assert_eq!(lines.len(), 1, "{name} logged once: {lines:?}");
        assert!(lines[0].contains(what), "{name}: {}", lines[0]);
    }
}
