//! kproxy run as the deployments run it: inside a throwaway network namespace, as root with
//! exactly the deployment's capabilities and no_new_privs (`setpriv`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http_get_in;
use crate::support::netns::Netns;

/// Capability names as the DaemonSet writes them (`NET_ADMIN`) to their bit numbers.
pub fn capability_bit(name: &str) -> u32 {
    match name.trim_start_matches("CAP_") {
        "NET_BIND_SERVICE" => 10,
        "NET_ADMIN" => 12,
        "NET_RAW" => 13,
        "SYS_MODULE" => 16,
        "SYS_ADMIN" => 21,
        other => panic!("capability {other} is not in this test's table"),
    }
}

/// kproxy running in a namespace under `setpriv` (and `strace -f` when traced); stopped on
/// drop, its log shown if the test failed.
pub struct Confined {
    /// `ip netns exec` turned into setpriv then kproxy, or into strace.
    child: Child,
    traced: bool,
    log: PathBuf,
    _dir: tempfile::TempDir,
    netns: String,
}

impl Confined {
    /// `kproxy ARGS` in `ns`, as root with only `caps` (bounding, inheritable and ambient sets)
    /// and no_new_privs, as the DaemonSet's securityContext and the systemd unit have it.
    pub fn spawn(ns: &Netns, caps: &[String], args: &[String]) -> Confined {
        Self::start(ns, None, caps, args)
    }

    /// `spawn` under `strace -f` writing every system call of kproxy and of the programs it
    /// runs to `trace`.
    pub fn spawn_traced(ns: &Netns, trace: &Path, caps: &[String], args: &[String]) -> Confined {
        Self::start(ns, Some(trace), caps, args)
    }

    fn start(ns: &Netns, trace: Option<&Path>, caps: &[String], args: &[String]) -> Confined {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("kproxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let set = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = match trace {
            Some(file) => {
                let mut c = ns.cmd("strace");
                c.args(["-f", "-qq", "-o"]).arg(file).arg("setpriv");
                c
            }
            None => ns.cmd("setpriv"),
        };
        let child = cmd
            .args(["--bounding-set", &set, "--inh-caps", &set])
            .args(["--ambient-caps", &set, "--no-new-privs", "--"])
            .arg(env!("CARGO_BIN_EXE_kproxy"))
            .args(&args[1..])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn setpriv kproxy");
        Confined {
            child,
            traced: trace.is_some(),
            log,
            _dir: dir,
            netns: ns.name.clone(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kproxy's pid: the child's own, or strace's child (setpriv has exec'd kproxy by then).
    fn kproxy_pid(&self) -> Option<i32> {
        let pid = self.child.id();
        if !self.traced {
            return Some(pid as i32);
        }
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGTERM to kproxy, then waits (10 s at most) for the child to exit.
    pub fn stop(&mut self) {
        let pid = self.kproxy_pid().expect("kproxy's pid");
        // SAFETY: kill(2) on kproxy, our child or strace's, which has not been reaped.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGTERM) },
            0,
            "SIGTERM kproxy"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "kproxy did not stop; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's effective capability set.
    pub fn effective_caps(&self) -> u64 {
        let pid = self.kproxy_pid().expect("kproxy's pid");
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .expect("CapEff line");
        u64::from_str_radix(hex.trim(), 16).expect("CapEff hex")
    }

    /// `GET path` on `addr` in kproxy's namespace.
    pub async fn get(&mut self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("kproxy exited with {status}; log:\n{}", self.log());
        }
        http_get_in(Some(&self.netns), addr, path)
            .await
            .map_err(|e| format!("GET {path}: {e}"))
    }

    /// Polls `GET path` until `check(status, body)` passes; panics after `timeout` with what
    /// was last seen.
    pub async fn until(
        &mut self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        check: impl Fn(u16, &str) -> Result<(), String>,
    ) {
        let start = Instant::now();
        loop {
            let last = match self.get(addr, path).await {
                Ok((code, body)) => match check(code, &body) {
                    Ok(()) => return,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting on {path}; last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/healthz` at `healthz` until it reports a first sync (`lastUpdated` set).
    pub async fn until_first_sync(&mut self, healthz: SocketAddr, timeout: Duration) {
        self.until(healthz, "/healthz", timeout, |code, body| {
            let v: serde_json::Value =
                serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
            match (code, v["lastUpdated"].as_str()) {
                (200, Some(t)) if !t.is_empty() => Ok(()),
                _ => Err(format!("{code} {body}")),
            }
        })
        .await;
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        if self.traced
            && self.child.try_wait().ok().flatten().is_none()
            && let Some(pid) = self.kproxy_pid()
        {
            // SAFETY: kill(2) on strace's child: a killed strace would leave it running.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- kproxy log ----\n{}\n---- end ----", self.log());
        }
    }
}

/// The stdout of `program ARGS` in `ns`, empty when it fails or is missing.
pub fn output_in(ns: &Netns, program: &str, args: &[&str]) -> String {
    ns.cmd(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether `program --version` runs.
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
