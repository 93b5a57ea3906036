//! `kproxy explain` against the live e2e cluster, in every mode: the answer names Service
//! `web`, its port and every pod; an undefined port gets the mode's verdict; `--live` agrees
//! with the kernel, and reports a difference (exit 1) once someone deletes web's rule by hand
//! while kproxy is stopped, until kproxy is started again and repairs it.
//!
//! Invariants: explain runs in the node namespace with the daemon's own flags.

use serde_json::{Value, json};

use crate::client::{Proto::*, at};
use crate::cluster::Cluster;
use crate::manifests::{WEB, web};
use crate::topology::{A, B, C, Client, HTTP};

fn pods(hosts: &[crate::topology::Host]) -> Value {
    let mut all: Vec<String> = hosts.iter().map(|h| format!("{}:{HTTP}", h.v4())).collect();
    all.sort();
    json!(all)
}

fn sorted(v: &Value) -> Value {
    let mut all: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    json!(all)
}

pub fn explain_names_the_service_and_live_tells_a_rule_deleted_by_hand(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    let packet = format!("tcp {} -> {WEB}:{HTTP}", A.v4());
    let (e, ok) = c.explain(&packet, true);
    println!("{e}");
    assert!(ok, "explain --live failed: {e}");
    assert_eq!(e["service"], "default/web", "{e}");
    assert_eq!(e["port"], "http", "{e}");
    assert_eq!(e["address_kind"], "cluster-ip", "{e}");
    assert_eq!(e["verdict"], "dnat", "{e}");
    assert_eq!(sorted(&e["endpoints"]), pods(&[A, B, C]), "{e}");
    assert_eq!(
        (&e["rules"], &e["kernel"]),
        (&json!("agrees"), &json!("agrees")),
        "{e}"
    );

    let (undefined, _) = c.explain(&format!("tcp {} -> {WEB}:9", A.v4()), false);
    let want = if c.mode.name == "nftables" {
        "reject"
    } else {
        "not-a-service"
    };
    assert_eq!(undefined["verdict"], want, "{undefined}");
    assert!(
        undefined["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ClusterIP of default/web")),
        "{undefined}"
    );

    // Someone deletes web's rule while kproxy is stopped (it would repair it at once).
    c.stop_kproxy();
    let sabotage = match c.mode.name {
        "nftables" => "web's element deleted",
        "iptables" => "portals flushed",
        _ => "web's virtual server deleted",
    };
    let (_, cmd) = c
        .mode
        .sabotages()
        .into_iter()
        .find(|(what, _)| *what == sabotage)
        .expect("the mode's sabotage");
    let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
    c.topo.node.exec(&cmd[0], &args);
    let (broken, ok) = c.explain(&packet, true);
    println!("{broken}");
    assert_eq!(broken["verdict"], "dnat", "the plan is unchanged: {broken}");
    assert!(
        !ok,
        "explain --live exits 1 when the kernel differs: {broken}"
    );
    let differs = broken["kernel"].as_str().unwrap_or_default();
    assert!(differs.starts_with("differs: "), "{broken}");
    c.start_kproxy();
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    let (repaired, ok) = c.explain(&packet, true);
    assert!(
        ok && repaired["kernel"] == "agrees",
        "after the repair: {repaired}"
    );
}
