//! A small ctnetlink client on `netlink-packet-netfilter`: dump the flows of one family and
//! layer-4 protocol (filtered in the kernel with CTA_FILTER, Linux ≥ 5.8, and again here, so an
//! older kernel's unfiltered dump gives the same answer), delete one flow by its original tuple,
//! and create one (for tests and benches).
//!
//! Invariants: one socket per client, opened in the calling thread's network namespace; every
//! request waits for its answer before the next is sent; ENOENT on delete means the flow is
//! already gone, which is success (`Ok(false)`); nothing here decides what to delete.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as CtProtocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::Socket;

use super::stale::Flow;
use crate::model::{IpFamily, Protocol};
use crate::nfnetlink::{attr, nfproto, request};

/// CTA_FILTER (after CTA_SYNPROXY in enum ctattr_type) and its attributes and flag; the tuple
/// attributes and message type the hand-written dump request uses.
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_FLAG_CTA_PROTO_NUM: u32 = 1 << 3;
const NLA_F_NESTED: u16 = 1 << 15;

/// Why a ctnetlink step failed, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum CtnetlinkError {
    #[error("opening a netfilter netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("sending a ctnetlink request: {0}")]
    Send(std::io::Error),
    #[error("receiving a ctnetlink answer: {0}")]
    Receive(std::io::Error),
    #[error("the kernel refused the {what}: {source}")]
    Refused {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("malformed ctnetlink message: {0}")]
    Malformed(String),
}

pub struct Ctnetlink {
    socket: Socket,
    seq: u32,
    /// How many flows the kernel sent for the last dump, before this side's own filter.
    pub last_dump_received: usize,
}

fn nf_family(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn ct_protocol(p: Protocol) -> CtProtocol {
    match p {
        Protocol::Tcp => CtProtocol::Tcp,
        Protocol::Udp => CtProtocol::Udp,
        Protocol::Sctp => CtProtocol::Sctp,
    }
}

fn protocol_of(p: CtProtocol) -> Option<Protocol> {
    match p {
        CtProtocol::Tcp => Some(Protocol::Tcp),
        CtProtocol::Udp => Some(Protocol::Udp),
        CtProtocol::Sctp => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The tuple attributes of `src -> dst` over `protocol`.
fn tuple(protocol: Protocol, src: SocketAddr, dst: SocketAddr) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(src.ip()),
            IPTuple::DestinationAddress(dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(ct_protocol(protocol)),
            ProtoTuple::SourcePort(src.port()),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ]
}

/// (protocol, source, destination) of a tuple attribute, when complete.
fn parse_tuple(t: &[Tuple]) -> Option<(Protocol, SocketAddr, SocketAddr)> {
    let (mut src, mut dst): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    let (mut proto, mut sport, mut dport) = (None, None, None);
    for part in t {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(p) => proto = protocol_of(*p),
                        ProtoTuple::SourcePort(p) => sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        proto?,
        SocketAddr::new(src?, sport?),
        SocketAddr::new(dst?, dport?),
    ))
}

/// The flow a dumped message describes (`None` for protocols or shapes kproxy ignores).
fn flow_of(attributes: &[ConntrackAttribute]) -> Option<Flow> {
    let (mut orig, mut reply) = (None, None);
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = parse_tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = parse_tuple(t),
            _ => {}
        }
    }
    let (protocol, orig_src, orig_dst) = orig?;
    let (_, reply_src, _) = reply?;
    Some(Flow {
        protocol,
        orig_src,
        orig_dst,
        reply_src,
    })
}

/// The dump request for `protocol` flows of `family`, filtered in the kernel: CTA_TUPLE_ORIG
/// holding only the protocol, and CTA_FILTER saying that only the protocol is to be compared.
/// Written by hand: the kernel parses CTA_FILTER strictly and wants NLA_F_NESTED on it, which
/// `netlink-packet-core` 0.9 cannot set on an attribute it does not know.
fn dump_request(family: IpFamily, protocol: Protocol, seq: u32) -> Vec<u8> {
    let mut proto = Vec::new();
    attr(
        &mut proto,
        CTA_PROTO_NUM,
        &[u8::from(ct_protocol(protocol))],
    );
    let mut tuple_proto = Vec::new();
    attr(&mut tuple_proto, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut filter = Vec::new();
    let flags = CTA_FILTER_FLAG_CTA_PROTO_NUM.to_ne_bytes();
    attr(&mut filter, CTA_FILTER_ORIG_FLAGS, &flags);
    attr(&mut filter, CTA_FILTER_REPLY_FLAGS, &0u32.to_ne_bytes());
    let mut attrs = Vec::new();
    attr(&mut attrs, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple_proto);
    attr(&mut attrs, CTA_FILTER | NLA_F_NESTED, &filter);
    let kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    request(
        kind,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        nfproto(family),
        &attrs,
    )
}

impl Ctnetlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Ctnetlink, CtnetlinkError> {
        let socket = crate::nfnetlink::socket().map_err(CtnetlinkError::Socket)?;
        Ok(Ctnetlink {
            socket,
            seq: 0,
            last_dump_received: 0,
        })
    }

    /// The sequence number of a new request (answers to older ones are skipped).
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(
        &mut self,
        family: IpFamily,
        flags: u16,
        message: ConntrackMessage,
    ) -> Result<(), CtnetlinkError> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.next_seq();
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(nf_family(family), 0, 0),
                message,
            )),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(CtnetlinkError::Send)?;
        Ok(())
    }

    /// Reads answers to the last request, handing each conntrack message to `each`, until the
    /// dump's end or the request's acknowledgement. An error answer is returned as its errno.
    fn answers(
        &mut self,
        mut each: impl FnMut(&[ConntrackAttribute]),
    ) -> Result<Result<(), std::io::Error>, CtnetlinkError> {
        loop {
            let (buf, _) = self
                .socket
                .recv_from_full()
                .map_err(CtnetlinkError::Receive)?;
            let mut offset = 0;
            while offset < buf.len() {
                let message = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..])
                    .map_err(|e| CtnetlinkError::Malformed(e.to_string()))?;
                let len = message.header.length as usize;
                if len == 0 {
                    return Err(CtnetlinkError::Malformed("a zero-length message".into()));
                }
                offset += len.div_ceil(4) * 4;
                if message.header.sequence_number != self.seq {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(Ok(())),
                    NetlinkPayload::Error(e) => {
                        return Ok(match e.code {
                            None => Ok(()),
                            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                        });
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                        ..
                    }) => each(&attrs),
                    _ => {}
                }
            }
        }
    }

    /// Every flow of `family` over `protocol`.
    pub fn dump(
        &mut self,
        family: IpFamily,
        protocol: Protocol,
    ) -> Result<Vec<Flow>, CtnetlinkError> {
        let request = dump_request(family, protocol, self.next_seq());
        self.socket
            .send(&request, 0)
            .map_err(CtnetlinkError::Send)?;
        let mut flows = Vec::new();
        let mut received = 0;
        self.answers(|attrs| {
            received += 1;
            if let Some(f) = flow_of(attrs).filter(|f| f.protocol == protocol) {
                flows.push(f);
            }
        })?
        .map_err(|source| CtnetlinkError::Refused {
            what: "flow dump",
            source,
        })?;
        self.last_dump_received = received;
        Ok(flows)
    }

    /// Deletes `flow` (by its original tuple); `Ok(false)` when it was already gone.
    pub fn delete(&mut self, family: IpFamily, flow: &Flow) -> Result<bool, CtnetlinkError> {
        let orig = tuple(flow.protocol, flow.orig_src, flow.orig_dst);
        let request = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig)]);
        self.send(family, NLM_F_REQUEST | NLM_F_ACK, request)?;
        match self.answers(|_| {})? {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(CtnetlinkError::Refused {
                what: "flow deletion",
                source,
            }),
        }
    }

    /// Creates `flow` (its reply going back to the original source) with `timeout_s` to live.
    pub fn create(
        &mut self,
        family: IpFamily,
        flow: &Flow,
        timeout_s: u32,
    ) -> Result<(), CtnetlinkError> {
        let request = ConntrackMessage::New(vec![
            ConntrackAttribute::CtaTupleOrig(tuple(flow.protocol, flow.orig_src, flow.orig_dst)),
            ConntrackAttribute::CtaTupleReply(tuple(flow.protocol, flow.reply_src, flow.orig_src)),
            ConntrackAttribute::CtaTimeout(timeout_s),
        ]);
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.send(family, flags, request)?;
        self.answers(|_| {})?
            .map_err(|source| CtnetlinkError::Refused {
                what: "flow creation",
                source,
            })
    }
}

#[cfg(test)]
#[path = "ctnetlink_tests.rs"]
mod tests;
