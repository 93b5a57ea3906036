//! kproxy's table read back over netlink, for adoption at start-up: its chains, its sets (name
//! and flags) and the elements of each set as the kernel stores them (bytes), from dumps
//! filtered by table and set. `nft list table` takes 4.4 s and 330 MB in its own process to
//! print 246,000 elements (`-t` still 2.3 s: nft reads every element into its cache); these
//! dumps take a fraction of that and hand each element to the caller as it is read.
//!
//! Invariants: never writes; only the named table is read; a missing table reads as no chains
//! and no sets; elements are borrowed from the receive buffer and never collected here.

use super::netlink::ProbeError as ListError;
use super::uapi::{
    NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN, NFT_MSG_GETSET, NFT_MSG_GETSETELEM, NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE, NFTA_DATA_VALUE,
    NFTA_DATA_VERDICT, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_KEY_END, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NFTA_SET_FLAGS, NFTA_SET_NAME,
    NFTA_SET_TABLE, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, NLA_TYPE_MASK, NLM_F_DUMP,
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
};
use crate::model::IpFamily;
use crate::nfnetlink;

/// Bigger than the largest message the kernel builds for a dump (32 KiB).
const RECEIVE_BYTES: usize = 64 * 1024;

/// A set's flags (`NFT_SET_*`): an anonymous set (a rule's `{ tcp, udp }`, not listed), a
/// map, and one the packet path writes.
const NFT_SET_ANONYMOUS: u32 = 0x1;
pub const NFT_SET_MAP: u32 = 0x8;
pub const NFT_SET_EVAL: u32 = 0x20;

/// A table's chains and named sets.
pub type Shape = (Vec<String>, Vec<SetInfo>);

/// One set of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInfo {
    pub name: String,
    pub flags: u32,
}

/// A map element's value, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataRef<'a> {
    Value(&'a [u8]),
    Verdict { code: i32, chain: Option<&'a str> },
}

/// One element, as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Element<'a> {
    pub key: &'a [u8],
    pub key_end: Option<&'a [u8]>,
    pub data: Option<DataRef<'a>>,
    pub flags: u32,
    /// NFTA_SET_ELEM_USERDATA: nft keeps an element's comment there (`elements::comment_of`).
    pub userdata: Option<&'a [u8]>,
}

/// The chains and named sets of `table` in `family` (both empty when it does not exist).
pub fn table(family: IpFamily, table: &str) -> Result<Shape, ListError> {
    let mut chains = Vec::new();
    let t = strings(&[(NFTA_CHAIN_TABLE, table)]);
    dump(family, NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, &t, |attrs| {
        let mut name = None;
        let mut ours = false;
        for (kind, value) in attributes(attrs)? {
            match kind {
                NFTA_CHAIN_TABLE => ours = c_str(value) == Some(table),
                NFTA_CHAIN_NAME => name = c_str(value).map(str::to_string),
                _ => {}
            }
        }
        if let (true, Some(name)) = (ours, name) {
            chains.push(name);
        }
        Ok(())
    })?;
    let mut sets = Vec::new();
    let t = strings(&[(NFTA_SET_TABLE, table)]);
    dump(family, NFT_MSG_GETSET, NFT_MSG_NEWSET, &t, |attrs| {
        let (mut name, mut flags, mut ours) = (None, 0, false);
        for (kind, value) in attributes(attrs)? {
            match kind {
                NFTA_SET_TABLE => ours = c_str(value) == Some(table),
                NFTA_SET_NAME => name = c_str(value).map(str::to_string),
                NFTA_SET_FLAGS => flags = be32(value).unwrap_or(0),
                _ => {}
            }
        }
        if let (true, Some(name)) = (ours, name)
            && flags & NFT_SET_ANONYMOUS == 0
        {
            sets.push(SetInfo { name, flags });
        }
        Ok(())
    })?;
    Ok((chains, sets))
}

/// Hands every element of `set` to `each`, as the kernel stores it.
pub fn elements(
    family: IpFamily,
    table: &str,
    set: &str,
    mut each: impl FnMut(Element<'_>),
) -> Result<(), ListError> {
    let a = strings(&[
        (NFTA_SET_ELEM_LIST_TABLE, table),
        (NFTA_SET_ELEM_LIST_SET, set),
    ]);
    dump(
        family,
        NFT_MSG_GETSETELEM,
        NFT_MSG_NEWSETELEM,
        &a,
        |attrs| list_elements(attrs, &mut each),
    )
}

/// The elements of one NEWSETELEM message's attributes, to `each`.
pub(super) fn list_elements(
    attrs: &[u8],
    each: &mut impl FnMut(Element<'_>),
) -> Result<(), ListError> {
    for (kind, list) in attributes(attrs)? {
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (_, elem) in attributes(list)? {
            each(element(elem)?);
        }
    }
    Ok(())
}

/// Every element of the NEWSETELEM messages in `bytes` (an element batch as sent), read as a
/// dump's are: what the kernel is told is what adoption would read back.
#[cfg(test)]
pub(crate) fn elements_of_batch(bytes: &[u8], mut each: impl FnMut(Element<'_>)) {
    let want = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
    let mut at = 0;
    while at + 20 <= bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]) == want {
            list_elements(&bytes[at + 20..at + len], &mut each).expect("well-formed");
        }
        at += len.div_ceil(4) * 4;
    }
}

fn element(attrs: &[u8]) -> Result<Element<'_>, ListError> {
    let mut e = Element::default();
    for (kind, value) in attributes(attrs)? {
        match kind {
            NFTA_SET_ELEM_KEY => e.key = data_value(value)?.unwrap_or_default(),
            NFTA_SET_ELEM_KEY_END => e.key_end = data_value(value)?,
            NFTA_SET_ELEM_FLAGS => e.flags = be32(value).unwrap_or(0),
            NFTA_SET_ELEM_USERDATA => e.userdata = Some(value),
            NFTA_SET_ELEM_DATA => {
                for (k, v) in attributes(value)? {
                    match k {
                        NFTA_DATA_VALUE => e.data = Some(DataRef::Value(v)),
                        NFTA_DATA_VERDICT => {
                            let (mut code, mut chain) = (0, None);
                            for (k, v) in attributes(v)? {
                                match k {
                                    NFTA_VERDICT_CODE => code = be32(v).unwrap_or(0) as i32,
                                    NFTA_VERDICT_CHAIN => chain = c_str(v),
                                    _ => {}
                                }
                            }
                            e.data = Some(DataRef::Verdict { code, chain });
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

/// The NFTA_DATA_VALUE inside a nested data attribute.
fn data_value(nested: &[u8]) -> Result<Option<&[u8]>, ListError> {
    Ok(attributes(nested)?
        .into_iter()
        .find(|(k, _)| *k == NFTA_DATA_VALUE)
        .map(|(_, v)| v))
}

/// NUL-terminated string attributes.
fn strings(attrs: &[(u16, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, value) in attrs {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        nfnetlink::attr(&mut out, *kind, &v);
    }
    out
}

pub(crate) fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

pub(crate) fn c_str(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v.split(|&b| b == 0).next()?).ok()
}

/// The attributes of one level: (type without flags, payload).
pub(crate) fn attributes(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, ListError> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(ListError::Malformed(at));
        }
        out.push((kind, &buf[4..len]));
        let step = (len.div_ceil(4) * 4).min(buf.len());
        at += step;
        buf = &buf[step..];
    }
    Ok(out)
}

/// One dump: every `new_kind` message's attributes go to `each`, until the kernel is done. A
/// table or set that does not exist ends the dump with nothing (ENOENT).
fn dump(
    family: IpFamily,
    get_kind: u16,
    new_kind: u16,
    attrs: &[u8],
    mut each: impl FnMut(&[u8]) -> Result<(), ListError>,
) -> Result<(), ListError> {
    let socket = nfnetlink::socket().map_err(ListError::Socket)?;
    let kind = (NFNL_SUBSYS_NFTABLES << 8) | get_kind;
    let request = nfnetlink::request(
        kind,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        nfnetlink::nfproto(family),
        attrs,
    );
    socket.send(&request, 0).map_err(ListError::Send)?;
    let want = (NFNL_SUBSYS_NFTABLES << 8) | new_kind;
    // A large buffer makes the kernel fill each dump message to its largest (~32 KiB) instead
    // of a page: the kernel walks a hash set from its start again for every message, so the
    // number of messages is what a dump of a large set costs (4 s for 246,000 elements in
    // page-sized messages).
    let mut buf: Vec<u8> = Vec::with_capacity(RECEIVE_BYTES);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0).map_err(ListError::Receive)?;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            if len < 16 || at + len > buf.len() {
                return Err(ListError::Malformed(at));
            }
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4"));
                    match errno {
                        0 => {}
                        e if -e == libc::ENOENT => return Ok(()),
                        e => {
                            return Err(ListError::Refused(std::io::Error::from_raw_os_error(-e)));
                        }
                    }
                }
                k if k == want && len >= 20 => each(&buf[at + 20..at + len])?,
                _ => {}
            }
            at += len.div_ceil(4) * 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_split_with_their_padding_and_a_truncated_one_is_an_error() {
        let mut buf = Vec::new();
        nfnetlink::attr(&mut buf, 3, b"ab\0");
        nfnetlink::attr(&mut buf, 1, &7u32.to_be_bytes());
        let a = attributes(&buf).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].0, c_str(a[0].1)), (3, Some("ab")));
        assert_eq!((a[1].0, be32(a[1].1)), (1, Some(7)));
        assert!(attributes(&buf[..6]).is_err());
    }
}
