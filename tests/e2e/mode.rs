//! What the e2e scenarios need to know about a proxy mode beyond `--proxy-mode`: how to show its
//! rules (for failure reports), how someone else would wreck them (drift), and what of it may be
//! left after `--cleanup`. Everything else in a scenario is mode-neutral.
//!
//! Invariants: every command runs inside the given (node) namespace, never on the host; a tool
//! that is missing yields its error text in the dump instead of failing the test. Only the
//! nftables entries are exercised today; the iptables and IPVS ones follow the names in
//! `src/backends/leftovers.rs` and are to be checked when those backends land.

use crate::support::netns::Netns;

#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// The `--proxy-mode` value.
    pub name: &'static str,
    /// Further flags of this variant of the mode.
    pub args: &'static [&'static str],
}

impl Mode {
    /// A proxy mode, or a variant of one: `nftables-command` is nftables through the `nft`
    /// command instead of libnftables.
    pub fn named(variant: &'static str) -> Mode {
        let (name, args): (_, &[&str]) = match variant {
            "nftables-command" => ("nftables", &["--nftables-transport", "command"]),
            "nftables" | "iptables" | "ipvs" => (variant, &[]),
            _ => panic!("unknown proxy mode {variant}"),
        };
        Mode { name, args }
    }

    /// Everything this mode programs, as text, for failure reports.
    pub fn rules(&self, node: &Netns) -> String {
        let commands: &[&[&str]] = match self.name {
            "nftables" => &[&["nft", "list", "ruleset"]],
            "iptables" => &[&["iptables-save"], &["ip6tables-save"]],
            _ => &[&["ipvsadm", "-Ln"], &["iptables-save"], &["ipset", "list"]],
        };
        commands
            .iter()
            .map(|c| format!("# {}\n{}", c.join(" "), output(node, c)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Removes this mode's rules behind kproxy's back, as another agent on the node might.
    pub fn sabotage(&self, node: &Netns) {
        match self.name {
            "nftables" => node.exec("nft", &["flush", "table", "ip", "kproxy"]),
            "iptables" => node.exec("iptables", &["-t", "nat", "-F", "KPROXY-SERVICES"]),
            _ => node.exec("ipvsadm", &["-C"]),
        };
    }

    /// What of this mode is still in the kernel (empty when nothing is).
    pub fn leftovers(&self, node: &Netns) -> Vec<String> {
        let (command, needle): (&[&str], &str) = match self.name {
            "nftables" => (&["nft", "list", "tables"], "kproxy"),
            "iptables" => (&["iptables-save"], "KPROXY-"),
            _ => (&["ip", "link", "show"], "kproxy-ipvs0"),
        };
        output(node, command)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// stdout of `command` in `ns`, or a line saying why there is none.
fn output(ns: &Netns, command: &[&str]) -> String {
    match ns.cmd(command[0]).args(&command[1..]).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => format!("(failed: {})", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("(cannot run: {e})"),
    }
}
