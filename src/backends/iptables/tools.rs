//! Running the iptables tools without holding what goes through them: `iptables-restore -w 5
//! --noflush` with its input written to its stdin as it is produced (`restore`), and
//! `iptables-save` read line by line (`save`, through `backends::process::run_lines`).
//!
//! Invariants: a restore's stderr is read only after all of its input was written, and a
//! save's after its stdout ended: the tools read all their input before they write more than an
//! error line, and print little on stderr, so this cannot deadlock on a full pipe (as
//! `backends::process`). The child is always waited for. What the tool printed on failure is
//! kept whole in the error; a tool that failed is a refusal with its message even when it
//! stopped reading first (the write then failed with a broken pipe).

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
    let mut cmd = Command::new(program);
    cmd.args(["-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child =
        crate::backends::process::spawn(&mut cmd).map_err(|e| run(RunError::Spawn(e)))?;
    let written = {
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut pipe = BufWriter::with_capacity(CHUNK, stdin);
        input(&mut pipe).and_then(|()| pipe.flush())
    };
    let out = child
        .wait_with_output()
        .map_err(|e| run(RunError::Wait(e)))?;
    // A tool that refuses a line stops reading: then the write fails (a broken pipe), and what
    // counts is the tool's own message, so the refusal is isolated like any other.
    if !out.status.success() {
        return Err(RestoreError::Refused {
            program: program.to_string(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    written.map_err(|e| run(RunError::WriteInput(e)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_tool_that_stops_reading_at_a_refused_line_is_a_refusal_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("iptables-restore");
        std::fs::write(
            &tool,
            "#!/bin/sh\nread -r first\necho 'iptables-restore: line 2 failed' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Far more than a pipe holds: the write fails once the tool has exited.
        let mut input = |w: &mut dyn Write| {
            for i in 0..200_000 {
                writeln!(
                    w,
                    "-A KPROXY-SVC-X -j DNAT --to-destination 10.0.0.{}:80",
                    i % 250
                )?;
            }
            Ok(())
        };
        match restore(tool.to_str().unwrap(), &mut input) {
            Err(RestoreError::Refused { message, .. }) => {
                assert_eq!(message, "iptables-restore: line 2 failed")
            }
            other => panic!("a refusal with the tool's message, not {other:?}"),
        }
    }
}
