//! The `--config` file: upstream's `KubeProxyConfiguration`, `kubeproxy.config.k8s.io/v1alpha1`.
//!
//! Every field of upstream's v1alpha1 type is known (`SCHEMA`); kproxy reads the ones it
//! implements and ignores the rest, so kubeadm's and other real configs load. Like upstream, a
//! field that is not in the schema is not fatal: upstream decodes strictly, and on failure
//! decodes v1alpha1 leniently and logs a warning (kubernetes#84143), because real configs carry
//! stale fields (`resourceContainer`, `udpIdleTimeout`, `conntrack.max`). kproxy warns, naming
//! each such field. A field of the wrong type, a bad value, or a wrong `apiVersion`/`kind` is an
//! error naming the field. Zero durations mean "unset", as upstream's defaulting reads them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde_yaml_ng::Value;

use super::duration::parse_go_duration;
use super::values::{
    parse_bind_address, parse_cluster_cidrs, parse_detect_local_mode, parse_ip, parse_log_format,
    parse_mode, parse_nodeport_addresses,
};
use super::{
    ConfigError, DEFAULT_HEALTHZ_PORT, DEFAULT_METRICS_PORT, LogFormat, NodePortAddresses,
};
use crate::backends::ProxyMode;

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// The shape of a field: a leaf kproxy does not look inside, or a struct with known fields.
enum Shape {
    Any,
    Struct(&'static [(&'static str, Shape)]),
}
use Shape::{Any, Struct};

/// Every field of upstream's v1alpha1 `KubeProxyConfiguration` (k8s.io/kube-proxy
/// config/v1alpha1/types.go), including `TypeMeta`. `logging` and `featureGates` belong to
/// component-base and are taken whole.
const SCHEMA: &[(&str, Shape)] = &[
    ("apiVersion", Any),
    ("kind", Any),
    ("featureGates", Any),
    (
        "clientConnection",
        Struct(&[
            ("kubeconfig", Any),
            ("acceptContentTypes", Any),
            ("contentType", Any),
            ("qps", Any),
            ("burst", Any),
        ]),
    ),
    ("logging", Any),
    ("hostnameOverride", Any),
    ("bindAddress", Any),
    ("healthzBindAddress", Any),
    ("metricsBindAddress", Any),
    ("bindAddressHardFail", Any),
    ("enableProfiling", Any),
    ("showHiddenMetricsForVersion", Any),
    ("mode", Any),
    (
        "iptables",
        Struct(&[
            ("masqueradeBit", Any),
            ("masqueradeAll", Any),
            ("localhostNodePorts", Any),
            ("snatNodeInternalIP", Any),
            ("syncPeriod", Any),
            ("minSyncPeriod", Any),
        ]),
    ),
    (
        "ipvs",
        Struct(&[
            ("syncPeriod", Any),
            ("minSyncPeriod", Any),
            ("scheduler", Any),
            ("excludeCIDRs", Any),
            ("strictARP", Any),
            ("tcpTimeout", Any),
            ("tcpFinTimeout", Any),
            ("udpTimeout", Any),
        ]),
    ),
    (
        "nftables",
        Struct(&[
            ("masqueradeBit", Any),
            ("masqueradeAll", Any),
            ("syncPeriod", Any),
            ("minSyncPeriod", Any),
        ]),
    ),
    (
        "winkernel",
        Struct(&[
            ("networkName", Any),
            ("sourceVip", Any),
            ("enableDSR", Any),
            ("rootHnsEndpointName", Any),
            ("forwardHealthCheckVip", Any),
        ]),
    ),
    ("detectLocalMode", Any),
    (
        "detectLocal",
        Struct(&[("bridgeInterface", Any), ("interfaceNamePrefix", Any)]),
    ),
    ("clusterCIDR", Any),
    ("nodePortAddresses", Any),
    ("oomScoreAdj", Any),
    (
        "conntrack",
        Struct(&[
            ("maxPerCore", Any),
            ("min", Any),
            ("tcpEstablishedTimeout", Any),
            ("tcpCloseWaitTimeout", Any),
            ("tcpBeLiberal", Any),
            ("udpTimeout", Any),
            ("udpStreamTimeout", Any),
        ]),
    ),
    ("configSyncPeriod", Any),
    ("portRange", Any),
    ("windowsRunAsService", Any),
];

/// One mode's section (`iptables`, `ipvs`, `nftables`); `None` where unset or zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModeSection {
    pub masquerade_all: Option<bool>,
    pub sync_period: Option<Duration>,
    pub min_sync_period: Option<Duration>,
    /// `iptables.localhostNodePorts` (read in every section; only `iptables` has it upstream).
    pub localhost_nodeports: Option<bool>,
    /// `masqueradeBit`; `None` when unset (upstream's default is 14).
    pub masquerade_bit: Option<u8>,
    /// `ipvs.scheduler`; `None` when unset or empty.
    pub scheduler: Option<String>,
    /// `ipvs.strictARP`.
    pub strict_arp: Option<bool>,
    /// `ipvs.tcpTimeout`, `ipvs.tcpFinTimeout`, `ipvs.udpTimeout`; `None` where unset or zero.
    pub tcp_timeout: Option<Duration>,
    pub tcp_fin_timeout: Option<Duration>,
    pub udp_timeout: Option<Duration>,
}

/// The file's `conntrack` section; `None` where unset or null.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConntrackSection {
    pub max_per_core: Option<u32>,
    pub min: Option<u32>,
    pub tcp_established: Option<Duration>,
    pub tcp_close_wait: Option<Duration>,
    pub tcp_be_liberal: Option<bool>,
    pub udp: Option<Duration>,
    pub udp_stream: Option<Duration>,
}

/// What kproxy takes from the file; `None` where the file leaves the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileConfig {
    pub mode: Option<ProxyMode>,
    pub kubeconfig: Option<PathBuf>,
    pub hostname_override: Option<String>,
    pub bind_address: Option<IpAddr>,
    pub cluster_cidrs: Option<Vec<IpNet>>,
    /// `conntrack.*`; `None` where unset (or null).
    pub conntrack: ConntrackSection,
    /// `detectLocalMode` (checked; `None` when unset or empty).
    pub detect_local_mode: Option<String>,
    /// `detectLocal.bridgeInterface`, `detectLocal.interfaceNamePrefix`.
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
    pub nodeport_addresses: Option<NodePortAddresses>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub healthz_bind_address: Option<SocketAddr>,
    pub iptables: ModeSection,
    pub ipvs: ModeSection,
    pub nftables: ModeSection,
    pub verbosity: Option<u8>,
    pub log_format: Option<LogFormat>,
    /// `oomScoreAdj`.
    pub oom_score_adj: Option<i32>,
    /// `bindAddressHardFail`.
    pub bind_address_hard_fail: Option<bool>,
    /// `clientConnection.{qps,burst,contentType,acceptContentTypes}`.
    pub client: super::client::FileClient,
    /// `featureGates`, as given (checked by `features::FeatureGates::resolve`).
    pub feature_gates: std::collections::BTreeMap<String, bool>,
    /// Start-up warnings: unknown fields, settings kproxy does not honour.
    pub warnings: Vec<String>,
}

/// Reads and decodes the file at `path`.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: format!("cannot read: {e}"),
    })?;
    decode(&text).map_err(|message| ConfigError::File {
        path: path.to_owned(),
        message,
    })
}

/// Decodes a file's text; the error is one line, naming the field where there is one.
pub fn decode(text: &str) -> Result<FileConfig, String> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    if !doc.is_mapping() {
        return Err("not a KubeProxyConfiguration (want a YAML mapping)".to_owned());
    }
    let api_version = string(&doc, "apiVersion")?.unwrap_or_default();
    if api_version != API_VERSION {
        return Err(format!(
            "apiVersion: unsupported value {api_version:?} (want {API_VERSION})"
        ));
    }
    let kind = string(&doc, "kind")?.unwrap_or_default();
    if kind != KIND {
        return Err(format!("kind: unsupported value {kind:?} (want {KIND})"));
    }
    let mut warnings = Vec::new();
    unknown_fields(&doc, SCHEMA, "", &mut warnings)?;

    let addr = |field: &str, port: u16| -> Result<Option<SocketAddr>, String> {
        string(&doc, field)?
            .filter(|s| !s.is_empty())
            .map(|s| parse_bind_address(&s, port).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    Ok(FileConfig {
        mode: parsed(&doc, "mode", parse_mode)?.flatten(),
        kubeconfig: string(&doc, "clientConnection.kubeconfig")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        hostname_override: string(&doc, "hostnameOverride")?.filter(|s| !s.is_empty()),
        bind_address: string(&doc, "bindAddress")?
            .filter(|s| !s.is_empty())
            .map(|s| parse_ip(&s).map_err(|e| format!("bindAddress: {e}")))
            .transpose()?,
        cluster_cidrs: parsed(&doc, "clusterCIDR", parse_cluster_cidrs)?,
        conntrack: conntrack(&doc)?,
        detect_local_mode: parsed(&doc, "detectLocalMode", parse_detect_local_mode)?
            .filter(|m| !m.is_empty()),
        bridge_interface: string(&doc, "detectLocal.bridgeInterface")?.filter(|s| !s.is_empty()),
        interface_name_prefix: string(&doc, "detectLocal.interfaceNamePrefix")?
            .filter(|s| !s.is_empty()),
        nodeport_addresses: strings(&doc, "nodePortAddresses")?
            .map(|list| {
                parse_nodeport_addresses(&list).map_err(|e| format!("nodePortAddresses: {e}"))
            })
            .transpose()?
            .flatten(),
        metrics_bind_address: addr("metricsBindAddress", DEFAULT_METRICS_PORT)?,
        healthz_bind_address: addr("healthzBindAddress", DEFAULT_HEALTHZ_PORT)?,
        iptables: section(&doc, "iptables")?,
        ipvs: section(&doc, "ipvs")?,
        nftables: section(&doc, "nftables")?,
        verbosity: integer(&doc, "logging.verbosity", 0, 255)?.map(|n| n as u8),
        log_format: parsed(&doc, "logging.format", parse_log_format)?.flatten(),
        bind_address_hard_fail: boolean(&doc, "bindAddressHardFail")?,
        oom_score_adj: integer(&doc, "oomScoreAdj", -1000, 1000)?.map(|n| n as i32),
        client: client(&doc)?,
        feature_gates: feature_gates(&doc)?,
        warnings,
    })
}

fn client(doc: &Value) -> Result<super::client::FileClient, String> {
    let qps = lookup(doc, "clientConnection.qps")
        .map(|v| {
            v.as_f64()
                .filter(|q| q.is_finite() && q.abs() <= f64::from(f32::MAX))
                .map(|q| q as f32)
                .ok_or_else(|| "clientConnection.qps: want a number".to_owned())
        })
        .transpose()?;
    Ok(super::client::FileClient {
        qps,
        burst: integer(
            doc,
            "clientConnection.burst",
            i32::MIN.into(),
            i32::MAX.into(),
        )?
        .map(|n| n as i32),
        content_type: string(doc, "clientConnection.contentType")?,
        accept_content_types: string(doc, "clientConnection.acceptContentTypes")?,
    })
}

/// `featureGates`: a map of gate names to booleans.
fn feature_gates(doc: &Value) -> Result<std::collections::BTreeMap<String, bool>, String> {
    let Some(value) = lookup(doc, "featureGates") else {
        return Ok(Default::default());
    };
    let map = value
        .as_mapping()
        .ok_or_else(|| "featureGates: want a map of gate names to true or false".to_owned())?;
    map.iter()
        .map(|(k, v)| {
            let name = k
                .as_str()
                .ok_or_else(|| format!("featureGates: {k:?} is not a gate name"))?;
            let on = v
                .as_bool()
                .ok_or_else(|| format!("featureGates.{name}: want true or false"))?;
            Ok((name.to_owned(), on))
        })
        .collect()
}

/// Walks `value` against `schema`, warning about each unknown field by its dotted path.
/// A known struct field holding something other than a mapping is an error.
fn unknown_fields(
    value: &Value,
    schema: &[(&str, Shape)],
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let Some(map) = value.as_mapping() else {
        return Err(format!("{prefix}: want a mapping"));
    };
    for (key, child) in map {
        let name = key
            .as_str()
            .map_or_else(|| format!("{key:?}"), str::to_owned);
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match schema.iter().find(|(field, _)| *field == name) {
            None => warnings.push(format!(
                "unknown field {path:?} in the --config file is ignored"
            )),
            Some((_, Struct(fields))) if !child.is_null() => {
                unknown_fields(child, fields, &path, warnings)?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The value at a dotted path; `None` if it, or a parent, is absent or null.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(doc, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

fn string(doc: &Value, path: &str) -> Result<Option<String>, String> {
    match lookup(doc, path) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{path}: want a string")),
    }
}

fn boolean(doc: &Value, path: &str) -> Result<Option<bool>, String> {
    match lookup(doc, path) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{path}: want true or false")),
    }
}

/// An integer field from `min` to `max` (so any integer type that holds that range).
fn integer(doc: &Value, path: &str, min: i64, max: i64) -> Result<Option<i64>, String> {
    lookup(doc, path)
        .map(|v| {
            v.as_i64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{path}: want an integer from {min} to {max}"))
        })
        .transpose()
}

fn strings(doc: &Value, path: &str) -> Result<Option<Vec<String>>, String> {
    let Some(value) = lookup(doc, path) else {
        return Ok(None);
    };
    let items = value
        .as_sequence()
        .ok_or_else(|| format!("{path}: want a list of strings"))?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{path}: want a list of strings"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A string field run through `parse`, with the field's path on the error.
fn parsed<T>(
    doc: &Value,
    path: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    string(doc, path)?
        .map(|s| parse(&s).map_err(|e| format!("{path}: {e}")))
        .transpose()
}

fn conntrack(doc: &Value) -> Result<ConntrackSection, String> {
    let duration = |field: &str| -> Result<Option<Duration>, String> {
        parsed(doc, &format!("conntrack.{field}"), |s| {
            parse_go_duration(s).map_err(|e| e.to_string())
        })
    };
    let count = |field: &str| -> Result<Option<u32>, String> {
        Ok(integer(doc, &format!("conntrack.{field}"), 0, i32::MAX as i64)?.map(|n| n as u32))
    };
    Ok(ConntrackSection {
        max_per_core: count("maxPerCore")?,
        min: count("min")?,
        tcp_established: duration("tcpEstablishedTimeout")?,
        tcp_close_wait: duration("tcpCloseWaitTimeout")?,
        tcp_be_liberal: boolean(doc, "conntrack.tcpBeLiberal")?,
        udp: duration("udpTimeout")?,
        udp_stream: duration("udpStreamTimeout")?,
    })
}

fn section(doc: &Value, name: &str) -> Result<ModeSection, String> {
    let masquerade_all = boolean(doc, &format!("{name}.masqueradeAll"))?;
    let localhost_nodeports = boolean(doc, &format!("{name}.localhostNodePorts"))?;
    let masquerade_bit = integer(doc, &format!("{name}.masqueradeBit"), 0, 31)?.map(|n| n as u8);
    let duration = |field: &str| -> Result<Option<Duration>, String> {
        let path = format!("{name}.{field}");
        let d = parsed(doc, &path, |s| {
            parse_go_duration(s).map_err(|e| e.to_string())
        })?;
        // Upstream defaulting treats zero as unset.
        Ok(d.filter(|d| !d.is_zero()))
    };
    let strict_arp = boolean(doc, &format!("{name}.strictARP"))?;
    let scheduler = string(doc, &format!("{name}.scheduler"))?.filter(|s| !s.is_empty());
    Ok(ModeSection {
        masquerade_all,
        sync_period: duration("syncPeriod")?,
        min_sync_period: duration("minSyncPeriod")?,
        localhost_nodeports,
        masquerade_bit,
        scheduler,
        strict_arp,
        tcp_timeout: duration("tcpTimeout")?,
        tcp_fin_timeout: duration("tcpFinTimeout")?,
        udp_timeout: duration("udpTimeout")?,
    })
}
