//! Entering a named network namespace (`ip netns add NAME`, i.e. `/var/run/netns/NAME`) on one
//! thread: used by the test transport, the tests and the benches to work inside a throwaway
//! namespace without `ip netns exec`.
//!
//! Invariants: only the calling thread (or the helper thread of `run_in`) moves; sockets it
//! creates there stay in that namespace, and processes it spawns start there.

use std::os::fd::AsRawFd;

/// Moves the current thread into the named namespace (and remembers it as kproxy's own: its
/// nf_tables commits are kproxy's, `crate::own`).
pub fn enter(name: &str) -> std::io::Result<()> {
    crate::own::remember_this_thread();
    let file = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: setns with a valid namespace fd; it changes only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside the named namespace and returns its result; a panic in `f`
/// is resumed in the caller.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || enter(&name).map(|()| f()))
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}
