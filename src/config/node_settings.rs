//! The settings of the node's own setup, resolved from flags and the file: local-traffic
//! detection (`--detect-local-mode` and its interfaces) and conntrack tuning (`--conntrack-*`).
//!
//! Invariants: each setting comes from its flag, else the file's field, else upstream's default;
//! an interface mode without its interface is an error naming the flag.

use std::time::Duration;

use ipnet::IpNet;

use super::{
    ConfigError, DetectLocal, bool_flag, duration_flag, file, flag, flags, nonzero, values,
};

/// `--detect-local-mode` (or `detectLocalMode`; ClusterCIDR when both are unset or empty, as
/// upstream) with the interface its interface modes need, which must not be empty.
pub(super) fn detect_local(
    m: &clap::ArgMatches,
    file: &file::FileConfig,
    cluster_cidrs: &[IpNet],
) -> Result<DetectLocal, ConfigError> {
    let invalid = |flag: &str, message: String| ConfigError::Invalid {
        flag: flag.to_owned(),
        message,
    };
    let mode = match flags::explicit(m, "detect-local-mode") {
        Some(v) => {
            values::parse_detect_local_mode(v).map_err(|e| invalid("--detect-local-mode", e))?
        }
        None => file.detect_local_mode.clone().unwrap_or_default(),
    };
    let text = |flag: &str, field: &Option<String>| {
        flags::explicit(m, flag)
            .map(str::to_owned)
            .or(field.clone())
            .filter(|s| !s.is_empty())
    };
    let interface = |flag: &str, field: &str, value: Option<String>| {
        value.ok_or_else(|| {
            invalid(
                "--detect-local-mode",
                format!("{mode} needs an interface: set --{flag} (or {field} in the config file)"),
            )
        })
    };
    Ok(match mode.as_str() {
        "NodeCIDR" => DetectLocal::NodeCidr,
        "BridgeInterface" => DetectLocal::BridgeInterface(interface(
            "pod-bridge-interface",
            "detectLocal.bridgeInterface",
            text("pod-bridge-interface", &file.bridge_interface),
        )?),
        "InterfaceNamePrefix" => DetectLocal::InterfaceNamePrefix(interface(
            "pod-interface-name-prefix",
            "detectLocal.interfaceNamePrefix",
            text("pod-interface-name-prefix", &file.interface_name_prefix),
        )?),
        _ => DetectLocal::ClusterCidr(cluster_cidrs.to_vec()),
    })
}

/// The conntrack tuning: each flag, else the file's field, else upstream's default.
pub(super) fn conntrack(
    m: &clap::ArgMatches,
    file: &file::ConntrackSection,
) -> Result<crate::conntrack::tuning::Tuning, ConfigError> {
    use crate::conntrack::tuning::{self, Tuning};
    Ok(Tuning {
        max_per_core: flag(m, "conntrack-max-per-core", values::parse_count)?
            .or(file.max_per_core)
            .unwrap_or(tuning::DEFAULT_MAX_PER_CORE),
        min: flag(m, "conntrack-min", values::parse_count)?
            .or(file.min)
            .unwrap_or(tuning::DEFAULT_MIN),
        tcp_established: tcp_timeout(
            duration_flag(m, "conntrack-tcp-timeout-established")?.or(file.tcp_established),
            tuning::DEFAULT_TCP_ESTABLISHED,
        ),
        tcp_close_wait: tcp_timeout(
            duration_flag(m, "conntrack-tcp-timeout-close-wait")?.or(file.tcp_close_wait),
            tuning::DEFAULT_TCP_CLOSE_WAIT,
        ),
        tcp_be_liberal: bool_flag(m, "conntrack-tcp-be-liberal")?
            .or(file.tcp_be_liberal)
            .unwrap_or(false),
        udp: nonzero(duration_flag(m, "conntrack-udp-timeout")?.or(file.udp)),
        udp_stream: nonzero(duration_flag(m, "conntrack-udp-timeout-stream")?.or(file.udp_stream)),
    })
}

/// A TCP timeout: unset is upstream's default; zero leaves the kernel's (`None`).
fn tcp_timeout(given: Option<Duration>, default: Duration) -> Option<Duration> {
    nonzero(Some(given.unwrap_or(default)))
}
