//! Classic BPF for `-m bpf --bytecode`: the program text parsed and checked as the kernel's
//! `bpf_check_classic` would (count, known opcodes, jumps inside the program, a final return),
//! and a tiny interpreter that runs it over a synthesized IP header.
//!
//! Invariants: only the opcodes listed in `KNOWN` are accepted (kproxy's hairpin programs use
//! five of them); a load past the end of the packet makes the program return 0, as in the
//! kernel; the normalized text is the one `iptables-save` prints (`N,code jt jf k,…`).

use std::net::IpAddr;

/// One instruction: `code jt jf k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const TAX: u16 = 0x07;
const TXA: u16 = 0x87;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JEQ_X: u16 = 0x1d;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const RET_A: u16 = 0x16;
const KNOWN: [u16; 14] = [
    LD_W_ABS, LD_H_ABS, LD_B_ABS, TAX, TXA, JA, JEQ_K, JEQ_X, JGT_K, JGE_K, JSET_K, AND_K, RET_K,
    RET_A,
];

/// Parses `N,code jt jf k,…` (xt_bpf's `--bytecode`).
pub fn parse(text: &str) -> Result<Vec<Insn>, String> {
    let bad = |why: &str| format!("bad --bytecode {text:?}: {why}");
    let mut parts = text.split(',');
    let count: usize = parts
        .next()
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| bad("no instruction count"))?;
    let mut prog = Vec::new();
    for part in parts {
        let n: Vec<u64> = part
            .split_whitespace()
            .map(|w| w.parse().map_err(|_| bad("not a number")))
            .collect::<Result<_, _>>()?;
        let [code, jt, jf, k] = n[..] else {
            return Err(bad("an instruction is not `code jt jf k`"));
        };
        let (Ok(code), Ok(jt), Ok(jf), Ok(k)) = (
            u16::try_from(code),
            u8::try_from(jt),
            u8::try_from(jf),
            u32::try_from(k),
        ) else {
            return Err(bad("a field out of range"));
        };
        prog.push(Insn { code, jt, jf, k });
    }
    if prog.len() != count || count == 0 || count > 4096 {
        return Err(bad("the count does not match the instructions"));
    }
    for (pc, i) in prog.iter().enumerate() {
        if !KNOWN.contains(&i.code) {
            return Err(bad(&format!("opcode {} is unknown to the fake", i.code)));
        }
        let targets = match i.code {
            JA => vec![i.k as usize],
            JEQ_K | JEQ_X | JGT_K | JGE_K | JSET_K => vec![i.jt as usize, i.jf as usize],
            _ => vec![],
        };
        if targets.iter().any(|t| pc + 1 + t >= prog.len()) {
            return Err(bad(&format!("instruction {pc} jumps out of the program")));
        }
    }
    if !matches!(prog.last().map(|i| i.code), Some(RET_K | RET_A)) {
        return Err(bad("the program does not end in a return"));
    }
    Ok(prog)
}

/// The text `iptables-save` prints for `prog`.
pub fn text(prog: &[Insn]) -> String {
    let mut out = prog.len().to_string();
    for i in prog {
        out.push_str(&format!(",{} {} {} {}", i.code, i.jt, i.jf, i.k));
    }
    out
}

/// The network and transport headers of a first packet, as the program sees them at a
/// netfilter hook (offset 0 is the IP header).
pub fn header(src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Vec<u8> {
    let mut h = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0];
            h.extend(s.octets());
            h.extend(d.octets());
            h
        }
        (s, d) => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            let mut h = vec![0x60, 0, 0, 0, 0, 20, proto, 64];
            h.extend(to6(s));
            h.extend(to6(d));
            h
        }
    };
    h.extend(40000u16.to_be_bytes());
    h.extend(dport.to_be_bytes());
    h.extend([0; 16]);
    h
}

/// Runs `prog` over `packet`; the packet matches when the result is not 0.
pub fn run(prog: &[Insn], packet: &[u8]) -> u32 {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    let load = |k: u32, n: usize| -> Option<u32> {
        let start = k as usize;
        let bytes = packet.get(start..start.checked_add(n)?)?;
        Some(bytes.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b)))
    };
    while let Some(i) = prog.get(pc) {
        pc += 1;
        let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
        match i.code {
            LD_W_ABS | LD_H_ABS | LD_B_ABS => {
                let n = match i.code {
                    LD_W_ABS => 4,
                    LD_H_ABS => 2,
                    _ => 1,
                };
                match load(i.k, n) {
                    Some(v) => a = v,
                    None => return 0,
                }
            }
            TAX => x = a,
            TXA => a = x,
            AND_K => a &= i.k,
            JA => pc += i.k as usize,
            JEQ_K => pc += jump(a == i.k),
            JEQ_X => pc += jump(a == x),
            JGT_K => pc += jump(a > i.k),
            JGE_K => pc += jump(a >= i.k),
            JSET_K => pc += jump(a & i.k != 0),
            RET_K => return i.k,
            RET_A => return a,
            _ => unreachable!("parse admits only known opcodes"),
        }
    }
    0
}
