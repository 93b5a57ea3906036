//! A recording fake backend for the core's tests: it remembers every call and the plans it was
//! last given, and can be told to fail.
//!
//! Invariants: `state` mirrors what a real backend would hold after the same successful calls;
//! a failed call leaves `state` untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::{Backend, BackendError, Plans, ProxyMode, SyncReport, TableRules};
use crate::model::plan::Planned;
use crate::model::{IpFamily, ServicePortName};
use crate::node::NodeFacts;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Full { ports: usize },
    Partial { changed: BTreeSet<ServicePortName> },
    Cleanup,
}

#[derive(Debug, Default)]
pub struct Recorded {
    pub calls: Vec<Call>,
    /// What the fake "kernel" holds.
    pub state: BTreeMap<ServicePortName, Arc<Planned>>,
    /// Fail this many upcoming syncs.
    pub fail_next: usize,
    /// What the next `drift` call reports (taken, so it is reported once).
    pub drift: Option<String>,
    /// The mode the fake claims (nftables when unset).
    pub mode: Option<ProxyMode>,
    /// What `table_rules` reports.
    pub rules: Vec<TableRules>,
    /// What `failed_family` reports.
    pub failed_family: Option<IpFamily>,
}

/// Cloneable handle: the test keeps one, the sync loop owns the other.
#[derive(Clone, Debug, Default)]
pub struct FakeBackend {
    pub recorded: Arc<Mutex<Recorded>>,
}

impl FakeBackend {
    pub fn calls(&self) -> Vec<Call> {
        self.recorded.lock().unwrap().calls.clone()
    }

    fn fail_if_asked(r: &mut Recorded) -> Result<(), BackendError> {
        if r.fail_next > 0 {
            r.fail_next -= 1;
            return Err(BackendError::at(
                crate::backends::error::Step::Apply,
                crate::backends::error::Cause::Injected("fake failure".into()),
            ));
        }
        Ok(())
    }
}

impl Backend for FakeBackend {
    fn mode(&self) -> ProxyMode {
        self.recorded
            .lock()
            .unwrap()
            .mode
            .unwrap_or(ProxyMode::Nftables)
    }

    fn table_rules(&self) -> Vec<TableRules> {
        self.recorded.lock().unwrap().rules.clone()
    }

    fn failed_family(&self) -> Option<IpFamily> {
        self.recorded.lock().unwrap().failed_family
    }

    fn sync_full(&mut self, plans: &Plans, _node: &NodeFacts) -> Result<SyncReport, BackendError> {
        let mut r = self.recorded.lock().unwrap();
        r.calls.push(Call::Full { ports: plans.len() });
        Self::fail_if_asked(&mut r)?;
        r.state = plans.clone();
        Ok(SyncReport {
            operations: plans.len(),
        })
    }

    fn sync_partial(
        &mut self,
        plans: &Plans,
        changed: &BTreeSet<ServicePortName>,
        _node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        let mut r = self.recorded.lock().unwrap();
        r.calls.push(Call::Partial {
            changed: changed.clone(),
        });
        Self::fail_if_asked(&mut r)?;
        for name in changed {
            match plans.get(name) {
                Some(p) => r.state.insert(name.clone(), p.clone()),
                None => r.state.remove(name),
            };
        }
        Ok(SyncReport {
            operations: changed.len(),
        })
    }

    fn drift(&mut self) -> Result<Option<String>, BackendError> {
        Ok(self.recorded.lock().unwrap().drift.take())
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let mut r = self.recorded.lock().unwrap();
        r.calls.push(Call::Cleanup);
        r.state.clear();
        Ok(())
    }

    fn cleanup_plan(&mut self) -> Result<Vec<String>, BackendError> {
        let r = self.recorded.lock().unwrap();
        Ok(r.state.keys().map(ToString::to_string).collect())
    }

    fn render(&self, plans: &Plans, _node: &NodeFacts) -> String {
        plans.keys().map(|k| format!("{k}\n")).collect()
    }
}
