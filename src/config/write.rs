//! The effective configuration as upstream's `KubeProxyConfiguration` (v1alpha1): the JSON that
//! `/configz` serves and the YAML that `--write-config-to` writes, which `--config` reads back.
//!
//! Invariants: every field of upstream's v1alpha1 type is written (the YAML with its keys sorted,
//! as upstream's encoder writes them), so the file is complete for kproxy and for upstream
//! kube-proxy alike. What kproxy does not implement carries upstream's default
//! (`configSyncPeriod`, `winkernel`, ...), which `--config` reads without a warning;
//! `clientConnection.contentType` is what kproxy speaks, `application/json`. Like
//! upstream's conversion, the sync periods and `masqueradeAll` go into the section of the mode
//! (`masqueradeAll` of ipvs mode into `iptables`) and the other sections' sync periods are `0s`;
//! `masqueradeBit` goes into `nftables` in nftables mode and into `iptables` otherwise (the other
//! one: upstream's default, 14); `mode` is always explicit (kproxy's default, nftables, is not
//! upstream's).
//!
//! `--config FILE` alone gives back the configuration that was written, except what the file type
//! has no field for: `--master` (as upstream, a flag only), kproxy's own flags (`--manifests`,
//! `--dry-run`, `--nftables-transport`, ...) and the one-shot ones (`--cleanup`); pass them again.
//! One value is adjusted: a zero minimum sync period is written as `1ns`, because in the file a
//! zero means "the default, 1s" (upstream's defaulting, which kproxy follows). `/configz` shows
//! `0s`, the value in effect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::duration::format_go_duration;
use super::file::{API_VERSION, KIND};
use super::{Config, LogFormat, NodePortAddresses};
use crate::backends::ProxyMode;

/// The API group `/configz` files the configuration under, as upstream.
pub const CONFIGZ_GROUP: &str = "kubeproxy.config.k8s.io";

/// Upstream's v1alpha1 defaults for what kproxy does not implement.
const DEFAULT_MASQUERADE_BIT: u8 = 14;

/// Why `--write-config-to` failed; `Display` is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum WriteConfigError {
    #[error("--write-config-to {}: encoding the configuration: {source}", path.display())]
    Encode {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("--write-config-to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Upstream's `KubeProxyConfiguration` (k8s.io/kube-proxy config/v1alpha1/types.go), fields in
/// the order upstream's YAML encoder sorts them. `featureGates` (when empty) and
/// `windowsRunAsService` (false) are `omitempty` upstream and so absent here too.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    pub api_version: &'static str,
    pub bind_address: String,
    pub bind_address_hard_fail: bool,
    pub client_connection: ClientConnection,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    pub config_sync_period: String,
    pub conntrack: Conntrack,
    pub detect_local: DetectLocal,
    pub detect_local_mode: String,
    pub enable_profiling: bool,
    /// Every gate given, known to kproxy or not, as upstream writes its map.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub feature_gates: BTreeMap<String, bool>,
    pub healthz_bind_address: String,
    pub hostname_override: String,
    pub iptables: IptablesSection,
    pub ipvs: IpvsSection,
    pub kind: &'static str,
    pub logging: Logging,
    pub metrics_bind_address: String,
    pub mode: &'static str,
    pub nftables: NftablesSection,
    /// `null` (unset) for every local address outside nftables mode, as upstream writes it.
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: i32,
    pub port_range: String,
    pub show_hidden_metrics_for_version: String,
    pub winkernel: Winkernel,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    pub accept_content_types: String,
    pub burst: i32,
    pub content_type: String,
    pub kubeconfig: String,
    pub qps: Qps,
}

/// A float32 as Go's encoder writes it: `5`, not `5.0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Qps(pub f32);

impl Serialize for Qps {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let q = self.0;
        if q.fract() == 0.0 && q.abs() < 1e15 {
            s.serialize_i64(q as i64)
        } else {
            s.serialize_f64(f64::from(q))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conntrack {
    pub max_per_core: i32,
    pub min: i32,
    pub tcp_be_liberal: bool,
    pub tcp_close_wait_timeout: String,
    pub tcp_established_timeout: String,
    pub udp_stream_timeout: String,
    pub udp_timeout: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocal {
    pub bridge_interface: String,
    pub interface_name_prefix: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IptablesSection {
    pub localhost_node_ports: bool,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub min_sync_period: String,
    pub sync_period: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsSection {
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    pub min_sync_period: String,
    pub scheduler: String,
    #[serde(rename = "strictARP")]
    pub strict_arp: bool,
    pub sync_period: String,
    pub tcp_fin_timeout: String,
    pub tcp_timeout: String,
    pub udp_timeout: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NftablesSection {
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub min_sync_period: String,
    pub sync_period: String,
}

/// component-base's `LoggingConfiguration`, with its defaults (`vmodule` is `omitempty`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    pub flush_frequency: String,
    pub format: &'static str,
    pub options: LoggingOptions,
    pub verbosity: u8,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggingOptions {
    pub json: BufferOptions,
    pub text: BufferOptions,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BufferOptions {
    /// A Kubernetes quantity, which upstream writes as a string.
    pub info_buffer_size: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Winkernel {
    #[serde(rename = "enableDSR")]
    pub enable_dsr: bool,
    pub forward_health_check_vip: bool,
    pub network_name: String,
    pub root_hns_endpoint_name: String,
    pub source_vip: String,
}

/// `cfg` as a KubeProxyConfiguration: the values in effect, as `/configz` shows them.
pub fn document(cfg: &Config) -> KubeProxyConfiguration {
    let d = format_go_duration;
    let zero = || d(std::time::Duration::ZERO);
    let is = |mode: ProxyMode| cfg.mode == mode;
    let periods = |mode: ProxyMode| {
        if is(mode) {
            (d(cfg.min_sync_period), d(cfg.sync_period))
        } else {
            (zero(), zero())
        }
    };
    let bit_in = |nftables: bool| {
        if is(ProxyMode::Nftables) == nftables {
            cfg.masquerade_bit
        } else {
            DEFAULT_MASQUERADE_BIT
        }
    };
    let (ipt_min, ipt_sync) = periods(ProxyMode::Iptables);
    let (ipvs_min, ipvs_sync) = periods(ProxyMode::Ipvs);
    let (nft_min, nft_sync) = periods(ProxyMode::Nftables);
    let timeout = |t: Option<std::time::Duration>| t.map_or_else(zero, d);
    KubeProxyConfiguration {
        api_version: API_VERSION,
        bind_address: cfg.bind_address.to_string(),
        bind_address_hard_fail: cfg.bind_address_hard_fail,
        client_connection: ClientConnection {
            accept_content_types: String::new(),
            burst: cfg.client.burst,
            // What kproxy speaks, whatever was asked for (`config::client`).
            content_type: super::client::JSON.to_owned(),
            kubeconfig: cfg
                .kubeconfig
                .as_deref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            qps: Qps(cfg.client.qps),
        },
        cluster_cidr: cfg
            .cluster_cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        config_sync_period: d(std::time::Duration::from_secs(15 * 60)),
        conntrack: Conntrack {
            max_per_core: cfg.conntrack.max_per_core as i32,
            min: cfg.conntrack.min as i32,
            tcp_be_liberal: cfg.conntrack.tcp_be_liberal,
            tcp_close_wait_timeout: timeout(cfg.conntrack.tcp_close_wait),
            tcp_established_timeout: timeout(cfg.conntrack.tcp_established),
            udp_stream_timeout: timeout(cfg.conntrack.udp_stream),
            udp_timeout: timeout(cfg.conntrack.udp),
        },
        detect_local: DetectLocal {
            bridge_interface: match &cfg.detect_local {
                super::DetectLocal::BridgeInterface(name) => name.clone(),
                _ => String::new(),
            },
            interface_name_prefix: match &cfg.detect_local {
                super::DetectLocal::InterfaceNamePrefix(prefix) => prefix.clone(),
                _ => String::new(),
            },
        },
        // Never empty: what upstream's platform defaulting makes of an empty mode, too.
        detect_local_mode: cfg.detect_local.name().to_owned(),
        enable_profiling: false,
        feature_gates: cfg.feature_gates.given().clone(),
        healthz_bind_address: cfg.healthz_bind_address.to_string(),
        hostname_override: cfg.hostname_override.clone().unwrap_or_default(),
        iptables: IptablesSection {
            localhost_node_ports: cfg.localhost_nodeports,
            masquerade_all: cfg.masquerade_all && !is(ProxyMode::Nftables),
            masquerade_bit: bit_in(false),
            min_sync_period: ipt_min,
            sync_period: ipt_sync,
        },
        ipvs: IpvsSection {
            exclude_cidrs: None,
            min_sync_period: ipvs_min,
            scheduler: cfg.ipvs_scheduler.clone(),
            strict_arp: cfg.ipvs_strict_arp,
            sync_period: ipvs_sync,
            tcp_fin_timeout: timeout(cfg.ipvs_timeouts.tcp_fin),
            tcp_timeout: timeout(cfg.ipvs_timeouts.tcp),
            udp_timeout: timeout(cfg.ipvs_timeouts.udp),
        },
        kind: KIND,
        logging: Logging {
            flush_frequency: d(std::time::Duration::from_secs(5)),
            format: match cfg.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            options: LoggingOptions {
                json: BufferOptions {
                    info_buffer_size: "0".to_owned(),
                },
                text: BufferOptions {
                    info_buffer_size: "0".to_owned(),
                },
            },
            verbosity: cfg.verbosity,
        },
        metrics_bind_address: cfg.metrics_bind_address.to_string(),
        mode: cfg.mode.as_str(),
        nftables: NftablesSection {
            masquerade_all: cfg.masquerade_all && is(ProxyMode::Nftables),
            masquerade_bit: bit_in(true),
            min_sync_period: nft_min,
            sync_period: nft_sync,
        },
        // Every address, the default outside nftables mode: unset (`null`), as upstream writes
        // it; nftables mode's default shows as upstream's defaulting leaves it, `["primary"]`.
        node_port_addresses: (cfg.mode == ProxyMode::Nftables
            || cfg.nodeport_addresses != NodePortAddresses::all())
        .then(|| cfg.nodeport_addresses.words()),
        oom_score_adj: cfg.oom_score_adj,
        port_range: String::new(),
        show_hidden_metrics_for_version: String::new(),
        winkernel: Winkernel {
            enable_dsr: false,
            forward_health_check_vip: false,
            network_name: String::new(),
            root_hns_endpoint_name: String::new(),
            source_vip: String::new(),
        },
    }
}

/// `/configz`'s body: `{"kubeproxy.config.k8s.io": <the configuration>}`, as upstream's
/// configz handler writes its registry (with `apiVersion` and `kind`, as since 1.36).
pub fn configz_json(cfg: &Config) -> String {
    let body = std::collections::BTreeMap::from([(CONFIGZ_GROUP, document(cfg))]);
    serde_json::to_string(&body).expect("the configuration serialises to JSON")
}

/// The YAML `--write-config-to` writes: [`document`], with a zero minimum sync period as `1ns`.
pub fn to_yaml(cfg: &Config) -> Result<String, serde_yaml_ng::Error> {
    let mut doc = document(cfg);
    if cfg.min_sync_period.is_zero() {
        let one = format_go_duration(std::time::Duration::from_nanos(1));
        match cfg.mode {
            ProxyMode::Iptables => doc.iptables.min_sync_period = one,
            ProxyMode::Ipvs => doc.ipvs.min_sync_period = one,
            ProxyMode::Nftables => doc.nftables.min_sync_period = one,
        }
    }
    serde_yaml_ng::to_string(&doc)
}

/// `--write-config-to FILE`: writes [`to_yaml`] to `path` (created or truncated).
pub fn write_config_file(cfg: &Config, path: &Path) -> Result<(), WriteConfigError> {
    let text = to_yaml(cfg).map_err(|source| WriteConfigError::Encode {
        path: path.to_owned(),
        source,
    })?;
    std::fs::write(path, text).map_err(|source| WriteConfigError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
