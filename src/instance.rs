//! One kproxy per network namespace: the daemon holds the abstract Unix socket `@kproxy`.
//! Abstract names belong to the network namespace and vanish with the process, so a crash never
//! leaves a stale lock. A second instance learns the holder's pid from the socket (`SO_PEERCRED`)
//! and exits before it touches the kernel or binds a port.
//!
//! Invariants: only the daemon takes the lock (not `--dry-run`, `--cleanup`,
//! `--cleanup-kube-proxy`, which may run beside it), before its first kernel write or bind; the
//! lock is held until the daemon returns. A thread of its own accepts connections to the socket
//! and closes them at once, so a second instance's connect never waits on a full backlog.

use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

/// The lock's abstract socket name.
pub const NAME: &str = "kproxy";

/// Why kproxy could not take its lock; each variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another kproxy (pid {0}) is running in this network namespace: stop it first, or run this one in another namespace"
    )]
    Held(i32),
    #[error(
        "another process holds kproxy's lock (abstract Unix socket @{NAME}) in this network namespace: stop it first"
    )]
    HeldByUnknown,
    #[error("taking kproxy's lock (abstract Unix socket @{NAME}): {0}")]
    Socket(std::io::Error),
}

/// The lock, held while this value lives.
pub struct Lock {
    _listener: UnixListener,
}

/// Takes the lock of this network namespace, or says who holds it.
pub fn take() -> Result<Lock, LockError> {
    let addr = SocketAddr::from_abstract_name(NAME).map_err(LockError::Socket)?;
    let listener = match UnixListener::bind_addr(&addr) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(holder(&addr)),
        Err(e) => return Err(LockError::Socket(e)),
    };
    let acceptor = listener.try_clone().map_err(LockError::Socket)?;
    std::thread::Builder::new()
        .name("kproxy-lock".into())
        .spawn(move || {
            for stream in acceptor.incoming() {
                drop(stream);
            }
        })
        .map_err(LockError::Socket)?;
    Ok(Lock {
        _listener: listener,
    })
}

/// Who holds the lock: the pid of the process that listens on it, when the kernel says.
fn holder(addr: &SocketAddr) -> LockError {
    UnixStream::connect_addr(addr)
        .ok()
        .and_then(|s| peer_pid(&s))
        .map_or(LockError::HeldByUnknown, LockError::Held)
}

/// The pid of the peer of a connected Unix socket (`SO_PEERCRED`; 0 or absent when it lives
/// in a pid namespace this one cannot see).
fn peer_pid(stream: &UnixStream) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket, with a buffer of the size it is told.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_pid(&a), Some(std::process::id() as i32));
    }
}
