//! Poison-pill isolation. When the kernel refuses a sync, the (service port, IP family) pairs
//! that cause it are found by bisection, every other one is programmed, and those are kept out
//! of the kernel (quarantined) until their Service or slices change, or the next full resync
//! finds the kernel takes them after all.
//!
//! Invariants: the backend is only ever handed plans without the quarantined pairs; bisection
//! uses full syncs of subsets (each one a complete, adopting reconcile), the fixed skeleton
//! alone first, so the kernel always ends in the state of the last successful attempt, which
//! is the final one; a refusal the skeleton alone causes is not any Service's and is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::backends::{BackendError, Plans};
use crate::model::plan::Planned;
use crate::model::{IpFamily, ServicePortName};

/// What is isolated: one family of one service port.
pub type Unit = (ServicePortName, IpFamily);

/// Why a unit is quarantined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// What the kernel said when only this unit was added.
    pub error: String,
    /// The manifest file of its Service, under `--manifests`.
    pub origin: Option<String>,
}

/// The quarantined units.
#[derive(Debug, Default)]
pub struct Quarantine {
    units: BTreeMap<Unit, Quarantined>,
}

impl Quarantine {
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn units(&self) -> &BTreeMap<Unit, Quarantined> {
        &self.units
    }

    /// Lets the units of `ports` be tried again (their Service or slices changed).
    pub fn release(&mut self, ports: &BTreeSet<ServicePortName>) {
        self.units.retain(|(name, _), _| !ports.contains(name));
    }

    /// Empties the quarantine, returning what it held.
    pub fn take(&mut self) -> BTreeMap<Unit, Quarantined> {
        std::mem::take(&mut self.units)
    }

    pub fn insert(&mut self, unit: Unit, why: Quarantined) {
        self.units.insert(unit, why);
    }

    /// `plans` without the quarantined units.
    pub fn filter(&self, plans: &Plans) -> Plans {
        let keep: BTreeSet<Unit> = units_of(plans)
            .into_iter()
            .filter(|u| !self.units.contains_key(u))
            .collect();
        subset(plans, &keep)
    }
}

/// Every unit of `plans`.
pub fn units_of(plans: &Plans) -> Vec<Unit> {
    plans
        .iter()
        .flat_map(|(name, p)| p.plan.families.iter().map(|f| (name.clone(), f.family)))
        .collect()
}

/// The plans of exactly `units`: a port keeps the families listed, and is absent without any.
pub fn subset(plans: &Plans, units: &BTreeSet<Unit>) -> Plans {
    let mut out = Plans::new();
    for (name, planned) in plans {
        let wanted = |f: IpFamily| units.contains(&(name.clone(), f));
        let all = planned.plan.families.iter().all(|f| wanted(f.family));
        if all {
            out.insert(name.clone(), planned.clone());
            continue;
        }
        let families: Vec<_> = planned
            .plan
            .families
            .iter()
            .filter(|f| wanted(f.family))
            .cloned()
            .collect();
        if families.is_empty() {
            continue;
        }
        let mut p = Planned::clone(planned);
        p.plan.families = families;
        out.insert(name.clone(), Arc::new(p));
    }
    out
}

/// Finds the units of `suspects ∪ others` whose presence makes `attempt` refuse, trying the
/// `others` first (with the skeleton they are known good unless they fail). `attempt(set)`
/// programs exactly `set`. Returns each culprit with the error its attempt alone met; the last
/// attempt made is the kernel's state: every unit but the culprits. Fails with the skeleton's
/// own error when even the empty set is refused, or with any error that is not a refusal.
pub fn isolate(
    suspects: Vec<Unit>,
    others: Vec<Unit>,
    mut attempt: impl FnMut(&BTreeSet<Unit>) -> Result<(), BackendError>,
) -> Result<Vec<(Unit, BackendError)>, BackendError> {
    let refused = |e: BackendError| match e.class() {
        crate::backends::error::Class::Refused => Ok(e),
        _ => Err(e),
    };
    let mut good: BTreeSet<Unit> = BTreeSet::new();
    let mut culprits = Vec::new();
    let mut suspects = suspects;
    match attempt(&others.iter().cloned().collect()) {
        Ok(()) => good.extend(others),
        Err(e) => {
            refused(e)?;
            attempt(&BTreeSet::new())?;
            suspects.extend(others);
        }
    }
    let mut last_ok = true;
    split(
        &mut good,
        suspects,
        &mut culprits,
        &mut last_ok,
        &mut |set| match attempt(set) {
            Ok(()) => Ok(Ok(())),
            Err(e) => refused(e).map(Err),
        },
    )?;
    if !last_ok {
        attempt(&good)?;
    }
    Ok(culprits)
}

/// Adds the units of `candidates` that `attempt` takes together with `good` to `good`, and the
/// others to `culprits`; `last_ok` tells whether the last attempt succeeded.
fn split(
    good: &mut BTreeSet<Unit>,
    candidates: Vec<Unit>,
    culprits: &mut Vec<(Unit, BackendError)>,
    last_ok: &mut bool,
    attempt: &mut impl FnMut(&BTreeSet<Unit>) -> Result<Result<(), BackendError>, BackendError>,
) -> Result<(), BackendError> {
    if candidates.is_empty() {
        return Ok(());
    }
    let mut with: BTreeSet<Unit> = good.clone();
    with.extend(candidates.iter().cloned());
    match attempt(&with)? {
        Ok(()) => {
            *last_ok = true;
            good.extend(candidates);
            Ok(())
        }
        Err(e) => {
            *last_ok = false;
            if candidates.len() == 1 {
                culprits.push((candidates.into_iter().next().expect("one"), e));
                return Ok(());
            }
            let mut first = candidates;
            let second = first.split_off(first.len() / 2);
            split(good, first, culprits, last_ok, attempt)?;
            split(good, second, culprits, last_ok, attempt)
        }
    }
}
