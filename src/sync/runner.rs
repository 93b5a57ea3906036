//! The bounded-frequency runner: decides when the sync loop runs, never how.
//!
//! Invariants: changes coalesce into one pending flag; at most one sync starts per `min_interval`
//! (measured from the end of the previous one, as upstream); the first change after a quiet
//! period runs at once; a full resync is due every `period`; after a failure the next sync is a
//! full resync, retried with exponential backoff (from `RETRY_START`, capped at `period`); a
//! repair (someone else changed kproxy's rules) runs at once, without waiting out `min_interval`:
//! traffic is already broken, and the drift probe's period bounds how often that can happen.
//! Pure state: the caller supplies `now`, so tests drive it with any clock.

use std::time::Duration;

use tokio::time::Instant;

/// First retry delay after a failed sync.
pub const RETRY_START: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Partial,
    Full,
}

#[derive(Debug)]
pub struct Runner {
    min_interval: Duration,
    period: Duration,
    /// A change is waiting for a sync.
    pending: bool,
    /// When the previous sync ended.
    last_end: Option<Instant>,
    /// When the next periodic full resync is due.
    next_full: Instant,
    /// After a failure: when to retry, and the backoff used.
    retry: Option<(Instant, Duration)>,
    /// The next sync must be full (startup, failure, node change).
    full_needed: bool,
    /// The next sync is a repair: it does not wait for `min_interval`.
    repair: bool,
}

impl Runner {
    /// A runner whose first sync is a full one, due as soon as it is requested.
    pub fn new(min_interval: Duration, period: Duration, now: Instant) -> Runner {
        Runner {
            min_interval,
            period,
            pending: false,
            last_end: None,
            next_full: now + period,
            retry: None,
            full_needed: true,
            repair: false,
        }
    }

    /// A change arrived; returns true if it was the first one since the last sync (queued).
    pub fn request(&mut self) -> bool {
        !std::mem::replace(&mut self.pending, true)
    }

    /// The next sync must be a full resync.
    pub fn request_full(&mut self) {
        self.full_needed = true;
        self.pending = true;
    }

    /// Someone else changed kproxy's rules: a full resync, due at once (unless a failed sync's
    /// backoff is running: that retry is a full resync already).
    pub fn request_repair(&mut self) {
        self.request_full();
        self.repair = true;
    }

    fn earliest_start(&self) -> Option<Instant> {
        self.last_end.map(|end| end + self.min_interval)
    }

    /// When the loop should wake up next to start a sync.
    pub fn next_wakeup(&self, now: Instant) -> Instant {
        let wanted = match self.retry {
            // A retry is a full resync already: the periodic one waits for it.
            Some((retry_at, _)) => retry_at,
            None if self.repair => return now,
            None if self.pending => now,
            None => self.next_full,
        };
        wanted.max(self.earliest_start().unwrap_or(wanted))
    }

    /// Whether a sync should start now, and which kind.
    pub fn due(&self, now: Instant) -> Option<Due> {
        if self.next_wakeup(now) > now {
            return None;
        }
        Some(if self.full_needed || now >= self.next_full {
            Due::Full
        } else {
            Due::Partial
        })
    }

    /// The sync of `kind` met a busy kernel: the same kind again, after the backoff.
    pub fn retry(&mut self, kind: Due, now: Instant) {
        let full = self.full_needed || kind == Due::Full;
        self.done(kind, false, now);
        self.full_needed = full;
    }

    /// Records the end of a sync of `kind` started by `due`.
    pub fn done(&mut self, kind: Due, ok: bool, now: Instant) {
        self.last_end = Some(now);
        self.repair = false;
        if ok {
            self.pending = false;
            self.retry = None;
            self.full_needed = false;
            if kind == Due::Full {
                self.next_full = now + self.period;
            }
        } else {
            self.full_needed = true;
            self.pending = true;
            let backoff = match self.retry {
                Some((_, b)) => (b * 2).min(self.period),
                None => RETRY_START.min(self.period),
            };
            self.retry = Some((now + backoff, backoff));
        }
    }
}
