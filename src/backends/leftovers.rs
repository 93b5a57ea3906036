//! Removal of what kproxy's other modes leave behind: `KPROXY-*` iptables chains (with the rules
//! that jump to them from other chains) in every table, for IPv4 and IPv6, in both iptables-nft
//! and iptables-legacy; `KPROXY-*` ipsets; the IPVS dummy interface `kproxy-ipvs0`. Run when a
//! mode starts (for the other modes) and by --cleanup.
//!
//! Invariants: only objects whose names start with kproxy's prefixes are touched (never
//! upstream's `KUBE-*`, never the kubelet's); a missing tool or an absent table is not an error;
//! each iptables variant is edited with one `-restore --noflush` transaction per family, so
//! the other rules of those tables are never rewritten. Planning is pure (`plan_iptables`);
//! the `plan_*` functions read what a removal would take without changing anything
//! (`--cleanup --dry-run`), from the same listing the removal applies.

use std::collections::BTreeSet;
use std::process::Command;

use super::process::run_piped;

/// kproxy's iptables chain and ipset prefix.
pub const PREFIX: &str = "KPROXY-";
pub use crate::node::IPVS_LINK;

/// Why removing leftovers failed, named after the failing step.
#[derive(Debug, thiserror::Error)]
pub enum LeftoverError {
    #[error("{program} refused to remove kproxy's chains: {stderr}")]
    Restore { program: String, stderr: String },
    #[error("removing IPVS mode's objects: {0}")]
    Ipvs(String),
    #[error("running {program}: {source}")]
    Run {
        program: String,
        source: super::process::RunError,
    },
}

/// The `-restore --noflush` input that removes every `KPROXY-*` chain in `save` (the output of
/// `iptables-save`) and every rule elsewhere that jumps or goes to one; `None` when there is
/// nothing to remove.
pub fn plan_iptables(save: &str) -> Option<String> {
    plan_iptables_owned(save, |_, chain| chain.starts_with(PREFIX))
}

/// Upstream kube-proxy's chains (iptables and IPVS modes, every release kproxy supports
/// migrating from), by table. Never the kubelet's (`KUBE-KUBELET-CANARY`,
/// `KUBE-IPTABLES-HINT`, `KUBE-MARK-DROP`, and `KUBE-FIREWALL` in filter), nor kproxy's.
pub fn upstream_chain(table: &str, chain: &str) -> bool {
    const FIXED: &[&str] = &[
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
        "KUBE-PROXY-CANARY",
        "KUBE-LOAD-BALANCER",
        "KUBE-NODE-PORT",
        "KUBE-SOURCE-RANGES-FIREWALL",
        "KUBE-IPVS-FILTER",
        "KUBE-IPVS-OUT-FILTER",
    ];
    const PER_SERVICE: &[&str] = &[
        "KUBE-SVC-",
        "KUBE-SEP-",
        "KUBE-FW-",
        "KUBE-XLB-",
        "KUBE-EXT-",
        "KUBE-SVL-",
    ];
    FIXED.contains(&chain)
        || PER_SERVICE.iter().any(|p| chain.starts_with(p))
        // IPVS mode's KUBE-FIREWALL is in nat; the kubelet's (older releases) is in filter.
        || (table == "nat" && chain == "KUBE-FIREWALL")
}

/// `plan_iptables` for the chains `owned(table, chain)` says are to go.
pub fn plan_iptables_owned(save: &str, owned: impl Fn(&str, &str) -> bool) -> Option<String> {
    let mut out = String::new();
    let mut table: Option<&str> = None;
    let (mut deletes, mut chains): (Vec<String>, BTreeSet<&str>) = (Vec::new(), BTreeSet::new());
    let flush_table = |out: &mut String,
                       table: Option<&str>,
                       deletes: &mut Vec<String>,
                       chains: &mut BTreeSet<&str>| {
        if let Some(t) = table.filter(|_| !chains.is_empty() || !deletes.is_empty()) {
            out.push_str(&format!("*{t}\n"));
            for d in deletes.drain(..) {
                out.push_str(&d);
                out.push('\n');
            }
            for c in chains.iter() {
                out.push_str(&format!("-F {c}\n"));
            }
            for c in std::mem::take(chains) {
                out.push_str(&format!("-X {c}\n"));
            }
            out.push_str("COMMIT\n");
        }
        deletes.clear();
        chains.clear();
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim());
        } else if line.starts_with("COMMIT") {
            flush_table(&mut out, table, &mut deletes, &mut chains);
            table = None;
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if owned(table.unwrap_or_default(), name) {
                chains.insert(name);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let t = table.unwrap_or_default();
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let targets_ours = rule
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| matches!(w[0], "-j" | "-g") && owned(t, w[1]));
            if !owned(t, chain) && targets_ours {
                deletes.push(format!("-D {rule}"));
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The iptables variants present on this host, as (save, restore) program pairs.
fn iptables_variants() -> Vec<(&'static str, &'static str)> {
    [
        ("iptables-nft-save", "iptables-nft-restore"),
        ("ip6tables-nft-save", "ip6tables-nft-restore"),
        ("iptables-legacy-save", "iptables-legacy-restore"),
        ("ip6tables-legacy-save", "ip6tables-legacy-restore"),
    ]
    .into_iter()
    .filter(|(save, _)| {
        Command::new(save)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .collect()
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LeftoverError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_piped(cmd, stdin).map_err(|source| LeftoverError::Run {
        program: program.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(LeftoverError::Restore {
            program: program.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One `-restore --noflush` transaction: the program and its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub program: &'static str,
    pub script: String,
}

impl Restore {
    /// One line per chain and per rule the transaction deletes, named by variant, family and
    /// table (`iptables-nft nat: chain KPROXY-SERVICES`, `iptables-nft nat: rule -A
    /// PREROUTING -j KPROXY-SERVICES`), for `--cleanup --dry-run`.
    pub fn describe(&self) -> Vec<String> {
        let tool = self.program.trim_end_matches("-restore");
        let mut table = "";
        let mut out = Vec::new();
        for line in self.script.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t;
            } else if let Some(rule) = line.strip_prefix("-D ") {
                out.push(format!("{tool} {table}: rule -A {rule}"));
            } else if let Some(chain) = line.strip_prefix("-X ") {
                out.push(format!("{tool} {table}: chain {chain}"));
            }
        }
        out
    }
}

/// The transactions that would remove the chains `owned(table, chain)` says are to go (and the
/// rules jumping to them), one per variant and family present that holds any. Reads only.
pub fn iptables_removals(owned: impl Fn(&str, &str) -> bool) -> Vec<Restore> {
    iptables_variants()
        .into_iter()
        .filter_map(|(save, restore)| {
            let text = run(save, &[], None).ok()?;
            let script = plan_iptables_owned(&text, &owned)?;
            Some(Restore {
                program: restore,
                script,
            })
        })
        .collect()
}

/// Removes kproxy's iptables chains in every variant and family present. Returns how many
/// restore transactions were applied.
pub fn remove_iptables() -> Result<usize, LeftoverError> {
    remove_iptables_owned(|_, chain| chain.starts_with(PREFIX))
}

/// What `remove_iptables` would remove, one line each (`Restore::describe`).
pub fn plan_iptables_removal() -> Vec<String> {
    iptables_removals(|_, chain| chain.starts_with(PREFIX))
        .iter()
        .flat_map(Restore::describe)
        .collect()
}

/// Removes the chains `owned(table, chain)` says are to go (and the rules jumping to them), in
/// every variant and family present.
pub fn remove_iptables_owned(owned: impl Fn(&str, &str) -> bool) -> Result<usize, LeftoverError> {
    let removals = iptables_removals(owned);
    for r in &removals {
        run(r.program, &["--noflush"], Some(&r.script))?;
    }
    Ok(removals.len())
}

/// Removes what IPVS mode leaves: its virtual servers, the dummy interface, the companion
/// nftables tables (`ipvs::cleanup`), and any `KPROXY-*` ipsets.
pub fn remove_ipvs() -> Result<(), LeftoverError> {
    remove_ipsets()?;
    super::ipvs::cleanup::remove_leftovers().map_err(|e| LeftoverError::Ipvs(e.to_string()))
}

/// Destroys every `KPROXY-*` ipset (kproxy programs none today; a host may hold ones made by
/// hand or by a build that did).
pub fn remove_ipsets() -> Result<(), LeftoverError> {
    remove_ipsets_prefixed(PREFIX)
}

/// The ipsets whose names start with `prefix` (none when `ipset` cannot list them).
pub fn ipsets_prefixed(prefix: &str) -> Vec<String> {
    run("ipset", &["list", "-n"], None)
        .map(|names| {
            names
                .lines()
                .filter(|n| n.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Destroys every ipset whose name starts with `prefix`.
pub fn remove_ipsets_prefixed(prefix: &str) -> Result<(), LeftoverError> {
    for name in ipsets_prefixed(prefix) {
        run("ipset", &["destroy", &name], None)?;
    }
    Ok(())
}

pub use super::ipvs::cleanup::UPSTREAM_IPVS_LINK;

/// `--cleanup-kube-proxy`: removes what upstream kube-proxy leaves on a node, so that it and
/// kproxy never both program it: its iptables chains (both variants, both families), its
/// `kube-proxy` nftables tables, `kube-ipvs0` with the IPVS virtual servers on its addresses
/// and on this host's, and its `KUBE-*` ipsets (after the rules that use them).
pub fn remove_kube_proxy() -> Result<(), LeftoverError> {
    remove_iptables_owned(upstream_chain)?;
    super::ipvs::cleanup::remove_upstream().map_err(|e| LeftoverError::Ipvs(e.to_string()))?;
    remove_ipsets_prefixed("KUBE-")
}

/// What `remove_kube_proxy` would remove, one line each, in the order it removes them; reads
/// only (`--cleanup-kube-proxy --dry-run`).
pub fn plan_kube_proxy() -> Result<Vec<String>, LeftoverError> {
    let mut out: Vec<String> = iptables_removals(upstream_chain)
        .iter()
        .flat_map(Restore::describe)
        .collect();
    let ipvs =
        super::ipvs::cleanup::plan_upstream().map_err(|e| LeftoverError::Ipvs(e.to_string()))?;
    out.extend(ipvs.describe());
    out.extend(
        ipsets_prefixed("KUBE-")
            .iter()
            .map(|n| format!("ipset {n}")),
    );
    Ok(out)
}

/// What `remove_ipsets` would remove, one line each.
pub fn plan_ipsets() -> Vec<String> {
    ipsets_prefixed(PREFIX)
        .iter()
        .map(|n| format!("ipset {n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "# Generated by iptables-nft-save v1.8.9
*mangle
:PREROUTING ACCEPT [0:0]
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KPROXY-SERVICES - [0:0]
:KPROXY-SVC-ABC - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KPROXY-SERVICES
-A KPROXY-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KPROXY-SVC-ABC
-A KPROXY-SVC-ABC -j DNAT --to-destination 10.0.0.1:6443
COMMIT
";

    #[test]
    fn only_kproxy_chains_and_the_rules_jumping_to_them_are_removed() {
        let script = plan_iptables(SAVE).unwrap();
        assert_eq!(
            script,
            "*nat\n\
             -D PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES\n\
             -D OUTPUT -j KPROXY-SERVICES\n\
             -F KPROXY-SERVICES\n-F KPROXY-SVC-ABC\n\
             -X KPROXY-SERVICES\n-X KPROXY-SVC-ABC\n\
             COMMIT\n"
        );
    }

    #[test]
    fn upstreams_chains_are_told_from_the_kubelets_and_kproxys() {
        for (table, chain) in [
            ("nat", "KUBE-SERVICES"),
            ("nat", "KUBE-SVC-ABCDEFGHIJKLMNOP"),
            ("nat", "KUBE-SEP-ABCDEFGHIJKLMNOP"),
            ("nat", "KUBE-FIREWALL"),
            ("filter", "KUBE-FORWARD"),
            ("filter", "KUBE-PROXY-FIREWALL"),
        ] {
            assert!(upstream_chain(table, chain), "{table} {chain}");
        }
        for (table, chain) in [
            ("filter", "KUBE-FIREWALL"),
            ("nat", "KUBE-KUBELET-CANARY"),
            ("mangle", "KUBE-IPTABLES-HINT"),
            ("nat", "KUBE-MARK-DROP"),
            ("nat", "KPROXY-SERVICES"),
        ] {
            assert!(!upstream_chain(table, chain), "{table} {chain}");
        }
    }

    #[test]
    fn a_removal_is_described_as_the_chains_and_rules_it_deletes() {
        let restore = Restore {
            program: "iptables-nft-restore",
            script: plan_iptables(SAVE).unwrap(),
        };
        assert_eq!(
            restore.describe(),
            [
                "iptables-nft nat: rule -A PREROUTING -m comment --comment \"kproxy service portals\" -j KPROXY-SERVICES",
                "iptables-nft nat: rule -A OUTPUT -j KPROXY-SERVICES",
                "iptables-nft nat: chain KPROXY-SERVICES",
                "iptables-nft nat: chain KPROXY-SVC-ABC",
            ]
        );
    }

    #[test]
    fn a_host_without_kproxy_chains_needs_no_restore() {
        let save = SAVE
            .lines()
            .filter(|l| !l.contains("KPROXY"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(plan_iptables(&save), None);
    }
}
