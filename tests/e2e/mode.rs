//! What the e2e scenarios need to know about a proxy mode beyond `--proxy-mode`: how to show its
//! rules (for failure reports), how someone else would wreck them (drift), and what of it may be
//! left after `--cleanup`. Everything else in a scenario is mode-neutral.
//!
//! Invariants: every command runs inside the given (node) namespace, never on the host; a tool
//! that is missing yields its error text in the dump instead of failing the test. The iptables
//! variants name their tools explicitly (`iptables-nft-save`, `iptables-legacy`), never the
//! `iptables` alternative. IPVS mode's objects are its virtual servers, the dummy interface
//! `kproxy-ipvs0` and the companion tables `kproxy-ipvs`.

use crate::support::netns::Netns;

#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// The `--proxy-mode` value.
    pub name: &'static str,
    /// Further flags of this variant of the mode.
    pub args: &'static [&'static str],
    /// iptables mode: `nft` or `legacy`.
    pub iptables: &'static str,
}

impl Mode {
    /// A proxy mode, or a variant of one: `nftables-command` is nftables through the `nft`
    /// command instead of libnftables; `iptables` is iptables-nft and `iptables-legacy`
    /// iptables-legacy, both chosen explicitly.
    pub fn named(variant: &'static str) -> Mode {
        let (name, args, iptables): (_, &[&str], _) = match variant {
            "nftables-command" => ("nftables", &["--nftables-transport", "command"], ""),
            "iptables" => ("iptables", &["--iptables-variant", "nft"], "nft"),
            "iptables-legacy" => ("iptables", &["--iptables-variant", "legacy"], "legacy"),
            "nftables" | "ipvs" => (variant, &[], ""),
            _ => panic!("unknown proxy mode {variant}"),
        };
        Mode {
            name,
            args,
            iptables,
        }
    }

    /// Whether service addresses are the node's own (IPVS binds them to its dummy interface):
    /// then a port of a service address that no Service uses is refused by the node itself,
    /// where the other modes leave the packet to its route (to `ext` in the e2e topology).
    pub fn service_ips_are_local(&self) -> bool {
        self.name == "ipvs"
    }

    /// Whether a ClusterIP's ports that its Service does not define are refused: IPVS's own
    /// answer, or nftables mode's `cluster-ips-check` (upstream's). iptables mode leaves them
    /// to their route.
    pub fn undefined_cluster_ip_ports_refuse(&self) -> bool {
        self.service_ips_are_local() || self.name == "nftables"
    }

    /// `iptables-nft-save`, `ip6tables-legacy`, ... for this iptables variant.
    fn tool(&self, v6: bool, suffix: &str) -> String {
        let base = if v6 { "ip6tables" } else { "iptables" };
        format!("{base}-{}{suffix}", self.iptables)
    }

    /// Everything this mode programs, as text, for failure reports.
    pub fn rules(&self, node: &Netns) -> String {
        let (v4, v6) = (self.tool(false, "-save"), self.tool(true, "-save"));
        let commands: Vec<Vec<&str>> = match self.name {
            "nftables" => vec![vec!["nft", "list", "ruleset"]],
            "iptables" => vec![vec![&v4], vec![&v6]],
            _ => vec![
                vec!["ipvsadm", "-Ln"],
                vec!["nft", "list", "table", "ip", "kproxy-ipvs"],
                vec!["nft", "list", "table", "ip6", "kproxy-ipvs"],
                vec!["ip", "addr", "show", "kproxy-ipvs0"],
            ],
        };
        commands
            .iter()
            .map(|c| format!("# {}\n{}", c.join(" "), output(node, c)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The ways someone else wrecks this mode's rules for Service `web` (10.96.0.10:8080 over
    /// pod-a, pod-b and pod-c, `manifests::web`), as another agent on the node might: (what,
    /// the command). Every one of them breaks some of web's traffic until kproxy repairs it.
    pub fn sabotages(&self) -> Vec<(&'static str, Vec<String>)> {
        let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        match self.name {
            "nftables" => vec![
                ("table flushed", words("nft flush table ip kproxy")),
                (
                    "services map flushed",
                    words("nft flush map ip kproxy services"),
                ),
                (
                    "web's element deleted",
                    words("nft delete element ip kproxy services { 10.96.0.10 . tcp . 8080 }"),
                ),
                (
                    "services chain flushed",
                    words("nft flush chain ip kproxy services"),
                ),
                ("table deleted", words("nft delete table ip kproxy")),
            ],
            "iptables" => {
                let tool = self.tool(false, "");
                vec![
                    (
                        "entry chain flushed",
                        words(&format!("{tool} -t nat -F KPROXY-SERVICES")),
                    ),
                    (
                        "portals flushed",
                        words(&format!("{tool} -t nat -F KPROXY-PORTALS")),
                    ),
                    (
                        "first portal rule deleted",
                        words(&format!("{tool} -t nat -D KPROXY-PORTALS 1")),
                    ),
                ]
            }
            _ => vec![
                ("every virtual server removed", words("ipvsadm -C")),
                (
                    "web's virtual server deleted",
                    words("ipvsadm -D -t 10.96.0.10:8080"),
                ),
                (
                    "one destination of web deleted",
                    words("ipvsadm -d -t 10.96.0.10:8080 -r 10.244.1.2:8080"),
                ),
                (
                    "companion table flushed",
                    words("nft flush table ip kproxy-ipvs"),
                ),
            ],
        }
    }

    /// What of this mode is still in the kernel (empty when nothing is).
    pub fn leftovers(&self, node: &Netns) -> Vec<String> {
        let (v4, v6) = (self.tool(false, "-save"), self.tool(true, "-save"));
        let checks: Vec<(&str, &str)> = match self.name {
            "nftables" => vec![("nft list tables", "kproxy")],
            "iptables" => vec![(&v4, "KPROXY-"), (&v6, "KPROXY-")],
            // Virtual servers are listed as "TCP  10.96.0.1:80 rr".
            _ => vec![
                ("ip link show", "kproxy-ipvs0"),
                ("nft list tables", "kproxy"),
                ("ipvsadm -Ln", "TCP "),
                ("ipvsadm -Ln", "UDP "),
            ],
        };
        checks
            .iter()
            .flat_map(|(c, needle)| {
                let words: Vec<&str> = c.split(' ').collect();
                output(node, &words)
                    .lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
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
