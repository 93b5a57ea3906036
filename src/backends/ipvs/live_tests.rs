//! Live tests of the IPVS backend on a real kernel, inside a throwaway network namespace: the
//! netlink family, the dummy interface and the companion tables, adoption by a restarted
//! kproxy, partial syncs with a drain, drift after `ipvsadm -C`, cleanup. They need IP_VS and
//! dummy links, which this project's hosts lack, so they are ignored there and run inside the
//! VM (`tests/vm/run.sh`, from test.sh) with `--include-ignored`.
//!
//! Invariants: nothing runs outside a namespace the test created (the backend runs on a thread
//! inside it); under CI=true a namespace that cannot be made is a failure.

use std::collections::BTreeSet;

use super::IpvsBackend;
use super::compile::{IpvsSettings, compile_port};
use super::kernel::LiveKernel;
use super::netlink::{ServiceKey, VirtualServer};
use super::socket::IpvsSocket;
use crate::backends::nft::transport_tests::Netns;
use crate::backends::{Backend, Plans};
use crate::model::Protocol;
use crate::nftables::Nft;
use crate::testing::{add, cluster_ips, config, ep, external, ip, name, node};

/// A fresh namespace with `lo` up and the node's addresses of `node()` (192.168.0.2, fd00::2)
/// on it, as a node has them. (IPVS refuses a destination with EINVAL while a namespace has no
/// local routing table yet, which its first address creates.)
fn netns() -> Option<Netns> {
    let ns = Netns::new()?;
    ns.run(&["ip", "link", "set", "lo", "up"]);
    ns.run(&["ip", "addr", "add", "192.168.0.2/32", "dev", "lo"]);
    ns.run(&["ip", "addr", "add", "fd00::2/128", "dev", "lo", "nodad"]);
    Some(ns)
}

fn plans() -> Plans {
    let mut plans = cluster_ips();
    plans.extend(external());
    plans
}

fn backend() -> IpvsBackend {
    IpvsBackend::new(&config(), Box::new(LiveKernel::new(Nft::detect(false))))
}

/// The kernel's virtual servers, as (server, sorted destinations with weights).
fn kernel_state() -> Vec<(VirtualServer, Vec<(String, u32)>)> {
    let mut s = IpvsSocket::open().expect("the IPVS family");
    let mut out = Vec::new();
    for vs in s.services().unwrap() {
        let mut dests: Vec<(String, u32)> = s
            .dests(&vs.key)
            .unwrap()
            .into_iter()
            .map(|d| (format!("{}:{}", d.key.addr, d.key.port), d.weight))
            .collect();
        dests.sort();
        out.push((vs, dests));
    }
    out.sort_by_key(|(vs, _)| vs.key);
    out
}

fn keys(state: &[(VirtualServer, Vec<(String, u32)>)]) -> BTreeSet<ServiceKey> {
    state.iter().map(|(vs, _)| vs.key).collect()
}

#[test]
#[ignore = "needs IP_VS and dummy links: runs inside the VM (tests/vm)"]
fn the_kernel_holds_what_was_compiled_and_a_restart_changes_nothing() {
    let Some(ns) = netns() else { return };
    let n = ns.name.clone();
    crate::netns::run_in(&n, || {
        backend()
            .sync_full(&plans(), &node())
            .expect("the first sync");
        let state = kernel_state();
        let settings = IpvsSettings::from_config(&config());
        let want: BTreeSet<ServiceKey> = plans()
            .values()
            .flat_map(|p| compile_port(p, &node(), &settings).servers.into_keys())
            .collect();
        assert_eq!(keys(&state), want);
        let sticky = state
            .iter()
            .find(|(vs, _)| vs.key.addr == ip("10.96.1.3") && vs.key.port == 1000)
            .unwrap();
        assert_eq!(sticky.0.persistence, Some(10800));
        assert_eq!(sticky.0.scheduler, "rr");
        assert_eq!(
            sticky.1,
            [
                ("10.0.1.7:1000".to_string(), 1),
                ("10.0.2.7:1000".to_string(), 1)
            ]
        );
        let conntrack = std::fs::read_to_string("/proc/sys/net/ipv4/vs/conntrack").unwrap();
        assert_eq!(conntrack.trim(), "1");
        // A second kproxy adopts: the kernel's servers are the same objects afterwards.
        let mut again = backend();
        again.sync_full(&plans(), &node()).expect("adoption");
        assert_eq!(kernel_state(), state);
        assert_eq!(again.drift().unwrap(), None);
        // A periodic full sync with nothing changed sends nothing (the kernel's own IPv6
        // link-local address on the interface is not kproxy's to unbind).
        let periodic = again
            .sync_full(&plans(), &node())
            .expect("a periodic full sync");
        assert_eq!(
            periodic.operations, 0,
            "a periodic full sync sent something"
        );
    })
    .unwrap();
    let addrs = ns.run(&["ip", "-o", "addr", "show", "dev", "kproxy-ipvs0"]);
    for a in ["10.96.0.10/32", "198.51.100.7/32", "fd96::10/128"] {
        assert!(addrs.contains(a), "{a} not bound:\n{addrs}");
    }
    let tables = ns.run(&["nft", "list", "tables"]);
    assert!(tables.contains("table ip kproxy-ipvs") && tables.contains("table ip6 kproxy-ipvs"));
}

#[test]
#[ignore = "needs IP_VS and dummy links: runs inside the VM (tests/vm)"]
fn partial_syncs_drain_flushes_are_repaired_and_cleanup_removes_everything() {
    let Some(ns) = netns() else { return };
    let n = ns.name.clone();
    crate::netns::run_in(&n, move || {
        let mut b = backend();
        let mut plans = plans();
        b.sync_full(&plans, &node()).unwrap();
        let web = name("web", "http", Protocol::Tcp);
        let port = plans[&web].port.clone();
        add(
            &mut plans,
            port,
            vec![
                ep("10.0.1.1", 8080, "node-b"),
                ep("10.0.4.1", 8080, "node-b"),
            ],
        );
        b.sync_partial(&plans, &[web].into_iter().collect(), &node())
            .unwrap();
        let state = kernel_state();
        let (_, dests) = state
            .iter()
            .find(|(vs, _)| vs.key.addr == ip("10.96.0.10"))
            .unwrap();
        assert_eq!(
            dests,
            &[
                ("10.0.1.1:8080".to_string(), 1),
                ("10.0.2.1:8080".to_string(), 0),
                ("10.0.3.1:8080".to_string(), 0),
                ("10.0.4.1:8080".to_string(), 1)
            ]
        );
        // No connection on the drained ones: the next check deletes them.
        b.finish_drains().unwrap();
        let state = kernel_state();
        let (_, dests) = state
            .iter()
            .find(|(vs, _)| vs.key.addr == ip("10.96.0.10"))
            .unwrap();
        assert_eq!(dests.len(), 2, "{dests:?}");
        // Someone flushes IPVS: noticed, and a full sync puts everything back.
        let out = std::process::Command::new("ipvsadm")
            .arg("-C")
            .status()
            .unwrap();
        assert!(out.success());
        let what = b.drift().unwrap().expect("the flush is noticed");
        assert!(what.contains("virtual server"), "{what}");
        b.sync_full(&plans, &node()).unwrap();
        assert_eq!(kernel_state(), state);
        b.cleanup().unwrap();
        assert!(kernel_state().is_empty());
    })
    .unwrap();
    assert!(!ns.run(&["ip", "link", "show"]).contains("kproxy-ipvs0"));
    assert!(!ns.run(&["nft", "list", "tables"]).contains("kproxy-ipvs"));
}

#[test]
#[ignore = "needs IP_VS and dummy links: runs inside the VM (tests/vm)"]
fn a_missing_service_is_reported_absent_not_as_an_error() {
    let Some(ns) = netns() else { return };
    crate::netns::run_in(&ns.name.clone(), || {
        let _ = backend().sync_full(&Plans::new(), &node());
        let mut s = IpvsSocket::open().unwrap();
        let key = ServiceKey {
            addr: ip("10.99.0.1"),
            protocol: Protocol::Udp,
            port: 53,
        };
        assert!(!s.has_service(&key).unwrap());
    })
    .unwrap();
}

#[test]
#[ignore = "needs IP_VS and dummy links: runs inside the VM (tests/vm)"]
fn the_connection_timeouts_given_reach_ipvs_and_the_others_stay() {
    let Some(ns) = netns() else { return };
    crate::netns::run_in(&ns.name.clone(), || {
        let mut cfg = config();
        cfg.ipvs_timeouts.tcp_fin = Some(std::time::Duration::from_secs(30));
        IpvsBackend::new(&cfg, Box::new(LiveKernel::new(Nft::detect(false))))
            .sync_full(&Plans::new(), &node())
            .unwrap();
    })
    .unwrap();
    let out = ns.run(&["ipvsadm", "-L", "--timeout"]);
    assert!(out.contains("(tcp tcpfin udp): 900 30 300"), "{out}");
}

#[test]
#[ignore = "needs IP_VS and dummy links: runs inside the VM (tests/vm)"]
fn cleanup_kube_proxy_removes_kube_ipvs0_and_its_servers_only() {
    let Some(ns) = netns() else { return };
    for cmd in [
        "ip link add kube-ipvs0 type dummy",
        "ip addr add 10.96.0.1/32 dev kube-ipvs0",
        "ipvsadm -A -t 10.96.0.1:443 -s rr",
        "ipvsadm -a -t 10.96.0.1:443 -r 10.0.0.1:6443 -m",
        "ipvsadm -A -t 192.168.0.2:30080 -s rr",
        "ipvsadm -A -t 172.16.0.1:80 -s wlc",
        "nft add table ip kube-proxy",
    ] {
        let words: Vec<&str> = cmd.split(' ').collect();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(&words)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    crate::netns::run_in(&ns.name.clone(), || {
        super::cleanup::remove_upstream().unwrap();
        let left: Vec<String> = kernel_state()
            .iter()
            .map(|(vs, _)| std::net::SocketAddr::new(vs.key.addr, vs.key.port).to_string())
            .collect();
        assert_eq!(left, ["172.16.0.1:80"], "another user's server stays");
    })
    .unwrap();
    assert!(!ns.run(&["ip", "link", "show"]).contains("kube-ipvs0"));
    assert!(!ns.run(&["nft", "list", "tables"]).contains("kube-proxy"));
}

/// `command` (words) in the calling thread's namespace; panics when it fails.
fn run(command: &str) {
    let words: Vec<&str> = command.split(' ').collect();
    let out = std::process::Command::new(words[0])
        .args(&words[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs IP_VS and dummy links: runs inside the VM (tests/vm)"]
fn the_kernel_keeps_kproxys_mark_and_servers_outlive_a_deleted_interface_as_kproxys() {
    let Some(ns) = netns() else { return };
    crate::netns::run_in(&ns.name.clone(), || {
        let mut b = backend();
        b.sync_full(&plans(), &node()).unwrap();
        let state = kernel_state();
        assert!(state.iter().all(|(vs, _)| vs.owned), "{state:#?}");
        // A server of another IPVS user on a node address, which kproxy's NodePorts also use.
        run("ipvsadm -A -t 192.168.0.2:8443 -s wlc");
        // Someone deletes the interface: noticed, and one full sync repairs it without an
        // IPVS message (the servers are adopted by their mark).
        run("ip link del kproxy-ipvs0");
        let what = b
            .drift()
            .unwrap()
            .expect("the deleted interface is noticed");
        assert!(what.contains("kproxy-ipvs0"), "{what}");
        b.sync_full(&plans(), &node()).expect("the repair");
        assert_eq!(b.drift().unwrap(), None);
        let owned = |s: &[(VirtualServer, Vec<(String, u32)>)]| {
            s.iter()
                .filter(|(vs, _)| vs.owned)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(owned(&kernel_state()), state);
        // The interface's addresses flushed: noticed (its first address is no longer local).
        run("ip addr flush dev kproxy-ipvs0");
        let what = b
            .drift()
            .unwrap()
            .expect("the flushed addresses are noticed");
        assert!(what.contains("no longer bound"), "{what}");
        b.sync_full(&plans(), &node())
            .expect("the repair after the flush");
        assert_eq!(b.drift().unwrap(), None);
        // `kproxy --cleanup` under the running kproxy: repaired by the next full sync.
        backend().cleanup().unwrap();
        assert!(b.drift().unwrap().is_some());
        b.sync_full(&plans(), &node())
            .expect("the repair after cleanup");
        assert_eq!(owned(&kernel_state()), state);
        // Interface gone, then --cleanup: kproxy's servers go all the same, the other one
        // stays, and a restarted kproxy serves at its first sync.
        run("ip link del kproxy-ipvs0");
        backend().cleanup().unwrap();
        let left: Vec<String> = kernel_state()
            .iter()
            .map(|(vs, _)| std::net::SocketAddr::new(vs.key.addr, vs.key.port).to_string())
            .collect();
        assert_eq!(left, ["192.168.0.2:8443"]);
        backend().sync_full(&plans(), &node()).expect("the restart");
        assert_eq!(owned(&kernel_state()), state);
    })
    .unwrap();
    let addrs = ns.run(&["ip", "-o", "addr", "show", "dev", "kproxy-ipvs0"]);
    assert!(addrs.contains("10.96.0.10/32"), "bound again:\n{addrs}");
}

#[test]
#[ignore = "needs IP_VS and dummy links: runs inside the VM (tests/vm)"]
fn a_partial_sync_on_servers_changed_by_someone_else_reads_them_back() {
    let Some(ns) = netns() else { return };
    crate::netns::run_in(&ns.name.clone(), || {
        let mut b = backend();
        let mut plans = plans();
        b.sync_full(&plans, &node()).unwrap();
        // The web server deleted, a destination added by hand to the LB's: the partial sync of
        // both meets ESRCH and EEXIST, reads them back and converges.
        run("ipvsadm -D -t 10.96.0.10:80");
        run("ipvsadm -a -t 10.96.1.1:443 -r 10.0.1.9:8443 -m");
        let web = name("web", "http", Protocol::Tcp);
        let lb = name("lb", "https", Protocol::Tcp);
        let port = plans[&web].port.clone();
        add(&mut plans, port, vec![ep("10.0.1.1", 8080, "node-b")]);
        let port = plans[&lb].port.clone();
        add(
            &mut plans,
            port,
            vec![
                ep("10.0.1.1", 8443, "node-a"),
                ep("10.0.1.9", 8443, "node-a"),
            ],
        );
        b.sync_partial(&plans, &[web, lb].into_iter().collect(), &node())
            .expect("repaired within the sync");
        let state = kernel_state();
        let dests = |addr: &str, port: u16| {
            state
                .iter()
                .find(|(vs, _)| vs.key.addr == ip(addr) && vs.key.port == port)
                .map(|(_, d)| d.clone())
        };
        assert_eq!(
            dests("10.96.0.10", 80),
            Some(vec![("10.0.1.1:8080".into(), 1)])
        );
        let lb_dests = dests("10.96.1.1", 443).unwrap();
        assert!(
            lb_dests.contains(&("10.0.1.9:8443".into(), 1)),
            "{lb_dests:?}"
        );
    })
    .unwrap();
}
