//! Localhost NodePorts in nftables mode (KEP-6032, upstream 1.37): with `localhost` among the
//! `--nodeport-addresses`, a userspace TCP relay listens on 127.0.0.1 and ::1 at every TCP
//! NodePort and forwards each connection to one of the port's endpoints. nftables cannot DNAT
//! a loopback source to a pod (the kernel drops such packets as martians without
//! route_localnet, which exists for IPv4 only), so upstream chose a relay too.
//!
//! Invariants: the relay follows the plans, never decides policy: a listener's endpoints are
//! its family plan's external targets (externalTrafficPolicy Local: the local ones), and a port
//! whose external traffic is rejected or dropped has no listener (connections are refused, as
//! upstream). ClientIP affinity pins every connection through a listener to one endpoint for
//! the timeout (all clients are the node itself). Only TCP. Updates never block on I/O but
//! binding; a port that cannot be bound (something else listens there) is one warning and is
//! tried again by the next sync that touches the port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backends::Plans;
use crate::model::plan::Targets;
use crate::model::{IpFamily, Protocol, ServicePortName};

/// How long a connection to an endpoint may take before the client's connection is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one listener forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    owner: ServicePortName,
    endpoints: Vec<SocketAddr>,
    affinity: Option<Duration>,
}

/// The endpoints a listener picks from, shared with its connections.
#[derive(Debug)]
struct Pool {
    endpoints: Vec<SocketAddr>,
    affinity: Option<Duration>,
    /// ClientIP affinity: the endpoint in use and when it was last used.
    pinned: Option<(SocketAddr, Instant)>,
    next: usize,
}

impl Pool {
    fn pick(&mut self) -> Option<SocketAddr> {
        let now = Instant::now();
        if let (Some(timeout), Some((ep, used))) = (self.affinity, self.pinned)
            && now.duration_since(used) < timeout
            && self.endpoints.contains(&ep)
        {
            self.pinned = Some((ep, now));
            return Some(ep);
        }
        if self.endpoints.is_empty() {
            return None;
        }
        // Round robin: every client is the node itself, so nothing to hash on.
        let ep = self.endpoints[self.next % self.endpoints.len()];
        self.next = self.next.wrapping_add(1);
        self.pinned = self.affinity.map(|_| (ep, now));
        Some(ep)
    }
}

struct Listener {
    wanted: Wanted,
    pool: Arc<Mutex<Pool>>,
    /// The listening socket (a duplicate descriptor): shut down when the listener goes, so the
    /// port refuses at once rather than when the runtime drops the aborted task.
    socket: OwnedFd,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on a descriptor this struct owns; Linux stops a listening
        // socket at once (inet_shutdown disconnects it), refusing new connections.
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD);
        }
        self.task.abort();
    }
}

/// The relay's listeners, by loopback address and NodePort.
#[derive(Default)]
pub struct LocalhostRelay {
    listeners: BTreeMap<SocketAddr, Listener>,
    /// Addresses a bind failed on, warned about once until they bind.
    refused: BTreeSet<SocketAddr>,
}

/// The loopback address of `family`.
fn loopback(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Every listener the plans of `names` want: (loopback, NodePort) -> what it forwards to.
fn wanted<'a>(
    plans: &Plans,
    names: impl Iterator<Item = &'a ServicePortName>,
) -> BTreeMap<SocketAddr, Wanted> {
    let mut out = BTreeMap::new();
    for name in names {
        let Some(planned) = plans.get(name) else {
            continue;
        };
        if name.protocol != Protocol::Tcp {
            continue;
        }
        for fp in &planned.plan.families {
            let (Some(np), Some(Targets::Endpoints(eps))) = (fp.node_port, &fp.external) else {
                continue;
            };
            let endpoints: Vec<SocketAddr> = eps
                .iter()
                .filter(|e| IpFamily::of(&e.ip) == fp.family)
                .map(|e| SocketAddr::new(e.ip, e.port))
                .collect();
            if endpoints.is_empty() {
                continue;
            }
            let affinity = planned
                .port
                .affinity_timeout_seconds
                .map(|s| Duration::from_secs(s.into()));
            let wanted = Wanted {
                owner: name.clone(),
                endpoints,
                affinity,
            };
            out.insert(SocketAddr::new(loopback(fp.family), np), wanted);
        }
    }
    out
}

impl LocalhostRelay {
    /// Follows the plans of `changed` (every port when `None`): listeners start, change their
    /// endpoints, or stop. Must run inside the Tokio runtime.
    pub fn update(&mut self, plans: &Plans, changed: Option<&BTreeSet<ServicePortName>>) {
        let want = match changed {
            Some(names) => wanted(plans, names.iter()),
            None => wanted(plans, plans.keys()),
        };
        // Listeners of the ports in scope that no longer want their address stop first: another
        // port may take it over in this update.
        self.listeners.retain(|addr, l| {
            let in_scope = changed.is_none_or(|c| c.contains(&l.wanted.owner));
            !in_scope || want.get(addr).is_some_and(|w| w.owner == l.wanted.owner)
        });
        for (addr, w) in want {
            if let Some(l) = self.listeners.get_mut(&addr) {
                if l.wanted != w {
                    let mut pool = l.pool.lock().expect("relay pool lock");
                    pool.endpoints = w.endpoints.clone();
                    pool.affinity = w.affinity;
                    l.wanted = w;
                }
                continue;
            }
            match self.start(addr, w) {
                Ok(l) => {
                    self.refused.remove(&addr);
                    tracing::debug!(%addr, port = %l.wanted.owner, "localhost NodePort relay listening");
                    self.listeners.insert(addr, l);
                }
                Err(e) => {
                    if self.refused.insert(addr) {
                        tracing::warn!(%addr, error = %e, "cannot listen for a localhost NodePort; it is not served on loopback until a later sync binds it");
                    }
                }
            }
        }
    }

    /// The addresses listened on, for tests and /debug/state.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners.keys().copied().collect()
    }

    fn start(&self, addr: SocketAddr, wanted: Wanted) -> std::io::Result<Listener> {
        let std = std::net::TcpListener::bind(addr)?;
        std.set_nonblocking(true)?;
        let socket = std.as_fd().try_clone_to_owned()?;
        let listener = tokio::net::TcpListener::from_std(std)?;
        let pool = Arc::new(Mutex::new(Pool {
            endpoints: wanted.endpoints.clone(),
            affinity: wanted.affinity,
            pinned: None,
            next: addr.port() as usize,
        }));
        let task = tokio::spawn(accept(listener, pool.clone()));
        Ok(Listener {
            wanted,
            pool,
            socket,
            task,
        })
    }
}

async fn accept(listener: tokio::net::TcpListener, pool: Arc<Mutex<Pool>>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Shut down (`Listener::drop`): done.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(_) => {
                // Out of descriptors, say: try again shortly rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let endpoint = pool.lock().expect("relay pool lock").pick();
        if let Some(endpoint) = endpoint {
            tokio::spawn(forward(client, endpoint));
        }
    }
}

async fn forward(mut client: tokio::net::TcpStream, endpoint: SocketAddr) {
    let connect = tokio::net::TcpStream::connect(endpoint);
    let Ok(Ok(mut upstream)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await else {
        tracing::debug!(%endpoint, "localhost NodePort relay: the endpoint did not answer");
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests;
