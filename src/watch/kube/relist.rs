//! The relist diff of one watched kind: turns watcher events (already validated) into model
//! changes, so that a relist (after a 410 or a lost connection) sends an update for every object
//! still present and a delete only for what vanished, never a flush.
//!
//! Invariants: pure (no I/O, no clock). `sent` is exactly the set of keys whose last emitted
//! change was `Some`. A list forwards each object it reads at once (it is that object's current
//! state, as a live event would be; the model drops what did not change) and remembers only its
//! key, so a relist of 50,000 objects holds keys, not a second copy of the cluster; what it did
//! not read is deleted at `InitDone`, after every update (an endpoint moving between two slices
//! is never transiently absent). A list that breaks off and starts over deletes nothing until a
//! complete one ends. An object is reported as rejected once per (key, resourceVersion),
//! however many relists see it again.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::validate::Rejection;

/// What validation made of one object.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen<V> {
    Valid(V),
    /// Valid but not proxied (headless, ExternalName, ...): treated as absent.
    Ignored,
    /// Treated as absent, and reported once.
    Rejected(Rejection),
}

/// One watcher event, its object reduced to key, resourceVersion and validation result.
#[derive(Clone, Debug, PartialEq)]
pub enum Input<K, V> {
    Init,
    InitApply(K, Option<String>, Seen<V>),
    InitDone,
    Apply(K, Option<String>, Seen<V>),
    Delete(K),
}

/// What one event produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Output<K, V> {
    /// Model changes to send, in order.
    pub changes: Vec<(K, Option<V>)>,
    /// Objects rejected for the first time (at this resourceVersion): log and count them.
    pub rejected: Vec<(K, Rejection)>,
    /// The (re)list completed: send `Listed` after `changes`.
    pub listed: bool,
}

impl<K, V> Default for Output<K, V> {
    fn default() -> Self {
        Output {
            changes: Vec::new(),
            rejected: Vec::new(),
            listed: false,
        }
    }
}

/// A relist in progress: the keys of the valid and of the rejected objects it read so far.
#[derive(Debug)]
struct Pending<K> {
    valid: BTreeSet<K>,
    rejected: BTreeSet<K>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending {
            valid: BTreeSet::new(),
            rejected: BTreeSet::new(),
        }
    }
}

/// Per-kind state between events.
#[derive(Debug)]
pub struct Relist<K, V> {
    sent: BTreeSet<K>,
    pending: Option<Pending<K>>,
    /// Rejected objects by key, with the resourceVersion last reported.
    rejected: BTreeMap<K, Option<String>>,
    _values: std::marker::PhantomData<fn(V)>,
}

impl<K, V> Default for Relist<K, V> {
    fn default() -> Self {
        Relist {
            sent: BTreeSet::new(),
            pending: None,
            rejected: BTreeMap::new(),
            _values: std::marker::PhantomData,
        }
    }
}

impl<K: Ord + Clone, V> Relist<K, V> {
    pub fn step(&mut self, input: Input<K, V>) -> Output<K, V> {
        let mut out = Output::default();
        match input {
            Input::Init => self.pending = Some(Pending::default()),
            Input::InitApply(key, version, seen) => {
                let pending = self.pending.get_or_insert_with(Pending::default);
                match seen {
                    Seen::Valid(v) => {
                        pending.rejected.remove(&key);
                        pending.valid.insert(key.clone());
                        self.sent.insert(key.clone());
                        out.changes.push((key, Some(v)));
                    }
                    Seen::Ignored => {
                        pending.rejected.remove(&key);
                        pending.valid.remove(&key);
                        self.remove(key, &mut out);
                    }
                    Seen::Rejected(why) => {
                        pending.valid.remove(&key);
                        pending.rejected.insert(key.clone());
                        self.note_rejected(key.clone(), version, why, &mut out);
                        self.remove(key, &mut out);
                    }
                }
            }
            Input::InitDone => {
                let Pending { valid, rejected } = self.pending.take().unwrap_or_default();
                // Forget rejections of objects that are gone or valid now, so that they are
                // reported again if they come back broken.
                self.rejected.retain(|k, _| rejected.contains(k));
                let vanished: Vec<K> = self.sent.difference(&valid).cloned().collect();
                self.sent = valid;
                out.changes.extend(vanished.into_iter().map(|k| (k, None)));
                out.listed = true;
            }
            Input::Apply(key, version, seen) => match seen {
                Seen::Valid(v) => {
                    self.rejected.remove(&key);
                    self.sent.insert(key.clone());
                    out.changes.push((key, Some(v)));
                }
                Seen::Ignored => {
                    self.rejected.remove(&key);
                    self.remove(key, &mut out);
                }
                Seen::Rejected(why) => {
                    self.note_rejected(key.clone(), version, why, &mut out);
                    self.remove(key, &mut out);
                }
            },
            Input::Delete(key) => {
                self.rejected.remove(&key);
                self.remove(key, &mut out);
            }
        }
        out
    }

    fn remove(&mut self, key: K, out: &mut Output<K, V>) {
        if self.sent.remove(&key) {
            out.changes.push((key, None));
        }
    }

    fn note_rejected(
        &mut self,
        key: K,
        version: Option<String>,
        why: Rejection,
        out: &mut Output<K, V>,
    ) {
        if self.rejected.get(&key) != Some(&version) {
            self.rejected.insert(key.clone(), version);
            out.rejected.push((key, why));
        }
    }
}
