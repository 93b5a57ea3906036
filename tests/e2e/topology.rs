//! The e2e topology: a `node` network namespace (where kproxy runs), pods `pod-a`, `pod-b`,
//! `pod-c` and a `client` pod, each joined to the node by a veth pair, and an external host `ext`
//! on the node's InternalIP network; a test server (`server.py`) in each pod and on `ext`.
//!
//! Invariants: pod i has 10.244.i.2/24 and fd00:244:i::2/64, the node 10.244.i.1 and
//! fd00:244:i::1 on its side; `ext` is 192.168.50.2 / fd00:50::2, the node 192.168.50.1 /
//! fd00:50::1; every namespace routes by default through the node. The node routes the Service
//! ranges (10.96.0.0/12, fd00:96::/64) to `ext`, which takes every address in them as its own
//! (a `local` route): traffic to a Service address that kproxy does not DNAT is answered by
//! `ext` at once ("ext" on the servers' ports, a refusal on others), never by a pod and never
//! after a timeout. The externalIP and LB ranges the scenarios use (198.51.100.0/24,
//! 203.0.113.0/24) are "prohibit" routes on the node, so they too fail fast until kproxy DNATs.
//! Nothing leaves these namespaces. Servers are killed and namespaces deleted on drop (also
//! when the test panics); IPv6 needs neither DAD (`nodad`) nor neighbour discovery (permanent
//! entries), so nothing waits for either.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::netns::Netns;

/// The test server each pod and `ext` runs.
const SERVER: &str = include_str!("server.py");
/// TCP ports every server answers on.
pub const HTTP: u16 = 8080;
pub const ALT: u16 = 8081;
/// The UDP port every server answers on.
pub const DNS: u16 = 5353;

/// The machines of the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    Node,
    A,
    B,
    C,
    Client,
    Ext,
}

pub use Host::{A, B, C, Client, Ext, Node};

impl Host {
    /// The name its server answers with (and its namespace's role).
    pub fn name(self) -> &'static str {
        match self {
            Node => "node",
            A => "pod-a",
            B => "pod-b",
            C => "pod-c",
            Client => "client",
            Ext => "ext",
        }
    }

    /// The host whose server answers as `name`.
    pub fn named(name: &str) -> Option<Host> {
        [Node, A, B, C, Client, Ext]
            .into_iter()
            .find(|h| h.name() == name)
    }

    /// The third octet of a pod's network (10.244.i.0/24); `None` for the node and `ext`.
    fn net(self) -> Option<u8> {
        match self {
            A => Some(1),
            B => Some(2),
            C => Some(3),
            Client => Some(9),
            Node | Ext => None,
        }
    }

    /// Its IPv4 address (the node's: its InternalIP).
    pub fn v4(self) -> String {
        match (self, self.net()) {
            (Node, _) => "192.168.50.1".into(),
            (Ext, _) => "192.168.50.2".into(),
            (_, Some(i)) => format!("10.244.{i}.2"),
            (_, None) => unreachable!(),
        }
    }

    /// Its IPv6 address (the node's: its InternalIP).
    pub fn v6(self) -> String {
        match (self, self.net()) {
            (Node, _) => "fd00:50::1".into(),
            (Ext, _) => "fd00:50::2".into(),
            (_, Some(i)) => format!("fd00:244:{i}::2"),
            (_, None) => unreachable!(),
        }
    }

    /// The node's IPv4 address on this pod's link: what a masqueraded packet to the pod carries.
    pub fn gateway_v4(self) -> String {
        format!("10.244.{}.1", self.net().expect("a pod"))
    }

    /// The node an endpoint on this pod is reported on: pod-c counts as on node2 (for Local
    /// policies) although it is wired to this node like the others.
    pub fn node_name(self) -> &'static str {
        match self {
            C => "node2",
            _ => "node1",
        }
    }
}

/// Server processes, killed on drop.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The namespaces and servers; field order is drop order (servers go first).
pub struct Topology {
    _servers: Servers,
    pub node: Netns,
    pods: Vec<(Host, Netns)>,
    pub ext: Netns,
}

impl Topology {
    /// Builds the whole topology and waits until every server is ready.
    pub fn build() -> Topology {
        let node = Netns::new("node");
        let pods: Vec<(Host, Netns)> = [A, B, C, Client]
            .into_iter()
            .map(|h| (h, Netns::new(h.name())))
            .collect();
        let ext = Netns::new("ext");

        // Node side first (each veth is created straight into its peer namespace), then each
        // end host, then the node's routes, which need the links' carriers.
        let mut ends: Vec<(&Netns, Link)> = pods
            .iter()
            .map(|(host, ns)| {
                let i = host.net().expect("a pod");
                let link = Link {
                    index: i,
                    node_dev: format!("vp{i}"),
                    node: (host.gateway_v4(), format!("fd00:244:{i}::1")),
                    host: (host.v4(), host.v6()),
                };
                (ns, link)
            })
            .collect();
        let ext_link = Link {
            index: 50,
            node_dev: "vext".into(),
            node: (Node.v4(), Node.v6()),
            host: (Ext.v4(), Ext.v6()),
        };
        ends.push((&ext, ext_link));
        let node_side: String = ends.iter().map(|(ns, l)| l.node_side(&ns.name)).collect();
        batch(&node, &node_side);
        for (ns, link) in &ends {
            batch(ns, &link.host_side());
        }
        // ext owns the Service ranges (see the module invariants).
        batch(
            &ext,
            "route add local 10.96.0.0/12 dev lo\nroute add local fd00:96::/64 dev lo\n",
        );
        // The node sends the Service ranges to ext, and refuses at once (ICMP "administratively
        // prohibited", fatal to a TCP connect) to forward to the externalIP and LB ranges the
        // scenarios use, so that traffic to one kproxy does not handle yet fails fast.
        batch(
            &node,
            &format!(
                "route add 10.96.0.0/12 via {}\n\
                 route add fd00:96::/64 via {}\n\
                 route add prohibit 198.51.100.0/24\n\
                 route add prohibit 203.0.113.0/24\n",
                Ext.v4(),
                Ext.v6()
            ),
        );
        node.exec(
            "sysctl",
            &[
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        );

        let mut servers = Servers(Vec::new());
        let mut waiting = Vec::new();
        let serving = pods
            .iter()
            .filter(|(h, _)| *h != Client)
            .map(|(h, ns)| (*h, ns))
            .chain([(Ext, &ext)]);
        for (host, ns) in serving {
            let (child, ready) = spawn_server(ns, host.name());
            servers.0.push(child);
            waiting.push((host, ready));
        }
        for (host, ready) in waiting {
            wait_ready(host.name(), &ready);
        }
        Topology {
            _servers: servers,
            node,
            pods,
            ext,
        }
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: Host) -> &Netns {
        match host {
            Node => &self.node,
            Ext => &self.ext,
            pod => {
                &self
                    .pods
                    .iter()
                    .find(|(h, _)| *h == pod)
                    .expect("every pod has a namespace")
                    .1
            }
        }
    }
}

/// A veth between the node and an end host (a pod or ext): device `node_dev` on the node,
/// `eth0` on the host, fixed MAC addresses, and (v4, v6) addresses on each side.
struct Link {
    /// Distinguishes the MAC addresses: 02:00:00:00:<index>:01 (node), …:02 (host).
    index: u8,
    node_dev: String,
    node: (String, String),
    host: (String, String),
}

impl Link {
    fn mac(&self, side: u8) -> String {
        format!("02:00:00:00:{:02x}:{side:02x}", self.index)
    }

    /// `ip -batch` lines for the node: the veth (its peer made in `peer_ns`), the node's
    /// addresses, and a permanent IPv6 neighbour entry for the host. Permanent entries because
    /// neighbour discovery right after a link comes up loses the first packets (the peer has not
    /// joined its solicited-node group yet), which costs a TCP client a 1 s retransmission.
    fn node_side(&self, peer_ns: &str) -> String {
        let (dev, (v4, v6), (_, host6)) = (&self.node_dev, &self.node, &self.host);
        format!(
            "link add {dev} address {mac} type veth peer name eth0 address {peer_mac} \
             netns {peer_ns}\n\
             addr add {v4}/24 dev {dev}\n\
             addr add {v6}/64 dev {dev} nodad\n\
             link set {dev} up\n\
             neigh add {host6} lladdr {peer_mac} dev {dev} nud permanent\n",
            mac = self.mac(1),
            peer_mac = self.mac(2),
        )
    }

    /// `ip -batch` lines for the host: addresses, default routes via the node, and a permanent
    /// IPv6 neighbour entry for the node.
    fn host_side(&self) -> String {
        let ((v4, v6), (gw4, gw6)) = (&self.host, &self.node);
        format!(
            "addr add {v4}/24 dev eth0\n\
             addr add {v6}/64 dev eth0 nodad\n\
             link set eth0 up\n\
             neigh add {gw6} lladdr {mac} dev eth0 nud permanent\n\
             route add default via {gw4}\n\
             route add default via {gw6}\n",
            mac = self.mac(1),
        )
    }
}

/// Runs an `ip -batch` script inside `ns`; panics with ip's stderr on failure.
fn batch(ns: &Netns, script: &str) {
    let mut child = Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write ip script");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(
        out.status.success(),
        "ip -n {} -batch:\n{script}\n{}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `server.py` in `ns`, answering as `name`; the caller waits for its "ready" line on the
/// returned channel.
fn spawn_server(ns: &Netns, name: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = ns
        .cmd("python3")
        .args(["-c", SERVER, name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3 server");
    let stdout = child.stdout.take().expect("server stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    (child, rx)
}

/// Waits (up to 10 s) for a server's "ready" line.
fn wait_ready(name: &str, rx: &mpsc::Receiver<String>) {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.trim() == "ready" => {}
        Ok(line) => panic!("server {name} said {line:?} instead of ready"),
        Err(e) => panic!("server {name} not ready within 10 s: {e}"),
    }
}
