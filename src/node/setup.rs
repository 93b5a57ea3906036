//! The privileged node setup kproxy does at start, and alone with `--init-only` (after which
//! the long-running container needs only NET_ADMIN): the OOM score, conntrack tuning, and what
//! the proxy mode needs of the kernel (`Backend::prepare_host`).
//!
//! Invariants: nothing here stops kproxy but a mode that cannot work at all; a value that is
//! already right is never written (a container's read-only /proc/sys then costs nothing, which
//! is what `--init-only` in an init container relies on).

use std::path::Path;

use crate::conntrack::tuning::{self, Tuning};

/// `--oom-score-adj`, as upstream: the OOM killer should pick kproxy last, since a node without
/// it loses Service updates. Lowering it needs CAP_SYS_RESOURCE, which neither deploy/'s
/// container (its kubelet gives a system-node-critical pod -997) nor its systemd unit (which
/// sets -999 itself) keeps: then one info line, as upstream logs it only at -v=2.
pub fn oom_score_adj(value: i32) {
    const PATH: &str = "/proc/self/oom_score_adj";
    let now = std::fs::read_to_string(PATH).unwrap_or_default();
    // Already so (systemd's OOMScoreAdjust= in deploy/kproxy.service): nothing to write.
    if now.trim() == value.to_string() {
        return;
    }
    if let Err(e) = std::fs::write(PATH, value.to_string()) {
        tracing::info!(value, current = now.trim(), error = %e,
            "cannot set /proc/self/oom_score_adj (--oom-score-adj; lowering it needs CAP_SYS_RESOURCE)");
    }
}

/// Conntrack tuning on this host; returns whether the kernel now tracks TCP liberally (iptables
/// mode's INVALID rule depends on it, as upstream reads the sysctl rather than the flag).
pub fn conntrack(t: &Tuning) -> bool {
    let root = Path::new("/");
    load_conntrack(root);
    t.apply(root, tuning::cpus(root));
    tuning::tcp_be_liberal(root)
}

/// Loads nf_conntrack when its sysctls are missing (a node booted without it: every mode needs
/// it, and its settings can only be made once it is there). Best effort: a failure shows as the
/// sysctls' own warnings.
fn load_conntrack(root: &Path) {
    if root
        .join("proc/sys/net/netfilter/nf_conntrack_max")
        .exists()
    {
        return;
    }
    match std::process::Command::new("modprobe")
        .arg("nf_conntrack")
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => tracing::info!("loaded the nf_conntrack module"),
        Ok(out) => tracing::info!(
            "modprobe nf_conntrack failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => tracing::info!("cannot run modprobe nf_conntrack: {e}"),
    }
}
