//! The nftables machinery the nftables and IPVS backends share: applying a script atomically
//! (`transport`: the `nft` command; `libnft`: libnftables in-process), set elements as netlink
//! batches (`elements`) and reading a table over netlink (`listing`), which the `mixed`
//! (`nft` command + netlink) and libnftables transports do, one element read by its key
//! (`getelem`, for tracing a packet through the live sets), counting a table's rules per chain
//! over netlink (`netlink`, the old drift probe), reading a table's rules as expressions
//! (`rules`, for `kproxy explain --live`), and who changed a table (`monitor`: the
//! kernel's change notifications; `watched`: a transport whose writes the monitor knows as
//! kproxy's). `--nftables-transport` picks one (`NftTransport`).
//!
//! Invariants: nothing here knows which table a caller owns: every call names it; scripts are
//! applied whole or not at all.

pub mod elements;
pub mod getelem;
pub mod libnft;
pub mod listing;
pub mod mixed;
pub mod monitor;
pub mod netlink;
pub mod rules;
pub mod transport;
pub mod uapi;
pub mod watched;

pub use libnft::{Nft, NftLib, NftTransport};
pub use mixed::NftNetlink;
pub use transport::{NftCli, NftError, Transport};
pub use watched::Watched;

use crate::model::IpFamily;

/// nft's name of an IP family's table family (`ip`, `ip6`).
pub fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}
