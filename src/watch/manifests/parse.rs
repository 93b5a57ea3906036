//! One manifests file in, validated objects out: YAML (multi-document) or JSON, `kind: List`
//! expanded, and every object deserialized and validated on its own, so that a bad document
//! spoils nothing but itself.
//!
//! Invariants: pure (no I/O; logs only at debug level); every document either yields its objects,
//! is skipped as a kind kproxy does not use, or yields exactly one `Rejected`. The namespace
//! defaults to "default" here, as `kubectl apply` would; the node's own Node is the only Node kept.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::borrow::Cow;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_yaml_ng::Value;
use tracing::debug;

use super::mirror::{self, Mirror};
use crate::model::validate::{self, RejectReason, Rejection};
use crate::model::{NamespacedName, NodeInfo, Service, Slice};

/// What a document defines; two documents with the same key define the same object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Key {
    Service(NamespacedName),
    Slice(NamespacedName),
    Endpoints(NamespacedName),
    /// This node's Node (other Nodes are not kept).
    Node,
    /// A ServiceCIDR, by name.
    ServiceCidr(String),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Service(n) => write!(f, "Service {n}"),
            Key::Slice(n) => write!(f, "EndpointSlice {n}"),
            Key::Endpoints(n) => write!(f, "Endpoints {n}"),
            Key::Node => f.write_str("this node's Node"),
            Key::ServiceCidr(n) => write!(f, "ServiceCIDR {n}"),
        }
    }
}

/// A validated object, of the kind its `Key` names. Services and slices are shared: the same
/// allocation is kept by the source's state and sent to the model.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Object {
    /// `service` is `None` for a Service kproxy ignores (headless, ExternalName, ...): it still
    /// exists, which matters for mirroring.
    Service {
        has_selector: bool,
        service: Option<Arc<Service>>,
    },
    Slice(Arc<Slice>),
    // Boxed: an object is one of 10,000s in the merged state, these two are rare and large.
    Endpoints(Box<Mirror>),
    Node(Box<NodeInfo>),
    ServiceCidr(Vec<ipnet::IpNet>),
}

/// A document (or one item of a List document) that was refused.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Rejected {
    /// 0-based index of the document in its file.
    pub document: usize,
    /// 0-based index in the document's `items` when the document is a List.
    pub item: Option<usize>,
    pub rejection: Rejection,
}

#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub objects: Vec<(Key, Object)>,
    pub rejected: Vec<Rejected>,
}

/// Parses one file; `file` is its name (JSON when it ends in `.json`), for debug logs.
pub(super) fn parse_file(file: &str, bytes: &[u8], node_name: &str) -> Parsed {
    let mut p = Parser {
        file,
        node_name,
        parsed: Parsed::default(),
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.strip_prefix('\u{feff}').unwrap_or(text),
        Err(e) => {
            p.reject(0, None, RejectReason::Parse, format!("not UTF-8: {e}"));
            return p.parsed;
        }
    };
    if let Some(line) = super::limits::too_deep(text, super::limits::MAX_DEPTH) {
        let detail = format!(
            "nests collections deeper than {} levels (line {line}); the file is not parsed",
            super::limits::MAX_DEPTH
        );
        p.reject(0, None, RejectReason::TooDeep, detail);
        return p.parsed;
    }
    if file.ends_with(".json") {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
        for (document, raw) in stream.enumerate() {
            match raw {
                Ok(raw) => p.json_document(raw, document, None),
                Err(e) => {
                    // A JSON syntax error leaves no way to find where the next value starts.
                    p.reject(document, None, RejectReason::Parse, e.to_string());
                    break;
                }
            }
        }
    } else {
        for (document, source) in split_documents(text).into_iter().enumerate() {
            let parsed =
                serde_yaml_ng::from_str::<Value>(source).map_err(|e| (RejectReason::Parse, e));
            let merged = parsed.and_then(|mut v| match v.apply_merge() {
                Ok(()) => Ok(v),
                Err(e) => Err((RejectReason::WrongType, e)),
            });
            match merged {
                Ok(value) => p.document(value, document, None),
                Err((reason, e)) => p.reject(document, None, reason, e.to_string()),
            }
        }
    }
    p.parsed
}

/// Splits a YAML stream at its document markers (`---` or `...` at the start of a line, followed
/// by a blank or the line's end) and drops documents holding only comments and directives. YAML
/// forbids these markers at the start of a line inside a document, so the split is exact, and a
/// syntax error in one document leaves the others readable.
fn split_documents(text: &str) -> Vec<&str> {
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    };
    let mut documents = Vec::new();
    let (mut start, mut offset) = (0, 0);
    for line in text.split_inclusive('\n') {
        if is_marker(line, "---") {
            documents.push(&text[start..offset]);
            start = offset + 3;
        } else if is_marker(line, "...") {
            documents.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(&text[start..]);
    documents.retain(|d| {
        d.lines().any(|l| {
            let l = l.trim_start();
            !l.is_empty() && !l.starts_with('#') && !l.starts_with('%')
        })
    });
    documents
}

/// What the JSON fast path reads first: the kind, and a List's items left unparsed.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// Whether a List item names its own kind and apiVersion.
fn has_kind(raw: &RawValue) -> bool {
    serde_json::from_str::<Head>(raw.get())
        .is_ok_and(|h| h.kind.is_some() && h.api_version.is_some())
}

struct Parser<'a> {
    file: &'a str,
    node_name: &'a str,
    parsed: Parsed,
}

impl Parser<'_> {
    fn reject(
        &mut self,
        document: usize,
        item: Option<usize>,
        reason: RejectReason,
        detail: String,
    ) {
        self.parsed.rejected.push(Rejected {
            document,
            item,
            rejection: Rejection::new(reason, detail),
        });
    }

    /// A JSON document (or List item) read straight into its typed object: no generic tree in
    /// between, which halves the parse of a large directory. Anything unusual (a List item
    /// without its own kind, a malformed or refused object, a kind kproxy skips) goes through
    /// `document`, so what is accepted, refused and said is the same as for YAML.
    fn json_document(&mut self, raw: &RawValue, document: usize, item: Option<usize>) {
        let slow = |p: &mut Self| match serde_json::from_str::<Value>(raw.get()) {
            Ok(value) => p.document(value, document, item),
            Err(e) => p.reject(document, item, RejectReason::Parse, e.to_string()),
        };
        let Ok(head) = serde_json::from_str::<Head>(raw.get()) else {
            return slow(self);
        };
        let (Some(api_version), Some(kind)) = (head.api_version.as_deref(), head.kind.as_deref())
        else {
            return slow(self);
        };
        let at = (document, item);
        let done = match (api_version, kind) {
            ("v1", "Service") => self.typed_json(raw, at, |p, svc: K8sService| p.service(svc)),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                self.typed_json(raw, at, |p, slice: EndpointSlice| p.slice(slice))
            }
            ("v1", "Endpoints") => self.typed_json(raw, at, |p, ep: Endpoints| p.endpoints(ep)),
            ("v1", "Node") => self.typed_json(raw, at, |p, node: Node| p.node(node)),
            ("networking.k8s.io/v1" | "networking.k8s.io/v1beta1", "ServiceCIDR") => {
                self.typed_json(raw, at, |p, c: ServiceCIDR| p.service_cidr(c))
            }
            (_, list) if list.ends_with("List") => match &head.items {
                Some(items) if items.iter().all(|i| has_kind(i)) => {
                    for (i, raw) in items.iter().enumerate() {
                        self.json_document(raw, document, item.or(Some(i)));
                    }
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !done {
            slow(self);
        }
    }

    /// Reads `raw` as a `T` and hands it to `accept`; false (nothing done) when it does not
    /// read, so the caller can take the path that says why.
    fn typed_json<T: DeserializeOwned>(
        &mut self,
        raw: &RawValue,
        (document, item): (usize, Option<usize>),
        accept: impl FnOnce(&mut Self, T) -> Result<(), Rejection>,
    ) -> bool {
        let Ok(object) = serde_json::from_str::<T>(raw.get()) else {
            return false;
        };
        if let Err(rejection) = accept(self, object) {
            self.parsed.rejected.push(Rejected {
                document,
                item,
                rejection,
            });
        }
        true
    }

    /// One document, or one item of a List (then `item` is its index in the outermost List).
    fn document(&mut self, value: Value, document: usize, item: Option<usize>) {
        if value.is_null() {
            return;
        }
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            let detail = "not a Kubernetes object: apiVersion and kind are required".to_string();
            return self.reject(document, item, RejectReason::WrongType, detail);
        };
        let outcome = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => self.typed(value, |p, svc: K8sService| p.service(svc)),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                self.typed(value, |p, slice: EndpointSlice| p.slice(slice))
            }
            ("v1", "Endpoints") => self.typed(value, |p, ep: Endpoints| p.endpoints(ep)),
            ("v1", "Node") => self.typed(value, |p, node: Node| p.node(node)),
            ("networking.k8s.io/v1" | "networking.k8s.io/v1beta1", "ServiceCIDR") => {
                self.typed(value, |p, c: ServiceCIDR| p.service_cidr(c))
            }
            (_, list) if list.ends_with("List") => {
                return self.list(value, &api_version, &kind, document, item);
            }
            _ => {
                let file = self.file;
                debug!(
                    file,
                    document, item, api_version, kind, "skipping a kind kproxy does not use"
                );
                Ok(())
            }
        };
        if let Err(r) = outcome {
            self.parsed.rejected.push(Rejected {
                document,
                item,
                rejection: r,
            });
        }
    }

    /// `kind: List` (items carry their own kind), or `<Kind>List` as the API returns it (items
    /// may omit their kind and apiVersion, which then come from the list's).
    fn list(
        &mut self,
        value: Value,
        api_version: &str,
        kind: &str,
        document: usize,
        item: Option<usize>,
    ) {
        let Value::Mapping(mut list) = value else {
            return;
        };
        let items = match list.remove("items") {
            Some(Value::Sequence(items)) => items,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => {
                let detail = format!("{kind}.items: expected a sequence");
                return self.reject(document, item, RejectReason::WrongType, detail);
            }
        };
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for (i, mut value) in items.into_iter().enumerate() {
            if let (Some(item_kind), Value::Mapping(m)) = (item_kind, &mut value)
                && !m.contains_key("kind")
            {
                m.insert("kind".into(), item_kind.into());
                m.entry("apiVersion".into())
                    .or_insert_with(|| api_version.into());
            }
            self.document(value, document, item.or(Some(i)));
        }
    }

    fn typed<T: DeserializeOwned>(
        &mut self,
        value: Value,
        accept: impl FnOnce(&mut Self, T) -> Result<(), Rejection>,
    ) -> Result<(), Rejection> {
        let object = serde_yaml_ng::from_value::<T>(value)
            .map_err(|e| Rejection::new(RejectReason::WrongType, e.to_string()))?;
        accept(self, object)
    }

    fn service(&mut self, mut svc: K8sService) -> Result<(), Rejection> {
        default_namespace(&mut svc.metadata);
        let service = validate::service(&svc)?;
        let key = NamespacedName::new(
            svc.metadata.namespace.unwrap_or_default(),
            svc.metadata.name.unwrap_or_default(),
        );
        let has_selector = svc.spec.is_some_and(|s| s.selector.is_some());
        self.parsed.objects.push((
            Key::Service(key),
            Object::Service {
                has_selector,
                service: service.map(Arc::new),
            },
        ));
        Ok(())
    }

    fn slice(&mut self, mut slice: EndpointSlice) -> Result<(), Rejection> {
        default_namespace(&mut slice.metadata);
        match validate::endpoint_slice(&slice)? {
            Some((key, slice)) => self
                .parsed
                .objects
                .push((Key::Slice(key), Object::Slice(Arc::new(slice)))),
            None => {
                debug!(file = self.file, name = ?slice.metadata.name, "ignoring an EndpointSlice")
            }
        }
        Ok(())
    }

    fn endpoints(&mut self, mut ep: Endpoints) -> Result<(), Rejection> {
        default_namespace(&mut ep.metadata);
        let (key, mirror) = mirror::mirror(&ep)?;
        self.parsed
            .objects
            .push((Key::Endpoints(key), Object::Endpoints(Box::new(mirror))));
        Ok(())
    }

    fn service_cidr(&mut self, cidr: ServiceCIDR) -> Result<(), Rejection> {
        let (name, cidrs) = validate::service_cidr(&cidr)?;
        self.parsed
            .objects
            .push((Key::ServiceCidr(name), Object::ServiceCidr(cidrs)));
        Ok(())
    }

    fn node(&mut self, node: Node) -> Result<(), Rejection> {
        let info = validate::node(&node)?;
        if info.name == self.node_name {
            self.parsed
                .objects
                .push((Key::Node, Object::Node(Box::new(info))));
        }
        Ok(())
    }
}

/// An unset (or empty) namespace means "default", as `kubectl apply` without `-n`.
fn default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_string());
    }
}

#[cfg(test)]
mod tests;
