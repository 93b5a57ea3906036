//! Where the time of an `nft -f -` goes, for the kernel bench's time split: the whole process
//! (wall time), the kernel (the `sendmsg` calls that carry the transaction batch, timed by
//! `strace -T`: nfnetlink processes and commits a batch inside the sender's `sendmsg`), the
//! close of its netlink socket (which waits for the kernel's deferred release of what the
//! transaction deleted), and the rest (process start, parsing, evaluation, cache queries).
//!
//! Invariants: scripts run in the calling thread's network namespace; a refused script panics
//! with nft's message; under strace only the `sendmsg` durations are used (strace slows the
//! process's other system calls, so its wall time is not reported).

use std::time::Duration;

fn run(program: &str, args: &[&str], script: &str) -> (Duration, String) {
    let ran = super::command::run(program, args, script);
    (ran.took, ran.stderr)
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
