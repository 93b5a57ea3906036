//! nf_tables set elements over netlink: additions and deletions packed into one batch (one
//! atomic transaction, like one `nft -f`), sent on a socket kept between batches. It spares
//! libnftables parsing and resolving element text, most of a cold start's time at scale.
//!
//! Invariants: a batch is `BATCH_BEGIN`, `NEWSETELEM`/`DELSETELEM` messages of at most
//! `MESSAGE_BYTES` each (consecutive elements of one set and verb share a message), then
//! `BATCH_END`, sent in one `send` (the kernel applies a batch only whole); every element
//! message asks for an ack, so a batch succeeded exactly when all of them came back without an
//! error, and the first error means the kernel applied none of it. After an error or a broken
//! exchange the socket is dropped, so no late reply is read as the next batch's.
//! Keys and data arrive as the kernel's bytes; what they mean is the caller's business.

use std::os::fd::AsRawFd;

use super::uapi::{
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA,
    NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
    NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR,
};
use crate::model::IpFamily;
use crate::nfnetlink;

/// A message is closed once it holds this many bytes (a nested attribute's length is 16 bits).
const MESSAGE_BYTES: usize = 32 * 1024;

/// How long to wait for the kernel's answer to a batch before giving up on the socket.
const ANSWER_TIMEOUT_SECS: libc::time_t = 60;

/// Whether an element is added or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Add,
    Delete,
}

/// A map element's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'a> {
    /// Plain bytes (an address, a port, a concatenation of them).
    Value(&'a [u8]),
    /// A verdict: `code` as nf_tables numbers it (NF_DROP 0, NF_ACCEPT 1, NFT_JUMP -3, NFT_GOTO
    /// -4), with the target chain of a jump or goto.
    Verdict { code: i32, chain: Option<&'a str> },
}

pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;

/// The message being filled: where it and its element list start, and what it is for.
struct Open {
    start: usize,
    list: usize,
    verb: Verb,
    family: IpFamily,
    set: String,
}

/// A batch of element operations on one table, as the bytes the kernel reads.
pub struct ElementBatch {
    table: String,
    buf: Vec<u8>,
    open: Option<Open>,
    /// Per element message: its set, for naming it in an error (its sequence number is its
    /// index plus 2; the batch begin is 1).
    sets: Vec<String>,
    elements: usize,
}

impl ElementBatch {
    pub fn new(table: &str) -> ElementBatch {
        let mut buf = Vec::new();
        batch_marker(&mut buf, NFNL_MSG_BATCH_BEGIN, 1);
        ElementBatch {
            table: table.to_string(),
            buf,
            open: None,
            sets: Vec::new(),
            elements: 0,
        }
    }

    /// Element operations so far.
    pub fn len(&self) -> usize {
        self.elements
    }

    pub fn is_empty(&self) -> bool {
        self.elements == 0
    }

    /// Appends one element: its key, the last key of its range in a concatenation with a range
    /// (`flags interval`), and for a map its data (deletions need only the key and key end).
    pub fn push(
        &mut self,
        verb: Verb,
        family: IpFamily,
        set: &str,
        key: &[u8],
        key_end: Option<&[u8]>,
        data: Option<Data>,
    ) {
        self.push_commented(verb, family, set, key, key_end, data, None);
    }

    /// `push`, with the element's comment (`comment "…"` in nft's text): its user data, as
    /// nft writes it (`comment_tlv`). At most 255 bytes; kproxy's are at most 128.
    #[allow(clippy::too_many_arguments)]
    pub fn push_commented(
        &mut self,
        verb: Verb,
        family: IpFamily,
        set: &str,
        key: &[u8],
        key_end: Option<&[u8]>,
        data: Option<Data>,
        comment: Option<&str>,
    ) {
        let same = self.open.as_ref().is_some_and(|o| {
            o.verb == verb
                && o.family == family
                && o.set == set
                && self.buf.len() - o.start < MESSAGE_BYTES
        });
        if !same {
            self.close();
            self.open_message(verb, family, set);
        }
        let elem = begin_nest(&mut self.buf, NFTA_LIST_ELEM);
        let k = begin_nest(&mut self.buf, NFTA_SET_ELEM_KEY);
        nfnetlink::attr(&mut self.buf, NFTA_DATA_VALUE, key);
        end_nest(&mut self.buf, k);
        if let Some(end) = key_end {
            let e = begin_nest(&mut self.buf, NFTA_SET_ELEM_KEY_END);
            nfnetlink::attr(&mut self.buf, NFTA_DATA_VALUE, end);
            end_nest(&mut self.buf, e);
        }
        if let Some(data) = data {
            let d = begin_nest(&mut self.buf, NFTA_SET_ELEM_DATA);
            match data {
                Data::Value(bytes) => nfnetlink::attr(&mut self.buf, NFTA_DATA_VALUE, bytes),
                Data::Verdict { code, chain } => {
                    let v = begin_nest(&mut self.buf, NFTA_DATA_VERDICT);
                    nfnetlink::attr(&mut self.buf, NFTA_VERDICT_CODE, &code.to_be_bytes());
                    if let Some(chain) = chain {
                        nfnetlink::attr(&mut self.buf, NFTA_VERDICT_CHAIN, &c_string(chain));
                    }
                    end_nest(&mut self.buf, v);
                }
            }
            end_nest(&mut self.buf, d);
        }
        if let Some(tlv) = comment.and_then(comment_tlv) {
            nfnetlink::attr(&mut self.buf, NFTA_SET_ELEM_USERDATA, &tlv);
        }
        end_nest(&mut self.buf, elem);
        self.elements += 1;
    }

    fn open_message(&mut self, verb: Verb, family: IpFamily, set: &str) {
        let (kind, flags) = match verb {
            Verb::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            Verb::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        let seq = self.sets.len() as u32 + 2;
        let start = self.buf.len();
        let header = nfnetlink::request(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            nfnetlink::nfproto(family),
            &[],
        );
        self.buf.extend_from_slice(&header);
        nfnetlink::attr(
            &mut self.buf,
            NFTA_SET_ELEM_LIST_TABLE,
            &c_string(&self.table),
        );
        nfnetlink::attr(&mut self.buf, NFTA_SET_ELEM_LIST_SET, &c_string(set));
        let list = begin_nest(&mut self.buf, NFTA_SET_ELEM_LIST_ELEMENTS);
        self.sets.push(set.to_string());
        self.open = Some(Open {
            start,
            list,
            verb,
            family,
            set: set.to_string(),
        });
    }

    fn close(&mut self) {
        if let Some(open) = self.open.take() {
            end_nest(&mut self.buf, open.list);
            let len = (self.buf.len() - open.start) as u32;
            self.buf[open.start..open.start + 4].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// The finished batch's bytes, as the kernel would read them.
    #[cfg(test)]
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.finish().0
    }

    /// The finished batch's bytes and its element messages' sets (by sequence number - 2).
    fn finish(mut self) -> (Vec<u8>, Vec<String>) {
        self.close();
        let seq = self.sets.len() as u32 + 2;
        batch_marker(&mut self.buf, NFNL_MSG_BATCH_END, seq);
        (self.buf, self.sets)
    }
}

/// BATCH_BEGIN / BATCH_END: nfgenmsg with res_id NFNL_SUBSYS_NFTABLES in network order.
fn batch_marker(buf: &mut Vec<u8>, kind: u16, seq: u32) {
    let mut m = nfnetlink::request(kind, NLM_F_REQUEST, seq, 0, &[]);
    m[18..20].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    buf.extend_from_slice(&m);
}

/// libnftnl's user data TLV for an element comment, as nft writes it: type
/// NFTNL_UDATA_SET_ELEM_COMMENT (0), a length byte, the text and its NUL (`nft --debug=netlink`
/// shows `userdata = { \x00\x03ab\x00 }` for `comment "ab"`). `None` when it does not fit.
pub fn comment_tlv(comment: &str) -> Option<Vec<u8>> {
    let len = u8::try_from(comment.len() + 1).ok()?;
    let mut tlv = Vec::with_capacity(comment.len() + 3);
    tlv.extend_from_slice(&[NFTNL_UDATA_SET_ELEM_COMMENT, len]);
    tlv.extend_from_slice(comment.as_bytes());
    tlv.push(0);
    Some(tlv)
}

/// The comment in an element's user data (`comment_tlv`'s inverse; other TLVs skipped);
/// `None` without one or when the bytes do not parse.
pub fn comment_of(mut userdata: &[u8]) -> Option<&str> {
    while let [kind, len, rest @ ..] = userdata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_SET_ELEM_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return std::str::from_utf8(text).ok();
        }
        userdata = &rest[usize::from(*len)..];
    }
    None
}

/// libnftnl's `NFTNL_UDATA_SET_ELEM_COMMENT` (udata.h).
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;

pub(super) fn c_string(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// Starts a nested attribute; returns where its header is, for `end_nest`.
pub(super) fn begin_nest(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

pub(super) fn end_nest(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Why an element batch did not go through, named after the failing step.
#[derive(Debug, thiserror::Error)]
pub enum ElementsError {
    #[error("opening the nf_tables netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("sending {elements} element operations: {source}")]
    Send {
        elements: usize,
        source: std::io::Error,
    },
    #[error("waiting for the kernel's answer to the element batch: {0}")]
    Receive(std::io::Error),
    #[error("the kernel refused the element batch at set {set}: {source}")]
    Refused { set: String, source: std::io::Error },
    #[error("malformed netlink answer at byte {0}")]
    Malformed(usize),
}

/// A NETLINK_NETFILTER socket for element batches, kept between them.
#[derive(Default)]
pub struct ElementSocket {
    socket: Option<netlink_sys::Socket>,
}

impl ElementSocket {
    /// Sends `batch` and waits until the kernel applied it, or says why not.
    pub fn send(&mut self, batch: ElementBatch) -> Result<(), ElementsError> {
        if batch.is_empty() {
            return Ok(());
        }
        let elements = batch.len();
        let (bytes, sets) = batch.finish();
        let result = self.exchange(&bytes, &sets, elements);
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    fn exchange(
        &mut self,
        bytes: &[u8],
        sets: &[String],
        elements: usize,
    ) -> Result<(), ElementsError> {
        if self.socket.is_none() {
            self.socket = Some(open(ANSWER_TIMEOUT_SECS).map_err(ElementsError::Socket)?);
        }
        let socket = self.socket.as_ref().expect("opened above");
        grow_send_buffer(socket, bytes.len())
            .map_err(|source| ElementsError::Send { elements, source })?;
        socket
            .send(bytes, 0)
            .map_err(|source| ElementsError::Send { elements, source })?;
        let mut acked = 0;
        while acked < sets.len() {
            let (buf, _) = socket.recv_from_full().map_err(ElementsError::Receive)?;
            acked += answers(&buf, sets)?;
        }
        Ok(())
    }
}

/// A NETLINK_NETFILTER socket whose errors echo only the failing message's header, and whose
/// receives give up after `timeout_secs`.
pub(super) fn open(timeout_secs: libc::time_t) -> std::io::Result<netlink_sys::Socket> {
    let socket = nfnetlink::socket()?;
    // Errors carry only the failing message's header, not its up to 32 KiB of elements.
    socket.set_cap_ack(true)?;
    let timeout = libc::timeval {
        tv_sec: timeout_secs,
        tv_usec: 0,
    };
    setsockopt(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        &timeout,
    )?;
    Ok(socket)
}

/// The kernel takes a batch only whole, in one send: the send buffer must hold it.
fn grow_send_buffer(socket: &netlink_sys::Socket, len: usize) -> std::io::Result<()> {
    let want = libc::c_int::try_from(len + 64 * 1024).unwrap_or(libc::c_int::MAX);
    let fd = socket.as_raw_fd();
    // SO_SNDBUFFORCE passes net.core.wmem_max (kproxy has CAP_NET_ADMIN); SO_SNDBUF otherwise.
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &want)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &want))
}

fn setsockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a live T of `len` bytes; the kernel only reads it.
    let rc = unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Counts the acks in one receive buffer; the first error fails with the set it concerns.
fn answers(buf: &[u8], sets: &[String]) -> Result<usize, ElementsError> {
    let u32_at = |at: usize| -> Result<u32, ElementsError> {
        buf.get(at..at + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or(ElementsError::Malformed(at))
    };
    let mut at = 0;
    let mut acks = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(at)? as usize;
        if len < 16 || at + len > buf.len() {
            return Err(ElementsError::Malformed(at));
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if kind == NLMSG_ERROR {
            let errno = u32_at(at + 16)? as i32;
            // The echoed request header follows the error code: its sequence number.
            let seq = u32_at(at + 20 + 8)? as usize;
            if errno != 0 {
                let set = match seq.checked_sub(2).and_then(|i| sets.get(i)) {
                    Some(set) => set.clone(),
                    None => "(the whole batch)".to_string(),
                };
                let source = std::io::Error::from_raw_os_error(-errno);
                return Err(ElementsError::Refused { set, source });
            }
            acks += 1;
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(acks)
}

#[cfg(test)]
#[path = "elements_tests.rs"]
mod tests;
