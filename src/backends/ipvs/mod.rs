//! IPVS mode (`--proxy-mode ipvs`): virtual servers over IPVS's generic netlink family, service
//! addresses bound to the dummy interface `kproxy-ipvs0`, and a fixed companion nftables table
//! per family (`kproxy-ipvs`) whose sets carry what IPVS cannot do itself: masquerading,
//! hairpin, loadBalancerSourceRanges and the drop verdict. README.md has the design.
//!
//! Invariants: compile is pure (`compile.rs`), the diff is pure (`mirror.rs`), and every kernel
//! call goes through `kernel::Kernel` (live, or the fake in tests).

mod backend;
pub mod cleanup;
pub mod compile;
mod conn;
pub mod ids;
pub mod kernel;
pub mod link;
pub mod mirror;
pub mod netlink;
pub mod render;
pub mod servers;
pub mod socket;
pub mod trace;

#[cfg(test)]
mod backend_tests;
#[cfg(any(test, feature = "fakes"))]
pub mod fake_kernel;
#[cfg(test)]
mod live_tests;
#[cfg(test)]
pub(crate) mod random_tests;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod tests;

pub use backend::{DRAIN_LIMIT, IpvsBackend, SYSCTLS};
pub use servers::Timeouts;
