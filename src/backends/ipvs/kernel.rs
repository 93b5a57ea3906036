//! The kernel as IPVS mode sees it, behind one narrow trait: IPVS over generic netlink, the
//! dummy interface over rtnetlink, the companion tables through nftables, and the sysctls.
//! `LiveKernel` is the real one; `fake_kernel.rs` is the one unit tests use.
//!
//! Invariants: every method is one step the backend names in its errors; nothing here decides
//! anything (the backend and `mirror.rs` do); connections are opened on first use and reopened
//! after a failure, so a kernel that gains ip_vs later is picked up by the next full sync.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::conn::ConnError;
use super::link::{self, DummyLink, LinkError};
use super::netlink::{DestState, IpvsMessage, ServiceKey, VirtualServer};
use super::socket::{IpvsSocket, SocketError};
use crate::model::IpFamily;
use crate::nftables::transport::{NftError, Transport};
use crate::nftables::{Nft, Watched};
use crate::node::IPVS_LINK;

/// Why a kernel step failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Ipvs(#[from] SocketError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("applying the companion nftables rules: {0}")]
    Nft(#[from] NftError),
    #[error("setting sysctl {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("injected failure: {0}")]
    Injected(String),
}

impl KernelError {
    /// The errno of the kernel's refusal, when it refused an IPVS request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Ipvs(SocketError::Netlink(ConnError::Refused { source, .. })) => {
                source.raw_os_error()
            }
            _ => None,
        }
    }

    /// Whether IPVS refused because an object is there that kproxy believed absent, or the
    /// reverse (EEXIST; ESRCH for a server, ENOENT for a destination): someone else changed it,
    /// and reading it back is the repair.
    pub fn is_state_mismatch(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::EEXIST | libc::ESRCH | libc::ENOENT)
        )
    }
}

pub trait Kernel: Send {
    /// Makes sure IPVS is there, loading ip_vs when its netlink family is missing.
    fn load_ipvs(&mut self) -> Result<(), KernelError>;
    /// Applies IPVS changes in order; how many messages were sent.
    fn ipvs(&mut self, messages: Vec<IpvsMessage>) -> Result<usize, KernelError>;
    /// Whether IPVS is in the kernel already (never loads it: resolving the IPVS netlink
    /// family would, through its module alias).
    fn ipvs_loaded(&mut self) -> bool;
    fn services(&mut self) -> Result<Vec<VirtualServer>, KernelError>;
    fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestState>, KernelError>;
    /// One virtual server as the kernel has it (None: there is none with that key).
    fn service(&mut self, service: &ServiceKey) -> Result<Option<VirtualServer>, KernelError>;
    /// The addresses bound to the dummy interface, looked up afresh (created when missing,
    /// also when it was deleted since the last call).
    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError>;
    fn bind(&mut self, add: Vec<IpAddr>, remove: Vec<IpAddr>) -> Result<usize, KernelError>;
    /// Whether the dummy interface exists (never creates it).
    fn link_present(&mut self) -> Result<bool, KernelError>;
    /// Whether `ip` is an address of this host (its route is local).
    fn is_local(&mut self, ip: IpAddr) -> Result<bool, KernelError>;
    /// Applies one nft script atomically.
    fn nft(&mut self, script: &str) -> Result<(), KernelError>;
    /// Whether the nftables table `table` of `family` exists (read only).
    fn table_present(&mut self, family: IpFamily, table: &str) -> Result<bool, KernelError>;
    /// Rules in the companion table's `services` chain of `family` (0 when the table is gone).
    fn companion_rules(&mut self, family: IpFamily) -> Result<usize, KernelError>;
    /// What someone else changed in the companion tables since the last call, in words;
    /// `None` when nothing (or when this kernel does not watch them).
    fn companion_foreign(&mut self) -> Result<Option<String>, KernelError> {
        Ok(None)
    }
    /// Writes `value` to /proc/sys/`path` unless it holds that value already.
    fn sysctl(&mut self, path: &str, value: &str) -> Result<(), KernelError>;
    /// Removes the dummy interface; whether it existed.
    fn delete_link(&mut self) -> Result<bool, KernelError>;
    /// Every address of this host, on any interface.
    fn host_addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError>;
}

pub struct LiveKernel {
    ipvs: Option<IpvsSocket>,
    link: Option<DummyLink>,
    /// The dummy interface: kproxy's (`kproxy-ipvs0`), or upstream's for its cleanup.
    link_name: &'static str,
    /// The companion tables' transport, watched for anyone else's changes (kproxy's own
    /// kernel only; a kernel for upstream's cleanup watches nothing).
    nft: Watched<Nft>,
}

/// Whether an nf_tables notification is about IPVS mode's companion tables.
pub fn companion_tables(t: &crate::nftables::monitor::Touch<'_>) -> bool {
    t.table == super::compile::TABLE && crate::nfnetlink::ip_family(t.family).is_some()
}

impl LiveKernel {
    pub fn new(nft: Nft) -> LiveKernel {
        LiveKernel::with(Watched::new(nft, None, companion_tables), IPVS_LINK)
    }

    /// A kernel whose dummy interface is `link_name` (upstream's `kube-ipvs0`, to clean it up).
    pub fn for_link(nft: Nft, link_name: &'static str) -> LiveKernel {
        LiveKernel::with(Watched::unwatched(nft), link_name)
    }

    fn with(nft: Watched<Nft>, link_name: &'static str) -> LiveKernel {
        LiveKernel {
            ipvs: None,
            link: None,
            link_name,
            nft,
        }
    }

    fn socket(&mut self) -> Result<&mut IpvsSocket, KernelError> {
        if self.ipvs.is_none() {
            self.ipvs = Some(IpvsSocket::open()?);
        }
        Ok(self.ipvs.as_mut().expect("opened above"))
    }

    fn with_socket<T>(
        &mut self,
        f: impl FnOnce(&mut IpvsSocket) -> Result<T, SocketError>,
    ) -> Result<T, KernelError> {
        let result = f(self.socket()?);
        if result.is_err() {
            self.ipvs = None;
        }
        Ok(result?)
    }

    fn with_link<T>(
        &mut self,
        f: impl FnOnce(&mut DummyLink) -> Result<T, LinkError>,
    ) -> Result<T, KernelError> {
        if self.link.is_none() {
            self.link = Some(DummyLink::ensure(self.link_name)?);
        }
        let result = f(self.link.as_mut().expect("ensured above"));
        if result.is_err() {
            self.link = None;
        }
        Ok(result?)
    }
}

impl Kernel for LiveKernel {
    fn load_ipvs(&mut self) -> Result<(), KernelError> {
        if self.ipvs.is_some() {
            return Ok(());
        }
        match IpvsSocket::open() {
            Err(SocketError::NoIpvs) => {
                // As upstream, load the module when the family is missing.
                let _ = std::process::Command::new("modprobe").arg("ip_vs").output();
                self.ipvs = Some(IpvsSocket::open()?);
            }
            other => self.ipvs = Some(other?),
        }
        Ok(())
    }

    fn host_addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError> {
        Ok(link::host_addresses()?)
    }

    fn ipvs(&mut self, messages: Vec<IpvsMessage>) -> Result<usize, KernelError> {
        if messages.is_empty() {
            return Ok(0);
        }
        self.with_socket(|s| s.execute(messages))
    }

    fn ipvs_loaded(&mut self) -> bool {
        // Built in or loaded as a module, ip_vs has a directory here (it has parameters).
        self.ipvs.is_some() || std::path::Path::new("/sys/module/ip_vs").exists()
    }

    fn services(&mut self) -> Result<Vec<VirtualServer>, KernelError> {
        self.with_socket(|s| s.services())
    }

    fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestState>, KernelError> {
        self.with_socket(|s| s.dests(service))
    }

    fn service(&mut self, service: &ServiceKey) -> Result<Option<VirtualServer>, KernelError> {
        self.with_socket(|s| s.service(service))
    }

    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError> {
        // The interface may have been deleted (and made again) since it was last looked up: a
        // cached index would bind nothing ("No such device").
        self.link = None;
        self.with_link(|l| l.addresses())
    }

    fn bind(&mut self, add: Vec<IpAddr>, remove: Vec<IpAddr>) -> Result<usize, KernelError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(0);
        }
        self.with_link(|l| l.change(add, remove))
    }

    fn link_present(&mut self) -> Result<bool, KernelError> {
        Ok(link::exists(self.link_name)?)
    }

    fn is_local(&mut self, ip: IpAddr) -> Result<bool, KernelError> {
        Ok(link::is_local(ip)?)
    }

    fn nft(&mut self, script: &str) -> Result<(), KernelError> {
        Ok(self.nft.apply(script)?)
    }

    fn companion_foreign(&mut self) -> Result<Option<String>, KernelError> {
        match self.nft.foreign_changes() {
            Some(found) => {
                let found = found.map_err(NftError::from)?;
                Ok((!found.is_empty()).then(|| found.to_string()))
            }
            None => Ok(None),
        }
    }

    fn table_present(&mut self, family: IpFamily, table: &str) -> Result<bool, KernelError> {
        Ok(self.nft.list_table(family, table)?.is_some())
    }

    fn companion_rules(&mut self, family: IpFamily) -> Result<usize, KernelError> {
        let (rules, _) =
            crate::nftables::netlink::chain_rules(family, super::compile::TABLE, "services", b"")
                .map_err(NftError::from)?;
        Ok(rules)
    }

    fn sysctl(&mut self, path: &str, value: &str) -> Result<(), KernelError> {
        let full = format!("/proc/sys/{path}");
        // Already right: nothing to write (a container's /proc/sys is often read-only, and the
        // node's own configuration may have set it).
        if std::fs::read_to_string(&full).is_ok_and(|v| v.trim() == value) {
            return Ok(());
        }
        std::fs::write(&full, value).map_err(|source| KernelError::Sysctl { path: full, source })
    }

    fn delete_link(&mut self) -> Result<bool, KernelError> {
        self.link = None;
        Ok(link::delete(self.link_name)?)
    }
}
