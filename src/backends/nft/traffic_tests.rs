//! Live traffic through the nftables ruleset, root only: a "node" network namespace, two pod
//! namespaces serving TCP and UDP (each replies with its own name), and a client pod, all joined
//! to the node by veth pairs. `NftBackend` with `NftCli` in the node namespace syncs real plans;
//! clients in the node and in the client pod then reach the ClusterIP.
//!
//! Invariants: traffic goes only to addresses inside namespaces this test created; every
//! namespace and server process is removed on drop, also on failure; names carry the pid; without
//! root or without nft / ip / python3 the test skips, and under CI=true a skip is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::backend::NftBackend;
use super::transport_tests::Netns;
use crate::backends::{Backend, BackendConfig, Plans};
use crate::model::{Protocol, ServicePort};
use crate::nftables::transport::NftCli;
use crate::testing::{add, ep, ip, name, node_with_pods};

const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1].encode()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080))
t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 5353))
def udp():
    while True:
        d, a = u.recvfrom(100)
        u.sendto(name, a)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept()
    c.sendall(name)
    c.close()
"#;

/// Prints one line per attempt: `ok NAME SECONDS` or `err EXCEPTION SECONDS`.
const CLIENT: &str = r#"
import socket, sys, time
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    t0 = time.monotonic()
    try:
        if mode == "tcp":
            s = socket.create_connection((host, port), timeout=1)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            s.connect((host, port))
            s.send(b"q")
        r = s.recv(100).decode()
        s.close()
        print("ok", r, time.monotonic() - t0, flush=True)
    except Exception as e:
        print("err", type(e).__name__, time.monotonic() - t0, flush=True)
"#;

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

fn tools_present() -> bool {
    [["nft", "--version"], ["ip", "-V"], ["python3", "--version"]]
        .iter()
        .all(|[p, a]| {
            Command::new(p)
                .arg(a)
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Runs `ip ARGS…` and panics with its stderr on failure.
fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Joins `pod` to `node` with a veth pair: `<dev>` in the node at 10.244.<net>.1/24, `eth0` in
/// the pod at 10.244.<net>.2/24 with the node as default route.
fn wire(node: &Netns, pod: &Netns, dev: &str, net: u8) {
    let (n, p) = (node.name.as_str(), pod.name.as_str());
    ip_cmd(&[
        "-n", n, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", p,
    ]);
    ip_cmd(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("10.244.{net}.1/24"),
        "dev",
        dev,
    ]);
    ip_cmd(&["-n", n, "link", "set", dev, "up"]);
    ip_cmd(&[
        "-n",
        p,
        "addr",
        "add",
        &format!("10.244.{net}.2/24"),
        "dev",
        "eth0",
    ]);
    ip_cmd(&["-n", p, "link", "set", "eth0", "up"]);
    ip_cmd(&["-n", p, "link", "set", "lo", "up"]);
    ip_cmd(&[
        "-n",
        p,
        "route",
        "add",
        "default",
        "via",
        &format!("10.244.{net}.1"),
    ]);
}

fn serve(servers: &mut Servers, pod: &Netns, reply: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &pod.name, "python3", "-c", SERVER, reply])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().unwrap();
    servers.0.push(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "server in {} did not start", pod.name);
}

/// Outcome lines of `n` attempts from inside `ns`: (ok, reply or exception, seconds).
fn client(ns: &Netns, mode: &str, host: &str, port: u16, n: usize) -> Vec<(bool, String, f64)> {
    let out = ns.run(&[
        "python3",
        "-c",
        CLIENT,
        mode,
        host,
        &port.to_string(),
        &n.to_string(),
    ]);
    let lines: Vec<_> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0] == "ok", f[1].to_string(), f[2].parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), n, "client output: {out}");
    lines
}

fn tally(results: &[(bool, String, f64)]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for (ok, what, _) in results {
        let key = if *ok {
            what.clone()
        } else {
            format!("err:{what}")
        };
        *t.entry(key).or_default() += 1;
    }
    t
}

/// web: 10.96.0.10 port 80/TCP → :8080 and 53/UDP → :5353 on both pods; empty: 10.96.0.20
/// port 80/TCP without endpoints (plan Reject).
fn plans(http_eps: &[&str]) -> Plans {
    let mut plans = Plans::new();
    let vip = ip("10.96.0.10");
    let eps = |port, addrs: &[&str]| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, a)| ep(a, port, if i == 0 { "node-a" } else { "node-b" }))
            .collect::<Vec<_>>()
    };
    add(
        &mut plans,
        ServicePort::cluster_ip(name("web", "http", Protocol::Tcp), vip, 80),
        eps(8080, http_eps),
    );
    add(
        &mut plans,
        ServicePort::cluster_ip(name("web", "dns", Protocol::Udp), vip, 53),
        eps(5353, &["10.244.1.2", "10.244.2.2"]),
    );
    add(
        &mut plans,
        ServicePort::cluster_ip(name("empty", "http", Protocol::Tcp), ip("10.96.0.20"), 80),
        vec![],
    );
    plans
}

fn check_refused(from: &str, results: &[(bool, String, f64)]) {
    eprintln!("{from}: no-endpoint Service: {results:?}");
    for (ok, what, secs) in results {
        assert!(
            !ok && what == "ConnectionRefusedError",
            "{from}: expected connection refused, got {what}"
        );
        assert!(*secs < 0.5, "{from}: refusal took {secs} s");
    }
}

#[test]
fn live_traffic_reaches_the_cluster_ip_endpoints() {
    if !tools_present() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but nft, ip or python3 is missing"
        );
        eprintln!("skipped: needs nft, ip and python3");
        return;
    }
    let Some(node_ns) = Netns::new() else { return };
    let (Some(pod_a), Some(pod_b), Some(pod_c)) = (Netns::new(), Netns::new(), Netns::new()) else {
        panic!("made the node namespace but not the pod namespaces");
    };
    let n = node_ns.name.as_str();
    wire(&node_ns, &pod_a, "vpa", 1);
    wire(&node_ns, &pod_b, "vpb", 2);
    wire(&node_ns, &pod_c, "vpc", 3);
    ip_cmd(&["-n", n, "link", "set", "lo", "up"]);
    // The node's own address and a route for the Service range, as a real node has (no dummy
    // devices here: the address sits on lo, the route points at any pod; DNAT reroutes).
    ip_cmd(&["-n", n, "addr", "add", "192.168.0.2/32", "dev", "lo"]);
    ip_cmd(&[
        "-n",
        n,
        "route",
        "add",
        "10.96.0.0/12",
        "via",
        "10.244.1.2",
        "src",
        "192.168.0.2",
    ]);
    node_ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert_eq!(
        node_ns.run(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );

    let mut servers = Servers(vec![]);
    serve(&mut servers, &pod_a, "pod-a");
    serve(&mut servers, &pod_b, "pod-b");

    // The wiring itself works: pods answer on their own addresses.
    for (addr, pod) in [("10.244.1.2", "pod-a"), ("10.244.2.2", "pod-b")] {
        let r = client(&pod_c, "tcp", addr, 8080, 1);
        assert_eq!(tally(&r), BTreeMap::from([(pod.to_string(), 1)]), "{r:?}");
        let r = client(&node_ns, "udp", addr, 5353, 1);
        assert_eq!(tally(&r), BTreeMap::from([(pod.to_string(), 1)]), "{r:?}");
    }

    let config = BackendConfig {
        masquerade_all: false,
        nft_transport: Default::default(),
        localhost_nodeports: false,
        iptables_variant: Default::default(),
        masquerade_bit: None,
        ..Default::default()
    };
    let mut b = NftBackend::new(config, NftCli::in_netns(n));
    let both = ["10.244.1.2", "10.244.2.2"];
    b.sync_full(&plans(&both), &node_with_pods(&["10.244.0.0/16"]))
        .unwrap();

    // TCP from the node and from the client pod: every connection answered, both pods reached.
    for (from, ns) in [("node", &node_ns), ("client pod", &pod_c)] {
        let r = client(ns, "tcp", "10.96.0.10", 80, 40);
        let t = tally(&r);
        eprintln!("{from}: 40 TCP connections to 10.96.0.10:80 → {t:?}");
        if !r.iter().all(|(ok, _, _)| *ok) {
            eprintln!("{}", node_ns.run(&["nft", "list", "ruleset"]));
            eprintln!("{}", node_ns.run(&["ip", "route"]));
            eprintln!("{}", node_ns.run(&["cat", "/proc/net/nf_conntrack"]));
        }
        assert!(r.iter().all(|(ok, _, _)| *ok), "{from}: {t:?}");
        assert!(t.get("pod-a").is_some_and(|&c| c > 0), "{from}: {t:?}");
        assert!(t.get("pod-b").is_some_and(|&c| c > 0), "{from}: {t:?}");

        let r = client(ns, "udp", "10.96.0.10", 53, 10);
        let t = tally(&r);
        eprintln!("{from}: 10 UDP queries to 10.96.0.10:53 → {t:?}");
        assert!(r.iter().all(|(ok, _, _)| *ok), "{from}: {t:?}");
    }

    // No endpoints: refused at once, not a timeout.
    check_refused("node", &client(&node_ns, "tcp", "10.96.0.20", 80, 3));
    check_refused("client pod", &client(&pod_c, "tcp", "10.96.0.20", 80, 3));

    // A partial sync drops pod-b from the TCP port: new connections all reach pod-a.
    let changed: BTreeSet<_> = [name("web", "http", Protocol::Tcp)].into_iter().collect();
    let report = b
        .sync_partial(
            &plans(&["10.244.1.2"]),
            &changed,
            &node_with_pods(&["10.244.0.0/16"]),
        )
        .unwrap();
    eprintln!("partial sync removing pod-b: {} ops", report.operations);
    for (from, ns) in [("node", &node_ns), ("client pod", &pod_c)] {
        let r = client(ns, "tcp", "10.96.0.10", 80, 20);
        let t = tally(&r);
        eprintln!("{from}: after removal, 20 TCP connections → {t:?}");
        assert_eq!(t, BTreeMap::from([("pod-a".to_string(), 20)]), "{from}");
    }

    b.cleanup().unwrap();
}
