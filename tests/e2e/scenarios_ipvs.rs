//! Scenarios only IPVS mode has: ClientIP affinity as IPVS persistence (per virtual server, with
//! the Service's timeout), the weight-0 drain of a removed endpoint that still has a
//! connection, and service addresses on the dummy interface `kproxy-ipvs0`.
//!
//! Invariants: the kernel's IPVS state is read with `ipvsadm -Ln` inside the node namespace;
//! every wait polls with a deadline and prints what it measured; the long-lived connection of
//! the drain scenario is held by a small echo server the scenario starts in each pod (the
//! suite's `server.py` closes every connection at once).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::client::{Proto::*, WAIT, at, poll};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc};
use crate::scenarios_policy::{first_answer, one_server};
use crate::topology::{A, ALT, B, C, Client, HTTP, Host, Node};

/// `ipvsadm -Ln` in the node namespace.
fn ipvsadm(c: &Cluster) -> String {
    c.topo.node.exec("ipvsadm", &["-Ln"])
}

/// The lines of virtual server `vip` (its header, then one line per destination).
fn server_lines(c: &Cluster, proto: &str, vip: &str) -> Vec<String> {
    let text = ipvsadm(c);
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with("  ") {
            inside = line.starts_with(proto) && line.split_whitespace().nth(1) == Some(vip);
        }
        if inside {
            out.push(line.to_string());
        }
    }
    out
}

/// (weight, active, inactive) of destination `rip` of `vip`, if listed.
fn destination(c: &Cluster, vip: &str, rip: &str) -> Option<(u32, u32, u32)> {
    server_lines(c, "TCP", vip).iter().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() < 6 || w[0] != "->" || w[1] != rip {
            return None;
        }
        Some((w[3].parse().ok()?, w[4].parse().ok()?, w[5].parse().ok()?))
    })
}

pub fn client_ip_affinity_is_persistence_per_port_with_the_services_timeout(c: &mut Cluster) {
    let svc = |timeout| {
        Svc::new("sticky", "10.96.0.90")
            .tcp("http", 80, HTTP)
            .tcp("alt", 81, ALT)
            .client_ip_affinity_for(timeout)
    };
    let slice = || {
        Slice::v4("sticky")
            .tcp("http", HTTP)
            .tcp("alt", ALT)
            .ready(&[A, B, C])
    };
    c.apply("sticky", vec![svc(600).into(), slice().into()]);
    for port in [80, 81] {
        let vip = at("10.96.0.90", port);
        let (first, took) = first_answer(c, Client, vip, "sticky to answer the client pod");
        println!("service written -> port {port} traffic: {took:?} (first answer from {first})");
        let r = c.tcp_n(Client, vip, 20);
        assert_eq!(one_server(&r).unwrap(), first, "port {port} sticks");
        let header = &server_lines(c, "TCP", &vip.to_string())[0];
        assert!(header.ends_with("rr persistent 600"), "{header}");
    }
    // A new timeout reaches the virtual servers in place.
    c.apply("sticky", vec![svc(60).into(), slice().into()]);
    let ((), took) = poll("the virtual servers to carry the new timeout", WAIT, || {
        let headers: Vec<String> = [80, 81]
            .iter()
            .map(|p| server_lines(c, "TCP", &format!("10.96.0.90:{p}"))[0].clone())
            .collect();
        if headers.iter().all(|h| h.ends_with("rr persistent 60")) {
            Ok(())
        } else {
            Err(format!("{headers:?}"))
        }
    });
    println!("timeout changed -> persistence updated: {took:?}");
}

/// The port of the scenario's echo servers.
const ECHO: u16 = 9000;
const ECHO_SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 9000))
s.listen(64)
def serve(c):
    try:
        c.sendall((name + "\n").encode())
        while True:
            data = c.recv(100)
            if not data:
                break
            c.sendall(data)
    except OSError:
        pass
    c.close()
def accept():
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

/// An echo server in `host`'s namespace, killed on drop.
struct Echo(Child);

impl Echo {
    fn start(c: &Cluster, host: Host) -> Echo {
        let mut child = c
            .topo
            .ns(host)
            .cmd("python3")
            .args(["-c", ECHO_SERVER, host.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the echo server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("echo server output");
        assert_eq!(line.trim(), "ready", "echo server in {}", host.name());
        Echo(child)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A connection from the client pod to `to`, and the name of the pod that answered.
fn connect(c: &Cluster, to: SocketAddr) -> (TcpStream, String) {
    c.topo.ns(Client).run(move || {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(1)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut name = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut name)
            .expect("banner");
        (s, name.trim().to_string())
    })
}

pub fn a_removed_endpoint_drains_at_weight_zero_and_keeps_its_connections(c: &mut Cluster) {
    let _echo = [Echo::start(c, A), Echo::start(c, B)];
    let slice = |hosts: &[Host]| Slice::v4("drain").tcp("echo", ECHO).ready(hosts);
    let svc = || Svc::new("drain", "10.96.0.95").tcp("echo", 80, ECHO);
    c.apply("drain", vec![svc().into(), slice(&[A, B]).into()]);
    let vip = at("10.96.0.95", 80);
    let ((), took) = poll("both endpoints in IPVS", WAIT, || {
        let lines = server_lines(c, "TCP", "10.96.0.95:80");
        if lines.len() == 3 {
            Ok(())
        } else {
            Err(format!("{lines:?}"))
        }
    });
    println!("service written -> virtual server with two destinations: {took:?}");
    let (mut held, pod) = connect(c, vip);
    let (gone, stays) = if pod == A.name() { (A, B) } else { (B, A) };
    let gone_rip = format!("{}:{ECHO}", gone.v4());

    c.apply("drain", vec![svc().into(), slice(&[stays]).into()]);
    let (state, took) = poll(
        "the removed endpoint to drain at weight 0",
        WAIT,
        || match destination(c, "10.96.0.95:80", &gone_rip) {
            Some(s @ (0, 1, _)) => Ok(s),
            other => Err(format!("{other:?}")),
        },
    );
    println!("endpoint removed -> weight 0 with its connection still counted: {took:?} {state:?}");
    // New connections avoid it; the held one still works.
    for _ in 0..20 {
        let (_, p) = connect(c, vip);
        assert_eq!(
            p,
            stays.name(),
            "a new connection went to the draining endpoint"
        );
    }
    held.write_all(b"ping\n").unwrap();
    let mut echo = [0u8; 5];
    held.read_exact(&mut echo).unwrap();
    assert_eq!(
        &echo, b"ping\n",
        "the held connection keeps working while draining"
    );

    // Closed with a reset (IPVS keeps a closed connection 10 s), the endpoint is deleted once
    // IPVS counts nothing on it.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let rc = unsafe {
        libc::setsockopt(
            held.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(held);
    let closed = Instant::now();
    let ((), _) = poll(
        "the drained endpoint to be deleted",
        Duration::from_secs(90),
        || match destination(c, "10.96.0.95:80", &gone_rip) {
            None => Ok(()),
            Some(s) => Err(format!("still listed: {s:?}")),
        },
    );
    println!(
        "connection closed -> drained endpoint deleted: {:?}",
        closed.elapsed()
    );
    let lines = server_lines(c, "TCP", "10.96.0.95:80");
    assert_eq!(lines.len(), 2, "{lines:?}");
}

fn bound(c: &Cluster) -> String {
    c.topo
        .node
        .exec("ip", &["-o", "addr", "show", "dev", "kproxy-ipvs0"])
}

pub fn service_addresses_are_bound_to_the_dummy_interface_while_used(c: &mut Cluster) {
    let svc = Svc::new("bound", "10.96.0.96")
        .tcp("http", 80, HTTP)
        .external_ips(&["198.51.100.96"]);
    let slice = Slice::v4("bound").tcp("http", HTTP).ready(&[A]);
    c.apply("bound", vec![svc.into(), slice.into()]);
    let took = c.until_served(Client, Tcp, at("198.51.100.96", 80), &[A]);
    println!("service written -> externalIP traffic: {took:?}");
    let text = bound(c);
    for a in ["10.96.0.96/32", "198.51.100.96/32"] {
        assert!(text.contains(a), "{a} not bound:\n{text}");
    }
    // The node's own addresses are not service addresses: no NodePort-style servers on them.
    assert!(!ipvsadm(c).contains(&format!("{}:80 ", Node.v4())));
    c.delete("bound");
    let ((), took) = poll("the addresses and servers to go", WAIT, || {
        let (text, servers) = (bound(c), ipvsadm(c));
        if text.contains("10.96.0.96") || text.contains("198.51.100.96") {
            Err(format!("still bound:\n{text}"))
        } else if servers.contains("10.96.0.96:80") {
            Err(format!("still served:\n{servers}"))
        } else {
            Ok(())
        }
    });
    println!("service deleted -> addresses unbound, servers gone: {took:?}");
}
