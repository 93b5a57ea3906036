//! Live tests of reading single elements by key (`encode::key` + `nftables::getelem`), in a
//! throwaway network namespace holding the golden `cluster_ips` tables (loaded by `nft -f`):
//! an element comes back as the text compile wrote (value and comment), in both families;
//! a missing key is `None`; a missing set or table is its own error.
//!
//! Invariants: as `transport_tests` (root only; skip without, failure under CI=true).

use crate::backends::nft::encode;
use crate::backends::nft::skeleton::TABLE;
use crate::backends::nft::transaction::split_comment;
use crate::backends::nft::transport_tests::Netns;
use crate::model::IpFamily;
use crate::nftables::getelem::{ElementReader, GetError};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/backends/nft/golden/cluster_ips.nft"
);

/// A namespace holding the golden tables of both families.
fn loaded() -> Option<Netns> {
    let ns = Netns::new()?;
    ns.run(&["nft", "-f", GOLDEN]);
    let listed = ns.run(&["nft", "list", "table", "ip6", TABLE]);
    assert!(listed.contains("fd96::10 . tcp . 80"), "golden not loaded");
    Some(ns)
}

/// The (key, value) texts of the element of `set` under `key`, as a dump would decode it.
fn get(
    reader: &mut ElementReader,
    family: IpFamily,
    set: &str,
    key: &str,
) -> Result<Option<(String, String)>, GetError> {
    let bytes = encode::key(set, family, key).unwrap_or_else(|| panic!("{set}: {key}"));
    let element = reader.get(family, TABLE, set, &bytes)?;
    Ok(element.map(|e| {
        encode::decode(set, family, &e.as_element())
            .unwrap_or_else(|| panic!("{set}: {e:?} does not decode"))
    }))
}

#[test]
fn an_existing_key_reads_back_as_the_text_compile_wrote_and_a_missing_one_as_none() {
    let Some(ns) = loaded() else { return };
    crate::netns::run_in(&ns.name, || {
        let mut r = ElementReader::default();
        let v4 = IpFamily::V4;
        let (key, value) = get(&mut r, v4, "services", "10.96.0.10 . tcp . 80")
            .unwrap()
            .expect("the web service");
        assert_eq!(key, "10.96.0.10 . tcp . 80");
        assert_eq!(
            split_comment(&value),
            (Some("default/web:http"), "goto lb-3")
        );
        let dns = get(&mut r, v4, "services", "10.96.0.53 . udp . 53").unwrap();
        let (_, value) = dns.expect("the dns service");
        assert_eq!(split_comment(&value).1, "goto reject-chain");
        let ep = get(&mut r, v4, "endpoints-tcp", "10.96.0.10 . tcp . 80 . 1").unwrap();
        assert_eq!(
            ep,
            Some(("10.96.0.10 . tcp . 80 . 1".into(), "10.0.2.1 . 8080".into()))
        );
        let hairpin = get(&mut r, v4, "hairpin", "10.0.3.1 . 10.0.3.1").unwrap();
        assert_eq!(hairpin, Some(("10.0.3.1 . 10.0.3.1".into(), String::new())));

        let misses = [
            ("services", "10.96.0.10 . udp . 80"),
            ("services", "10.96.0.99 . tcp . 80"),
            ("endpoints-tcp", "10.96.0.10 . tcp . 80 . 3"),
            ("hairpin", "10.0.1.1 . 10.0.2.1"),
        ];
        for (set, key) in misses {
            assert_eq!(get(&mut r, v4, set, key).unwrap(), None, "{set}: {key}");
        }
        // A miss leaves the socket fit for the next get.
        assert!(
            get(&mut r, v4, "cluster-ports", "10.96.0.53 . udp . 53")
                .unwrap()
                .is_some()
        );
    })
    .unwrap();
}

#[test]
fn an_ipv6_key_reads_back_from_the_ip6_table() {
    let Some(ns) = loaded() else { return };
    crate::netns::run_in(&ns.name, || {
        let mut r = ElementReader::default();
        let v6 = IpFamily::V6;
        let (_, value) = get(&mut r, v6, "services", "fd96::10 . tcp . 80")
            .unwrap()
            .expect("the web6 service");
        assert_eq!(
            split_comment(&value),
            (Some("default/web6:http"), "goto lb-2")
        );
        let ep = get(&mut r, v6, "endpoints-tcp", "fd96::10 . tcp . 80 . 1").unwrap();
        assert_eq!(ep.map(|(_, v)| v).as_deref(), Some("fd10::2 . 8080"));
        // The IPv4 key of the same service is not in the ip6 table (nor the length its sets
        // take), and the IPv6 one not in the ip table.
        assert_eq!(
            get(&mut r, v6, "services", "fd96::11 . tcp . 80").unwrap(),
            None
        );
        let v4_key = encode::key("services", IpFamily::V4, "10.96.0.10 . tcp . 80").unwrap();
        assert!(matches!(
            r.get(v6, TABLE, "services", &v4_key),
            Err(GetError::Refused { .. })
        ));
        let v6_key = encode::key("services", v6, "fd96::10 . tcp . 80").unwrap();
        assert!(matches!(
            r.get(IpFamily::V4, TABLE, "services", &v6_key),
            Err(GetError::Refused { .. })
        ));
    })
    .unwrap();
}

#[test]
fn a_missing_set_or_table_is_its_own_error_not_a_missing_element() {
    let Some(ns) = loaded() else { return };
    crate::netns::run_in(&ns.name, || {
        let mut r = ElementReader::default();
        let key = encode::key("services", IpFamily::V4, "10.96.0.10 . tcp . 80").unwrap();
        let err = r.get(IpFamily::V4, TABLE, "no-such-set", &key).unwrap_err();
        assert!(
            matches!(&err, GetError::NoSet { set, .. } if set == "no-such-set"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "looking up the set: the kernel has no set no-such-set in table ip kproxy"
        );
        let err = r
            .get(IpFamily::V4, "no-such-table", "services", &key)
            .unwrap_err();
        assert!(matches!(err, GetError::NoTable { .. }), "{err:?}");
        // And the reader still answers afterwards.
        assert!(
            r.get(IpFamily::V4, TABLE, "services", &key)
                .unwrap()
                .is_some()
        );
    })
    .unwrap();
}

#[test]
fn a_source_address_finds_the_allowed_range_that_holds_it() {
    let Some(ns) = Netns::new() else { return };
    let golden = GOLDEN.replace("cluster_ips.nft", "external.nft");
    ns.run(&["nft", "-f", &golden]);
    crate::netns::run_in(&ns.name, || {
        let mut r = ElementReader::default();
        let v4 = IpFamily::V4;
        let allowed = "198.51.100.7 . tcp . 443 . 203.0.113.0/24";
        for source in ["203.0.113.0", "203.0.113.77", "203.0.113.255"] {
            let key = format!("198.51.100.7 . tcp . 443 . {source}");
            let got = get(&mut r, v4, "firewall-allow", &key).unwrap();
            assert_eq!(got, Some((allowed.into(), String::new())), "{source}");
        }
        for key in [
            "198.51.100.7 . tcp . 443 . 203.0.114.0",
            "198.51.100.7 . tcp . 80 . 203.0.113.77",
        ] {
            assert_eq!(get(&mut r, v4, "firewall-allow", key).unwrap(), None);
        }
        // A one-field interval set (no layout, raw bytes): a point inside a range answers with
        // the range's first address alone; its end is an element of its own (flagged
        // NFT_SET_ELEM_INTERVAL_END), one past the range, which a plain get does not find.
        let start = r.get(v4, TABLE, "cluster-cidrs", &[10, 0, 5, 7]).unwrap();
        let start = start.expect("inside 10.0.0.0/16");
        assert_eq!(
            (start.key.as_slice(), start.key_end),
            (&[10, 0, 0, 0][..], None)
        );
        let past = r.get(v4, TABLE, "cluster-cidrs", &[10, 1, 0, 0]).unwrap();
        assert_eq!(past, None);
    })
    .unwrap();
}
