//! The command line, spelled as upstream kube-proxy's so kproxy can replace it in a DaemonSet.
//!
//! Clap only tokenises: every value arrives as a string and `resolve` parses it, so each error
//! names its flag in one line. Syntax follows pflag: `--flag=value` and `--flag value`; boolean
//! flags take `--flag` or `--flag=false`, never a separate word; `-v 2`, `-v=2`, `-v2`, `--v=2`;
//! `_` and `-` are interchangeable in flag names; a repeated flag keeps its last value, except
//! list flags, which accumulate. Defaults set here only show in `--help` (each as `[default:
//! …]`, which `tests/readme_flags.rs` compares with README's Flags tables); `resolve` decides.

mod read;

use std::ffi::OsString;

use clap::{Arg, ArgAction, ColorChoice, Command};

pub use read::{convert, explicit, explicit_list, ignored_flags};

/// What an upstream flag's value must look like, so an ignored flag still rejects garbage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Float,
    Duration,
    Text,
    /// A comma-separated list; the flag may repeat.
    List,
}

/// Upstream flags kproxy accepts, checks for type, and ignores with a start-up warning.
///
/// Their effects are outside kproxy's scope (profiling, IPVS exclusions, Windows, the config
/// file's reload period) or not implemented (logging knobs beyond `-v` and `--logging-format`,
/// hidden metrics). The
/// deprecated `--healthz-port` and `--metrics-port` are here too: upstream uses them only to
/// disable a server (port 0), which kproxy does not support.
///
/// Flags removed from upstream before 1.26 (`--resource-container`, `--udp-timeout`, the klog
/// `--logtostderr` family) are unknown.
pub const IGNORED: &[(&str, Kind)] = &[
    ("config-sync-period", Kind::Duration),
    ("healthz-port", Kind::Int),
    ("ipvs-exclude-cidrs", Kind::List),
    ("log-flush-frequency", Kind::Duration),
    ("log-json-info-buffer-size", Kind::Text),
    ("log-json-split-stream", Kind::Bool),
    ("log-text-info-buffer-size", Kind::Text),
    ("log-text-split-stream", Kind::Bool),
    ("metrics-port", Kind::Int),
    ("profiling", Kind::Bool),
    ("show-hidden-metrics-for-version", Kind::Text),
    ("vmodule", Kind::Text),
];

const UPSTREAM: &str = "Flags (as kube-proxy)";

/// `--version`'s text after the name: version, commit, build date, compiler.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(crate::metrics::version);
const OWN: &str = "kproxy's own flags";
const COMPAT: &str = "Accepted for kube-proxy compatibility and ignored";

/// The whole command line.
pub fn command() -> Command {
    let mut cmd = Command::new("kproxy")
        .version(VERSION.as_str())
        .about("kproxy: a kube-proxy dataplane (nftables, iptables or IPVS)")
        .color(ColorChoice::Never)
        .args_override_self(true)
        .max_term_width(100)
        .next_help_heading(UPSTREAM)
        .arg(value("proxy-mode", "MODE", "nftables, iptables or ipvs").default_value("nftables"))
        .arg(value(
            "config",
            "FILE",
            "a KubeProxyConfiguration (v1alpha1) file; explicit flags override it",
        ))
        .arg(shows(
            value("kubeconfig", "FILE", "kubeconfig for the API server"),
            "in-cluster",
        ))
        .arg(value(
            "master",
            "URL",
            "the API server's address (overrides the kubeconfig)",
        ))
        .arg(shows(
            value("hostname-override", "NAME", "the Node's name"),
            "the host name",
        ))
        .arg(shows(
            value(
                "bind-address",
                "IP",
                "only its family matters: an IPv6 one puts the metrics and health servers on [::1] and [::]",
            ),
            "0.0.0.0",
        ))
        .arg(value(
            "cluster-cidr",
            "CIDRS",
            "the pods' CIDRs, comma-separated, at most one per family",
        ))
        .arg(shows(
            value(
                "conntrack-max-per-core",
                "N",
                "nf_conntrack_max per CPU (0 leaves nf_conntrack_max and --conntrack-min alone); only ever raised",
            ),
            "32768",
        ))
        .arg(shows(
            value(
                "conntrack-min",
                "N",
                "the smallest nf_conntrack_max to set",
            ),
            "131072",
        ))
        .arg(shows(
            value(
                "conntrack-tcp-timeout-established",
                "DURATION",
                "idle timeout of established TCP connections (0 leaves the kernel's)",
            ),
            "24h",
        ))
        .arg(shows(
            value(
                "conntrack-tcp-timeout-close-wait",
                "DURATION",
                "timeout of TCP connections in CLOSE_WAIT (0 leaves the kernel's)",
            ),
            "1h",
        ))
        .arg(boolean(
            "conntrack-tcp-be-liberal",
            "track TCP liberally (nf_conntrack_tcp_be_liberal=1): out-of-window packets are not INVALID; iptables mode then drops no INVALID packet",
        ))
        .arg(shows(
            value(
                "conntrack-udp-timeout",
                "DURATION",
                "idle timeout of UDP flows (0 leaves the kernel's)",
            ),
            KERNELS,
        ))
        .arg(shows(
            value(
                "conntrack-udp-timeout-stream",
                "DURATION",
                "idle timeout of UDP streams (0 leaves the kernel's)",
            ),
            KERNELS,
        ))
        .arg(shows(
            value(
                "detect-local-mode",
                "MODE",
                "how pods' traffic is told apart: ClusterCIDR, NodeCIDR (the Node's podCIDRs), BridgeInterface or InterfaceNamePrefix",
            ),
            "ClusterCIDR",
        ))
        .arg(value(
            "pod-bridge-interface",
            "NAME",
            "the bridge pods' traffic comes in through (--detect-local-mode=BridgeInterface)",
        ))
        .arg(value(
            "pod-interface-name-prefix",
            "PREFIX",
            "the name prefix of pods' interfaces (--detect-local-mode=InterfaceNamePrefix)",
        ))
        .arg(shows(
            list(
                "nodeport-addresses",
                "CIDRS",
                "where NodePorts answer: CIDRs and the keywords primary, all, localhost, combined",
            ),
            "primary in nftables mode, all local addresses in the others",
        ))
        .arg(boolean(
            "masquerade-all",
            "SNAT all traffic sent to service cluster IPs",
        ))
        .arg(
            value(
                "iptables-sync-period",
                "DURATION",
                "full-resync interval, outside ipvs mode",
            )
            .default_value("30s"),
        )
        .arg(
            value(
                "iptables-min-sync-period",
                "DURATION",
                "minimum interval between syncs, outside ipvs mode",
            )
            .default_value("1s"),
        )
        .arg(
            value(
                "ipvs-sync-period",
                "DURATION",
                "full-resync interval in ipvs mode",
            )
            .default_value("30s"),
        )
        .arg(
            value(
                "ipvs-min-sync-period",
                "DURATION",
                "minimum interval between syncs in ipvs mode",
            )
            .default_value("1s"),
        )
        .arg(
            value(
                "metrics-bind-address",
                "ADDR",
                "metrics server address (IP, IP:port or [IPv6]:port)",
            )
            .default_value("127.0.0.1:10249"),
        )
        .arg(
            value(
                "healthz-bind-address",
                "ADDR",
                "health server address (IP, IP:port or [IPv6]:port)",
            )
            .default_value("0.0.0.0:10256"),
        )
        .arg(boolean(
            "bind-address-hard-fail",
            "exit when the health or metrics address cannot be bound (without it: retry every 5 s, as upstream)",
        ))
        .arg(shows(
            value(
                "oom-score-adj",
                "N",
                "written to /proc/self/oom_score_adj at start (-1000 to 1000)",
            ),
            "-999",
        ))
        .arg(boolean(
            "cleanup",
            "remove everything kproxy created, in every mode (nftables tables, KPROXY-* chains and ipsets, IPVS servers, kproxy-ipvs0), then exit; with --dry-run, list it and remove nothing",
        ))
        .arg(boolean(
            "init-only",
            "do the privileged node setup (OOM score, conntrack tuning, the mode's kernel modules and sysctls) and exit 0, so the long-running container needs only NET_ADMIN",
        ))
        .arg(value(
            "write-config-to",
            "FILE",
            "write the effective configuration as a KubeProxyConfiguration that --config reads back, then exit",
        ))
        .arg(list(
            "feature-gates",
            "GATES",
            "Name=true|false pairs, comma-separated (repeatable); kproxy acts on the gates that concern kube-proxy and warns about others",
        ))
        .arg(shows(
            value(
                "kube-api-qps",
                "QPS",
                "requests a second to the API server (token bucket); 0 means 5, negative: no limit",
            ),
            "5",
        ))
        .arg(shows(
            value(
                "kube-api-burst",
                "N",
                "requests the API client may make at once before --kube-api-qps paces them",
            ),
            "10",
        ))
        .arg(shows(
            value(
                "kube-api-content-type",
                "TYPE",
                "application/json (what kproxy speaks) or application/vnd.kubernetes.protobuf (answered with JSON, with a warning)",
            ),
            "application/vnd.kubernetes.protobuf",
        ))
        .arg(
            value("v", "LEVEL", "log verbosity (klog level)")
                .short('v')
                .default_value("0"),
        )
        .arg(shows(
            value(
                "iptables-masquerade-bit",
                "BIT",
                "iptables and ipvs modes: the packet-mark bit (0 to 31) that asks for masquerading (14: 0x4000)",
            ),
            "14",
        ))
        .arg(shows(
            boolean(
                "iptables-localhost-nodeports",
                "iptables mode: NodePorts also answer on 127.0.0.0/8 (IPv4; sets route_localnet)",
            ),
            "true",
        ))
        .arg(shows(
            value(
                "ipvs-scheduler",
                "NAME",
                "ipvs mode: the IPVS scheduler of every virtual server: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, fo, ovf, sed, nq, mh or twos",
            ),
            "rr",
        ))
        .arg(shows(
            value(
                "ipvs-tcp-timeout",
                "DURATION",
                "ipvs mode: IPVS's idle timeout of established TCP connections (0 keeps the kernel's, 15m)",
            ),
            KERNELS,
        ))
        .arg(shows(
            value(
                "ipvs-tcpfin-timeout",
                "DURATION",
                "ipvs mode: IPVS's timeout of TCP connections after a FIN (0 keeps the kernel's, 2m)",
            ),
            KERNELS,
        ))
        .arg(shows(
            value(
                "ipvs-udp-timeout",
                "DURATION",
                "ipvs mode: IPVS's timeout of UDP flows (0 keeps the kernel's, 5m)",
            ),
            KERNELS,
        ))
        .arg(boolean(
            "ipvs-strict-arp",
            "ipvs mode: answer ARP only for addresses of the receiving interface (arp_ignore=1, arp_announce=2)",
        ))
        .next_help_heading(OWN)
        .arg(shows(
            value(
                "sync-period",
                "DURATION",
                "full-resync interval in any mode (overrides the upstream flags and the file)",
            ),
            "30s",
        ))
        .arg(shows(
            value(
                "min-sync-period",
                "DURATION",
                "minimum interval between syncs in any mode, 0 allowed (overrides the upstream flags and the file)",
            ),
            "1s",
        ))
        .arg(
            value("log-format", "FORMAT", "text or json")
                .alias("logging-format")
                .default_value("text"),
        )
        .arg(value(
            "manifests",
            "DIR",
            "read Services and EndpointSlices from YAML files in DIR, not the API",
        ))
        .arg(shows(
            value(
                "manifests-max-file-size",
                "SIZE",
                "with --manifests: refuse files larger than SIZE bytes (or Ki, Mi, Gi) unread",
            ),
            "64Mi",
        ))
        .arg(boolean(
            "cleanup-kube-proxy",
            "remove upstream kube-proxy's rules (KUBE-* chains and ipsets, its kube-proxy nftables tables, kube-ipvs0 and its IPVS servers), then exit; with --dry-run, list them and remove nothing",
        ))
        .arg(boolean(
            "dry-run",
            "print the rules that would be programmed and change nothing; with --cleanup or --cleanup-kube-proxy, list what would be removed",
        ))
        .arg(
            value(
                "nftables-transport",
                "WAY",
                "library (libnftables in-process; netlink when it is missing), netlink (the nft command for chains and rules, set elements over netlink; no libnftables) or command (the nft command for everything)",
            )
            .default_value("library"),
        )
        .arg(
            value(
                "iptables-variant",
                "WHICH",
                "iptables mode: auto (what the host uses, as upstream's iptables-wrapper decides), nft or legacy",
            )
            .default_value("auto"),
        )
        .next_help_heading(COMPAT);
    for (name, kind) in IGNORED {
        let arg = match kind {
            Kind::Bool => boolean(name, "ignored"),
            Kind::List => list(name, "LIST", "ignored"),
            _ => value(name, "VALUE", "ignored"),
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// What the help says of a timeout whose 0 keeps the kernel's value.
const KERNELS: &str = "0 (the kernel's)";

/// `arg` with its default shown in the help as clap shows its own (`[default: …]`), for a
/// default `resolve` applies (or words such as "the host name"): clap's own default would
/// become the flag's value in `/flagz` (`flagz::DEFAULTS` has those).
fn shows(arg: Arg, default: &str) -> Arg {
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    arg.help(format!("{help} [default: {default}]"))
}

/// A flag taking one value (`--name=v` or `--name v`; the value may start with `-`).
fn value(name: &'static str, value_name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .value_name(value_name)
        .help(help)
        .num_args(1)
        .action(ArgAction::Set)
        .allow_hyphen_values(true)
}

/// A list flag: comma-separated, and repeating it appends, as a pflag string slice.
fn list(name: &'static str, value_name: &'static str, help: &'static str) -> Arg {
    value(name, value_name, help).action(ArgAction::Append)
}

/// Whether `arg` was made by [`boolean`].
pub fn is_boolean(arg: &Arg) -> bool {
    arg.get_value_names() == Some(&["BOOL".into()])
}

/// A pflag-style boolean: `--name` means true, `--name=false` false; no separate value word.
fn boolean(name: &'static str, help: &'static str) -> Arg {
    Arg::new(name)
        .long(name)
        .value_name("BOOL")
        .help(help)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true")
        .action(ArgAction::Set)
        .hide_default_value(true)
}

/// Rewrites `--a_b` as `--a-b` (upstream's word-separator normalisation); other words pass.
pub fn normalize(arg: OsString) -> OsString {
    let Some(text) = arg.to_str() else {
        return arg;
    };
    let Some(flag) = text.strip_prefix("--") else {
        return arg;
    };
    let (name, rest) = flag.split_at(flag.find('=').unwrap_or(flag.len()));
    OsString::from(format!("--{}{rest}", name.replace('_', "-")))
}
