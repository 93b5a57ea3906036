//! Validation shared by every source: Kubernetes objects in, model values out, or a `Rejection`
//! naming why the API server would have refused the object. Nothing invalid reaches a backend.
//!
//! Invariants: pure functions; `Ok(None)` means "valid but ignored, as upstream" (headless,
//! ExternalName, service-proxy-name label, headless-labelled or FQDN slices). Objects a source
//! ignores are checked only for their name: upstream never looks further into them either.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::SystemTime;

use crate::model::Place;

use k8s_openapi::api::core::v1::{Node, Service as K8sService, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    IpFamily, NamespacedName, NodeInfo, Service, ServicePort, ServicePortName, ServiceType, Slice,
    SliceEndpoint, SlicePort, TrafficPolicy,
};
use fields::{
    bad_port, invalid, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, label,
    missing_name, namespaced_name, parse_all, parse_cidr, parse_ip, parse_port, parse_protocol,
};

/// Label that hands a Service to another proxy (upstream's informers select it out).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label on the EndpointSlices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Annotation carrying the time of the change that produced an EndpointSlice.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Node label naming the node's zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// Session affinity timeout when `timeoutSeconds` is unset (upstream's default, 3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The API server's upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds` (1 day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;

/// Why an object was rejected; the label value of `kproxy_rejected_objects_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The file or document is not YAML/JSON at all.
    Parse,
    /// A field has the wrong type, or the document is not a known object.
    WrongType,
    /// metadata.name or metadata.namespace (or another required field) is missing or invalid.
    MissingName,
    BadIp,
    BadPort,
    BadProtocol,
    /// Any other value the API server would refuse (bad CIDR, unknown policy, ...).
    Invalid,
    /// A manifests file larger than `--manifests-max-file-size` (not read).
    TooLarge,
    /// A manifests file nesting collections deeper than the limit (not parsed).
    TooDeep,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Parse,
        RejectReason::WrongType,
        RejectReason::MissingName,
        RejectReason::BadIp,
        RejectReason::BadPort,
        RejectReason::BadProtocol,
        RejectReason::Invalid,
        RejectReason::TooLarge,
        RejectReason::TooDeep,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Parse => "parse",
            RejectReason::WrongType => "wrong_type",
            RejectReason::MissingName => "missing_name",
            RejectReason::BadIp => "bad_ip",
            RejectReason::BadPort => "bad_port",
            RejectReason::BadProtocol => "bad_protocol",
            RejectReason::Invalid => "invalid",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooDeep => "too_deep",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// A Service, expanded into service ports; `Ok(None)` when kproxy ignores it.
pub fn service(svc: &K8sService) -> Result<Option<Service>, Rejection> {
    let name = namespaced_name(&svc.metadata, is_dns1035_label)?;
    let spec = match &svc.spec {
        Some(spec) if label(&svc.metadata, LABEL_SERVICE_PROXY_NAME).is_none() => spec,
        _ => return Ok(None),
    };
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIP,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(None),
        Some(other) => return Err(invalid(format!("spec.type: unsupported value {other:?}"))),
    };
    let Some(cluster_ips) = cluster_ips(spec)? else {
        return Ok(None);
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() {
        return Err(Rejection::new(
            RejectReason::BadPort,
            "spec.ports: Required value",
        ));
    }
    let external_ips = parse_all(spec.external_ips.as_deref(), "spec.externalIPs", parse_ip)?;
    let load_balancer_ips = match service_type {
        ServiceType::LoadBalancer => load_balancer_ips(svc)?,
        _ => Vec::new(),
    };
    let load_balancer_source_ranges = parse_all(
        spec.load_balancer_source_ranges.as_deref(),
        "spec.loadBalancerSourceRanges",
        |s, field| parse_cidr(s.trim(), field),
    )?;
    let affinity_timeout_seconds = affinity(spec)?;
    let created = svc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0));
    let external_traffic_policy = traffic_policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
    )?;
    let internal_traffic_policy = traffic_policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
    )?;
    // As upstream's NeedsHealthCheck: only LoadBalancers with eTP=Local get a health check port.
    let health_check_node_port = match (spec.health_check_node_port, service_type) {
        (Some(p), ServiceType::LoadBalancer) if external_traffic_policy == TrafficPolicy::Local => {
            Some(parse_port(p, "spec.healthCheckNodePort")?)
        }
        _ => None,
    };

    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let mut out = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port_name = p.name.clone().unwrap_or_default();
        if port_name.is_empty() && ports.len() > 1 {
            return Err(bad_port(format!(
                "{field}.name: Required value with more than one port"
            )));
        }
        if !port_name.is_empty() && !is_dns1123_label(&port_name) {
            return Err(bad_port(format!(
                "{field}.name: {port_name:?} is not a DNS-1123 label"
            )));
        }
        if !names.insert(port_name.clone()) {
            return Err(bad_port(format!(
                "{field}.name: Duplicate value {port_name:?}"
            )));
        }
        let protocol = parse_protocol(p.protocol.as_deref(), &field)?;
        let port = parse_port(p.port, &format!("{field}.port"))?;
        if !numbers.insert((port, protocol)) {
            return Err(bad_port(format!(
                "{field}: Duplicate value {port}/{protocol}"
            )));
        }
        let node_port = match (p.node_port, service_type) {
            (None, _) => None,
            (Some(_), ServiceType::ClusterIP) => {
                return Err(bad_port(format!(
                    "{field}.nodePort: may not be used when type is 'ClusterIP'"
                )));
            }
            (Some(n), _) => Some(parse_port(n, &format!("{field}.nodePort"))?),
        };
        out.push(ServicePort {
            name: ServicePortName::new(name.clone(), port_name, protocol),
            service_type,
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            affinity_timeout_seconds,
            external_traffic_policy,
            internal_traffic_policy,
            health_check_node_port,
            traffic_distribution: spec.traffic_distribution.clone(),
            created,
        });
    }
    Ok(Some(Service {
        name,
        ports: out,
        has_selector: spec.selector.is_some(),
        origin: None,
    }))
}

/// An EndpointSlice, keyed by its own namespace/name; `Ok(None)` when kproxy ignores it.
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<Option<(NamespacedName, Slice)>, Rejection> {
    let key = object_key(&slice.metadata)?;
    if label(&slice.metadata, LABEL_HEADLESS).is_some() {
        return Ok(None);
    }
    let Some(service) = label(&slice.metadata, LABEL_SERVICE_NAME).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(None),
        other => return Err(invalid(format!("addressType: unsupported value {other:?}"))),
    };

    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let Some(port) = p.port else { continue };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            port: parse_port(port, &format!("{field}.port"))?,
            protocol: parse_protocol(p.protocol.as_deref(), &field)?,
        });
    }

    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        let mut ips = Vec::with_capacity(ep.addresses.len());
        for (j, a) in ep.addresses.iter().enumerate() {
            let ip = parse_ip(a, &format!("{field}[{j}]"))?;
            if IpFamily::of(&ip) != family {
                return Err(Rejection::new(
                    RejectReason::BadIp,
                    format!(
                        "{field}[{j}]: {a} is not of addressType {}",
                        slice.address_type
                    ),
                ));
            }
            ips.push(ip);
        }
        let Some(&ip) = ips.first() else {
            return Err(Rejection::new(
                RejectReason::BadIp,
                format!("{field}: Required value"),
            ));
        };
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let hints = ep.hints.as_ref();
        endpoints.push(SliceEndpoint {
            ip,
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            place: Place::intern(Place {
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_else(BTreeSet::new),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n.iter().map(|n| n.name.clone()).collect())
                    .unwrap_or_else(BTreeSet::new),
            }),
        });
    }

    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TRIGGER_TIME))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(SystemTime::from);
    let service = NamespacedName::new(key.namespace.clone(), service);
    Ok(Some((
        key,
        Slice {
            service,
            family,
            ports,
            endpoints,
            trigger_time,
        },
    )))
}

/// The Cluster Autoscaler's taint on a node it is about to delete (upstream's
/// `healthcheck.ToBeDeletedTaint`).
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// A ServiceCIDR (`networking.k8s.io/v1`): its name and `spec.cidrs`, truncated to their
/// networks (the API server allows at most one per family; kproxy takes what it is given).
pub fn service_cidr(
    cidr: &k8s_openapi::api::networking::v1::ServiceCIDR,
) -> Result<(String, Vec<ipnet::IpNet>), Rejection> {
    let name = match cidr.metadata.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => return Err(missing_name("metadata.name: Required value")),
    };
    let cidrs = cidr.spec.as_ref().and_then(|s| s.cidrs.as_deref());
    Ok((name, parse_all(cidrs, "spec.cidrs", parse_cidr)?))
}

/// This node's Node object.
pub fn node(node: &Node) -> Result<NodeInfo, Rejection> {
    let name = match node.metadata.name.as_deref() {
        Some(n) if is_dns1123_subdomain(n) => n.to_string(),
        Some(n) => return Err(missing_name(format!("metadata.name: {n:?} is not valid"))),
        None => return Err(missing_name("metadata.name: Required value")),
    };
    let status = node.status.as_ref();
    let internal_ips = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, a)| a.type_ == "InternalIP")
        .map(|(i, a)| parse_ip(&a.address, &format!("status.addresses[{i}].address")))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = node.spec.as_ref();
    let pod_cidrs = match spec
        .and_then(|s| s.pod_cidrs.as_deref())
        .filter(|c| !c.is_empty())
    {
        Some(cidrs) => parse_all(Some(cidrs), "spec.podCIDRs", parse_cidr)?,
        None => parse_all(
            spec.map(|s| s.pod_cidr.as_slice()),
            "spec.podCIDR",
            parse_cidr,
        )?,
    };
    let draining = node.metadata.deletion_timestamp.is_some()
        || (spec.and_then(|s| s.taints.as_deref()).into_iter().flatten())
            .any(|t| t.key == TAINT_TO_BE_DELETED);
    Ok(NodeInfo {
        name,
        zone: label(&node.metadata, LABEL_ZONE).map(str::to_string),
        internal_ips,
        pod_cidrs,
        draining,
    })
}

/// The namespace/name of an object whose name is a DNS-1123 subdomain (EndpointSlices,
/// Endpoints, most kinds), or why the API server would refuse it.
pub fn object_key(meta: &ObjectMeta) -> Result<NamespacedName, Rejection> {
    namespaced_name(meta, is_dns1123_subdomain)
}

/// A Service's `namespace/name` as an operator writes it (`/debug/state?service=`), checked as
/// the API server checks a Service's metadata, or why it names no Service.
pub fn service_key(text: &str) -> Result<NamespacedName, Rejection> {
    let Some((namespace, name)) = text.split_once('/') else {
        return Err(Rejection::new(
            RejectReason::MissingName,
            format!("{text:?} is not namespace/name"),
        ));
    };
    let meta = ObjectMeta {
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        ..ObjectMeta::default()
    };
    namespaced_name(&meta, is_dns1035_label)
}

/// `spec.clusterIPs` (or `spec.clusterIP`); `None` for headless or unallocated Services.
fn cluster_ips(spec: &ServiceSpec) -> Result<Option<Vec<IpAddr>>, Rejection> {
    let listed = spec.cluster_ips.as_deref().unwrap_or_default();
    let raw: Vec<&str> = if listed.is_empty() {
        spec.cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .into_iter()
            .collect()
    } else {
        if let Some(primary) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty())
            && primary != listed[0]
        {
            return Err(invalid(format!(
                "spec.clusterIPs[0]: {:?} must equal spec.clusterIP {primary:?}",
                listed[0]
            )));
        }
        listed.iter().map(String::as_str).collect()
    };
    match raw.first() {
        None | Some(&"None") => return Ok(None),
        Some(_) if raw.len() > 2 => {
            return Err(invalid(
                "spec.clusterIPs: may have at most 2 entries (one per family)",
            ));
        }
        Some(_) => {}
    }
    let ips = raw
        .iter()
        .enumerate()
        .map(|(i, ip)| parse_ip(ip, &format!("spec.clusterIPs[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if let [a, b] = ips[..]
        && IpFamily::of(&a) == IpFamily::of(&b)
    {
        return Err(invalid(
            "spec.clusterIPs: the two entries must be of different families",
        ));
    }
    Ok(Some(ips))
}

/// `status.loadBalancer.ingress[].ip`, skipping hostname-only entries and those in Proxy mode
/// (as upstream: a Proxy-mode load balancer does not deliver packets to the VIP itself).
fn load_balancer_ips(svc: &K8sService) -> Result<Vec<IpAddr>, Rejection> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref());
    let mut ips = Vec::new();
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}]");
        match ing.ip_mode.as_deref() {
            None | Some("VIP") => {}
            Some("Proxy") => continue,
            Some(other) => return Err(invalid(format!("{field}.ipMode: unsupported {other:?}"))),
        }
        if let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) {
            ips.push(parse_ip(ip, &format!("{field}.ip"))?);
        }
    }
    Ok(ips)
}

/// The ClientIP affinity timeout, or `None` without affinity.
fn affinity(spec: &ServiceSpec) -> Result<Option<u32>, Rejection> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
                Some(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Ok(u32::try_from(t).ok()),
                Some(t) => Err(invalid(format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: {t} is not in \
                     1..={MAX_AFFINITY_TIMEOUT}"
                ))),
            }
        }
        Some(other) => Err(invalid(format!(
            "spec.sessionAffinity: unsupported value {other:?}"
        ))),
    }
}

/// `Cluster` (or upstream's old spelling `Global`) or `Local`; unset means Cluster.
fn traffic_policy(value: Option<&str>, field: &str) -> Result<TrafficPolicy, Rejection> {
    match value {
        None | Some("") | Some("Cluster") | Some("Global") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(invalid(format!("{field}: unsupported value {other:?}"))),
    }
}

mod fields;
#[cfg(test)]
mod tests;
