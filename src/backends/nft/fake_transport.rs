//! A transport that records every script instead of applying it, and answers listings and rule
//! counts from what a test put in it: for the user-space benches and the backend's unit tests.
//!
//! Invariants: compiled for tests and the `fakes` feature only, never into the daemon.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::model::IpFamily;
use crate::nftables::transport::{NftError, Transport};

/// What a `FakeTransport` saw and holds.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every script applied successfully, in order.
    pub applied: Vec<String>,
    /// Fail this many upcoming applies (the script is not recorded).
    pub fail_next: usize,
    /// What `list_table` returns for (ip, ip6).
    pub tables: (Option<String>, Option<String>),
    /// How many times `list_table` was called.
    pub lists: usize,
    /// What `rule_counts` returns for (ip, ip6); tests set it to simulate the kernel.
    pub rule_counts: (BTreeMap<String, usize>, BTreeMap<String, usize>),
}

/// A recording transport; clone it to keep a handle in the test.
#[derive(Clone, Debug, Default)]
pub struct FakeTransport {
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeTransport {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, FakeState>, NftError> {
        self.state
            .lock()
            .map_err(|_| NftError::Injected("poisoned fake transport".into()))
    }
}

impl Transport for FakeTransport {
    fn apply(&mut self, script: &str) -> Result<(), NftError> {
        let mut s = self.lock()?;
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(NftError::Injected("apply refused".into()));
        }
        s.applied.push(script.to_string());
        Ok(())
    }

    fn list_table(&mut self, family: IpFamily, _table: &str) -> Result<Option<String>, NftError> {
        let mut s = self.lock()?;
        s.lists += 1;
        Ok(match family {
            IpFamily::V4 => s.tables.0.clone(),
            IpFamily::V6 => s.tables.1.clone(),
        })
    }

    fn rule_counts(
        &mut self,
        family: IpFamily,
        _table: &str,
    ) -> Result<BTreeMap<String, usize>, NftError> {
        let s = self.lock()?;
        Ok(match family {
            IpFamily::V4 => s.rule_counts.0.clone(),
            IpFamily::V6 => s.rule_counts.1.clone(),
        })
    }
}
