//! A rule of kproxy's table as read over netlink (`nftables::rules`), written back as the text
//! kproxy compiles (`ip daddr . meta l4proto . th dport vmap @services`), so that the packet
//! tracer can run the kernel's own rules (`kproxy explain --live`) without `nft list`, which
//! reads every set element first.
//!
//! Invariants: it follows the registers as the kernel does: a load names what a register holds,
//! a lookup's key is the registers loaded one after another from its source register, a
//! lookup's or bitwise's result replaces its destination. It knows the expressions kproxy's
//! rules use and spells them as compile does; anything else comes out as an `unknown-…` word
//! the tracer refuses, so a rule kproxy did not write is a difference, never an agreement.

use std::collections::HashMap;

use crate::model::IpFamily;
use crate::nftables::rules::Expr;

/// What one 32-bit register holds.
#[derive(Clone, Debug)]
struct Reg {
    text: String,
    /// 32-bit registers it spans.
    words: u32,
    /// Load order: the fields of a concatenation are loaded one after another.
    seq: u64,
    /// `bitwise`'s (mask, xor) over `text`.
    masked: Option<(u32, u32)>,
    /// A lookup's result (`KEY map @M`), not a packet field.
    value: bool,
}

/// The rule's text; `anon` gives the keys of an anonymous set (`__set0`) a rule looks up.
pub fn text(exprs: &[Expr], family: IpFamily, anon: &dyn Fn(&str) -> Vec<Vec<u8>>) -> String {
    let mut m = Machine {
        family,
        regs: HashMap::new(),
        seq: 0,
        words: Vec::new(),
    };
    for e in exprs {
        m.expr(e, anon);
    }
    m.words.join(" ")
}

struct Machine {
    family: IpFamily,
    regs: HashMap<u32, Reg>,
    seq: u64,
    words: Vec<String>,
}

/// The 32-bit register index of a register number (NFT_REG_1..4 are 16 bytes each).
fn reg32(r: u32) -> u32 {
    match r {
        1..=4 => 8 + (r - 1) * 4,
        r => r,
    }
}

fn ne32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    for (i, x) in b.iter().take(4).enumerate() {
        w[i] = *x;
    }
    u32::from_ne_bytes(w)
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        p => p.to_string(),
    }
}

impl Machine {
    fn load(&mut self, dreg: Option<u32>, text: String, bytes: u32) {
        let Some(r) = dreg else {
            return self.words.push(format!("unknown-load({text})"));
        };
        self.seq += 1;
        let reg = Reg {
            text,
            words: bytes.div_ceil(4).max(1),
            seq: self.seq,
            masked: None,
            value: false,
        };
        self.regs.insert(reg32(r), reg);
    }

    /// The registers concatenated from `r`: each loaded right after the one before.
    fn key(&self, r: u32) -> String {
        let mut at = reg32(r);
        let Some(first) = self.regs.get(&at) else {
            return format!("unknown-register-{r}");
        };
        let mut parts = vec![first.text.clone()];
        let mut last = first.seq;
        at += first.words;
        while let Some(next) = self.regs.get(&at).filter(|n| n.seq == last + 1 && !n.value) {
            parts.push(next.text.clone());
            last = next.seq;
            at += next.words;
        }
        parts.join(" . ")
    }

    fn expr(&mut self, e: &Expr, anon: &dyn Fn(&str) -> Vec<Vec<u8>>) {
        let dreg = |k| e.u32(k);
        match e.name.as_str() {
            "payload" => {
                let (base, offset, len) = (e.u32(2), e.u32(3), e.u32(4).unwrap_or(0));
                let (v4, v6) = (self.family == IpFamily::V4, self.family == IpFamily::V6);
                let text = match (base, offset, len) {
                    (Some(1), Some(12), 4) if v4 => "ip saddr".to_string(),
                    (Some(1), Some(16), 4) if v4 => "ip daddr".to_string(),
                    (Some(1), Some(8), 16) if v6 => "ip6 saddr".to_string(),
                    (Some(1), Some(24), 16) if v6 => "ip6 daddr".to_string(),
                    (Some(2), Some(2), 2) => "th dport".to_string(),
                    (Some(2), Some(0), 2) => "th sport".to_string(),
                    (b, o, l) => format!("unknown-payload-{b:?}-{o:?}-{l}"),
                };
                self.load(dreg(1), text, len);
            }
            "meta" => {
                let key = e.u32(2).unwrap_or(u32::MAX);
                let name = match key {
                    3 => "meta mark".to_string(),
                    15 => "meta nfproto".to_string(),
                    16 => "meta l4proto".to_string(),
                    k => format!("unknown-meta-{k}"),
                };
                match (dreg(1), e.u32(3)) {
                    (Some(d), _) => self.load(Some(d), name, 4),
                    (None, Some(s)) => self.set_meta(&name, s),
                    (None, None) => self.words.push(format!("unknown-{name}")),
                }
            }
            "ct" => {
                let dir = match e.u8(3) {
                    Some(0) => "original ",
                    Some(1) => "reply ",
                    _ => "",
                };
                let (name, bytes) = match e.u32(2).unwrap_or(u32::MAX) {
                    0 => ("state".to_string(), 4),
                    2 => ("status".to_string(), 4),
                    3 => ("mark".to_string(), 4),
                    12 => ("proto-dst".to_string(), 2),
                    19 => ("ip saddr".to_string(), 4),
                    20 => ("ip daddr".to_string(), 4),
                    21 => ("ip6 saddr".to_string(), 16),
                    22 => ("ip6 daddr".to_string(), 16),
                    k => (format!("unknown-ct-{k}"), 4),
                };
                self.load(dreg(1), format!("ct {dir}{name}"), bytes);
            }
            "fib" => {
                let side = match e.u32(3).unwrap_or(0) & 0x3 {
                    1 => "saddr",
                    2 => "daddr",
                    _ => "unknown-fib-side",
                };
                let what = match e.u32(2) {
                    Some(3) => "type",
                    Some(1) => "oif",
                    _ => "unknown-fib-result",
                };
                self.load(dreg(1), format!("fib {side} {what}"), 4);
            }
            "numgen" => {
                let kind = match e.u32(3) {
                    Some(1) => "random",
                    Some(0) => "inc",
                    _ => "unknown-numgen",
                };
                let modulus = e.u32(2).unwrap_or(0);
                self.load(dreg(1), format!("numgen {kind} mod {modulus}"), 4);
            }
            "byteorder" => {
                // A concatenation's protocol field in an interval set: same field, same order.
                if let (Some(s), Some(d)) = (e.u32(1), e.u32(2))
                    && let Some(reg) = self.regs.get(&reg32(s)).cloned()
                {
                    self.regs.insert(reg32(d), reg);
                }
            }
            "bitwise" => {
                let (Some(s), Some(d)) = (e.u32(1), e.u32(2)) else {
                    return self.words.push("unknown-bitwise".into());
                };
                let (Some(mask), Some(xor)) = (e.value(4), e.value(5)) else {
                    return self.words.push("unknown-bitwise-op".into());
                };
                let Some(mut reg) = self.regs.get(&reg32(s)).cloned() else {
                    return self.words.push(format!("unknown-register-{s}"));
                };
                reg.masked = Some((ne32(mask), ne32(xor)));
                self.regs.insert(reg32(d), reg);
            }
            "cmp" => self.cmp(e),
            "lookup" => self.lookup(e, anon),
            "immediate" => match (e.u32(1), e.verdict(2)) {
                (Some(0), Some((code, chain))) => self.words.push(verdict(code, chain)),
                (d, _) => match e.value(2) {
                    Some(v) => self.load(d, format!("0x{:08x}", ne32(v)), v.len() as u32),
                    None => self.words.push("unknown-immediate".into()),
                },
            },
            "nat" => {
                let kind = match e.u32(1) {
                    Some(1) => "dnat",
                    Some(0) => "snat",
                    _ => "unknown-nat",
                };
                let fam = match e.u32(2) {
                    Some(2) => "ip",
                    Some(10) => "ip6",
                    _ => "unknown-family",
                };
                let addr = e.u32(3).and_then(|r| self.regs.get(&reg32(r)));
                let port = e.u32(5).and_then(|r| self.regs.get(&reg32(r)));
                let to = match (addr, port) {
                    (Some(a), Some(p)) if p.value && p.text != a.text => {
                        format!("{} : {}", a.text, p.text)
                    }
                    (Some(a), _) => a.text.clone(),
                    (None, _) => "unknown-nat-address".to_string(),
                };
                self.words.push(format!("{kind} {fam} to {to}"));
            }
            "masq" => {
                let flags = e.u32(1).unwrap_or(0);
                let mut words = vec!["masquerade".to_string()];
                for (bit, name) in [(0x4, "random"), (0x8, "persistent"), (0x10, "fully-random")] {
                    if flags & bit != 0 {
                        words.push(name.to_string());
                    }
                }
                if flags & !0x1c != 0 {
                    words.push(format!("unknown-flags-{flags:#x}"));
                }
                self.words.push(words.join(" "));
            }
            "reject" => {
                let port_unreachable = if self.family == IpFamily::V4 { 3 } else { 4 };
                let text = match (e.u32(1), e.u8(2)) {
                    (Some(1), _) => "reject with tcp reset".to_string(),
                    (Some(0), Some(c)) if c == port_unreachable => "reject".to_string(),
                    (t, c) => format!("unknown-reject-{t:?}-{c:?}"),
                };
                self.words.push(text);
            }
            "dynset" => {
                let op = match e.u32(3) {
                    Some(0) => "add",
                    Some(1) => "update",
                    _ => "unknown-dynset",
                };
                let set = e.str(1).unwrap_or_default().to_string();
                let key = e.u32(4).map_or("unknown-key".into(), |r| self.key(r));
                let timeout = match e.u64(6) {
                    Some(ms) if ms % 1000 == 0 => format!(" timeout {}s", ms / 1000),
                    Some(ms) => format!(" timeout {ms}ms"),
                    None => String::new(),
                };
                let data = e.u32(5).map(|r| format!(" : {}", self.key(r)));
                let data = data.unwrap_or_default();
                self.words
                    .push(format!("{op} @{set} {{ {key}{timeout}{data} }}"));
            }
            "counter" => self.words.push("counter".into()),
            other => self.words.push(format!("unknown-expression-{other}")),
        }
    }

    /// `meta KEY set …` from a register.
    fn set_meta(&mut self, name: &str, s: u32) {
        let Some(reg) = self.regs.get(&reg32(s)) else {
            return self.words.push(format!("unknown-register-{s}"));
        };
        let text = match reg.masked {
            None => format!("{name} set {}", reg.text),
            Some((mask, xor)) if reg.text == name && xor != 0 && mask == !xor => {
                format!("{name} set {name} | 0x{xor:08x}")
            }
            Some((0xffff_ffff, xor)) if reg.text == name => {
                format!("{name} set {name} ^ 0x{xor:08x}")
            }
            Some((mask, 0)) if reg.text == name => format!("{name} set {name} & 0x{mask:08x}"),
            Some((mask, xor)) => format!("unknown-{name}-set-{mask:#x}-{xor:#x}"),
        };
        self.words.push(text);
    }

    fn cmp(&mut self, e: &Expr) {
        let (Some(s), Some(data)) = (e.u32(1), e.value(3)) else {
            return self.words.push("unknown-cmp".into());
        };
        let Some(reg) = self.regs.get(&reg32(s)) else {
            return self.words.push(format!("unknown-register-{s}"));
        };
        let op = match e.u32(2) {
            Some(0) => "",
            Some(1) => "!= ",
            _ => return self.words.push("unknown-cmp-op".into()),
        };
        let v = ne32(data);
        let text = match (reg.text.as_str(), reg.masked) {
            ("ct state" | "ct status", Some((mask, 0))) if v == 0 => {
                let names: &[(u32, &str)] = if reg.text == "ct state" {
                    &[
                        (1, "invalid"),
                        (2, "established"),
                        (4, "related"),
                        (8, "new"),
                    ]
                } else {
                    &[(0x10, "snat"), (0x20, "dnat")]
                };
                let named = names.iter().filter(|(bit, _)| mask & bit != 0);
                let named: Vec<&str> = named.map(|(_, n)| *n).collect();
                let known: u32 = names.iter().map(|(bit, _)| bit).sum();
                // `ct state new` is `& new != 0`; the opposite compares with 0.
                let negated = if op.is_empty() { "!= " } else { "" };
                if mask & !known != 0 {
                    format!("unknown-{}-{mask:#x}", reg.text)
                } else {
                    format!("{} {negated}{}", reg.text, named.join(","))
                }
            }
            (field, Some((mask, 0))) => {
                let eq = if op.is_empty() { "==" } else { "!=" };
                format!("{field} & 0x{mask:08x} {eq} 0x{v:08x}")
            }
            ("meta l4proto", None) => format!("meta l4proto {op}{}", proto_name(data[0])),
            ("fib saddr type" | "fib daddr type", None) => {
                let kind = match v {
                    1 => "unicast".to_string(),
                    2 => "local".to_string(),
                    v => format!("unknown-type-{v}"),
                };
                format!("{} {op}{kind}", reg.text)
            }
            (field, _) => format!("unknown-cmp-{field}"),
        };
        self.words.push(text);
    }

    fn lookup(&mut self, e: &Expr, anon: &dyn Fn(&str) -> Vec<Vec<u8>>) {
        let (Some(set), Some(s)) = (e.str(1), e.u32(2)) else {
            return self.words.push("unknown-lookup".into());
        };
        let key = self.key(s);
        let not = if e.u32(5).unwrap_or(0) & 1 != 0 {
            "!= "
        } else {
            ""
        };
        let named = if set.starts_with("__set") {
            let mut keys = anon(set);
            keys.sort();
            let shown: Vec<String> = match key.as_str() {
                "meta l4proto" => {
                    let mut protos: Vec<u8> =
                        keys.iter().filter_map(|k| k.first().copied()).collect();
                    protos.sort();
                    protos.into_iter().map(proto_name).collect()
                }
                _ => keys
                    .iter()
                    .map(|k| format!("unknown-element-{k:02x?}"))
                    .collect(),
            };
            format!("{{ {} }}", shown.join(", "))
        } else {
            format!("@{set}")
        };
        match e.u32(3) {
            None => self.words.push(format!("{key} {not}{named}")),
            Some(0) => self.words.push(format!("{key} vmap {named}")),
            Some(d) => {
                self.seq += 1;
                let reg = Reg {
                    text: format!("{key} map {named}"),
                    words: 1,
                    seq: self.seq,
                    masked: None,
                    value: true,
                };
                self.regs.insert(reg32(d), reg);
            }
        }
    }
}

/// A verdict's words (`jump services`, `drop`, …).
fn verdict(code: i32, chain: Option<String>) -> String {
    let chain = chain.unwrap_or_else(|| "unknown-chain".into());
    match code {
        0 => "drop".into(),
        1 => "accept".into(),
        -1 => "continue".into(),
        -3 => format!("jump {chain}"),
        -4 => format!("goto {chain}"),
        -5 => "return".into(),
        c => format!("unknown-verdict-{c}"),
    }
}

#[cfg(test)]
#[path = "rule_text_tests.rs"]
mod tests;
