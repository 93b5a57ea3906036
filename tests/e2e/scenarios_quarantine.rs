//! A Service the kernel refuses does not stop the node: kproxy finds it, programs every other
//! Service, names it in one log line (port, family, manifest file, the kernel's message), and
//! a good Service's later change still reaches the kernel.
//!
//! Invariants: the refusal is real, from the tools kproxy runs: wrappers of `nft` and the
//! `iptables-*-restore` tools, first on kproxy's PATH, refuse any input that mentions the
//! poisoned ClusterIP (as the kernel refuses an object it cannot take) and pass everything
//! else to the real tool, so the modes that run tools run it: `nftables-command`, both iptables
//! variants, and IPVS mode with `--nftables-transport command` (its companion table refuses the
//! poisoned ClusterIP's elements); libnftables is covered on the fake kernel
//! (`src/sync/isolation_tests.rs`).

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use crate::client::{Proto::*, at, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc, WEB, web};
use crate::topology::{A, B, C, Client, Ext, HTTP};

const POISON: &str = "10.96.0.66";

/// A directory of wrappers that refuse input mentioning `POISON`.
fn wrappers() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("wrappers dir");
    let script = format!(
        r#"#!/bin/bash
# Refuses any input that mentions {POISON}; runs the real tool on anything else.
real="$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$(basename "$0")")"
input="$(cat)"
if [[ "$input" == *"{POISON}"* ]]; then
    echo "$(basename "$0"): line 1 failed: Error: Could not process rule: Invalid argument" >&2
    exit 1
fi
printf '%s\n' "$input" | "$real" "$@"
"#
    );
    for tool in [
        "nft",
        "iptables-nft-restore",
        "ip6tables-nft-restore",
        "iptables-legacy-restore",
        "ip6tables-legacy-restore",
    ] {
        let path = dir.path().join(tool);
        std::fs::write(&path, &script).expect("write wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

pub fn a_refused_service_is_quarantined_and_the_others_keep_being_updated(c: &mut Cluster) {
    let tools = wrappers();
    c.stop_kproxy();
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // IPVS mode's companion tables go through libnftables unless told otherwise.
    let extra: &[&str] = if c.mode.name == "ipvs" {
        &["--nftables-transport", "command"]
    } else {
        &[]
    };
    c.start_kproxy_env(extra, &[("PATH", path)]);
    // Many more good Services beside it (fewer under IPVS mode's emulated VM, where every
    // bisection attempt reads each virtual server back): the refused one is found among them.
    let fillers: u32 = if c.mode.name == "ipvs" { 48 } else { 998 };
    let filler_vip = |i: u32| format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250);
    let mut objects = Vec::new();
    for i in 0..fillers {
        let name = format!("filler-{i}");
        objects.push(
            Svc::new(&name, &filler_vip(i))
                .tcp("http", HTTP, HTTP)
                .into(),
        );
        objects.push(Slice::v4(&name).tcp("http", HTTP).ready(&[B]).into());
    }
    let written = Instant::now();
    c.apply("fillers", objects);
    c.apply("web", web(&[A, B, C]));
    c.apply(
        "poison",
        vec![
            // At the servers' own port, which `ext` answers when kproxy does not DNAT.
            Svc::new("poison", POISON).tcp("http", HTTP, HTTP).into(),
            Slice::v4("poison").tcp("http", HTTP).ready(&[A]).into(),
        ],
    );
    // The bisection is a series of adopting full syncs: 5.5 s of IPVS mode's in the emulated
    // VM, where one CI run took over 10 s.
    let bisection = std::time::Duration::from_secs(60);
    c.until_served_within(Client, Tcp, at(WEB, HTTP), &[A, B, C], bisection);
    c.until_metric_positive("kproxy_quarantined_service_ports");
    println!(
        "services written -> the good one served, the refused one quarantined: {:?}",
        written.elapsed()
    );
    // Not programmed: the Service range's owner, ext, answers its ClusterIP. Every other
    // Service is: the first, the last and a few between of the fillers too.
    served_by(&c.tcp_n(Client, at(POISON, HTTP), 5), &[Ext]).unwrap();
    for i in [0, fillers / 3, fillers / 2, fillers - 1] {
        served_by(&c.tcp_n(Client, at(&filler_vip(i), HTTP), 3), &[B]).unwrap();
    }
    let log = c.kproxy_log();
    let line = log
        .lines()
        .find(|l| l.contains("quarantined default/poison"))
        .unwrap_or_else(|| panic!("no quarantine line in the log:\n{log}"));
    for want in ["IPv4", "poison.json", "Invalid argument"] {
        assert!(line.contains(want), "{want} missing from: {line}");
    }
    // A good Service's later endpoint change still reaches the kernel.
    let changed = Instant::now();
    c.apply("web", web(&[A]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A]);
    println!(
        "good Service's endpoints changed -> traffic: {:?}",
        changed.elapsed()
    );
}
