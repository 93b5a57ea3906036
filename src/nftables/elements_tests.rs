//! Tests of the element batch bytes and of reading the kernel's answers (the live kernel's side
//! is in `backends/nft/native_tests.rs`).

use super::*;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// (type, flags, seq, length) of each message in `bytes`.
fn messages(bytes: &[u8]) -> Vec<(u16, u16, u32, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32_at(bytes, at) as usize;
        out.push((
            u16_at(bytes, at + 4),
            u16_at(bytes, at + 6),
            u32_at(bytes, at + 8),
            len,
        ));
        at += len.div_ceil(4) * 4;
    }
    assert_eq!(at, bytes.len(), "messages tile the batch");
    out
}

fn ack(seq: u32, errno: i32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&36u32.to_ne_bytes());
    m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    m.extend_from_slice(&[0; 10]);
    m.extend_from_slice(&errno.to_ne_bytes());
    // The echoed request header: length, type, flags, seq, port.
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&[0; 4]);
    m
}

#[test]
fn a_batch_is_begin_one_message_per_run_of_one_set_and_verb_then_end() {
    let mut b = ElementBatch::new("kproxy");
    b.push(
        Verb::Add,
        IpFamily::V4,
        "services",
        &[10, 0, 0, 1],
        None,
        None,
    );
    b.push(
        Verb::Add,
        IpFamily::V4,
        "services",
        &[10, 0, 0, 2],
        None,
        None,
    );
    b.push(
        Verb::Delete,
        IpFamily::V4,
        "services",
        &[10, 0, 0, 3],
        None,
        None,
    );
    b.push(Verb::Add, IpFamily::V6, "services", &[0; 16], None, None);
    assert_eq!(b.len(), 4);
    let (bytes, sets) = b.finish();
    let m = messages(&bytes);
    let kinds: Vec<u16> = m.iter().map(|x| x.0).collect();
    let tables = NFNL_SUBSYS_NFTABLES << 8;
    assert_eq!(
        kinds,
        [
            NFNL_MSG_BATCH_BEGIN,
            tables | NFT_MSG_NEWSETELEM,
            tables | NFT_MSG_DELSETELEM,
            tables | NFT_MSG_NEWSETELEM,
            NFNL_MSG_BATCH_END
        ]
    );
    let seqs: Vec<u32> = m.iter().map(|x| x.2).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(sets.len(), 3);
    assert!(
        m[1..4].iter().all(|x| x.1 & NLM_F_ACK != 0),
        "every element message is acked"
    );
    assert_eq!(m[1].1 & NLM_F_CREATE, NLM_F_CREATE);
    // The batch markers name the nf_tables subsystem in network byte order.
    assert_eq!(&bytes[18..20], &[0, 10]);
    // The v6 message's nfgenmsg family is NFPROTO_IPV6.
    let v6_at: usize = m[..3].iter().map(|x| x.3.div_ceil(4) * 4).sum();
    assert_eq!(bytes[v6_at + 16], 10);
}

#[test]
fn a_long_run_is_split_into_messages_of_bounded_size() {
    let mut b = ElementBatch::new("kproxy");
    for i in 0..5_000u32 {
        let key = i.to_be_bytes();
        let data = Data::Verdict {
            code: NFT_GOTO,
            chain: Some("lb-3"),
        };
        b.push(Verb::Add, IpFamily::V4, "services", &key, None, Some(data));
    }
    let (bytes, sets) = b.finish();
    let m = messages(&bytes);
    assert!(m.len() > 4, "{}", m.len());
    assert_eq!(sets.len(), m.len() - 2);
    assert!(m.iter().all(|x| x.3 <= MESSAGE_BYTES + 256), "{m:?}");
}

#[test]
fn nested_attributes_carry_their_lengths_and_the_nested_flag() {
    let mut b = ElementBatch::new("kproxy");
    let data = Data::Value(&[10, 0, 1, 1, 0x1f, 0x90, 0, 0]);
    b.push(
        Verb::Add,
        IpFamily::V4,
        "endpoints-tcp",
        &[1, 2, 3, 4],
        None,
        Some(data),
    );
    let (bytes, _) = b.finish();
    let m = messages(&bytes);
    let at = m[0].3; // the element message
    let end = at + m[1].3;
    // Attributes after nlmsghdr + nfgenmsg: table, set, then the nested list.
    let mut a = at + 20;
    let mut kinds = Vec::new();
    while a < end {
        let len = u16_at(&bytes, a) as usize;
        kinds.push(u16_at(&bytes, a + 2));
        if u16_at(&bytes, a + 2) & NLA_F_NESTED != 0 {
            assert_eq!(a + len, end, "the element list runs to the message's end");
        }
        a += len.div_ceil(4) * 4;
    }
    assert_eq!(
        kinds,
        [
            NFTA_SET_ELEM_LIST_TABLE,
            NFTA_SET_ELEM_LIST_SET,
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED
        ]
    );
}

#[test]
fn acks_are_counted_and_the_first_error_names_its_set() {
    let sets = vec!["services".to_string(), "endpoints-tcp".to_string()];
    let mut buf = ack(2, 0);
    buf.extend(ack(3, 0));
    assert_eq!(answers(&buf, &sets).unwrap(), 2);
    let e = answers(&ack(3, -libc::ENOENT), &sets).unwrap_err();
    assert!(
        e.to_string().contains("endpoints-tcp") && e.to_string().contains("No such file"),
        "{e}"
    );
    // A failed commit is answered on the batch begin (seq 1).
    let e = answers(&ack(1, -libc::ENOMEM), &sets).unwrap_err();
    assert!(e.to_string().contains("whole batch"), "{e}");
    assert!(answers(&ack(2, 0)[..30], &sets).is_err(), "truncated");
}
