//! The merged object set of a manifests directory: which file's definition of each object wins,
//! which Endpoints are mirrored, and what has been sent, so that a change to some files sends
//! only the objects whose served value changed.
//!
//! Invariants: when several files define the same object, the lexically last file name wins (and
//! within one file, the last document). `sent_*` is exactly what the receiver has been told, and
//! holds the very `Arc` that was sent: each Service and slice exists once, shared by the winning
//! definition, `sent_*` and the model. A re-parse that yields an equal value sends nothing and
//! its definition takes over the sent allocation, so the fresh copy is dropped. Work per
//! `changes()` is proportional to the objects of the files replaced since the last call, never
//! to the size of the directory.

use std::collections::{BTreeSet, HashMap};
use std::mem;
use std::sync::Arc;

use tracing::warn;

use super::parse::{Key, Object};
use crate::model::{NamespacedName, NodeInfo, Service, Slice};
use crate::watch::Change;

/// An object as the receiver sees it (Endpoints are never sent, only their mirrored slices).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Out {
    Service(NamespacedName),
    Slice(NamespacedName),
    Node,
    ServiceCidr(String),
}

/// The definitions of one object, by defining file, sorted by file name (the last one wins).
/// Almost always one: a `Vec`, not an ordered map, whose nodes cost a kilobyte each.
#[derive(Debug, Default)]
struct Defs(Vec<(Arc<str>, Object)>);

impl Defs {
    fn at(&self, file: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(f, _)| (**f).cmp(file))
    }

    /// Sets `file`'s definition; the one it replaces, if any.
    fn insert(&mut self, file: Arc<str>, object: Object) -> Option<Object> {
        match self.at(&file) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, object)),
            Err(i) => {
                // Exactly one more: a Vec's first growth would make room for four.
                self.0.reserve_exact(1);
                self.0.insert(i, (file, object));
                None
            }
        }
    }

    fn remove(&mut self, file: &str) {
        if let Ok(i) = self.at(file) {
            self.0.remove(i);
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn files(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _)| &**f)
    }

    fn winner(&self) -> Option<&Object> {
        self.0.last().map(|(_, o)| o)
    }

    fn winner_mut(&mut self) -> Option<&mut Object> {
        self.0.last_mut().map(|(_, o)| o)
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Every definition of every object.
    claims: HashMap<Key, Defs>,
    /// The keys each file defines, to withdraw them when the file changes.
    by_file: HashMap<Arc<str>, Vec<Key>>,
    /// The Endpoints each mirrored slice comes from (the slice itself stays in that Endpoints'
    /// claim), and the mirrored slice keys of each Endpoints.
    mirrored: HashMap<NamespacedName, NamespacedName>,
    mirrors_of: HashMap<NamespacedName, Vec<NamespacedName>>,
    sent_services: HashMap<NamespacedName, Arc<Service>>,
    sent_slices: HashMap<NamespacedName, Arc<Slice>>,
    sent_node: Option<NodeInfo>,
    sent_service_cidrs: HashMap<String, Vec<ipnet::IpNet>>,
    /// Keys whose definitions changed since the last `changes()`.
    touched: BTreeSet<Key>,
}

impl State {
    /// Replaces everything `file` defines with `objects` (empty when the file is gone).
    pub(super) fn set_file(&mut self, file: &Arc<str>, objects: Vec<(Key, Object)>) {
        for key in self.by_file.remove(file).unwrap_or_default() {
            if let Some(defs) = self.claims.get_mut(&key) {
                defs.remove(file);
                if defs.is_empty() {
                    self.claims.remove(&key);
                }
            }
            self.touched.insert(key);
        }
        let mut keys = Vec::with_capacity(objects.len());
        for (key, mut object) in objects {
            if let Object::Service {
                service: Some(s), ..
            } = &mut object
                && s.origin.as_ref() != Some(file)
            {
                // Fresh from the parser, so not shared yet: this does not copy.
                Arc::make_mut(s).origin = Some(file.clone());
            }
            if self
                .claims
                .entry(key.clone())
                .or_default()
                .insert(file.clone(), object)
                .is_some()
            {
                warn!(file = %file, object = %key, "object defined twice in one file; the later document wins");
            } else {
                keys.push(key.clone());
            }
            self.touched.insert(key);
        }
        if !keys.is_empty() {
            self.by_file.insert(file.clone(), keys);
        }
    }

    /// The changes to send for everything touched since the last call, Services first, then
    /// slices, then the Node; each key at most once.
    pub(super) fn changes(&mut self) -> Vec<Change> {
        let touched = mem::take(&mut self.touched);
        let mut out = BTreeSet::new();
        let mut remirror = BTreeSet::new();
        for key in &touched {
            self.warn_if_contested(key);
            match key {
                Key::Service(n) => {
                    out.insert(Out::Service(n.clone()));
                    remirror.insert(n);
                }
                Key::Endpoints(n) => {
                    remirror.insert(n);
                }
                Key::Slice(n) => {
                    out.insert(Out::Slice(n.clone()));
                }
                Key::Node => {
                    out.insert(Out::Node);
                }
                Key::ServiceCidr(n) => {
                    out.insert(Out::ServiceCidr(n.clone()));
                }
            }
        }
        for name in remirror {
            self.remirror(name, &mut out);
        }
        out.into_iter().filter_map(|o| self.diff(o)).collect()
    }

    fn warn_if_contested(&self, key: &Key) {
        if let Some(defs) = self.claims.get(key).filter(|d| d.len() > 1) {
            let files: Vec<&str> = defs.files().collect();
            let winner = files.last().copied().unwrap_or_default();
            warn!(object = %key, ?files, winner, "object defined in several files; the lexically last file wins");
        }
    }

    /// Recomputes the mirrored slices of the Endpoints `name`, marking old and new ones in `out`.
    fn remirror(&mut self, name: &NamespacedName, out: &mut BTreeSet<Out>) {
        for old in self.mirrors_of.remove(name).unwrap_or_default() {
            self.mirrored.remove(&old);
            out.insert(Out::Slice(old));
        }
        let selectorless = matches!(
            winner(&self.claims, &Key::Service(name.clone())),
            Some(Object::Service {
                has_selector: false,
                ..
            })
        );
        let Some(Object::Endpoints(mirror)) = winner(&self.claims, &Key::Endpoints(name.clone()))
        else {
            return;
        };
        if !selectorless || !mirror.enabled {
            return;
        }
        let mut keys = Vec::with_capacity(mirror.slices.len());
        for (key, _) in &mirror.slices {
            self.mirrored.insert(key.clone(), name.clone());
            out.insert(Out::Slice(key.clone()));
            keys.push(key.clone());
        }
        self.mirrors_of.insert(name.clone(), keys);
    }

    /// The change that brings the receiver's copy of `o` up to date, if any.
    fn diff(&mut self, o: Out) -> Option<Change> {
        match o {
            Out::Service(name) => {
                let want = match winner_mut(&mut self.claims, &Key::Service(name.clone())) {
                    Some(Object::Service { service, .. }) => service.as_mut(),
                    _ => None,
                };
                let change = update(&mut self.sent_services, &name, want)?;
                Some(Change::Service(name, change))
            }
            Out::Slice(name) => {
                // A slice written in the directory wins over a mirrored one of the same name.
                let key = Key::Slice(name.clone());
                let want = if matches!(winner(&self.claims, &key), Some(Object::Slice(_))) {
                    match winner_mut(&mut self.claims, &key) {
                        Some(Object::Slice(slice)) => Some(slice),
                        _ => None,
                    }
                } else {
                    self.mirrored.get(&name).and_then(|ep| {
                        match winner_mut(&mut self.claims, &Key::Endpoints(ep.clone())) {
                            Some(Object::Endpoints(m)) => m
                                .slices
                                .iter_mut()
                                .find(|(k, _)| *k == name)
                                .map(|(_, s)| s),
                            _ => None,
                        }
                    })
                };
                let change = update(&mut self.sent_slices, &name, want)?;
                Some(Change::Slice(name, change))
            }
            Out::Node => {
                let want = match winner(&self.claims, &Key::Node) {
                    Some(Object::Node(node)) => Some(&**node),
                    _ => None,
                };
                if self.sent_node.as_ref() == want {
                    return None;
                }
                self.sent_node = want.cloned();
                Some(Change::Node(want.cloned()))
            }
            Out::ServiceCidr(name) => {
                let want = match winner(&self.claims, &Key::ServiceCidr(name.clone())) {
                    Some(Object::ServiceCidr(cidrs)) => Some(cidrs.clone()),
                    _ => None,
                };
                if self.sent_service_cidrs.get(&name) == want.as_ref() {
                    return None;
                }
                match &want {
                    Some(c) => self.sent_service_cidrs.insert(name.clone(), c.clone()),
                    None => self.sent_service_cidrs.remove(&name),
                };
                Some(Change::ServiceCidr(name, want))
            }
        }
    }
}

/// The definition of `key` that wins: the one from the lexically last file.
fn winner<'a>(claims: &'a HashMap<Key, Defs>, key: &Key) -> Option<&'a Object> {
    claims.get(key)?.winner()
}

fn winner_mut<'a>(claims: &'a mut HashMap<Key, Defs>, key: &Key) -> Option<&'a mut Object> {
    claims.get_mut(key)?.winner_mut()
}

/// Records `want` as sent for `name`; returns it when it differs from what was sent before. An
/// equal value in a different allocation is replaced by the sent one (one copy of each object).
fn update<V: PartialEq>(
    sent: &mut HashMap<NamespacedName, Arc<V>>,
    name: &NamespacedName,
    want: Option<&mut Arc<V>>,
) -> Option<Option<Arc<V>>> {
    match (sent.get(name), want) {
        (None, None) => None,
        (Some(old), Some(new)) if Arc::ptr_eq(old, new) => None,
        (Some(old), Some(new)) if **old == **new => {
            *new = old.clone();
            None
        }
        (_, Some(new)) => {
            sent.insert(name.clone(), new.clone());
            Some(Some(new.clone()))
        }
        (Some(_), None) => {
            sent.remove(name);
            Some(None)
        }
    }
}
