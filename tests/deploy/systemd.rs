//! deploy/kproxy.service: `systemd-analyze verify`, its command line with the sample
//! /etc/kproxy (deploy/etc-kproxy) and each flag variant kproxy.env documents, and its sandbox
//! against what kproxy needs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use kproxy::backends::ProxyMode;

use crate::files::{
    ROOT, container, daemonset, parse, path, read, unit_entries, unit_value, unit_values,
};
use crate::{NODE, tool_or_skip};

pub const UNIT: &str = "deploy/kproxy.service";

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if !tool_or_skip(
        "systemd-analyze",
        "the_systemd_unit_passes_systemd_analyze_verify",
    ) {
        return;
    }
    // verify checks that every Exec*= program exists: point ExecStart at the built binary.
    let text = read(UNIT);
    let exec = unit_value(&unit_entries(&text), "Service", "ExecStart");
    let program = exec.split_whitespace().next().unwrap();
    assert_eq!(program, "/usr/local/bin/kproxy");
    let here = text.replace(
        &format!("ExecStart={program} "),
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_kproxy")),
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("kproxy.service");
    std::fs::write(&unit, here).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // verify exits 0 on unknown keys and unparsable values, and only says so: any output fails.
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        format!("{stdout}{stderr}"),
        "",
        "systemd-analyze verify complained"
    );
}

/// The unit's ExecStart words with `$KPROXY_ARGS` set to `extra`, and /etc/kproxy read from
/// the sample layout deploy/etc-kproxy.
pub fn unit_command_line(extra: &str) -> Vec<String> {
    let exec = unit_value(&unit_entries(&read(UNIT)), "Service", "ExecStart");
    let sample = format!("{ROOT}/deploy/etc-kproxy");
    exec.split_whitespace()
        .flat_map(|w| match w {
            "$KPROXY_ARGS" => extra.split_whitespace().map(str::to_owned).collect(),
            _ => vec![w.to_owned()],
        })
        .map(|w| w.replace("/etc/kproxy", &sample))
        .collect()
}

#[test]
fn the_units_command_line_works_with_the_sample_etc_kproxy_and_each_documented_variant() {
    let entries = unit_entries(&read(UNIT));
    assert_eq!(
        unit_value(&entries, "Service", "EnvironmentFile"),
        "-/etc/kproxy/kproxy.env"
    );
    assert_eq!(unit_value(&entries, "Service", "Restart"), "always");
    let env = read("deploy/etc-kproxy/kproxy.env");
    let active = env
        .lines()
        .find_map(|l| l.strip_prefix("KPROXY_ARGS="))
        .expect("KPROXY_ARGS=");
    let cfg = parse(&unit_command_line(active));
    assert!(cfg.warnings.is_empty(), "warnings: {:?}", cfg.warnings);
    assert_eq!(cfg.mode, ProxyMode::Nftables);
    assert_eq!(
        cfg.kubeconfig.as_deref(),
        Some(Path::new("/etc/kproxy/kubeconfig"))
    );
    assert_eq!(cfg.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
    let sample_kubeconfig = path("deploy/etc-kproxy/kubeconfig.example");
    kube::config::Kubeconfig::read_from(&sample_kubeconfig).expect("kubeconfig.example");

    // The examples in kproxy.env's comments.
    let examples: Vec<&str> = env
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .trim()
                .strip_prefix("KPROXY_ARGS=")
        })
        .filter(|v| !v.is_empty())
        .collect();
    assert!(examples.len() >= 2, "{examples:?}");
    for extra in examples {
        let args = unit_command_line(extra);
        let cfg = parse(&args);
        assert!(
            cfg.warnings.is_empty(),
            "{extra}: warnings: {:?}",
            cfg.warnings
        );
        if cfg.manifests.is_some() {
            let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
                .args(&args[1..])
                .args(["--hostname-override", NODE, "--dry-run"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{extra}: {stderr}");
            // The sample directory holds no Node yet: that, once, is the only warning.
            let warns: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
            let missing_node = |l: &&str| l.contains("no Node named");
            assert!(
                warns.len() == 1 && warns.iter().all(missing_node),
                "{extra}: {stderr}"
            );
        }
    }
    // The other documented form: --kubeconfig alone, without a config file.
    let cfg = parse(&[
        "kproxy".into(),
        "--kubeconfig".into(),
        "/etc/kproxy/kubeconfig".into(),
    ]);
    assert_eq!(
        cfg.kubeconfig.as_deref(),
        Some(Path::new("/etc/kproxy/kubeconfig"))
    );
}

#[test]
fn the_unit_grants_what_the_daemonset_grants_and_leaves_writable_what_kproxy_writes() {
    let entries = unit_entries(&read(UNIT));
    let caps = |key: &str| -> BTreeSet<String> {
        unit_value(&entries, "Service", key)
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect()
    };
    let sc = container(&daemonset()).security_context.unwrap();
    let pod_caps: BTreeSet<String> = sc.capabilities.unwrap().add.unwrap().into_iter().collect();
    assert_eq!(caps("CapabilityBoundingSet"), pod_caps);
    assert_eq!(caps("AmbientCapabilities"), pod_caps);
    assert_eq!(unit_value(&entries, "Service", "NoNewPrivileges"), "yes");
    assert_eq!(unit_value(&entries, "Service", "ProtectSystem"), "strict");
    // /proc/sys/net (route_localnet, IPVS's sysctls) and the iptables lock stay writable.
    let writable: Vec<String> = unit_values(&entries, "Service", "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    if unit_value(&entries, "Service", "ProtectKernelTunables") == "yes" {
        assert!(
            writable.contains(&"/proc/sys/net".to_owned()),
            "{writable:?}"
        );
    }
    assert!(
        writable.contains(&"/run/xtables.lock".to_owned()),
        "{writable:?}"
    );
    let families = unit_value(&entries, "Service", "RestrictAddressFamilies");
    for family in ["AF_NETLINK", "AF_INET", "AF_INET6"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{families}"
        );
    }
    assert!(unit_values(&entries, "Service", "PrivateNetwork").is_empty());
}
