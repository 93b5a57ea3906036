//! Which processes and threads are kproxy's own: the children it started (`nft`,
//! `iptables-restore`, ...) and the threads that entered a network namespace for it. The nf_tables
//! change monitor (`nftables::monitor`) asks, to tell kproxy's commits from someone else's by
//! the pid the kernel names.
//!
//! Invariants: only the last `REMEMBERED` are kept, far more than run between two drift
//! checks; pids as this process sees them (the kernel's when kproxy runs in the initial pid
//! namespace, which is when the monitor asks).

use std::collections::VecDeque;
use std::sync::Mutex;

const REMEMBERED: usize = 64;

static OWN: Mutex<VecDeque<u32>> = Mutex::new(VecDeque::new());

/// Remembers a child's pid or a thread's id as kproxy's.
pub fn remember(pid: u32) {
    if let Ok(mut own) = OWN.lock() {
        if own.len() == REMEMBERED {
            own.pop_front();
        }
        own.push_back(pid);
    }
}

/// Remembers the calling thread.
pub fn remember_this_thread() {
    // SAFETY: gettid has no preconditions.
    remember(unsafe { libc::gettid() } as u32);
}

/// Whether `pid` is kproxy, one of its live threads, or one it remembers.
pub fn is_own(pid: u32) -> bool {
    pid == std::process::id()
        || std::path::Path::new(&format!("/proc/self/task/{pid}")).exists()
        || OWN.lock().map(|o| o.contains(&pid)).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_pid_is_own_until_sixty_four_later_ones_push_it_out() {
        let first = u32::MAX - 1000;
        remember(first);
        assert!(is_own(first));
        for p in 0..REMEMBERED as u32 {
            remember(u32::MAX - 2000 - p);
        }
        assert!(!is_own(first));
    }

    #[test]
    fn this_process_and_its_threads_are_own() {
        assert!(is_own(std::process::id()));
        let tid = std::thread::spawn(|| unsafe { libc::gettid() } as u32)
            .join()
            .unwrap();
        remember(tid);
        assert!(is_own(tid), "remembered after the thread ended");
    }
}
