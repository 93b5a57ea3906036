//! Conntrack tuning at start-up (`--conntrack-*`, the file's `conntrack`), as upstream's
//! `setupConntrack`: the table size `nf_conntrack_max` (and the hash size with it), the TCP
//! established and close-wait timeouts, TCP liberal tracking and the UDP timeouts.
//!
//! Invariants: `nf_conntrack_max` is only ever raised (an operator's larger value stays); a
//! timeout or flag is written only when it differs from the kernel's; a value that cannot be
//! written (a read-only /proc/sys in a container, a network namespace other than the host's
//! for `nf_conntrack_max`) is one warning naming it and never stops kproxy. All paths hang off a
//! root (`/` in production) so tests run against a directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upstream's cap on a computed `nf_conntrack_max` (k/k#137002, 1.36).
pub const COMPUTED_MAX_CAP: u64 = 1 << 20;
/// Upstream's defaults (v1alpha1).
pub const DEFAULT_MAX_PER_CORE: u32 = 32 * 1024;
pub const DEFAULT_MIN: u32 = 128 * 1024;
pub const DEFAULT_TCP_ESTABLISHED: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_TCP_CLOSE_WAIT: Duration = Duration::from_secs(3600);

const NETFILTER: &str = "proc/sys/net/netfilter";
const HASHSIZE: &str = "sys/module/nf_conntrack/parameters/hashsize";

/// What to set. `None` (or zero) leaves the kernel's value, as upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Entries per CPU; 0 leaves `nf_conntrack_max` alone (and ignores `min`).
    pub max_per_core: u32,
    /// The floor of the computed `nf_conntrack_max`.
    pub min: u32,
    pub tcp_established: Option<Duration>,
    pub tcp_close_wait: Option<Duration>,
    pub tcp_be_liberal: bool,
    pub udp: Option<Duration>,
    pub udp_stream: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_per_core: DEFAULT_MAX_PER_CORE,
            min: DEFAULT_MIN,
            tcp_established: Some(DEFAULT_TCP_ESTABLISHED),
            tcp_close_wait: Some(DEFAULT_TCP_CLOSE_WAIT),
            tcp_be_liberal: false,
            udp: None,
            udp_stream: None,
        }
    }
}

/// One value written, or found as wanted, or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Set {
        name: String,
        from: u64,
        to: u64,
    },
    Kept {
        name: String,
        value: u64,
    },
    Refused {
        name: String,
        value: u64,
        error: String,
    },
}

impl Tuning {
    /// `nf_conntrack_max` for `cpus` CPUs: per-core × CPUs capped at 2^20, at least `min`;
    /// `None` when `max_per_core` is 0.
    pub fn conntrack_max(&self, cpus: u64) -> Option<u64> {
        if self.max_per_core == 0 {
            return None;
        }
        let scaled = (u64::from(self.max_per_core) * cpus).min(COMPUTED_MAX_CAP);
        Some(scaled.max(u64::from(self.min)))
    }

    /// The sysctls to write under `net/netfilter`, in order, with whether only raising is
    /// allowed.
    fn wanted(&self, cpus: u64) -> Vec<(&'static str, u64, bool)> {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs()).filter(|s| *s > 0);
        let mut out = Vec::new();
        if let Some(max) = self.conntrack_max(cpus) {
            out.push(("nf_conntrack_max", max, true));
        }
        let timeouts = [
            (
                "nf_conntrack_tcp_timeout_established",
                secs(self.tcp_established),
            ),
            (
                "nf_conntrack_tcp_timeout_close_wait",
                secs(self.tcp_close_wait),
            ),
            ("nf_conntrack_udp_timeout", secs(self.udp)),
            ("nf_conntrack_udp_timeout_stream", secs(self.udp_stream)),
        ];
        for (name, value) in timeouts {
            if let Some(v) = value {
                out.push((name, v, false));
            }
        }
        if self.tcp_be_liberal {
            out.push(("nf_conntrack_tcp_be_liberal", 1, false));
        }
        out
    }

    /// Applies the tuning under `root` for `cpus` CPUs; logs each change and each refusal.
    pub fn apply(&self, root: &Path, cpus: u64) -> Vec<Outcome> {
        let mut out = Vec::new();
        for (name, want, raise_only) in self.wanted(cpus) {
            let path = root.join(NETFILTER).join(name);
            let outcome = write(&path, name, want, raise_only);
            if let (Outcome::Set { .. }, "nf_conntrack_max") = (&outcome, name) {
                out.extend(raise_hashsize(root, want));
            }
            out.push(outcome);
        }
        for o in &out {
            match o {
                Outcome::Set { name, from, to } => {
                    tracing::info!("set {name} to {to} (was {from})")
                }
                Outcome::Kept { .. } => {}
                Outcome::Refused { name, value, error } => tracing::warn!(
                    "cannot set {name} to {value} ({error}); set it on the node, or run `kproxy --init-only` with the privileges it needs (see README)"
                ),
            }
        }
        out
    }
}

/// Whether the kernel has `nf_conntrack_tcp_be_liberal` set under `root` (iptables mode drops
/// packets conntrack calls INVALID unless it is, as upstream).
pub fn tcp_be_liberal(root: &Path) -> bool {
    read(&root.join(NETFILTER).join("nf_conntrack_tcp_be_liberal")) == Some(1)
}

/// The number of CPUs the machine has (upstream counts the topology, not the CPUs this process
/// may run on): `/sys/devices/system/cpu/online`, else what the process may use.
pub fn cpus(root: &Path) -> u64 {
    let online = std::fs::read_to_string(root.join("sys/devices/system/cpu/online"));
    online
        .ok()
        .and_then(|s| count_cpu_list(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}

/// `0-3,8-11` -> 8.
fn count_cpu_list(s: &str) -> Option<u64> {
    let mut n = 0;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<u64>().map(|_| 1).ok()?,
        };
    }
    (n > 0).then_some(n)
}

fn read(path: &PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write(path: &PathBuf, name: &str, want: u64, raise_only: bool) -> Outcome {
    let have = read(path);
    match have {
        Some(v) if v == want || (raise_only && v > want) => {
            return Outcome::Kept {
                name: name.to_string(),
                value: v,
            };
        }
        _ => {}
    }
    match std::fs::write(path, want.to_string()) {
        Ok(()) => Outcome::Set {
            name: name.to_string(),
            from: have.unwrap_or(0),
            to: want,
        },
        Err(e) => Outcome::Refused {
            name: name.to_string(),
            value: want,
            error: e.to_string(),
        },
    }
}

/// The hash table grows with the table, to max/4 buckets, as upstream (only from the host's
/// network namespace; a read-only /sys is the refusal upstream reports as docker#24000).
fn raise_hashsize(root: &Path, max: u64) -> Option<Outcome> {
    let path = root.join(HASHSIZE);
    let have = read(&path)?;
    if have >= max / 4 {
        return None;
    }
    Some(write(&path, "nf_conntrack hashsize", max / 4, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(values: &[(&str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(NETFILTER)).unwrap();
        std::fs::create_dir_all(dir.path().join(HASHSIZE).parent().unwrap()).unwrap();
        for (name, v) in values {
            let path = if *name == "hashsize" {
                dir.path().join(HASHSIZE)
            } else {
                dir.path().join(NETFILTER).join(name)
            };
            std::fs::write(path, format!("{v}\n")).unwrap();
        }
        dir
    }

    fn value(dir: &tempfile::TempDir, name: &str) -> u64 {
        read(&dir.path().join(NETFILTER).join(name)).unwrap()
    }

    #[test]
    fn the_table_size_is_per_core_times_cpus_capped_at_2_to_the_20_and_at_least_min() {
        let t = Tuning::default();
        assert_eq!(t.conntrack_max(2), Some(131_072), "the floor");
        assert_eq!(t.conntrack_max(8), Some(262_144));
        assert_eq!(t.conntrack_max(64), Some(1_048_576), "capped");
        let big_min = Tuning {
            min: 2_000_000,
            ..Tuning::default()
        };
        assert_eq!(
            big_min.conntrack_max(64),
            Some(2_000_000),
            "an explicit floor beats the cap"
        );
        let off = Tuning {
            max_per_core: 0,
            ..Tuning::default()
        };
        assert_eq!(off.conntrack_max(64), None);
    }

    #[test]
    fn the_defaults_raise_the_table_and_its_hash_and_set_upstreams_tcp_timeouts() {
        let dir = tree(&[
            ("nf_conntrack_max", 65_536),
            ("hashsize", 16_384),
            ("nf_conntrack_tcp_timeout_established", 432_000),
            ("nf_conntrack_tcp_timeout_close_wait", 60),
            ("nf_conntrack_udp_timeout", 30),
        ]);
        let out = Tuning::default().apply(dir.path(), 8);
        assert_eq!(value(&dir, "nf_conntrack_max"), 262_144);
        assert_eq!(read(&dir.path().join(HASHSIZE)), Some(65_536));
        assert_eq!(value(&dir, "nf_conntrack_tcp_timeout_established"), 86_400);
        assert_eq!(value(&dir, "nf_conntrack_tcp_timeout_close_wait"), 3_600);
        assert_eq!(
            value(&dir, "nf_conntrack_udp_timeout"),
            30,
            "unset: left alone"
        );
        assert!(
            !dir.path()
                .join(NETFILTER)
                .join("nf_conntrack_tcp_be_liberal")
                .exists()
        );
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, Outcome::Set { .. }))
                .count(),
            4
        );
    }

    #[test]
    fn a_larger_table_stays_and_values_already_right_are_not_written() {
        let dir = tree(&[
            ("nf_conntrack_max", 4_000_000),
            ("hashsize", 16_384),
            ("nf_conntrack_tcp_timeout_established", 86_400),
            ("nf_conntrack_tcp_timeout_close_wait", 3_600),
        ]);
        let out = Tuning::default().apply(dir.path(), 8);
        assert_eq!(value(&dir, "nf_conntrack_max"), 4_000_000);
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Kept { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn liberal_tracking_and_udp_timeouts_are_set_when_asked() {
        let dir = tree(&[
            ("nf_conntrack_tcp_be_liberal", 0),
            ("nf_conntrack_udp_timeout", 30),
            ("nf_conntrack_udp_timeout_stream", 120),
        ]);
        assert!(!tcp_be_liberal(dir.path()));
        let t = Tuning {
            max_per_core: 0,
            tcp_established: None,
            tcp_close_wait: None,
            tcp_be_liberal: true,
            udp: Some(Duration::from_secs(10)),
            udp_stream: Some(Duration::from_secs(60)),
            ..Tuning::default()
        };
        t.apply(dir.path(), 2);
        assert!(tcp_be_liberal(dir.path()));
        assert_eq!(value(&dir, "nf_conntrack_udp_timeout"), 10);
        assert_eq!(value(&dir, "nf_conntrack_udp_timeout_stream"), 60);
    }

    #[test]
    fn a_value_that_cannot_be_written_is_refused_by_name_and_the_rest_still_applies() {
        // A directory where the sysctl file should be: writing it fails, as a read-only
        // /proc/sys does.
        let dir = tree(&[("nf_conntrack_tcp_timeout_close_wait", 60)]);
        std::fs::create_dir(dir.path().join(NETFILTER).join("nf_conntrack_max")).unwrap();
        let out = Tuning::default().apply(dir.path(), 2);
        let refused: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                Outcome::Refused { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert!(refused.contains(&"nf_conntrack_max"), "{out:?}");
        assert_eq!(value(&dir, "nf_conntrack_tcp_timeout_close_wait"), 3_600);
    }

    #[test]
    fn cpu_lists_count_ranges_and_singles() {
        assert_eq!(count_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1,3"), Some(3));
        assert_eq!(count_cpu_list("x"), None);
    }
}
