//! How one watched kind's failures are told to the operator: the first failure of a streak as a
//! warning that says what it means, repeats at most once a minute with their count, and the end
//! of a streak once, when the kind receives again. A 410 (history expired) is routine: it only
//! says that a relist follows.
//!
//! Invariants: pure (the caller passes the clock); a streak is the failures since the last
//! successful event; every failure is either logged or counted into the next repeat line.

use std::time::{Duration, Instant};

use kube::runtime::watcher;

/// How often a kind the API server does not serve is asked for again.
pub const NOT_SERVED_RETRY: Duration = Duration::from_secs(300);

/// Repeats of one streak are logged at most this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// What a failure means, for the log line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Class {
    /// 410: the watch's history was compacted; kube relists (the model is diffed, not flushed).
    Expired,
    /// 401/403: credentials or RBAC; nothing changes until an administrator acts.
    Forbidden,
    /// 404: the API server does not serve the kind (ServiceCIDRs before Kubernetes 1.33, or
    /// 1.31-1.32 without the beta API); checked again every `NOT_SERVED_RETRY`.
    NotServed,
    /// Anything else: the API server is unreachable, slow or failing; retried with backoff.
    Failing,
}

impl Class {
    pub fn of(error: &watcher::Error) -> Class {
        let code = match error {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => match e {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            watcher::Error::WatchError(status) => Some(status.code),
            _ => None,
        };
        match code {
            Some(410) => Class::Expired,
            Some(401 | 403) => Class::Forbidden,
            Some(404) => Class::NotServed,
            _ => Class::Failing,
        }
    }

    /// What the operator should know, after the error itself.
    pub fn meaning(self) -> &'static str {
        match self {
            Class::Expired => "history expired; relisting (what is still there stays programmed)",
            Class::Forbidden => {
                "refused by the API server: check kproxy's credentials and RBAC (list and watch, \
                 deploy/daemonset.yaml); the rules stay as last seen meanwhile"
            }
            Class::NotServed => {
                "this API server does not serve it (ServiceCIDRs need Kubernetes 1.33, or the \
                 beta API of 1.31-1.32): nothing is dropped for unallocated ClusterIPs; asking \
                 again every 5 minutes"
            }
            Class::Failing => {
                "the API server is unreachable or failing; the rules stay as last seen, retrying \
                 0.8 s to 30 s apart"
            }
        }
    }
}

/// The failure in one line: the step that failed and the API server's status (code, reason,
/// message) rather than kube's rendering, which repeats the message inside a debug dump.
pub fn describe(error: &watcher::Error) -> String {
    let (step, cause) = match error {
        watcher::Error::InitialListFailed(e) => ("list", e),
        watcher::Error::WatchStartFailed(e) => ("watch start", e),
        watcher::Error::WatchFailed(e) => ("watch", e),
        watcher::Error::WatchError(status) => return format!("watch: {}", status_line(status)),
        other => return other.to_string(),
    };
    match cause {
        kube::Error::Api(status) => format!("{step}: {}", status_line(status)),
        other => format!("{step}: {}", causes(other)),
    }
}

/// An error and its causes, each said once: a cause whose text the previous one already holds
/// is skipped ("client error (Connect): tcp connect error: Connection refused (os error 111)",
/// not kube's bare "client error (Connect)").
fn causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut last = out.clone();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = cause.source();
    }
    out
}

fn status_line(status: &kube::core::Status) -> String {
    format!("{} {}: {}", status.code, status.reason, status.message)
}

/// What to log for one failure.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// Routine (410): one info line.
    Routine,
    /// The first failure of a streak, or a different class than the last one: a warning.
    First,
    /// A repeat due for a reminder: a warning with how many failed and since when.
    Repeat { failures: u32, since: Duration },
    /// A repeat within `REPEAT_EVERY` of the last line: debug only.
    Quiet,
}

/// The failures since the last successful event of one kind.
#[derive(Debug, Default)]
pub struct Streak {
    failures: u32,
    started: Option<Instant>,
    warned: Option<Instant>,
    class: Option<Class>,
}

impl Streak {
    pub fn failed(&mut self, class: Class, now: Instant) -> Report {
        if class == Class::Expired {
            return Report::Routine;
        }
        self.failures += 1;
        let started = *self.started.get_or_insert(now);
        let report = match (self.class, self.warned) {
            (Some(last), Some(warned)) if last == class => {
                if now.duration_since(warned) < REPEAT_EVERY {
                    return Report::Quiet;
                }
                Report::Repeat {
                    failures: self.failures,
                    since: now.duration_since(started),
                }
            }
            _ => Report::First,
        };
        self.class = Some(class);
        self.warned = Some(now);
        report
    }

    /// An event arrived: ends the streak; returns its failures and length if there was one.
    pub fn succeeded(&mut self, now: Instant) -> Option<(u32, Duration)> {
        let ended = self
            .started
            .map(|started| (self.failures, now.duration_since(started)));
        *self = Streak::default();
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn an_outage_warns_once_then_once_a_minute_with_its_count_and_its_end_once() {
        let t = Instant::now();
        let mut s = Streak::default();
        assert_eq!(s.failed(Class::Failing, t), Report::First);
        for secs in [1, 3, 7, 15, 45] {
            assert_eq!(s.failed(Class::Failing, at(t, secs)), Report::Quiet);
        }
        assert_eq!(
            s.failed(Class::Failing, at(t, 75)),
            Report::Repeat {
                failures: 7,
                since: Duration::from_secs(75)
            }
        );
        assert_eq!(s.failed(Class::Failing, at(t, 105)), Report::Quiet);
        assert_eq!(s.succeeded(at(t, 110)), Some((8, Duration::from_secs(110))));
        assert_eq!(s.succeeded(at(t, 111)), None, "the end is told once");
        assert_eq!(s.failed(Class::Failing, at(t, 120)), Report::First);
    }

    #[test]
    fn a_different_kind_of_failure_is_a_new_warning() {
        let t = Instant::now();
        let mut s = Streak::default();
        assert_eq!(s.failed(Class::Failing, t), Report::First);
        assert_eq!(s.failed(Class::Forbidden, at(t, 1)), Report::First);
        assert_eq!(s.failed(Class::Forbidden, at(t, 2)), Report::Quiet);
    }

    #[test]
    fn expired_history_is_routine_and_neither_starts_nor_extends_a_streak() {
        let t = Instant::now();
        let mut s = Streak::default();
        assert_eq!(s.failed(Class::Expired, t), Report::Routine);
        assert_eq!(s.succeeded(at(t, 1)), None);
    }

    #[test]
    fn a_refusal_is_described_in_one_line_with_the_api_servers_words_once() {
        let mut status = kube::core::Status::failure("nodes is forbidden: no", "Forbidden");
        status.code = 403;
        let error = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)));
        assert_eq!(
            describe(&error),
            "list: 403 Forbidden: nodes is forbidden: no"
        );
    }

    #[test]
    fn causes_are_appended_once_each() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let refused = E("Connection refused (os error 111)", None);
        let tcp = E(
            "tcp connect error: Connection refused (os error 111)",
            Some(Box::new(refused)),
        );
        let client = E("client error (Connect)", Some(Box::new(tcp)));
        assert_eq!(
            causes(&client),
            "client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn status_codes_are_classified_as_upstream_reads_them() {
        let status = |code: u16| {
            let mut s = kube::core::Status::failure("x", "y");
            s.code = code;
            Box::new(s)
        };
        assert_eq!(
            Class::of(&watcher::Error::WatchError(status(410))),
            Class::Expired
        );
        assert_eq!(
            Class::of(&watcher::Error::InitialListFailed(kube::Error::Api(
                status(403)
            ))),
            Class::Forbidden
        );
        assert_eq!(
            Class::of(&watcher::Error::WatchStartFailed(kube::Error::Api(status(
                500
            )))),
            Class::Failing
        );
    }
}
