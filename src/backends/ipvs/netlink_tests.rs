use std::net::IpAddr;

use super::super::fake_kernel::{decode, wire};
use super::*;
use crate::backends::ipvs::Timeouts;
use crate::model::Protocol;

fn vs(addr: &str, persistence: Option<u32>) -> VirtualServer {
    VirtualServer {
        key: ServiceKey {
            addr: addr.parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 8080,
        },
        scheduler: "rr".into(),
        persistence,
        owned: true,
    }
}

/// The nested service attribute's value bytes in `buf` (after nlmsghdr 16 + genlmsghdr 4 +
/// the nested header 4).
fn service_bytes(buf: &[u8]) -> &[u8] {
    &buf[24..]
}

#[test]
fn a_new_service_decodes_back_to_the_same_virtual_server() {
    for (addr, persistence) in [("10.96.0.10", None), ("fd00::10", Some(10800))] {
        let v = vs(addr, persistence);
        let buf = wire(IpvsMessage::service(Cmd::NewService, v.attrs()));
        let back = decode(&buf);
        assert_eq!(back.cmd, Cmd::NewService);
        assert_eq!(
            VirtualServer::from_attrs(back.service_attrs().unwrap()),
            Some(v)
        );
    }
}

#[test]
fn a_full_service_carries_scheduler_flags_timeout_and_netmask() {
    let attrs = vs("10.96.0.10", Some(300)).attrs();
    assert!(attrs.contains(&SvcAttr::Sched("rr".into())));
    assert!(attrs.contains(&SvcAttr::Flags {
        flags: 1 | F_KPROXY,
        mask: 0xffff_ffff
    }));
    assert!(attrs.contains(&SvcAttr::Timeout(300)));
    assert!(attrs.contains(&SvcAttr::Netmask(0xffff_ffff)));
    let v6 = vs("fd00::1", None).attrs();
    assert!(v6.contains(&SvcAttr::Netmask(128)));
    assert!(v6.contains(&SvcAttr::Flags {
        flags: F_KPROXY,
        mask: 0xffff_ffff
    }));
}

#[test]
fn kproxys_mark_is_read_back_and_a_server_without_it_is_not_owned() {
    let mut theirs = vs("10.96.0.10", Some(300));
    theirs.owned = false;
    let attrs = theirs.attrs();
    assert!(attrs.contains(&SvcAttr::Flags {
        flags: 1,
        mask: 0xffff_ffff
    }));
    // As the kernel reports servers: with IP_VS_SVC_F_HASHED (0x2) set.
    let reported = |flags| {
        let mut a = theirs.key.attrs();
        a.extend([
            SvcAttr::Sched("rr".into()),
            SvcAttr::Flags {
                flags,
                mask: 0xffff_ffff,
            },
            SvcAttr::Timeout(300),
        ]);
        VirtualServer::from_attrs(&a).unwrap()
    };
    assert!(!reported(0x3).owned);
    let ours = reported(0x3 | F_KPROXY);
    assert!(ours.owned);
    assert_eq!(ours.persistence, Some(300));
}

#[test]
fn ports_are_big_endian_and_flags_are_eight_bytes_on_the_wire() {
    let buf = wire(IpvsMessage::service(
        Cmd::NewService,
        vs("10.96.0.10", Some(300)).attrs(),
    ));
    let attrs = service_bytes(&buf);
    let mut found = std::collections::BTreeMap::new();
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let len = u16::from_ne_bytes([attrs[at], attrs[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[at + 2], attrs[at + 3]]);
        found.insert(kind, attrs[at + 4..at + len].to_vec());
        at += len.div_ceil(4) * 4;
    }
    assert_eq!(found[&4], 8080u16.to_be_bytes().to_vec(), "PORT");
    assert_eq!(found[&3], vec![10, 96, 0, 10], "ADDR");
    assert_eq!(found[&6], b"rr\0".to_vec(), "SCHED_NAME");
    let mut flags = (1u32 | F_KPROXY).to_ne_bytes().to_vec();
    flags.extend(0xffff_ffffu32.to_ne_bytes());
    assert_eq!(found[&7], flags, "FLAGS {{flags, mask}}");
    assert_eq!(found[&8], 300u32.to_ne_bytes().to_vec(), "TIMEOUT");
}

#[test]
fn the_service_attribute_is_marked_nested() {
    let buf = wire(IpvsMessage::service(
        Cmd::DelService,
        vs("10.0.0.1", None).key.attrs(),
    ));
    let kind = u16::from_ne_bytes([buf[22], buf[23]]);
    assert_eq!(kind, 1 | 0x8000);
    assert_eq!(buf[16], Cmd::DelService as u8, "genl command");
    assert_eq!(buf[17], 1, "family version");
}

#[test]
fn a_new_destination_decodes_back_with_nat_forwarding_and_its_weight() {
    let service = vs("10.96.0.10", None).key;
    let dest = DestKey {
        addr: "10.0.0.5".parse().unwrap(),
        port: 9376,
    };
    let buf = wire(IpvsMessage::dest(
        Cmd::NewDest,
        &service,
        dest.attrs_with_weight(1),
    ));
    let back = decode(&buf);
    assert_eq!(back.cmd, Cmd::NewDest);
    let d = back.dest_attrs().unwrap();
    assert!(d.contains(&DestAttr::FwdMethod(0)));
    assert!(d.contains(&DestAttr::UThresh(0)) && d.contains(&DestAttr::LThresh(0)));
    let state = DestState::from_attrs(d, service.addr).unwrap();
    assert_eq!((state.key, state.weight), (dest, 1));
    let s = VirtualServer::from_attrs(back.service_attrs().unwrap()).unwrap();
    assert_eq!(s.key, service);
}

#[test]
fn kernel_addresses_of_sixteen_bytes_decode_by_the_service_family() {
    let mut raw = vec![192, 168, 1, 7];
    raw.resize(16, 0);
    let attrs = vec![
        SvcAttr::Af(2),
        SvcAttr::Protocol(17),
        SvcAttr::Addr(raw.clone()),
        SvcAttr::Port(53),
        SvcAttr::Sched("sh".into()),
        SvcAttr::Flags { flags: 0, mask: 0 },
    ];
    let v = VirtualServer::from_attrs(&attrs).unwrap();
    assert_eq!(v.key.addr, "192.168.1.7".parse::<IpAddr>().unwrap());
    assert_eq!(v.key.protocol, Protocol::Udp);
    assert_eq!(v.scheduler, "sh");
    let d = DestState::from_attrs(
        &[
            DestAttr::Addr(raw),
            DestAttr::Port(53),
            DestAttr::Weight(0),
            DestAttr::ActiveConns(3),
            DestAttr::InactConns(4),
        ],
        v.key.addr,
    )
    .unwrap();
    assert_eq!((d.weight, d.active, d.inactive), (0, 3, 4));
}

#[test]
fn connection_timeouts_are_top_level_seconds() {
    let msg = Timeouts {
        tcp: Some(std::time::Duration::from_secs(900)),
        tcp_fin: None,
        udp: Some(std::time::Duration::from_millis(30_500)),
    }
    .message()
    .unwrap();
    let back = decode(&wire(msg));
    assert_eq!(back.cmd, Cmd::SetConfig);
    assert_eq!(
        back.attrs,
        [CmdAttr::TimeoutTcp(900), CmdAttr::TimeoutUdp(30)]
    );
    assert_eq!(Timeouts::default().message(), None);
}

#[test]
fn unknown_attributes_survive_a_round_trip() {
    let msg = IpvsMessage {
        cmd: Cmd::GetInfo,
        attrs: vec![CmdAttr::Other(DefaultNla::new(9, vec![1, 2, 3, 4]))],
    };
    assert_eq!(decode(&wire(msg.clone())), msg);
}
