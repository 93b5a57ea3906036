//! Tests of the element encoding: layouts read from the declarations, the bytes of each field
//! kind, and which transactions stay text.

use super::*;
use crate::backends::nft::transaction::commented;

fn bytes(fields: &[Field], family: IpFamily, text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    encode(&mut out, fields, family, text).then_some(out)
}

#[test]
fn every_declared_set_has_a_layout_unless_it_is_dynamic_or_an_interval_of_one_field() {
    for s in skeleton::SETS {
        let flagged = s.decl.contains("flags dynamic") || s.decl.starts_with("type {addr}; flags");
        assert_eq!(
            layouts()[s.name].is_none(),
            flagged,
            "{}: {} (a type encode does not know?)",
            s.name,
            s.decl
        );
    }
    let services = layouts()["services"].clone().unwrap();
    assert_eq!(services.key, [Field::Addr, Field::Proto, Field::Port]);
    assert_eq!(services.value, Value::Verdict);
    let endpoints = layouts()["endpoints-udp"].clone().unwrap();
    assert_eq!(
        endpoints.key,
        [Field::Addr, Field::Proto, Field::Port, Field::Slot]
    );
    assert_eq!(
        endpoints.value,
        Value::Fields(vec![Field::Addr, Field::Port])
    );
    assert_eq!(layouts()["hairpin"].clone().unwrap().value, Value::None);
    assert!(layouts()["firewall-allow"].clone().unwrap().interval);
}

#[test]
fn a_range_in_a_concatenation_is_its_first_and_last_address() {
    use Field::*;
    let fields = [Addr, Proto, Port, Addr];
    let (mut key, mut end) = (Vec::new(), Vec::new());
    let text = "203.0.113.7 . tcp . 443 . 10.8.0.0/14";
    assert!(encode_range(
        &mut key,
        &mut end,
        &fields,
        IpFamily::V4,
        text
    ));
    let head = [203, 0, 113, 7, 6, 0, 0, 0, 1, 187, 0, 0];
    assert_eq!(key, [&head[..], &[10, 8, 0, 0]].concat());
    assert_eq!(end, [&head[..], &[10, 11, 255, 255]].concat());
    let (mut key, mut end) = (Vec::new(), Vec::new());
    let one = "fd00::7 . udp . 53 . fd01::9/128";
    assert!(encode_range(&mut key, &mut end, &fields, IpFamily::V6, one));
    assert_eq!(key, end, "a single address is a range of one");
    let bad = "203.0.113.7 . tcp . 443 . fd01::/64";
    assert!(!encode_range(
        &mut Vec::new(),
        &mut Vec::new(),
        &fields,
        IpFamily::V4,
        bad
    ));
}

#[test]
fn concatenated_fields_take_whole_registers_and_a_single_field_its_own_length() {
    use Field::*;
    let key = bytes(
        &[Addr, Proto, Port, Slot],
        IpFamily::V4,
        "10.96.0.10 . tcp . 80 . 2",
    );
    let mut want = vec![10, 96, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0];
    want.extend_from_slice(&2u32.to_ne_bytes());
    assert_eq!(key.unwrap(), want);
    assert_eq!(
        bytes(&[Addr, Port], IpFamily::V4, "10.0.1.1 . 8080").unwrap(),
        [10, 0, 1, 1, 0x1f, 0x90, 0, 0]
    );
    assert_eq!(bytes(&[Port], IpFamily::V4, "8080").unwrap(), [0x1f, 0x90]);
    assert_eq!(
        bytes(&[Proto, Port], IpFamily::V6, "sctp . 30000").unwrap(),
        [132, 0, 0, 0, 0x75, 0x30, 0, 0]
    );
    let v6 = bytes(&[Addr], IpFamily::V6, "fd00::1").unwrap();
    assert_eq!(v6.len(), 16);
    assert_eq!(v6[15], 1);
}

#[test]
fn text_that_does_not_fit_the_layout_is_not_encoded() {
    use Field::*;
    assert_eq!(
        bytes(&[Addr], IpFamily::V6, "10.0.0.1"),
        None,
        "wrong family"
    );
    assert_eq!(
        bytes(&[Addr, Port], IpFamily::V4, "10.0.0.1"),
        None,
        "too few"
    );
    assert_eq!(
        bytes(&[Addr], IpFamily::V4, "10.0.0.1 . 80"),
        None,
        "too many"
    );
    assert_eq!(bytes(&[Port], IpFamily::V4, "http"), None);
    assert_eq!(bytes(&[Addr], IpFamily::V4, "10.0.0.0/8"), None);
    assert_eq!(
        verdict("goto lb-3"),
        Some((elements::NFT_GOTO, Some("lb-3")))
    );
    assert_eq!(verdict("drop"), Some((elements::NF_DROP, None)));
    assert_eq!(verdict("queue"), None);
}

#[test]
fn only_a_transaction_of_encodable_elements_becomes_a_batch() {
    let mut tx = Transaction::default();
    tx.push(Op::AddElement(
        IpFamily::V4,
        "services",
        "10.96.0.10 . tcp . 80".into(),
        "goto lb-3".into(),
    ));
    tx.push(Op::DeleteElement(
        IpFamily::V6,
        "cluster-ports",
        "fd00::10 . udp . 53".into(),
    ));
    assert_eq!(batch(&tx).map(|b| b.len()), Some(2));
    let mut interval = tx.clone();
    interval.push(Op::AddElement(
        IpFamily::V4,
        "cluster-cidrs",
        "10.0.0.0/16".into(),
        String::new(),
    ));
    assert!(batch(&interval).is_none(), "interval sets go as text");
    let mut chain = tx.clone();
    chain.push(Op::AddChain(IpFamily::V4, "lb-4".into(), None));
    assert!(batch(&chain).is_none(), "chains go as text");
}

#[test]
fn an_elements_comment_goes_as_nfts_user_data_and_reads_back_into_the_same_value() {
    let map = commented("default/web:http", "goto lb-3");
    let set = commented("default/lb:https", "");
    let mut tx = Transaction::default();
    for (set_name, key, value) in [
        ("services", "10.96.0.10 . tcp . 80", &map),
        ("firewall-ports", "192.0.2.7 . tcp . 443", &set),
        (
            "endpoints-tcp",
            "10.96.0.10 . tcp . 80 . 0",
            &"10.0.1.1 . 8080".to_string(),
        ),
    ] {
        tx.push(Op::AddElement(
            IpFamily::V4,
            set_name,
            key.into(),
            value.clone(),
        ));
    }
    let bytes = batch(&tx).expect("encodable").into_bytes();
    // nft's own encoding of `comment "ab"` is `\x00\x03ab\x00` (`nft --debug=netlink`).
    assert_eq!(
        elements::comment_tlv("ab"),
        Some(b"\x00\x03ab\x00".to_vec())
    );
    let tlv = elements::comment_tlv("default/web:http").unwrap();
    assert!(bytes.windows(tlv.len()).any(|w| w == tlv.as_slice()));

    let mut read = Vec::new();
    let sets = ["services", "firewall-ports", "endpoints-tcp"];
    crate::nftables::listing::elements_of_batch(&bytes, |e| {
        let set = sets[read.len()];
        read.push(decode(set, IpFamily::V4, &e).expect("decodes"));
    });
    let want: Vec<(String, String)> = tx
        .ops()
        .iter()
        .map(|op| match op {
            Op::AddElement(_, _, k, v) => (k.clone(), v.clone()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(read, want);
    assert_eq!(
        read[0].1, "comment \"default/web:http\" : goto lb-3",
        "the comment is part of the value adoption compares"
    );
    assert_eq!(read[2].1, "10.0.1.1 . 8080", "no comment, none read");
}

#[test]
fn a_key_is_the_bytes_the_batch_sends_for_the_same_element_in_either_family() {
    let elements = [
        (
            IpFamily::V4,
            "services",
            "10.96.0.10 . tcp . 80",
            "goto lb-3",
        ),
        (
            IpFamily::V4,
            "endpoints-tcp",
            "10.96.0.10 . tcp . 80 . 3",
            "10.0.1.1 . 8080",
        ),
        (IpFamily::V4, "hairpin", "10.0.1.1 . 10.0.1.1", ""),
        (IpFamily::V4, "cluster-ips", "10.96.0.53", ""),
        (IpFamily::V4, "nodeports", "udp . 30053", "goto lb-4"),
        (
            IpFamily::V4,
            "firewall-allow",
            "198.51.100.7 . tcp . 443 . 203.0.113.0/24",
            "",
        ),
        (
            IpFamily::V6,
            "services",
            "fd96::10 . sctp . 9000",
            "goto reject-chain",
        ),
        (
            IpFamily::V6,
            "endpoints-udp",
            "fd96::10 . udp . 53 . 0",
            "fd10::1 . 53",
        ),
        (
            IpFamily::V6,
            "nodeport-endpoints-tcp",
            "tcp . 30080 . 1",
            "fd10::2 . 8080",
        ),
        (
            IpFamily::V6,
            "affinity-ports",
            "fd96::10 . tcp . 80",
            "8080",
        ),
        (IpFamily::V6, "hairpin", "fd10::1 . fd10::1", ""),
    ];
    let mut tx = Transaction::default();
    for (family, set, key, value) in elements {
        tx.push(Op::AddElement(family, set, key.into(), value.into()));
    }
    let mut sent = Vec::new();
    crate::nftables::listing::elements_of_batch(&batch(&tx).unwrap().into_bytes(), |e| {
        sent.push(e.key.to_vec())
    });
    assert_eq!(sent.len(), elements.len());
    for ((family, set, text, _), sent) in elements.iter().zip(&sent) {
        assert_eq!(
            key(set, *family, text).as_ref(),
            Some(sent),
            "{set}: {text}"
        );
    }
    // A source address alone is the range of one address starting there.
    let point = key(
        "firewall-allow",
        IpFamily::V4,
        "198.51.100.7 . tcp . 443 . 203.0.113.0",
    );
    assert_eq!(point.as_ref(), Some(&sent[5]));
}

#[test]
fn no_key_for_a_set_without_a_layout_or_text_that_does_not_fit_it() {
    let v4 = IpFamily::V4;
    assert_eq!(
        key("cluster-cidrs", v4, "10.0.0.0"),
        None,
        "one-field interval"
    );
    assert_eq!(
        key("affinity", v4, "10.0.0.1 . 10.96.0.10"),
        None,
        "dynamic"
    );
    assert_eq!(key("no-such-set", v4, "10.0.0.1"), None);
    assert_eq!(
        key("services", v4, "10.96.0.10 . tcp"),
        None,
        "too few fields"
    );
    assert_eq!(key("services", IpFamily::V6, "10.96.0.10 . tcp . 80"), None);
    assert_eq!(key("endpoints-tcp", v4, "10.96.0.10 . tcp . 80 . x"), None);
}
