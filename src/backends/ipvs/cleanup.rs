//! Removal of everything IPVS mode creates: kproxy's virtual servers, the dummy interface with
//! its addresses, and the companion nftables tables. Used by `--cleanup` and by the other modes
//! at start-up; `plan` reads what a removal would take, for `--cleanup --dry-run`, and the
//! removal itself deletes what its plan names (the tables aside: those are deleted in every
//! family, which succeeds whether they exist or not).
//!
//! Invariants: never loads ip_vs (a kernel without it has no virtual servers to remove, and
//! reading IPVS would load it); kproxy's servers are those carrying its mark (`F_KPROXY`),
//! whether or not `kproxy-ipvs0` still exists, and those on its addresses (only kproxy binds
//! addresses there); any other server stays, on this host's addresses too; the tables go anyway.
//! Upstream's cleanup (`--cleanup-kube-proxy`) removes, while `kube-ipvs0` exists, the unmarked
//! servers on its addresses or this host's, as upstream's own cleanup does.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::compile::TABLE;
use super::kernel::{Kernel, KernelError};
use super::netlink::{Cmd, IpvsMessage, ServiceKey};
use super::socket::SocketError;
use crate::model::IpFamily;

/// Upstream kube-proxy's IPVS dummy interface.
pub const UPSTREAM_IPVS_LINK: &str = "kube-ipvs0";

/// Whose leftovers a cleanup removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Kproxy,
    /// Upstream kube-proxy's (`kube-ipvs0`): its servers carry no mark, and kproxy's are kept.
    Upstream,
}

/// What a cleanup removes, as read from the kernel before anything is removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// The virtual servers to delete.
    pub servers: Vec<ServiceKey>,
    /// The dummy interface, with its addresses, when it exists.
    pub link: Option<(&'static str, BTreeSet<IpAddr>)>,
    /// The companion nftables tables that exist (`family table`), e.g. `ip kproxy-ipvs`.
    pub tables: Vec<String>,
}

impl Removal {
    /// One line per object, for `--cleanup --dry-run`.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .servers
            .iter()
            .map(|k| {
                let addr = std::net::SocketAddr::new(k.addr, k.port);
                format!("IPVS virtual server {} {addr}", k.protocol.as_str())
            })
            .collect();
        if let Some((name, addrs)) = &self.link {
            let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            out.push(match addrs.is_empty() {
                true => format!("interface {name}"),
                false => format!("interface {name} (addresses {})", addrs.join(", ")),
            });
        }
        out.extend(self.tables.iter().map(|t| format!("nftables table {t}")));
        out
    }
}

/// Removes IPVS mode's objects through `kernel`.
pub fn remove(kernel: &mut dyn Kernel, families: &[IpFamily]) -> Result<(), KernelError> {
    let removal = plan_owned(kernel, families, TABLE, Owner::Kproxy)?;
    apply(kernel, families, TABLE, &removal)
}

/// What `remove` would remove, read from `kernel` without changing it.
pub fn plan(kernel: &mut dyn Kernel, families: &[IpFamily]) -> Result<Removal, KernelError> {
    plan_owned(kernel, families, TABLE, Owner::Kproxy)
}

/// `owner`'s virtual servers (see the invariants), `kernel`'s dummy interface, and the
/// nftables tables named `table` that exist. Reads only.
fn plan_owned(
    kernel: &mut dyn Kernel,
    families: &[IpFamily],
    table: &str,
    owner: Owner,
) -> Result<Removal, KernelError> {
    let link = kernel.link_present()?;
    let mut removal = Removal::default();
    let mut on_link = BTreeSet::new();
    if link {
        on_link = kernel.addresses()?;
        let name = match owner {
            Owner::Kproxy => crate::node::IPVS_LINK,
            Owner::Upstream => UPSTREAM_IPVS_LINK,
        };
        removal.link = Some((name, on_link.clone()));
        if owner == Owner::Upstream {
            on_link.extend(kernel.host_addresses()?);
        }
    }
    if kernel.ipvs_loaded() && (link || owner == Owner::Kproxy) {
        match kernel.services() {
            Ok(services) => {
                removal.servers = services
                    .iter()
                    .filter(|vs| match owner {
                        Owner::Kproxy => vs.owned || on_link.contains(&vs.key.addr),
                        Owner::Upstream => !vs.owned && on_link.contains(&vs.key.addr),
                    })
                    .map(|vs| vs.key)
                    .collect();
            }
            Err(KernelError::Ipvs(SocketError::NoIpvs)) => {}
            Err(e) => return Err(e),
        }
    }
    for family in families {
        if kernel.table_present(*family, table)? {
            let f = crate::nftables::family_name(*family);
            removal.tables.push(format!("{f} {table}"));
        }
    }
    Ok(removal)
}

/// Removes what `removal` names; the tables named `table` go in every family of `families`,
/// present or not (one transaction, which succeeds either way).
fn apply(
    kernel: &mut dyn Kernel,
    families: &[IpFamily],
    table: &str,
    removal: &Removal,
) -> Result<(), KernelError> {
    let deletes: Vec<IpvsMessage> = removal
        .servers
        .iter()
        .map(|key| IpvsMessage::service(Cmd::DelService, key.attrs()))
        .collect();
    // Nothing to delete: IPVS is not touched (reading it could load ip_vs).
    if !deletes.is_empty() {
        kernel.ipvs(deletes)?;
    }
    if removal.link.is_some() {
        kernel.delete_link()?;
    }
    remove_tables(kernel, families, table)
}

fn remove_tables(
    kernel: &mut dyn Kernel,
    families: &[IpFamily],
    table: &str,
) -> Result<(), KernelError> {
    let mut script = String::new();
    for fam in families {
        let f = crate::nftables::family_name(*fam);
        script.push_str(&format!(
            "table {f} {table} {{}}\ndelete table {f} {table}\n"
        ));
    }
    kernel.nft(&script)
}

/// The transport of a one-off cleanup: its script goes through the `nft` command, so a start-up
/// in another mode never loads libnftables (`--nftables-transport netlink` promises it is not).
fn one_off() -> crate::nftables::Nft {
    crate::nftables::Nft::open(crate::nftables::NftTransport::Netlink)
}

/// `remove` on the live kernel, for the other modes' start-up and `leftovers.rs`.
pub fn remove_leftovers() -> Result<(), KernelError> {
    let mut kernel = super::kernel::LiveKernel::new(one_off());
    remove(&mut kernel, &crate::backends::host_families())
}

/// Upstream kube-proxy's counterpart (`--cleanup-kube-proxy`): the virtual servers of
/// `kube-ipvs0` (while it exists), `kube-ipvs0` itself, and upstream's nftables mode tables
/// `ip kube-proxy` and `ip6 kube-proxy`.
pub fn remove_upstream() -> Result<(), KernelError> {
    let (mut kernel, families) = upstream_kernel();
    let removal = plan_owned(&mut kernel, &families, UPSTREAM_TABLE, Owner::Upstream)?;
    apply(&mut kernel, &families, UPSTREAM_TABLE, &removal)
}

/// What `remove_upstream` would remove, read without changing anything.
pub fn plan_upstream() -> Result<Removal, KernelError> {
    let (mut kernel, families) = upstream_kernel();
    plan_owned(&mut kernel, &families, UPSTREAM_TABLE, Owner::Upstream)
}

/// Upstream's nftables mode table.
const UPSTREAM_TABLE: &str = "kube-proxy";

fn upstream_kernel() -> (super::kernel::LiveKernel, Vec<IpFamily>) {
    let kernel = super::kernel::LiveKernel::for_link(one_off(), UPSTREAM_IPVS_LINK);
    (kernel, crate::backends::host_families())
}
