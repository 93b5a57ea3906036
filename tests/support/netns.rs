//! Throwaway network namespaces for integration tests: created with loopback up, deleted on drop
//! (also when the test panics), and a way to run Rust code inside one (a thread that `setns`es
//! into it: sockets it creates belong to that namespace for their whole life).
//!
//! Invariants: names are `kp-<pid>-<n>-<role>` (unique per process, ≤ 15 bytes is not needed:
//! netns names are files); nothing here touches the host's own namespace except creating and
//! deleting these. Without root the caller skips; under CI=true a skip is a failure.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// True when this process can make network namespaces (root with `ip`). Otherwise prints why
/// `test` is skipped and returns false; under CI=true panics instead (a skip is a failure).
pub fn can_run(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if root && ip {
        return true;
    }
    let why = if root {
        "no `ip` command"
    } else {
        "needs root"
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {test} cannot run: {why}"
    );
    eprintln!("skipped {test}: {why}");
    false
}

/// One network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with `lo` up. Panics when it cannot be made (check `can_run` first).
    pub fn new(role: &str) -> Netns {
        let name = format!(
            "kp-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS…`; panics with ip's stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ip(&full);
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`; ip
    /// execs it, so the child's pid is the program's own).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program ARGS…` inside the namespace and returns its stdout; panics on failure.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{program} {} in {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets a sysctl inside the namespace, e.g. `net.ipv4.ip_forward=1`.
    pub fn sysctl(&self, setting: &str) {
        self.exec("sysctl", &["-q", "-w", setting]);
    }

    /// Runs `f` on a thread inside the namespace and returns its result. Sockets `f` creates
    /// stay in the namespace even when used from other threads afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a thread inside the named namespace and returns its result (see `Netns::run`).
pub fn run_in<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    kproxy::netns::run_in(name, f).unwrap_or_else(|e| panic!("entering netns {name}: {e}"))
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
