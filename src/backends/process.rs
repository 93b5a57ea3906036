//! Running a backend tool (`nft`, `iptables-restore`, `ipset`, ...) with an optional script on
//! its stdin and both outputs captured, so the tool's own message can go into our errors.
//!
//! Invariants: the whole script is written before anything is read; the tools used this way
//! read all their input before writing output, so this cannot deadlock on a full pipe.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Which step of running the tool failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting it: {0}")]
    Spawn(std::io::Error),
    #[error("writing its input: {0}")]
    WriteInput(std::io::Error),
    #[error("waiting for it: {0}")]
    Wait(std::io::Error),
}

/// Runs `cmd` with `stdin` (or none), stdout and stderr captured; the exit status is the
/// caller's to judge.
pub fn run_piped(mut cmd: Command, stdin: Option<&str>) -> Result<Output, RunError> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(RunError::WriteInput)?;
    }
    child.wait_with_output().map_err(RunError::Wait)
}
