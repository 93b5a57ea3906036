//! The z-pages and `--write-config-to` with the real binary: `/configz`, `/flagz` and `/statusz`
//! on the metrics address show the flags kproxy was started with; a configuration written with
//! `--write-config-to` (which exits 0 at once, touching no kernel) and read back with `--config`
//! gives the same `/configz`, without a warning; a file that cannot be written exits non-zero
//! naming it. Root only, inside throwaway network namespaces, on the bundled example manifests.

mod support;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::Kproxy;
use support::netns::{self, Netns};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");

/// The flags under test, with values other than the defaults.
const FLAGS: &[&str] = &[
    "--proxy-mode",
    "iptables",
    "--masquerade-all",
    "--cluster-cidr",
    "10.244.0.0/16,fd00:10:244::/56",
    "--iptables-sync-period",
    "45s",
    "--nodeport-addresses",
    "127.0.0.0/8",
    "--oom-score-adj",
    "-500",
    "--iptables-localhost-nodeports=false",
    "-v",
    "2",
];

/// `GET path` on kproxy's metrics address once it answers 200 (polled, 20 s at most).
async fn page(k: &mut Kproxy, path: &str) -> String {
    let start = Instant::now();
    loop {
        let last = match k.get(path).await {
            Ok((200, body)) => return body,
            other => format!("{other:?}"),
        };
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "GET {path}: {last}; log:\n{}",
            k.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` with an `Accept` header, from inside `k`'s namespace: the body.
fn get_accepting(k: &Kproxy, path: &str, accept: &str) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n",
        k.metrics
    );
    let addr = k.metrics;
    let raw = netns::run_in(k.netns.as_deref().unwrap(), move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.write_all(request.as_bytes())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok::<_, std::io::Error>(raw)
    })
    .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 "), "{raw}");
    body.to_owned()
}

async fn configz(k: &mut Kproxy) -> Value {
    let body = page(k, "/configz").await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/configz is not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configz_flagz_and_statusz_show_the_flags_kproxy_runs_with() {
    if !netns::can_run("configz_flagz_and_statusz_show_the_flags_kproxy_runs_with") {
        return;
    }
    let ns = Netns::new("zp");
    let mut k = Kproxy::spawn(&ns, &[&["--manifests", EXAMPLE], FLAGS].concat());

    let configz = configz(&mut k).await;
    let config = &configz["kubeproxy.config.k8s.io"];
    assert_eq!(config["kind"], "KubeProxyConfiguration", "{configz}");
    assert_eq!(config["apiVersion"], "kubeproxy.config.k8s.io/v1alpha1");
    assert_eq!(config["mode"], "iptables", "{configz}");
    assert_eq!(config["iptables"]["masqueradeAll"], true);
    assert_eq!(config["iptables"]["syncPeriod"], "45s");
    assert_eq!(config["iptables"]["localhostNodePorts"], false);
    assert_eq!(config["clusterCIDR"], "10.244.0.0/16,fd00:10:244::/56");
    assert_eq!(
        config["nodePortAddresses"],
        serde_json::json!(["127.0.0.0/8"])
    );
    assert_eq!(config["oomScoreAdj"], -500);
    assert_eq!(config["hostnameOverride"], "node1");
    assert_eq!(config["metricsBindAddress"], "127.0.0.1:10249");
    assert_eq!(config["logging"]["verbosity"], 2);

    let flagz = page(&mut k, "/flagz").await;
    assert!(flagz.starts_with("\nkproxy flagz\nWarning: "), "{flagz}");
    let manifests = format!("manifests={EXAMPLE}");
    for line in [
        "proxy-mode=iptables",
        "masquerade-all=true",
        "iptables-sync-period=45s",
        &manifests,
        "hostname-override=node1",
        // Not given: the default.
        "ipvs-scheduler=",
        "cleanup=false",
    ] {
        assert!(flagz.lines().any(|l| l == line), "no {line:?} in {flagz}");
    }

    let statusz = page(&mut k, "/statusz").await;
    assert!(statusz.starts_with("\nkproxy statusz\n"), "{statusz}");
    assert!(statusz.contains("\nStarted: "), "{statusz}");
    let paths = statusz
        .lines()
        .find_map(|l| l.strip_prefix("Paths: "))
        .unwrap_or_else(|| panic!("no Paths line in {statusz}"));
    assert_eq!(
        paths,
        "/configz /debug /flagz /healthz /metrics /proxyMode /statusz"
    );
    // Every listed path is served (/debug by /debug/state).
    for path in paths.split(' ') {
        let path = if path == "/debug" {
            "/debug/state"
        } else {
            path
        };
        let (code, _) = k.get(path).await.unwrap();
        assert_eq!(code, 200, "{path}");
    }
    // /debug/state of one Service: its three ports once synced; unknown 404, malformed 400.
    let one = "/debug/state?service=kube-system/kube-dns";
    let started = Instant::now();
    let dns: Value = loop {
        let (code, body) = k.get(one).await.unwrap();
        if code == 200 {
            break serde_json::from_str(&body).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{one}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ports = support::service_ports(&dns);
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert!(
        ports.iter().all(|p| p.starts_with("kube-system/kube-dns:")),
        "{ports:?}"
    );
    for (query, want) in [("default/nope", 404), ("nope", 400)] {
        let (code, body) = k
            .get(&format!("/debug/state?service={query}"))
            .await
            .unwrap();
        assert_eq!(code, want, "{query}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].is_string(), "{body}");
    }
    // The structured form, on request.
    let accept = "application/json;v=v1beta1;g=config.k8s.io;as=Flagz";
    let object: Value = serde_json::from_str(&get_accepting(&k, "/flagz", accept)).unwrap();
    assert_eq!(object["kind"], "Flagz");
    assert_eq!(object["flags"]["proxy-mode"], "iptables");
    assert!(k.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_written_with_write_config_to_reads_back_to_the_same_configz() {
    if !netns::can_run("a_configuration_written_with_write_config_to_reads_back") {
        return;
    }
    let (first_ns, writer_ns, second_ns) =
        (Netns::new("zp1"), Netns::new("zpw"), Netns::new("zp2"));
    let mut first = Kproxy::spawn(&first_ns, &[&["--manifests", EXAMPLE], FLAGS].concat());
    let expected = configz(&mut first).await;
    assert!(first.stop().success());

    // The same command line, with --write-config-to: it writes and exits 0 at once, with the
    // implicit flags of Kproxy::spawn given too, so the file holds all of them.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kube-proxy.yaml");
    let mut writer = writer_ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--write-config-to", file.to_str().unwrap()])
        .args(["--hostname-override", "node1"])
        .args(["--metrics-bind-address", "127.0.0.1:10249"])
        .args(["--healthz-bind-address", "127.0.0.1:10256"])
        .args(["--min-sync-period", "0s"])
        // No API server is reachable: a proxy that started anyway would not get far.
        .args(["--kubeconfig", "/nonexistent/kubeconfig"])
        .args(FLAGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = support::exit_within(&mut writer, Duration::from_secs(10))
        .expect("--write-config-to still runs after 10 s");
    let out = writer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("Wrote configuration"), "{stderr}");
    let tables = writer_ns.exec("nft", &["list", "tables"]);
    let rules = writer_ns.exec("iptables-save", &[]);
    assert!(tables.trim().is_empty(), "it touched nftables: {tables}");
    assert!(!rules.contains("KPROXY"), "it touched iptables: {rules}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("kind: KubeProxyConfiguration"),
        "{written}"
    );

    // The kubeconfig aside (it was written, so --config reads it too), /configz is the same.
    let mut second = Kproxy::spawn(
        &second_ns,
        &[
            "--manifests",
            EXAMPLE,
            "--config",
            file.to_str().unwrap(),
            "--kubeconfig=",
        ],
    );
    let got = configz(&mut second).await;
    assert_eq!(got, expected, "file:\n{written}");
    let log = second.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warnings.is_empty(), "reading the file warned: {warnings:?}");
    assert!(second.stop().success());

    // A file that cannot be written: non-zero, one line naming it.
    let missing = dir.path().join("missing").join("kube-proxy.yaml");
    let out = writer_ns
        .cmd(env!("CARGO_BIN_EXE_kproxy"))
        .args(["--write-config-to", missing.to_str().unwrap()])
        .args(["--hostname-override", "node1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let naming: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(missing.to_str().unwrap()))
        .collect();
    assert_eq!(naming.len(), 1, "{stderr}");
}
