//! The real kproxy binary at scale (issue 4), with each `--nftables-transport` (libnftables,
//! the `nft` command): peak RSS of the process holding the model and the nftables mirror, per
//! cluster size; and end to end, 10,000 generated Services in a
//! `--manifests` directory inside throwaway network namespaces: the time from start until a
//! ClusterIP connection is answered by its endpoint, and from an EndpointSlice file change until
//! the traffic has moved (median and p90 of several).
//!
//! Invariants: root only (kproxy programs nftables in a throwaway node namespace; without root
//! the bench says why and does nothing, a failure under CI=true). Hosts: a `node` namespace
//! where kproxy runs and from which the client connects, pods `a` (10.244.1.2) and `b`
//! (10.244.2.2) wired to it by veth pairs, each answering its name on TCP 8080. The node routes
//! 10.0.0.0/8 (every generated VIP) to pod `b`, which takes it as its own: a VIP that kproxy has
//! not DNATed yet is refused at once by `b` (nothing listens on port 80), so waiting never
//! means a timeout. The target Service has one endpoint, on `a` or `b`, in a file of its own.
//! Without `--bench` (`cargo test --all-targets` runs benches once in test mode) it runs a
//! 200-Service cluster once, which still checks every step. Nothing is ever sent outside these
//! namespaces; they are deleted on drop, also on panic.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::http::get;
use support::netns::Netns;
use support::{manifests, timings};

const BENCH: &str = "binary bench";

/// The values of `--nftables-transport` measured.
const TRANSPORTS: [&str; 2] = ["library", "command"];

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let Some(probe) = Netns::create(BENCH) else {
        return;
    };
    drop(probe);
    if !support::netns::have(BENCH, "nft") {
        return;
    }
    let (sizes, e2e_n, reps) = if bench {
        (support::sizes(), 10_000, 7)
    } else {
        (vec![200], 200, 1)
    };
    for n in sizes {
        for transport in TRANSPORTS {
            peak_rss(n, transport);
        }
    }
    for transport in TRANSPORTS {
        end_to_end(e2e_n, reps, transport);
    }
    timings::report();
}

/// kproxy, running in the calling thread's namespace on a manifests directory; killed on drop
/// (its log printed when the bench panicked).
struct Kproxy {
    child: Child,
    log: PathBuf,
}

impl Kproxy {
    fn spawn(manifests: &Path, transport: &str, log: PathBuf) -> Kproxy {
        let out = std::fs::File::create(&log).expect("kproxy log");
        let err = out.try_clone().expect("kproxy log");
        let child = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .args([
                "--proxy-mode",
                "nftables",
                "--hostname-override",
                support::NODE,
            ])
            .args(["--min-sync-period", "0s", "--nftables-transport", transport])
            .arg("--manifests")
            .arg(manifests)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn kproxy");
        Kproxy { child, log }
    }

    /// Panics (with the log) when kproxy has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("kproxy exited with {status}; log:\n{log}");
        }
    }

    /// True once kproxy has finished a sync (its last-sync timestamp metric is set).
    fn synced(&mut self) -> bool {
        self.assert_running();
        let Ok(body) = get(
            "127.0.0.1:10249".parse().expect("static address"),
            "/metrics",
        ) else {
            return false;
        };
        body.lines()
            .filter_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_last_timestamp_seconds "))
            .any(|v| v.trim().parse::<f64>().is_ok_and(|v| v > 0.0))
    }

    /// `VmHWM` (peak resident set) and `VmRSS` of the process, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// SIGTERM, then waits (up to 30 s) for a clean exit.
    fn stop(mut self) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait for kproxy").is_none() {
            assert!(Instant::now() < deadline, "kproxy ignored SIGTERM for 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Kproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- kproxy log ----\n{log}\n---- end ----");
        }
    }
}

/// Polls `probe` every 5 ms until it yields a value, panicking after `deadline` with `what`.
fn poll<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < deadline, "no {what} within {deadline:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Peak RSS of kproxy holding `n` Services × 10 endpoints after its first sync, in a fresh
/// namespace (so the sync is a cold start).
fn peak_rss(n: u32, transport: &str) {
    let node = Netns::enter(BENCH).expect("a namespace (root was checked)");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    std::fs::create_dir(&cluster).expect("cluster dir");
    manifests::write_cluster(&cluster, n, 10, &[], "192.168.0.2");
    let start = Instant::now();
    let mut kproxy = Kproxy::spawn(&cluster, transport, dir.path().join("kproxy.log"));
    poll("first sync", Duration::from_secs(600), || {
        kproxy.synced().then_some(())
    });
    let synced = start.elapsed();
    let (hwm, rss) = kproxy.memory_kib();
    println!(
        "peak RSS, {n} Services × 10 endpoints, --nftables-transport {transport}: VmHWM {:.1} MiB, VmRSS {:.1} MiB after the first \
         sync ({synced:.2?} from start)",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    assert!(
        hwm > 0 && hwm >= rss,
        "VmHWM {hwm} KiB below VmRSS {rss} KiB"
    );
    kproxy.stop();
    drop(node);
}

/// The node, pods `a` and `b` with their servers (see the module invariants).
struct Hosts {
    node: Netns,
    _pods: [Netns; 2],
}

fn ip(ns: &str, args: &str) {
    let ok = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip -n {ns} {args} failed");
}

impl Hosts {
    fn build() -> Hosts {
        let node = Netns::create(BENCH).expect("a namespace (root was checked)");
        let a = Netns::create(BENCH).expect("a namespace");
        let b = Netns::create(BENCH).expect("a namespace");
        for (i, pod) in [(1, &a), (2, &b)] {
            let (n, p) = (&node.0, &pod.0);
            ip(
                n,
                &format!("link add v{i} type veth peer name eth0 netns {p}"),
            );
            ip(n, &format!("addr add 10.244.{i}.1/24 dev v{i}"));
            ip(n, &format!("link set v{i} up"));
            ip(p, &format!("addr add 10.244.{i}.2/24 dev eth0"));
            ip(p, "link set eth0 up");
            ip(p, &format!("route add default via 10.244.{i}.1"));
        }
        ip(&node.0, "route add 10.0.0.0/8 via 10.244.2.2");
        ip(&b.0, "route add local 10.0.0.0/8 dev lo");
        for (name, pod) in [("a", &a), ("b", &b)] {
            serve(&pod.0, name);
        }
        Hosts {
            node,
            _pods: [a, b],
        }
    }
}

/// A server in namespace `ns` answering `name` to every TCP connection on port 8080, on a
/// thread that lives as long as the process (its socket stays in `ns`).
fn serve(ns: &str, name: &'static str) {
    let listener = kproxy::netns::run_in(ns, || TcpListener::bind("0.0.0.0:8080"))
        .expect("enter the pod namespace")
        .expect("bind 0.0.0.0:8080 in the pod");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(name.as_bytes());
        }
    });
}

/// Who answers a TCP connection to `to` from this thread's namespace: the server's name, or
/// `None` (refused, timed out, reset).
fn answer(to: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// The target Service's slice file with its one endpoint on pod `pod` (1 = a, 2 = b).
fn point_at(dir: &Path, target: u32, pod: u8) {
    let ep = (
        format!("10.244.{pod}.2").parse().expect("static address"),
        support::NODE.to_string(),
    );
    manifests::write(
        dir,
        &format!("slice-{target}.json"),
        &manifests::slice_of(target, &[ep]),
    );
}

fn end_to_end(n: u32, reps: usize, transport: &str) {
    let hosts = Hosts::build();
    kproxy::netns::enter(&hosts.node.0).expect("enter the node namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    std::fs::create_dir(&cluster).expect("cluster dir");
    let target = n / 2;
    manifests::write_cluster(&cluster, n, 10, &[target], "10.244.1.1");
    point_at(&cluster, target, 1);
    let vip: SocketAddr = match support::service(target) {
        kproxy::watch::Change::Service(_, Some(s)) => {
            SocketAddr::new(s.ports[0].cluster_ips[0], 80)
        }
        _ => unreachable!("support::service yields a Service"),
    };
    assert_eq!(answer(vip), None, "{vip} answered before kproxy ran");
    let start_name =
        format!("e2e {n} Services, {transport}: start until a ClusterIP connection is answered");
    let move_name =
        format!("e2e {n} Services, {transport}: slice file changed until traffic moved");
    for rep in 0..reps {
        let cleanup = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .arg("--cleanup")
            .output()
            .expect("kproxy --cleanup");
        assert!(cleanup.status.success(), "kproxy --cleanup failed");
        assert_eq!(answer(vip), None, "{vip} answered after --cleanup");
        let start = Instant::now();
        let log = dir.path().join(format!("kproxy-{rep}.log"));
        let mut kproxy = Kproxy::spawn(&cluster, transport, log);
        let who = poll(
            "answer from the ClusterIP",
            Duration::from_secs(120),
            || {
                kproxy.assert_running();
                answer(vip)
            },
        );
        let took = start.elapsed();
        timings::record(&start_name, took);
        assert_eq!(
            who, "a",
            "the ClusterIP was answered by {who}, not its endpoint"
        );
        println!("{start_name}: {took:.2?}");
        poll("first sync metric", Duration::from_secs(60), || {
            kproxy.synced().then_some(())
        });
        for (i, (pod, name)) in [(2, "b"), (1, "a")].into_iter().enumerate() {
            point_at(&cluster, target, pod);
            let start = Instant::now();
            poll(
                "traffic on the new endpoint",
                Duration::from_secs(30),
                || {
                    kproxy.assert_running();
                    (answer(vip).as_deref() == Some(name)).then_some(())
                },
            );
            let took = start.elapsed();
            timings::record(&move_name, took);
            println!("{move_name} (rep {rep}, move {i}): {took:.2?}");
        }
        kproxy.stop();
    }
    drop(hosts);
}
