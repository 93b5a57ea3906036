//! README's "Flags" tables against the binary and upstream: every flag `kproxy --help` knows
//! has a row, every upstream kube-proxy flag and KubeProxyConfiguration (v1alpha1) field has a
//! row saying what kproxy does with it, and the rows marked ignored are exactly the flags
//! kproxy accepts and ignores (`IGNORED_FLAGS`); each row's default is the one `--help` shows.

use std::collections::BTreeSet;
use std::process::Command;

/// Upstream kube-proxy's flags on Linux: cmd/kube-proxy/app/options.go (`AddFlags`; its
/// `addOSFlags` adds none on Linux) and component-base's logging flags (`logsapi.AddFlags`), plus
/// `--help` and `--version` (../shared/docs/upstream-2026.md §2a).
const UPSTREAM_FLAGS: &[&str] = &[
    "config",
    "write-config-to",
    "cleanup",
    "feature-gates",
    "kubeconfig",
    "master",
    "kube-api-content-type",
    "kube-api-burst",
    "kube-api-qps",
    "hostname-override",
    "bind-address",
    "healthz-bind-address",
    "metrics-bind-address",
    "bind-address-hard-fail",
    "profiling",
    "show-hidden-metrics-for-version",
    "init-only",
    "proxy-mode",
    "iptables-masquerade-bit",
    "masquerade-all",
    "iptables-localhost-nodeports",
    "iptables-sync-period",
    "iptables-min-sync-period",
    "ipvs-sync-period",
    "ipvs-min-sync-period",
    "ipvs-scheduler",
    "ipvs-exclude-cidrs",
    "ipvs-strict-arp",
    "ipvs-tcp-timeout",
    "ipvs-tcpfin-timeout",
    "ipvs-udp-timeout",
    "detect-local-mode",
    "pod-bridge-interface",
    "pod-interface-name-prefix",
    "cluster-cidr",
    "nodeport-addresses",
    "oom-score-adj",
    "conntrack-max-per-core",
    "conntrack-min",
    "conntrack-tcp-timeout-established",
    "conntrack-tcp-timeout-close-wait",
    "conntrack-tcp-be-liberal",
    "conntrack-udp-timeout",
    "conntrack-udp-timeout-stream",
    "config-sync-period",
    "healthz-port",
    "metrics-port",
    "v",
    "vmodule",
    "logging-format",
    "log-flush-frequency",
    "log-json-info-buffer-size",
    "log-json-split-stream",
    "log-text-info-buffer-size",
    "log-text-split-stream",
    "help",
    "version",
];

/// Upstream's Windows-only flags: its Linux build has none of them, and neither has kproxy.
const WINDOWS_FLAGS: &[&str] = &[
    "windows-service",
    "source-vip",
    "network-name",
    "enable-dsr",
    "root-hnsendpoint-name",
    "forward-healthcheck-vip",
];

/// Every field of upstream's KubeProxyConfiguration v1alpha1 (k8s.io/kube-proxy
/// config/v1alpha1/types.go, with component-base's client-connection and logging types).
const V1ALPHA1_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "featureGates",
    "clientConnection.kubeconfig",
    "clientConnection.acceptContentTypes",
    "clientConnection.contentType",
    "clientConnection.qps",
    "clientConnection.burst",
    "logging.format",
    "logging.flushFrequency",
    "logging.verbosity",
    "logging.vmodule",
    "logging.options.text.splitStream",
    "logging.options.text.infoBufferSize",
    "logging.options.json.splitStream",
    "logging.options.json.infoBufferSize",
    "hostnameOverride",
    "bindAddress",
    "healthzBindAddress",
    "metricsBindAddress",
    "bindAddressHardFail",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "mode",
    "iptables.masqueradeBit",
    "iptables.masqueradeAll",
    "iptables.localhostNodePorts",
    "iptables.syncPeriod",
    "iptables.minSyncPeriod",
    "ipvs.syncPeriod",
    "ipvs.minSyncPeriod",
    "ipvs.scheduler",
    "ipvs.excludeCIDRs",
    "ipvs.strictARP",
    "ipvs.tcpTimeout",
    "ipvs.tcpFinTimeout",
    "ipvs.udpTimeout",
    "nftables.masqueradeBit",
    "nftables.masqueradeAll",
    "nftables.syncPeriod",
    "nftables.minSyncPeriod",
    "winkernel.networkName",
    "winkernel.sourceVip",
    "winkernel.enableDSR",
    "winkernel.rootHnsEndpointName",
    "winkernel.forwardHealthCheckVip",
    "detectLocalMode",
    "detectLocal.bridgeInterface",
    "detectLocal.interfaceNamePrefix",
    "clusterCIDR",
    "nodePortAddresses",
    "oomScoreAdj",
    "conntrack.maxPerCore",
    "conntrack.min",
    "conntrack.tcpEstablishedTimeout",
    "conntrack.tcpCloseWaitTimeout",
    "conntrack.tcpBeLiberal",
    "conntrack.udpTimeout",
    "conntrack.udpStreamTimeout",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
];

/// How a row of the upstream tables must begin its last column.
const VERDICTS: &[&str] = &["as upstream", "differs", "ignored", "not applicable"];

/// One table row: its cells, trimmed.
type Row = Vec<String>;

/// The tables of README's "## Flags" section, by their header row.
struct Tables {
    upstream: Vec<Row>,
    fields: Vec<Row>,
    own: Vec<Row>,
}

fn tables() -> Tables {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("\n## Flags\n")
        .expect("README has a Flags section");
    let section = &readme[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |i| i + 1)];
    let mut tables = Tables {
        upstream: Vec::new(),
        fields: Vec::new(),
        own: Vec::new(),
    };
    let mut current: Option<&mut Vec<Row>> = None;
    let mut header = true;
    for line in section.lines() {
        if !line.starts_with('|') {
            current = None;
            continue;
        }
        let cells: Row = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        if current.is_none() {
            let heads = cells.join(" | ");
            current = Some(match heads.as_str() {
                "flag | config field (v1alpha1) | default | kproxy" => &mut tables.upstream,
                "config field (v1alpha1) | default | kproxy" => &mut tables.fields,
                "flag | default | meaning" => &mut tables.own,
                other => panic!("a table in README's Flags section with unknown columns: {other}"),
            });
            header = true;
            continue;
        }
        if header {
            header = false; // the |---| line
            continue;
        }
        current.as_mut().unwrap().push(cells);
    }
    tables
}

/// The flag names in a cell: each backticked word starting with `-`, without dashes or value.
fn flags_in(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.starts_with('-'))
        .map(|word| {
            let word = word.split([' ', '=']).next().unwrap();
            word.trim_start_matches('-').to_owned()
        })
        .collect()
}

/// The config fields in a cell: each backticked word that is not a flag.
fn fields_in(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| !word.starts_with('-'))
        .map(str::to_owned)
        .collect()
}

/// What `kproxy --help` prints.
fn help_text() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// What `kproxy --help` says of each flag (by every name it shows: long names, and `v`, `h`,
/// `V` for the short ones): its description, and whether it is a boolean (`[=<BOOL>]`).
fn help_entries() -> std::collections::BTreeMap<String, (String, bool)> {
    let help = help_text();
    let mut entries = std::collections::BTreeMap::new();
    let mut current: Option<(Vec<String>, String, bool)> = None;
    let mut finish = |c: Option<(Vec<String>, String, bool)>| {
        if let Some((names, text, boolean)) = c {
            for name in names {
                entries.insert(name, (text.trim().to_owned(), boolean));
            }
        }
    };
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            finish(current.take());
            // `-v, --v <LEVEL>  text`, `--cleanup[=<BOOL>]`, or the text on the next lines.
            let (spec, text) = match trimmed.find("  ") {
                Some(i) => (&trimmed[..i], &trimmed[i..]),
                None => (trimmed, ""),
            };
            let names = spec
                .split([' ', ','])
                .filter(|w| w.starts_with('-'))
                .map(|w| {
                    w.split('[')
                        .next()
                        .unwrap()
                        .trim_start_matches('-')
                        .to_owned()
                })
                .collect();
            current = Some((names, text.to_owned(), spec.contains("[=<BOOL>]")));
        } else if line.starts_with(' ') && !trimmed.is_empty() {
            if let Some((_, text, _)) = &mut current {
                text.push(' ');
                text.push_str(trimmed);
            }
        } else {
            finish(current.take()); // a heading or a blank line
        }
    }
    finish(current);
    entries
}

/// The default a description shows (`[default: X]`), if any.
fn shown_default(text: &str) -> Option<&str> {
    let start = text.find("[default: ")? + "[default: ".len();
    Some(&text[start..text.rfind(']')?])
}

#[test]
fn each_rows_default_is_the_one_help_shows() {
    let t = tables();
    let help = help_entries();
    let mut checked = 0;
    // (flag cell, default cell, the cell saying what kproxy does)
    let rows = t
        .upstream
        .iter()
        .map(|r| (&r[0], &r[2], &r[3]))
        .chain(t.own.iter().map(|r| (&r[0], &r[1], &r[2])));
    for (flags, default, says) in rows {
        if says.starts_with("ignored") {
            continue;
        }
        for flag in flags_in(flags) {
            // An alias (`--logging-format`) has no entry of its own.
            let Some((text, boolean)) = help.get(&flag) else {
                continue;
            };
            let readme = default.replace('`', "");
            let (readme, shown) = match (*boolean, shown_default(text)) {
                (true, None) => (
                    if readme.is_empty() {
                        "false".into()
                    } else {
                        readme
                    },
                    "false",
                ),
                (_, shown) => (readme, shown.unwrap_or("")),
            };
            let differs_to_it = says.starts_with("differs") && says.contains(&format!("`{shown}`"));
            assert!(
                readme == shown || differs_to_it,
                "--{flag}: README's default {readme:?}, --help's {shown:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} flags compared");
}

#[test]
fn help_states_defaults_only_as_default_brackets() {
    // So that the comparison above sees every default --help states.
    for (flag, (text, _)) in help_entries() {
        let rest = match text.find("[default: ") {
            Some(i) => &text[..i],
            None => &text,
        };
        assert!(
            !rest.to_lowercase().contains("default"),
            "--{flag}: a default outside [default: …]: {text}"
        );
    }
}

#[test]
fn cleanup_help_agrees_with_readme_that_it_covers_every_mode() {
    let help = help_entries();
    let (cleanup, _) = &help["cleanup"];
    let t = tables();
    let row = t
        .upstream
        .iter()
        .find(|r| flags_in(&r[0]) == ["cleanup"])
        .unwrap();
    assert!(row[3].contains("in every mode"), "{row:?}");
    assert!(cleanup.contains("in every mode"), "{cleanup}");
    assert!(!cleanup.contains("in this mode"), "{cleanup}");
}

/// Every flag `kproxy --help` shows (long names, and `v`, `h`, `V` for the short ones).
fn help_flags() -> BTreeSet<String> {
    let help = help_text();
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line
            .split([' ', ','])
            .take_while(|w| w.is_empty() || w.starts_with('-'))
        {
            if !word.is_empty() {
                let name = word.split('[').next().unwrap(); // `--cleanup[=<BOOL>]`
                flags.insert(name.trim_start_matches('-').to_owned());
            }
        }
    }
    assert!(
        flags.contains("proxy-mode") && flags.contains("v"),
        "{help}"
    );
    flags
}

fn names(rows: &[Row]) -> BTreeSet<String> {
    rows.iter().flat_map(|row| flags_in(&row[0])).collect()
}

#[test]
fn every_flag_kproxy_knows_has_a_row_and_every_row_is_a_flag_kproxy_knows() {
    let t = tables();
    let help = help_flags();
    let upstream = names(&t.upstream);
    let own = names(&t.own);
    let documented: BTreeSet<String> = upstream.union(&own).cloned().collect();
    let missing: Vec<&String> = help.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "flags without a README row: {missing:?}"
    );
    // A row's flag missing from --help must be an alias (`--logging-format`) the parser knows.
    let unknown: Vec<&String> = documented
        .difference(&help)
        .filter(|name| {
            let args = ["kproxy".to_owned(), format!("--{name}")];
            matches!(
                kproxy::config::parse(args),
                Err(kproxy::config::ConfigError::UnknownFlag(_))
            )
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "README rows for flags kproxy does not have: {unknown:?}"
    );
    for name in &own {
        assert!(
            !UPSTREAM_FLAGS.contains(&name.as_str()),
            "--{name} is upstream's: its row belongs in the upstream table"
        );
    }
}

#[test]
fn every_upstream_flag_has_a_row_saying_what_kproxy_does_with_it() {
    let t = tables();
    let upstream = names(&t.upstream);
    let listed: BTreeSet<String> = UPSTREAM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
    let mut extra = upstream.clone();
    extra.remove("h"); // `-h`, `--help`
    extra.remove("V"); // kproxy's `-V`, in the `--version` row
    assert_eq!(
        extra, listed,
        "the upstream table's flags vs upstream's flags"
    );
    for row in &t.upstream {
        assert_eq!(row.len(), 4, "{row:?}");
        assert!(
            VERDICTS.iter().any(|v| row[3].starts_with(v)),
            "{}: the last column starts with one of {VERDICTS:?}: {}",
            row[0],
            row[3]
        );
    }
}

#[test]
fn the_rows_marked_ignored_are_exactly_the_flags_kproxy_ignores() {
    let t = tables();
    let ignored: BTreeSet<String> = t
        .upstream
        .iter()
        .filter(|row| row[3].starts_with("ignored"))
        .flat_map(|row| flags_in(&row[0]))
        .collect();
    let code: BTreeSet<String> = kproxy::config::IGNORED_FLAGS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    assert_eq!(
        ignored, code,
        "README's ignored rows vs IGNORED_FLAGS (src/config/flags.rs)"
    );
}

#[test]
fn every_config_field_has_a_row_saying_what_kproxy_does_with_it() {
    let t = tables();
    let mut documented = BTreeSet::new();
    for row in &t.upstream {
        documented.extend(fields_in(&row[1]));
    }
    for row in &t.fields {
        assert_eq!(row.len(), 3, "{row:?}");
        assert!(
            VERDICTS.iter().any(|v| row[2].starts_with(v)),
            "{}: the last column starts with one of {VERDICTS:?}",
            row[0]
        );
        documented.extend(fields_in(&row[0]));
    }
    let missing: Vec<&&str> = V1ALPHA1_FIELDS
        .iter()
        .filter(|f| !documented.contains(**f))
        .collect();
    assert!(
        missing.is_empty(),
        "v1alpha1 fields without a README row: {missing:?}"
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|f| !V1ALPHA1_FIELDS.contains(&f.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "README names fields v1alpha1 does not have: {unknown:?}"
    );
}

#[test]
fn windows_only_flags_are_documented_and_refused_as_upstreams_linux_build_refuses_them() {
    let t = tables();
    let cells: String = t.fields.iter().map(|row| row[2].clone()).collect();
    let help = help_flags();
    for flag in WINDOWS_FLAGS {
        assert!(
            cells.contains(&format!("`--{flag}`")),
            "--{flag} in the fields table"
        );
        assert!(!help.contains(*flag), "--{flag} is not a Linux flag");
        let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .arg(format!("--{flag}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--{flag}");
    }
}
