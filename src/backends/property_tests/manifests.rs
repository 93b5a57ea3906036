//! Random manifests directories for the property tests: files of Services (each with the
//! slices written for it, `services.rs`), free-standing EndpointSlices, Nodes and v1
//! Endpoints (`endpoints.rs`), and garbage, as YAML streams, `kind: List` documents or JSON;
//! now and then a document or a file is made hostile (`hostile.rs`); plus the node's setup.
//!
//! Invariants: every value comes from a small pool (names, addresses, ports), ordinary values
//! first, so objects refer to each other (slices and Endpoints to Services, endpoints to this
//! node) and collide (two Services on one address, port or NodePort), and shrinking moves
//! towards the first, most ordinary, value; an odd value replaces an ordinary one once in
//! forty, a document is mutated once in twelve and a file cut once in twenty-five, so most
//! cases plan something; a `Case` is a plain value whose `Debug` prints the files as kproxy
//! reads them, so a shrunk failure shows a small manifest.

use std::fmt;

use proptest::collection::vec;
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use super::endpoints::{self, Endpoints, Node, Slice};
use super::hostile::{self, Mutation, TextCut};
use super::services::{self, Service};

#[derive(Clone, Debug)]
enum Doc {
    Service(Service),
    Slice(Slice),
    Node(Node),
    Endpoints(Endpoints),
    /// A hostile document, as text.
    Garbage(&'static str),
}

impl Doc {
    /// The document's values (a Service's own slices follow it); none for garbage.
    fn json(&self) -> Vec<Value> {
        match self {
            Doc::Service(s) => s.json(),
            Doc::Slice(s) => vec![s.json()],
            Doc::Node(n) => vec![n.json()],
            Doc::Endpoints(e) => vec![e.json()],
            Doc::Garbage(_) => Vec::new(),
        }
    }
}

fn doc() -> impl Strategy<Value = (Doc, Option<Mutation>)> {
    let doc = prop_oneof![
        10 => services::service().prop_map(Doc::Service),
        4 => endpoints::slice().prop_map(Doc::Slice),
        2 => endpoints::node().prop_map(Doc::Node),
        1 => endpoints::endpoints().prop_map(Doc::Endpoints),
        1 => select(hostile::GARBAGE).prop_map(Doc::Garbage),
    ];
    (doc, weighted(0.08, hostile::mutation()))
}

/// How a file holds its documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// A YAML stream, one document each.
    Yaml,
    /// One YAML `kind: List` document.
    List,
    /// A JSON stream (`.json`), one value each.
    Json,
}

#[derive(Clone, Debug)]
struct File {
    layout: Layout,
    docs: Vec<(Doc, Option<Mutation>)>,
    cut: Option<TextCut>,
}

fn file() -> impl Strategy<Value = File> {
    let layout =
        prop_oneof![6 => Just(Layout::Yaml), 1 => Just(Layout::List), 2 => Just(Layout::Json)];
    (layout, vec(doc(), 0..6), weighted(0.04, hostile::cut()))
        .prop_map(|(layout, docs, cut)| File { layout, docs, cut })
}

impl File {
    fn text(&self) -> String {
        let yaml = |v: &Value| serde_yaml_ng::to_string(v).expect("a JSON value is YAML");
        let mut items = Vec::new();
        let mut text = String::new();
        for (doc, mutation) in &self.docs {
            let mut values = doc.json();
            // A mutation hits the document itself (a Service, not its slices).
            if let (Some(v), Some(m)) = (values.first_mut(), mutation) {
                m.apply(v);
            }
            match (self.layout, doc) {
                (Layout::Yaml, Doc::Garbage(g)) => text += &format!("---\n{g}\n"),
                (Layout::Json, Doc::Garbage(g)) => text += &format!("{g}\n"),
                (Layout::Yaml, _) => values
                    .iter()
                    .for_each(|v| text += &format!("---\n{}", yaml(v))),
                (Layout::Json, _) => values.iter().for_each(|v| text += &format!("{v}\n")),
                (Layout::List, _) => items.extend(values),
            }
        }
        if self.layout == Layout::List {
            text = yaml(&json!({"apiVersion": "v1", "kind": "List", "items": items}));
        }
        match &self.cut {
            Some(cut) => cut.apply(&text),
            None => text,
        }
    }
}

/// How the node is set up besides its manifests.
#[derive(Clone, Debug)]
pub(super) struct Setup {
    pub(super) masquerade_all: bool,
    /// Pod CIDRs in both families (else none).
    pub(super) cluster_cidrs: bool,
    pub(super) localhost_nodeports: bool,
    /// `--nodeport-addresses`: 0 every local address, 1 `primary`, 2 192.168.0.0/16 only.
    pub(super) nodeport_addresses: u8,
}

/// One random manifests directory and the node's setup.
#[derive(Clone)]
pub(super) struct Case {
    pub(super) setup: Setup,
    files: Vec<File>,
}

pub(super) fn case() -> impl Strategy<Value = Case> {
    let setup = (any::<bool>(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(|s| Setup {
        masquerade_all: s.0,
        cluster_cidrs: !s.1,
        localhost_nodeports: s.2,
        nodeport_addresses: s.3,
    });
    (setup, vec(file(), 1..3)).prop_map(|(setup, files)| Case { setup, files })
}

impl Case {
    /// The files (name, content), as the directory would hold them.
    pub(super) fn files(&self) -> Vec<(String, String)> {
        (self.files.iter().enumerate())
            .map(|(i, f)| {
                let ext = if f.layout == Layout::Json {
                    "json"
                } else {
                    "yaml"
                };
                (format!("{i:02}.{ext}"), f.text())
            })
            .collect()
    }

    /// Documents written (a Service's own slices, List items and garbage included).
    pub(super) fn documents(&self) -> usize {
        let docs = self.files.iter().flat_map(|f| &f.docs);
        docs.map(|(d, _)| d.json().len().max(1)).sum()
    }
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?}", self.setup)?;
        for (name, text) in self.files() {
            writeln!(f, "# ===== {name}\n{text}")?;
        }
        Ok(())
    }
}
