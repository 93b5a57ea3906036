//! `Cluster`: one scenario's world — the topology, a manifests directory holding this node's
//! Node, and the real kproxy binary in the node namespace in the mode under test — with the
//! operations scenarios use: write and delete manifests, send traffic from any host, wait for a
//! condition, stop and start kproxy.
//!
//! Invariants: kproxy runs only inside the node namespace, as node1, with `--cluster-cidr
//! 10.244.0.0/16,fd00:244::/32`; when a test fails, the mode's rules are printed before the
//! namespaces go (kproxy's log is printed by `support::Kproxy`); field order is drop order, so
//! kproxy is killed before the servers and the namespaces are removed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, Outcome, Proto, TIMEOUT};
use crate::manifests::{list, this_node, write_atomically};
use crate::mode::Mode;
use crate::support::{Kproxy, http_get_in};
use crate::topology::{Host, Topology};

pub struct Cluster {
    kproxy: Option<Kproxy>,
    pub topo: Topology,
    pub mode: Mode,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    /// Builds the topology, writes the Node, starts kproxy in `mode`.
    pub fn start(mode: Mode) -> Cluster {
        let topo = Topology::build();
        let dir = tempfile::tempdir().expect("manifests dir");
        write_atomically(dir.path(), "node1.json", &list(vec![this_node()]));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut c = Cluster {
            kproxy: None,
            topo,
            mode,
            dir,
            rt,
        };
        c.start_kproxy();
        // Scenarios measure changes, not kproxy's start-up: wait for its first sync.
        let took = c.until_metric_positive(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
        );
        println!("kproxy started -> first sync: {took:?}");
        c
    }

    /// Starts kproxy (again) on the same manifests directory.
    pub fn start_kproxy(&mut self) {
        self.start_kproxy_with(&[]);
    }

    /// Starts kproxy (again) with flags beyond the mode's.
    pub fn start_kproxy_with(&mut self, extra: &[&str]) {
        self.start_kproxy_env(extra, &[]);
    }

    /// Starts kproxy (again) with flags beyond the mode's and these environment variables.
    pub fn start_kproxy_env(&mut self, extra: &[&str], env: &[(&str, String)]) {
        assert!(self.kproxy.is_none(), "kproxy is already running");
        let dir = self.dir.path().to_str().expect("UTF-8 path").to_string();
        let mut args = vec![
            "--proxy-mode",
            self.mode.name,
            "--manifests",
            &dir,
            "--cluster-cidr",
            "10.244.0.0/16,fd00:244::/32",
        ];
        args.extend_from_slice(self.mode.args);
        args.extend_from_slice(extra);
        self.kproxy = Some(Kproxy::spawn_with_env(&self.topo.node, &args, env));
    }

    /// Stops kproxy with SIGTERM and waits for it to exit (it leaves its rules in place).
    pub fn stop_kproxy(&mut self) {
        let k = self.kproxy.as_mut().expect("kproxy is running");
        k.assert_running();
        let status = k.stop();
        assert!(status.success(), "kproxy exited with {status} on SIGTERM");
        let log = k.log();
        assert!(
            log.contains("rules left in place"),
            "kproxy did not say it left its rules in place:\n{log}"
        );
        self.kproxy = None;
    }

    /// Runs `kproxy explain --output json` with the daemon's flags in the node namespace
    /// (`--live` when asked): the answer and whether it exited 0; panics when it prints no
    /// JSON object.
    pub fn explain(&self, packet: &str, live: bool) -> (Value, bool) {
        let dir = self.dir.path().to_str().expect("UTF-8 path");
        let mut cmd = self.topo.node.cmd(env!("CARGO_BIN_EXE_kproxy"));
        cmd.args(["explain", "--packet", packet, "--output", "json"])
            .args(["--proxy-mode", self.mode.name, "--manifests", dir])
            .args(["--hostname-override", "node1"])
            .args(["--cluster-cidr", "10.244.0.0/16,fd00:244::/32"])
            .args(self.mode.args);
        if live {
            cmd.arg("--live");
        }
        let started = Instant::now();
        let out = cmd.output().expect("run kproxy explain");
        println!(
            "kproxy explain {packet:?} (live: {live}): {:?}",
            started.elapsed()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let answer = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "kproxy explain printed no JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (answer, out.status.success())
    }

    /// Runs `kproxy --cleanup` in this mode in the node namespace; panics when it fails.
    pub fn cleanup(&self) {
        let out = self
            .topo
            .node
            .cmd(env!("CARGO_BIN_EXE_kproxy"))
            .args(["--cleanup", "--proxy-mode", self.mode.name])
            .output()
            .expect("run kproxy --cleanup");
        assert!(
            out.status.success(),
            "kproxy --cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What kproxy has logged so far.
    pub fn kproxy_log(&self) -> String {
        self.kproxy.as_ref().map(Kproxy::log).unwrap_or_default()
    }

    /// Polls kproxy's `/metrics` until `sample` is present and > 0.
    pub fn until_metric_positive(&mut self, sample: &str) -> Duration {
        self.until_metric_above(sample, 0.0)
    }

    /// Polls kproxy's `/metrics` until `sample` is present and above `floor`.
    pub fn until_metric_above(&mut self, sample: &str, floor: f64) -> Duration {
        let start = Instant::now();
        client::poll(sample, client::WAIT, || match self.metric(sample) {
            Ok(v) if v > floor => Ok(()),
            Ok(v) => Err(format!("{sample} = {v}")),
            Err(e) => Err(e),
        });
        start.elapsed()
    }

    /// One sample of kproxy's `/metrics` now.
    pub fn metric(&mut self, sample: &str) -> Result<f64, String> {
        let k = self.kproxy.as_mut().expect("kproxy is running");
        self.rt.block_on(k.metric(sample))
    }

    /// kproxy's `path` on its health port (127.0.0.1:10256 in the node, `support::Kproxy`):
    /// the status and the JSON body.
    pub fn health(&self, path: &str) -> Result<(u16, serde_json::Value), String> {
        let to = crate::client::at("127.0.0.1", 10256);
        let (code, body) = self.http_get(crate::topology::Node, to, path)?;
        let v = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok((code, v))
    }

    /// kproxy's `/metrics` text; panics when it does not answer.
    pub fn metrics_text(&mut self) -> String {
        let k = self.kproxy.as_mut().expect("kproxy is running");
        self.rt
            .block_on(k.metrics_text())
            .expect("/metrics answers")
    }

    /// The manifests directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `objects` as `<file>.json` (a `kind: List`), replacing what the file held.
    pub fn apply(&self, file: &str, objects: Vec<Value>) {
        write_atomically(self.dir(), &format!("{file}.json"), &list(objects));
    }

    /// Writes `content` as the file `name` (extension included), atomically.
    pub fn write_raw(&self, name: &str, content: &str) {
        write_atomically(self.dir(), name, content);
    }

    /// Deletes `<file>.json`.
    pub fn delete(&self, file: &str) {
        std::fs::remove_file(self.dir().join(format!("{file}.json"))).expect("delete manifest");
    }

    /// `n` attempts of `proto` from `from` to `to`, each waiting at most `timeout`, in order.
    pub fn probe(
        &self,
        from: Host,
        proto: Proto,
        to: SocketAddr,
        n: usize,
        timeout: Duration,
    ) -> Vec<Outcome> {
        self.topo
            .ns(from)
            .run(move || (0..n).map(|_| client::once(proto, to, timeout)).collect())
    }

    /// One TCP connection, waiting at most `client::TIMEOUT`.
    pub fn tcp(&self, from: Host, to: SocketAddr) -> Outcome {
        self.tcp_n(from, to, 1).remove(0)
    }

    pub fn tcp_n(&self, from: Host, to: SocketAddr, n: usize) -> Vec<Outcome> {
        self.probe(from, Proto::Tcp, to, n, TIMEOUT)
    }

    pub fn udp_n(&self, from: Host, to: SocketAddr, n: usize) -> Vec<Outcome> {
        self.probe(from, Proto::Udp, to, n, TIMEOUT)
    }

    /// Polls until `n` attempts of `proto` from `from` to `to` are all answered by exactly
    /// `hosts`; returns how long that took. Each poll stops at its first wrong answer, and waits
    /// `client::POLL_TIMEOUT` at most for each answer.
    pub fn until_served(
        &self,
        from: Host,
        proto: Proto,
        to: SocketAddr,
        hosts: &[Host],
    ) -> Duration {
        self.until_served_within(from, proto, to, hosts, client::WAIT)
    }

    /// `until_served`, waiting up to `wait` (for what takes many syncs, such as a bisection).
    pub fn until_served_within(
        &self,
        from: Host,
        proto: Proto,
        to: SocketAddr,
        hosts: &[Host],
        wait: Duration,
    ) -> Duration {
        // Enough attempts that a host that should answer is missed by chance with probability
        // below 0.1 % (3 hosts: 3 * (2/3)^24), so a pass is not luck.
        let n = 6 * hosts.len() + 6;
        let names: Vec<&'static str> = hosts.iter().map(|h| h.name()).collect();
        let probe = || {
            let names = names.clone();
            let outcomes = self.topo.ns(from).run(move || {
                let mut outcomes = Vec::with_capacity(n);
                for _ in 0..n {
                    let o = client::once(proto, to, client::POLL_TIMEOUT);
                    let wrong = !matches!(&o, Ok((server, _)) if names.contains(&server.as_str()));
                    outcomes.push(o);
                    if wrong {
                        break;
                    }
                }
                outcomes
            });
            client::served_by(&outcomes, hosts)
        };
        let what = format!("{proto:?} from {from:?} to {to} answered by exactly {hosts:?}");
        client::poll(&what, wait, probe).1
    }

    /// Polls until an attempt of `proto` from `from` to `to` fails with `kind`; returns how long
    /// that took.
    pub fn until_fails(&self, from: Host, proto: Proto, to: SocketAddr, kind: &str) -> Duration {
        let probe = || {
            let outcomes = self.probe(from, proto, to, 1, client::DROP_TIMEOUT);
            client::all_failed(&outcomes, kind)
        };
        let what = format!("{proto:?} from {from:?} to {to} to fail with {kind}");
        client::poll(&what, client::WAIT, probe).1
    }

    /// HTTP GET `path` at `to` from `from`: (status, body).
    pub fn http_get(
        &self,
        from: Host,
        to: SocketAddr,
        path: &str,
    ) -> Result<(u16, String), String> {
        let ns = self.topo.ns(from).name.clone();
        self.rt
            .block_on(http_get_in(Some(&ns), to, path))
            .map_err(|e| e.to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} rules in the node namespace ----\n{}\n---- end of rules ----",
                self.mode.name,
                self.mode.rules(&self.topo.node)
            );
        }
    }
}
