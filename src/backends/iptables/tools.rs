//! Running the iptables tools without holding what goes through them: `iptables-restore -w 5
//! --noflush` with its input written to its stdin as it is produced (`restore`), and
//! `iptables-save` read line by line (`save`, through `backends::process::run_lines`).
//!
//! Invariants: a restore's stderr is read only after all of its input was written, and a
//! save's after its stdout ended: the tools read all their input before they write more than an
//! error line, and print little on stderr, so this cannot deadlock on a full pipe (as
//! `backends::process`). The child is always waited for. What the tool printed on failure is
//! kept whole in the error.

use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};

use super::restore_error::RestoreError;
use crate::backends::process::{RunError, run_lines};

/// The pipe's buffer: the tool reads while the rest is produced.
const CHUNK: usize = 64 << 10;

/// Runs `program -w 5 --noflush` with what `input` writes on its stdin.
pub fn restore(
    program: &str,
    input: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), RestoreError> {
    let run = |source| RestoreError::Run {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(["-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| run(RunError::Spawn(e)))?;
    let written = {
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut pipe = BufWriter::with_capacity(CHUNK, stdin);
        input(&mut pipe).and_then(|()| pipe.flush())
    };
    let out = child.wait_with_output().map_err(|e| run(RunError::Wait(e)));
    written.map_err(|e| run(RunError::WriteInput(e)))?;
    let out = out?;
    if out.status.success() {
        return Ok(());
    }
    Err(RestoreError::Refused {
        program: program.to_string(),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `program -t table` and hands each line of its output to `line`. A table that was never
/// created (no module loaded yet) lists as nothing.
pub fn save(program: &str, table: &str, line: &mut dyn FnMut(&str)) -> Result<(), RestoreError> {
    let run = |source| RestoreError::Run {
        program: program.to_string(),
        source,
    };
    let mut cmd = Command::new(program);
    cmd.args(["-t", table]);
    let out = run_lines(cmd, line).map_err(run)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("does not exist") {
        return Ok(());
    }
    Err(RestoreError::Save {
        program: format!("{program} -t {table}"),
        message: stderr.trim().to_string(),
    })
}
