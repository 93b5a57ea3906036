//! Live tests of the ctnetlink client, each inside a throwaway network namespace (conntrack
//! tables are per namespace): flows created over ctnetlink are dumped by protocol, deleted by
//! tuple, and a second delete reports the flow already gone.
//!
//! Invariants: root only (skip without, failure under CI=true); nothing outside the test's
//! namespace is read or changed.

use std::net::SocketAddr;

use super::{Ctnetlink, Flow};
use crate::backends::nft::transport_tests::Netns;
use crate::model::{IpFamily, Protocol};

fn flow(protocol: Protocol, src: &str, dst: &str, reply: &str) -> Flow {
    let at = |s: &str| s.parse::<SocketAddr>().unwrap();
    Flow {
        protocol,
        orig_src: at(src),
        orig_dst: at(dst),
        reply_src: at(reply),
    }
}

#[test]
fn flows_are_created_dumped_by_protocol_and_deleted_once() {
    let Some(ns) = Netns::new() else { return };
    let udp = flow(
        Protocol::Udp,
        "10.244.9.2:40000",
        "10.96.0.53:53",
        "10.0.1.1:5353",
    );
    let udp6 = flow(
        Protocol::Udp,
        "[fd00:244::2]:40000",
        "[fd00:96::53]:53",
        "[fd00:1::1]:5353",
    );
    let sctp = flow(
        Protocol::Sctp,
        "10.244.9.2:40001",
        "10.96.0.54:53",
        "10.0.1.1:5353",
    );
    let tcp = flow(
        Protocol::Tcp,
        "10.244.9.2:40002",
        "10.96.0.53:53",
        "10.0.1.1:5353",
    );
    let (u, u6, s, t) = (udp.clone(), udp6.clone(), sctp.clone(), tcp.clone());
    let (dumped, gone) = crate::netns::run_in(&ns.name, move || {
        let (udp, udp6, sctp, tcp) = (u, u6, s, t);
        let mut ct = Ctnetlink::open().unwrap();
        ct.create(IpFamily::V4, &udp, 600).unwrap();
        ct.create(IpFamily::V6, &udp6, 600).unwrap();
        ct.create(IpFamily::V4, &sctp, 600).unwrap();
        let tcp_made = ct.create(IpFamily::V4, &tcp, 600);
        let dumped = (
            ct.dump(IpFamily::V4, Protocol::Udp).unwrap(),
            ct.dump(IpFamily::V6, Protocol::Udp).unwrap(),
            ct.dump(IpFamily::V4, Protocol::Sctp).unwrap(),
            tcp_made
                .is_ok()
                .then(|| ct.dump(IpFamily::V4, Protocol::Tcp).unwrap()),
        );
        // The kernel filtered: it sent the one SCTP flow, not the UDP and TCP ones too.
        ct.dump(IpFamily::V4, Protocol::Sctp).unwrap();
        assert_eq!(
            ct.last_dump_received, 1,
            "the kernel did not filter by protocol"
        );
        let gone = (
            ct.delete(IpFamily::V4, &udp).unwrap(),
            ct.delete(IpFamily::V4, &udp).unwrap(),
            ct.dump(IpFamily::V4, Protocol::Udp).unwrap(),
            ct.dump(IpFamily::V4, Protocol::Sctp).unwrap().len(),
        );
        (dumped, gone)
    })
    .unwrap();
    let (v4, v6, sctp_flows, tcp_flows) = dumped;
    assert_eq!(v4, vec![udp.clone()], "UDP over IPv4 only");
    assert_eq!(v6, vec![udp6], "UDP over IPv6 only");
    assert_eq!(sctp_flows, vec![sctp], "SCTP only");
    if let Some(t) = tcp_flows {
        assert_eq!(t, vec![tcp], "TCP only");
    }
    let (first, second, after, sctp_left) = gone;
    assert!(first, "the first delete removes the flow");
    assert!(!second, "the second finds it gone (ENOENT is success)");
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(sctp_left, 1, "deleting the UDP flow left the SCTP one");
}
