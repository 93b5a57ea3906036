//! Removal of everything IPVS mode creates: kproxy's virtual servers, the dummy interface with
//! its addresses, and the companion nftables tables. Used by `--cleanup` and by the other modes
//! at start-up.
//!
//! Invariants: never loads ip_vs (a kernel without it has no virtual servers to remove, and
//! reading IPVS would load it); kproxy's servers are those carrying its mark (`F_KPROXY`),
//! whether or not `kproxy-ipvs0` still exists, and those on its addresses (only kproxy binds
//! addresses there); any other server stays, on this host's addresses too; the tables go anyway.
//! Upstream's cleanup (`--cleanup-kube-proxy`) removes, while `kube-ipvs0` exists, the unmarked
//! servers on its addresses or this host's, as upstream's own cleanup does.

use std::collections::BTreeSet;

use super::compile::TABLE;
use super::kernel::{Kernel, KernelError};
use super::netlink::{Cmd, IpvsMessage};
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

/// Removes IPVS mode's objects through `kernel`.
pub fn remove(kernel: &mut dyn Kernel, families: &[IpFamily]) -> Result<(), KernelError> {
    remove_owned(kernel, families, TABLE, Owner::Kproxy)
}

/// Removes `owner`'s virtual servers (see the invariants), `kernel`'s dummy interface, and the
/// nftables tables named `table`.
fn remove_owned(
    kernel: &mut dyn Kernel,
    families: &[IpFamily],
    table: &str,
    owner: Owner,
) -> Result<(), KernelError> {
    let link = kernel.link_present()?;
    let mut on_link = BTreeSet::new();
    if link {
        on_link = kernel.addresses()?;
        if owner == Owner::Upstream {
            on_link.extend(kernel.host_addresses()?);
        }
    }
    if kernel.ipvs_loaded() && (link || owner == Owner::Kproxy) {
        match kernel.services() {
            Ok(services) => {
                let deletes: Vec<IpvsMessage> = services
                    .iter()
                    .filter(|vs| match owner {
                        Owner::Kproxy => vs.owned || on_link.contains(&vs.key.addr),
                        Owner::Upstream => !vs.owned && on_link.contains(&vs.key.addr),
                    })
                    .map(|vs| IpvsMessage::service(Cmd::DelService, vs.key.attrs()))
                    .collect();
                kernel.ipvs(deletes)?;
            }
            Err(KernelError::Ipvs(SocketError::NoIpvs)) => {}
            Err(e) => return Err(e),
        }
    }
    if link {
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
    let mut kernel = super::kernel::LiveKernel::for_link(one_off(), UPSTREAM_IPVS_LINK);
    remove_owned(
        &mut kernel,
        &crate::backends::host_families(),
        "kube-proxy",
        Owner::Upstream,
    )
}
