//! The throwaway network namespace of a kernel bench: created, entered by the calling thread
//! (setns, so `nft` and `iptables-restore` spawned from it run there without `ip netns exec`),
//! deleted on drop.
//!
//! Invariants: root only. Without root, `Netns::enter` prints why the bench is skipped and returns
//! `None`; under CI=true a skip is a failure (it panics). Nothing outside the namespace is
//! touched, but for creating and deleting it.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The namespace, entered by the thread that made it; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// Makes a fresh namespace (loopback up) and moves the calling thread into it, or says why
    /// `bench` is skipped.
    pub fn enter(bench: &str) -> Option<Netns> {
        let ns = Netns::create(bench)?;
        kproxy::netns::enter(&ns.0).expect("enter the bench namespace");
        Some(ns)
    }

    /// Makes a fresh namespace (loopback up) without entering it, or says why `bench` is skipped.
    pub fn create(bench: &str) -> Option<Netns> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            skip(bench, "it needs root (a throwaway network namespace)");
            return None;
        }
        let name = format!(
            "kp-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip(bench, &format!("`ip netns add {name}` failed"));
            return None;
        }
        let ns = Netns(name);
        let up = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(up, "ip -n {} link set lo up failed", ns.0);
        Some(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Says that `bench` is skipped and why; under CI=true panics instead.
pub fn skip(bench: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {bench} cannot run: {why}"
    );
    eprintln!("{bench} skipped: {why}");
}

/// True when `program` can be run (`program --version` succeeds); otherwise says that `bench`
/// is skipped (a failure under CI=true).
pub fn have(bench: &str, program: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(bench, &format!("no `{program}`"));
    }
    ok
}
