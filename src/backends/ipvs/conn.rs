//! A blocking netlink connection for the IPVS backend's two protocols (generic netlink for IPVS,
//! rtnetlink for the dummy interface): batches of changes packed several to a datagram, and
//! requests whose answers are collected. Blocking on purpose: backend calls are synchronous, as
//! the nftables and iptables backends' are (the sync loop owns the thread while it syncs).
//!
//! Invariants: every change asks for an acknowledgement and a batch returns only after each of
//! its messages was answered; answers to other sequence numbers are skipped; the first refusal
//! of a batch is returned with the name of the message that caused it (the kernel still applied
//! the later ones, which the caller's full resync reconciles).

use std::fmt::Debug;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable,
};

/// Why a netlink exchange failed, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("opening a netlink socket: {0}")]
    Open(io::Error),
    #[error("sending over netlink: {0}")]
    Send(io::Error),
    #[error("receiving over netlink: {0}")]
    Receive(io::Error),
    #[error("decoding a netlink answer: {0}")]
    Malformed(String),
    #[error("the kernel refused {what}: {source}")]
    Refused { what: String, source: io::Error },
}

impl ConnError {
    /// The errno behind it, if the kernel or the socket gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConnError::Open(e) | ConnError::Send(e) | ConnError::Receive(e) => e.raw_os_error(),
            ConnError::Refused { source, .. } => source.raw_os_error(),
            ConnError::Malformed(_) => None,
        }
    }
}

/// Most bytes packed into one datagram of a batch.
const BATCH_BYTES: usize = 32 * 1024;

pub struct Conn {
    socket: netlink_sys::Socket,
    seq: u32,
}

/// One answer to one of our requests.
enum Answer<T> {
    Message(T),
    Ack(u32, Option<io::Error>),
    Done,
}

impl Conn {
    /// A socket of `protocol` in the calling thread's network namespace.
    pub fn open(protocol: isize) -> Result<Conn, ConnError> {
        let mut socket = netlink_sys::Socket::new(protocol).map_err(ConnError::Open)?;
        socket.bind_auto().map_err(ConnError::Open)?;
        crate::nfnetlink::grow_receive_buffer(&socket, RECEIVE_BUFFER);
        socket
            .connect(&netlink_sys::SocketAddr::new(0, 0))
            .map_err(ConnError::Open)?;
        Ok(Conn { socket, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Applies every message of `batch` (each with its name for errors), in order, each
    /// acknowledged; refusals with an errno in `tolerate` are not errors. Returns how many were
    /// sent.
    pub fn execute<T>(
        &mut self,
        batch: Vec<(T, String)>,
        tolerate: &[i32],
    ) -> Result<usize, ConnError>
    where
        T: NetlinkSerializable + Debug,
    {
        let total = batch.len();
        let mut pending: Vec<(u32, String)> = Vec::new();
        let mut datagram = Vec::new();
        let mut first_error = None;
        let mut iter = batch.into_iter().peekable();
        while let Some((msg, what)) = iter.next() {
            let seq = self.next_seq();
            datagram.extend(serialize(msg, NLM_F_REQUEST | NLM_F_ACK, seq));
            pending.push((seq, what));
            if datagram.len() >= BATCH_BYTES || iter.peek().is_none() {
                self.socket.send(&datagram, 0).map_err(ConnError::Send)?;
                datagram.clear();
                let error = self.wait_acks(&pending, tolerate)?;
                first_error = first_error.or(error);
                pending.clear();
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Reads until every message of `pending` was acknowledged; the first refusal, if any.
    fn wait_acks(
        &mut self,
        pending: &[(u32, String)],
        tolerate: &[i32],
    ) -> Result<Option<ConnError>, ConnError> {
        let (first, last) = (pending[0].0, pending[pending.len() - 1].0);
        let mut answered = 0;
        let mut error = None;
        while answered < pending.len() {
            let (data, _) = self.socket.recv_from_full().map_err(ConnError::Receive)?;
            for answer in answers::<Opaque>(&data, None)? {
                let Answer::Ack(seq, result) = answer else {
                    continue;
                };
                if seq < first || seq > last {
                    continue;
                }
                answered += 1;
                let result =
                    result.filter(|e| !e.raw_os_error().is_some_and(|n| tolerate.contains(&n)));
                if let (Some(source), None) = (result, &error) {
                    let what = pending
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map(|(_, w)| w.clone())
                        .unwrap_or_default();
                    error = Some(ConnError::Refused { what, source });
                }
            }
        }
        Ok(error)
    }

    /// Sends one request (`flags`: NLM_F_DUMP for a dump, NLM_F_ACK otherwise) and collects the
    /// messages answering it until its end.
    pub fn request<T>(&mut self, msg: T, flags: u16, what: &str) -> Result<Vec<T>, ConnError>
    where
        T: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let seq = self.next_seq();
        let buf = serialize(msg, flags, seq);
        self.socket.send(&buf, 0).map_err(ConnError::Send)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(ConnError::Receive)?;
            for answer in answers::<T>(&data, Some(seq))? {
                match answer {
                    Answer::Message(m) => out.push(m),
                    Answer::Done | Answer::Ack(_, None) => return Ok(out),
                    Answer::Ack(_, Some(source)) => {
                        return Err(ConnError::Refused {
                            what: what.to_string(),
                            source,
                        });
                    }
                }
            }
        }
    }
}

/// Room for the acknowledgements of one `BATCH_BYTES` datagram: each comes as its own
/// socket buffer (~0.7 KiB of accounting for ~40 bytes), so the ~300 of a full datagram
/// overflow the default 208 KiB and the receive fails with ENOBUFS (seen at 10,000 Services).
/// Taken only while answers wait.
const RECEIVE_BUFFER: i32 = 4 << 20;

fn serialize<T: NetlinkSerializable + Debug>(payload: T, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// A payload we never look into (acknowledgements only).
#[derive(Debug)]
struct Opaque;

impl NetlinkDeserializable for Opaque {
    type Error = netlink_packet_core::DecodeError;
    fn deserialize(_: &NetlinkHeader, _: &[u8]) -> Result<Opaque, Self::Error> {
        Ok(Opaque)
    }
}

/// The answers in one datagram, to sequence number `seq` (None: any).
fn answers<T>(data: &[u8], seq: Option<u32>) -> Result<Vec<Answer<T>>, ConnError>
where
    T: NetlinkDeserializable + Debug,
{
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 16 <= data.len() {
        let len = u32::from_ne_bytes(data[offset..offset + 4].try_into().expect("4 bytes"));
        let len = len as usize;
        if len < 16 || offset + len > data.len() {
            return Err(ConnError::Malformed(format!(
                "a message of {len} bytes at offset {offset} of {}",
                data.len()
            )));
        }
        let message = NetlinkMessage::<T>::deserialize(&data[offset..offset + len])
            .map_err(|e| ConnError::Malformed(e.to_string()))?;
        offset += len.div_ceil(4) * 4;
        let s = message.header.sequence_number;
        if seq.is_some_and(|want| want != s) {
            continue;
        }
        out.push(match message.payload {
            NetlinkPayload::Done(_) => Answer::Done,
            NetlinkPayload::Error(e) => Answer::Ack(
                s,
                e.code.map(|code| io::Error::from_raw_os_error(-code.get())),
            ),
            NetlinkPayload::InnerMessage(m) => Answer::Message(m),
            _ => continue,
        });
    }
    Ok(out)
}
