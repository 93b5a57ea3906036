//! The IPVS backend: compile each service port (`compile.rs`), diff against the mirror of what
//! was applied (`mirror.rs`), apply through the kernel (`kernel.rs`). Full syncs read the
//! kernel's virtual servers and the dummy interface's addresses and reconcile them (adoption:
//! nothing that is right is removed or re-added), streamed port by port in batches
//! (`backend/full.rs`); partial syncs send only the messages of the changed ports. Removed TCP destinations drain at weight 0 and are deleted once IPVS counts no
//! connection on them, or after `DRAIN_LIMIT`.
//!
//! Invariants: the mirror changes only after everything of a sync was applied; any failure
//! makes the caller run a full sync; kproxy's virtual servers are those carrying its mark
//! (`F_KPROXY`), those at a key a service port wants, and those on addresses bound to the dummy
//! interface (only kproxy binds there); nothing else in IPVS is touched, on the node's own
//! addresses neither; a refusal that says IPVS differs from the mirror (EEXIST, ESRCH,
//! ENOENT) makes the sync read the servers its batch touched back and send the difference, once
//! per batch (a partial sync is one batch); the
//! companion tables are rewritten whole, atomically, only by the first full sync and the first
//! after a failure, drift or cleanup; otherwise only their elements' difference is sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::compile::{self, Element, IpvsSettings, PortState, Server, TABLE};
use super::kernel::{Kernel, KernelError};
use super::mirror::{self, Applied, Changes, Mirror, Owner};
use super::netlink::{DestKey, ServiceKey, VirtualServer};
use super::render;

mod between;
#[cfg(test)]
pub use between::DEST_CHECKS;
mod full;
use crate::backends::error::Step;
use crate::backends::{Backend, BackendConfig, BackendError, Plans, ProxyMode, SyncReport};
use crate::model::{IpFamily, ServicePortName};
use crate::nftables::family_name;
use crate::node::NodeFacts;

/// How often draining destinations are checked.
pub const DRAIN_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// A draining destination is deleted after this long even with connections left (IPVS's own
/// timeout for an established TCP connection).
pub const DRAIN_LIMIT: Duration = Duration::from_secs(900);

/// The sysctls upstream's IPVS mode sets (in the node's network namespace).
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    ("net/ipv4/vs/conn_reuse_mode", "0"),
    ("net/ipv4/ip_forward", "1"),
];
/// `--ipvs-strict-arp`.
pub const STRICT_ARP: &[(&str, &str)] = &[
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
];

pub struct IpvsBackend {
    settings: IpvsSettings,
    strict_arp: bool,
    timeouts: super::Timeouts,
    kernel: Box<dyn Kernel>,
    mirror: Mirror,
    families: Vec<IpFamily>,
    draining: BTreeMap<(ServiceKey, DestKey), Instant>,
    last_drain_check: Instant,
    prepared: bool,
    /// The next full sync rewrites the companion tables whole (at start, and after a failure,
    /// drift or cleanup); otherwise it sends their elements' difference from the mirror.
    rewrite: bool,
    /// The scan of every virtual server (and of some servers' destinations, in rotation):
    /// when it last ran, and the last server whose destinations it compared.
    last_scan: Instant,
    dest_cursor: Option<ServiceKey>,
    /// Servers the scan found differing from the mirror: the next full sync puts each back as
    /// the mirror has it (or deletes it), reading only those, instead of reading every server.
    repair: BTreeSet<ServiceKey>,
    /// Someone changed the companion tables: the next full sync rewrites them from the mirror,
    /// without reading IPVS.
    companion: bool,
}

/// Servers read back from the kernel during a sync, with the state the sync left them in.
type Reread = BTreeMap<ServiceKey, Option<Applied>>;

fn apply_err(e: KernelError) -> BackendError {
    BackendError::at(Step::Apply, e)
}

/// `add element ip kproxy-ipvs SET { KEY }` (or `delete`).
pub fn element_line(verb: &str, e: &Element) -> String {
    format!(
        "{verb} element {} {TABLE} {} {{ {} }}\n",
        family_name(e.family),
        e.set,
        e.key
    )
}

/// The companion script that deletes `del` and adds `add`, in that order.
fn elements_script<'a>(
    del: impl Iterator<Item = &'a Element>,
    add: impl Iterator<Item = &'a Element>,
) -> String {
    let mut script = String::new();
    for e in del {
        script.push_str(&element_line("delete", e));
    }
    for e in add {
        script.push_str(&element_line("add", e));
    }
    script
}

/// The companion table of `family` made sure of, deleted, and created again without elements.
fn replace_table(family: IpFamily, settings: &IpvsSettings) -> String {
    let f = family_name(family);
    let mut script = format!("table {f} {TABLE} {{}}\ndelete table {f} {TABLE}\n");
    script.push_str(&compile::table(family, settings));
    script
}

impl IpvsBackend {
    pub fn new(config: &BackendConfig, kernel: Box<dyn Kernel>) -> IpvsBackend {
        let families = crate::backends::host_families();
        IpvsBackend {
            settings: IpvsSettings::from_config(config),
            strict_arp: config.ipvs_strict_arp,
            timeouts: config.ipvs_timeouts,
            kernel,
            mirror: Mirror::default(),
            families,
            draining: BTreeMap::new(),
            last_drain_check: Instant::now(),
            prepared: false,
            rewrite: true,
            last_scan: Instant::now(),
            dest_cursor: None,
            repair: BTreeSet::new(),
            companion: false,
        }
    }

    /// The IPv4-only variant, for tests on hosts with IPv6 disabled and for the fake kernel.
    pub fn with_families(mut self, families: Vec<IpFamily>) -> IpvsBackend {
        self.families = families;
        self
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    pub fn draining(&self) -> impl Iterator<Item = &(ServiceKey, DestKey)> {
        self.draining.keys()
    }

    /// Loads IPVS (modprobing ip_vs when its family is missing), sets the sysctls and the
    /// connection timeouts given. Once per backend.
    fn prepare(&mut self) -> Result<(), BackendError> {
        if self.prepared {
            return Ok(());
        }
        self.kernel.load_ipvs().map_err(apply_err)?;
        let strict: &[(&str, &str)] = if self.strict_arp { STRICT_ARP } else { &[] };
        for (path, value) in SYSCTLS.iter().chain(strict) {
            // As iptables mode does for route_localnet: say so and go on. Without vs/conntrack=1
            // masquerading fails; the operator can set these on the node instead.
            if let Err(error) = self.kernel.sysctl(path, value) {
                tracing::warn!(%error, "cannot set {path}={value}; IPVS mode may not work as intended");
            }
        }
        if let Some(m) = self.timeouts.message() {
            self.kernel.ipvs(vec![m]).map_err(apply_err)?;
        }
        self.prepared = true;
        Ok(())
    }

    /// The node facts to compile with, shared: the mirror's when they are equal to `node`.
    fn facts(&self, node: &NodeFacts) -> Arc<NodeFacts> {
        match &self.mirror.facts {
            Some(f) if **f == *node => f.clone(),
            _ => Arc::new(node.clone()),
        }
    }

    /// `vs` with its destinations as the kernel has them.
    fn read_dests(&mut self, vs: VirtualServer) -> Result<Applied, KernelError> {
        let dests = self
            .kernel
            .dests(&vs.key)?
            .into_iter()
            .map(|d| (d.key, d.weight))
            .collect();
        Ok(Applied { vs, dests })
    }

    /// Server `key` as the kernel has it now, with its destinations.
    fn read_server(&mut self, key: &ServiceKey) -> Result<Option<Applied>, KernelError> {
        match self.kernel.service(key)? {
            Some(vs) => Ok(Some(self.read_dests(vs)?)),
            None => Ok(None),
        }
    }

    /// What replaces the companion table of `family` in one transaction, before its elements:
    /// the table made sure of, deleted, and created again without elements.
    fn companion_table(&self, family: IpFamily) -> String {
        replace_table(family, &self.settings)
    }

    /// The whole companion ruleset with `elements` under `settings`, replacing what is there in
    /// one transaction.
    fn companion_script<'a>(
        &self,
        settings: &IpvsSettings,
        elements: impl Iterator<Item = &'a Element> + Clone,
    ) -> String {
        let mut script = String::new();
        for fam in &self.families {
            script.push_str(&replace_table(*fam, settings));
            for e in elements.clone().filter(|e| e.family == *fam) {
                script.push_str(&element_line("add", e));
            }
        }
        script
    }

    /// Applies `changes` after the companion `script`, moving its messages to the kernel (they
    /// are not copied). `after` is the state each server the changes touch should be left in.
    /// When IPVS refuses a message because it differs from the mirror (someone else added or
    /// deleted a server or destination), those servers are read back and the difference to
    /// `after` is sent, once; a second refusal is an error, and the sync loop's full resync
    /// reads everything. Returns how many messages were sent, and the servers read back with
    /// the state they were left in (for the mirror).
    fn apply(
        &mut self,
        changes: &mut Changes,
        script: &str,
        after: &dyn Fn(&ServiceKey) -> Option<Applied>,
    ) -> Result<(usize, Reread), BackendError> {
        if !script.is_empty() {
            self.kernel.nft(script).map_err(apply_err)?;
        }
        let messages = std::mem::take(&mut changes.ipvs);
        // The servers the messages touch, kept for a read-back: the messages go to the kernel.
        let touched: BTreeSet<ServiceKey> = messages
            .iter()
            .filter_map(|m| VirtualServer::from_attrs(m.service_attrs()?))
            .map(|vs| vs.key)
            .collect();
        let (mut sent, reread) = match self.kernel.ipvs(messages) {
            Ok(n) => (n, Reread::new()),
            Err(e) if e.is_state_mismatch() => {
                tracing::info!(error = %e, "IPVS differs from what kproxy applied; reading the servers concerned back");
                self.resend(touched, after)?
            }
            Err(e) => return Err(apply_err(e)),
        };
        sent += self
            .kernel
            .bind(
                std::mem::take(&mut changes.bind),
                std::mem::take(&mut changes.unbind),
            )
            .map_err(apply_err)?;
        Ok((sent, reread))
    }

    /// Reads back every server in `keys` and sends what turns each into `after`.
    fn resend(
        &mut self,
        keys: BTreeSet<ServiceKey>,
        after: &dyn Fn(&ServiceKey) -> Option<Applied>,
    ) -> Result<(usize, Reread), BackendError> {
        let mut fix = Changes::default();
        let mut reread = Reread::new();
        for key in keys {
            let have = self.read_server(&key).map_err(apply_err)?;
            // Destinations at weight 0 are draining: wanted only at weight 0, which the diff
            // of a TCP server does by itself.
            let want = after(&key).map(|a| Server {
                vs: a.vs,
                dests: a
                    .dests
                    .iter()
                    .filter(|(_, w)| **w > 0)
                    .map(|(d, _)| *d)
                    .collect(),
            });
            mirror::diff_server(&key, have.as_ref(), want.as_ref(), &mut fix);
            reread.insert(key, mirror::after(have.as_ref(), want.as_ref()));
        }
        let sent = self.kernel.ipvs(fix.ipvs).map_err(apply_err)?;
        Ok((sent, reread))
    }
}

impl Backend for IpvsBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Ipvs
    }

    fn prepare_host(&mut self) -> Result<(), BackendError> {
        self.prepare()
    }

    fn sync_full(&mut self, plans: &Plans, node: &NodeFacts) -> Result<SyncReport, BackendError> {
        if self.settings.local != node.local_traffic {
            // Its companion rules match local traffic: they are written again.
            self.settings.local = node.local_traffic.clone();
            self.companion = true;
        }
        let in_place = !self.rewrite
            && (self.companion || !self.repair.is_empty())
            && self.repair.len() <= between::REPAIR_IN_PLACE_MAX;
        let result = if in_place {
            self.repair_in_place(plans, node)
        } else {
            // An adopting sync rewrites the companion tables only when told to.
            self.rewrite |= std::mem::take(&mut self.companion);
            self.repair.clear();
            self.adopt_all(plans, node)
        };
        self.rewrite = result.is_err();
        result
    }

    fn sync_partial(
        &mut self,
        plans: &Plans,
        changed: &BTreeSet<ServicePortName>,
        node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        if self.rewrite {
            return Err(BackendError::not_loaded());
        }
        let desired = self.desired(plans, changed.iter(), node);
        let result = self.apply_ports(desired);
        self.rewrite |= result.is_err();
        result
    }

    fn drift(&mut self) -> Result<Option<String>, BackendError> {
        // The probe flags what it finds for the next full sync (`rewrite` or `companion`).
        if let Some(found) = self.probe()? {
            return Ok(Some(found));
        }
        // Virtual servers and destinations: the next full sync repairs those the scan names,
        // in place; the companion tables need no rewrite for that.
        self.scan()
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.rewrite = true;
        self.mirror = Mirror::default();
        super::cleanup::remove(self.kernel.as_mut(), &self.families)
            .map_err(|e| BackendError::at(Step::Cleanup, e))
    }

    fn cleanup_plan(&mut self) -> Result<Vec<String>, BackendError> {
        super::cleanup::plan(self.kernel.as_mut(), &self.families)
            .map(|removal| removal.describe())
            .map_err(|e| BackendError::at(Step::CleanupPlan, e))
    }

    fn render(&self, plans: &Plans, node: &NodeFacts) -> String {
        let states: Vec<PortState> = plans
            .values()
            .map(|p| compile::compile_port(p, node, &self.settings))
            .collect();
        let elements: BTreeSet<Element> = states
            .iter()
            .flat_map(|s| s.elements.iter().cloned())
            .collect();
        let settings = IpvsSettings {
            local: node.local_traffic.clone(),
            ..self.settings.clone()
        };
        render::render(&states, &self.companion_script(&settings, elements.iter()))
    }
}

impl IpvsBackend {
    /// What each port in `names` should become: its owner in `plans`, or `None` (removed).
    fn desired<'a>(
        &self,
        plans: &Plans,
        names: impl Iterator<Item = &'a ServicePortName>,
        node: &NodeFacts,
    ) -> BTreeMap<ServicePortName, Option<Owner>> {
        let facts = self.facts(node);
        names
            .map(|name| {
                let owner = plans.get(name).map(|p| Owner {
                    planned: p.clone(),
                    facts: facts.clone(),
                });
                (name.clone(), owner)
            })
            .collect()
    }

    /// Sends what turns the mirror's state of each port in `desired` into its new state
    /// (None: the port is gone), companion elements included; never reads the kernel.
    fn apply_ports(
        &mut self,
        desired: BTreeMap<ServicePortName, Option<Owner>>,
    ) -> Result<SyncReport, BackendError> {
        let (mut changes, mut delta) = self.mirror.diff_ports(desired, &self.settings);
        let script = elements_script(changes.del_elements.iter(), changes.add_elements.iter());
        let (sent, reread) = self.apply(&mut changes, &script, &|k| {
            delta.servers.get(k).cloned().flatten()
        })?;
        delta.servers.extend(reread);
        self.mirror.commit(delta);
        self.track_drains(&changes.drain);
        Ok(SyncReport {
            operations: sent + changes.add_elements.len() + changes.del_elements.len(),
        })
    }
}
