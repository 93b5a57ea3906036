//! Timing tests of the bounded-frequency runner, on tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;

use super::runner::{Due, RETRY_START, Runner};

const MIN: Duration = Duration::from_secs(1);
const PERIOD: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs the runner until `until`, feeding change requests at the given offsets; returns the
/// offsets (ms) and kinds of the syncs it started. Every sync takes `cost` and succeeds unless
/// its index is in `fail`.
async fn drive(requests: &[u64], until: u64, cost: Duration, fail: &[usize]) -> Vec<(u64, Due)> {
    let t0 = Instant::now();
    let mut r = Runner::new(MIN, PERIOD, t0);
    let mut requests: Vec<u64> = requests.to_vec();
    requests.sort();
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        while requests.first().is_some_and(|&at| t0 + ms(at) <= now) {
            requests.remove(0);
            r.request();
        }
        if let Some(kind) = r.due(now) {
            out.push(((now - t0).as_millis() as u64, kind));
            tokio::time::advance(cost).await;
            let ok = !fail.contains(&(out.len() - 1));
            r.done(kind, ok, Instant::now());
            continue;
        }
        let mut next = r.next_wakeup(now);
        if let Some(&at) = requests.first() {
            next = next.min(t0 + ms(at));
        }
        if next > t0 + ms(until) {
            return out;
        }
        tokio::time::sleep_until(next).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_change_after_a_quiet_period_runs_at_once() {
    let syncs = drive(&[0, 5000], 6000, Duration::ZERO, &[]).await;
    assert_eq!(syncs, vec![(0, Due::Full), (5000, Due::Partial)]);
}

#[tokio::test(start_paused = true)]
async fn changes_during_the_cool_down_coalesce_into_one_sync() {
    let syncs = drive(&[0, 100, 200, 300, 900], 5000, ms(50), &[]).await;
    // The burst after the first sync waits for min-sync-period from its end (50 ms + 1 s).
    assert_eq!(syncs, vec![(0, Due::Full), (1050, Due::Partial)]);
}

#[tokio::test(start_paused = true)]
async fn at_most_one_sync_starts_per_min_sync_period() {
    let requests: Vec<u64> = (0..50).map(|i| i * 100).collect();
    let syncs = drive(&requests, 5000, Duration::ZERO, &[]).await;
    let starts: Vec<u64> = syncs.iter().map(|s| s.0).collect();
    assert_eq!(starts, vec![0, 1000, 2000, 3000, 4000, 5000]);
}

#[tokio::test(start_paused = true)]
async fn a_full_resync_runs_every_sync_period_without_changes() {
    let syncs = drive(&[0], 95_000, Duration::ZERO, &[]).await;
    assert_eq!(
        syncs,
        vec![
            (0, Due::Full),
            (30_000, Due::Full),
            (60_000, Due::Full),
            (90_000, Due::Full)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_sync_is_retried_as_full_with_growing_backoff() {
    let syncs = drive(&[0, 2000], 5000, Duration::ZERO, &[1, 2]).await;
    let retry1 = 2000 + RETRY_START.as_millis() as u64;
    // min-sync-period (1 s) bounds the first retry; the second backs off to 2 × RETRY_START,
    // which is still under the cool-down, so it also waits 1 s.
    assert_eq!(syncs[0], (0, Due::Full));
    assert_eq!(syncs[1], (2000, Due::Partial));
    assert_eq!(syncs[2], (retry1.max(3000), Due::Full));
    assert_eq!(syncs[3], (4000, Due::Full));
    assert_eq!(syncs.len(), 4, "{syncs:?}");
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_beyond_the_cool_down_and_is_capped_by_the_sync_period() {
    let t0 = Instant::now();
    let mut r = Runner::new(Duration::ZERO, Duration::from_secs(4), t0);
    r.request();
    let mut starts = Vec::new();
    let mut now = t0;
    for _ in 0..6 {
        now = r.next_wakeup(now);
        assert_eq!(r.due(now), Some(Due::Full));
        starts.push((now - t0).as_millis());
        r.done(Due::Full, false, now);
    }
    // 0, then +0.5, +1, +2, +4 (cap), +4.
    assert_eq!(starts, vec![0, 500, 1500, 3500, 7500, 11500]);
}

#[tokio::test(start_paused = true)]
async fn min_sync_period_zero_syncs_every_change() {
    let t0 = Instant::now();
    let mut r = Runner::new(Duration::ZERO, PERIOD, t0);
    for i in 0..3 {
        assert!(r.request(), "each request after a sync is queued afresh");
        assert!(!r.request(), "a second request before the sync coalesces");
        let kind = r.due(t0).expect("due at once");
        assert_eq!(kind, if i == 0 { Due::Full } else { Due::Partial });
        r.done(kind, true, t0);
    }
    assert_eq!(r.due(t0), None);
}

#[tokio::test(start_paused = true)]
async fn a_requested_full_resync_is_full() {
    let t0 = Instant::now();
    let mut r = Runner::new(Duration::ZERO, PERIOD, t0);
    r.request();
    r.done(Due::Full, true, t0);
    r.request_full();
    assert_eq!(r.due(t0), Some(Due::Full));
}

#[tokio::test(start_paused = true)]
async fn a_repair_runs_at_once_without_waiting_out_the_min_sync_period() {
    let t0 = Instant::now();
    let mut r = Runner::new(MIN, PERIOD, t0);
    r.request();
    r.done(Due::Full, true, t0);
    // A change right after a sync waits for the min sync period; a repair does not.
    r.request();
    assert_eq!(r.due(t0 + ms(100)), None);
    r.request_repair();
    assert_eq!(r.due(t0 + ms(100)), Some(Due::Full));
    r.done(Due::Full, true, t0 + ms(150));
    // The next change waits again, from the repair's end.
    r.request();
    assert_eq!(r.due(t0 + ms(200)), None);
    assert_eq!(r.due(t0 + ms(1150)), Some(Due::Partial));
}

#[tokio::test(start_paused = true)]
async fn a_repair_during_a_failed_syncs_backoff_waits_for_the_retry() {
    let t0 = Instant::now();
    let mut r = Runner::new(MIN, PERIOD, t0);
    r.request();
    r.done(Due::Full, false, t0);
    r.request_repair();
    assert_eq!(r.due(t0 + ms(100)), None);
    assert_eq!(r.due(t0 + MIN), Some(Due::Full));
}
