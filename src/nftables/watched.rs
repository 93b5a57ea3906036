//! `Watched<T>`: a transport whose writes are known as kproxy's own to an nf_tables change
//! monitor (`monitor.rs`), so everything else that touches the watched tables is reported by
//! `foreign_changes` (drift). Without a monitor (it could not be opened) it is `T` unchanged
//! and `foreign_changes` says `None`: callers fall back to counting rules.
//!
//! Invariants: every write (`apply`, `apply_elements`) runs inside the monitor's write window;
//! reads are passed through untouched.

use std::collections::BTreeMap;

use super::elements::ElementBatch;
use super::listing::{Element, Shape};
use super::monitor::{Foreign, Interest, LARGE, Monitor, MonitorError};
use super::transport::{NftError, Transport};
use crate::model::IpFamily;

pub struct Watched<T: Transport> {
    inner: T,
    monitor: Option<Monitor>,
}

impl<T: Transport> Watched<T> {
    /// Watches `inner`'s writes to what `interest` selects, in this thread's network namespace
    /// (or the named one). A monitor that cannot be opened is logged once and done without.
    pub fn new(inner: T, netns: Option<&str>, interest: Interest) -> Watched<T> {
        let monitor = Monitor::open(netns, interest)
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot watch nf_tables changes; drift is noticed by counting rules instead")
            })
            .ok();
        Watched { inner, monitor }
    }

    /// No monitor: `inner` as it is.
    pub fn unwatched(inner: T) -> Watched<T> {
        Watched {
            inner,
            monitor: None,
        }
    }
}

impl<T: Transport> Transport for Watched<T> {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        match &mut self.monitor {
            // ~40 bytes per operation in nft's syntax.
            // One script is one transaction: one commit.
            Some(m) => m.writing(script.len() > LARGE * 40, Some(1), || {
                self.inner.apply(script)
            }),
            None => self.inner.apply(script),
        }
    }

    fn sends_element_batches(&self) -> bool {
        self.inner.sends_element_batches()
    }

    fn apply_elements(&mut self, batch: ElementBatch) -> Result<(), NftError> {
        match &mut self.monitor {
            // One batch is one transaction: one commit.
            Some(m) => m.writing(batch.len() > LARGE, Some(1), || {
                self.inner.apply_elements(batch)
            }),
            None => self.inner.apply_elements(batch),
        }
    }

    fn list_table(&mut self, family: IpFamily, table: &str) -> Result<Option<String>, NftError> {
        self.inner.list_table(family, table)
    }

    fn read_table(
        &mut self,
        family: IpFamily,
        table: &str,
        each: &mut (dyn FnMut(&str, Element<'_>) + Send),
    ) -> Option<Result<Shape, NftError>> {
        self.inner.read_table(family, table, each)
    }

    fn read_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
        each: &mut (dyn FnMut(Element<'_>) + Send),
    ) -> Option<Result<bool, NftError>> {
        self.inner.read_set(family, table, set, each)
    }

    fn list_set(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
    ) -> Result<Option<String>, NftError> {
        self.inner.list_set(family, table, set)
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError> {
        self.inner.rule_counts(family, table)
    }

    fn foreign_changes(&mut self) -> Option<Result<Foreign, MonitorError>> {
        self.monitor.as_mut().map(Monitor::foreign)
    }
}
