//! The fixtures' cases: what each file must give, the files upstream refuses, and `PENDING`.

use serde_json::{Value, json};

/// Checks that fail today because what they check is being built elsewhere: each `Pending`
/// names the checks (a `/configz` path, `warnings` or `loads`) that fail for those files, and
/// why. A pending check must fail, so a fixed one is noticed: after merging that work, delete
/// its entry.
pub struct Pending {
    pub why: &'static str,
    pub checks: &'static [&'static str],
    pub files: &'static [&'static str],
}

pub const PENDING: &[Pending] = &[Pending {
    why: "not another branch's work, but outside this one (no parser changes here): the YAML \
              reader in config/file.rs refuses a repeated key (serde_yaml_ng), where upstream's \
              lenient decoding takes the file with a warning",
    checks: &["loads"],
    files: &["upstream/options-load-config-duplicate-field.yaml"],
}];

/// One run of kproxy's parser on a fixture, and what it must give.
pub struct Case {
    /// Under tests/fixtures/config/; `None` for a command line without a file.
    pub file: Option<&'static str>,
    /// On the command line of both runs: the case's and the defaults' (what kubeadm's DaemonSet
    /// or upstream's test passes beside `--config`).
    pub args: &'static [&'static str],
    /// On the case's command line only.
    pub flags: &'static [&'static str],
    /// The mode whose defaults the case is compared with.
    pub mode: &'static str,
    /// What differs from the defaults, by `/configz` path.
    pub set: Vec<(&'static str, Value)>,
    /// Warnings the case gives, by a part of their text, each with why it is right to warn.
    pub warnings: &'static [(&'static str, &'static str)],
}

impl Case {
    fn file(file: &'static str, mode: &'static str, set: Vec<(&'static str, Value)>) -> Case {
        Case {
            file: Some(file),
            args: &[],
            flags: &[],
            mode,
            set,
            warnings: &[],
        }
    }

    fn args(self, args: &'static [&'static str]) -> Case {
        Case { args, ..self }
    }

    fn warns(self, warnings: &'static [(&'static str, &'static str)]) -> Case {
        Case { warnings, ..self }
    }
}

/// kubeadm's DaemonSet passes `--hostname-override=$(NODE_NAME)` beside `--config`.
pub const KUBEADM_ARGS: &[&str] = &["--hostname-override=node-1"];
const KUBECONFIG: (&str, &str) = (
    "clientConnection.kubeconfig",
    "/var/lib/kube-proxy/kubeconfig.conf",
);

/// The fields kubeadm's ConfigMap sets that differ from kproxy's defaults for `mode`.
fn kubeadm(cidr: &str, mode: &str) -> Vec<(&'static str, Value)> {
    let mut set = vec![(KUBECONFIG.0, json!(KUBECONFIG.1))];
    if !cidr.is_empty() {
        set.push(("clusterCIDR", json!(cidr)));
    }
    // The file leaves nodePortAddresses unset: upstream's default for the mode.
    if mode == "nftables" {
        set.push(("nodePortAddresses", json!(["primary"])));
    }
    set
}

pub fn kubeadm_cases() -> Vec<Case> {
    // kubeadm up to v1.36 leaves `mode` empty: kproxy runs its default, nftables (upstream:
    // iptables, README "--proxy-mode"); v1.37 writes `mode: iptables`.
    vec![
        Case::file("kubeadm/v1.33.yaml", "nftables", kubeadm("", "nftables")),
        Case::file(
            "kubeadm/v1.34.yaml",
            "nftables",
            kubeadm("172.17.0.0/16", "nftables"),
        ),
        Case::file(
            "kubeadm/v1.35.yaml",
            "nftables",
            kubeadm("10.244.0.0/16,fd00:10:244::/56", "nftables"),
        ),
        Case::file(
            "kubeadm/v1.36.yaml",
            "nftables",
            kubeadm("192.168.0.0/16", "nftables"),
        ),
        Case::file(
            "kubeadm/v1.37.yaml",
            "iptables",
            kubeadm("10.244.0.0/16", "iptables"),
        ),
    ]
    .into_iter()
    .map(|c| c.args(KUBEADM_ARGS))
    .collect()
}

/// options_test.go's TestLoadConfig: its template's values (in kproxy's normal forms: CIDRs as
/// networks, Go durations), with the case's bind address, cluster CIDR and servers. Fields the
/// template sets that kproxy does not act on stay at the defaults: acceptContentTypes,
/// configSyncPeriod, portRange, ipvs.excludeCIDRs, detectLocal.* (ClusterCIDR mode does not use
/// them), and the sections of the modes not chosen (nftables.* in iptables and ipvs modes).
fn load_config(
    mode: &str,
    bind: &str,
    cidr: &str,
    healthz: &str,
    metrics: &str,
) -> Vec<(&'static str, Value)> {
    let mut set = vec![
        ("bindAddress", json!(bind)),
        ("clientConnection.burst", json!(100)),
        // `contentType: content-type` is read and not used: kproxy speaks JSON and /configz
        // says so, as for the defaults (README, `--kube-api-content-type`).
        ("clientConnection.kubeconfig", json!("/path/to/kubeconfig")),
        ("clientConnection.qps", json!(7)),
        ("clusterCIDR", json!(cidr)),
        ("conntrack.maxPerCore", json!(2)),
        ("conntrack.min", json!(1)),
        ("conntrack.tcpCloseWaitTimeout", json!("10s")),
        ("conntrack.tcpEstablishedTimeout", json!("20s")),
        ("healthzBindAddress", json!(healthz)),
        ("hostnameOverride", json!("foo")),
        ("iptables.masqueradeAll", json!(true)),
        ("iptables.masqueradeBit", json!(17)),
        ("metricsBindAddress", json!(metrics)),
        ("nodePortAddresses", json!(["10.20.0.0/16", "fd00:1::/64"])),
        ("oomScoreAdj", json!(17)),
    ];
    // The chosen mode's section gives the periods; ipvs mode takes masqueradeAll and
    // masqueradeBit from the iptables section, as upstream.
    let section = if mode == "ipvs" { "ipvs" } else { "iptables" };
    set.push((leak(format!("{section}.minSyncPeriod")), json!("10s")));
    set.push((leak(format!("{section}.syncPeriod")), json!("1m0s")));
    set
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

const UNKNOWN_FIELD: &[(&str, &str)] = &[(
    "unknown field \"foo\"",
    "upstream's own test case: strict decoding fails, the lenient one loads it with a warning",
)];
const STALE_FIELD: &[(&str, &str)] = &[(
    "unknown field \"udpIdleTimeout\"",
    "a field upstream removed (with the userspace mode); upstream loads the file only by its \
     lenient decoding, with a warning",
)];
const DUPLICATE_FIELD: &[(&str, &str)] = &[(
    "bindAddress",
    "upstream's own test case: strict decoding fails on the repeated field, the lenient one \
     loads it with a warning",
)];

pub fn upstream_cases() -> Vec<Case> {
    let v4 = ("1.2.3.0/24", "1.2.3.4:12345", "2.3.4.5:23456");
    let v6 = ("fd00:1::/64", "[fd00:1::5]:12345", "[fd00:2::5]:23456");
    let primary = || vec![("nodePortAddresses", json!(["primary"]))];
    let regression = |set: Vec<(&'static str, Value)>| {
        let mut all = vec![(KUBECONFIG.0, json!(KUBECONFIG.1))];
        all.extend(set);
        all
    };
    vec![
        // The scheme's files leave the mode empty: kproxy runs nftables, with upstream's
        // defaults, which they spell out.
        Case::file(
            "upstream/scheme-before-v1alpha1.yaml",
            "nftables",
            primary(),
        ),
        Case::file(
            "upstream/scheme-after-v1alpha1.cb6ff2d8.yaml",
            "nftables",
            primary(),
        ),
        Case::file(
            "upstream/scheme-roundtrip-default-v1alpha1.15b08666.yaml",
            "nftables",
            primary(),
        ),
        Case::file(
            "upstream/scheme-roundtrip-default-v1alpha1.2ae05731.yaml",
            "nftables",
            primary(),
        )
        .warns(STALE_FIELD),
        Case::file(
            "upstream/options-load-config-iptables-ipv4-all-zeros.yaml",
            "iptables",
            load_config("iptables", "0.0.0.0", v4.0, v4.1, v4.2),
        ),
        Case::file(
            "upstream/options-load-config-iptables-ipv4.yaml",
            "iptables",
            load_config("iptables", "9.8.7.6", v4.0, v4.1, v4.2),
        ),
        Case::file(
            "upstream/options-load-config-iptables-ipv6-quoted.yaml",
            "iptables",
            load_config("iptables", "::", v6.0, v6.1, v6.2),
        ),
        Case::file(
            "upstream/options-load-config-iptables-ipv6-zero.yaml",
            "iptables",
            load_config("iptables", "::", v6.0, v6.1, v6.2),
        ),
        Case::file(
            "upstream/options-load-config-ipvs-ipv6.yaml",
            "ipvs",
            load_config("ipvs", "2001:db8::1", v6.0, v6.1, v6.2),
        ),
        Case::file(
            "upstream/options-load-config-unknown-field.yaml",
            "iptables",
            load_config("iptables", "9.8.7.6", v4.0, v4.1, v4.2),
        )
        .warns(UNKNOWN_FIELD),
        Case::file(
            "upstream/options-load-config-duplicate-field.yaml",
            "iptables",
            load_config("iptables", "9.8.7.6", v4.0, v4.1, v4.2),
        )
        .warns(DUPLICATE_FIELD),
        // flushFrequency and vmodule are ignored (README "--log-flush-frequency", "--vmodule").
        Case::file(
            "upstream/options-complete-logging-config.yaml",
            "nftables",
            {
                let mut set = primary();
                set.push(("logging.format", json!("json")));
                set.push(("logging.verbosity", json!(10)));
                set
            },
        ),
        Case::file(
            "upstream/config-regression-kubeadm-iptables.yaml",
            "iptables",
            regression(vec![("clusterCIDR", json!("10.244.0.0/16"))]),
        )
        .args(&["--hostname-override=node1"]),
        // Upstream's expectations include the IPv6 health address the bind address implies.
        Case::file(
            "upstream/config-regression-ipv6.yaml",
            "iptables",
            regression(vec![
                ("bindAddress", json!("::")),
                ("clusterCIDR", json!("fd00:1::/64")),
                ("healthzBindAddress", json!("[::]:10256")),
                ("metricsBindAddress", json!("[::1]:10249")),
            ]),
        )
        .args(&["--hostname-override=node1"]),
        Case::file(
            "upstream/config-regression-dual-stack.yaml",
            "iptables",
            regression(vec![("clusterCIDR", json!("10.244.0.0/16,fd00:1::/64"))]),
        )
        .args(&["--hostname-override=node1"]),
        // TestConfigRegression's "legacy flag-based e2e configuration": flags, no file.
        Case {
            file: None,
            args: &["--hostname-override=node1"],
            flags: &[
                "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf",
                "--cluster-cidr=10.244.0.0/16",
                "--proxy-mode=ipvs",
                "--ipvs-scheduler=rr",
                "--ipvs-strict-arp=true",
            ],
            mode: "ipvs",
            set: regression(vec![
                ("clusterCIDR", json!("10.244.0.0/16")),
                ("ipvs.scheduler", json!("rr")),
                ("ipvs.strictARP", json!(true)),
            ]),
            warnings: &[],
        },
    ]
}

/// Files upstream refuses, and a part of kproxy's one-line reason.
pub const REFUSED: &[(&str, &str, &str)] = &[
    (
        "upstream/refused-options-load-config-failures-decode-error.yaml",
        "invalid YAML",
        "upstream: \"could not find expected ':'\"",
    ),
    (
        "upstream/refused-options-load-config-failures-bad-config-type.yaml",
        "kind: unsupported value \"KubeSchedulerConfiguration\"",
        "upstream: \"no kind\"",
    ),
    (
        "upstream/refused-options-load-config-failures-unquoted-ipv6-bind-address.yaml",
        "invalid YAML",
        "upstream: \"mapping values are not allowed in this context\"",
    ),
    (
        "upstream/options-load-config-iptables-ipv6-bracketed.yaml",
        "bindAddress: invalid IP address \"[::]\"",
        "upstream's TestLoadConfig only decodes it; its validation then refuses it (\"not a valid \
         textual representation of an IP address\"), so kube-proxy does not start",
    ),
];
