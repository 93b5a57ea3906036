//! Sources of cluster state: the Kubernetes API (`kube`) and a manifests directory
//! (`manifests`). Both turn objects into validated model changes sent to the sync loop.
//!
//! Invariants: a source only sends what passed `model::validate`; it sends `Listed(kind)` once
//! its initial state for that kind is complete; after a relist it sends the difference against
//! what it sent before (updates for everything present, deletes for what vanished), never a flush.

pub mod kube;
pub mod manifests;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::model::{NamespacedName, NodeInfo, Service, Slice};

/// The kinds of object kproxy watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Services,
    EndpointSlices,
    Nodes,
    ServiceCidrs,
}

/// One change to the model, as a source saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A Service was created or updated (`Some`) or deleted (`None`). Shared, not copied: the
    /// model keeps this allocation.
    Service(NamespacedName, Option<Arc<Service>>),
    /// An EndpointSlice, keyed by its own namespace/name; shared like a Service.
    Slice(NamespacedName, Option<Arc<Slice>>),
    /// This node's Node object.
    Node(Option<NodeInfo>),
    /// A ServiceCIDR (by name) and its ranges, or its deletion.
    ServiceCidr(String, Option<Vec<ipnet::IpNet>>),
    /// The initial list of this kind is complete.
    Listed(Kind),
}

pub type ChangeTx = mpsc::UnboundedSender<Change>;
pub type ChangeRx = mpsc::UnboundedReceiver<Change>;
