//! Tests of the element lookup's bytes: the request as the kernel parses it, and the kernel's
//! answers (element, ack, errors with and without the attribute they point at) as read. The
//! live kernel's side is in `backends/nft/get_tests.rs`.

use super::*;
use crate::nftables::elements::{Data, ElementBatch, NFT_GOTO, Verb};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An NLMSG_ERROR for exchange `seq` as the kernel writes it on a capped socket with extended
/// acks: the error code, the echoed request header, then `offset` as NLMSGERR_ATTR_OFFS.
fn error(seq: u32, errno: i32, offset: Option<u32>) -> Vec<u8> {
    let mut tlvs = Vec::new();
    let mut flags = NLM_F_CAPPED;
    if let Some(o) = offset {
        nfnetlink::attr(&mut tlvs, NLMSGERR_ATTR_OFFS, &o.to_ne_bytes());
        flags |= NLM_F_ACK_TLVS;
    }
    let mut m = Vec::new();
    m.extend_from_slice(&((36 + tlvs.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&(-errno).to_ne_bytes());
    // The echoed request header: a 60-byte request, its seq.
    m.extend_from_slice(&60u32.to_ne_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&tlvs);
    m
}

/// A NEWSETELEM message holding one `services` element, with sequence number `seq` (the
/// batch encoder writes the layout the kernel answers with).
fn element_message(seq: u32, key: &[u8]) -> Vec<u8> {
    let mut b = ElementBatch::new("kproxy");
    let data = Data::Verdict {
        code: NFT_GOTO,
        chain: Some("lb-3"),
    };
    b.push_commented(
        Verb::Add,
        IpFamily::V4,
        "services",
        key,
        None,
        Some(data),
        Some("default/web:http"),
    );
    let bytes = b.into_bytes();
    // Past the 20-byte BATCH_BEGIN; the message's own sequence number set to `seq`.
    let len = u32_at(&bytes, 20) as usize;
    let mut m = bytes[20..20 + len].to_vec();
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

#[test]
fn a_get_is_one_getsetelem_request_with_an_ack_and_no_dump_naming_table_set_and_key() {
    let key = [10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
    let r = get_request(IpFamily::V6, "kproxy", "services", &key, 7);
    let b = &r.bytes;
    assert_eq!(u32_at(b, 0) as usize, b.len());
    let kind = u16::from_ne_bytes([b[4], b[5]]);
    assert_eq!(kind, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM);
    let flags = u16::from_ne_bytes([b[6], b[7]]);
    assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK, "no NLM_F_DUMP bits");
    assert_eq!(u32_at(b, 8), 7);
    assert_eq!(b[16], nfnetlink::nfproto(IpFamily::V6));
    let attrs = attributes(&b[20..]).unwrap();
    let kinds: Vec<u16> = attrs.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            NFTA_SET_ELEM_LIST_TABLE,
            NFTA_SET_ELEM_LIST_SET,
            NFTA_SET_ELEM_LIST_ELEMENTS
        ]
    );
    assert_eq!(attrs[0].1, b"kproxy\0");
    assert_eq!(attrs[1].1, b"services\0");
    // The offsets an extended ack would name are where those attributes' headers are.
    assert_eq!(
        u16::from_ne_bytes([b[r.table_at + 2], b[r.table_at + 3]]),
        1
    );
    assert_eq!(u16::from_ne_bytes([b[r.set_at + 2], b[r.set_at + 3]]), 2);
    let mut keys = Vec::new();
    list_elements(&b[20..], &mut |e| keys.push(OwnedElement::from(e))).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key, key);
    assert_eq!(
        (keys[0].data.as_ref(), keys[0].userdata.as_ref()),
        (None, None)
    );
}

#[test]
fn an_element_then_the_ack_of_the_same_exchange_is_the_element_and_other_exchanges_are_ignored() {
    let mut buf = element_message(3, &[10, 0, 0, 9, 6, 0, 0, 0, 0, 80, 0, 0]);
    buf.extend(error(3, 0, None)); // a late ack of an abandoned exchange
    buf.extend(element_message(
        4,
        &[10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0],
    ));
    let mut element = None;
    assert_eq!(
        read_answer(&buf, 4, &mut element).unwrap(),
        None,
        "no ack yet"
    );
    let ack = error(4, 0, None);
    let reply = read_answer(&ack, 4, &mut element).unwrap();
    let Some(Reply::Done(Some(e))) = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(e.key, [10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0]);
    assert_eq!(
        e.data,
        Some(OwnedData::Verdict {
            code: NFT_GOTO,
            chain: Some("lb-3".into())
        })
    );
    let back = e.as_element();
    assert_eq!(
        back.userdata
            .and_then(crate::nftables::elements::comment_of),
        Some("default/web:http")
    );
    assert_eq!(OwnedElement::from(back), e);
    // An ack alone: the kernel had nothing to send for the key.
    let mut none = None;
    assert_eq!(
        read_answer(&error(5, 0, None), 5, &mut none).unwrap(),
        Some(Reply::Done(None))
    );
}

#[test]
fn enoent_is_about_the_table_the_set_or_the_element_the_kernel_points_at() {
    let r = get_request(IpFamily::V4, "kproxy", "services", &[1, 2, 3, 4], 9);
    let elem_at = (r.set_at + 12) as u32;
    for (offset, want) in [
        (Some(r.table_at as u32), Missing::Table),
        (Some(r.set_at as u32), Missing::Set),
        (Some(elem_at), Missing::Element),
        (None, Missing::Unknown),
        (Some(4096), Missing::Unknown),
    ] {
        let mut element = None;
        let reply = read_answer(&error(9, libc::ENOENT, offset), 9, &mut element).unwrap();
        let Some(Reply::Failed { errno, offset }) = reply else {
            panic!("{reply:?}");
        };
        assert_eq!(errno, libc::ENOENT);
        assert_eq!(missing(&r, offset), want, "{offset:?}");
    }
}

#[test]
fn the_offset_follows_a_whole_echoed_request_when_the_socket_does_not_cap_acks() {
    let request = get_request(IpFamily::V4, "kproxy", "hairpin", &[0; 8], 2).bytes;
    let mut tlvs = Vec::new();
    nfnetlink::attr(&mut tlvs, 1, b"no such set\0");
    nfnetlink::attr(&mut tlvs, NLMSGERR_ATTR_OFFS, &32u32.to_ne_bytes());
    let mut m = Vec::new();
    let len = 20 + request.len() + tlvs.len();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    m.extend_from_slice(&NLM_F_ACK_TLVS.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
    m.extend_from_slice(&request);
    m.extend_from_slice(&tlvs);
    assert_eq!(error_offset(&m, NLM_F_ACK_TLVS), Ok(Some(32)));
    assert_eq!(error_offset(&m, 0), Ok(None), "no TLVs flagged, none read");
    let truncated = &m[..m.len() - 3];
    assert!(error_offset(truncated, NLM_F_ACK_TLVS).is_err());
}

#[test]
fn a_truncated_answer_is_malformed() {
    let mut buf = element_message(1, &[10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]);
    let cut = buf.len() - 8;
    buf.truncate(cut);
    assert!(matches!(
        read_answer(&buf, 1, &mut None),
        Err(GetError::Malformed(0))
    ));
}

#[test]
fn the_set_probe_for_a_kernel_that_does_not_say_what_is_missing_tells_set_from_table() {
    use crate::backends::nft::transport_tests::Netns;
    let Some(ns) = Netns::new() else { return };
    ns.run(&["nft", "add table ip t; add set ip t s { type ipv4_addr; }"]);
    assert!(
        ns.run(&["nft", "list", "table", "ip", "t"])
            .contains("set s")
    );
    crate::netns::run_in(&ns.name, || {
        let mut r = ElementReader::default();
        r.probe_set(IpFamily::V4, "t", "s").unwrap();
        let err = r.probe_set(IpFamily::V4, "t", "nope").unwrap_err();
        assert!(matches!(err, GetError::NoSet { .. }), "{err:?}");
        let err = r.probe_set(IpFamily::V4, "nope", "s").unwrap_err();
        assert!(matches!(err, GetError::NoTable { .. }), "{err:?}");
        let err = r.probe_set(IpFamily::V6, "t", "s").unwrap_err();
        assert!(
            matches!(err, GetError::NoTable { .. }),
            "the table is ip, not ip6"
        );
    })
    .unwrap();
}
