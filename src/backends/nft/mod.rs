//! The nftables backend (`--proxy-mode nftables`, the default): kproxy's own `ip kproxy` and `ip6 kproxy` tables, a fixed skeleton of chains and rules, and all
//! per-Service data in named sets and maps. See README.md for the design.
//!
//! Invariants: `skeleton` is static data; `compile` and `diff` are pure; only the transport (`crate::nftables`) does
//! I/O; nothing here touches any table but kproxy's own.

pub mod backend;
pub mod compile;
pub mod diff;
mod elements;
pub mod encode;
#[cfg(any(test, feature = "fakes"))]
pub mod fake_transport;
pub mod read;
pub mod reconcile;
pub mod render;
pub mod repair;
pub mod rule_text;
pub mod ruleset;
pub mod skeleton;
pub mod transaction;

pub use crate::nftables::{Nft, NftCli, NftLib};
pub use backend::{NftBackend, kproxy_tables};

#[cfg(test)]
pub(crate) mod diff_tests;
#[cfg(test)]
pub(crate) mod fake_kernel;
#[cfg(test)]
pub(crate) mod fake_kernel_tests;
#[cfg(test)]
mod get_tests;
#[cfg(test)]
mod libnft_tests;
#[cfg(test)]
mod load_tests;
#[cfg(test)]
mod native_tests;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod traffic_tests;
#[cfg(test)]
pub(crate) mod transport_tests;
