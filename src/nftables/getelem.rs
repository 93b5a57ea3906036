//! One element of an nf_tables set read by its key: a single `NFT_MSG_GETSETELEM` request
//! (not a dump) naming the table, the set and the key, answered by the kernel with the one
//! element it stores under that key (key, data or verdict, user data) or an error. What a
//! tracer needs of a set of 220,000 elements is a few dozen of them; this reads only those
//! (~4.4 µs a found key, ~2.6 µs a missing one, at 10,000 Services). In a set with ranges a key
//! is a point: a concatenation with a range (`firewall-allow`) answers with the element whose
//! range holds it (key and key end), a one-field interval set with the start of that range only.
//!
//! Invariants: never writes; one request per `get`, flagged for an ack, so every exchange ends
//! with the kernel's NLMSG_ERROR (0, or the errno) whether or not an element came first (the
//! kernel may answer a key with nothing, as for the end of an open interval); answers are
//! matched by sequence number, so a late answer to an abandoned exchange is never read as the
//! next one's, and after a broken exchange the socket is dropped. ENOENT is told apart by the
//! attribute the kernel's extended ack points at: the table (`NoTable`), the set (`NoSet`) or
//! the element (`Ok(None)`); on a kernel that points at nothing (5.x kernels did not for a set
//! or an element) a second request asks for the set itself (`NFT_MSG_GETSET`) before a miss is
//! believed. The socket is opened on the first `get`, in the network namespace of the calling
//! thread. Keys are the kernel's bytes (`backends::nft::encode::key` writes kproxy's).

use super::elements::{begin_nest, c_string, end_nest, open};
use super::listing::{DataRef, Element, attributes, list_elements};
use super::uapi::{
    NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSET, NFT_MSG_GETSETELEM, NFT_MSG_NEWSETELEM, NFTA_DATA_VALUE,
    NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_NAME, NFTA_SET_TABLE, NLM_F_ACK, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_REQUEST, NLMSG_ERROR, NLMSGERR_ATTR_OFFS,
};
use crate::model::IpFamily;
use crate::nfnetlink;

/// The kernel answers a get while the request is sent; this only bounds a lost answer.
const ANSWER_TIMEOUT_SECS: libc::time_t = 5;

/// Larger than any one answer (the kernel builds it in NLMSG_GOODSIZE, at most 8 KiB).
const RECEIVE_BYTES: usize = 64 * 1024;

/// Why a get failed, named after the failing step.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("opening the nf_tables netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("sending the element lookup: {0}")]
    Send(std::io::Error),
    #[error("waiting for the kernel's answer to the element lookup: {0}")]
    Receive(std::io::Error),
    #[error("looking up the table: the kernel has no table {family} {table}")]
    NoTable { family: &'static str, table: String },
    #[error("looking up the set: the kernel has no set {set} in table {family} {table}")]
    NoSet {
        family: &'static str,
        table: String,
        set: String,
    },
    #[error("the kernel refused to look up an element of set {set}: {source}")]
    Refused { set: String, source: std::io::Error },
    #[error("malformed netlink answer at byte {0}")]
    Malformed(usize),
}

/// A map element's value, owned (`DataRef` outlives no receive buffer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedData {
    Value(Vec<u8>),
    Verdict { code: i32, chain: Option<String> },
}

/// One element as the kernel stores it, owned (`Element` borrows a receive buffer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedElement {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<OwnedData>,
    pub flags: u32,
    pub userdata: Option<Vec<u8>>,
}

impl OwnedElement {
    /// The element as a dump hands it out, for the decoders of dumped elements
    /// (`backends::nft::encode::decode`).
    pub fn as_element(&self) -> Element<'_> {
        Element {
            key: &self.key,
            key_end: self.key_end.as_deref(),
            data: self.data.as_ref().map(|d| match d {
                OwnedData::Value(v) => DataRef::Value(v),
                OwnedData::Verdict { code, chain } => DataRef::Verdict {
                    code: *code,
                    chain: chain.as_deref(),
                },
            }),
            flags: self.flags,
            userdata: self.userdata.as_deref(),
        }
    }
}

impl From<Element<'_>> for OwnedElement {
    fn from(e: Element<'_>) -> OwnedElement {
        OwnedElement {
            key: e.key.to_vec(),
            key_end: e.key_end.map(<[u8]>::to_vec),
            data: e.data.map(|d| match d {
                DataRef::Value(v) => OwnedData::Value(v.to_vec()),
                DataRef::Verdict { code, chain } => OwnedData::Verdict {
                    code,
                    chain: chain.map(str::to_string),
                },
            }),
            flags: e.flags,
            userdata: e.userdata.map(<[u8]>::to_vec),
        }
    }
}

/// A request's bytes and sequence number, with where its table and set attributes start (what
/// an extended ack's offset is compared with).
#[derive(Debug)]
struct Request {
    bytes: Vec<u8>,
    seq: u32,
    table_at: usize,
    set_at: usize,
}

impl Request {
    /// One nf_tables `kind` request (not a dump) that asks for an ack, with its attributes and
    /// where the table and set attributes start in it (`at`).
    fn new(kind: u16, family: IpFamily, attrs: &[u8], seq: u32, at: (usize, usize)) -> Request {
        let bytes = nfnetlink::request(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            nfnetlink::nfproto(family),
            attrs,
        );
        Request {
            bytes,
            seq,
            table_at: at.0,
            set_at: at.1,
        }
    }
}

/// How the kernel answered one request.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Acked: with the element, if it sent one.
    Done(Option<OwnedElement>),
    /// Refused with `errno`, pointing (or not) at an attribute of the request.
    Failed { errno: i32, offset: Option<usize> },
}

/// Which name an ENOENT is about.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    Table,
    Set,
    Element,
    /// The kernel did not say.
    Unknown,
}

/// Reads single elements by key over one netlink socket, kept between gets.
pub struct ElementReader {
    socket: Option<netlink_sys::Socket>,
    seq: u32,
    buf: Vec<u8>,
}

impl Default for ElementReader {
    fn default() -> ElementReader {
        ElementReader {
            socket: None,
            seq: 0,
            buf: Vec::with_capacity(RECEIVE_BYTES),
        }
    }
}

impl ElementReader {
    /// The element of `set` in kproxy's `table` of `family` stored under `key` (the kernel's
    /// bytes), `None` when there is none.
    pub fn get(
        &mut self,
        family: IpFamily,
        table: &str,
        set: &str,
        key: &[u8],
    ) -> Result<Option<OwnedElement>, GetError> {
        let request = get_request(family, table, set, key, self.next_seq());
        match self.exchange(&request)? {
            Reply::Done(element) => Ok(element),
            Reply::Failed { errno, offset } if errno == libc::ENOENT => {
                match missing(&request, offset) {
                    Missing::Table => Err(no_table(family, table)),
                    Missing::Set => Err(no_set(family, table, set)),
                    Missing::Element => Ok(None),
                    Missing::Unknown => self.probe_set(family, table, set).map(|()| None),
                }
            }
            Reply::Failed { errno, .. } => Err(refused(set, errno)),
        }
    }

    /// Whether `set` exists (`Ok`), for a kernel whose ENOENT did not say what was missing.
    fn probe_set(&mut self, family: IpFamily, table: &str, set: &str) -> Result<(), GetError> {
        let request = set_request(family, table, set, self.next_seq());
        match self.exchange(&request)? {
            Reply::Done(_) => Ok(()),
            Reply::Failed { errno, offset } if errno == libc::ENOENT => {
                match missing(&request, offset) {
                    Missing::Table => Err(no_table(family, table)),
                    _ => Err(no_set(family, table, set)),
                }
            }
            Reply::Failed { errno, .. } => Err(refused(set, errno)),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends `request` and reads until the kernel's ack or error for it.
    fn exchange(&mut self, request: &Request) -> Result<Reply, GetError> {
        let result = self.try_exchange(request);
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    fn try_exchange(&mut self, request: &Request) -> Result<Reply, GetError> {
        if self.socket.is_none() {
            let socket = open(ANSWER_TIMEOUT_SECS).map_err(GetError::Socket)?;
            socket.set_ext_ack(true).map_err(GetError::Socket)?;
            self.socket = Some(socket);
        }
        let socket = self.socket.as_ref().expect("opened above");
        socket.send(&request.bytes, 0).map_err(GetError::Send)?;
        let mut element = None;
        loop {
            self.buf.clear();
            socket.recv(&mut self.buf, 0).map_err(GetError::Receive)?;
            if let Some(reply) = read_answer(&self.buf, request.seq, &mut element)? {
                return Ok(reply);
            }
        }
    }
}

/// Reads one receive buffer's messages of exchange `seq`: an element message's element into
/// `element`; the ack or error that ends the exchange as its `Reply`.
fn read_answer(
    buf: &[u8],
    seq: u32,
    element: &mut Option<OwnedElement>,
) -> Result<Option<Reply>, GetError> {
    let u32_at = |at: usize| -> Result<u32, GetError> {
        buf.get(at..at + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or(GetError::Malformed(at))
    };
    let element_kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(at)? as usize;
        if len < 16 || at + len > buf.len() {
            return Err(GetError::Malformed(at));
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let flags = u16::from_ne_bytes([buf[at + 6], buf[at + 7]]);
        let message = &buf[at..at + len];
        // Anything else answers an earlier, abandoned exchange.
        let ours = u32_at(at + 8)? == seq;
        if ours && kind == element_kind && len >= 20 {
            list_elements(&message[20..], &mut |e| {
                element.get_or_insert_with(|| e.into());
            })
            .map_err(|_| GetError::Malformed(at))?;
        } else if ours && kind == NLMSG_ERROR {
            let errno = -(u32_at(at + 16)? as i32);
            if errno == 0 {
                return Ok(Some(Reply::Done(element.take())));
            }
            let offset = error_offset(message, flags).map_err(|o| GetError::Malformed(at + o))?;
            return Ok(Some(Reply::Failed { errno, offset }));
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(None)
}

/// The offset of the failing attribute an error message carries (`NLMSGERR_ATTR_OFFS`), if
/// any; `Err` with where the message stops making sense.
fn error_offset(message: &[u8], flags: u16) -> Result<Option<usize>, usize> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return Ok(None);
    }
    // nlmsghdr, the error code, then the echoed request: its header alone when capped.
    let echoed = message.get(20..24).ok_or(20usize)?;
    let echoed = u32::from_ne_bytes([echoed[0], echoed[1], echoed[2], echoed[3]]) as usize;
    let skip = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        echoed.div_ceil(4) * 4
    };
    let tlvs = message.get(20 + skip..).ok_or(20 + skip)?;
    let attrs = attributes(tlvs).map_err(|_| 20 + skip)?;
    Ok(attrs
        .into_iter()
        .find(|(kind, _)| *kind == NLMSGERR_ATTR_OFFS)
        .and_then(|(_, v)| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?) as usize)))
}

/// What an ENOENT pointing at `offset` of `request` is about.
fn missing(request: &Request, offset: Option<usize>) -> Missing {
    match offset {
        None => Missing::Unknown,
        Some(o) if o == request.table_at => Missing::Table,
        Some(o) if o == request.set_at => Missing::Set,
        Some(o) if o > request.set_at && o < request.bytes.len() => Missing::Element,
        Some(_) => Missing::Unknown,
    }
}

/// `NFT_MSG_GETSETELEM` without `NLM_F_DUMP`: table, set, and one element holding only its key.
fn get_request(family: IpFamily, table: &str, set: &str, key: &[u8], seq: u32) -> Request {
    let mut attrs = Vec::new();
    let table_at = 20 + attrs.len();
    nfnetlink::attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &c_string(table));
    let set_at = 20 + attrs.len();
    nfnetlink::attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &c_string(set));
    let list = begin_nest(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS);
    let elem = begin_nest(&mut attrs, NFTA_LIST_ELEM);
    let k = begin_nest(&mut attrs, NFTA_SET_ELEM_KEY);
    nfnetlink::attr(&mut attrs, NFTA_DATA_VALUE, key);
    end_nest(&mut attrs, k);
    end_nest(&mut attrs, elem);
    end_nest(&mut attrs, list);
    Request::new(NFT_MSG_GETSETELEM, family, &attrs, seq, (table_at, set_at))
}

/// `NFT_MSG_GETSET` for one set (not a dump): whether it exists.
fn set_request(family: IpFamily, table: &str, set: &str, seq: u32) -> Request {
    let mut attrs = Vec::new();
    let table_at = 20 + attrs.len();
    nfnetlink::attr(&mut attrs, NFTA_SET_TABLE, &c_string(table));
    let set_at = 20 + attrs.len();
    nfnetlink::attr(&mut attrs, NFTA_SET_NAME, &c_string(set));
    Request::new(NFT_MSG_GETSET, family, &attrs, seq, (table_at, set_at))
}

fn no_table(family: IpFamily, table: &str) -> GetError {
    GetError::NoTable {
        family: super::family_name(family),
        table: table.to_string(),
    }
}

fn no_set(family: IpFamily, table: &str, set: &str) -> GetError {
    GetError::NoSet {
        family: super::family_name(family),
        table: table.to_string(),
        set: set.to_string(),
    }
}

fn refused(set: &str, errno: i32) -> GetError {
    GetError::Refused {
        set: set.to_string(),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

#[cfg(test)]
#[path = "getelem_tests.rs"]
mod tests;
