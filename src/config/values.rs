//! Parsers for the values flags and config-file fields share, with upstream's syntax.
//!
//! Each returns a one-line reason that quotes the bad input but does not name the flag or field;
//! the caller prefixes that (`--cluster-cidr: ...`, `clusterCIDR: ...`). CIDRs come back
//! truncated to their network address (`10.0.0.1/8` is `10.0.0.0/8`), as Go's `ParseCIDR` does.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;

use super::{LogFormat, NodePortAddresses};
use crate::backends::ProxyMode;

/// Go's `strconv.ParseBool`, which pflag uses for boolean flags.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (want true or false)")),
    }
}

/// A proxy mode; empty means "the default" (`None`), as upstream's `--proxy-mode=""`.
pub fn parse_mode(s: &str) -> Result<Option<ProxyMode>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    ProxyMode::from_str(s)
        .map(Some)
        .map_err(|_| format!("unknown value {s:?} (want nftables, iptables or ipvs)"))
}

/// `text` or `json`; empty means the default.
pub fn parse_log_format(s: &str) -> Result<Option<LogFormat>, String> {
    match s {
        "" => Ok(None),
        "text" => Ok(Some(LogFormat::Text)),
        "json" => Ok(Some(LogFormat::Json)),
        _ => Err(format!("unknown value {s:?} (want text or json)")),
    }
}

/// How nftables mode reaches the kernel: `library` (libnftables in-process), `netlink` (the
/// `nft` command, elements over netlink) or `command` (the `nft` command for everything).
pub fn parse_nft_transport(s: &str) -> Result<crate::nftables::NftTransport, String> {
    use crate::nftables::NftTransport;
    match s {
        "library" => Ok(NftTransport::Library),
        "netlink" => Ok(NftTransport::Netlink),
        "command" => Ok(NftTransport::Command),
        _ => Err(format!(
            "unknown value {s:?} (want library, netlink or command)"
        )),
    }
}

/// The schedulers the Linux kernel's IPVS has (net/netfilter/ipvs/Kconfig: one `ip_vs_NAME`
/// module each). Upstream once listed ten of them in its validation; today it probes the kernel
/// with a dummy virtual server at start, so every kernel scheduler is accepted.
pub const IPVS_SCHEDULERS: [&str; 14] = [
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "fo", "ovf", "sed", "nq", "mh", "twos",
];

/// `--ipvs-scheduler` / `ipvs.scheduler`: one of the kernel's IPVS schedulers.
pub fn parse_ipvs_scheduler(s: &str) -> Result<String, String> {
    if IPVS_SCHEDULERS.contains(&s) {
        return Ok(s.to_owned());
    }
    Err(format!(
        "unknown IPVS scheduler {s:?} (want one of {})",
        IPVS_SCHEDULERS.join(", ")
    ))
}

/// `--iptables-masquerade-bit`: the bit of the packet mark that asks for masquerading, 0 to 31.
pub fn parse_masquerade_bit(s: &str) -> Result<u8, String> {
    s.parse::<u8>()
        .ok()
        .filter(|b| *b <= 31)
        .ok_or_else(|| format!("invalid bit {s:?} (want 0 to 31)"))
}

/// `--conntrack-max-per-core`, `--conntrack-min`: upstream's int32, not negative.
pub fn parse_count(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= i32::MAX as u32)
        .ok_or_else(|| {
            format!(
                "invalid value {s:?} (want an integer from 0 to {})",
                i32::MAX
            )
        })
}

/// `--oom-score-adj`: what the kernel accepts in `/proc/PID/oom_score_adj`.
pub fn parse_oom_score_adj(s: &str) -> Result<i32, String> {
    s.parse::<i32>()
        .ok()
        .filter(|n| (-1000..=1000).contains(n))
        .ok_or_else(|| format!("invalid value {s:?} (want an integer from -1000 to 1000)"))
}

/// A size in bytes: a number, optionally with a binary suffix (`Ki`, `Mi`, `Gi`), as
/// Kubernetes quantities write them (`64Mi`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (number, shift) = [("Ki", 10), ("Mi", 20), ("Gi", 30)]
        .iter()
        .find_map(|(suffix, shift)| s.strip_suffix(suffix).map(|n| (n, *shift)))
        .unwrap_or((s, 0));
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!("invalid size {s:?} (want bytes, or a number with Ki, Mi or Gi, above 0)")
        })
}

/// A klog verbosity level.
pub fn parse_verbosity(s: &str) -> Result<u8, String> {
    s.parse()
        .map_err(|_| format!("invalid level {s:?} (want 0 to 255)"))
}

/// `ip:port`, `[v6]:port`, or a bare IP (`v4`, `v6` or `[v6]`), which gets `default_port`.
pub fn parse_bind_address(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, default_port)),
        Err(_) if s.is_empty() => {
            Err("empty address (disabling the server is not supported)".to_owned())
        }
        Err(_) => Err(format!(
            "invalid address {s:?} (want IP, IP:port or [IPv6]:port)"
        )),
    }
}

/// A bare IP address, as upstream's `--bind-address`.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("invalid IP address {s:?}"))
}

/// One CIDR, truncated to its network.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    IpNet::from_str(s)
        .map(|net| net.trunc())
        .map_err(|_| format!("invalid CIDR {s:?}"))
}

/// Upstream's cluster CIDR: comma-separated, at most one per family. Empty means none.
pub fn parse_cluster_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    let cidrs = s
        .split(',')
        .map(|part| parse_cidr(part.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    match cidrs.as_slice() {
        [_] => Ok(cidrs),
        [a, b] if a.addr().is_ipv4() != b.addr().is_ipv4() => Ok(cidrs),
        [_, _] => Err(format!(
            "{s:?} holds two CIDRs of one family (want at most one IPv4 and one IPv6)"
        )),
        _ => Err(format!(
            "{s:?} holds more than two CIDRs (want at most one IPv4 and one IPv6)"
        )),
    }
}

/// Upstream's NodePort addresses (1.37): CIDRs and the keywords `primary` (the Node's primary
/// IPs), `localhost` (127.0.0.1 and ::1) and `all` (every local address), in any combination;
/// `None` for an empty list (the mode's default). Each item may itself be comma-separated, as
/// a pflag string slice is.
pub fn parse_nodeport_addresses<S: AsRef<str>>(
    items: &[S],
) -> Result<Option<NodePortAddresses>, String> {
    let words: Vec<&str> = items
        .iter()
        .flat_map(|item| item.as_ref().split(','))
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Ok(None);
    }
    let mut out = NodePortAddresses::cidrs(Vec::new());
    for word in words {
        match word {
            "all" => out.all = true,
            "primary" => out.primary = true,
            "localhost" => out.localhost = true,
            cidr => out.cidrs.push(parse_cidr(cidr).map_err(|e| {
                format!("{e} (want CIDRs, or the keywords primary, localhost, all)")
            })?),
        }
    }
    Ok(Some(out))
}

/// Upstream's `--detect-local-mode` names; empty means ClusterCIDR, as upstream defaults it.
pub const DETECT_LOCAL_MODES: &[&str] = &[
    "ClusterCIDR",
    "NodeCIDR",
    "BridgeInterface",
    "InterfaceNamePrefix",
];

/// Checks a `--detect-local-mode` / `detectLocalMode` value (exact case, as upstream).
pub fn parse_detect_local_mode(s: &str) -> Result<String, String> {
    if s.is_empty() || DETECT_LOCAL_MODES.contains(&s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "unsupported value {s:?} (want one of {})",
            DETECT_LOCAL_MODES.join(", ")
        ))
    }
}
