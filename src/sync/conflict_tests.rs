//! The sync loop with Services that claim the same LoadBalancer IP and port, or the same
//! healthCheckNodePort: the older one is served, the newer one is planned without it (the
//! conflict counted), and gets it when the older one goes, in the same partial sync.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::loop_tests::{hc_get, nn, service_with, spn, start};
use crate::backends::fake::Call;
use crate::model::*;
use crate::watch::Change;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Service `name` (one TCP port 80 at ClusterIP `vip`) created `age` s after the epoch.
fn lb(name: &str, vip: &str, age: u64, edit: impl FnOnce(&mut ServicePort)) -> Change {
    let mut sp = ServicePort::cluster_ip(spn(name), ip(vip), 80);
    sp.service_type = ServiceType::LoadBalancer;
    sp.node_port = Some(30000 + age as u16);
    sp.created = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(age));
    edit(&mut sp);
    service_with(name, sp)
}

#[tokio::test(start_paused = true)]
async fn a_shared_load_balancer_ip_goes_to_the_older_service_and_moves_when_it_is_deleted() {
    let h = start(Duration::ZERO);
    let shared = |ranges: &'static [&'static str]| {
        move |sp: &mut ServicePort| {
            sp.load_balancer_ips = vec![ip("192.0.2.60")];
            sp.load_balancer_source_ranges = ranges.iter().map(|r| r.parse().unwrap()).collect();
        }
    };
    h.tx.send(lb("new", "10.96.0.2", 20, shared(&["10.1.0.0/16"])))
        .unwrap();
    h.tx.send(lb("old", "10.96.0.1", 10, shared(&["10.0.0.0/8"])))
        .unwrap();
    h.listed();
    h.settle().await;
    let lbs = |name: &str| {
        let plans = h.shared.plans.read().unwrap();
        let fp = &plans[&spn(name)].plan.families[0];
        (fp.load_balancer_ips.clone(), fp.source_ranges.clone())
    };
    assert_eq!(lbs("old").0, [ip("192.0.2.60")]);
    assert!(
        lbs("new").0.is_empty(),
        "the newer Service is not served there"
    );
    assert_eq!(h.metrics.service_port_conflicts.get(), 1);
    {
        let plans = h.shared.plans.read().unwrap();
        let conflicts = &plans[&spn("new")].plan.conflicts;
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].winner, nn("old"));
    }
    // The older one goes: the newer one gets the address with its own ranges, in the same
    // partial sync.
    h.tx.send(Change::Service(nn("old"), None)).unwrap();
    h.settle().await;
    assert_eq!(
        h.fake.calls().last(),
        Some(&Call::Partial {
            changed: [spn("new"), spn("old")].into_iter().collect()
        })
    );
    let (ips, ranges) = lbs("new");
    assert_eq!(ips, [ip("192.0.2.60")]);
    assert_eq!(ranges, Some(vec!["10.1.0.0/16".parse().unwrap()]));
    assert_eq!(h.metrics.service_port_conflicts.get(), 0);
}

#[tokio::test]
async fn a_shared_health_check_node_port_answers_for_the_other_service_once_the_owner_is_gone() {
    let hc_port = crate::testing::low_port();
    let h = start(Duration::ZERO);
    let local = |sp: &mut ServicePort| {
        sp.external_traffic_policy = TrafficPolicy::Local;
        sp.health_check_node_port = Some(hc_port);
    };
    h.tx.send(lb("owner", "10.96.0.1", 10, local)).unwrap();
    h.tx.send(lb("other", "10.96.0.2", 20, local)).unwrap();
    h.listed();
    let fake = h.fake.clone();
    let answered_for = |want: &'static str| {
        let fake = fake.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let got = hc_get(hc_port).await;
                if let Some((_, body)) = &got
                    && body["service"]["name"] == want
                {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the health check port {hc_port} never answered for {want}; last answer \
                 {got:?}; backend calls {:?}",
                    fake.calls()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    answered_for("owner").await;
    h.tx.send(Change::Service(nn("owner"), None)).unwrap();
    let t = std::time::Instant::now();
    answered_for("other").await;
    println!(
        "owner deleted -> the port answers for the other Service: {:?}",
        t.elapsed()
    );
    assert!(
        h.fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Full { .. }))
            .count()
            == 1,
        "no full resync was needed: {:?}",
        h.fake.calls()
    );
}
