//! Tests of the streamed load (`load.rs`) against a whole load as one diff, on the fake kernel:
//! the same mirror, the same tables, transactions of bounded size in whole ports, and nothing
//! returned when a transaction is refused part-way.
//!
//! Invariants: pure (the fake kernel); plans from the helpers of `tests.rs` and `diff_tests.rs`.

use std::net::IpAddr;

use super::diff::{Found, Mirror, Parts, Scope, Sink, Unwanted, diff, load, load_fresh};
use super::diff_tests::{many, set_endpoints};
use super::fake_kernel::{ApplyError, FakeKernel};
use super::reconcile::{Listed, parse_listing};
use super::skeleton;
use super::transaction::{Op, Transaction};
use crate::backends::Plans;
use crate::model::{IpFamily, Protocol, ServicePort};
use crate::testing::{add, cluster_ips, config, ep, external, name, node};

/// Three Services, two of them behind one pod (a shared hairpin element) and one on another
/// port of it.
fn sharing() -> Plans {
    let mut plans = Plans::new();
    for (svc, vip, port) in [("a", 7u8, 80), ("b", 8, 80), ("c", 9, 8080)] {
        let endpoints = vec![
            ep("10.1.0.1", port, "node-b"),
            ep(&format!("10.1.{vip}.2"), port, "node-b"),
        ];
        let at = IpAddr::from([10, 96, 7, vip]);
        let port = ServicePort::cluster_ip(name(svc, "http", Protocol::Tcp), at, 80);
        add(&mut plans, port, endpoints);
    }
    plans
}

fn streamed(plans: &Plans, chunk: usize) -> (Mirror, FakeKernel, Vec<Transaction>) {
    let kernel = FakeKernel::new();
    let mut sent = Vec::new();
    let parts = Parts::new(plans, &node(), &config());
    let mirror = load_fresh(parts, chunk, |tx: Transaction| {
        kernel.apply_script(&tx.to_string())?;
        sent.push(tx);
        Ok::<_, ApplyError>(())
    })
    .unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
    (mirror, kernel, sent)
}

#[test]
fn a_streamed_load_builds_the_mirror_and_the_tables_of_one_whole_load() {
    for plans in [cluster_ips(), external(), many(120, 10), sharing()] {
        let whole = diff(
            &Mirror::default(),
            &Parts::new(&plans, &node(), &config()),
            Scope::Full,
        );
        let kernel = FakeKernel::new();
        kernel.apply_script(&whole.tx.to_string()).unwrap();
        let mut mirror = Mirror::default();
        mirror.commit(whole);
        for chunk in [1, 50, 10_000] {
            let (m, k, _) = streamed(&plans, chunk);
            assert!(m == mirror, "chunk {chunk}: another mirror");
            assert!(k.tables() == kernel.tables(), "chunk {chunk}: other tables");
        }
    }
}

#[test]
fn a_small_load_is_one_transaction_and_a_large_one_comes_in_whole_ports() {
    let (_, _, sent) = streamed(&cluster_ips(), 10_000);
    assert_eq!(sent.len(), 1, "a small load stays one atomic transaction");
    // 120 Services × (10 slots + a dispatch and a cluster-ports element + 10 hairpins).
    let (_, _, sent) = streamed(&many(120, 10), 100);
    assert!(sent.len() > 10, "{}", sent.len());
    for tx in &sent[1..] {
        let elements_only = tx
            .ops()
            .iter()
            .all(|op| matches!(op, Op::AddElement(..) | Op::DeleteElement(..)));
        assert!(
            elements_only,
            "after the first, element transactions only:\n{tx}"
        );
        assert!(tx.len() < 100 + 30, "{} operations", tx.len());
        // Whole ports: every dispatch element comes with all of its port's slots.
        let text = tx.to_string();
        for line in text.lines().filter(|l| l.contains(" services ")) {
            for vip in line.split(", ").filter_map(|e| e.split(" . ").next()) {
                let vip = vip.rsplit(' ').next().unwrap_or(vip);
                let slots = text.matches(&format!("{vip} . tcp . 80 . ")).count();
                assert_eq!(slots, 10, "{vip} split across transactions:\n{text}");
            }
        }
    }
}

#[test]
fn a_refusal_part_way_stops_the_load_and_returns_no_mirror() {
    let kernel = FakeKernel::new();
    let plans = many(120, 10);
    let parts = Parts::new(&plans, &node(), &config());
    let mut sent = 0;
    let result = load_fresh(parts, 100, |tx: Transaction| {
        sent += 1;
        if sent == 3 {
            return Err("refused");
        }
        kernel
            .apply_script(&tx.to_string())
            .map_err(|_| "fake kernel")
    });
    assert_eq!(result.err(), Some("refused"));
    assert_eq!(sent, 3, "nothing is sent after a refusal");
}

/// Records what an adoption sends; the unwanted elements come from `listed` (IPv4 only).
struct Recorder {
    listed: Listed,
    sent: Vec<Transaction>,
}

impl Sink for Recorder {
    type Error = ();
    fn send(&mut self, tx: Transaction) -> Result<(), ()> {
        self.sent.push(tx);
        Ok(())
    }
    fn unwanted(
        &mut self,
        family: IpFamily,
        pick: Unwanted,
    ) -> Result<Vec<(&'static str, String)>, ()> {
        let mut out = Vec::new();
        for s in skeleton::SETS.iter().filter(|_| family == IpFamily::V4) {
            let elements = self.listed.sets.get(s.name).map(|(_, e)| e);
            for k in elements.into_iter().flat_map(|e| e.keys()) {
                if pick(s.name, k) {
                    out.push((s.name, k.clone()));
                }
            }
        }
        Ok(out)
    }
}

#[test]
fn adopting_keeps_what_is_right_replaces_what_changed_and_deletes_leftovers_last() {
    // The kernel as a previous run left it: s1 had other endpoints, s9 existed, lb-7 too.
    let mut older = many(3, 2);
    set_endpoints(&mut older, 1, &["10.9.9.1", "10.9.9.2"]);
    let text = super::compile::render(&super::compile::compile(&older, &node(), &config()));
    let mut listed = parse_listing(text.split("table ip6 ").next().unwrap());
    let services = &mut listed.sets.get_mut("services").unwrap().1;
    services.insert("10.96.0.99 . tcp . 80".into(), "goto lb-7".into());
    listed.chains.insert("lb-7".into());
    let mut found = Found::default();
    for (set, (kind, elements)) in &listed.sets {
        found.sets.insert(set.clone(), *kind);
        for (k, v) in elements {
            found.element(set, k, v);
        }
    }
    found.chains = listed.chains.clone();

    let mut plans = many(3, 2);
    set_endpoints(&mut plans, 2, &["10.1.0.2", "10.77.0.1"]);
    let mut r = Recorder {
        listed,
        sent: Vec::new(),
    };
    let parts = Parts::new(&plans, &node(), &config());
    let mirror = load(parts, [Some(found), None], 10_000, &mut r).unwrap();
    let whole = diff(
        &Mirror::default(),
        &Parts::new(&plans, &node(), &config()),
        Scope::Full,
    );
    let mut fresh = Mirror::default();
    fresh.commit(whole);
    assert!(mirror == fresh, "the mirror of a fresh load");

    assert_eq!(
        r.sent.len(),
        1,
        "a small adoption is one atomic transaction"
    );
    let ops = r.sent[0].ops();
    let text = r.sent[0].to_string();
    assert!(text.starts_with("flush chain ip kproxy "), "{text}");
    // Only the node's interval sets are emptied and filled again (`REFILLED`).
    let flushed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("flush set") || l.starts_with("flush map"))
        .collect();
    let want = [
        "flush set ip kproxy cluster-cidrs",
        "flush set ip kproxy service-cidrs",
    ];
    assert_eq!(flushed, want, "{text}");
    assert!(
        text.contains("add element ip kproxy cluster-cidrs { 10.0.0.0/16 }"),
        "{text}"
    );
    assert!(
        !text.contains("element ip kproxy affinity "),
        "the affinity map's entries are never touched: {text}"
    );
    // s0 is unchanged: none of its elements is sent.
    assert!(!text.contains("10.96.0.1 . tcp . 80 . 0"), "{text}");
    // s1 moved back: delete + add of each slot, adjacent.
    let slot = "10.96.0.2 . tcp . 80 . 0";
    let del = ops
        .iter()
        .position(|op| matches!(op, Op::DeleteElement(_, "endpoints-tcp", k) if k == slot))
        .unwrap();
    assert!(matches!(&ops[del + 1], Op::AddElement(_, "endpoints-tcp", k, _) if k == slot));
    // The stale Service goes after every addition and before its chain, which goes last.
    let stale = ops
        .iter()
        .position(
            |op| matches!(op, Op::DeleteElement(_, "services", k) if k == "10.96.0.99 . tcp . 80"),
        )
        .unwrap();
    let last_add = ops
        .iter()
        .rposition(|op| matches!(op, Op::AddElement(..)))
        .unwrap();
    assert!(last_add < stale, "{text}");
    assert_eq!(
        ops.last(),
        Some(&Op::DeleteChain(IpFamily::V4, "lb-7".into()))
    );
}
