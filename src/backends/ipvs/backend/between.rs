//! Between syncs: the drift probe (cheap checks that someone else changed what IPVS mode
//! programmed) and the end of graceful termination (draining destinations deleted once idle).
//!
//! Invariants: the probe never dumps a whole table or every server; draining entries exist only
//! for destinations the mirror holds at weight 0.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{DRAIN_CHECK_PERIOD, DRAIN_LIMIT, IpvsBackend, apply_err};
use crate::backends::BackendError;
use crate::backends::error::Step;
use crate::backends::ipvs::compile::TABLE;
use crate::backends::ipvs::kernel::KernelError;
use crate::backends::ipvs::netlink::{Cmd, DestKey, IpvsMessage, ServiceKey};
use crate::nftables::family_name;

impl IpvsBackend {
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
        for fam in self.families.clone() {
            if self.kernel.companion_rules(fam).map_err(probe)? == 0 {
                return Ok(Some(format!(
                    "the companion table {} {TABLE} is gone or empty",
                    family_name(fam)
                )));
            }
        }
        if !self.kernel.link_present().map_err(probe)? {
            return Ok(Some(format!(
                "the dummy interface {} is gone",
                crate::node::IPVS_LINK
            )));
        }
        if let Some(ip) = self.mirror.addresses.keys().next().copied()
            && !self.kernel.is_local(ip).map_err(probe)?
        {
            return Ok(Some(format!(
                "{ip} is no longer bound to {}",
                crate::node::IPVS_LINK
            )));
        }
        if let Some(key) = self.mirror.servers.keys().next().copied()
            && self.kernel.service(&key).map_err(probe)?.is_none()
        {
            return Ok(Some(format!(
                "virtual server {} {} is gone",
                key.protocol.as_str(),
                std::net::SocketAddr::new(key.addr, key.port)
            )));
        }
        Ok(None)
    }
}
