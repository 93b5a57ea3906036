//! Why a backend step failed, sorted by what the sync loop should do about it: retry the same
//! sync (the kernel or a lock was busy), resync in full (kproxy no longer knows what the kernel
//! holds), isolate and quarantine (the kernel refused an object kproxy sent), or give up until
//! the node changes (no permission, a kernel feature missing). Each variant carries the step
//! that failed and the typed cause.
//!
//! Invariants: the class is decided here, once, from the cause (an errno, or the message of the
//! kernel or tool); backends only say which step failed and what the cause was.

use std::fmt;

use super::iptables::RestoreError;
use super::ipvs::kernel::KernelError;
use super::ipvs::socket::SocketError;
use super::process::RunError;
use crate::nftables::NftError;
use crate::nftables::elements::ElementsError;

/// The step of a backend that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Sending changes to the kernel.
    Apply,
    /// Reading what the kernel holds, to adopt it.
    Adopt,
    /// Checking the kernel for changes by someone else.
    Probe,
    /// Removing what kproxy created.
    Cleanup,
    /// Reading what a cleanup would remove (`--cleanup --dry-run`).
    CleanupPlan,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Apply => "applying the changes",
            Step::Adopt => "reading the kernel's current state",
            Step::Probe => "checking the kernel's rules for drift",
            Step::Cleanup => "cleaning up",
            Step::CleanupPlan => "reading what cleanup would remove",
        })
    }
}

/// What went wrong, as the layer below reported it.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Iptables(#[from] RestoreError),
    #[error(transparent)]
    Ipvs(#[from] KernelError),
    /// A partial sync before the first full one (kproxy's objects are not loaded yet).
    #[error("kproxy's rules are not loaded yet: a full sync must come first")]
    NotLoaded,
    /// A failure injected by a test's fake backend.
    #[error("injected failure: {0}")]
    Injected(String),
}

/// Why a backend step failed; the variant says what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The kernel or a lock was busy: run the same sync again soon.
    #[error("{step}: busy, will retry: {source}")]
    Transient { step: Step, source: Cause },
    /// kproxy no longer knows what the kernel holds: resync in full.
    #[error("{step}: {source}")]
    Resync { step: Step, source: Cause },
    /// The kernel refused what kproxy sent: some object in it is bad. Find the service ports
    /// that cause it and quarantine them; apply everything else.
    #[error("{step}: the kernel refused it: {source}")]
    Refused { step: Step, source: Cause },
    /// No permission, or a kernel feature or tool is missing: retrying will not help until the
    /// node changes.
    #[error("{step}: {source}")]
    Fatal { step: Step, source: Cause },
}

/// The class of a failure, before it is given its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Transient,
    Resync,
    Refused,
    Fatal,
}

impl BackendError {
    /// A partial sync before the first full one: resync in full.
    pub fn not_loaded() -> BackendError {
        BackendError::Resync {
            step: Step::Apply,
            source: Cause::NotLoaded,
        }
    }

    /// `cause` at `step`, classified.
    pub fn at(step: Step, cause: impl Into<Cause>) -> BackendError {
        let source = cause.into();
        match classify(&source) {
            Class::Transient => BackendError::Transient { step, source },
            Class::Resync => BackendError::Resync { step, source },
            Class::Refused => BackendError::Refused { step, source },
            Class::Fatal => BackendError::Fatal { step, source },
        }
    }

    pub fn class(&self) -> Class {
        match self {
            BackendError::Transient { .. } => Class::Transient,
            BackendError::Resync { .. } => Class::Resync,
            BackendError::Refused { .. } => Class::Refused,
            BackendError::Fatal { .. } => Class::Fatal,
        }
    }

    pub fn step(&self) -> Step {
        match self {
            BackendError::Transient { step, .. }
            | BackendError::Resync { step, .. }
            | BackendError::Refused { step, .. }
            | BackendError::Fatal { step, .. } => *step,
        }
    }

    pub fn cause(&self) -> &Cause {
        match self {
            BackendError::Transient { source, .. }
            | BackendError::Resync { source, .. }
            | BackendError::Refused { source, .. }
            | BackendError::Fatal { source, .. } => source,
        }
    }
}

/// The class of an errno the kernel answered with.
pub fn errno_class(errno: i32) -> Class {
    match errno {
        libc::EPERM | libc::EACCES | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT => Class::Fatal,
        libc::EBUSY | libc::EAGAIN | libc::EINTR | libc::ENOBUFS => Class::Transient,
        libc::EEXIST
        | libc::ENOENT
        | libc::ESRCH
        | libc::EINVAL
        | libc::ERANGE
        | libc::EOPNOTSUPP
        | libc::E2BIG
        | libc::EOVERFLOW => Class::Refused,
        _ => Class::Resync,
    }
}

/// The class of what a tool or libnftables printed when it refused a script.
pub fn message_class(message: &str) -> Class {
    let m = message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if any(&[
        "operation not permitted",
        "permission denied",
        "must be root",
    ]) {
        Class::Fatal
    } else if any(&[
        "resource busy",
        "temporarily unavailable",
        "interrupted system call",
        "xtables lock",
        "no buffer space",
    ]) {
        Class::Transient
    } else if any(&[
        "could not process rule",
        "file exists",
        "no such file or directory",
        "invalid argument",
        "numerical result out of range",
        "operation not supported",
        "syntax error",
        "error:",
        "failed",
    ]) {
        Class::Refused
    } else {
        Class::Resync
    }
}

fn classify(cause: &Cause) -> Class {
    match cause {
        Cause::Nft(e) => nft_class(e),
        Cause::Iptables(e) => iptables_class(e),
        Cause::Ipvs(e) => ipvs_class(e),
        Cause::NotLoaded => Class::Resync,
        Cause::Injected(m) => message_class(m),
    }
}

fn nft_class(e: &NftError) -> Class {
    match e {
        NftError::Spawn { .. } | NftError::LibraryUnavailable(_) | NftError::Netns(..) => {
            Class::Fatal
        }
        NftError::ApplyRefused { stderr, .. } => message_class(stderr),
        // An element batch the kernel answered with an errno: the same classes as the text
        // libnftables would have printed for it, so a refused element is quarantined too.
        NftError::Elements(ElementsError::Refused { source, .. }) => {
            source.raw_os_error().map_or(Class::Resync, errno_class)
        }
        NftError::Injected(m) => message_class(m),
        _ => Class::Resync,
    }
}

fn iptables_class(e: &RestoreError) -> Class {
    match e {
        RestoreError::Run {
            source: RunError::Spawn(_),
            ..
        } => Class::Fatal,
        RestoreError::Refused { message, .. } => message_class(message),
        _ => Class::Resync,
    }
}

fn ipvs_class(e: &KernelError) -> Class {
    let errno = match e {
        KernelError::Ipvs(SocketError::NoIpvs) => return Class::Fatal,
        KernelError::Ipvs(SocketError::Netlink(e)) => e.errno(),
        KernelError::Ipvs(SocketError::Resolve(_)) => None,
        KernelError::Link(e) => e.conn().errno(),
        KernelError::Nft(e) => return nft_class(e),
        KernelError::Sysctl { source, .. } => source.raw_os_error(),
        KernelError::Injected(m) => return message_class(m),
    };
    errno.map_or(Class::Resync, errno_class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_objects_are_told_from_busy_and_forbidden_kernels() {
        let cases = [
            ("Error: Could not process rule: File exists", Class::Refused),
            (
                "iptables-restore: line 12 failed: Invalid argument",
                Class::Refused,
            ),
            (
                "Another app is currently holding the xtables lock; still 4s 0us time ahead",
                Class::Transient,
            ),
            (
                "Error: Could not process rule: Operation not permitted",
                Class::Fatal,
            ),
            ("iptables-restore v1.8.9: must be root", Class::Fatal),
            ("the connection dropped", Class::Resync),
        ];
        for (message, class) in cases {
            assert_eq!(message_class(message), class, "{message}");
        }
        assert_eq!(errno_class(libc::EEXIST), Class::Refused);
        assert_eq!(errno_class(libc::EPERM), Class::Fatal);
        assert_eq!(errno_class(libc::EINTR), Class::Transient);
        assert_eq!(errno_class(libc::EIO), Class::Resync);
    }

    #[test]
    fn an_element_batch_the_kernel_refuses_is_classed_by_its_errno_like_the_same_text() {
        let batch = |errno| {
            let source = std::io::Error::from_raw_os_error(errno);
            let e = ElementsError::Refused {
                set: "endpoints-tcp".into(),
                source,
            };
            nft_class(&NftError::Elements(e))
        };
        assert_eq!(
            batch(libc::EEXIST),
            Class::Refused,
            "quarantined, not resynced"
        );
        assert_eq!(batch(libc::ENOENT), Class::Refused);
        assert_eq!(batch(libc::EPERM), Class::Fatal);
        assert_eq!(batch(libc::EBUSY), Class::Transient);
    }
}
