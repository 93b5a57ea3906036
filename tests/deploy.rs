//! The deployment artifacts checked against kproxy itself. Here: deploy/daemonset.yaml, each
//! document typed as the API server reads it, the container's command line through kproxy's own
//! parser, the ConfigMap through `--config` (parser and binary), the pod spec. `image`: the
//! Dockerfile. `systemd`: deploy/kproxy.service (`systemd-analyze verify`, its command line with
//! the sample /etc/kproxy of deploy/etc-kproxy, its sandbox); `sandbox` (root): its system call
//! filter and socket families against what kproxy and its tools do under strace. `rbac` (root): kproxy run with the
//! DaemonSet's command line and capabilities against the test API server must program the
//! kernel, and make exactly the API calls the ClusterRole grants.

mod support;

#[path = "deploy/confined.rs"]
mod confined;
#[path = "deploy/files.rs"]
mod files;
#[path = "deploy/image.rs"]
mod image;
#[path = "deploy/rbac.rs"]
mod rbac;
#[path = "deploy/sandbox.rs"]
mod sandbox;
#[path = "deploy/systemd.rs"]
mod systemd;

use std::process::Command;
use std::time::Duration;

use files::{
    DAEMONSET, ROOT, command_line, container, daemonset, mounted_config, object, parse, with_config,
};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kproxy::backends::ProxyMode;
use serde_json::Value;

const NODE: &str = "node1";
const WAIT: Duration = Duration::from_secs(20);

/// Skips (returns false) when `tool` is missing, except under CI=true where that fails.
fn tool_or_skip(tool: &str, test: &str) -> bool {
    if confined::have(tool) {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {test} cannot run: no {tool}"
    );
    eprintln!("skipped {test}: no {tool}");
    false
}

/// The DaemonSet's command line for node `NODE`, with its ConfigMap's config.conf written
/// into `dir` and `--config` pointing there.
fn daemonset_command_line(dir: &std::path::Path) -> Vec<String> {
    let ds = daemonset();
    let args = command_line(&container(&ds), NODE);
    let (key, text) = mounted_config(&ds, &args);
    let file = dir.join(key);
    std::fs::write(&file, text).unwrap();
    with_config(&args, &file)
}

#[test]
fn every_document_is_a_kubernetes_object_as_the_api_server_reads_it() {
    let docs = files::documents(DAEMONSET);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    // `object` checks that each survives its typed form unchanged.
    let sa: ServiceAccount = object("kproxy");
    let _: ClusterRole = object("kproxy");
    let binding: ClusterRoleBinding = object("kproxy");
    let _: ConfigMap = object("kproxy");
    let ds = daemonset();
    for doc in docs
        .iter()
        .filter(|d| !d["kind"].as_str().unwrap().starts_with("Cluster"))
    {
        assert_eq!(doc["metadata"]["namespace"], "kube-system", "{doc}");
    }
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "kproxy")
    );
    let subjects = binding.subjects.unwrap_or_default();
    let [subject] = subjects.as_slice() else {
        panic!("one subject: {subjects:?}");
    };
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn the_daemonsets_command_line_and_configmap_pass_kproxys_own_parser_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let args = daemonset_command_line(dir.path());
    assert_eq!(args[0], "/usr/local/bin/kproxy");
    assert!(
        args.contains(&format!("--hostname-override={NODE}")),
        "{args:?}"
    );
    let cfg = parse(&args);
    assert!(cfg.warnings.is_empty(), "warnings: {:?}", cfg.warnings);
    assert_eq!(cfg.mode, ProxyMode::Nftables);
    assert_eq!(cfg.node_name, NODE);
    assert_eq!(
        cfg.config_file.as_deref(),
        Some(dir.path().join("config.conf").as_path())
    );
    assert_eq!(cfg.cluster_cidrs, ["10.244.0.0/16".parse().unwrap()]);
    assert_eq!(cfg.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
    assert_eq!(cfg.metrics_bind_address, "127.0.0.1:10249".parse().unwrap());
    assert_eq!(cfg.sync_period, Duration::from_secs(30));
    assert_eq!(cfg.min_sync_period, Duration::from_secs(1));
    // In-cluster config: the ServiceAccount's token, and KUBERNETES_SERVICE_HOST (below).
    assert_eq!((cfg.kubeconfig, cfg.master), (None, None));
    assert!(!cfg.dry_run && !cfg.cleanup && cfg.manifests.is_none());
}

#[test]
fn the_configmap_loads_through_the_binary_on_the_example_cluster_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let args = daemonset_command_line(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(&args[1..])
        .args([
            "--manifests",
            &format!("{ROOT}/examples/cluster"),
            "--dry-run",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("WARN"), "warnings:\n{stderr}");
    assert!(stdout.contains("table ip kproxy {"), "{stdout}");
    assert!(stdout.contains(&format!("for node \"{NODE}\"")), "{stdout}");
}

#[test]
fn the_pod_spec_is_what_a_node_proxy_needs() {
    let ds = daemonset();
    let spec = ds.spec.clone().unwrap();
    let update = spec.update_strategy.unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    let rolling = update.rolling_update.unwrap();
    assert_eq!(
        serde_json::to_value(rolling.max_unavailable).unwrap(),
        Value::from(1)
    );
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration of every taint: {tolerations:?}"
    );

    let c = container(&ds);
    assert_eq!(c.image.as_deref(), Some("kproxy:latest"));
    let probe_port = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("httpGet probe");
        (
            get.path.unwrap_or_default(),
            serde_json::to_value(get.port).unwrap(),
        )
    };
    assert_eq!(
        probe_port(&c.liveness_probe),
        ("/livez".into(), Value::from(10256))
    );
    assert_eq!(
        probe_port(&c.readiness_probe),
        ("/healthz".into(), Value::from(10256))
    );
    // The probes reach what kproxy serves: health on every address, port 10256.
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse(&daemonset_command_line(dir.path()));
    assert_eq!(cfg.healthz_bind_address.port(), 10256);
    assert!(cfg.healthz_bind_address.ip().is_unspecified());

    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.add.unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.unwrap(), ["ALL"]);

    let volumes = pod.volumes.unwrap();
    let host_path = |path: &str| {
        volumes
            .iter()
            .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == path))
            .unwrap_or_else(|| panic!("a hostPath volume for {path}"))
    };
    let mount = |volume: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .unwrap_or_else(|| panic!("volume {volume} is mounted"))
            .clone()
    };
    let modules = host_path("/lib/modules");
    let m = mount(&modules.name);
    assert_eq!(
        (m.mount_path.as_str(), m.read_only),
        ("/lib/modules", Some(true))
    );
    let lock = host_path("/run/xtables.lock");
    let hp = lock.host_path.as_ref().unwrap();
    assert_eq!(hp.type_.as_deref(), Some("FileOrCreate"));
    let m = mount(&lock.name);
    assert_eq!(m.mount_path, "/run/xtables.lock");
    assert_ne!(m.read_only, Some(true), "iptables locks it: read-write");

    // In-cluster config is pointed at the API server itself, not the `kubernetes` Service that
    // only a running proxy makes reachable.
    let env = c.env.unwrap_or_default();
    let var = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert!(var("KUBERNETES_SERVICE_HOST").is_some());
    assert!(
        var("KUBERNETES_SERVICE_PORT")
            .unwrap()
            .parse::<u16>()
            .is_ok()
    );
    let requests = c.resources.unwrap().requests.unwrap();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));

    // The init container: the same image and configuration with --init-only, privileged, with
    // the modules to load.
    let init = pod.init_containers.clone().unwrap_or_default();
    let init = init
        .iter()
        .find(|i| i.args.iter().flatten().any(|a| a == "--init-only"))
        .expect("an init container running kproxy --init-only");
    assert_eq!(init.image, c.image);
    assert_eq!(init.command, c.command);
    let mut args = init.args.clone().unwrap_or_default();
    args.retain(|a| a != "--init-only");
    assert_eq!(Some(args), c.args, "the daemon's configuration");
    assert_eq!(
        init.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    let mounts: Vec<&str> = init
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(
        mounts.contains(&"/lib/modules") && mounts.contains(&"/var/lib/kproxy"),
        "{mounts:?}"
    );
}

/// The ```yaml blocks of deploy/README.md.
fn readme_yaml_blocks() -> Vec<String> {
    let readme = files::read("deploy/README.md");
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("unclosed ```yaml");
        blocks.push(body[..end].to_owned());
        rest = &body[end..][3..];
    }
    blocks
}

#[test]
fn the_readmes_migration_and_rollback_commands_are_kproxys_and_its_init_container_fits() {
    let readme = files::read("deploy/README.md");
    for (command, check) in [
        (
            "kproxy --cleanup-kube-proxy",
            (|c: &kproxy::config::Config| c.cleanup_kube_proxy) as fn(&_) -> bool,
        ),
        ("/usr/local/bin/kproxy --cleanup", |c| c.cleanup),
    ] {
        assert!(readme.contains(command), "deploy/README.md runs {command}");
        let args: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        assert!(check(&parse(&args)), "{command}");
    }

    // The init container it suggests: a Container of the Kubernetes API, running
    // --cleanup-kube-proxy with the kproxy container's privileges and the DaemonSet's lock.
    let blocks = readme_yaml_blocks();
    let [block] = blocks.as_slice() else {
        panic!("one yaml block: {blocks:?}");
    };
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(block).expect("the yaml block");
    let doc = serde_json::to_value(yaml).unwrap();
    let init: k8s_openapi::api::core::v1::Container =
        serde_json::from_value(doc["initContainers"][0].clone()).expect("a Container");
    assert_eq!(
        serde_json::to_value(&init).unwrap(),
        doc["initContainers"][0]
    );
    let ds = daemonset();
    let main = container(&ds);
    assert_eq!(init.image, main.image);
    assert_eq!(init.security_context, main.security_context);
    let args: Vec<String> = init.command.clone().unwrap();
    let cfg = parse(&args);
    assert!(
        cfg.cleanup_kube_proxy && cfg.warnings.is_empty(),
        "{args:?}"
    );
    let pod = ds.spec.unwrap().template.spec.unwrap();
    for m in init.volume_mounts.iter().flatten() {
        let main_mount = main
            .volume_mounts
            .iter()
            .flatten()
            .find(|v| v.name == m.name);
        assert_eq!(
            main_mount.map(|v| &v.mount_path),
            Some(&m.mount_path),
            "{m:?} mounts a volume of the DaemonSet where the kproxy container has it"
        );
        assert!(pod.volumes.iter().flatten().any(|v| v.name == m.name));
    }
}
