//! Element operations, as compile writes their text, to the bytes nf_tables stores: an
//! `ElementBatch` the libnftables transport sends over netlink instead of having libnftables
//! parse and resolve the text (most of a cold start's time at scale).
//!
//! Invariants: a set's layout is read from its declaration in `skeleton::SETS`, the one source
//! of truth; in a concatenation every field takes whole 4-byte registers (nft's padding), a
//! single field its own length; addresses and ports in network order, `numgen` slots in host
//! order; a range in a concatenation (`firewall-allow`) as a key and a key end; an element's
//! comment as its user data, the TLV nft writes, and read back into the value text the same
//! way (`transaction::commented`). A transaction
//! holding anything this does not encode (a chain or rule, a one-field interval set or a
//! dynamic set, text it does not parse) yields `None` and goes as text whole: never half a
//! batch. The result is checked against the text path on the live kernel (`native_tests.rs`).

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use std::sync::OnceLock;

use super::skeleton::{self, TABLE};
use super::transaction::{Op, Transaction, commented, split_comment};
use crate::model::IpFamily;
use crate::nftables::elements::{self, Data, ElementBatch, Verb};
use crate::nftables::listing::{DataRef, Element};

/// One field of a key or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    /// The family's address (`{addr}`, `{ip} daddr`).
    Addr,
    /// `inet_proto`, `meta l4proto`: one byte.
    Proto,
    /// `inet_service`, `tcp dport`: two bytes, network order.
    Port,
    /// `numgen random mod N`: a 32-bit integer in host order.
    Slot,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    None,
    Verdict,
    Fields(Vec<Field>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    key: Vec<Field>,
    value: Value,
    /// A concatenation whose last field is a range (`flags interval`): the element carries the
    /// range's first and last address as its key and key end.
    interval: bool,
}

/// Every set's layout, by name; `None` for the sets this does not encode.
fn layouts() -> &'static HashMap<&'static str, Option<Layout>> {
    static LAYOUTS: OnceLock<HashMap<&'static str, Option<Layout>>> = OnceLock::new();
    LAYOUTS.get_or_init(|| {
        skeleton::SETS
            .iter()
            .map(|s| (s.name, layout(s.decl)))
            .collect()
    })
}

/// A declaration's layout (`type {addr} . inet_proto . inet_service : verdict;`); `None` for
/// dynamic sets, interval sets of one field (their ranges are pairs of elements) and types this
/// does not know.
fn layout(decl: &str) -> Option<Layout> {
    let body = decl.split(';').next()?;
    let flags = decl.split_once("flags ").map_or("", |(_, f)| f);
    let interval = flags.starts_with("interval;");
    if !flags.is_empty() && !interval {
        return None;
    }
    let body = body
        .strip_prefix("typeof ")
        .or_else(|| body.strip_prefix("type "))?;
    let (key, value) = match body.split_once(" : ") {
        Some((key, "verdict")) => (key, Value::Verdict),
        Some((key, value)) => (key, Value::Fields(fields(value)?)),
        None => (body, Value::None),
    };
    let key = fields(key)?;
    if interval && (key.len() < 2 || key.last() != Some(&Field::Addr)) {
        return None;
    }
    Some(Layout {
        key,
        value,
        interval,
    })
}

fn fields(text: &str) -> Option<Vec<Field>> {
    text.split(" . ")
        .map(|f| match f.trim() {
            "{addr}" | "{ip} daddr" | "{ip} saddr" => Some(Field::Addr),
            "inet_proto" | "meta l4proto" => Some(Field::Proto),
            "inet_service" | "tcp dport" | "udp dport" | "sctp dport" => Some(Field::Port),
            "numgen random mod 1" => Some(Field::Slot),
            _ => None,
        })
        .collect()
}

/// Appends `text`'s bytes (`10.0.0.1 . tcp . 80`) as `fields` lay them out; false when the text
/// does not fit them.
fn encode(out: &mut Vec<u8>, fields: &[Field], family: IpFamily, text: &str) -> bool {
    let concat = fields.len() > 1;
    let mut parts = text.split(" . ");
    for field in fields {
        let Some(part) = parts.next() else {
            return false;
        };
        let start = out.len();
        let ok = match field {
            Field::Addr => match part.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if family == IpFamily::V4 => {
                    out.extend_from_slice(&ip.octets());
                    true
                }
                Ok(IpAddr::V6(ip)) if family == IpFamily::V6 => {
                    out.extend_from_slice(&ip.octets());
                    true
                }
                _ => false,
            },
            Field::Proto => match part {
                "tcp" => Some(6),
                "udp" => Some(17),
                "sctp" => Some(132),
                n => n.parse::<u8>().ok(),
            }
            .map(|p| out.push(p))
            .is_some(),
            Field::Port => part
                .parse::<u16>()
                .map(|p| out.extend_from_slice(&p.to_be_bytes()))
                .is_ok(),
            Field::Slot => part
                .parse::<u32>()
                .map(|s| out.extend_from_slice(&s.to_ne_bytes()))
                .is_ok(),
        };
        if !ok {
            return false;
        }
        if concat {
            let len = out.len() - start;
            out.resize(start + len.div_ceil(4) * 4, 0);
        }
    }
    parts.next().is_none()
}

/// Appends an interval concatenation's key and key end: the fields before the last as
/// `encode` lays them out, then the range's first address to `key` and its last to `end`.
fn encode_range(
    key: &mut Vec<u8>,
    end: &mut Vec<u8>,
    fields: &[Field],
    family: IpFamily,
    text: &str,
) -> bool {
    let Some((head, range)) = text.rsplit_once(" . ") else {
        return false;
    };
    let Some((_, prefix)) = fields.split_last() else {
        return false;
    };
    if !encode(key, prefix, family, head) {
        return false;
    }
    end.extend_from_slice(key);
    let net = match range.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match range.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return false,
        },
    };
    match (net.network(), net.broadcast()) {
        (IpAddr::V4(first), IpAddr::V4(last)) if family == IpFamily::V4 => {
            key.extend_from_slice(&first.octets());
            end.extend_from_slice(&last.octets());
        }
        (IpAddr::V6(first), IpAddr::V6(last)) if family == IpFamily::V6 => {
            key.extend_from_slice(&first.octets());
            end.extend_from_slice(&last.octets());
        }
        _ => return false,
    }
    true
}

/// A verdict's text (`goto lb-3`, `drop`) as nf_tables numbers it.
fn verdict(text: &str) -> Option<(i32, Option<&str>)> {
    match text.split_once(' ') {
        Some(("goto", chain)) => Some((elements::NFT_GOTO, Some(chain))),
        Some(("jump", chain)) => Some((elements::NFT_JUMP, Some(chain))),
        None if text == "drop" => Some((elements::NF_DROP, None)),
        None if text == "accept" => Some((elements::NF_ACCEPT, None)),
        _ => None,
    }
}

/// Text of `bytes` as `fields` lay them out (the inverse of `encode`); `None` when they do not
/// fit.
fn decode_fields(fields: &[Field], family: IpFamily, mut bytes: &[u8]) -> Option<String> {
    let concat = fields.len() > 1;
    let mut parts = Vec::with_capacity(fields.len());
    for field in fields {
        let (len, text): (usize, String) = match field {
            Field::Addr => match family {
                IpFamily::V4 => (
                    4,
                    IpAddr::from(<[u8; 4]>::try_from(bytes.get(..4)?).ok()?).to_string(),
                ),
                IpFamily::V6 => {
                    let octets = <[u8; 16]>::try_from(bytes.get(..16)?).ok()?;
                    (16, IpAddr::from(octets).to_string())
                }
            },
            Field::Proto => (
                1,
                match *bytes.first()? {
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    132 => "sctp".to_string(),
                    n => n.to_string(),
                },
            ),
            Field::Port => (
                2,
                u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?).to_string(),
            ),
            Field::Slot => (
                4,
                u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?).to_string(),
            ),
        };
        let taken = if concat { len.div_ceil(4) * 4 } else { len };
        bytes = bytes.get(taken..)?;
        parts.push(text);
    }
    bytes.is_empty().then(|| parts.join(" . "))
}

/// An element read back from the kernel as the key and value texts compile writes; `None` for
/// a set whose layout this does not know or bytes that do not fit it.
pub fn decode(set: &str, family: IpFamily, e: &Element) -> Option<(String, String)> {
    let layout = layouts().get(set)?.as_ref()?;
    let key = if layout.interval {
        let (last, prefix) = layout.key.split_last()?;
        let width = match family {
            IpFamily::V4 => 4,
            IpFamily::V6 => 16,
        };
        let split = e.key.len().checked_sub(width)?;
        let end = e.key_end.unwrap_or(e.key);
        if end.len() != e.key.len() || end[..split] != e.key[..split] {
            return None;
        }
        let head = decode_fields(prefix, family, &e.key[..split])?;
        let first = decode_fields(&[*last], family, &e.key[split..])?
            .parse::<IpAddr>()
            .ok()?;
        let last = decode_fields(&[*last], family, &end[split..])?
            .parse::<IpAddr>()
            .ok()?;
        // The one prefix whose first and last addresses these are.
        let range = (0..=width as u8 * 8)
            .filter_map(|len| IpNet::new(first, len).ok())
            .find(|net| net.network() == first && net.broadcast() == last)?;
        format!("{head} . {range}")
    } else {
        decode_fields(&layout.key, family, e.key)?
    };
    let value = match (&layout.value, e.data) {
        (Value::None, None) => String::new(),
        (Value::Verdict, Some(DataRef::Verdict { code, chain })) => match (code, chain) {
            (elements::NFT_GOTO, Some(chain)) => format!("goto {chain}"),
            (elements::NFT_JUMP, Some(chain)) => format!("jump {chain}"),
            (elements::NF_DROP, None) => "drop".to_string(),
            (elements::NF_ACCEPT, None) => "accept".to_string(),
            _ => return None,
        },
        (Value::Fields(fields), Some(DataRef::Value(bytes))) => {
            decode_fields(fields, family, bytes)?
        }
        _ => return None,
    };
    let comment = e.userdata.and_then(elements::comment_of);
    match comment {
        Some(c) => Some((key, commented(c, &value))),
        None => Some((key, value)),
    }
}

/// The key bytes of an element of `set` written as compile writes its key (`10.96.0.10 . tcp .
/// 80`), the bytes an element batch sends (`nftables::getelem` looks elements up by them); for
/// a concatenation with a range (`firewall-allow`) the range's first address, so an address
/// alone (`… . 10.0.1.5`) is a point the kernel finds inside whichever range holds it. `None`
/// for a set this does not encode and for text that does not fit its layout.
pub fn key(set: &str, family: IpFamily, text: &str) -> Option<Vec<u8>> {
    let layout = layouts().get(set)?.as_ref()?;
    let mut key = Vec::new();
    let encoded = if layout.interval {
        encode_range(&mut key, &mut Vec::new(), &layout.key, family, text)
    } else {
        encode(&mut key, &layout.key, family, text)
    };
    encoded.then_some(key)
}

/// `tx` as one element batch, when it holds only element operations this encodes.
pub fn batch(tx: &Transaction) -> Option<ElementBatch> {
    let mut batch = ElementBatch::new(TABLE);
    let (mut key, mut end, mut value) = (Vec::new(), Vec::new(), Vec::new());
    for op in tx.ops() {
        let (verb, family, set, k, v, comment) = match op {
            Op::AddElement(f, s, k, v) => {
                let (comment, v) = split_comment(v);
                (Verb::Add, *f, *s, k, Some(v), comment)
            }
            Op::DeleteElement(f, s, k) => (Verb::Delete, *f, *s, k, None, None),
            _ => return None,
        };
        let layout = layouts().get(set)?.as_ref()?;
        key.clear();
        end.clear();
        let encoded = if layout.interval {
            encode_range(&mut key, &mut end, &layout.key, family, k)
        } else {
            encode(&mut key, &layout.key, family, k)
        };
        if !encoded {
            return None;
        }
        let key_end = layout.interval.then_some(end.as_slice());
        let data = match (&layout.value, v) {
            (_, None) | (Value::None, Some(_)) => None,
            (Value::Verdict, Some(v)) => {
                let (code, chain) = verdict(v)?;
                Some(Data::Verdict { code, chain })
            }
            (Value::Fields(fields), Some(v)) => {
                value.clear();
                if !encode(&mut value, fields, family, v) {
                    return None;
                }
                Some(Data::Value(&value))
            }
        };
        batch.push_commented(verb, family, set, &key, key_end, data, comment);
    }
    Some(batch)
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
