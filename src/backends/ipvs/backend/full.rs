//! A full sync, streamed port by port. First the companion tables: replaced whole in one
//! transaction when they are there and must be rewritten (`rewrite`: every port compiled for
//! its elements, only their text held), or given the difference of the elements of the ports
//! whose plan or node facts changed. When none is there to replace (a cold start, after a
//! cleanup), the first batch creates them and each batch carries its ports' elements. Then
//! the virtual servers and addresses: each port is compiled, the servers it declares are read
//! from the kernel (when listed there) and diffed, and the messages go out in batches of
//! `CHUNK`, each followed by the addresses its ports bind. Last, kproxy's servers that no port
//! wants are deleted and the addresses no port wants unbound. At no time does the whole load's
//! compiled state or its messages exist at once.
//!
//! Invariants: what reaches the kernel, and the mirror built, are those of diffing every port
//! at once against what the kernel holds (the same servers read, the same messages per server,
//! the same element and address changes); a port's elements reach the kernel no later than its
//! servers, and tables that exist are never replaced piecemeal (no element of theirs goes
//! missing meanwhile); a server shared by two ports is declared by the
//! first in name order, as in a diff; the mirror is replaced only once every batch was
//! accepted; a batch IPVS refuses as differing from what was read is read back and repaired
//! once (`IpvsBackend::apply`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{IpvsBackend, apply_err, element_line, elements_script};
use crate::backends::error::Step;
use crate::backends::ipvs::compile::{self, PortState};
use crate::backends::ipvs::ids::{Counts, id_of};
use crate::backends::ipvs::mirror::{self, Changes, Mirror, Owner};
use crate::backends::ipvs::netlink::{Cmd, DestKey, IpvsMessage, ServiceKey, VirtualServer};
use crate::backends::{BackendError, Plans, SyncReport};
use crate::node::NodeFacts;

/// IPVS messages per batch of a full sync (~0.7 KiB each before encoding).
const CHUNK: usize = 1024;

/// A rewrite's companion elements, streamed with their ports' batches: their counts, and the
/// text of the batch being filled (the tables themselves in the first) with its element lines.
struct Stream {
    counts: Counts,
    script: String,
    lines: usize,
}

/// The companion elements a full sync leaves: counted afresh (a rewrite), or the mirror's
/// counts changed by an overlay (0: the element is gone).
enum Elements {
    Fresh(Counts),
    Overlay(Counts),
}

impl IpvsBackend {
    /// A full sync (see the module docs): adopts what the kernel holds, keeps what is right and
    /// sends what differs.
    pub(super) fn adopt_all(
        &mut self,
        plans: &Plans,
        node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        self.prepare()?;
        let adopt = |e| BackendError::at(Step::Adopt, e);
        let bound = self.kernel.addresses().map_err(adopt)?;
        let listed: BTreeMap<ServiceKey, VirtualServer> = (self.kernel.services())
            .map_err(adopt)?
            .into_iter()
            .map(|vs| (vs.key, vs))
            .collect();
        let facts = self.facts(node);
        let mut operations = 0;
        // No companion table to replace: its elements go with their ports' batches, the
        // tables with the first.
        let mut stream = (self.rewrite && self.companion_gone()).then(|| Stream {
            counts: Counts::default(),
            script: (self.families.iter())
                .map(|f| self.companion_table(*f))
                .collect(),
            lines: 0,
        });
        let elements = match stream {
            Some(_) => None,
            None => {
                let (elements, script) = if self.rewrite {
                    self.all_elements(plans, &facts)
                } else {
                    self.changed_elements(plans, &facts)
                };
                operations += script.lines().count();
                if !script.is_empty() {
                    self.kernel.nft(&script).map_err(apply_err)?;
                }
                Some(elements)
            }
        };
        let mut next = Mirror {
            facts: Some(facts.clone()),
            ..Mirror::default()
        };
        let mut chunk = Changes::default();
        for (name, planned) in plans {
            let owner = Owner {
                planned: planned.clone(),
                facts: facts.clone(),
            };
            let state = owner.compile(&self.settings);
            if let Some(stream) = &mut stream {
                for e in &state.elements {
                    let n = stream.counts.entry(id_of(e)).or_insert(0);
                    *n += 1;
                    if *n == 1 && self.families.contains(&e.family) {
                        stream.script.push_str(&element_line("add", e));
                        stream.lines += 1;
                    }
                }
            }
            for (key, server) in state.servers {
                let owners = next.owners.entry(key).or_default();
                owners.insert(name.clone());
                if owners.len() > 1 {
                    // An earlier port in name order declares it.
                    continue;
                }
                let have = match listed.get(&key) {
                    Some(vs) => Some(self.read_dests(vs.clone()).map_err(adopt)?),
                    None => None,
                };
                mirror::diff_server(&key, have.as_ref(), Some(&server), &mut chunk);
                if let Some(a) = mirror::after(have.as_ref(), Some(&server)) {
                    next.servers.insert(key, a);
                }
            }
            for a in state.addresses {
                let n = next.addresses.entry(a).or_insert(0);
                *n += 1;
                if *n == 1 && !bound.contains(&a) {
                    chunk.bind.push(a);
                }
            }
            next.ports.insert(name.clone(), owner);
            let lines = stream.as_ref().map_or(0, |s| s.lines);
            if chunk.ipvs.len() >= CHUNK || lines >= CHUNK {
                operations += self.send(&mut chunk, stream.as_mut(), &mut next)?;
            }
        }
        for (key, vs) in &listed {
            let ours = vs.owned || bound.contains(&key.addr);
            if ours && !next.owners.contains_key(key) {
                chunk
                    .ipvs
                    .push(IpvsMessage::service(Cmd::DelService, key.attrs()));
            }
        }
        chunk.unbind = (bound.iter())
            .filter(|a| !next.addresses.contains_key(a))
            .copied()
            .collect();
        operations += self.send(&mut chunk, stream.as_mut(), &mut next)?;
        next.elements = match (elements, stream) {
            (_, Some(stream)) => stream.counts,
            (Some(Elements::Fresh(counts)), None) => counts,
            (None, None) => unreachable!("the elements are streamed or counted first"),
            (Some(Elements::Overlay(overlay)), None) => {
                let mut counts = std::mem::take(&mut self.mirror.elements);
                mirror::commit_elements(&mut counts, overlay);
                counts
            }
        };
        // Destinations found at weight 0 were draining under a previous kproxy.
        let adopted: Vec<(ServiceKey, DestKey)> = (next.servers.iter())
            .flat_map(|(s, a)| {
                (a.dests.iter())
                    .filter(|(_, w)| **w == 0)
                    .map(move |(d, _)| (*s, *d))
            })
            .collect();
        self.mirror = next;
        self.track_drains(&adopted);
        Ok(SyncReport { operations })
    }

    /// Whether no companion table is there to replace (none has rules): then a rewrite can
    /// create them in its first batch and add each port's elements with its servers, since no
    /// element is there to go missing meanwhile.
    fn companion_gone(&mut self) -> bool {
        let families = self.families.clone();
        (families.iter()).all(|f| self.kernel.companion_rules(*f).is_ok_and(|n| n == 0))
    }

    /// Sends one batch (the companion elements streamed with it, its messages, then its
    /// addresses) and records in `next` what a read-back found; how many elements, messages
    /// and addresses went.
    fn send(
        &mut self,
        chunk: &mut Changes,
        stream: Option<&mut Stream>,
        next: &mut Mirror,
    ) -> Result<usize, BackendError> {
        let script = match stream {
            Some(s) => {
                s.lines = 0;
                std::mem::take(&mut s.script)
            }
            None => String::new(),
        };
        let servers = &next.servers;
        let (sent, reread) = self.apply(chunk, &script, &|k| servers.get(k).cloned())?;
        // Counted by lines, the tables' text too, as a whole rewrite's is.
        let lines = script.lines().count();
        for (key, state) in reread {
            match state {
                Some(a) => next.servers.insert(key, a),
                None => next.servers.remove(&key),
            };
        }
        // Draining destinations are found in `next.servers` at the end.
        chunk.drain.clear();
        Ok(sent + lines)
    }

    /// The whole companion ruleset with every port's elements, and their counts. Each port is
    /// compiled and dropped; only the script's text is held.
    fn all_elements(&self, plans: &Plans, facts: &Arc<NodeFacts>) -> (Elements, String) {
        let states = (plans.values()).map(|p| compile::compile_port(p, facts, &self.settings));
        self.companion_of(states)
    }

    /// Replaces the companion tables with what the mirror's ports want, touching nothing else
    /// (someone changed or deleted them); how many lines that took.
    pub(super) fn rewrite_companion(&mut self) -> Result<usize, BackendError> {
        let states = (self.mirror.ports.values()).map(|o| o.compile(&self.settings));
        let (elements, script) = self.companion_of(states);
        self.kernel.nft(&script).map_err(apply_err)?;
        if let Elements::Fresh(counts) = elements {
            self.mirror.elements = counts;
        }
        Ok(script.lines().count())
    }

    /// The companion tables, created afresh, with the elements of `states`.
    fn companion_of(&self, states: impl Iterator<Item = PortState>) -> (Elements, String) {
        let mut counts = Counts::default();
        // One text per family, the first family's in the script itself.
        let mut texts: Vec<String> = (self.families.iter())
            .map(|f| self.companion_table(*f))
            .collect();
        for state in states {
            for e in &state.elements {
                let n = counts.entry(id_of(e)).or_insert(0);
                *n += 1;
                let at = self.families.iter().position(|f| *f == e.family);
                if let (1, Some(at)) = (*n, at) {
                    texts[at].push_str(&element_line("add", e));
                }
            }
        }
        let mut texts = texts.into_iter();
        let mut script = texts.next().unwrap_or_default();
        for t in texts {
            script.push_str(&t);
        }
        (Elements::Fresh(counts), script)
    }

    /// The companion elements' difference for the ports whose owner changed (added, removed
    /// or replaced since the mirror): deletions, then additions.
    fn changed_elements(&self, plans: &Plans, facts: &Arc<NodeFacts>) -> (Elements, String) {
        let mut overlay = Counts::default();
        let (mut add, mut del) = (Vec::new(), Vec::new());
        let old = &self.mirror.ports;
        let gone = old.keys().filter(|n| !plans.contains_key(*n));
        for name in plans.keys().chain(gone) {
            let new = plans.get(name).map(|p| Owner {
                planned: p.clone(),
                facts: facts.clone(),
            });
            let was = old.get(name);
            if let (Some(w), Some(n)) = (was, &new)
                && w.same(n)
            {
                continue;
            }
            let compile = |o: &Owner| o.compile(&self.settings).elements;
            mirror::count_elements(
                &self.mirror.elements,
                &mut overlay,
                &was.map(compile).unwrap_or_default(),
                &new.as_ref().map(compile).unwrap_or_default(),
                &mut add,
                &mut del,
            );
        }
        mirror::cancel(&mut add, &mut del);
        (
            Elements::Overlay(overlay),
            elements_script(del.iter(), add.iter()),
        )
    }
}
