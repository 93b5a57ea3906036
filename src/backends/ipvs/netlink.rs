//! The IPVS generic netlink family ("IPVS", version 1) as typed messages on
//! netlink-packet-generic: commands, the nested service and destination attributes, and the
//! conversion between those attributes and kproxy's `VirtualServer` / `Destination` values.
//!
//! Invariants (uapi `ip_vs.h`, kernel `ip_vs_ctl.c`): ports are big-endian; FLAGS is the 8-byte
//! `{flags, mask}` pair (a 4-byte value would zero the mask and drop persistence); a NEW or SET
//! of a service carries scheduler, flags, timeout and netmask, and of a destination carries
//! forwarding method, weight and both thresholds, or the kernel answers EINVAL. The kernel
//! sends addresses as 16 bytes whatever the family, so decoding takes the family from AF.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u32, parse_u16, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::model::Protocol;

/// The family's commands (`IPVS_CMD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    NewService = 1,
    SetService = 2,
    DelService = 3,
    GetService = 4,
    NewDest = 5,
    SetDest = 6,
    DelDest = 7,
    GetDest = 8,
    GetInfo = 15,
    Flush = 17,
}

impl TryFrom<u8> for Cmd {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Cmd, DecodeError> {
        Ok(match v {
            1 => Cmd::NewService,
            2 => Cmd::SetService,
            3 => Cmd::DelService,
            4 => Cmd::GetService,
            5 => Cmd::NewDest,
            6 => Cmd::SetDest,
            7 => Cmd::DelDest,
            8 => Cmd::GetDest,
            15 => Cmd::GetInfo,
            17 => Cmd::Flush,
            other => return Err(DecodeError::from(format!("unknown IPVS command {other}"))),
        })
    }
}

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

/// `IPVS_SVC_ATTR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvcAttr {
    Af(u16),
    Protocol(u16),
    /// 4 or 16 bytes as sent; the kernel always sends 16.
    Addr(Vec<u8>),
    Port(u16),
    Fwmark(u32),
    Sched(String),
    Flags {
        flags: u32,
        mask: u32,
    },
    Timeout(u32),
    Netmask(u32),
    Other(DefaultNla),
}

/// `IPVS_DEST_ATTR_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    Addr(Vec<u8>),
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    PersistConns(u32),
    AddrFamily(u16),
    Other(DefaultNla),
}

/// A top-level attribute: the nested service or destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    Other(DefaultNla),
}

/// One IPVS message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: Cmd,
    pub attrs: Vec<CmdAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        "IPVS"
    }
    fn command(&self) -> u8 {
        self.cmd as u8
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: Cmd::try_from(header.cmd)?,
            attrs: parse_all(buf, CmdAttr::parse)?,
        })
    }
}

fn parse_all<T>(
    buf: &[u8],
    each: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| nla.and_then(|nla| each(&nla)))
        .collect()
}

fn u32_at(v: &[u8]) -> Result<u32, DecodeError> {
    parse_u32(v)
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(a) => a.as_slice().buffer_len(),
            CmdAttr::Dest(a) => a.as_slice().buffer_len(),
            CmdAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            CmdAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            CmdAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CmdAttr::Service(a) => a.as_slice().emit(buffer),
            CmdAttr::Dest(a) => a.as_slice().emit(buffer),
            CmdAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl CmdAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<CmdAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            CMD_ATTR_SERVICE => CmdAttr::Service(parse_all(v, SvcAttr::parse)?),
            CMD_ATTR_DEST => CmdAttr::Dest(parse_all(v, DestAttr::parse)?),
            _ => CmdAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(a) => a.len(),
            SvcAttr::Sched(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => 1,
            SvcAttr::Protocol(_) => 2,
            SvcAttr::Addr(_) => 3,
            SvcAttr::Port(_) => 4,
            SvcAttr::Fwmark(_) => 5,
            SvcAttr::Sched(_) => 6,
            SvcAttr::Flags { .. } => 7,
            SvcAttr::Timeout(_) => 8,
            SvcAttr::Netmask(_) => 9,
            SvcAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16(b, *v).expect("2 bytes"),
            SvcAttr::Port(p) => b[..2].copy_from_slice(&p.to_be_bytes()),
            SvcAttr::Addr(a) => b[..a.len()].copy_from_slice(a),
            SvcAttr::Sched(s) => {
                b[..s.len()].copy_from_slice(s.as_bytes());
                b[s.len()] = 0;
            }
            SvcAttr::Flags { flags, mask } => {
                emit_u32(&mut b[..4], *flags).expect("4 bytes");
                emit_u32(&mut b[4..8], *mask).expect("4 bytes");
            }
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => {
                emit_u32(b, *v).expect("4 bytes")
            }
            SvcAttr::Other(n) => n.emit_value(b),
        }
    }
}

impl SvcAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<SvcAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            1 => SvcAttr::Af(parse_u16(v)?),
            2 => SvcAttr::Protocol(parse_u16(v)?),
            3 => SvcAttr::Addr(v.to_vec()),
            4 if v.len() >= 2 => SvcAttr::Port(u16::from_be_bytes([v[0], v[1]])),
            5 => SvcAttr::Fwmark(u32_at(v)?),
            6 => SvcAttr::Sched(cstr(v)),
            7 if v.len() >= 8 => SvcAttr::Flags {
                flags: u32_at(&v[..4])?,
                mask: u32_at(&v[4..8])?,
            },
            8 => SvcAttr::Timeout(u32_at(v)?),
            9 => SvcAttr::Netmask(u32_at(v)?),
            _ => SvcAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(a) => a.len(),
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::Other(n) => n.value_len(),
            _ => 4,
        }
    }
    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => 1,
            DestAttr::Port(_) => 2,
            DestAttr::FwdMethod(_) => 3,
            DestAttr::Weight(_) => 4,
            DestAttr::UThresh(_) => 5,
            DestAttr::LThresh(_) => 6,
            DestAttr::ActiveConns(_) => 7,
            DestAttr::InactConns(_) => 8,
            DestAttr::PersistConns(_) => 9,
            DestAttr::AddrFamily(_) => 11,
            DestAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, b: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => b[..a.len()].copy_from_slice(a),
            DestAttr::Port(p) => b[..2].copy_from_slice(&p.to_be_bytes()),
            DestAttr::AddrFamily(v) => emit_u16(b, *v).expect("2 bytes"),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v)
            | DestAttr::PersistConns(v) => emit_u32(b, *v).expect("4 bytes"),
            DestAttr::Other(n) => n.emit_value(b),
        }
    }
}

impl DestAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<DestAttr, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            1 => DestAttr::Addr(v.to_vec()),
            2 if v.len() >= 2 => DestAttr::Port(u16::from_be_bytes([v[0], v[1]])),
            3 => DestAttr::FwdMethod(u32_at(v)?),
            4 => DestAttr::Weight(u32_at(v)?),
            5 => DestAttr::UThresh(u32_at(v)?),
            6 => DestAttr::LThresh(u32_at(v)?),
            7 => DestAttr::ActiveConns(u32_at(v)?),
            8 => DestAttr::InactConns(u32_at(v)?),
            9 => DestAttr::PersistConns(u32_at(v)?),
            11 => DestAttr::AddrFamily(parse_u16(v)?),
            _ => DestAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `IP_VS_SVC_F_PERSISTENT`.
const F_PERSISTENT: u32 = 1;
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
        let (flags, timeout) = match self.persistence {
            Some(t) => (F_PERSISTENT, t),
            None => (0, 0),
        };
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

impl IpvsMessage {
    pub fn service(cmd: Cmd, attrs: Vec<SvcAttr>) -> IpvsMessage {
        IpvsMessage {
            cmd,
            attrs: vec![CmdAttr::Service(attrs)],
        }
    }

    pub fn dest(cmd: Cmd, service: &ServiceKey, dest: Vec<DestAttr>) -> IpvsMessage {
        IpvsMessage {
            cmd,
            attrs: vec![CmdAttr::Service(service.attrs()), CmdAttr::Dest(dest)],
        }
    }

    /// The nested service attributes, when present.
    pub fn service_attrs(&self) -> Option<&[SvcAttr]> {
        self.attrs.iter().find_map(|a| match a {
            CmdAttr::Service(s) => Some(s.as_slice()),
            _ => None,
        })
    }

    /// The nested destination attributes, when present.
    pub fn dest_attrs(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            CmdAttr::Dest(d) => Some(d.as_slice()),
            _ => None,
        })
    }
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
