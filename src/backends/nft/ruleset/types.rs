//! Set and map types of the fake kernel: the key and value types a declaration names, and how
//! element text is checked and canonicalised against them, as nft and the kernel do.
//!
//! Invariants: an element is stored under its canonical text (addresses as `IpAddr` displays
//! them, prefixes with their host bits cleared and full-length prefixes as plain addresses,
//! protocols by name, numbers in decimal), which is exactly the text kproxy writes; text that
//! does not fit the declared types is refused. Interval overlap follows the kernel: a new
//! concatenated range is refused when its first or last point falls inside another element (so
//! the order of insertion matters, as in the kernel); a single-field range is refused when it
//! overlaps another at all (nft's "conflicting intervals specified").

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::IpFamily;

/// One field type of a key or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Addr(IpFamily),
    Proto,
    Service,
    Integer,
    Verdict,
}

/// What a set or map declaration says: key fields, value fields (maps), flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetType {
    pub key: Vec<Ty>,
    pub value: Option<Vec<Ty>>,
    pub interval: bool,
    pub flags: Vec<String>,
}

/// A verdict, as a verdict map's value or a rule's statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Continue,
    Jump(String),
    Goto(String),
}

/// One field of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Atom {
    Addr(IpAddr),
    Net(IpNet),
    Proto(u8),
    Num(u32),
    Verdict(Verdict),
}

fn expr_type(expr: &str) -> Option<Ty> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    match words.as_slice() {
        ["ip", "daddr" | "saddr"] => Some(Ty::Addr(IpFamily::V4)),
        ["ip6", "daddr" | "saddr"] => Some(Ty::Addr(IpFamily::V6)),
        ["meta", "l4proto"] => Some(Ty::Proto),
        ["tcp" | "udp" | "sctp" | "th", "dport" | "sport"] => Some(Ty::Service),
        ["numgen", "random", "mod", _] | ["meta", "mark"] => Some(Ty::Integer),
        _ => None,
    }
}

fn type_name(name: &str) -> Option<Ty> {
    match name {
        "ipv4_addr" => Some(Ty::Addr(IpFamily::V4)),
        "ipv6_addr" => Some(Ty::Addr(IpFamily::V6)),
        "inet_proto" => Some(Ty::Proto),
        "inet_service" => Some(Ty::Service),
        "mark" => Some(Ty::Integer),
        "verdict" => Some(Ty::Verdict),
        _ => None,
    }
}

impl SetType {
    /// Parses the body of `add set|map … { BODY }`: `type …` or `typeof …`, then `flags …;`,
    /// `timeout …;`, `size …;` clauses.
    pub fn parse(decl: &str) -> Result<SetType, String> {
        let mut clauses = decl.split(';').map(str::trim).filter(|c| !c.is_empty());
        let first = clauses.next().ok_or("a set needs a type")?;
        let (typeof_, body) = if let Some(b) = first.strip_prefix("typeof ") {
            (true, b)
        } else if let Some(b) = first.strip_prefix("type ") {
            (false, b)
        } else {
            return Err(format!("expected `type` or `typeof`, found {first:?}"));
        };
        let fields = |text: &str| -> Result<Vec<Ty>, String> {
            text.split(" . ")
                .map(|f| {
                    let f = f.trim();
                    let ty = if typeof_ { expr_type(f) } else { type_name(f) };
                    ty.ok_or_else(|| format!("the fake kernel does not model the type {f:?}"))
                })
                .collect()
        };
        let (key, value) = match body.split_once(" : ") {
            Some((k, v)) => (fields(k)?, Some(fields(v)?)),
            None => (fields(body)?, None),
        };
        let mut flags = Vec::new();
        for clause in clauses {
            let mut words = clause.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("flags"), Some(list), None) => {
                    flags.extend(list.split(',').map(|f| f.trim().to_string()))
                }
                (Some("timeout" | "size"), Some(_), None) => {}
                _ => return Err(format!("unexpected set clause {clause:?}")),
            }
        }
        Ok(SetType {
            interval: flags.iter().any(|f| f == "interval"),
            key,
            value,
            flags,
        })
    }

    /// Whether the elements' values are verdicts (the map dispatches packets to chains).
    pub fn is_verdict_map(&self) -> bool {
        self.value.as_deref() == Some(&[Ty::Verdict])
    }

    /// Bytes of a key in nft's registers (every field padded to 4 bytes).
    pub fn key_bytes(&self) -> usize {
        self.key
            .iter()
            .map(|t| match t {
                Ty::Addr(IpFamily::V6) => 16,
                _ => 4,
            })
            .sum()
    }
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmpv6" => Some(58),
        "sctp" => Some(132),
        n => n.parse().ok(),
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Continue => f.write_str("continue"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

impl Verdict {
    pub fn parse(text: &str) -> Option<Verdict> {
        let words: Vec<&str> = text.split_whitespace().collect();
        Some(match words.as_slice() {
            ["accept"] => Verdict::Accept,
            ["drop"] => Verdict::Drop,
            ["return"] => Verdict::Return,
            ["continue"] => Verdict::Continue,
            ["jump", c] => Verdict::Jump(c.to_string()),
            ["goto", c] => Verdict::Goto(c.to_string()),
            _ => return None,
        })
    }

    /// The chain this verdict sends packets to, if any.
    pub fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Addr(a) => write!(f, "{a}"),
            Atom::Net(n) => write!(f, "{n}"),
            Atom::Proto(6) => f.write_str("tcp"),
            Atom::Proto(17) => f.write_str("udp"),
            Atom::Proto(132) => f.write_str("sctp"),
            Atom::Proto(1) => f.write_str("icmp"),
            Atom::Proto(58) => f.write_str("icmpv6"),
            Atom::Proto(p) => write!(f, "{p}"),
            Atom::Num(n) => write!(f, "{n}"),
            Atom::Verdict(v) => write!(f, "{v}"),
        }
    }
}

/// Parses one field of an element as `ty`; prefixes only where `interval` allows ranges.
fn atom(ty: Ty, text: &str, interval: bool) -> Result<Atom, String> {
    let bad = || format!("{text:?} is not a valid {ty:?}");
    match ty {
        Ty::Addr(family) => {
            let a = if text.contains('/') && interval {
                let net: IpNet = text.parse().map_err(|_| bad())?;
                if net.prefix_len() == net.max_prefix_len() {
                    Atom::Addr(net.addr())
                } else {
                    Atom::Net(net.trunc())
                }
            } else {
                Atom::Addr(text.parse().map_err(|_| bad())?)
            };
            let addr = match &a {
                Atom::Net(n) => n.addr(),
                Atom::Addr(a) => *a,
                _ => return Err(bad()),
            };
            if IpFamily::of(&addr) != family {
                return Err(format!(
                    "Could not resolve hostname: Address family for hostname not supported: {text}"
                ));
            }
            Ok(a)
        }
        Ty::Proto => proto_number(text).map(Atom::Proto).ok_or_else(bad),
        Ty::Service => text
            .parse::<u16>()
            .map(|p| Atom::Num(u32::from(p)))
            .map_err(|_| bad()),
        Ty::Integer => text.parse::<u32>().map(Atom::Num).map_err(|_| bad()),
        Ty::Verdict => Verdict::parse(text).map(Atom::Verdict).ok_or_else(bad),
    }
}

/// Parses `a . b . c` as the fields `types`.
pub fn atoms(types: &[Ty], text: &str, interval: bool) -> Result<Vec<Atom>, String> {
    let parts: Vec<&str> = if types == [Ty::Verdict] {
        vec![text.trim()]
    } else {
        text.split(" . ").map(str::trim).collect()
    };
    if parts.len() != types.len() {
        return Err(format!(
            "{text:?} has {} fields, the set's type has {}",
            parts.len(),
            types.len()
        ));
    }
    types
        .iter()
        .zip(parts)
        .map(|(ty, part)| atom(*ty, part, interval))
        .collect()
}

/// The canonical text of a list of fields.
pub fn text(atoms: &[Atom]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(16 * atoms.len());
    for (i, a) in atoms.iter().enumerate() {
        if i > 0 {
            out.push_str(" . ");
        }
        let _ = write!(out, "{a}");
    }
    out
}

fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The closed range a field covers.
fn range(a: &Atom) -> (u128, u128) {
    match a {
        Atom::Addr(a) => (bits(*a), bits(*a)),
        Atom::Net(n) => (bits(n.network()), bits(n.broadcast())),
        Atom::Proto(p) => (u128::from(*p), u128::from(*p)),
        Atom::Num(n) => (u128::from(*n), u128::from(*n)),
        Atom::Verdict(_) => (0, 0),
    }
}

/// Whether the point `point` (one value per field) lies inside `element`.
pub fn contains(element: &[Atom], point: &[u128]) -> bool {
    element.len() == point.len()
        && element.iter().zip(point).all(|(a, p)| {
            let (lo, hi) = range(a);
            lo <= *p && *p <= hi
        })
}

/// Whether adding `new` to an interval set holding `existing` (another element) is refused.
pub fn clashes(new: &[Atom], existing: &[Atom]) -> bool {
    let lows: Vec<u128> = new.iter().map(|a| range(a).0).collect();
    let highs: Vec<u128> = new.iter().map(|a| range(a).1).collect();
    if new.len() == 1 {
        let ((a, b), (c, d)) = (range(&new[0]), range(&existing[0]));
        return a <= d && c <= b;
    }
    contains(existing, &lows) || contains(existing, &highs)
}

/// The point a packet's field values make, for interval lookups.
pub fn point(atoms: &[Atom]) -> Vec<u128> {
    atoms.iter().map(|a| range(a).0).collect()
}
