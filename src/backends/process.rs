//! Running a backend tool (`nft`, `iptables-restore`, `ipset`, ...) with an optional script on
//! its stdin and both outputs captured, so the tool's own message can go into our errors.
//!
//! Invariants: the whole script is written before anything is read; the tools used this way
//! read all their input before writing output, so this cannot deadlock on a full pipe. A tool
//! whose output is large (`iptables-save`) is read line by line (`run_lines`), its stderr
//! only after its stdout ended (such tools print little there). Every child's pid is
//! remembered as kproxy's own (`crate::own`), so nf_tables notifications of its commits are not
//! taken for someone else's.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};

/// Starts `cmd`, remembering its pid as kproxy's own.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let child = cmd.spawn()?;
    crate::own::remember(child.id());
    Ok(child)
}

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
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = spawn(&mut cmd).map_err(RunError::Spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(RunError::WriteInput)?;
    }
    child.wait_with_output().map_err(RunError::Wait)
}

/// Runs `cmd` and hands each line of its stdout to `line` (without the `\n` or `\r\n`, as
/// `str::lines`; invalid UTF-8 replaced, as `String::from_utf8_lossy`). Returns its exit
/// status and stderr, whatever the status.
pub fn run_lines(mut cmd: Command, line: &mut dyn FnMut(&str)) -> Result<Output, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut cmd).map_err(RunError::Spawn)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut reader = BufReader::with_capacity(64 << 10, stdout);
    let mut buf = Vec::new();
    let read = loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                match text.strip_suffix('\n') {
                    Some(l) => line(l.strip_suffix('\r').unwrap_or(l)),
                    None => line(&text),
                }
            }
            Err(e) => break Err(e),
        }
    };
    drop(reader);
    let out = child.wait_with_output().map_err(RunError::Wait);
    read.map_err(RunError::Wait)?;
    out
}
