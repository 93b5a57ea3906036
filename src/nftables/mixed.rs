//! The `nft` command for text, kproxy's own netlink for the rest (`NftNetlink`): scripts (the
//! fixed skeleton, chains and rules) go through `nft -f -`, set elements as nf_tables netlink
//! batches on a kept socket (`elements.rs`), and adoption reads kproxy's tables over netlink
//! (`listing.rs`). libnftables is never loaded. The libnftables transport (`libnft.rs`) is this
//! one with its scripts run in-process instead.
//!
//! Invariants: every socket is opened, and every dump runs, inside the transport's network
//! namespace (`in_netns`); an element batch is atomic, like one `nft -f`.

use std::collections::BTreeMap;

use super::elements::{ElementBatch, ElementSocket};
use super::listing::{self, Element, Shape};
use super::transport::{NftCli, NftError, Transport};
use crate::model::IpFamily;

/// The `nft` command with element batches and table reads over netlink (see the module docs).
#[derive(Default)]
pub struct NftNetlink {
    /// Element batches go over netlink, on a socket opened in the transport's namespace.
    elements: ElementSocket,
    /// Scripts, set listings and the drift probe; and the namespace.
    pub(super) cli: NftCli,
}

impl NftNetlink {
    pub fn with(cli: NftCli) -> NftNetlink {
        NftNetlink {
            elements: ElementSocket::default(),
            cli,
        }
    }

    /// A transport inside the named network namespace (for tests).
    pub fn in_netns(name: &str) -> NftNetlink {
        NftNetlink::with(NftCli::in_netns(name))
    }
}

/// Runs `f` on a thread inside the named network namespace (on this thread when there is
/// none): sockets opened there belong to it.
pub(super) fn in_netns<T: Send>(
    ns: Option<&str>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NftError> {
    let Some(ns) = ns else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        s.spawn(|| crate::netns::enter(ns).map(|()| f()))
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
    .map_err(|e| NftError::Netns(ns.to_string(), e))
}

impl Transport for NftNetlink {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        self.cli.apply(script)
    }

    fn sends_element_batches(&self) -> bool {
        true
    }

    fn apply_elements(&mut self, batch: ElementBatch) -> Result<(), NftError> {
        // The socket is opened (on first use, or after an error) inside the namespace.
        let elements = &mut self.elements;
        Ok(in_netns(self.cli.netns.as_deref(), || {
            elements.send(batch)
        })??)
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<String>, NftError> {
        self.cli.list_table(family, table)
    }

    fn read_table(
        &mut self,
        family: IpFamily,
        table: &str,
        each: &mut (dyn FnMut(&str, Element<'_>) + Send),
    ) -> Option<Result<Shape, NftError>> {
        let read = || -> Result<_, NftError> {
            let (chains, sets) = listing::table(family, table)?;
            for set in sets.iter().filter(|s| s.flags & listing::NFT_SET_EVAL == 0) {
                listing::elements(family, table, &set.name, |e| each(&set.name, e))?;
            }
            Ok((chains, sets))
        };
        // The dump sockets must be opened inside the namespace.
        Some(in_netns(self.cli.netns.as_deref(), read).and_then(|r| r))
    }

    fn read_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
        each: &mut (dyn FnMut(Element<'_>) + Send),
    ) -> Option<Result<bool, NftError>> {
        let read = || -> Result<bool, NftError> {
            let (_, sets) = listing::table(family, table)?;
            if !sets.iter().any(|s| s.name == set) {
                return Ok(false);
            }
            listing::elements(family, table, set, &mut *each)?;
            Ok(true)
        };
        Some(in_netns(self.cli.netns.as_deref(), read).and_then(|r| r))
    }

    fn list_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
    ) -> Result<Option<String>, NftError> {
        self.cli.list_set(family, table, set)
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError> {
        self.cli.rule_counts(family, table)
    }
}
