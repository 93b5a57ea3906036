//! The pools every generator of the property tests draws from: names, addresses, ports and
//! protocols, ordinary ones and odd ones, and the two ways of drawing (`pick`, `number`).
//!
//! Invariants: a leaf (it imports no other generator), so the generators form no circle;
//! ordinary values come first in each pool, so shrinking moves towards them.

use proptest::prelude::*;
use proptest::sample::select;

use super::hostile;

/// This node's name (the test's base node is the same).
pub(super) const NODE: &str = "node-a";
/// Services (and the slices and Endpoints naming them).
pub(super) const NAMES: [&str; 4] = ["web", "db", "dns", "api"];
pub(super) const ODD_NAMES: [&str; 5] = [
    "Web",
    "ünïcødé",
    "-web",
    "",
    "x123456789012345678901234567890123456789012345678901234567890123",
];
/// Addresses valid somewhere but odd here, and addresses that do not parse.
pub(super) const ODD_IPS: [&str; 18] = [
    "None",
    "",
    "0.0.0.0",
    "127.0.0.1",
    "255.255.255.255",
    "224.0.0.1",
    "::",
    "::1",
    "::ffff:10.96.0.1",
    "fe80::1",
    "192.168.0.2",
    "fd00::2",
    "10.0.5.5",
    "10.96.0.300",
    "fd96::g",
    "10.96.0.1/32",
    " 10.96.0.1",
    "010.096.000.001",
];
pub(super) const ODD_RANGES: [&str; 5] = ["1.2.3.4/33", "10.0.0.0", "::/129", "", "garbage"];
pub(super) const PORT_NAMES: [&str; 3] = ["http", "dns", "metrics"];
pub(super) const ODD_PORT_NAMES: [&str; 4] = ["HTTP", "ünï", "a_b", "http"];
pub(super) const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];
pub(super) const ODD_PROTOCOLS: [&str; 3] = ["tcp", "ICMP", ""];

/// Mostly one of `valid`; one time in forty one of `odd`.
pub(super) fn pick(
    valid: &'static [&'static str],
    odd: &'static [&'static str],
) -> impl Strategy<Value = &'static str> + Clone {
    prop_oneof![39 => select(valid), 1 => select(odd)]
}

/// A number from `pool`, or one time in forty one out of range or huge.
pub(super) fn number(pool: &'static [i64]) -> impl Strategy<Value = i64> + Clone {
    prop_oneof![39 => select(pool), 1 => select(hostile::ODD_INTS)]
}

/// Target ports of Service ports and the ports of slices, so that they meet.
pub(super) const TARGETS: [i64; 4] = [8080, 8443, 53, 9000];
