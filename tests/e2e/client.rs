//! Clients for the e2e suite, plain std sockets run inside a namespace (`Netns::run`): one TCP
//! connection or one UDP query, its outcome, and checks over many outcomes; plus polling with a
//! deadline.
//!
//! Invariants: an outcome is `Ok((server, client address the server saw))` or `Err(kind)` with
//! kind `refused` (ECONNREFUSED: TCP RST or ICMP port unreachable), `timeout` (nothing came
//! back), `unreachable`, `reset`, or the OS error text; every socket has a timeout, so no client
//! blocks for longer than it; UDP uses a fresh socket (a fresh source port, hence a fresh
//! conntrack entry) per query. `poll` sleeps only between attempts, never to synchronise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::topology::Host;

/// What one connection or query got: (server name, client address it saw), or the error kind.
pub type Outcome = Result<(String, String), String>;

/// How long a client waits for an answer it expects.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client waits when a drop (no answer at all) is what it checks for.
pub const DROP_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a TCP handshake or a UDP answer may take while polling for a change: short, so a
/// change shows with little delay; a late answer only means one more poll.
pub const POLL_TIMEOUT: Duration = Duration::from_millis(150);
/// How long `poll` waits for a change to show.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// `ip:port` (IPv6 without brackets).
pub fn at(ip: &str, port: u16) -> SocketAddr {
    let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("bad IP {ip:?}: {e}"));
    SocketAddr::new(ip, port)
}

/// One attempt of `proto` to `to`, from the calling thread's namespace: `timeout` bounds the
/// TCP handshake (done by the kernels alone) or the UDP answer; a TCP server gets at least
/// `TIMEOUT` to send its answer once connected.
pub fn once(proto: Proto, to: SocketAddr, timeout: Duration) -> Outcome {
    match proto {
        Proto::Tcp => tcp(to, timeout),
        Proto::Udp => udp(to, timeout),
    }
}

fn tcp(to: SocketAddr, timeout: Duration) -> Outcome {
    let mut s = TcpStream::connect_timeout(&to, timeout).map_err(kind)?;
    s.set_read_timeout(Some(timeout.max(TIMEOUT)))
        .map_err(kind)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(kind)?;
    parse(&reply)
}

fn udp(to: SocketAddr, timeout: Duration) -> Outcome {
    udp_from(0, to, timeout)
}

/// One UDP query to `to` from local port `src_port` (0: a fresh one). The same `src_port` again
/// is the same conntrack flow, as a DNS client with a fixed source port keeps.
pub fn udp_from(src_port: u16, to: SocketAddr, timeout: Duration) -> Outcome {
    let any: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let s = UdpSocket::bind((any, src_port)).map_err(kind)?;
    s.set_read_timeout(Some(timeout)).map_err(kind)?;
    s.connect(to).map_err(kind)?;
    // A reject in the output path fails the send itself (EPERM) and queues the ICMP error for
    // the next receive: that receive says what happened.
    if let Err(e) = s.send(b"q")
        && e.kind() != ErrorKind::PermissionDenied
    {
        return Err(kind(e));
    }
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).map_err(kind)?;
    parse(&String::from_utf8_lossy(&buf[..n]))
}

fn parse(reply: &str) -> Outcome {
    match reply.split_once(' ') {
        Some((server, seen)) => Ok((server.to_string(), seen.trim().to_string())),
        None => Err(format!("malformed reply {reply:?}")),
    }
}

fn kind(e: std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout".into(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => "unreachable".into(),
        ErrorKind::ConnectionReset => "reset".into(),
        _ => e.to_string(),
    }
}

/// Outcomes counted by server name, or `err:<kind>`.
pub fn tally(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        let key = match o {
            Ok((server, _)) => server.clone(),
            Err(e) => format!("err:{e}"),
        };
        *t.entry(key).or_default() += 1;
    }
    t
}

/// `Ok` when every attempt was answered and the servers that answered are exactly `hosts`.
pub fn served_by(outcomes: &[Outcome], hosts: &[Host]) -> Result<(), String> {
    let want: BTreeSet<&str> = hosts.iter().map(|h| h.name()).collect();
    let t = tally(outcomes);
    let got: BTreeSet<&str> = t.keys().map(String::as_str).collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("answers {t:?}, want exactly {want:?}"))
    }
}

/// `Ok` when every attempt failed with `kind`.
pub fn all_failed(outcomes: &[Outcome], kind: &str) -> Result<(), String> {
    if !outcomes.is_empty()
        && outcomes
            .iter()
            .all(|o| o.as_ref().err().map(String::as_str) == Some(kind))
    {
        Ok(())
    } else {
        Err(format!(
            "answers {:?}, want every one err:{kind}",
            tally(outcomes)
        ))
    }
}

/// The client addresses the servers saw, deduplicated.
pub fn seen(outcomes: &[Outcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().map(|(_, s)| s.clone()))
        .collect()
}

/// Calls `probe` every 20 ms until it returns `Ok`, or panics after `timeout` with what it last
/// returned. Returns the value and how long it took.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Ok(v) => return (v, start.elapsed()),
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `Ok` when every answering pod saw the node's own address on that pod's link (the packet was
/// masqueraded by the node), e.g. 10.244.1.1 for pod-a.
pub fn masqueraded(outcomes: &[Outcome]) -> Result<(), String> {
    for o in outcomes.iter().flatten() {
        let (server, seen) = o;
        let pod = Host::named(server).ok_or_else(|| format!("unknown server {server}"))?;
        if *seen != pod.gateway_v4() {
            return Err(format!(
                "{server} saw {seen}, want the node's {}",
                pod.gateway_v4()
            ));
        }
    }
    Ok(())
}
