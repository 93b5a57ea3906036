//! The Dockerfile: a build stage that can build the binary, a runtime stage with the tools
//! kproxy calls and the binary where the DaemonSet runs it.

use std::process::Command;

use serde_json::Value;

use crate::files::{ROOT, container, daemonset, dockerfile_stages, read};

#[test]
fn the_dockerfile_builds_the_binary_the_daemonset_runs_with_the_tools_kproxy_calls() {
    let stages = dockerfile_stages(&read("Dockerfile"));
    let [(build_from, build), (runtime_from, runtime)] = stages.as_slice() else {
        panic!("two stages: {stages:?}");
    };
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert_eq!(
        build_from,
        &format!("rust:{rust_version}-bookworm AS build")
    );
    assert_eq!(runtime_from, "debian:bookworm-slim");
    let runs = |stage: &[(String, String)], needle: &str| {
        stage
            .iter()
            .any(|(k, rest)| k == "RUN" && rest.contains(needle))
    };
    assert!(runs(build, "cargo build --release --locked"), "{build:?}");

    // Every cargo target's source is copied into the build stage (Cargo.toml names the benches,
    // so cargo wants them even to build the binary), and .dockerignore keeps none of it out.
    let copied: Vec<String> = build
        .iter()
        .filter(|(k, _)| k == "COPY")
        .flat_map(|(_, rest)| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let meta = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        meta.status.success(),
        "{}",
        String::from_utf8_lossy(&meta.stderr)
    );
    let meta: Value = serde_json::from_slice(&meta.stdout).unwrap();
    for target in meta["packages"][0]["targets"].as_array().unwrap() {
        // Integration tests are found, not declared: cargo does without them.
        if target["kind"] == serde_json::json!(["test"]) {
            continue;
        }
        let src = target["src_path"].as_str().unwrap();
        let rel = src.strip_prefix(&format!("{ROOT}/")).unwrap();
        assert!(
            copied
                .iter()
                .any(|c| rel == c || rel.starts_with(&format!("{c}/"))),
            "{rel} (target {}) is not copied into the build stage: {copied:?}",
            target["name"]
        );
    }
    assert!(
        copied.iter().any(|c| c == "Cargo.lock"),
        "--locked wants Cargo.lock"
    );
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    assert!(ignored.contains(&"target".to_owned()) && ignored.contains(&".git".to_owned()));
    for c in &copied {
        assert!(
            !ignored.contains(c),
            ".dockerignore drops {c}, which the build copies"
        );
    }

    // The runtime stage: what kproxy runs (nft and libnftables, iptables-{nft,legacy}-*, ipset,
    // modprobe), the binary where the DaemonSet's command expects it, run as root.
    for package in [
        "nftables",
        "iptables",
        "ipset",
        "kmod",
        "conntrack",
        "ipvsadm",
        "iproute2",
    ] {
        let needle = format!(" {package} ");
        assert!(
            runtime
                .iter()
                .any(|(k, rest)| k == "RUN" && format!("{rest} ").contains(&needle)),
            "the runtime stage installs {package}"
        );
    }
    let copy = runtime
        .iter()
        .find(|(k, _)| k == "COPY")
        .expect("COPY of the binary");
    assert!(copy.1.starts_with("--from=build ") && copy.1.ends_with(" /usr/local/bin/kproxy"));
    let entrypoint = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert_eq!(entrypoint.1, r#"["/usr/local/bin/kproxy"]"#);
    let user = runtime
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, u)| u.as_str());
    assert!(matches!(user, None | Some("0") | Some("root")), "{user:?}");
    let command = container(&daemonset()).command.unwrap();
    assert_eq!(command[0], "/usr/local/bin/kproxy");
}
