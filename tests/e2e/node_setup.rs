//! `--init-only` in the host's own network namespace, where the conntrack table size and its
//! hash are writable and IPVS's modules load: only inside the throwaway VM (tests/vm), as
//! `ipvs::init_only_…` (ignored elsewhere, like every IPVS test).

use std::process::Stdio;

/// In the throwaway VM only: the table size and its hash are the host's, and IPVS's modules
/// and sysctls are what IPVS mode's --init-only sets up.
pub fn init_only_in_the_hosts_namespace_raises_the_conntrack_table_and_loads_ipvs() {
    assert_eq!(
        std::env::var("KPROXY_VM").as_deref(),
        Ok("1"),
        "this changes the host's conntrack table size: it runs only in the VM (tests/vm)"
    );
    let read = |path: &str| -> u64 {
        let v = std::fs::read_to_string(path).unwrap_or_default();
        v.trim().parse().unwrap_or_else(|_| panic!("{path}: {v:?}"))
    };
    // nf_conntrack may not be loaded yet: kproxy loads it.
    let max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let want = (max + 1).max(300_000);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args([
            "--init-only",
            "--proxy-mode=ipvs",
            &format!("--conntrack-min={want}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run kproxy");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert_eq!(
        read("/proc/sys/net/netfilter/nf_conntrack_max"),
        want,
        "{log}"
    );
    assert!(
        read("/sys/module/nf_conntrack/parameters/hashsize") >= want / 4,
        "{log}"
    );
    assert_eq!(read("/proc/sys/net/ipv4/vs/conntrack"), 1, "{log}");
    assert!(!log.contains("cannot set nf_"), "{log}");
}
