//! Tests of the nf_tables change monitor: notifications as bytes (who committed what, judged
//! by pid or by the write window), and live in a throwaway network namespace, where `nft` run
//! by someone else is foreign and kproxy's own writes are not.
//!
//! Invariants: the live tests are root only (skip without, failure under CI=true).

use super::*;
use crate::backends::nft::transport_tests::Netns;
use crate::nftables::transport::{NftCli, Transport};
use crate::nftables::uapi::NFT_MSG_DELSETELEM;

fn message(kind: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        crate::nfnetlink::attr(&mut body, *t, v);
    }
    crate::nfnetlink::request((NFNL_SUBSYS_NFTABLES << 8) | kind, 0, 0, family, &body)
}

fn elements(n: usize) -> Vec<u8> {
    let mut list = Vec::new();
    for _ in 0..n {
        crate::nfnetlink::attr(&mut list, 1, &[]);
    }
    list
}

fn newgen(pid: u32, name: &str) -> Vec<u8> {
    let name = format!("{name}\0");
    message(
        NFT_MSG_NEWGEN,
        0,
        &[
            (NFTA_GEN_PROC_PID, &pid.to_be_bytes()),
            (NFTA_GEN_PROC_NAME, name.as_bytes()),
        ],
    )
}

fn flush_of(table: &str, set: &str, n: usize) -> Vec<u8> {
    let (table, set) = (format!("{table}\0"), format!("{set}\0"));
    message(
        NFT_MSG_DELSETELEM,
        2,
        &[
            (1, table.as_bytes()),
            (2, set.as_bytes()),
            (NFTA_SET_ELEM_LIST_ELEMENTS, &elements(n)),
        ],
    )
}

fn kproxy(t: &Touch<'_>) -> bool {
    t.table == "kproxy"
}

/// A pid that is neither this process, one of its threads, nor a child it started.
fn strangers_pid() -> u32 {
    (2..u32::MAX)
        .find(|p| !is_ours(*p) && *p != std::process::id())
        .unwrap()
}

#[test]
fn a_foreign_flush_of_kproxys_map_is_reported_with_its_process_and_element_count() {
    let mut r = Reader::new(kproxy, true);
    let pid = strangers_pid();
    let mut datagram = flush_of("kproxy", "services", 5000);
    datagram.extend(newgen(pid, "nft"));
    r.read(&datagram);
    let f = r.take();
    assert_eq!(f.commits.len(), 1);
    assert_eq!(
        f.to_string(),
        format!("pid {pid} (nft) deleted 5000 element(s) of ip kproxy services")
    );
    assert!(r.take().is_empty(), "a report is given once");
}

#[test]
fn commits_to_other_tables_are_not_reported() {
    let mut r = Reader::new(kproxy, true);
    let mut datagram = flush_of("cni", "pods", 3);
    datagram.extend(newgen(strangers_pid(), "cni"));
    r.read(&datagram);
    assert!(r.take().is_empty());
}

#[test]
fn kproxys_own_commits_are_known_by_pid() {
    let mut r = Reader::new(kproxy, true);
    let mut datagram = flush_of("kproxy", "services", 1);
    datagram.extend(newgen(std::process::id(), "kproxy"));
    r.read(&datagram);
    assert!(r.take().is_empty());
}

#[test]
fn without_global_pids_a_commit_is_kproxys_only_inside_a_write() {
    let mut r = Reader::new(kproxy, false);
    let mut datagram = flush_of("kproxy", "services", 1);
    datagram.extend(newgen(std::process::id(), "kproxy"));
    r.writing = true;
    r.read(&datagram);
    assert!(r.take().is_empty());
    r.writing = false;
    r.read(&datagram);
    assert_eq!(r.take().commits.len(), 1);
}

#[test]
fn dropped_notifications_are_reported_as_lost() {
    let mut r = Reader::new(kproxy, true);
    r.read(&flush_of("kproxy", "services", 1));
    r.lost();
    r.read(&newgen(strangers_pid(), "nft"));
    let f = r.take();
    assert!(f.lost && f.commits.is_empty(), "{f:?}");
    assert!(f.to_string().contains("dropped"), "{f}");
}

#[test]
fn truncated_messages_are_skipped_without_a_panic() {
    let mut r = Reader::new(kproxy, true);
    let mut datagram = flush_of("kproxy", "services", 2);
    datagram.extend(newgen(strangers_pid(), "nft"));
    for cut in 0..datagram.len() {
        r.read(&datagram[..cut]);
    }
    r.read(&datagram);
    assert_eq!(r.take().commits.len(), 1);
}

/// Runs `nft` in the namespace the way someone else would (not through kproxy's runner).
fn stranger_nft(ns: &Netns, script: &str) {
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", script])
        .status()
        .unwrap();
    assert!(status.success(), "nft {script}");
}

const TABLE: &str = "add table ip kproxy
add map ip kproxy services { type ipv4_addr : verdict; }
add element ip kproxy services { 10.0.0.1 : drop, 10.0.0.2 : drop }
add table ip cni
add set ip cni pods { type ipv4_addr; }
";

#[test]
fn live_someone_elses_flush_is_foreign_and_kproxys_own_write_is_not() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut monitor = Monitor::open(Some(&ns.name), kproxy).unwrap();
    let mut cli = NftCli::in_netns(&ns.name);
    monitor
        .writing(false, Some(1), || cli.apply(TABLE))
        .unwrap();
    assert!(monitor.foreign().unwrap().is_empty(), "kproxy's own write");
    stranger_nft(&ns, "add element ip cni pods { 10.1.0.1 }");
    assert!(monitor.foreign().unwrap().is_empty(), "another table");
    stranger_nft(&ns, "flush map ip kproxy services");
    let f = monitor.foreign().unwrap();
    assert_eq!(f.commits.len(), 1, "{f}");
    assert!(
        f.to_string()
            .ends_with("(nft) deleted 2 element(s) of ip kproxy services"),
        "{f}"
    );
    stranger_nft(&ns, "delete table ip kproxy");
    let f = monitor.foreign().unwrap().to_string();
    assert!(f.contains("deleted table ip kproxy"), "{f}");
}

#[test]
fn live_a_child_kproxy_started_is_its_own_even_outside_a_write() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut monitor = Monitor::open(Some(&ns.name), kproxy).unwrap();
    if !monitor.reader.pids_global {
        eprintln!("skipped: this test runs in a pid namespace of its own");
        return;
    }
    NftCli::in_netns(&ns.name).apply(TABLE).unwrap();
    assert!(monitor.foreign().unwrap().is_empty());
}

#[test]
fn live_without_global_pids_kproxys_write_outside_its_window_is_foreign() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut monitor = Monitor::open(Some(&ns.name), kproxy).unwrap();
    monitor.without_pids();
    let mut cli = NftCli::in_netns(&ns.name);
    monitor
        .writing(false, Some(1), || cli.apply(TABLE))
        .unwrap();
    assert!(monitor.foreign().unwrap().is_empty());
    cli.apply("add element ip kproxy services { 10.0.0.3 : drop }")
        .unwrap();
    assert_eq!(monitor.foreign().unwrap().commits.len(), 1);
}

#[test]
fn live_someone_elses_commit_during_a_large_unsubscribed_write_counts_as_lost() {
    let Some(ns) = Netns::new() else {
        return;
    };
    let mut monitor = Monitor::open(Some(&ns.name), kproxy).unwrap();
    let mut cli = NftCli::in_netns(&ns.name);
    monitor.writing(true, Some(1), || cli.apply(TABLE)).unwrap();
    let f = monitor.foreign().unwrap();
    assert!(f.is_empty(), "kproxy's own large write alone: {f}");
    monitor
        .writing(true, Some(1), || {
            cli.apply("add element ip kproxy services { 10.0.0.3 : drop }")?;
            // Someone else, while the write's notifications are off.
            stranger_nft(&ns, "delete element ip kproxy services { 10.0.0.1 }");
            Ok::<(), crate::nftables::NftError>(())
        })
        .unwrap();
    let f = monitor.foreign().unwrap();
    assert!(f.unseen && !f.lost, "a commit unseen during the write: {f}");
    // Subscribed again after it.
    stranger_nft(&ns, "flush map ip kproxy services");
    let f = monitor.foreign().unwrap();
    assert_eq!(f.commits.len(), 1, "a flush after the write: {f}");
    // A write that does not say how many commits it makes stays as blind as before.
    monitor.writing(true, None, || {
        stranger_nft(&ns, "add element ip cni pods { 10.1.0.2 }")
    });
    assert!(monitor.foreign().unwrap().is_empty());
}

#[test]
fn the_generation_is_read_from_a_newgen_answer_only() {
    let answer = message(NFT_MSG_NEWGEN, 0, &[(NFTA_GEN_ID, &77u32.to_be_bytes())]);
    assert_eq!(generation_of(&answer), Some(77));
    let other = message(NFT_MSG_GETGEN, 0, &[(NFTA_GEN_ID, &77u32.to_be_bytes())]);
    assert_eq!(generation_of(&other), None, "not a NEWGEN");
    assert_eq!(generation_of(&answer[..10]), None, "cut short");
}
