//! Between syncs: the drift checks (someone else changed what IPVS mode programmed) and the
//! end of graceful termination (draining destinations deleted once idle). The probe, every
//! check: anyone else's commit to the companion tables (the nf_tables change monitor), the
//! dummy interface and its addresses, and the first virtual server (the canary of `ipvsadm -C`:
//! gone, it makes the scan run at once). The scan, every `SCAN_PERIOD`: every virtual server
//! listed (one dump) and compared with the mirror, and the destinations of `DEST_CHECKS`
//! servers or as many more as `DEST_BUDGET` allows, in rotation (IPVS lists destinations one
//! server at a time).
//!
//! What the scan finds is repaired in place by the next full sync (`repair_in_place`): each
//! server it names is read back and put as the mirror has it (a stray one with kproxy's mark is
//! deleted), then the plans are diffed against the mirror as a partial sync of every port would;
//! nothing else is read (at 10,000 servers, a handful of messages instead of 10,000 destination
//! dumps). Companion tables someone changed are rewritten from the mirror the same way, without
//! reading IPVS; a lost dummy interface or address re-adopts.
//!
//! Invariants: the probe never dumps a whole table or every server; the scan compares only
//! servers' keys and destinations, never their settings, and names every server that differs;
//! draining entries exist only for destinations the mirror holds at weight 0.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::{Duration, Instant};

use super::{DRAIN_CHECK_PERIOD, DRAIN_LIMIT, IpvsBackend, apply_err};
use crate::backends::error::Step;
use crate::backends::ipvs::compile::TABLE;
use crate::backends::ipvs::kernel::KernelError;
use crate::backends::ipvs::mirror::Applied;
use crate::backends::ipvs::netlink::{Cmd, DestKey, IpvsMessage, ServiceKey};
use crate::backends::{BackendError, Plans, SyncReport};
use crate::model::ServicePortName;
use crate::nftables::family_name;
use crate::node::NodeFacts;

/// How often every virtual server is listed and compared with the mirror: a dump of 10,000
/// servers is the scan's main cost (measured in the VM, BENCHMARKS.md "Drift").
pub const SCAN_PERIOD: Duration = Duration::from_secs(1);
/// Servers whose destinations one scan compares at least (one dump each), in rotation: at
/// 10,000 servers a destination someone deleted is noticed within ~80 s, at 128 or fewer
/// within 1 s.
pub const DEST_CHECKS: usize = 128;
/// How long one scan goes on comparing destinations past `DEST_CHECKS` (1 % of a core at one
/// scan a second): where a dump is fast, the rotation covers many more servers a second.
pub const DEST_BUDGET: Duration = Duration::from_millis(10);
/// Above this many servers to repair, a full sync re-adopts instead (one dump of every server
/// and its destinations costs less than reading each of thousands back).
pub const REPAIR_IN_PLACE_MAX: usize = 1_000;

fn show(key: &ServiceKey) -> String {
    format!(
        "{} {}",
        key.protocol.as_str(),
        std::net::SocketAddr::new(key.addr, key.port)
    )
}

impl IpvsBackend {
    /// The scan (see the module's comment): `Some(what)` when IPVS differs from the mirror.
    pub(super) fn scan(&mut self) -> Result<Option<String>, BackendError> {
        // After a failure (`rewrite`) the mirror may not be what was applied, and the next
        // full sync reads everything anyway.
        if !self.prepared || self.rewrite || self.last_scan.elapsed() < SCAN_PERIOD {
            return Ok(None);
        }
        self.last_scan = Instant::now();
        let probe = |e: KernelError| BackendError::at(Step::Probe, e);
        let listed: BTreeMap<ServiceKey, bool> = self
            .kernel
            .services()
            .map_err(probe)?
            .into_iter()
            .map(|vs| (vs.key, vs.owned))
            .collect();
        let servers = &self.mirror.servers;
        let missing: BTreeSet<ServiceKey> = (servers.keys())
            .filter(|k| !listed.contains_key(k))
            .copied()
            .collect();
        let stray: BTreeSet<ServiceKey> = (listed.iter())
            .filter(|(k, owned)| **owned && !servers.contains_key(k))
            .map(|(k, _)| *k)
            .collect();
        // Destinations, in rotation from where the last scan stopped: at least `DEST_CHECKS`
        // servers, more while within `DEST_BUDGET`, never one twice.
        let started = Instant::now();
        let total = self.mirror.servers.len();
        let mut cursor = self.dest_cursor;
        let mut checked = 0;
        let mut differing = Vec::new();
        while checked < total && (checked < DEST_CHECKS || started.elapsed() < DEST_BUDGET) {
            let servers = &self.mirror.servers;
            let next = cursor
                .and_then(|k| servers.range((Bound::Excluded(k), Bound::Unbounded)).next())
                .or_else(|| servers.iter().next())
                .map(|(k, _)| *k);
            let Some(key) = next else { break };
            cursor = Some(key);
            checked += 1;
            if missing.contains(&key) {
                continue;
            }
            let found: BTreeMap<DestKey, u32> = self
                .kernel
                .dests(&key)
                .map_err(probe)?
                .into_iter()
                .map(|d| (d.key, d.weight))
                .collect();
            let want = &self.mirror.servers[&key].dests;
            if &found != want {
                let gone = want.keys().filter(|d| !found.contains_key(d)).count();
                let added = found.keys().filter(|d| !want.contains_key(d)).count();
                differing.push((key, gone, added));
            }
        }
        self.dest_cursor = cursor;
        let mut what = Vec::new();
        if let Some(first) = missing.first() {
            what.push(format!(
                "{} of kproxy's {} virtual servers are gone ({} first)",
                missing.len(),
                total,
                show(first)
            ));
        }
        if let Some(first) = stray.first() {
            what.push(format!(
                "{} virtual server(s) carry kproxy's mark but no Service wants them ({} first)",
                stray.len(),
                show(first)
            ));
        }
        if let Some((key, gone, added)) = differing.first() {
            what.push(format!(
                "virtual server {}: {gone} destination(s) gone, {added} added, or weights changed{}",
                show(key),
                match differing.len() {
                    1 => String::new(),
                    n => format!(" ({} more servers differ)", n - 1),
                }
            ));
        }
        self.repair.extend(missing);
        self.repair.extend(stray);
        self.repair.extend(differing.into_iter().map(|(k, ..)| k));
        Ok((!what.is_empty()).then(|| what.join("; ")))
    }

    /// Rewrites the companion tables from the mirror if the probe said so; puts back, as the
    /// mirror has them, the servers the scan named (deleting those the mirror does not have),
    /// reading only them; then applies whatever the plans changed since the
    /// last sync, diffed against the mirror. Any refusal leaves the next full sync to adopt.
    pub(super) fn repair_in_place(
        &mut self,
        plans: &Plans,
        node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        let mut rewritten = 0;
        if std::mem::take(&mut self.companion) {
            rewritten = self.rewrite_companion()?;
        }
        let keys = std::mem::take(&mut self.repair);
        let want: BTreeMap<ServiceKey, Applied> = (keys.iter())
            .filter_map(|k| Some((*k, self.mirror.servers.get(k)?.clone())))
            .collect();
        let (sent, reread) = self.resend(keys, &|k| want.get(k).cloned())?;
        for (key, left) in reread {
            match left {
                Some(a) => self.mirror.servers.insert(key, a),
                None => self.mirror.servers.remove(&key),
            };
        }
        // Every port planned or applied: a partial sync of them all.
        let names: BTreeSet<ServicePortName> = (self.mirror.ports.keys())
            .chain(plans.keys())
            .cloned()
            .collect();
        let desired = self.desired(plans, names.iter(), node);
        let report = self.apply_ports(desired)?;
        Ok(SyncReport {
            operations: rewritten + sent + report.operations,
        })
    }

    /// Makes the next scan run at once, not at the end of `SCAN_PERIOD`.
    fn scan_now(&mut self) {
        self.last_scan = Instant::now()
            .checked_sub(SCAN_PERIOD)
            .unwrap_or(self.last_scan);
    }

    /// Makes the next drift check scan (tests: no waiting for `SCAN_PERIOD`).
    #[cfg(test)]
    pub(crate) fn scan_due(&mut self) {
        self.scan_now();
    }

    /// Forgets draining entries of servers or destinations that are gone, and starts the clock
    /// for the new ones.
    pub(super) fn track_drains(&mut self, started: &[(ServiceKey, DestKey)]) {
        let now = Instant::now();
        for d in started {
            self.draining.entry(*d).or_insert(now);
        }
        let servers = &self.mirror.servers;
        self.draining
            .retain(|(s, d), _| servers.get(s).is_some_and(|a| a.dests.get(d) == Some(&0)));
    }

    /// Deletes the draining destinations without connections (or past `DRAIN_LIMIT`). `drift`
    /// runs it every `DRAIN_CHECK_PERIOD`.
    pub(crate) fn finish_drains(&mut self) -> Result<usize, BackendError> {
        let services: BTreeSet<ServiceKey> = self.draining.keys().map(|(s, _)| *s).collect();
        let mut deletes = Vec::new();
        for service in services {
            let counts: BTreeMap<DestKey, u32> = self
                .kernel
                .dests(&service)
                .map_err(|e| BackendError::at(Step::Probe, e))?
                .into_iter()
                .map(|d| (d.key, d.active + d.inactive))
                .collect();
            for ((s, d), since) in self.draining.range((service, DestKey::MIN)..) {
                if *s != service {
                    break;
                }
                let idle = counts.get(d).is_none_or(|n| *n == 0);
                if idle || since.elapsed() >= DRAIN_LIMIT {
                    deletes.push((*s, *d, counts.contains_key(d)));
                }
            }
        }
        let messages: Vec<IpvsMessage> = deletes
            .iter()
            .filter(|(_, _, present)| *present)
            .map(|(s, d, _)| crate::backends::ipvs::socket::dest_message(Cmd::DelDest, s, d, 0))
            .collect();
        let sent = self.kernel.ipvs(messages).map_err(apply_err)?;
        for (s, d, _) in &deletes {
            self.draining.remove(&(*s, *d));
            if let Some(a) = self.mirror.servers.get_mut(s) {
                a.dests.remove(d);
            }
        }
        Ok(sent)
    }

    /// The drift checks (see `drift`).
    pub(super) fn probe(&mut self) -> Result<Option<String>, BackendError> {
        if !self.prepared {
            return Ok(None);
        }
        if !self.draining.is_empty() && self.last_drain_check.elapsed() >= DRAIN_CHECK_PERIOD {
            self.last_drain_check = Instant::now();
            self.finish_drains()?;
        }
        let probe = |e: KernelError| BackendError::at(Step::Probe, e);
        let mut what = Vec::new();
        if let Some(foreign) = self.kernel.companion_foreign().map_err(probe)? {
            self.companion = true;
            what.push(foreign);
        }
        for fam in self.families.clone() {
            if self.kernel.companion_rules(fam).map_err(probe)? == 0 {
                self.companion = true;
                what.push(format!(
                    "the companion table {} {TABLE} is gone or empty",
                    family_name(fam)
                ));
            }
        }
        if !self.kernel.link_present().map_err(probe)? {
            self.rewrite = true;
            what.push(format!(
                "the dummy interface {} is gone",
                crate::node::IPVS_LINK
            ));
        } else if let Some(ip) = self.mirror.addresses.keys().next().copied()
            && !self.kernel.is_local(ip).map_err(probe)?
        {
            self.rewrite = true;
            what.push(format!(
                "{ip} is no longer bound to {}",
                crate::node::IPVS_LINK
            ));
        }
        if !what.is_empty() {
            return Ok(Some(what.join("; ")));
        }
        // The first server is the canary of `ipvsadm -C`: when it is gone, scan now.
        if let Some(key) = self.mirror.servers.keys().next().copied()
            && self.kernel.service(&key).map_err(probe)?.is_none()
        {
            self.scan_now();
        }
        Ok(None)
    }
}
