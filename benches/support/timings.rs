//! Individual timings of bench operations, for the median and p90 that BENCHMARKS.md reports.
//! Criterion's own estimates are over samples of several iterations; these are over single
//! operations (each kernel transaction, each restore), as an operator would see them.
//!
//! Invariants: `record` keeps every duration under its name, in a process-wide table; `report`
//! prints one line per name (count, median, p90, min, max), sorted by name, and is called once at
//! the end of a bench binary. Percentiles are nearest-rank over the recorded values.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static TABLE: Mutex<BTreeMap<String, Vec<Duration>>> = Mutex::new(BTreeMap::new());

/// Records one operation's duration under `name`.
pub fn record(name: &str, d: Duration) {
    TABLE
        .lock()
        .expect("timings")
        .entry(name.to_string())
        .or_default()
        .push(d);
}

/// Runs `f`, records how long it took under `name`, and returns that duration.
pub fn time(name: &str, f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    let d = start.elapsed();
    record(name, d);
    d
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `values`; `None` when empty.
pub fn percentile(values: &[Duration], p: u32) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    let rank = (v.len() * p as usize).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

/// The summary line of `name`, or `None` when nothing was recorded under it.
pub fn summary(name: &str) -> Option<String> {
    let table = TABLE.lock().expect("timings");
    let v = table.get(name)?;
    Some(format!(
        "{name}: n={} median={:.3?} p90={:.3?} min={:.3?} max={:.3?}",
        v.len(),
        percentile(v, 50)?,
        percentile(v, 90)?,
        v.iter().min()?,
        v.iter().max()?,
    ))
}

/// Prints every recorded name's summary line (see the module invariants).
pub fn report() {
    let names: Vec<String> = TABLE.lock().expect("timings").keys().cloned().collect();
    println!("---- single-operation timings (median, p90) ----");
    for name in names {
        if let Some(line) = summary(&name) {
            println!("timings {line}");
        }
    }
}
