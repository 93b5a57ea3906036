//! The test API server's faults, set by the test and read per request: a resource answering
//! 403 (RBAC revoked), slow responses, watches answering 410 again and again, open watches cut
//! (between events or in the middle of one), and `continue` tokens that expire.
//!
//! Invariants: faults are per kind and last until the test changes them, except the counted ones
//! (`gone_watches`, `expired_continues`), which are used up one request at a time. A cut is an
//! epoch: an open watch that saw an older cut epoch ends abruptly (no final chunk), after writing
//! half of its next event line when the cut is `mid_event`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kproxy::watch::Kind;

#[derive(Default)]
pub(super) struct Faults {
    pub forbidden: HashSet<Kind>,
    /// Kinds this server does not serve (404, as an API server without the resource).
    pub not_served: HashSet<Kind>,
    pub delay: HashMap<Kind, Duration>,
    /// The next this many watch requests of the kind get an ERROR 410 event at once.
    pub gone_watches: HashMap<Kind, usize>,
    /// The next this many list requests with a `continue` token get 410 Expired.
    pub expired_continues: usize,
    pub cuts: HashMap<Kind, Cut>,
}

/// The latest cut of a kind's open watches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Cut {
    pub epoch: u64,
    pub mid_event: bool,
}

impl Faults {
    pub fn cut(&self, kind: Kind) -> Cut {
        self.cuts.get(&kind).copied().unwrap_or_default()
    }

    /// Whether a watch request of `kind` should get 410 now (and uses one up).
    pub fn take_gone_watch(&mut self, kind: Kind) -> bool {
        match self.gone_watches.get_mut(&kind) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether a continued list should get 410 now (and uses one up).
    pub fn take_expired_continue(&mut self) -> bool {
        let expired = self.expired_continues > 0;
        self.expired_continues = self.expired_continues.saturating_sub(1);
        expired
    }
}

impl super::ApiServer {
    /// While true, every list and watch of `kind` answers 403 Forbidden (as after RBAC was
    /// revoked); open watches of `kind` are cut, as the connection of a real one would be sooner
    /// or later.
    pub fn forbid(&self, kind: Kind, forbidden: bool) {
        self.shared.mutate(|s| {
            if forbidden {
                s.faults.forbidden.insert(kind);
                let cut = s.faults.cuts.entry(kind).or_default();
                *cut = Cut {
                    epoch: cut.epoch + 1,
                    mid_event: false,
                };
            } else {
                s.faults.forbidden.remove(&kind);
            }
        });
    }

    /// Whether `kind` is served at all: an API server older than the resource answers 404.
    pub fn serve_kind(&self, kind: Kind, served: bool) {
        self.shared.mutate(|s| {
            if served {
                s.faults.not_served.remove(&kind);
            } else {
                s.faults.not_served.insert(kind);
            }
        });
    }

    /// Every response (list page or watch start) for `kind` waits `delay` first.
    pub fn delay(&self, kind: Kind, delay: Duration) {
        self.shared.mutate(|s| s.faults.delay.insert(kind, delay));
    }

    /// The next `n` watch requests of `kind` get an ERROR 410 Expired event and end, whatever
    /// resourceVersion they ask for (a watch cache that keeps falling behind).
    pub fn gone_watches(&self, kind: Kind, n: usize) {
        self.shared
            .mutate(|s| s.faults.gone_watches.insert(kind, n));
    }

    /// The next `n` list requests that carry a `continue` token get 410 Expired (the token's
    /// snapshot was compacted away while the client paged).
    pub fn expire_continues(&self, n: usize) {
        self.shared.mutate(|s| s.faults.expired_continues = n);
    }

    /// Open watches of `kind` end abruptly: at once, or (`mid_event`) after writing the first
    /// half of their next event.
    pub fn cut_watches(&self, kind: Kind, mid_event: bool) {
        self.shared.mutate(|s| {
            let cut = s.faults.cuts.entry(kind).or_default();
            *cut = Cut {
                epoch: cut.epoch + 1,
                mid_event,
            };
        });
    }

    /// How many list requests of `kind` carried a `continue` token (pages after the first).
    pub fn continued_lists(&self, kind: Kind) -> usize {
        self.lists(kind)
            .iter()
            .filter(|r| r.param("continue").is_some())
            .count()
    }
}
