//! `/flagz`'s view of the command line: every flag kproxy knows, with the value it was given or
//! else its default, as upstream's flagz lists its whole flag set (`VisitAll`).
//!
//! Invariants: one entry per flag of [`super::flags::command`], sorted by name; a given value is
//! shown as given (a list flag's values joined by `,`, a bare boolean as `true`); a default is
//! the value that, given explicitly, changes nothing (tested), which for upstream's ignored flags
//! is upstream's default.

use clap::ArgMatches;

use super::flags;

/// Defaults that `resolve` (or upstream, for the ignored flags) applies but clap does not know.
/// Flags absent here and without a clap default show `false` (booleans) or nothing.
const DEFAULTS: &[(&str, &str)] = &[
    ("bind-address", "0.0.0.0"),
    ("config-sync-period", "15m0s"),
    ("conntrack-max-per-core", "32768"),
    ("conntrack-min", "131072"),
    ("conntrack-tcp-timeout-close-wait", "1h0m0s"),
    ("conntrack-tcp-timeout-established", "24h0m0s"),
    ("conntrack-udp-timeout", "0s"),
    ("conntrack-udp-timeout-stream", "0s"),
    ("healthz-port", "10256"),
    ("iptables-localhost-nodeports", "true"),
    ("iptables-masquerade-bit", "14"),
    ("ipvs-tcp-timeout", "0s"),
    ("ipvs-tcpfin-timeout", "0s"),
    ("ipvs-udp-timeout", "0s"),
    ("kube-api-burst", "10"),
    (
        "kube-api-content-type",
        "application/vnd.kubernetes.protobuf",
    ),
    ("kube-api-qps", "5"),
    ("log-flush-frequency", "5s"),
    ("log-json-info-buffer-size", "0"),
    ("log-text-info-buffer-size", "0"),
    ("manifests-max-file-size", "64Mi"),
    ("metrics-port", "10249"),
    ("oom-score-adj", "-999"),
];

/// Every flag with its value, sorted by name.
pub fn list(m: &ArgMatches) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = flags::command()
        .get_arguments()
        .map(|arg| {
            let name = arg.get_id().as_str();
            let value = match flags::explicit_list(m, name) {
                Some(given) => given.join(","),
                None => default(arg),
            };
            (name.to_owned(), value)
        })
        .collect();
    out.sort();
    out
}

/// The value a flag that was not given stands at.
fn default(arg: &clap::Arg) -> String {
    let name = arg.get_id().as_str();
    if let Some((_, v)) = DEFAULTS.iter().find(|(n, _)| *n == name) {
        return (*v).to_owned();
    }
    if let Some(v) = arg.get_default_values().first() {
        return v.to_string_lossy().into_owned();
    }
    if flags::is_boolean(arg) {
        return "false".to_owned();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Parsed, parse_with};

    fn parse(args: &[String]) -> Config {
        let argv = std::iter::once("kproxy".to_owned()).chain(args.iter().cloned());
        match parse_with(argv, &|| Ok("node1".to_owned())) {
            Ok(Parsed::Run(config)) => config,
            other => panic!("{args:?}: expected a config, got {other:?}"),
        }
    }

    fn value<'a>(c: &'a Config, name: &str) -> &'a str {
        let (_, v) = c.flagz.iter().find(|(n, _)| n == name).unwrap();
        v
    }

    #[test]
    fn flagz_lists_every_flag_once_sorted_with_given_values_as_given() {
        let args = [
            "--proxy-mode=iptables",
            "--masquerade-all",
            "--nodeport-addresses=10.0.0.0/8",
            "--nodeport-addresses=fd00::/64",
            "--iptables-sync-period=90s",
            "--conntrack-min=7",
        ]
        .map(String::from);
        let c = parse(&args);
        let names: Vec<&str> = c.flagz.iter().map(|(n, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted, each once");
        let all = super::flags::command().get_arguments().count();
        assert_eq!(names.len(), all);
        for (name, expected) in [
            ("proxy-mode", "iptables"),
            ("masquerade-all", "true"),
            ("nodeport-addresses", "10.0.0.0/8,fd00::/64"),
            ("iptables-sync-period", "90s"),
            ("conntrack-min", "7"),
            // Not given: defaults.
            ("ipvs-sync-period", "30s"),
            ("iptables-localhost-nodeports", "true"),
            ("oom-score-adj", "-999"),
            ("cleanup", "false"),
            ("kubeconfig", ""),
            ("write-config-to", ""),
            ("init-only", "false"),
        ] {
            assert_eq!(value(&c, name), expected, "{name}");
        }
    }

    /// Each default /flagz shows is the flag's real default: giving it changes nothing.
    #[test]
    fn every_default_flagz_shows_given_explicitly_changes_nothing() {
        let plain = parse(&[]);
        let comparable = |mut c: Config| {
            c.warnings.clear();
            c.flagz.clear();
            c
        };
        let mut checked = 0;
        for (name, default) in &plain.flagz {
            // Nothing to give for flags without a default (and an empty value is "unset").
            if default.is_empty() {
                continue;
            }
            let given = parse(&[format!("--{name}={default}")]);
            assert_eq!(value(&given, name), default);
            assert_eq!(
                comparable(given),
                comparable(plain.clone()),
                "--{name}={default}"
            );
            checked += 1;
        }
        assert!(checked > 30, "only {checked} defaults checked");
    }
}
