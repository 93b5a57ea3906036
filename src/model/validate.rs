//! Validation shared by every source: Kubernetes objects in, model values out, or a `Rejection`
//! naming why the API server would have refused the object. Nothing invalid reaches a backend.
//!
//! Invariants: pure functions; `Ok(None)` means "valid but ignored, as upstream" (headless,
//! ExternalName, service-proxy-name label, headless-labelled or FQDN slices).

use k8s_openapi::api::core::v1::{Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{NamespacedName, NodeInfo, Service, Slice};

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
}

impl RejectReason {
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Parse,
        RejectReason::WrongType,
        RejectReason::MissingName,
        RejectReason::BadIp,
        RejectReason::BadPort,
        RejectReason::BadProtocol,
        RejectReason::Invalid,
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
        Rejection { reason, detail: detail.into() }
    }
}

/// A Service, expanded into service ports; `Ok(None)` when kproxy ignores it.
pub fn service(svc: &K8sService) -> Result<Option<Service>, Rejection> {
    let _ = svc;
    todo!()
}

/// An EndpointSlice, keyed by its own namespace/name; `Ok(None)` when kproxy ignores it.
pub fn endpoint_slice(slice: &EndpointSlice) -> Result<Option<(NamespacedName, Slice)>, Rejection> {
    let _ = slice;
    todo!()
}

/// This node's Node object.
pub fn node(node: &Node) -> Result<NodeInfo, Rejection> {
    let _ = node;
    todo!()
}
