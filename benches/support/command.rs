//! Running a tool (`nft`, `iptables-restore`, `strace …`) with a script on stdin for the benches:
//! how long it took and what it printed.
//!
//! Invariants: the time runs from spawning until the process exited; a tool that fails panics
//! with its exit status and stderr (a bench that silently did nothing must not report a time).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run took and printed.
pub struct Ran {
    pub took: Duration,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` with `stdin`; panics unless it exits successfully.
pub fn run(program: &str, args: &[&str], stdin: &str) -> Ran {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    // A refused line makes the process exit early: the write may then fail; the status says why.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("wait");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {stderr}",
        out.status
    );
    Ran {
        took,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}
