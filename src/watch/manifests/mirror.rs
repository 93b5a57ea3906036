//! v1 Endpoints turned into EndpointSlices the way upstream's EndpointSlice mirroring controller
//! does it, for selector-less Services whose endpoints are written by hand.
//!
//! Invariants: one slice per subset and address family, named `<endpoints>-mirror-<n>` with `n`
//! counting up in subset order (deterministic, so an unchanged Endpoints yields unchanged
//! slices); `addresses` are ready and `notReadyAddresses` not ready; at most 1000 addresses per
//! subset (upstream's `--mirroring-max-endpoints-per-subset` default). Every slice produced went
//! through `validate::endpoint_slice`. Whether mirroring applies at all (the Service exists and
//! has no selector) is decided later, by the merged state.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::validate::{
    self, ANNOTATION_TRIGGER_TIME, LABEL_SERVICE_NAME, RejectReason, Rejection,
};
use crate::model::{NamespacedName, Slice};

/// Label with which an Endpoints opts out of mirroring (value `"true"`).
pub(super) const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Leader-election Endpoints carry this annotation; upstream never mirrors them.
const ANNOTATION_LEADER: &str = "control-plane.alpha.kubernetes.io/leader";
const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;

/// The slices an Endpoints object mirrors to, if its Service turns out to be selector-less.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Mirror {
    /// False when the Endpoints opted out (skip-mirror label) or is a leader-election lock.
    pub enabled: bool,
    /// Keyed by the mirrored slice's own namespace/name.
    pub slices: Vec<(NamespacedName, Arc<Slice>)>,
}

/// Validates an Endpoints object and computes its mirrored slices.
pub(super) fn mirror(ep: &Endpoints) -> Result<(NamespacedName, Mirror), Rejection> {
    let key = validate::object_key(&ep.metadata)?;
    let labels = ep.metadata.labels.as_ref();
    let annotations = ep.metadata.annotations.as_ref();
    let enabled = labels
        .and_then(|l| l.get(LABEL_SKIP_MIRROR))
        .is_none_or(|v| v != "true")
        && annotations.is_none_or(|a| !a.contains_key(ANNOTATION_LEADER));

    let mut slices = Vec::new();
    for (i, subset) in ep.subsets.iter().flatten().enumerate() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: p.name.clone(),
                port: Some(p.port),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let ready = subset
            .addresses
            .iter()
            .flatten()
            .map(|a| (a, true, "addresses"));
        let not_ready = subset
            .not_ready_addresses
            .iter()
            .flatten()
            .map(|a| (a, false, "notReadyAddresses"));
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (j, (address, ready, field)) in ready
            .chain(not_ready)
            .take(MAX_ENDPOINTS_PER_SUBSET)
            .enumerate()
        {
            let ip: IpAddr = address.ip.parse().map_err(|_| {
                let detail = format!(
                    "subsets[{i}].{field}[{j}].ip: {:?} is not an IP",
                    address.ip
                );
                Rejection::new(RejectReason::BadIp, detail)
            })?;
            let endpoint = Endpoint {
                addresses: vec![address.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    ..Default::default()
                }),
                hostname: address.hostname.clone(),
                node_name: address.node_name.clone(),
                target_ref: address.target_ref.clone(),
                ..Default::default()
            };
            if ip.is_ipv4() {
                v4.push(endpoint)
            } else {
                v6.push(endpoint)
            }
        }
        for (address_type, endpoints) in [("IPv4", v4), ("IPv6", v6)] {
            if endpoints.is_empty() {
                continue;
            }
            let slice = EndpointSlice {
                metadata: slice_meta(ep, &key, slices.len()),
                address_type: address_type.to_string(),
                endpoints,
                ports: Some(ports.clone()),
            };
            let validated = validate::endpoint_slice(&slice).map_err(|r| {
                Rejection::new(r.reason, format!("subsets[{i}] mirrored as {}", r.detail))
            })?;
            // None only when the Endpoints' own labels mark it headless: upstream copies labels.
            slices.extend(validated.map(|(key, slice)| (key, Arc::new(slice))));
        }
    }
    Ok((key, Mirror { enabled, slices }))
}

/// The mirrored slice's metadata: the Endpoints' labels plus service-name and managed-by, and
/// its trigger-time annotation.
fn slice_meta(ep: &Endpoints, key: &NamespacedName, n: usize) -> ObjectMeta {
    let mut labels = ep.metadata.labels.clone().unwrap_or_default();
    labels.remove(LABEL_SKIP_MIRROR);
    labels.insert(LABEL_SERVICE_NAME.to_string(), key.name.clone());
    labels.insert(
        LABEL_MANAGED_BY.to_string(),
        MIRRORING_CONTROLLER.to_string(),
    );
    let annotations: BTreeMap<String, String> = ep
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == ANNOTATION_TRIGGER_TIME)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ObjectMeta {
        name: Some(format!("{}-mirror-{n}", key.name)),
        namespace: Some(key.namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}
