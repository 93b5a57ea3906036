//! The real kproxy binary at scale (issues 4 and 17), in throwaway network namespaces, on
//! generated clusters in a `--manifests` directory.
//!
//! - **Rows** (issue 17): per proxy mode and cluster size (Services × endpoints), the time from
//!   start until a ClusterIP connection is answered by its endpoint (start→traffic) and the
//!   process's peak RSS over the whole run up to its first sync, cold start included (`VmHWM`).
//!   nftables (`--nftables-transport library`, the default) at 10,000 × 10 and 5,000 × 50, and
//!   with KPROXY_BENCH_LARGE=1 at 50,000 × 10 and 100,000 × 10; iptables mode (iptables-nft,
//!   which `--iptables-variant auto` picks in an empty namespace) at 10,000 × 10; and nftables
//!   through the other two transports (`netlink`: the `nft` command with elements over netlink;
//!   `command`) at 10,000 × 10 for comparison. The three nftables 10,000 × 10 rows also time an
//!   EndpointSlice file change until the traffic has moved (twice per repetition); they and the
//!   iptables row then wreck the target's rules several ways as someone else would (a map or
//!   chain flushed, its element deleted, the table deleted, `iptables -t nat -F`) and time each
//!   until the target's traffic is repaired (issue 18). Every row times `kproxy explain --live`
//!   on the target's ClusterIP once per repetition (issue 20).
//! - **Peak RSS per transport**: each `--nftables-transport` at 1k and 10k Services × 10 (and 50k
//!   with KPROXY_BENCH_LARGE=1), in a bare namespace, after the first sync.
//!
//! One line per repetition (`row nftables 10000x10 (library): start→traffic 2.41 s, VmHWM 439.0
//! MiB`); start→traffic and slice moves go into `timings`, whose medians are printed at the end.
//! Arguments that do not start with `-` filter: only rows and peak RSS runs whose label contains
//! one of them run (`cargo bench --bench binary -- 100000x10`).
//!
//! Invariants: root only (kproxy programs the kernel in a throwaway node namespace; without root
//! the bench says why and does nothing, a failure under CI=true; so is a missing `nft`, or a
//! missing `iptables-nft`/`iptables-nft-restore` for the iptables rows). Hosts: a `node`
//! namespace where kproxy runs and from which the client connects, pods `a` (10.244.1.2) and `b`
//! (10.244.2.2) wired to it by veth pairs, each answering its name on TCP 8080. The node routes
//! 10.0.0.0/8 (every generated VIP) to pod `b`, which takes it as its own: a VIP that kproxy has
//! not DNATed yet is refused at once by `b` (nothing listens on port 80), so waiting never
//! means a timeout. The target Service has one endpoint, on `a` or `b`, in a file of its own.
//! Every repetition starts cold: `kproxy --cleanup` first (the target must then be refused), a
//! fresh process, and a row's hosts are fresh namespaces. Waits poll with a deadline (10 minutes
//! for start→traffic and the first sync). Without `--bench` (`cargo test --all-targets` runs
//! benches once in test mode) every row kind runs once on 200 Services, which still checks every
//! step. Nothing is ever sent outside these namespaces; they are deleted on drop, also on panic.

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
const TRANSPORTS: [&str; 3] = ["library", "netlink", "command"];

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |label: &str| filter.is_empty() || filter.iter().any(|f| label.contains(f));
    let Some(probe) = Netns::create(BENCH) else {
        return;
    };
    drop(probe);
    if !support::netns::have(BENCH, "nft") {
        return;
    }
    let large = std::env::var("KPROXY_BENCH_LARGE").as_deref() == Ok("1");
    let sizes = if bench { support::sizes() } else { vec![200] };
    for n in sizes {
        for transport in TRANSPORTS {
            if selected(&format!("peak {n}x10 ({transport})")) {
                peak_rss(n, transport);
            }
        }
    }
    let rows: Vec<Row> = rows(bench, large)
        .into_iter()
        .filter(|r| selected(&r.label()))
        .collect();
    let iptables = rows.iter().any(|r| r.mode == Mode::Iptables)
        && support::netns::have(BENCH, "iptables-nft")
        && support::netns::have(BENCH, "iptables-nft-restore");
    for row in rows {
        if row.mode == Mode::Iptables && !iptables {
            continue;
        }
        run_row(&row);
    }
    timings::report();
}

/// How kproxy programs the kernel in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `--proxy-mode nftables --nftables-transport <transport>`.
    Nftables(&'static str),
    /// `--proxy-mode iptables` with the default `--iptables-variant auto` (iptables-nft here).
    Iptables,
}

impl Mode {
    fn args(self) -> Vec<&'static str> {
        match self {
            Mode::Nftables(transport) => vec![
                "--proxy-mode",
                "nftables",
                "--nftables-transport",
                transport,
            ],
            Mode::Iptables => vec!["--proxy-mode", "iptables"],
        }
    }
}

/// One row: a mode, `n` Services × `eps` endpoints, `reps` cold starts, and whether each
/// repetition also moves the target's traffic by changing its slice file.
struct Row {
    mode: Mode,
    n: u32,
    eps: u32,
    reps: usize,
    moves: bool,
    /// Each repetition also wrecks the target's rules several ways (`sabotages`) and times
    /// each until its traffic is repaired (issue 18).
    drift: bool,
}

impl Row {
    /// `nftables 10000x10 (library)`, `iptables 10000x10 (iptables-nft)`.
    fn label(&self) -> String {
        let (mode, how) = match self.mode {
            Mode::Nftables(transport) => ("nftables", transport),
            Mode::Iptables => ("iptables", "iptables-nft"),
        };
        format!("{mode} {}x{} ({how})", self.n, self.eps)
    }
}

/// The rows of a run (see the module docs); the large ones last.
fn rows(bench: bool, large: bool) -> Vec<Row> {
    let row = |mode, n, eps, reps, moves| Row {
        mode,
        n,
        eps,
        reps,
        moves,
        drift: moves || mode == Mode::Iptables,
    };
    let library = Mode::Nftables("library");
    let netlink = Mode::Nftables("netlink");
    let command = Mode::Nftables("command");
    if !bench {
        return vec![
            row(library, 200, 10, 1, true),
            row(netlink, 200, 10, 1, true),
            row(command, 200, 10, 1, true),
            row(library, 200, 50, 1, false),
            row(Mode::Iptables, 200, 10, 1, false),
        ];
    }
    let mut rows = vec![
        row(library, 10_000, 10, 3, true),
        row(library, 5_000, 50, 3, false),
        row(Mode::Iptables, 10_000, 10, 3, false),
        row(netlink, 10_000, 10, 3, true),
        row(command, 10_000, 10, 3, true),
    ];
    if large {
        rows.push(row(library, 50_000, 10, 1, false));
        rows.push(row(library, 100_000, 10, 1, false));
    }
    rows
}

/// kproxy, running in the calling thread's namespace on a manifests directory; killed on drop
/// (its log printed when the bench panicked).
struct Kproxy {
    child: Child,
    log: PathBuf,
}

impl Kproxy {
    fn spawn(manifests: &Path, mode: Mode, log: PathBuf) -> Kproxy {
        let out = std::fs::File::create(&log).expect("kproxy log");
        let err = out.try_clone().expect("kproxy log");
        let child = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .args(mode.args())
            .args(["--hostname-override", support::NODE])
            .args(["--min-sync-period", "0s"])
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
            .filter_map(|l| {
                l.strip_prefix(
                    "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} ",
                )
            })
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

    /// Whether libnftables is mapped into the process.
    fn maps_libnftables(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/maps", self.child.id()))
            .expect("read /proc/PID/maps")
            .contains("libnftables")
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
fn peak_rss(n: u32, transport: &'static str) {
    let node = Netns::enter(BENCH).expect("a namespace (root was checked)");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    std::fs::create_dir(&cluster).expect("cluster dir");
    manifests::write_cluster(&cluster, n, 10, &[], "192.168.0.2");
    let start = Instant::now();
    let log = dir.path().join("kproxy.log");
    let mut kproxy = Kproxy::spawn(&cluster, Mode::Nftables(transport), log);
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

/// The target Service's ClusterIP and port.
fn vip_of(target: u32) -> SocketAddr {
    match support::service(target) {
        kproxy::watch::Change::Service(_, Some(s)) => {
            SocketAddr::new(s.ports[0].cluster_ips[0], 80)
        }
        _ => unreachable!("support::service yields a Service"),
    }
}

/// Runs `row` (see the module docs): fresh hosts and cluster, then per repetition a cold start
/// timed until the target's ClusterIP is answered by pod `a`, the first sync, `VmHWM`, and the
/// slice moves when the row has them.
fn run_row(row: &Row) {
    let label = row.label();
    let hosts = Hosts::build();
    kproxy::netns::enter(&hosts.node.0).expect("enter the node namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster");
    std::fs::create_dir(&cluster).expect("cluster dir");
    let target = row.n / 2;
    manifests::write_cluster(&cluster, row.n, row.eps, &[target], "10.244.1.1");
    point_at(&cluster, target, 1);
    let vip = vip_of(target);
    assert_eq!(answer(vip), None, "{vip} answered before kproxy ran");
    let start_name = format!("row {label}: start→traffic");
    let move_name = format!("row {label}: slice file changed until traffic moved");
    let mut took_all = Vec::with_capacity(row.reps);
    let mut hwm_mib = Vec::with_capacity(row.reps);
    for rep in 0..row.reps {
        let cleanup = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .arg("--cleanup")
            .output()
            .expect("kproxy --cleanup");
        assert!(cleanup.status.success(), "kproxy --cleanup failed");
        assert_eq!(answer(vip), None, "{vip} answered after --cleanup");
        let start = Instant::now();
        let log = dir.path().join(format!("kproxy-{rep}.log"));
        let mut kproxy = Kproxy::spawn(&cluster, row.mode, log);
        let who = poll(
            "answer from the ClusterIP",
            Duration::from_secs(600),
            || {
                kproxy.assert_running();
                answer(vip)
            },
        );
        let took = start.elapsed();
        assert_eq!(
            who, "a",
            "the ClusterIP was answered by {who}, not its endpoint"
        );
        timings::record(&start_name, took);
        took_all.push(took);
        poll("first sync metric", Duration::from_secs(600), || {
            kproxy.synced().then_some(())
        });
        let (hwm, _) = kproxy.memory_kib();
        let hwm = hwm as f64 / 1024.0;
        hwm_mib.push(hwm);
        println!(
            "row {label}: start→traffic {:.2} s, VmHWM {hwm:.1} MiB",
            took.as_secs_f64()
        );
        if row.mode == Mode::Iptables {
            assert_iptables_nft();
        }
        // Only the library transport may load libnftables (the others promise it is not).
        let library = row.mode == Mode::Nftables("library");
        assert_eq!(
            kproxy.maps_libnftables(),
            library,
            "{label}: libnftables mapped into the process"
        );
        if row.moves {
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
        }
        // `kproxy explain --live` on the target, as an operator would run it on the node.
        let explain_name = format!("row {label}: explain --live");
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .arg("explain")
            .args(row.mode.args())
            .args([
                "--hostname-override",
                support::NODE,
                "--live",
                "--output",
                "json",
            ])
            .args(["--packet", &format!("tcp 10.244.1.2 -> {vip}")])
            .arg("--manifests")
            .arg(&cluster)
            .output()
            .expect("run kproxy explain");
        let took = start.elapsed();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("\"kernel\":\"agrees\""),
            "{explain_name}: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        timings::record(&explain_name, took);
        println!("{explain_name} (rep {rep}): {took:.2?}");
        if row.drift {
            for (what, command) in sabotages(row.mode, vip) {
                let name = format!("row {label}: {what} until traffic repaired");
                let start = Instant::now();
                let out = Command::new(&command[0])
                    .args(&command[1..])
                    .output()
                    .expect("run the foreign change");
                assert!(out.status.success(), "{command:?}: {out:?}");
                poll(&name, Duration::from_secs(60), || {
                    kproxy.assert_running();
                    (answer(vip).as_deref() == Some("a")).then_some(())
                });
                let took = start.elapsed();
                timings::record(&name, took);
                println!("{name} (rep {rep}): {took:.2?}");
            }
        }
        kproxy.stop();
    }
    if row.reps > 1 {
        hwm_mib.sort_by(f64::total_cmp);
        let took = timings::percentile(&took_all, 50).expect("one per repetition");
        println!(
            "row {label}: median of {}: start→traffic {:.2} s, VmHWM {:.1} MiB",
            row.reps,
            took.as_secs_f64(),
            hwm_mib[(hwm_mib.len() - 1) / 2]
        );
    }
    drop(hosts);
}

/// How someone else wrecks the rules that serve `vip` (TCP port 80), per mode: (what, command).
/// Each breaks the target's traffic until kproxy repairs it.
fn sabotages(mode: Mode, vip: SocketAddr) -> Vec<(&'static str, Vec<String>)> {
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    let element = format!("{{ {} . tcp . {} }}", vip.ip(), vip.port());
    match mode {
        Mode::Nftables(_) => vec![
            ("map flushed", words("nft flush map ip kproxy services")),
            (
                "its element deleted",
                words(&format!("nft delete element ip kproxy services {element}")),
            ),
            (
                "entry chain flushed",
                words("nft flush chain ip kproxy services"),
            ),
            ("table deleted", words("nft delete table ip kproxy")),
        ],
        Mode::Iptables => vec![
            (
                "KPROXY-PORTALS flushed",
                words("iptables-nft -t nat -F KPROXY-PORTALS"),
            ),
            (
                "KPROXY-SERVICES flushed",
                words("iptables-nft -t nat -F KPROXY-SERVICES"),
            ),
            ("nat table flushed", words("iptables-nft -t nat -F")),
        ],
    }
}

/// Panics unless kproxy's chains are in iptables-nft's nat table (the iptables rows measure
/// iptables-nft, which `--iptables-variant auto` must have picked).
fn assert_iptables_nft() {
    let out = Command::new("iptables-nft-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-nft-save");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().any(|l| l.starts_with(":KPROXY-")),
        "no KPROXY-* chain in iptables-nft's nat table: {text}"
    );
}
