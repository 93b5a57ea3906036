//! Where the time of an `nft -f -` goes, for the kernel bench's time split: the whole process
//! (wall time), the kernel (the `sendmsg` calls that carry the transaction batch, timed by
//! `strace -T`: nfnetlink processes and commits a batch inside the sender's `sendmsg`), the
//! close of its netlink socket (which waits for the kernel's deferred release of what the
//! transaction deleted), and the rest (process start, parsing, evaluation, cache queries).
//!
//! Invariants: scripts run in the calling thread's network namespace; a refused script panics
//! with nft's message; under strace only the `sendmsg` durations are used (strace slows the
//! process's other system calls, so its wall time is not reported).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `program args…` with `script` on stdin; returns its wall time and stderr. Panics when
/// it fails.
fn run(program: &str, args: &[&str], script: &str) -> (Duration, String) {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write the script");
    let out = child.wait_with_output().expect("wait");
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{program} {args:?} refused: {stderr}");
    (took, stderr)
}

/// `nft -f -` on `script`: its wall time.
pub fn nft(script: &str) -> Duration {
    run("nft", &["-f", "-"], script).0
}

/// What strace saw of one `nft -f -`.
pub struct Traced {
    /// The summed duration of its `sendmsg` calls: the kernel checking and committing the batch.
    pub batch: Duration,
    /// Its longest `close`: closing the netlink socket, which waits for the kernel's deferred
    /// release of deleted objects (an RCU grace period) when the transaction deleted any.
    pub close: Duration,
}

/// `nft -f -` on `script` under `strace -T -e trace=sendmsg,close` (see `Traced`).
pub fn nft_traced(script: &str) -> Traced {
    let (_, stderr) = run(
        "strace",
        &[
            "-f",
            "-qq",
            "-T",
            "-e",
            "trace=sendmsg,close",
            "nft",
            "-f",
            "-",
        ],
        script,
    );
    let times = |call: &str| -> Vec<f64> {
        stderr
            .lines()
            .filter(|l| l.contains(call))
            .filter_map(|l| {
                let (_, t) = l.rsplit_once('<')?;
                t.strip_suffix('>')?.parse::<f64>().ok()
            })
            .collect()
    };
    let batch: f64 = times("sendmsg(").iter().sum();
    assert!(batch > 0.0, "no sendmsg call seen under strace:\n{stderr}");
    let close = times("close(").into_iter().fold(0.0, f64::max);
    Traced {
        batch: Duration::from_secs_f64(batch),
        close: Duration::from_secs_f64(close),
    }
}

/// True when strace can run (the kernel share needs it); otherwise says so (a skip, a failure
/// under CI=true).
pub fn have_strace(bench: &str) -> bool {
    super::netns::have(bench, "strace")
}
