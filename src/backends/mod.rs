//! The contract every dataplane backend (nftables, iptables, IPVS) implements, and the choice of
//! backend by proxy mode.
//!
//! Contract: `sync_full` reconciles the kernel with the plans, adopting what kproxy programmed
//! before (never flushing rules that are still right); `sync_partial` touches only the changed
//! service ports and never lists the kernel; on any error the caller follows with a full sync.
//! `render` is pure and prints the whole ruleset the backend would program (for --dry-run).
//! `cleanup` removes everything kproxy ever created in this mode; `cleanup_plan` names it
//! without removing it.

pub mod comment;
pub mod element_id;
pub mod error;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
#[cfg(test)]
mod family_tests;
pub mod iptables;
pub mod ipvs;
pub mod leftovers;
pub mod nft;
pub mod process;
#[cfg(test)]
mod property_tests;
#[cfg(test)]
pub(crate) mod random_world;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use error::BackendError;

use crate::model::plan::Planned;
use crate::model::{IpFamily, ServicePortName};
use crate::node::NodeFacts;

/// The plans of every service port, as the sync loop holds them.
pub type Plans = BTreeMap<ServicePortName, Arc<Planned>>;

/// What a backend is asked to program, besides the plans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendConfig {
    /// The kernel tracks TCP liberally (`nf_conntrack_tcp_be_liberal` read at start): iptables
    /// mode then drops no INVALID packet, as upstream.
    pub conntrack_tcp_be_liberal: bool,
    pub masquerade_all: bool,
    /// `--nftables-transport`: how nftables mode (and IPVS mode's companion table) reaches
    /// the kernel.
    pub nft_transport: crate::nftables::NftTransport,
    /// iptables mode: NodePorts answer on 127.0.0.0/8 too (IPv4; sets route_localnet).
    pub localhost_nodeports: bool,
    /// iptables mode: iptables-nft or iptables-legacy.
    pub iptables_variant: iptables::VariantChoice,
    /// iptables mode: the mark bit that asks for masquerading (None: upstream's 14, 0x4000).
    pub masquerade_bit: Option<u8>,
    /// ipvs mode: the scheduler of every virtual server (empty: rr).
    pub ipvs_scheduler: String,
    /// ipvs mode: set arp_ignore=1 and arp_announce=2 (upstream's strictARP).
    pub ipvs_strict_arp: bool,
    /// ipvs mode: IPVS's connection timeouts (TCP, TCP after FIN, UDP); None keeps the kernel's.
    pub ipvs_timeouts: ipvs::Timeouts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Nftables,
    Iptables,
    Ipvs,
}

impl ProxyMode {
    pub const ALL: [ProxyMode; 3] = [ProxyMode::Nftables, ProxyMode::Iptables, ProxyMode::Ipvs];

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
            ProxyMode::Ipvs => "ipvs",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProxyMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown proxy mode {s:?} (want nftables, iptables or ipvs)"))
    }
}

/// Rules kproxy owns in one table of one family, and how many the last sync wrote there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRules {
    pub family: IpFamily,
    pub table: &'static str,
    pub total: usize,
    pub last_sync: usize,
}

/// What one sync did, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Operations (rules, elements, messages) sent to the kernel.
    pub operations: usize,
}

pub trait Backend: Send {
    fn mode(&self) -> ProxyMode;
    /// What the mode needs of the kernel before its first sync and that needs more than
    /// NET_ADMIN (IPVS: its modules and sysctls; iptables: `route_localnet` for localhost
    /// NodePorts): done by the first sync anyway, and alone by `--init-only`. A value that
    /// cannot be set is a warning; an error means the mode cannot work here.
    fn prepare_host(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Reconcile everything with `plans`, adopting what is already programmed.
    fn sync_full(&mut self, plans: &Plans, node: &NodeFacts) -> Result<SyncReport, BackendError>;
    /// Apply only the service ports in `changed` (present in `plans`, or removed if absent).
    fn sync_partial(
        &mut self,
        plans: &Plans,
        changed: &BTreeSet<ServicePortName>,
        node: &NodeFacts,
    ) -> Result<SyncReport, BackendError>;
    /// Whether someone else changed kproxy's rules since the last sync: `Some(what)` when they
    /// did (the backend then expects a full sync, which repairs it). Cheap enough to run ten
    /// times a second; never lists set elements. Backends without a check say `None`.
    fn drift(&mut self) -> Result<Option<String>, BackendError> {
        Ok(None)
    }
    /// Rules kproxy owns per (family, table), and how many the last sync wrote there, for
    /// backends that count them (iptables mode's `kubeproxy_sync_proxy_rules_iptables_total`
    /// and `…_iptables_last`).
    fn table_rules(&self) -> Vec<TableRules> {
        Vec::new()
    }
    /// The family whose kernel step failed in the last sync, for backends that apply the
    /// families one after the other (iptables mode); None when a failure concerns every family
    /// (one transaction for both).
    fn failed_family(&self) -> Option<IpFamily> {
        None
    }
    /// Remove everything kproxy created in this mode.
    fn cleanup(&mut self) -> Result<(), BackendError>;
    /// What `cleanup` would remove, one line per object (table, chain, rule, virtual server,
    /// interface), read from the kernel without changing it (`--cleanup --dry-run`).
    fn cleanup_plan(&mut self) -> Result<Vec<String>, BackendError>;
    /// The full ruleset this backend would program for `plans`, as text. Pure.
    fn render(&self, plans: &Plans, node: &NodeFacts) -> String;
}

/// The IP families this kernel has: IPv4, and IPv6 unless it is disabled (no
/// `/proc/sys/net/ipv6`).
pub fn host_families() -> Vec<crate::model::IpFamily> {
    crate::model::IpFamily::ALL
        .into_iter()
        .filter(|f| {
            *f == crate::model::IpFamily::V4 || std::path::Path::new("/proc/sys/net/ipv6").exists()
        })
        .collect()
}

/// The backend for a proxy mode.
pub fn for_mode(mode: ProxyMode, config: BackendConfig) -> Box<dyn Backend> {
    match mode {
        ProxyMode::Nftables => {
            let transport = crate::nftables::Nft::open(config.nft_transport);
            tracing::debug!(transport = transport.kind(), "nftables transport");
            let watched = crate::nftables::Watched::new(transport, None, nft::kproxy_tables);
            Box::new(nft::NftBackend::new(config, watched))
        }
        ProxyMode::Iptables => {
            let variant = config.iptables_variant.resolve();
            Box::new(iptables::IptablesBackend::new(config, variant))
        }
        ProxyMode::Ipvs => {
            let nft = crate::nftables::Nft::open(config.nft_transport);
            let kernel = Box::new(ipvs::kernel::LiveKernel::new(nft));
            Box::new(ipvs::IpvsBackend::new(&config, kernel))
        }
    }
}

/// The backend for a mode, built without touching the kernel: no libnftables loaded, no change
/// monitor opened, the `nft` command as transport (run only to list, by `cleanup_plan`). For
/// `--dry-run`, which renders or lists and programs nothing, so it has nothing to warn about.
pub fn for_dry_run(mode: ProxyMode, config: BackendConfig) -> Box<dyn Backend> {
    let nft = || crate::nftables::Nft::open(crate::nftables::NftTransport::Command);
    match mode {
        ProxyMode::Nftables => Box::new(nft::NftBackend::new(config, nft())),
        ProxyMode::Iptables => {
            let variant = config.iptables_variant.resolve();
            Box::new(iptables::IptablesBackend::unwatched(config, variant))
        }
        ProxyMode::Ipvs => {
            let kernel = ipvs::kernel::LiveKernel::for_link(nft(), crate::node::IPVS_LINK);
            Box::new(ipvs::IpvsBackend::new(&config, Box::new(kernel)))
        }
    }
}

/// Removes what kproxy's other modes left behind (at start-up; never in --dry-run). Failures are
/// logged, not fatal: the chosen mode works regardless.
pub fn remove_other_modes_leftovers(mode: ProxyMode) {
    for other in ProxyMode::ALL.into_iter().filter(|m| *m != mode) {
        let result = match other {
            ProxyMode::Nftables => {
                nft::NftBackend::new(BackendConfig::default(), nft::NftCli::default())
                    .cleanup()
                    .map_err(|e| e.to_string())
            }
            ProxyMode::Iptables => leftovers::remove_iptables()
                .map(|_| ())
                .map_err(|e| e.to_string()),
            ProxyMode::Ipvs => leftovers::remove_ipvs().map_err(|e| e.to_string()),
        };
        if let Err(error) = result {
            tracing::warn!(%error, mode = %other, "cannot remove kproxy's leftovers of another mode");
        }
    }
}
