//! Helpers shared by integration tests: the test API server, objects, the kproxy binary as a
//! child process (killed on drop), free ports, a tiny HTTP/1.1 GET client, and polling with a
//! deadline (never sleeps as synchronisation).
//!
//! Each test binary uses a different subset, hence `dead_code` is allowed here.
#![allow(dead_code)]

pub mod apiserver;
pub mod netns;
pub mod objects;
pub mod selector;
pub mod source;

use std::fmt::Debug;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port nobody listens on right now (bound then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `GET path` over a fresh connection; returns (status, body). Understands Content-Length,
/// chunked and read-to-close bodies.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_in(None, addr, path).await
}

/// `http_get` from inside the named network namespace (`None`: the test's own).
pub async fn http_get_in(
    netns: Option<&str>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = match netns {
        None => TcpStream::connect(addr).await?,
        Some(ns) => {
            let connect = move || {
                let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(s)
            };
            TcpStream::from_std(netns::run_in(ns, connect)?)?
        }
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(bad)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// Polls `probe` every 20 ms until it returns `Ok`, or panics after `timeout` with the last
/// `Err` (what was observed instead). Returns the value and how long it took.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return (v, start.elapsed()),
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of a sample in Prometheus text, e.g. `name{label="x"}` or `name`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `child` until it exits (its status) or `timeout` passes (then kills it: `None`).
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The kproxy binary, running; killed (and its log shown if the test failed) on drop.
pub struct Kproxy {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    pub metrics: SocketAddr,
    pub healthz: SocketAddr,
    /// The network namespace kproxy runs in (`None`: the test's own).
    pub netns: Option<String>,
}

impl Kproxy {
    /// Starts kproxy inside `netns` (so it programs that namespace's kernel, never the host's)
    /// as node `node1` with metrics on 127.0.0.1:10249 and health on 127.0.0.1:10256 (of that
    /// namespace), a 0 s minimum sync period, and
    /// `args`.
    pub fn spawn(netns: &netns::Netns, args: &[&str]) -> Kproxy {
        Kproxy::spawn_with_env(netns, args, &[])
    }

    /// `spawn`, with these environment variables set (or replaced) for kproxy.
    pub fn spawn_with_env(netns: &netns::Netns, args: &[&str], env: &[(&str, String)]) -> Kproxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("kproxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        // Upstream's fixed ports, inside kproxy's own namespace: below the ephemeral range, so a
        // client socket of the test in that namespace can never hold them (a port picked as
        // free in the test's namespace could be, and a restart then failed to bind it).
        let metrics = SocketAddr::from(([127, 0, 0, 1], 10249));
        let healthz = SocketAddr::from(([127, 0, 0, 1], 10256));
        let child = netns
            .cmd(env!("CARGO_BIN_EXE_kproxy"))
            .args(["--hostname-override", "node1"])
            .args(["--metrics-bind-address", &metrics.to_string()])
            .args(["--healthz-bind-address", &healthz.to_string()])
            .args(["--min-sync-period", "0s"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn kproxy");
        Kproxy {
            child,
            log,
            _dir: dir,
            metrics,
            healthz,
            netns: Some(netns.name.clone()),
        }
    }

    /// Sends SIGTERM and waits (up to 10 s) for kproxy to exit; returns its exit status. The
    /// child is kproxy itself (`ip netns exec` execs it), so the signal reaches kproxy.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM kproxy: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for kproxy") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kproxy did not exit within 10 s of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (up to `timeout`) for kproxy to exit on its own; its status. Panics, with the
    /// log, if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match exit_within(&mut self.child, timeout) {
            Some(status) => status,
            None => panic!(
                "kproxy still running after {timeout:?}; log:\n{}",
                self.log()
            ),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kproxy's pid (the child is kproxy itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("kproxy exited with {status}; log:\n{}", self.log());
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        self.assert_running();
        let addr = if path.starts_with("/healthz") || path.starts_with("/livez") {
            self.healthz
        } else {
            self.metrics
        };
        http_get_in(self.netns.as_deref(), addr, path)
            .await
            .map_err(|e| format!("GET {path}: {e}"))
    }

    /// `/debug/state` as JSON.
    pub async fn state(&mut self) -> Result<Value, String> {
        let (code, body) = self.get("/debug/state").await?;
        if code != 200 {
            return Err(format!("/debug/state answered {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/debug/state is not JSON ({e}): {body}"))
    }

    pub async fn metrics_text(&mut self) -> Result<String, String> {
        let (code, body) = self.get("/metrics").await?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        Ok(body)
    }

    /// Polls `/debug/state` and `/metrics` until `check(state, metrics)` passes; panics after
    /// `timeout` with what `check` last said. Returns the state and how long it took.
    pub async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value, &str) -> Result<(), String>,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let observed = match (self.state().await, self.metrics_text().await) {
                (Ok(state), Ok(metrics)) => match check(&state, &metrics) {
                    Ok(()) => return (state, start.elapsed()),
                    Err(e) => e,
                },
                (Err(e), _) | (_, Err(e)) => e,
            };
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}; last observed: {observed}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 30 s, polling) until kproxy answers /metrics after its first sync.
    pub async fn until_synced(&mut self) {
        let start = Instant::now();
        loop {
            let last = match self
                .metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}")
                .await
            {
                Ok(t) if t > 0.0 => return,
                other => format!("{other:?}"),
            };
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no first sync within 30 s: {last}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A metric sample's value (0 when absent is the caller's call: this returns an error).
    pub async fn metric(&mut self, sample: &str) -> Result<f64, String> {
        let text = self.metrics_text().await?;
        metric(&text, sample).ok_or_else(|| format!("no sample {sample} in /metrics"))
    }
}

impl Drop for Kproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- kproxy log ----\n{}\n---- end of kproxy log ----",
                self.log()
            );
        }
    }
}

/// Service port keys in `/debug/state`, sorted.
pub fn service_ports(state: &Value) -> Vec<String> {
    let mut keys: Vec<String> = state["servicePorts"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// The endpoint IPs of one service port in `/debug/state`, sorted.
pub fn endpoint_ips(state: &Value, port: &str) -> Vec<String> {
    let mut ips: Vec<String> = state["servicePorts"][port]["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["ip"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips
}

/// `Ok(v)` when `actual == expected`, else an error naming both (for `eventually`).
pub fn expect_eq<T: PartialEq + Debug>(actual: T, expected: T) -> Result<T, String> {
    if actual == expected {
        Ok(actual)
    } else {
        Err(format!("{actual:?} (want {expected:?})"))
    }
}
