//! The RBAC rules against what kproxy does: the DaemonSet's command line, run under the
//! DaemonSet's capabilities against the test API server (nftables mode, then iptables mode
//! through each variant), must program the kernel, and the API calls it makes, in RBAC's
//! terms, must be exactly what the ClusterRole grants.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use k8s_openapi::api::rbac::v1::ClusterRole;
use kproxy::backends::ProxyMode;
use kproxy::watch::Kind;
use serde_json::Value;

use crate::confined::{Confined, capability_bit, output_in};
use crate::files::{container, daemonset, object, parse};
use crate::support::apiserver::{ApiServer, Request};
use crate::support::eventually;
use crate::support::netns::{self, Netns};
use crate::support::objects::{node, service, slice};
use crate::{NODE, WAIT, daemonset_command_line, tool_or_skip};

/// One permission in RBAC's terms: (apiGroup, resource, verb). Non-resource requests are
/// ("", "nonResourceURL <path>", verb).
pub type Permission = (String, String, String);

/// What RBAC sees in a request: its API group, resource and verb (list and watch told apart by
/// `watch=true`, a GET of one object is `get`).
pub fn permission(r: &Request) -> Permission {
    let segments: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => {
            let verb = r.method.to_ascii_lowercase();
            return ("".into(), format!("nonResourceURL {}", r.path), verb);
        }
    };
    let rest = match rest {
        ["namespaces", _ns, inner @ ..] if !inner.is_empty() => inner,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        [] => (String::new(), false),
    };
    let verb = match (r.method.as_str(), named) {
        ("GET", _) if r.is_watch() => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => panic!("unexpected method {other} {}", r.path),
    };
    (group.into(), resource, verb.into())
}

/// Everything a ClusterRole grants, one permission per (group, resource, verb). Wildcards,
/// resourceNames and nonResourceURLs are refused: the role is meant to be exact.
pub fn granted(role: &ClusterRole) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none(), "resourceNames in {rule:?}");
        assert!(
            rule.non_resource_urls.is_none(),
            "nonResourceURLs in {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for word in [group, resource, verb] {
                        assert!(!word.contains('*'), "wildcard in {rule:?}");
                    }
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// The DaemonSet's command line in a fresh namespace, as root with only the DaemonSet's
/// capabilities, against the test API server, with `extra` flags (a mode other than the
/// ConfigMap's).
async fn run_confined(extra: &[&str]) {
    let ns = Netns::new("deploy");
    let server = ApiServer::start_in(Some(&ns.name)).await;
    server.apply(service("default", "web", "10.96.0.10", 80));
    server.apply(slice("default", "web-1", "web", &["10.0.1.1"], 8080));
    server.apply(node(NODE, "192.168.0.1"));

    let dir = tempfile::tempdir().unwrap();
    let mut args = daemonset_command_line(dir.path());
    args.push(format!("--master={}", server.url()));
    args.extend(extra.iter().map(|a| a.to_string()));
    let cfg = parse(&args);
    let sc = container(&daemonset()).security_context.unwrap();
    let caps = sc.capabilities.unwrap().add.unwrap();
    let mut kproxy = Confined::spawn(&ns, &caps, &args);
    let (healthz, metrics): (SocketAddr, SocketAddr) = (
        SocketAddr::new([127, 0, 0, 1].into(), cfg.healthz_bind_address.port()),
        cfg.metrics_bind_address,
    );

    // The first sync.
    kproxy.until_first_sync(healthz, WAIT).await;
    let want_caps = caps.iter().fold(0u64, |m, c| m | 1 << capability_bit(c));
    assert_eq!(kproxy.effective_caps(), want_caps, "kproxy's CapEff");
    // Every kind watched (so every verb kproxy will ever use has been seen), then one change
    // through a watch.
    eventually("a watch of every kind", WAIT, || async {
        let open =
            [Kind::Services, Kind::EndpointSlices, Kind::Nodes].map(|k| server.open_watches(k));
        open.iter()
            .all(|n| *n > 0)
            .then_some(())
            .ok_or(format!("open watches {open:?}"))
    })
    .await;
    server.apply(slice("default", "web-1", "web", &["10.0.1.2"], 8080));
    kproxy
        .until(metrics, "/debug/state", WAIT, |_, body| {
            let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
            let ip = &v["servicePorts"]["default/web:http/TCP"]["endpoints"][0]["ip"];
            let full = v["syncs"]["full"].as_u64().unwrap_or(0);
            let partial = v["syncs"]["partial"].as_u64().unwrap_or(0);
            (ip == "10.0.1.2" && full + partial >= 2)
                .then_some(())
                .ok_or_else(|| format!("endpoint {ip}, syncs {}", v["syncs"]))
        })
        .await;
    let (_, text) = kproxy.get(metrics, "/metrics").await.unwrap();
    assert_eq!(
        crate::support::metric(&text, "kproxy_sync_failures_total"),
        Some(0.0),
        "{text}"
    );
    let legacy = extra.contains(&"--iptables-variant=legacy");
    let kernel = match (cfg.mode, legacy) {
        (ProxyMode::Nftables, _) => output_in(&ns, "nft", &["list", "table", "ip", "kproxy"]),
        (_, true) => output_in(&ns, "iptables-legacy-save", &["-t", "nat"]),
        (_, false) => output_in(&ns, "iptables-nft-save", &["-t", "nat"]),
    };
    assert!(
        kernel.contains("10.96.0.10") && kernel.contains("10.0.1.2"),
        "{kernel}"
    );

    // RBAC: exactly the permissions used.
    let requests = server.requests();
    let used: BTreeSet<Permission> = requests.iter().map(permission).collect();
    let role: ClusterRole = object("kproxy");
    let allowed = granted(&role);
    let denied: Vec<&Permission> = used.difference(&allowed).collect();
    let unused: Vec<&Permission> = allowed.difference(&used).collect();
    assert!(
        denied.is_empty(),
        "{extra:?}: calls the ClusterRole does not allow: {denied:?}"
    );
    assert!(
        unused.is_empty(),
        "{extra:?}: permissions kproxy never used: {unused:?}"
    );
    // Its Node alone, by field selector (RBAC cannot express that; the watch does).
    for r in requests.iter().filter(|r| r.path == "/api/v1/nodes") {
        assert_eq!(
            r.param("fieldSelector"),
            Some(format!("metadata.name={NODE}")),
            "{r:?}"
        );
    }
    println!("{extra:?}: {} requests: {used:?}", requests.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_deployments_capabilities_kproxy_syncs_and_uses_exactly_what_rbac_grants() {
    let test = "with_the_deployments_capabilities_kproxy_syncs_and_uses_exactly_what_rbac_grants";
    if !netns::can_run(test) || !tool_or_skip("setpriv", test) {
        return;
    }
    // The ConfigMap's mode, then iptables mode through each variant (legacy is the one that
    // needs NET_RAW, for its raw sockets).
    for extra in [
        &[][..],
        &["--proxy-mode=iptables", "--iptables-variant=nft"],
        &["--proxy-mode=iptables", "--iptables-variant=legacy"],
    ] {
        let start = std::time::Instant::now();
        run_confined(extra).await;
        println!("{extra:?}: {:?}", start.elapsed());
    }
}
