//! Removal of everything IPVS mode creates: kproxy's virtual servers (those on addresses of the
//! dummy interface or of this host), the dummy interface with its addresses, and the companion
//! nftables tables. Used by `--cleanup` and by the other modes at start-up.
//!
//! Invariants: never loads ip_vs (a kernel without the IPVS family has no virtual servers to
//! remove); virtual servers are touched only while `kproxy-ipvs0` exists (the sign that kproxy's
//! IPVS mode ran here; another IPVS user's servers on this host's addresses survive a node that
//! never ran it), and then only those on its addresses or this host's; the tables go anyway.

use super::compile::TABLE;
use super::kernel::{Kernel, KernelError};
use super::netlink::{Cmd, IpvsMessage};
use super::socket::SocketError;
use crate::model::IpFamily;

/// Removes IPVS mode's objects through `kernel`.
pub fn remove(kernel: &mut dyn Kernel, families: &[IpFamily]) -> Result<(), KernelError> {
    remove_owned(kernel, families, TABLE)
}

/// Removes the virtual servers of `kernel`'s dummy interface (see the invariants), the
/// interface, and the nftables tables named `table`.
fn remove_owned(
    kernel: &mut dyn Kernel,
    families: &[IpFamily],
    table: &str,
) -> Result<(), KernelError> {
    if !kernel.link_present()? {
        return remove_tables(kernel, families, table);
    }
    let mut ours = kernel.host_addresses()?;
    ours.extend(kernel.addresses()?);
    match kernel.services() {
        Ok(services) => {
            let deletes: Vec<IpvsMessage> = services
                .iter()
                .filter(|vs| ours.contains(&vs.key.addr))
                .map(|vs| IpvsMessage::service(Cmd::DelService, vs.key.attrs()))
                .collect();
            kernel.ipvs(deletes)?;
        }
        Err(KernelError::Ipvs(SocketError::NoIpvs)) => {}
        Err(e) => return Err(e),
    }
    kernel.delete_link()?;
    remove_tables(kernel, families, table)
}

fn remove_tables(
    kernel: &mut dyn Kernel,
    families: &[IpFamily],
    table: &str,
) -> Result<(), KernelError> {
    let mut script = String::new();
    for fam in families {
        let f = crate::backends::nft::transaction::family_name(*fam);
        script.push_str(&format!(
            "table {f} {table} {{}}\ndelete table {f} {table}\n"
        ));
    }
    kernel.nft(&script)
}

/// `remove` on the live kernel, for the other modes' start-up and `leftovers.rs`.
pub fn remove_leftovers() -> Result<(), KernelError> {
    let mut kernel = super::kernel::LiveKernel::new(crate::backends::nft::Nft::detect(false));
    remove(&mut kernel, &crate::backends::host_families())
}

/// Upstream kube-proxy's counterpart (`--cleanup-kube-proxy`): the virtual servers of
/// `kube-ipvs0` (while it exists), `kube-ipvs0` itself, and upstream's nftables mode tables
/// `ip kube-proxy` and `ip6 kube-proxy`.
pub fn remove_upstream() -> Result<(), KernelError> {
    let mut kernel = super::kernel::LiveKernel::for_link(
        crate::backends::nft::Nft::detect(false),
        crate::backends::leftovers::UPSTREAM_IPVS_LINK,
    );
    remove_owned(&mut kernel, &crate::backends::host_families(), "kube-proxy")
}
