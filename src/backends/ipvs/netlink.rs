//! The IPVS generic netlink family ("IPVS", version 1) as typed messages on
//! netlink-packet-generic: commands and the nested service and destination attributes
//! (`servers.rs` converts them to and from kproxy's virtual servers and destinations).
//!
//! Invariants (uapi `ip_vs.h`, kernel `ip_vs_ctl.c`): ports are big-endian; FLAGS is the 8-byte
//! `{flags, mask}` pair (a 4-byte value would zero the mask and drop persistence); a NEW or SET
//! of a service carries scheduler, flags, timeout and netmask, and of a destination carries
//! forwarding method, weight and both thresholds, or the kernel answers EINVAL. The kernel
//! sends addresses as 16 bytes whatever the family, so decoding takes the family from AF.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u32, parse_u16, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

pub use super::servers::{DestKey, DestState, F_KPROXY, ServiceKey, VirtualServer};

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
    SetConfig = 12,
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
            12 => Cmd::SetConfig,
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

/// A top-level attribute: the nested service or destination, or a connection timeout (seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
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
            CmdAttr::TimeoutTcp(_) | CmdAttr::TimeoutTcpFin(_) | CmdAttr::TimeoutUdp(_) => 4,
            CmdAttr::Other(n) => n.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            CmdAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            CmdAttr::TimeoutTcp(_) => 4,
            CmdAttr::TimeoutTcpFin(_) => 5,
            CmdAttr::TimeoutUdp(_) => 6,
            CmdAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CmdAttr::Service(a) => a.as_slice().emit(buffer),
            CmdAttr::Dest(a) => a.as_slice().emit(buffer),
            CmdAttr::TimeoutTcp(v) | CmdAttr::TimeoutTcpFin(v) | CmdAttr::TimeoutUdp(v) => {
                emit_u32(buffer, *v).expect("4 bytes")
            }
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
            4 => CmdAttr::TimeoutTcp(u32_at(v)?),
            5 => CmdAttr::TimeoutTcpFin(u32_at(v)?),
            6 => CmdAttr::TimeoutUdp(u32_at(v)?),
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
