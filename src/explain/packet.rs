//! `--packet "PROTO SRC -> DST:PORT"`: the first packet of a connection `kproxy explain` is
//! asked about. IPv6 destinations are written `[addr]:port`; the source is a bare address
//! (brackets allowed). Protocol names are tcp, udp or sctp, in any case.
//!
//! Invariants: source and destination are of one family; the port is 1-65535.

use std::fmt;
use std::net::IpAddr;

use crate::model::{IpFamily, Protocol};

/// The first packet of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub proto: Protocol,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
}

impl Packet {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.dst)
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.proto.lower();
        match self.dst {
            IpAddr::V4(d) => write!(f, "{proto} {} -> {d}:{}", self.src, self.dport),
            IpAddr::V6(d) => write!(f, "{proto} {} -> [{d}]:{}", self.src, self.dport),
        }
    }
}

const FORM: &str = "want \"PROTO SRC -> DST:PORT\", e.g. \"tcp 10.0.0.5 -> 10.96.0.10:80\" or \"udp fd00::5 -> [fd00:96::a]:53\"";

impl std::str::FromStr for Packet {
    type Err = String;

    fn from_str(s: &str) -> Result<Packet, String> {
        let bad = |what: &str| format!("{what} in {s:?}: {FORM}");
        let (left, dst) = s.split_once("->").ok_or_else(|| bad("no \"->\""))?;
        let mut words = left.split_whitespace();
        let (Some(proto), Some(src), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad("not PROTO SRC before \"->\""));
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(bad(&format!("unknown protocol {proto:?}"))),
        };
        let src = src.trim_start_matches('[').trim_end_matches(']');
        let src: IpAddr = src
            .parse()
            .map_err(|_| bad(&format!("bad source address {src:?}")))?;
        let dst = dst.trim();
        let (addr, port) = dst
            .rsplit_once(':')
            .ok_or_else(|| bad("no :PORT after the destination"))?;
        let addr = match addr.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| bad("unclosed \"[\""))?,
            None if addr.contains(':') => return Err(bad("an IPv6 destination needs [brackets]")),
            None => addr,
        };
        let dst: IpAddr = addr
            .parse()
            .map_err(|_| bad(&format!("bad destination address {addr:?}")))?;
        let dport: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(&format!("bad port {port:?}")))?;
        if IpFamily::of(&src) != IpFamily::of(&dst) {
            return Err(bad("source and destination of different families"));
        }
        Ok(Packet {
            proto,
            src,
            dst,
            dport,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_reads_both_families_and_prints_back_the_same() {
        for text in [
            "tcp 10.0.0.5 -> 10.96.0.10:80",
            "udp fd00::5 -> [fd00:96::a]:53",
        ] {
            let p: Packet = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        let p: Packet = "SCTP [fd00::5]->[fd00::6]:9".parse().unwrap();
        assert_eq!((p.proto, p.dport), (Protocol::Sctp, 9));
    }

    #[test]
    fn a_malformed_packet_says_what_is_wrong_and_how_to_write_it() {
        for (text, want) in [
            ("tcp 10.0.0.5 10.96.0.10:80", "no \"->\""),
            ("icmp 10.0.0.5 -> 10.96.0.10:80", "unknown protocol"),
            ("tcp 10.0.0.5 -> 10.96.0.10", "no :PORT"),
            ("tcp 10.0.0.5 -> 10.96.0.10:0", "bad port"),
            ("tcp 10.0.0.5 -> fd00::1:80", "needs [brackets]"),
            ("tcp 10.0.0.5 -> [fd00::1]:80", "different families"),
            ("tcp x -> 10.96.0.10:80", "bad source"),
        ] {
            let err = text.parse::<Packet>().unwrap_err();
            assert!(
                err.contains(want) && err.contains("PROTO SRC -> DST:PORT"),
                "{text}: {err}"
            );
        }
    }
}
