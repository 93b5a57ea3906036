//! `process_*`: the process metrics Prometheus' Go client exports for every Kubernetes
//! component (component-base registers its process collector), read from `/proc/self` at each
//! scrape.
//!
//! Invariants: names, types and help texts are the Go client's; a value that cannot be read is
//! left out of the scrape (as the Go client does), never reported as 0. An unlimited address
//! space is reported as the kernel's RLIM_INFINITY (2^64 - 1), as the Go client does.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};

/// (name, help, counter?) of every metric, in the Go client's order.
const METRICS: [(&str, &str, bool); 7] = [
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        true,
    ),
    (
        "process_open_fds",
        "Number of open file descriptors.",
        false,
    ),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
        false,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        false,
    ),
    (
        "process_virtual_memory_max_bytes",
        "Maximum amount of virtual memory available in bytes.",
        false,
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        false,
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        false,
    ),
];

pub struct ProcessCollector {
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        let descs = METRICS
            .iter()
            .map(|(name, help, _)| {
                Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new())
                    .expect("valid descriptor")
            })
            .collect();
        ProcessCollector { descs }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let values = Sample::read().values();
        METRICS
            .iter()
            .zip(values)
            .filter_map(|((name, help, counter), value)| Some(family(name, help, *counter, value?)))
            .collect()
    }
}

fn family(name: &str, help: &str, counter: bool, value: f64) -> MetricFamily {
    let mut metric = Metric::default();
    if counter {
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
    }
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(if counter {
        MetricType::COUNTER
    } else {
        MetricType::GAUGE
    });
    f.set_metric(vec![metric]);
    f
}

/// What `/proc/self/stat` says, in the units of the metrics.
#[derive(Debug, Default, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    virtual_bytes: f64,
    resident_bytes: f64,
    /// Clock ticks after boot.
    start_ticks: f64,
}

/// One reading of every value; None where it could not be read.
#[derive(Debug, Default)]
struct Sample {
    stat: Option<Stat>,
    open_fds: Option<f64>,
    limits: (Option<f64>, Option<f64>),
    start_time: Option<f64>,
}

impl Sample {
    fn read() -> Sample {
        let ticks = sysconf(libc::_SC_CLK_TCK);
        let page = sysconf(libc::_SC_PAGESIZE);
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s, ticks?, page?));
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s));
        let start_time = match (&stat, boot, ticks) {
            (Some(s), Some(boot), Some(t)) => Some(boot + s.start_ticks / t),
            _ => None,
        };
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        let limits = std::fs::read_to_string("/proc/self/limits")
            .map(|s| parse_limits(&s))
            .unwrap_or_default();
        Sample {
            stat,
            open_fds,
            limits,
            start_time,
        }
    }

    /// In `METRICS`' order.
    fn values(&self) -> [Option<f64>; 7] {
        let stat = self.stat.as_ref();
        [
            stat.map(|s| s.cpu_seconds),
            self.open_fds,
            self.limits.0,
            stat.map(|s| s.virtual_bytes),
            self.limits.1,
            stat.map(|s| s.resident_bytes),
            self.start_time,
        ]
    }
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf reads a system constant; it has no memory effects.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

/// `/proc/<pid>/stat` (proc(5)): utime, stime, starttime (clock ticks), vsize (bytes) and rss
/// (pages). The command name, field 2, is in parentheses and may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn parse_stat(text: &str, ticks_per_second: f64, page_size: f64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks_per_second,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
    })
}

/// The boot time (`btime`, Unix seconds) from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limits on open files and on the address space from `/proc/<pid>/limits`
/// ("unlimited" is RLIM_INFINITY).
fn parse_limits(text: &str) -> (Option<f64>, Option<f64>) {
    let soft = |name: &str| {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?;
        match value {
            "unlimited" => Some(u64::MAX as f64),
            v => v.parse().ok(),
        }
    };
    (soft("Max open files"), soft("Max address space"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (kproxy (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 \
                    9 0 123456 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let s = parse_stat(stat, 100.0, 4096.0).expect("parsed");
        assert_eq!(
            s,
            Stat {
                cpu_seconds: 4.0,
                start_ticks: 123456.0,
                virtual_bytes: 104857600.0,
                resident_bytes: 2560.0 * 4096.0,
            }
        );
        assert_eq!(parse_stat("4242 (truncated", 100.0, 4096.0), None);
    }

    #[test]
    fn soft_limits_are_read_and_unlimited_is_rlim_infinity() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max address space         unlimited            unlimited            bytes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_limits(limits), (Some(1024.0), Some(u64::MAX as f64)));
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1.7e9)
        );
    }

    #[test]
    fn this_process_reports_every_metric_with_plausible_values() {
        let families = ProcessCollector::new().collect();
        let value = |name: &str| {
            let f = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} missing"));
            let m = &f.get_metric()[0];
            match f.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                _ => m.get_gauge().get_value(),
            }
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0, "stdin, stdout, stderr");
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert_eq!(families.len(), METRICS.len());
    }
}
