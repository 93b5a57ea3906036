//! Scenarios for kproxy's lifecycle: its rules wrecked by someone else (drift repair), a stop
//! and start under a client that keeps connecting, and `--cleanup`.
//!
//! Invariants: kproxy leaves its rules in place when it stops and adopts them when it starts, so
//! traffic never notices either; the drift requirement is 1 s, the deadline here a generous 10 s
//! (the measured time is printed); `ext` owns the Service range, so traffic kproxy does not
//! handle is answered by `ext` at once instead of timing out.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{self, Proto::*, at, served_by};
use crate::cluster::Cluster;
use crate::manifests::{WEB, web};
use crate::support::netns;
use crate::topology::{A, B, C, Client, DNS, Ext, HTTP, Host};

/// Every way this mode's rules can be wrecked (`Mode::sabotages`), one after the other: each
/// is noticed as drift (the counter goes up) and web is served by all three endpoints again.
pub fn rules_wrecked_by_someone_else_are_restored(c: &mut Cluster) {
    const REPAIRS: &str = "kproxy_rules_drift_repairs_total";
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    served_by(&c.udp_n(Client, at(WEB, DNS), 40), &[A, B, C]).unwrap();
    for (what, command) in c.mode.sabotages() {
        let before = c.metric(REPAIRS).unwrap_or(0.0);
        let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        let wrecked = Instant::now();
        c.topo.node.exec(&command[0], &args);
        c.until_metric_above(REPAIRS, before);
        c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
        c.until_served(Client, Udp, at(WEB, DNS), &[A, B, C]);
        println!(
            "{what} -> noticed and traffic restored: {:?} (requirement: 1 s)",
            wrecked.elapsed()
        );
        served_by(&c.udp_n(Client, at(WEB, DNS), 40), &[A, B, C])
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
}

/// A client connecting in a loop from the client pod until told to stop.
struct Loop {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Loop {
    /// Starts connecting to `WEB:8080` from `from`, each attempt waiting at most 500 ms; an
    /// answer from `ext` (not DNATed) counts as a failure.
    fn start(c: &Cluster, from: Host) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let ns = c.topo.ns(from).name.clone();
        let (s, a, f) = (stop.clone(), answered.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            netns::run_in(&ns, move || {
                let start = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    match client::once(Tcp, at(WEB, HTTP), Duration::from_millis(500)) {
                        Ok((server, _)) if server != Ext.name() => {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                        other => f
                            .lock()
                            .expect("failures lock")
                            .push(format!("{:?}: {other:?}", start.elapsed())),
                    }
                }
            })
        });
        Loop {
            stop,
            answered,
            failures,
            thread,
        }
    }

    /// Waits until `more` further connections have been answered.
    fn wait_for(&self, more: usize, what: &str) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        client::poll(what, client::WAIT, || {
            let n = self.answered.load(Ordering::Relaxed);
            if n >= target {
                Ok(())
            } else {
                Err(format!(
                    "{n} answered, failures: {:?}",
                    self.failures.lock().expect("lock")
                ))
            }
        });
    }

    /// Stops the loop; returns (answered, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("client loop");
        let failures = self.failures.lock().expect("failures lock").clone();
        (self.answered.load(Ordering::Relaxed), failures)
    }
}

pub fn restarting_kproxy_fails_no_connection(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);

    let client = Loop::start(c, Client);
    client.wait_for(20, "connections before the stop");
    let stopping = Instant::now();
    c.stop_kproxy();
    println!("SIGTERM -> kproxy exited: {:?}", stopping.elapsed());
    client.wait_for(50, "connections while kproxy is stopped");
    let starting = Instant::now();
    c.start_kproxy();
    let took = c.until_metric_positive(
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
    );
    println!(
        "kproxy started -> first sync done: {took:?} ({:?} since start)",
        starting.elapsed()
    );
    client.wait_for(100, "connections after the restart");
    let (answered, failures) = client.finish();
    println!(
        "{answered} connections answered across the restart, {} failed",
        failures.len()
    );
    assert!(failures.is_empty(), "failed connections: {failures:#?}");
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 30), &[A, B, C]).unwrap();
}

pub fn cleanup_removes_every_kproxy_table(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    c.stop_kproxy();
    assert!(
        !c.mode.leftovers(&c.topo.node).is_empty(),
        "kproxy's rules must survive its stop"
    );
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 40), &[A, B, C]).unwrap();

    c.cleanup();
    let left = c.mode.leftovers(&c.topo.node);
    assert!(left.is_empty(), "left after --cleanup: {left:?}");
    // Nothing DNATs the ClusterIP any more: ext, which owns it, answers.
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 5), &[Ext]).unwrap();
}
