//! `IptablesBackend`: the `Backend` contract on top of compile, diff and `iptables-restore
//! --noflush` (one process per family, input on stdin).
//!
//! Invariants: a family's mirror changes only after its restore succeeded. The first full sync
//! (and the first after any failure, drift or cleanup) adopts: it reads `iptables-save` of the
//! nat and filter tables and rewrites every kproxy chain in place (`adopt.rs`). Later full syncs
//! diff against the mirror; partial syncs diff only the changed ports and never list the kernel.
//! A failed restore is logged with iptables' own message and makes the next full sync adopt.
//! `drift` first asks the kernel's nf_tables notifications (iptables-nft: anyone else's
//! commit that touched a `KPROXY-` chain or a rule naming one, `nftables::monitor`), then
//! compares a probe snapshot (`probe.rs`) with the baseline, at most once per `PROBE_PERIOD`. Someone else's change is never taken into the baseline by a sync that
//! happens before the next probe: with iptables-nft the baseline follows from the mirror
//! (checked against the kernel after every full sync); with legacy each sync first compares
//! the kernel with the old baseline and keeps what it found for `drift` to report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use super::adopt::{SaveParser, Saved};
use super::compile::{Fixed, Table, compile_fixed};
use super::load::{self, Load};
use super::mirror::{Mirror, Scope};
use super::probe::{self, Snapshot};
use super::restore::Restore;
use super::restore_error::RestoreError;
use super::tools;
use super::variant::Variant;
use crate::backends::error::Step;
use crate::backends::{
    Backend, BackendConfig, BackendError, Plans, ProxyMode, SyncReport, TableRules,
};
use crate::model::{IpFamily, ServicePortName};
use crate::nftables::monitor::{Kind, LARGE, Monitor, Touch};
use crate::node::{LocalTraffic, NodeFacts};

/// Full syncs in a row whose check found the kernel unlike the mirror, after which the
/// iptables-nft baseline is measured instead (a foreign rule naming a `KPROXY-` chain in a
/// built-in chain would otherwise be "repaired" forever).
const MISMATCHES_TRUSTED: u8 = 3;

/// The shortest interval between two probes: the sync loop asks every 400 ms, so each ask
/// probes (0.21 ms with iptables-nft, 12 µs with legacy); this only bounds a faster caller.
pub const PROBE_PERIOD: Duration = Duration::from_millis(300);

/// The sysctl that lets DNAT send 127.0.0.0/8 traffic off the loopback (localhost NodePorts).
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

pub struct IptablesBackend {
    config: BackendConfig,
    variant: Variant,
    /// The families this host has (IPv6 can be disabled in the kernel).
    families: Vec<IpFamily>,
    mirrors: BTreeMap<IpFamily, Mirror>,
    adopt: bool,
    /// What the probe should find; None before the first full sync and when the probe fails.
    baseline: Option<Snapshot>,
    /// Drift found during a sync, reported by the next `drift`.
    found: Option<String>,
    /// Full syncs in a row after which the iptables-nft probe differed from the mirror.
    mismatches: u8,
    last_probe: Option<Instant>,
    /// Lines of input the last sync restored.
    last_lines: usize,
    /// Rules (`-A` and `-I` lines) the last sync wrote per family and table
    /// (`kubeproxy_sync_proxy_rules_iptables_last`).
    last_rules: BTreeMap<(IpFamily, Table), usize>,
    /// The family whose restore failed in the last sync.
    failed: Option<IpFamily>,
    /// iptables-nft: the kernel's notifications of who changed kproxy's chains (and the hooks
    /// into them); `None` for legacy, or when it cannot be opened.
    monitor: Option<Monitor>,
    /// kproxy's chains whose rules someone else changed: the next full sync rewrites them
    /// from the mirror (iptables-nft, whose notifications name them).
    repair: BTreeSet<(IpFamily, Table, String)>,
    /// Adoptions so far (start-up, failures, drift that could not be repaired in place).
    adoptions: u64,
}

/// Whether an nf_tables notification is about kproxy's iptables-nft rules: a `KPROXY-` chain
/// or a rule in one, a rule anywhere that names one (the hooks in the built-in chains), or
/// the deletion of a whole nat or filter table.
pub fn kproxy_chains(t: &Touch<'_>) -> bool {
    const PREFIX: &[u8] = b"KPROXY-";
    crate::nfnetlink::ip_family(t.family).is_some()
        && matches!(t.table, "nat" | "filter")
        && (t.name.starts_with("KPROXY-")
            || (t.kind == Kind::Table && t.deleted)
            || (t.kind == Kind::Rule && t.attrs.windows(PREFIX.len()).any(|w| w == PREFIX)))
}

impl IptablesBackend {
    pub fn new(config: BackendConfig, variant: Variant) -> Self {
        let monitor = (variant == Variant::Nft)
            .then(|| {
                Monitor::open(None, kproxy_chains)
                    .inspect_err(|error| tracing::warn!(%error, "cannot watch nf_tables changes; drift is noticed by counting rules only"))
                    .ok()
            })
            .flatten();
        IptablesBackend::with_monitor(config, variant, monitor)
    }

    /// Without a change monitor (drift is noticed by counting rules): for `--dry-run`, which
    /// programs nothing and has nothing to watch.
    pub fn unwatched(config: BackendConfig, variant: Variant) -> Self {
        IptablesBackend::with_monitor(config, variant, None)
    }

    fn with_monitor(config: BackendConfig, variant: Variant, monitor: Option<Monitor>) -> Self {
        let families = crate::backends::host_families();
        if !families.contains(&IpFamily::V6) {
            tracing::warn!("IPv6 is disabled in this kernel: iptables mode programs IPv4 only");
        }
        IptablesBackend {
            config,
            variant,
            families,
            mirrors: BTreeMap::new(),
            adopt: true,
            baseline: None,
            found: None,
            mismatches: 0,
            last_probe: None,
            last_lines: 0,
            last_rules: BTreeMap::new(),
            failed: None,
            monitor,
            repair: BTreeSet::new(),
            adoptions: 0,
        }
    }

    /// How often the tables were read back whole and rewritten.
    pub fn adoptions(&self) -> u64 {
        self.adoptions
    }

    /// What the next full sync does about `foreign` changes: rewrite the `KPROXY-` chains
    /// whose rules changed, adopt for anything else (chains or tables created or deleted, the
    /// hooks in the built-in chains, notifications lost).
    fn plan_repair(&mut self, foreign: &crate::nftables::monitor::Foreign) {
        if foreign.lost || foreign.unseen || foreign.more > 0 {
            self.adopt = true;
        }
        for (kind, _, family, table, chain) in foreign.commits.iter().flat_map(|c| c.2.keys()) {
            let table = Table::ALL.into_iter().find(|t| t.as_str() == table);
            match (table, crate::nfnetlink::ip_family(*family)) {
                (Some(t), Some(family)) if *kind == Kind::Rule && chain.starts_with("KPROXY-") => {
                    self.repair.insert((family, t, chain.clone()));
                }
                _ => self.adopt = true,
            }
        }
    }

    /// Rewrites the chains someone else changed, each with the rules the mirror says; false
    /// when one of them is not kproxy's (then the caller adopts).
    fn repair_chains(&mut self) -> Result<bool, BackendError> {
        let mut chains: BTreeMap<IpFamily, BTreeSet<(Table, String)>> = BTreeMap::new();
        for (family, table, chain) in std::mem::take(&mut self.repair) {
            chains.entry(family).or_default().insert((table, chain));
        }
        let mut restores: BTreeMap<IpFamily, Restore> = BTreeMap::new();
        for (family, chains) in chains {
            let Some(mirror) = self.mirrors.get(&family) else {
                return Ok(false);
            };
            let Some(rules) = mirror.chains_rules(&chains, family, &self.config) else {
                return Ok(false);
            };
            let restore = restores.entry(family).or_default();
            for ((table, chain), rules) in rules {
                restore.table(table).write_chain(&chain, &rules);
            }
        }
        for (family, restore) in restores {
            self.restore_diff(family, &restore)?;
        }
        Ok(true)
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    pub fn mirror(&self, family: IpFamily) -> Option<&Mirror> {
        self.mirrors.get(&family)
    }

    /// Lines of input the last sync restored.
    pub fn last_restore_lines(&self) -> usize {
        self.last_lines
    }

    /// Runs one family's restore of `lines` lines, whose input `input` writes; on failure,
    /// iptables' message is the error.
    fn restore(
        &mut self,
        family: IpFamily,
        lines: usize,
        commits: u32,
        input: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<usize, BackendError> {
        let program = self.variant.restore(family);
        let result = match &mut self.monitor {
            Some(m) => m.writing(lines > LARGE, Some(commits), || {
                tools::restore(&program, input)
            }),
            None => tools::restore(&program, input),
        };
        if let Err(error) = result {
            self.adopt = true;
            self.failed = Some(family);
            tracing::warn!(program, %error, lines, "iptables-restore failed");
            return Err(BackendError::at(Step::Apply, error));
        }
        self.last_lines += lines;
        Ok(lines)
    }

    /// Runs one family's restore of a diff (nothing when it is empty).
    fn restore_diff(&mut self, family: IpFamily, input: &Restore) -> Result<usize, BackendError> {
        if input.is_empty() {
            return Ok(0);
        }
        let commits = input.commits();
        let lines = self.restore(family, input.len(), commits, &mut |w| write!(w, "{input}"))?;
        for (table, ops) in &input.tables {
            *self.last_rules.entry((family, *table)).or_default() += ops.rules_written();
        }
        Ok(lines)
    }

    /// Before a sync: nothing written yet, in any family and table, and nothing failed.
    fn begin_sync(&mut self) {
        self.last_lines = 0;
        self.failed = None;
        self.last_rules = (self.families.iter())
            .flat_map(|f| Table::ALL.map(|t| ((*f, t), 0)))
            .collect();
    }

    /// Adopts in one family: reads what the kernel holds, then loads `fixed` and every port of
    /// `plans` over it, streamed. Returns the lines restored and the mirror it leaves.
    fn load(
        &mut self,
        family: IpFamily,
        fixed: Fixed,
        plans: &Plans,
        local: &LocalTraffic,
    ) -> Result<(usize, Mirror), BackendError> {
        let saved = self.save(family)?;
        // A copy (a few addresses), as `restore` takes the backend mutably.
        let config = self.config.clone();
        let ports = load::compiled(plans, family, &config, local);
        let load = Load::new(&fixed, &saved, &ports);
        drop(saved);
        let commits = load.commits();
        let lines = self.restore(family, load.len(), commits, &mut |w| load.write(w, &ports))?;
        for (table, n) in load.rules_written() {
            *self.last_rules.entry((family, table)).or_default() += n;
        }
        let port_rules = load.port_rules().clone();
        drop(load);
        Ok((
            lines,
            Mirror::loaded(fixed, plans, port_rules, local.clone()),
        ))
    }

    /// What `iptables-save` shows of kproxy in the nat and filter tables of `family`.
    fn save(&self, family: IpFamily) -> Result<BTreeMap<Table, Saved>, BackendError> {
        let program = self.variant.save(family);
        let mut parser = SaveParser::default();
        for table in Table::ALL {
            tools::save(&program, table.as_str(), &mut |line| parser.line(line))
                .map_err(|e| BackendError::at(Step::Adopt, e))?;
        }
        Ok(parser.finish())
    }

    /// Before a write with legacy iptables: compares the kernel with the baseline and keeps a
    /// difference for `drift` to report (the write would hide it in the next baseline).
    /// Returns whether drift is known.
    fn drift_before_write(&mut self) -> bool {
        if self.variant == Variant::Legacy
            && !self.adopt
            && self.found.is_none()
            && let Some(before) = &self.baseline
            && let Ok(now) = probe::snapshot(self.variant, &self.families)
            && &now != before
        {
            self.found = Some(self.describe(before, &now));
        }
        self.found.is_some()
    }

    /// After a restore: the baseline later drift checks compare with. Legacy's is measured.
    /// iptables-nft's follows from the mirror; a partial sync leaves it alone (it writes no
    /// probed chain) and a full sync checks the kernel against it at once.
    fn rebaseline(&mut self, full: bool, adopted: bool) {
        if self.found.is_some() && !adopted {
            // Drift found before this write: the old baseline stays until the repair.
            return;
        }
        if self.variant == Variant::Nft && !full && self.baseline.is_some() {
            return;
        }
        self.last_probe = Some(Instant::now());
        let measured = match probe::snapshot(self.variant, &self.families) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the iptables drift snapshot");
                self.baseline = None;
                return;
            }
        };
        if self.variant == Variant::Legacy {
            self.baseline = Some(measured);
            return;
        }
        let fixed = self
            .mirrors
            .iter()
            .filter_map(|(family, m)| Some((*family, m.fixed.as_ref()?)));
        let expected = probe::expected(fixed);
        if measured == expected {
            self.mismatches = 0;
            self.baseline = Some(expected);
            return;
        }
        self.mismatches = self.mismatches.saturating_add(1);
        let what = self.describe(&expected, &measured);
        if self.mismatches < MISMATCHES_TRUSTED {
            // Only kproxy's own chains differ: rewrite them in place, as when the
            // notifications name them (a change that slipped in while kproxy wrote unsubscribed).
            if self.monitor.is_some()
                && let Some(chains) = probe::differing_kproxy_chains(&expected, &measured)
            {
                self.repair.extend(chains);
            }
            self.found = Some(what);
            self.baseline = Some(expected);
        } else {
            if self.mismatches == MISMATCHES_TRUSTED {
                tracing::warn!(drift = %what, "the kernel still differs from kproxy's rules after {MISMATCHES_TRUSTED} full syncs in a row; drift checks now compare with what was measured");
            }
            self.baseline = Some(measured);
        }
    }

    fn describe(&self, want: &Snapshot, found: &Snapshot) -> String {
        format!(
            "iptables-{}: {}",
            self.variant.as_str(),
            probe::describe(want, found)
        )
    }

    fn set_route_localnet(&self) {
        if !self.config.localhost_nodeports {
            return;
        }
        // Already set (by the node, or a kproxy before): nothing to write, which a container's
        // read-only /proc/sys would refuse.
        if std::fs::read_to_string(ROUTE_LOCALNET).is_ok_and(|v| v.trim() == "1") {
            return;
        }
        if let Err(e) = std::fs::write(ROUTE_LOCALNET, "1") {
            tracing::warn!(error = %e, "cannot set {ROUTE_LOCALNET}: localhost NodePorts will not work");
        }
    }
}

impl Backend for IptablesBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Iptables
    }

    fn prepare_host(&mut self) -> Result<(), BackendError> {
        self.set_route_localnet();
        Ok(())
    }

    fn sync_full(&mut self, plans: &Plans, node: &NodeFacts) -> Result<SyncReport, BackendError> {
        self.begin_sync();
        if !self.adopt && !self.repair.is_empty() && !self.repair_chains()? {
            self.adopt = true;
        }
        self.repair.clear();
        // A new local-traffic match (NodeCIDR mode: the Node's podCIDRs changed) changes rules
        // of every port: load everything again, as after a restart.
        let local = &node.local_traffic;
        self.adopt |= self.mirrors.values().any(|m| m.local() != local);
        let adopting = self.adopt || self.drift_before_write();
        if adopting {
            self.adoptions += 1;
            self.set_route_localnet();
            // What others changed so far is in what adoption is about to read.
            if let Some(m) = &mut self.monitor {
                let _ = m.foreign();
            }
        }
        let mut report = SyncReport::default();
        let families = IpFamily::ALL
            .into_iter()
            .filter(|f| self.families.contains(f));
        for family in families.collect::<Vec<_>>() {
            let fixed = compile_fixed(family, node, &self.config);
            if adopting {
                let (lines, mirror) = self.load(family, fixed, plans, local)?;
                report.operations += lines;
                self.mirrors.insert(family, mirror);
                continue;
            }
            let mirror = self.mirrors.entry(family).or_default();
            let diff = mirror.diff(plans, Scope::Full(&fixed), family, &self.config);
            report.operations += self.restore_diff(family, &diff.restore)?;
            self.mirrors.entry(family).or_default().commit(diff);
        }
        self.adopt = false;
        self.rebaseline(true, adopting);
        Ok(report)
    }

    fn sync_partial(
        &mut self,
        plans: &Plans,
        changed: &BTreeSet<ServicePortName>,
        _node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        self.begin_sync();
        if self.adopt || self.mirrors.values().any(|m| !m.is_loaded()) || self.mirrors.is_empty() {
            return Err(BackendError::not_loaded());
        }
        self.drift_before_write();
        let mut report = SyncReport::default();
        for family in self.families.clone() {
            let scope = Scope::Ports(changed);
            let diff = self.mirrors[&family].diff(plans, scope, family, &self.config);
            report.operations += self.restore_diff(family, &diff.restore)?;
            let mirror = self.mirrors.get_mut(&family).expect("loaded above");
            mirror.commit(diff);
        }
        self.rebaseline(false, false);
        Ok(report)
    }

    fn drift(&mut self) -> Result<Option<String>, BackendError> {
        if let Some(m) = &mut self.monitor {
            let foreign = m
                .foreign()
                .map_err(|e| BackendError::at(Step::Probe, RestoreError::from(e)))?;
            if !foreign.is_empty() && !self.adopt && self.baseline.is_some() {
                // The notifications say what changed: a difference the last sync's check
                // found is this change (repaired in place), not a reason to adopt.
                self.found = None;
                self.plan_repair(&foreign);
                return Ok(Some(format!("iptables-nft: {foreign}")));
            }
        }
        if let Some(what) = self.found.take() {
            // Adopt, unless the difference is only kproxy's chains (`rebaseline`).
            self.adopt |= self.repair.is_empty();
            return Ok(Some(what));
        }
        if self.monitor.is_some() && !self.repair.is_empty() {
            // The rule counts differ until the repair: not news.
            return Ok(None);
        }
        if self.adopt || self.baseline.is_none() {
            return Ok(None);
        }
        if self.last_probe.is_some_and(|t| t.elapsed() < PROBE_PERIOD) {
            return Ok(None);
        }
        self.last_probe = Some(Instant::now());
        let now = probe::snapshot(self.variant, &self.families)
            .map_err(|e| BackendError::at(Step::Probe, RestoreError::from(e)))?;
        let before = self.baseline.as_ref().expect("checked above");
        if &now == before {
            return Ok(None);
        }
        self.adopt = true;
        Ok(Some(self.describe(before, &now)))
    }

    fn table_rules(&self) -> Vec<TableRules> {
        let mirrors = self.mirrors.iter();
        mirrors
            .flat_map(|(family, m)| {
                m.rules_per_table()
                    .into_iter()
                    .map(|(table, total)| TableRules {
                        family: *family,
                        table: table.as_str(),
                        total,
                        last_sync: self.last_rules.get(&(*family, table)).copied().unwrap_or(0),
                    })
            })
            .collect()
    }

    fn failed_family(&self) -> Option<IpFamily> {
        self.failed
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.mirrors.clear();
        self.adopt = true;
        self.baseline = None;
        self.found = None;
        crate::backends::leftovers::remove_iptables()
            .map(|_| ())
            .map_err(|e| BackendError::at(Step::Cleanup, RestoreError::from(e)))
    }

    fn cleanup_plan(&mut self) -> Result<Vec<String>, BackendError> {
        Ok(crate::backends::leftovers::plan_iptables_removal())
    }

    fn render(&self, plans: &Plans, node: &NodeFacts) -> String {
        let mut out = format!(
            "# kproxy iptables ruleset for node {:?} (--dry-run): the input of `iptables-restore --noflush` and `ip6tables-restore --noflush` on a host without kproxy's chains\n",
            node.name
        );
        for family in IpFamily::ALL {
            let fixed = compile_fixed(family, node, &self.config);
            let ports = load::compiled(plans, family, &self.config, &node.local_traffic);
            let input = Load::new(&fixed, &BTreeMap::new(), &ports).text(&ports);
            let program = match family {
                IpFamily::V4 => "iptables-restore",
                IpFamily::V6 => "ip6tables-restore",
            };
            out.push_str(&format!("# {program}\n{input}"));
        }
        out
    }
}
