//! The iptables backend (`--proxy-mode iptables`): kproxy's own `KPROXY-*` chains in the nat
//! and filter tables, programmed through `iptables-restore --noflush` with iptables-nft or
//! iptables-legacy. One chain per service port (two or three with external access), DNAT rules
//! inside it, no chain per endpoint. See README.md for the design and a packet's path.
//!
//! Invariants: `compile`, the diffs (`mirror`, `restore`) and the load's plan (`load`, `adopt`)
//! are pure; only `tools` (running `iptables-restore` and `iptables-save`, for `backend`) and
//! `probe` (reading the kernel) do I/O; nothing here edits a chain that is not kproxy's, except
//! inserting and deleting kproxy's own jumps in the built-in chains. Neither a whole ruleset's
//! rule texts nor its restore input is ever held: the mirror keeps plans, a load is streamed.

pub mod adopt;
pub mod backend;
pub mod compile;
pub mod fixed;
pub mod load;
pub mod mirror;
pub mod names;
pub mod probe;
pub mod restore;
pub mod restore_error;
pub mod ruleset;
pub mod tools;
pub mod variant;

pub use backend::IptablesBackend;
pub use restore_error::RestoreError;
pub use variant::{Variant, VariantChoice};

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
pub(crate) mod fake_kernel_tests;
#[cfg(test)]
mod tests;
