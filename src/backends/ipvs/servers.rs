//! The values IPVS mode programs — virtual servers, their keys, destinations — and their
//! conversion to and from the IPVS family's nested attributes (`netlink.rs`).
//!
//! Invariants: a NEW or SET of a service carries scheduler, flags (`{flags, mask}` with the
//! whole mask, so persistence is really cleared when off, and kproxy's mark `F_KPROXY` set on
//! every server it programs), timeout and netmask; of a
//! destination, NAT forwarding, weight and both thresholds; the kernel sends addresses as 16
//! bytes whatever the family, so decoding takes the family from AF (or the service's).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::netlink::{Cmd, CmdAttr, DestAttr, IpvsMessage, SvcAttr};
use crate::model::Protocol;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `IP_VS_SVC_F_PERSISTENT`.
const F_PERSISTENT: u32 = 1;
/// kproxy's mark on the virtual servers it programs: a service flag bit the kernel does not
/// define (ip_vs.h defines 0x0001..0x0020), which IPVS stores with the server and reports back
/// unchanged, and ignores otherwise. It tells kproxy's servers from another IPVS user's without
/// `kproxy-ipvs0` or its addresses, which can be deleted under it (`ip link del`).
pub const F_KPROXY: u32 = 0x0100_0000;
/// `IP_VS_CONN_F_MASQ`: NAT forwarding.
const FWD_MASQ: u32 = 0;

/// A virtual server's identity: address, protocol and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// A virtual server as kproxy programs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub key: ServiceKey,
    pub scheduler: String,
    /// ClientIP affinity: persistence with this timeout in seconds.
    pub persistence: Option<u32>,
    /// Carries kproxy's mark (`F_KPROXY`): kproxy programmed it. Always true in what kproxy
    /// compiles; false in a server read back from the kernel that kproxy did not program (or
    /// an older kproxy did).
    pub owned: bool,
}

/// A real server of a virtual server (always NAT forwarding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DestKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl DestKey {
    /// The smallest key (for range scans).
    pub const MIN: DestKey = DestKey {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        port: 0,
    };
}

/// A destination as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestState {
    pub key: DestKey,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
}

fn family(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn addr_of(af: u16, raw: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET if raw.len() >= 4 => Some(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()),
        AF_INET6 if raw.len() >= 16 => {
            Some(Ipv6Addr::from(<[u8; 16]>::try_from(&raw[..16]).ok()?).into())
        }
        _ => None,
    }
}

fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn protocol_of(n: u16) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

impl ServiceKey {
    /// The attributes that identify the virtual server (enough for DEL and GET).
    pub fn attrs(&self) -> Vec<SvcAttr> {
        vec![
            SvcAttr::Af(family(&self.addr)),
            SvcAttr::Protocol(protocol_number(self.protocol)),
            SvcAttr::Addr(octets(&self.addr)),
            SvcAttr::Port(self.port),
        ]
    }
}

impl VirtualServer {
    /// Every attribute a NEW or SET needs.
    pub fn attrs(&self) -> Vec<SvcAttr> {
        let mut a = self.key.attrs();
        let (mut flags, timeout) = match self.persistence {
            Some(t) => (F_PERSISTENT, t),
            None => (0, 0),
        };
        if self.owned {
            flags |= F_KPROXY;
        }
        let netmask = if self.key.addr.is_ipv4() {
            0xffff_ffff
        } else {
            128
        };
        a.extend([
            SvcAttr::Sched(self.scheduler.clone()),
            SvcAttr::Flags {
                flags,
                mask: 0xffff_ffff,
            },
            SvcAttr::Timeout(timeout),
            SvcAttr::Netmask(netmask),
        ]);
        a
    }

    /// The virtual server these attributes describe; None for fwmark services and protocols
    /// kproxy never programs.
    pub fn from_attrs(attrs: &[SvcAttr]) -> Option<VirtualServer> {
        let (mut af, mut proto, mut addr, mut port) = (None, None, None, None);
        let (mut scheduler, mut flags, mut timeout) = (String::new(), 0, 0);
        for a in attrs {
            match a {
                SvcAttr::Af(v) => af = Some(*v),
                SvcAttr::Protocol(v) => proto = Some(*v),
                SvcAttr::Addr(v) => addr = Some(v.as_slice()),
                SvcAttr::Port(v) => port = Some(*v),
                SvcAttr::Sched(s) => scheduler = s.clone(),
                SvcAttr::Flags { flags: f, .. } => flags = *f,
                SvcAttr::Timeout(t) => timeout = *t,
                _ => {}
            }
        }
        Some(VirtualServer {
            key: ServiceKey {
                addr: addr_of(af?, addr?)?,
                protocol: protocol_of(proto?)?,
                port: port?,
            },
            scheduler,
            persistence: (flags & F_PERSISTENT != 0).then_some(timeout),
            owned: flags & F_KPROXY != 0,
        })
    }
}

impl DestKey {
    /// The attributes that identify the destination (enough for DEL).
    pub fn attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::Addr(octets(&self.addr)),
            DestAttr::Port(self.port),
            DestAttr::AddrFamily(family(&self.addr)),
        ]
    }

    /// Every attribute a NEW or SET needs: NAT forwarding, `weight`, no thresholds.
    pub fn attrs_with_weight(&self, weight: u32) -> Vec<DestAttr> {
        let mut a = self.attrs();
        a.extend([
            DestAttr::FwdMethod(FWD_MASQ),
            DestAttr::Weight(weight),
            DestAttr::UThresh(0),
            DestAttr::LThresh(0),
        ]);
        a
    }
}

impl DestState {
    /// The destination these attributes describe, in a service of family `service_af`
    /// (used when the kernel does not send ADDR_FAMILY).
    pub fn from_attrs(attrs: &[DestAttr], service_af: IpAddr) -> Option<DestState> {
        let (mut af, mut addr, mut port) = (family(&service_af), None, None);
        let (mut weight, mut active, mut inactive) = (0, 0, 0);
        for a in attrs {
            match a {
                DestAttr::AddrFamily(v) => af = *v,
                DestAttr::Addr(v) => addr = Some(v.as_slice()),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::Weight(v) => weight = *v,
                DestAttr::ActiveConns(v) => active = *v,
                DestAttr::InactConns(v) => inactive = *v,
                _ => {}
            }
        }
        Some(DestState {
            key: DestKey {
                addr: addr_of(af, addr?)?,
                port: port?,
            },
            weight,
            active,
            inactive,
        })
    }
}

/// IPVS's connection timeouts (`--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout`,
/// `--ipvs-udp-timeout`); None keeps the kernel's (15 min, 2 min, 5 min).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Option<std::time::Duration>,
    pub tcp_fin: Option<std::time::Duration>,
    pub udp: Option<std::time::Duration>,
}

impl Timeouts {
    /// The SET_CONFIG that sets the given ones (whole seconds), or None when none is given.
    pub fn message(&self) -> Option<IpvsMessage> {
        let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let attrs: Vec<CmdAttr> = [
            self.tcp.map(|d| CmdAttr::TimeoutTcp(secs(d))),
            self.tcp_fin.map(|d| CmdAttr::TimeoutTcpFin(secs(d))),
            self.udp.map(|d| CmdAttr::TimeoutUdp(secs(d))),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!attrs.is_empty()).then_some(IpvsMessage {
            cmd: Cmd::SetConfig,
            attrs,
        })
    }
}
