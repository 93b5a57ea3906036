//! deploy/kproxy.service's seccomp and socket sandbox against what kproxy does: the unit's
//! command line (sample /etc/kproxy, the example cluster as manifests) runs in a throwaway
//! namespace under `strace -f` with the unit's capabilities, through its first sync, in
//! nftables mode and in iptables mode through each variant. Every system call of kproxy and of
//! the programs it runs (nft, iptables-*-save/-restore, ipset) must be in the unit's
//! SystemCallFilter as `systemd-analyze syscall-filter` expands it, every socket family in
//! RestrictAddressFamilies, and no mapping both writable and executable
//! (MemoryDenyWriteExecute), and every path written under ReadWritePaths (ProtectSystem=strict;
//! and so within the DaemonSet's readOnlyRootFilesystem). That systemd really mounts it so is
//! not checked here: that needs systemd as PID 1.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;

use crate::confined::Confined;
use crate::files::{ROOT, read, unit_entries, unit_value};
use crate::support::netns::{self, Netns};
use crate::systemd::{UNIT, unit_command_line};
use crate::{NODE, WAIT, tool_or_skip};

/// The system calls a SystemCallFilter= allow-list of names and @groups lets through.
fn allowed_syscalls(filter: &str) -> BTreeSet<String> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .expect("systemd-analyze syscall-filter");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let word = line.trim();
        if word.is_empty() || word.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            current = Some(word.to_owned());
            groups.entry(word.to_owned()).or_default();
        } else if let Some(group) = &current {
            groups.get_mut(group).unwrap().push(word.to_owned());
        }
    }
    fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
        match groups.get(name) {
            Some(members) if name.starts_with('@') => {
                for m in members {
                    expand(m, groups, out);
                }
            }
            None if name.starts_with('@') => panic!("systemd knows no group {name}"),
            _ => {
                out.insert(name.to_owned());
            }
        }
    }
    let mut allowed = BTreeSet::new();
    for name in filter.split_whitespace() {
        assert!(
            !name.starts_with('~'),
            "a deny-list is not read here: {filter}"
        );
        expand(name, &groups, &mut allowed);
    }
    allowed
}

/// What an `strace -f -o` file shows: system call names (with counts), socket families, the
/// calls that mapped memory writable and executable at once, and the paths written (opened for
/// writing, created, removed or renamed).
struct Trace {
    calls: BTreeMap<String, usize>,
    families: BTreeSet<String>,
    write_exec: Vec<String>,
    written: BTreeSet<String>,
}

fn read_trace(text: &str) -> Trace {
    let mut t = Trace {
        calls: BTreeMap::new(),
        families: BTreeSet::new(),
        write_exec: Vec::new(),
        written: BTreeSet::new(),
    };
    for line in text.lines() {
        // "PID name(args) = ret", "PID <... name resumed>...", "PID +++ exited ...", "PID --- SIG...".
        let Some((_, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start().trim_start_matches("<... ");
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        *t.calls.entry(name.clone()).or_default() += 1;
        if (name == "socket" || name == "socketpair")
            && let Some(args) = rest.strip_prefix(&format!("{name}("))
        {
            let family: String = args.chars().take_while(|c| *c != ',').collect();
            t.families.insert(family);
        }
        let wx = rest.contains("PROT_WRITE|PROT_EXEC") || rest.contains("PROT_EXEC|PROT_WRITE");
        if (name == "mmap" || name == "mprotect") && wx {
            t.write_exec.push(line.to_owned());
        }
        let opens = ["open", "openat", "openat2", "creat"].contains(&name.as_str());
        let writes = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
            .iter()
            .any(|f| rest.contains(f));
        let changes = [
            "mkdir", "unlink", "rename", "link", "symlink", "rmdir", "truncate",
        ]
        .iter()
        .any(|c| name.starts_with(c));
        if ((opens && writes) || changes)
            && !rest.contains("resumed>")
            && let Some(path) = rest.split('"').nth(1)
        {
            t.written.insert(path.to_owned());
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kproxy_and_its_tools_stay_inside_the_units_syscall_filter_and_socket_families() {
    let test = "kproxy_and_its_tools_stay_inside_the_units_syscall_filter_and_socket_families";
    if !netns::can_run(test)
        || !tool_or_skip("strace", test)
        || !tool_or_skip("setpriv", test)
        || !tool_or_skip("systemd-analyze", test)
    {
        return;
    }
    let entries = unit_entries(&read(UNIT));
    let allowed = allowed_syscalls(&unit_value(&entries, "Service", "SystemCallFilter"));
    let families: BTreeSet<String> = unit_value(&entries, "Service", "RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        unit_value(&entries, "Service", "MemoryDenyWriteExecute"),
        "yes"
    );
    assert_eq!(unit_value(&entries, "Service", "ProtectSystem"), "strict");
    // Writable under ProtectSystem=strict: ReadWritePaths=, the private /dev and /tmp, and the
    // process's own /proc files (strict leaves /proc to ProtectKernelTunables=, which covers
    // /proc/sys and friends, not /proc/self/oom_score_adj; the unit's OOMScoreAdjust= sets the
    // value first, so under systemd kproxy finds it set and writes nothing).
    let mut writable: Vec<String> = ["/dev/", "/tmp/", "/var/tmp/", "/proc/self/oom_score_adj"]
        .map(String::from)
        .to_vec();
    assert_eq!(unit_value(&entries, "Service", "OOMScoreAdjust"), "-999");
    for v in crate::files::unit_values(&entries, "Service", "ReadWritePaths") {
        writable.extend(
            v.split_whitespace()
                .map(|p| p.trim_start_matches('-').to_owned()),
        );
    }
    let caps: Vec<String> = unit_value(&entries, "Service", "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();

    for extra in [
        "",
        " --proxy-mode=iptables --iptables-variant=nft",
        " --proxy-mode=iptables --iptables-variant=legacy",
    ] {
        let start = std::time::Instant::now();
        let ns = Netns::new("sandbox");
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("strace.txt");
        let mut args = unit_command_line(&format!("--manifests {ROOT}/examples/cluster{extra}"));
        args.push(format!("--hostname-override={NODE}"));
        let cfg = crate::files::parse(&args);
        let mut kproxy = Confined::spawn_traced(&ns, &trace, &caps, &args);
        let healthz = SocketAddr::new([127, 0, 0, 1].into(), cfg.healthz_bind_address.port());
        kproxy.until_first_sync(healthz, WAIT).await;
        kproxy.stop();
        let t = read_trace(&std::fs::read_to_string(&trace).unwrap());
        // A killed tracee's last line, not a call.
        let outside: Vec<&String> = t
            .calls
            .keys()
            .filter(|c| !allowed.contains(*c) && *c != "restart_syscall")
            .collect();
        assert!(
            outside.is_empty(),
            "{extra}: calls SystemCallFilter= refuses: {outside:?}"
        );
        let other: Vec<&String> = t.families.difference(&families).collect();
        assert!(
            other.is_empty(),
            "{extra}: socket families refused: {other:?}"
        );
        assert!(
            t.write_exec.is_empty(),
            "{extra}: W+X mappings: {:?}",
            t.write_exec
        );
        let outside: Vec<&String> = t
            .written
            .iter()
            .filter(|p| !writable.iter().any(|w| p.starts_with(w.as_str())))
            .collect();
        assert!(
            outside.is_empty(),
            "{extra}: writes outside ReadWritePaths=: {outside:?}"
        );
        assert!(t.calls.contains_key("sendmsg") || t.calls.contains_key("sendto"));
        println!(
            "{extra:?}: {} distinct calls, families {:?}, wrote {:?}, {:?}",
            t.calls.len(),
            t.families,
            t.written,
            start.elapsed()
        );
    }
}
