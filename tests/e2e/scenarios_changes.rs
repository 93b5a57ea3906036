//! Scenarios for changes while kproxy runs: an endpoint added or removed, a Service added, its
//! port changed, the Service deleted, and a broken manifest next to good ones. Each prints how
//! long the change took to show in real traffic.
//!
//! Invariants: the state before a change is established (traffic shows it) before the change is
//! written, so the printed latency is the change's own; where the state after a change is "not
//! proxied", `ext`, which owns the Service range, answers un-DNATed connections, so it is seen as
//! soon as it happens instead of after a timeout.

use crate::client::{Proto::*, at, served_by};
use crate::cluster::Cluster;
use crate::manifests::{Slice, Svc, WEB, web, web_service};
use crate::topology::{A, ALT, B, C, Client, DNS, Ext, HTTP};

pub fn an_added_endpoint_starts_receiving_traffic(c: &mut Cluster) {
    c.apply("web", web(&[A, B]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B]);

    c.apply("web", web(&[A, B, C]));
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!("endpoint added -> traffic: {took:?}");
    let took_udp = c.until_served(Client, Udp, at(WEB, DNS), &[A, B, C]);
    println!("endpoint added -> UDP traffic (after TCP): {took_udp:?}");
}

pub fn a_removed_endpoint_stops_receiving_traffic(c: &mut Cluster) {
    c.apply("web", web(&[A, B, C]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);

    c.apply("web", web(&[A, B]));
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B]);
    println!("endpoint removed -> traffic: {took:?}");
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 60), &[A, B]).unwrap();
    served_by(&c.udp_n(Client, at(WEB, DNS), 30), &[A, B]).unwrap();
}

pub fn an_added_service_becomes_reachable(c: &mut Cluster) {
    let vip = at("10.96.0.120", HTTP);
    // Not a Service yet: ext answers.
    served_by(&c.tcp_n(Client, vip, 3), &[Ext]).unwrap();

    let svc = Svc::new("api", "10.96.0.120").tcp("http", HTTP, HTTP);
    let slice = Slice::v4("api").tcp("http", HTTP).ready(&[A, B]);
    c.apply("api", vec![svc.into(), slice.into()]);
    let took = c.until_served(Client, Tcp, vip, &[A, B]);
    println!("service added -> traffic: {took:?}");
}

/// Port 8081 → 8082: the new port serves, and the old one is no longer a Service port (ext,
/// which owns the ClusterIP and serves 8081, answers it).
pub fn a_changed_service_port_moves_traffic_to_the_new_port(c: &mut Cluster) {
    let service = |port| {
        vec![
            Svc::new("web", WEB).tcp("http", port, HTTP).into(),
            Slice::v4("web").tcp("http", HTTP).ready(&[A, B, C]).into(),
        ]
    };
    c.apply("web", service(ALT));
    c.until_served(Client, Tcp, at(WEB, ALT), &[A, B, C]);

    c.apply("web", service(8082));
    let took = c.until_served(Client, Tcp, at(WEB, 8082), &[A, B, C]);
    println!("port changed -> traffic on the new port: {took:?}");
    let took = if c.mode.undefined_cluster_ip_ports_refuse() {
        c.until_fails(Client, Tcp, at(WEB, ALT), "refused")
    } else {
        c.until_served(Client, Tcp, at(WEB, ALT), &[Ext])
    };
    println!("port changed -> old port released (after the new one): {took:?}");
}

pub fn a_deleted_service_is_no_longer_proxied(c: &mut Cluster) {
    let vip = at(WEB, HTTP);
    let service = vec![
        Svc::new("web", WEB).tcp("http", HTTP, HTTP).into(),
        Slice::v4("web").tcp("http", HTTP).ready(&[A, B, C]).into(),
    ];
    c.apply("web", service);
    c.until_served(Client, Tcp, vip, &[A, B, C]);

    c.delete("web");
    let took = c.until_served(Client, Tcp, vip, &[Ext]);
    println!("service deleted -> traffic no longer proxied: {took:?}");
    served_by(&c.tcp_n(Client, vip, 20), &[Ext]).unwrap();
}

pub fn a_broken_manifest_leaves_the_good_services_working(c: &mut Cluster) {
    c.apply("web", web(&[A, B]));
    c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B]);

    // A file that is not YAML, and one whose Service the API server would refuse.
    c.write_raw("broken.yaml", "kind: Service\nmetadata: {name: [unclosed\n");
    c.apply(
        "bad-ip",
        vec![Svc::new("bad", "10.96.0.300").tcp("http", 80, HTTP).into()],
    );
    let took = c.until_metric_positive("kproxy_rejected_objects_total{reason=\"parse\"}");
    println!("broken file written -> rejection counted: {took:?}");
    c.until_metric_positive("kproxy_rejected_objects_total{reason=\"bad_ip\"}");
    served_by(&c.tcp_n(Client, at(WEB, HTTP), 30), &[A, B]).unwrap();

    // Good changes still apply: web gains pod-c, and a new Service appears.
    c.apply("web", web(&[A, B, C]));
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A, B, C]);
    println!("good change next to broken files -> traffic: {took:?}");
    let svc = Svc::new("api", "10.96.0.121").tcp("http", 80, HTTP);
    let slice = Slice::v4("api").tcp("http", HTTP).ready(&[C]);
    c.apply("api", vec![svc.into(), slice.into()]);
    let took = c.until_served(Client, Tcp, at("10.96.0.121", 80), &[C]);
    println!("service added next to broken files -> traffic: {took:?}");

    // A bad document inside an otherwise good file spoils only itself.
    c.apply(
        "web",
        vec![
            web_service(),
            Svc::new("bad2", "10.96.0.999").tcp("http", 80, HTTP).into(),
            web(&[A]).remove(1),
        ],
    );
    let took = c.until_served(Client, Tcp, at(WEB, HTTP), &[A]);
    println!("file with one bad document -> the rest applied: {took:?}");
    let r = c.tcp_n(Client, at("10.96.0.121", 80), 5);
    served_by(&r, &[C]).unwrap();
}
