//! How long one watched kind waits after a failure before kube's watcher tries again: client-go's
//! reflector sequence (0.8 s doubling to 30 s) with two differences that matter after an outage.
//!
//! Invariants: pure (the caller passes the clock and the random draw). A wait never exceeds
//! `MAX`: jitter takes up to a quarter off, never adds (kube's own backoff adds up to 100 %, so
//! 60 s waits at the cap). The sequence restarts on a live event (the watch works), or when the
//! last failure is `RESET_AFTER` old (client-go's rule); never on a list's events, so 410, relist,
//! 410 ... backs off, and never on the `Init` kube emits before every list attempt (kube's own
//! backoff restarts on it, so a list refused forever was retried every 0.8-1.6 s). The first
//! 410 after anything else is not waited for: the API server answered, and the relist it asks
//! for is the catch-up.

use std::time::{Duration, Instant};

use super::trouble::Class;

pub const FIRST: Duration = Duration::from_millis(800);
pub const MAX: Duration = Duration::from_secs(30);
pub const RESET_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    last_expired: bool,
    last_failure: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST,
            last_expired: false,
            last_failure: None,
        }
    }
}

impl Backoff {
    /// The wait after a failure of `class` at `now`; `draw` is uniform in [0, 1).
    pub fn after(&mut self, class: Class, now: Instant, draw: f64) -> Duration {
        if self
            .last_failure
            .is_some_and(|last| now.duration_since(last) > RESET_AFTER)
        {
            self.reset();
        }
        self.last_failure = Some(now);
        let expired = class == Class::Expired;
        let first_expired = expired && !self.last_expired;
        self.last_expired = expired;
        if first_expired {
            return Duration::ZERO;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX);
        wait.mul_f64(1.0 - 0.25 * draw.clamp(0.0, 1.0))
    }

    /// A live event arrived (the watch works): the next failure starts the sequence again.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// A draw in [0, 1) from the standard library's per-process random hash keys and the clock.
pub fn draw() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(b: &mut Backoff, class: Class) -> Duration {
        b.after(class, Instant::now(), 0.0)
    }

    fn secs(waits: &[Duration]) -> Vec<f64> {
        waits.iter().map(|d| d.as_secs_f64()).collect()
    }

    #[test]
    fn failures_wait_as_client_go_doubling_from_0_8_s_to_30_s_and_never_longer() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..9).map(|_| after(&mut b, Class::Failing)).collect();
        assert_eq!(
            secs(&waits),
            [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]
        );
        let jittered = b.after(Class::Failing, Instant::now(), 0.999);
        assert!(
            jittered <= MAX && jittered >= MAX.mul_f64(0.75),
            "{jittered:?}"
        );
    }

    #[test]
    fn the_first_410_is_relisted_at_once_even_after_an_outage_and_410_after_410_backs_off() {
        let mut b = Backoff::default();
        for _ in 0..8 {
            after(&mut b, Class::Failing);
        }
        assert_eq!(
            after(&mut b, Class::Expired),
            Duration::ZERO,
            "back: catch up now"
        );
        assert_eq!(
            after(&mut b, Class::Expired),
            MAX,
            "a broken watch cache is not hammered"
        );
        b.reset();
        assert_eq!(after(&mut b, Class::Expired), Duration::ZERO);
        assert_eq!(after(&mut b, Class::Expired), FIRST);
        assert_eq!(after(&mut b, Class::Forbidden), FIRST * 2);
    }

    #[test]
    fn a_failure_two_minutes_after_the_last_starts_the_sequence_again() {
        let t = Instant::now();
        let mut b = Backoff::default();
        for s in 0..6 {
            b.after(Class::Failing, t + Duration::from_secs(s), 0.0);
        }
        let soon = b.after(Class::Failing, t + Duration::from_secs(10), 0.0);
        assert_eq!(soon, MAX);
        let later = b.after(
            Class::Failing,
            t + Duration::from_secs(10) + RESET_AFTER * 2,
            0.0,
        );
        assert_eq!(later, FIRST);
    }

    #[test]
    fn draws_fall_in_the_unit_interval_and_vary() {
        let draws: Vec<f64> = (0..64).map(|_| draw()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.iter().any(|&d| d != draws[0]));
    }
}
