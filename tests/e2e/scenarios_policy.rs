//! Scenarios for per-Service policy: ClientIP affinity, endpoint readiness and terminating
//! fallback, internalTrafficPolicy Local, and Services kproxy must leave alone (labelled for
//! another proxy, headless).
//!
//! Invariants: "never pod-x" is checked over a sample large enough that a wrong rule would show
//! (60 connections: a third of them would go to pod-x); a drop is a timeout; "no rules" is
//! observed as a connection that reaches `ext`, which owns the address, un-DNATed.

use crate::client::{
    DROP_TIMEOUT, Outcome, POLL_TIMEOUT, Proto::*, WAIT, all_failed, at, poll, served_by, tally,
};
use crate::cluster::Cluster;
use crate::manifests::{DRAINING, GONE, NOT_READY, READY, Slice, Svc, WEB, web, web_service};
use crate::topology::{A, ALT, B, C, Client, Ext, HTTP, Host, Node};

/// Polls until a TCP connection from `from` to `to` is answered by one of the pods; that pod's
/// name and how long it took.
pub(crate) fn first_answer(
    c: &Cluster,
    from: Host,
    to: std::net::SocketAddr,
    what: &str,
) -> (String, std::time::Duration) {
    poll(what, WAIT, || {
        match c.probe(from, Tcp, to, 1, POLL_TIMEOUT).remove(0) {
            Ok((server, _)) if [A, B, C].iter().any(|h| h.name() == server) => Ok(server),
            other => Err(format!("{other:?}")),
        }
    })
}

/// The one server that answered every outcome, or why there is none.
pub(crate) fn one_server(r: &[Outcome]) -> Result<String, String> {
    let t = tally(r);
    match t.keys().collect::<Vec<_>>()[..] {
        [only] if !only.starts_with("err:") => Ok(only.clone()),
        _ => Err(format!("answers {t:?}, want one server for all")),
    }
}

pub fn client_ip_affinity_keeps_a_client_on_one_endpoint_across_ports(c: &mut Cluster) {
    let svc = Svc::new("sticky", "10.96.0.90")
        .tcp("http", 80, HTTP)
        .tcp("alt", 81, ALT)
        .client_ip_affinity();
    let slice = Slice::v4("sticky")
        .tcp("http", HTTP)
        .tcp("alt", ALT)
        .ready(&[A, B, C]);
    c.apply("sticky", vec![svc.into(), slice.into()]);
    let vip = at("10.96.0.90", 80);
    let (first, took) = first_answer(c, Client, vip, "sticky to answer the client pod");
    println!("service written -> traffic: {took:?} (first answer from {first})");

    let r = c.tcp_n(Client, at("10.96.0.90", 80), 20);
    let pod = one_server(&r).unwrap();
    let r = c.tcp_n(Client, at("10.96.0.90", 81), 20);
    assert_eq!(
        one_server(&r).unwrap(),
        pod,
        "the other port must stick to the same endpoint"
    );
    // Another client is balanced on its own (it is not pinned to the first client's endpoint
    // by construction, so only check it sticks too).
    let r = c.tcp_n(A, at("10.96.0.90", 80), 20);
    one_server(&r).unwrap();
}

pub fn client_ip_affinity_keeps_an_external_client_on_one_endpoint_through_a_node_port(
    c: &mut Cluster,
) {
    let svc = Svc::new("sticky-np", "10.96.0.91")
        .tcp("http", 80, HTTP)
        .node_port("http", 30090)
        .client_ip_affinity();
    let slice = Slice::v4("sticky-np").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("sticky-np", vec![svc.into(), slice.into()]);
    let np = at(&Node.v4(), 30090);
    let (first, took) = first_answer(c, Ext, np, "the NodePort to answer ext");
    println!("service written -> NodePort traffic: {took:?} (first answer from {first})");
    let r = c.tcp_n(Ext, np, 20);
    assert_eq!(
        one_server(&r).unwrap(),
        first,
        "ext must stick to its first endpoint"
    );
}

pub fn client_ip_affinity_on_ipv6_keeps_a_client_on_one_endpoint_across_ports(c: &mut Cluster) {
    let svc = Svc::new("sticky6", "fd00:96::90")
        .tcp("http", 80, HTTP)
        .tcp("alt", 81, ALT)
        .client_ip_affinity();
    let slice = Slice::v6("sticky6")
        .tcp("http", HTTP)
        .tcp("alt", ALT)
        .ready(&[A, B, C]);
    c.apply("sticky6", vec![svc.into(), slice.into()]);
    let vip = at("fd00:96::90", 80);
    let (first, took) = first_answer(c, Client, vip, "sticky6 to answer the client pod");
    println!("service written -> IPv6 traffic: {took:?} (first answer from {first})");
    let r = c.tcp_n(Client, vip, 20);
    assert_eq!(one_server(&r).unwrap(), first);
    let r = c.tcp_n(Client, at("fd00:96::90", 81), 20);
    assert_eq!(
        one_server(&r).unwrap(),
        first,
        "the other port sticks to the same endpoint"
    );
}

pub fn a_not_ready_endpoint_gets_no_traffic(c: &mut Cluster) {
    let slice = Slice::v4("web")
        .tcp("http", HTTP)
        .endpoint(A, READY)
        .endpoint(B, READY)
        .endpoint(C, NOT_READY);
    let svc = web_service();
    c.apply("web", vec![svc, slice.into()]);
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B]);
    println!("service written -> traffic: {took:?}");
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 60), &[A, B]).unwrap();
}

pub fn terminating_serving_endpoints_serve_when_nothing_else_is_left(c: &mut Cluster) {
    let slice = Slice::v4("web")
        .tcp("http", HTTP)
        .endpoint(A, DRAINING)
        .endpoint(B, DRAINING)
        .endpoint(C, GONE);
    let svc = web_service();
    c.apply("web", vec![svc, slice.into()]);
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B]);
    println!("service written -> traffic to terminating endpoints: {took:?}");
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 60), &[A, B]).unwrap();

    // Once a ready endpoint exists, the terminating ones get nothing.
    let slice = Slice::v4("web")
        .tcp("http", HTTP)
        .endpoint(A, DRAINING)
        .endpoint(B, DRAINING)
        .endpoint(C, READY);
    c.apply("web", vec![web_service(), slice.into()]);
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[C]);
    println!("ready endpoint added -> terminating ones dropped: {took:?}");
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 30), &[C]).unwrap();
}

pub fn internal_traffic_policy_local_uses_only_local_endpoints(c: &mut Cluster) {
    let svc = Svc::new("itl", "10.96.0.100")
        .tcp("http", 80, HTTP)
        .internal_local();
    let slice = Slice::v4("itl").tcp("http", HTTP).ready(&[A, B, C]);
    c.apply("itl", vec![svc.into(), slice.into()]);
    let vip = at("10.96.0.100", 80);
    let took = c.until_served(Client, Tcp, vip, &[A, B]);
    println!("service written -> traffic: {took:?}");
    served_by(&c.tcp_n(Client, vip, 60), &[A, B]).unwrap();
}

pub fn internal_traffic_policy_local_without_local_endpoints_drops(c: &mut Cluster) {
    // ext owns the Service range: before kproxy programs the Service, ext answers; after, the
    // connection must be dropped (there is no local endpoint), not refused, not forwarded.
    let svc = Svc::new("itl", "10.96.0.101")
        .tcp("http", HTTP, HTTP)
        .internal_local();
    let slice = Slice::v4("itl").tcp("http", HTTP).ready(&[C]);
    c.apply("itl", vec![svc.into(), slice.into()]);
    let vip = at("10.96.0.101", HTTP);
    let took = c.until_fails(Client, Tcp, vip, "timeout");
    println!("service written -> dropped: {took:?} (including the 400 ms attempt)");
    let r = c.probe(Client, Tcp, vip, 3, DROP_TIMEOUT);
    all_failed(&r, "timeout").unwrap();
}

pub fn services_for_another_proxy_and_headless_services_get_no_rules(c: &mut Cluster) {
    // ext owns the Service range: a connection kproxy leaves alone is answered by ext.
    let other = Svc::new("other", "10.96.0.110")
        .tcp("http", HTTP, HTTP)
        .label("service.kubernetes.io/service-proxy-name", "someone-else");
    let headless = Svc::headless("db").tcp("http", HTTP, HTTP);
    c.apply(
        "ignored",
        vec![
            other.into(),
            Slice::v4("other").tcp("http", HTTP).ready(&[A]).into(),
            headless.into(),
            Slice::v4("db")
                .tcp("http", HTTP)
                .ready(&[C])
                .label("service.kubernetes.io/headless", "")
                .into(),
        ],
    );
    // A Service kproxy does handle, written after the others: once it is served, kproxy has
    // read the ignored ones too.
    c.apply("web", web(&[B]));
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[B]);
    println!("services written -> web served: {took:?}");

    served_by(&c.tcp_n(Client, at("10.96.0.110", HTTP), 20), &[Ext]).unwrap();
    let rules = c.mode.rules(&c.topo.node);
    assert!(
        rules.contains(&B.v4()),
        "web's endpoint is missing from the rules:\n{rules}"
    );
    for (what, pod) in [("other's", A), ("the headless Service's", C)] {
        assert!(
            !rules.contains(&pod.v4()),
            "{what} endpoint {} is in the rules:\n{rules}",
            pod.v4()
        );
    }
}
