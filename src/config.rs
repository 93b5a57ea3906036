//! kproxy's configuration: upstream kube-proxy's command line and `--config` file, resolved.
//!
//! Precedence, per setting: a flag given on the command line, then the config file, then the
//! default (upstream's, except the mode: nftables). Upstream instead lets the file replace most
//! flags when `--config` is given (only `--hostname-override`, `-v` and `--master` survive);
//! kproxy lets every explicit flag win, which agrees with upstream for the flags real DaemonSets
//! pass alongside `--config`.
//!
//! Sync periods and `masqueradeAll` come from the file's section for the mode, as upstream's
//! v1alpha1 conversion reads them: `ipvs` (whose `masqueradeAll` lives in `iptables`), `nftables`,
//! or, for `iptables` and for a file that leaves the mode empty, `iptables`. The upstream
//! `--iptables-*sync-period` flags apply in every mode but ipvs, `--ipvs-*` only in ipvs;
//! kproxy's own `--sync-period`/`--min-sync-period` beat both.
//!
//! Invariants of a resolved [`Config`]: `sync_period > 0`; `node_name` is non-empty, trimmed
//! and lower-case; CIDRs are truncated to their networks; `cluster_cidrs` holds at most one
//! CIDR per family. Parsing touches the file system only to read `--config` and, without
//! `--hostname-override`, the host name.

mod checks;
mod client;
mod duration;
mod features;
mod file;
mod flags;
mod flagz;
mod node_settings;
mod values;
mod write;

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::backends::{BackendConfig, ProxyMode};

pub use client::ClientConnection;
pub use duration::{DurationError, format_go_duration, parse_go_duration};
pub use features::{Feature, FeatureGates, GATES as FEATURE_GATES, Gate, Stage};
pub use flags::{IGNORED as IGNORED_FLAGS, Kind as FlagKind};
pub use write::{
    CONFIGZ_GROUP, KubeProxyConfiguration, WriteConfigError, configz_json, document,
    write_config_file,
};

const DEFAULT_METRICS_PORT: u16 = 10249;
const DEFAULT_HEALTHZ_PORT: u16 = 10256;
const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub use crate::node::{DetectLocal, NodePortAddresses};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: ProxyMode,
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, overriding the kubeconfig's.
    pub master: Option<String>,
    /// The Node's name: `--hostname-override`, `hostnameOverride`, or the host name.
    pub node_name: String,
    pub cluster_cidrs: Vec<IpNet>,
    /// `--conntrack-*` / `conntrack.*`: the conntrack tuning done at start (and by
    /// `--init-only`).
    pub conntrack: crate::conntrack::tuning::Tuning,
    /// `--detect-local-mode` and what it needs (`--cluster-cidr`, `--pod-bridge-interface`,
    /// `--pod-interface-name-prefix` and the file's `detectLocal`).
    pub detect_local: DetectLocal,
    pub nodeport_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub metrics_bind_address: SocketAddr,
    pub healthz_bind_address: SocketAddr,
    /// `--bind-address-hard-fail` / `bindAddressHardFail`: a health or metrics address that
    /// cannot be bound ends kproxy; by default it is retried every 5 s, as upstream.
    pub bind_address_hard_fail: bool,
    pub config_file: Option<PathBuf>,
    pub cleanup: bool,
    /// `--init-only`: the privileged node setup, then exit.
    pub init_only: bool,
    /// `--cleanup-kube-proxy`: remove upstream kube-proxy's leftovers and exit.
    pub cleanup_kube_proxy: bool,
    /// The klog level (`-v`).
    pub verbosity: u8,
    /// Read objects from YAML files in this directory instead of the API server.
    pub manifests: Option<PathBuf>,
    /// `--manifests-max-file-size`: larger files are refused unread.
    pub manifests_max_file_size: u64,
    pub dry_run: bool,
    /// `--nftables-transport`: libnftables in-process, or the `nft` command (with elements
    /// over netlink, or not).
    pub nft_transport: crate::nftables::NftTransport,
    /// `--iptables-variant`.
    pub iptables_variant: crate::backends::iptables::VariantChoice,
    /// `--iptables-localhost-nodeports` / `iptables.localhostNodePorts` (default true).
    pub localhost_nodeports: bool,
    /// The packet-mark bit that asks for masquerading (default 14, 0x4000): nftables mode's
    /// `nftables.masqueradeBit`, or `--iptables-masquerade-bit` / `iptables.masqueradeBit`.
    pub masquerade_bit: u8,
    /// `--oom-score-adj` / `oomScoreAdj` (default -999, as upstream): written to
    /// `/proc/self/oom_score_adj` at start, so the OOM killer picks kproxy last.
    pub oom_score_adj: i32,
    /// `--ipvs-scheduler` / `ipvs.scheduler` (default rr).
    pub ipvs_scheduler: String,
    /// `--ipvs-strict-arp` / `ipvs.strictARP` (default false).
    pub ipvs_strict_arp: bool,
    /// `--ipvs-tcp-timeout` / `--ipvs-tcpfin-timeout` / `--ipvs-udp-timeout` and the file's.
    pub ipvs_timeouts: crate::backends::ipvs::Timeouts,
    pub log_format: LogFormat,
    /// Things the operator should know but that do not stop kproxy (ignored flags, unknown file
    /// fields); log each once logging is set up.
    pub warnings: Vec<String>,
    /// `--bind-address` / `bindAddress` (default 0.0.0.0): only its family matters to kproxy
    /// (the servers' default addresses); kept for `/configz` and `--write-config-to`.
    pub bind_address: IpAddr,
    /// `--hostname-override` / `hostnameOverride` as given (trimmed, lower-case); `None` when
    /// `node_name` is the host name, so a written configuration does not pin it.
    pub hostname_override: Option<String>,
    /// `--write-config-to`: write the configuration there as a KubeProxyConfiguration and exit.
    pub write_config_to: Option<PathBuf>,
    /// Every flag with its value, given or default, sorted by name (`/flagz`).
    pub flagz: Vec<(String, String)>,
    /// `--kube-api-qps`, `--kube-api-burst` / `clientConnection.*`: the API client's rate limit
    /// (content types are checked and warned about; kproxy speaks JSON).
    pub client: ClientConnection,
    /// `--feature-gates` / `featureGates`.
    pub feature_gates: FeatureGates,
}

impl Config {
    /// What the backend needs from the configuration.
    pub fn backend_config(&self) -> BackendConfig {
        BackendConfig {
            conntrack_tcp_be_liberal: self.conntrack.tcp_be_liberal,
            masquerade_all: self.masquerade_all,
            nft_transport: self.nft_transport,
            localhost_nodeports: self.localhost_nodeports,
            iptables_variant: self.iptables_variant,
            masquerade_bit: Some(self.masquerade_bit),
            ipvs_scheduler: self.ipvs_scheduler.clone(),
            ipvs_strict_arp: self.ipvs_strict_arp,
            ipvs_timeouts: self.ipvs_timeouts,
        }
    }
}

/// The outcome of reading the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "built once at start-up and matched at once; a Box would only add noise"
)]
pub enum Parsed {
    Run(Config),
    /// Print this to stdout and exit 0.
    Help(String),
    /// Print this to stdout and exit 0.
    Version(String),
}

/// Why the configuration is unusable. `Display` is one line naming the flag or file field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown flag {0}")]
    UnknownFlag(String),
    #[error("unexpected argument {0:?} (kproxy takes only flags)")]
    UnexpectedArgument(String),
    /// Any other command-line syntax error, as clap words it (naming the flag).
    #[error("{0}")]
    Usage(String),
    #[error("{flag}: {message}")]
    Invalid { flag: String, message: String },
    #[error("--config {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("cannot determine the node name: {0} (set --hostname-override)")]
    NodeName(String),
}

impl ConfigError {
    /// The process exit status for this error: 2, a usage error.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// Reads the command line (`args[0]` is the program name) and the `--config` file it names.
pub fn parse<I, T>(args: I) -> Result<Parsed, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_with(args, &read_hostname)
}

/// `parse`, with the host name supplied by `hostname` (for tests).
fn parse_with<I, T>(
    args: I,
    hostname: &dyn Fn() -> Result<String, String>,
) -> Result<Parsed, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = args.into_iter().map(|a| flags::normalize(a.into()));
    match flags::command().try_get_matches_from(args) {
        Ok(m) => resolve(&m, hostname).map(Parsed::Run),
        Err(err) => flags::convert(err),
    }
}

fn read_hostname() -> Result<String, String> {
    std::fs::read_to_string(HOSTNAME_FILE).map_err(|e| format!("reading {HOSTNAME_FILE}: {e}"))
}

/// Parses an explicit flag's value, naming the flag on error.
fn flag<T>(
    m: &clap::ArgMatches,
    name: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    flags::explicit(m, name)
        .map(|v| {
            parse(v).map_err(|message| ConfigError::Invalid {
                flag: format!("--{name}"),
                message,
            })
        })
        .transpose()
}

/// Upstream treats a zero timeout as unset.
fn nonzero(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

fn duration_flag(m: &clap::ArgMatches, name: &str) -> Result<Option<Duration>, ConfigError> {
    flag(m, name, |v| parse_go_duration(v).map_err(|e| e.to_string()))
}

fn bool_flag(m: &clap::ArgMatches, name: &str) -> Result<Option<bool>, ConfigError> {
    flag(m, name, values::parse_bool)
}

fn resolve(
    m: &clap::ArgMatches,
    hostname: &dyn Fn() -> Result<String, String>,
) -> Result<Config, ConfigError> {
    let mut warnings = flags::ignored_flags(m)?;
    let config_file = flags::explicit(m, "config")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let file = match &config_file {
        Some(path) => file::load(path)?,
        None => file::FileConfig::default(),
    };
    warnings.extend(file.warnings.iter().cloned());

    let flag_mode = flag(m, "proxy-mode", values::parse_mode)?.flatten();
    let mode = flag_mode.or(file.mode).unwrap_or(ProxyMode::Nftables);
    // The file section that applies: upstream reads an empty mode as iptables.
    let section_mode = flag_mode.or(file.mode).unwrap_or(ProxyMode::Iptables);
    let periods = match section_mode {
        ProxyMode::Ipvs => &file.ipvs,
        ProxyMode::Nftables => &file.nftables,
        ProxyMode::Iptables => &file.iptables,
    };
    let masquerade_section = match section_mode {
        ProxyMode::Nftables => &file.nftables,
        _ => &file.iptables,
    };
    let (sync_flag, min_sync_flag, other_prefix) = match mode {
        ProxyMode::Ipvs => ("ipvs-sync-period", "ipvs-min-sync-period", "iptables"),
        _ => ("iptables-sync-period", "iptables-min-sync-period", "ipvs"),
    };
    for suffix in ["sync-period", "min-sync-period"] {
        let name = format!("{other_prefix}-{suffix}");
        if flags::explicit(m, &name).is_some() {
            warnings.push(format!(
                "--{name} does not apply in {mode} mode and is ignored"
            ));
        }
    }

    let sync = period_flag(m, &["sync-period", sync_flag])?;
    if let Some((name, d)) = sync
        && d.is_zero()
    {
        return Err(ConfigError::Invalid {
            flag: format!("--{name}"),
            message: "must be greater than 0".to_owned(),
        });
    }
    let sync_period = sync
        .map(|(_, d)| d)
        .or(periods.sync_period)
        .unwrap_or(DEFAULT_SYNC_PERIOD);
    let min_sync_period = period_flag(m, &["min-sync-period", min_sync_flag])?
        .map(|(_, d)| d)
        .or(periods.min_sync_period)
        .unwrap_or(DEFAULT_MIN_SYNC_PERIOD);

    let bind_address = flag(m, "bind-address", values::parse_ip)?.or(file.bind_address);
    let ipv6 = bind_address.is_some_and(|ip| ip.is_ipv6());
    let (metrics_ip, healthz_ip) = if ipv6 {
        (
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        )
    };
    let metrics_bind_address = flag(m, "metrics-bind-address", |v| {
        values::parse_bind_address(v, DEFAULT_METRICS_PORT)
    })?
    .or(file.metrics_bind_address)
    .unwrap_or(SocketAddr::new(metrics_ip, DEFAULT_METRICS_PORT));
    // Checked in every mode, used in iptables and IPVS modes.
    let iptables_masquerade_bit = flag(m, "iptables-masquerade-bit", values::parse_masquerade_bit)?
        .or(file.iptables.masquerade_bit);
    let healthz_bind_address = flag(m, "healthz-bind-address", |v| {
        values::parse_bind_address(v, DEFAULT_HEALTHZ_PORT)
    })?
    .or(file.healthz_bind_address)
    .unwrap_or(SocketAddr::new(healthz_ip, DEFAULT_HEALTHZ_PORT));

    let nodeport_addresses = match flags::explicit_list(m, "nodeport-addresses") {
        Some(list) => {
            values::parse_nodeport_addresses(&list).map_err(|message| ConfigError::Invalid {
                flag: "--nodeport-addresses".to_owned(),
                message,
            })?
        }
        None => file.nodeport_addresses.clone(),
    }
    // Unset: `primary` in nftables mode, every address in the others, as upstream.
    .unwrap_or_else(|| match mode {
        ProxyMode::Nftables => NodePortAddresses::primary(),
        _ => NodePortAddresses::all(),
    });
    if nodeport_addresses.localhost && mode == ProxyMode::Ipvs {
        warnings.push(
            "--nodeport-addresses localhost: IPVS mode serves no NodePort on loopback, as upstream"
                .to_owned(),
        );
    }

    let cluster_cidrs = flag(m, "cluster-cidr", values::parse_cluster_cidrs)?
        .or(file.cluster_cidrs.clone())
        .unwrap_or_default();
    let detect_local = node_settings::detect_local(m, &file, &cluster_cidrs)?;
    let conntrack = node_settings::conntrack(m, &file.conntrack)?;
    let client = client::from_matches(m, &file.client, &mut warnings)?;
    let feature_gates = features::from_matches(m, &file.feature_gates, &mut warnings)?;
    if mode == ProxyMode::Ipvs && !feature_gates.enabled(Feature::KubeProxyIpvs) {
        return Err(ConfigError::Invalid {
            flag: if flag_mode.is_some() {
                "--proxy-mode"
            } else {
                "mode"
            }
            .to_owned(),
            message: "ipvs mode is disabled by the KubeProxyIPVS feature gate".to_owned(),
        });
    }

    warnings.extend(checks::manifests_ignore_the_api(m));
    let ipvs_scheduler = checks::ipvs_scheduler(m, &file, config_file.as_deref(), mode)?;

    Ok(Config {
        mode,
        kubeconfig: flags::explicit(m, "kubeconfig")
            .map(|p| (!p.is_empty()).then(|| PathBuf::from(p)))
            .unwrap_or(file.kubeconfig.clone()),
        master: flags::explicit(m, "master")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        node_name: node_name(m, file.hostname_override.as_deref(), hostname)?,
        cluster_cidrs,
        conntrack,
        detect_local,
        nodeport_addresses,
        masquerade_all: bool_flag(m, "masquerade-all")?
            .or(masquerade_section.masquerade_all)
            .unwrap_or(false),
        min_sync_period,
        sync_period,
        metrics_bind_address,
        healthz_bind_address,
        bind_address_hard_fail: bool_flag(m, "bind-address-hard-fail")?
            .or(file.bind_address_hard_fail)
            .unwrap_or(false),
        config_file,
        cleanup: bool_flag(m, "cleanup")?.unwrap_or(false),
        init_only: bool_flag(m, "init-only")?.unwrap_or(false),
        cleanup_kube_proxy: bool_flag(m, "cleanup-kube-proxy")?.unwrap_or(false),
        verbosity: flag(m, "v", values::parse_verbosity)?
            .or(file.verbosity)
            .unwrap_or(0),
        manifests: flags::explicit(m, "manifests")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        manifests_max_file_size: flag(m, "manifests-max-file-size", values::parse_size)?
            .unwrap_or(crate::watch::manifests::DEFAULT_MAX_FILE_SIZE),
        dry_run: bool_flag(m, "dry-run")?.unwrap_or(false),
        nft_transport: flag(m, "nftables-transport", values::parse_nft_transport)?
            .unwrap_or_default(),
        iptables_variant: flag(
            m,
            "iptables-variant",
            crate::backends::iptables::VariantChoice::parse,
        )?
        .unwrap_or_default(),
        localhost_nodeports: bool_flag(m, "iptables-localhost-nodeports")?
            .or(file.iptables.localhost_nodeports)
            .unwrap_or(true),
        // As upstream: nftables mode reads `nftables.masqueradeBit`; iptables and IPVS modes
        // (and an empty mode, as for masqueradeAll) `--iptables-masquerade-bit` / `iptables.`.
        masquerade_bit: match section_mode {
            ProxyMode::Nftables => file.nftables.masquerade_bit,
            _ => iptables_masquerade_bit,
        }
        .unwrap_or(14),
        oom_score_adj: flag(m, "oom-score-adj", values::parse_oom_score_adj)?
            .or(file.oom_score_adj)
            .unwrap_or(-999),
        ipvs_scheduler,
        ipvs_strict_arp: bool_flag(m, "ipvs-strict-arp")?
            .or(file.ipvs.strict_arp)
            .unwrap_or(false),
        ipvs_timeouts: crate::backends::ipvs::Timeouts {
            tcp: nonzero(duration_flag(m, "ipvs-tcp-timeout")?).or(file.ipvs.tcp_timeout),
            tcp_fin: nonzero(duration_flag(m, "ipvs-tcpfin-timeout")?)
                .or(file.ipvs.tcp_fin_timeout),
            udp: nonzero(duration_flag(m, "ipvs-udp-timeout")?).or(file.ipvs.udp_timeout),
        },
        log_format: flag(m, "log-format", values::parse_log_format)?
            .flatten()
            .or(file.log_format)
            .unwrap_or_default(),
        warnings,
        bind_address: bind_address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        hostname_override: flags::explicit(m, "hostname-override")
            .filter(|v| !v.is_empty())
            .or(file.hostname_override.as_deref())
            .map(|v| v.trim().to_lowercase()),
        write_config_to: flags::explicit(m, "write-config-to")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        flagz: flagz::list(m),
        client,
        feature_gates,
    })
}

/// The first of `names` given on the command line, with its value.
fn period_flag<'a>(
    m: &clap::ArgMatches,
    names: &[&'a str],
) -> Result<Option<(&'a str, Duration)>, ConfigError> {
    for name in names {
        if let Some(d) = duration_flag(m, name)? {
            return Ok(Some((*name, d)));
        }
    }
    Ok(None)
}

/// `--hostname-override`, else the file's `hostnameOverride`, else the host name; trimmed and
/// lower-cased, as upstream's `GetHostname`. An empty flag counts as unset, as upstream.
fn node_name(
    m: &clap::ArgMatches,
    from_file: Option<&str>,
    hostname: &dyn Fn() -> Result<String, String>,
) -> Result<String, ConfigError> {
    if let Some(v) = flags::explicit(m, "hostname-override").filter(|v| !v.is_empty()) {
        let name = v.trim();
        if name.is_empty() {
            return Err(ConfigError::Invalid {
                flag: "--hostname-override".to_owned(),
                message: "empty hostname-override is invalid".to_owned(),
            });
        }
        return Ok(name.to_lowercase());
    }
    let raw = match from_file {
        Some(name) => name.to_owned(),
        None => hostname().map_err(ConfigError::NodeName)?,
    };
    let name = raw.trim().to_lowercase();
    if name.is_empty() {
        return Err(ConfigError::NodeName("the host name is empty".to_owned()));
    }
    Ok(name)
}
