//! The match and target extensions the fake knows, as iptables' libxt_* and the kernel's
//! xt_* define them: each option's spelling, value and negation, the checks iptables makes on
//! a rule using them, the tests and target they become, and their normalized text.
//!
//! Invariants: `MATCHES` and `TARGETS` are the whole vocabulary (what kproxy emits and a few
//! spellings of it); options print in the order of their spec, so the order they were given
//! in does not matter; values print as iptables-save prints them (`0x4000/0x4000`, the
//! probability with 11 decimals, states in the kernel's order, comments quoted, recent's
//! default `--mask`; a comment cut to 255 bytes), checked against iptables-save v1.8.9.

use std::net::IpAddr;

use super::bpf;
use super::rule::{Cond, Opened, Target, Test};
use crate::model::{IpFamily, Protocol};

/// One option of a match: its spelling, whether it takes a value, whether `!` may precede it.
type MatchOpt = (&'static str, bool, bool);

/// In the order iptables-save prints them.
const CT_STATES: [&str; 7] = [
    "INVALID",
    "NEW",
    "RELATED",
    "ESTABLISHED",
    "UNTRACKED",
    "SNAT",
    "DNAT",
];

/// Match modules: their options in the order iptables-save prints them, and whether each
/// takes a value and may be negated.
pub const MATCHES: &[(&str, &[MatchOpt])] = &[
    ("tcp", &[("--dport", true, true)]),
    ("udp", &[("--dport", true, true)]),
    ("sctp", &[("--dport", true, true)]),
    ("comment", &[("--comment", true, false)]),
    (
        "addrtype",
        &[("--src-type", true, true), ("--dst-type", true, true)],
    ),
    ("conntrack", &[("--ctstate", true, true)]),
    ("mark", &[("--mark", true, true)]),
    (
        "statistic",
        &[("--mode", true, false), ("--probability", true, false)],
    ),
    (
        "recent",
        &[
            ("--set", false, false),
            ("--update", false, false),
            ("--seconds", true, false),
            ("--reap", false, false),
            ("--name", true, false),
            ("--mask", true, false),
            ("--rsource", false, false),
        ],
    ),
    ("bpf", &[("--bytecode", true, false)]),
];

/// Targets and their options (each takes a value, except MASQUERADE's flags).
pub const TARGETS: &[(&str, &[&str])] = &[
    ("ACCEPT", &[]),
    ("DROP", &[]),
    ("RETURN", &[]),
    ("REJECT", &["--reject-with"]),
    ("DNAT", &["--to-destination"]),
    (
        "MARK",
        &[
            "--set-xmark",
            "--set-mark",
            "--or-mark",
            "--and-mark",
            "--xor-mark",
        ],
    ),
    ("MASQUERADE", &["--random", "--random-fully"]),
];

/// A word as iptables-save prints it: quoted when it holds blanks or quotes, or `always`.
fn quote(s: &str, always: bool) -> String {
    if always || s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

fn number(s: &str) -> Result<u32, String> {
    let n = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    n.map_err(|_| format!("bad number {s:?}"))
}

/// `value[/mask]` of `--mark` and the MARK target (mask defaults to all ones).
fn value_mask(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((number(v)?, number(m)?)),
        None => Ok((number(s)?, u32::MAX)),
    }
}

fn mark_text(v: u32, m: u32) -> String {
    if m == u32::MAX {
        format!("{v:#x}")
    } else {
        format!("{v:#x}/{m:#x}")
    }
}

fn port(s: &str) -> Result<u16, String> {
    s.parse()
        .map_err(|_| format!("invalid port/service `{s}' specified"))
}

pub fn opt_name(module: &str, i: usize) -> &'static str {
    MATCHES
        .iter()
        .find(|(m, _)| *m == module)
        .map_or("?", |(_, spec)| spec[i].0)
}

/// One match's normalized words (after `-m NAME`) and tests.
pub fn build_match(
    name: &str,
    opts: &[(usize, bool, Option<&str>)],
    rule_proto: Option<Protocol>,
    family: IpFamily,
) -> Result<(String, Vec<Test>), String> {
    let get = |i: usize| {
        opts.iter()
            .find(|o| o.0 == i)
            .map(|o| (o.1, o.2.unwrap_or("")))
    };
    let mut words = String::new();
    let mut tests = Vec::new();
    let mut push = |neg: bool, opt: &str, shown: &str, cond: Option<Cond>| {
        words.push_str(&format!(" {}{opt}", if neg { "! " } else { "" }));
        if !shown.is_empty() {
            words.push_str(&format!(" {shown}"));
        }
        tests.extend(cond.map(|cond| Test { neg, cond }));
    };
    match name {
        "tcp" | "udp" | "sctp" => {
            if rule_proto.map(crate::model::Protocol::lower) != Some(name) {
                return Err(format!("-m {name} is only valid with -p {name}"));
            }
            if let Some((neg, v)) = get(0) {
                let (lo, hi) = match v.split_once(':') {
                    Some((lo, hi)) => (port(lo)?, port(hi)?),
                    None => (port(v)?, port(v)?),
                };
                let shown = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}:{hi}")
                };
                push(neg, "--dport", &shown, Some(Cond::Dport(lo, hi)));
            }
        }
        "comment" => {
            let (_, c) = get(0).ok_or("-m comment needs --comment")?;
            // iptables 1.8.9 (both variants) silently keeps the first 255 bytes.
            let cut = (0..=c.len().min(255))
                .rev()
                .find(|i| c.is_char_boundary(*i));
            push(
                false,
                "--comment",
                &quote(&c[..cut.unwrap_or(0)], true),
                None,
            );
        }
        "addrtype" => {
            for (i, opt, cond) in [
                (0, "--src-type", Cond::SrcLocal),
                (1, "--dst-type", Cond::DstLocal),
            ] {
                if let Some((neg, v)) = get(i) {
                    if v != "LOCAL" {
                        return Err(format!("{opt} {v}: the fake knows LOCAL only"));
                    }
                    push(neg, opt, "LOCAL", Some(cond));
                }
            }
            if opts.is_empty() {
                return Err("-m addrtype needs --src-type or --dst-type".into());
            }
        }
        "conntrack" => {
            let (neg, v) =
                get(0).ok_or("-m conntrack needs --ctstate (the fake knows no other)")?;
            let mut mask = 0u8;
            for s in v.split(',') {
                let bit = CT_STATES
                    .iter()
                    .position(|k| k.eq_ignore_ascii_case(s))
                    .ok_or_else(|| format!("Bad ctstate \"{s}\""))?;
                mask |= 1 << bit;
            }
            let shown: Vec<&str> = (CT_STATES.iter().enumerate())
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| *s)
                .collect();
            push(
                neg,
                "--ctstate",
                &shown.join(","),
                Some(Cond::CtState(mask)),
            );
        }
        "mark" => {
            let (neg, v) = get(0).ok_or("-m mark needs --mark")?;
            let (v, m) = value_mask(v)?;
            push(neg, "--mark", &mark_text(v, m), Some(Cond::Mark(v & m, m)));
        }
        "statistic" => {
            if get(0).map(|o| o.1) != Some("random") {
                return Err("-m statistic: the fake knows --mode random only".into());
            }
            let (_, p) = get(1).ok_or("-m statistic --mode random needs --probability")?;
            let p: f64 = p.parse().map_err(|_| format!("bad --probability {p}"))?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("--probability {p} is not in [0, 1]"));
            }
            // libxt_statistic: lround(0x80000000 * p); printed back with 11 decimals.
            let k = (p * f64::from(0x8000_0000u32)).round() as u32;
            push(false, "--mode", "random", None);
            let shown = format!("{:.11}", f64::from(k) / f64::from(0x8000_0000u32));
            push(false, "--probability", &shown, Some(Cond::Random(k)));
        }
        "recent" => {
            let (set, update) = (get(0).is_some(), get(1).is_some());
            if set == update {
                return Err("-m recent: the fake needs exactly one of --set, --update".into());
            }
            let seconds = get(2).map(|(_, s)| s.parse::<u64>()).transpose();
            let seconds = seconds.map_err(|_| "bad --seconds".to_string())?;
            if set && seconds.is_some() {
                return Err("--seconds is only valid with --rcheck or --update".into());
            }
            if get(3).is_some() && seconds.is_none_or(|s| s == 0) {
                return Err("--reap needs --seconds".into());
            }
            let list = get(4).map_or("DEFAULT", |o| o.1);
            if list.is_empty() || list.len() >= 200 {
                return Err(format!("-m recent --name {list:?}: not 1 to 199 bytes"));
            }
            let cond = if set {
                push(false, "--set", "", None);
                Cond::RecentSet(list.to_string())
            } else {
                push(false, "--update", "", None);
                Cond::RecentUpdate(list.to_string(), seconds.unwrap_or(0))
            };
            if let Some(s) = seconds {
                push(false, "--seconds", &s.to_string(), None);
            }
            if get(3).is_some() {
                push(false, "--reap", "", None);
            }
            push(false, "--name", list, None);
            let mask = match family {
                IpFamily::V4 => "255.255.255.255",
                IpFamily::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            };
            if get(5).is_some_and(|(_, m)| m.parse::<IpAddr>().ok() != mask.parse().ok()) {
                return Err("-m recent --mask: the fake knows the full mask only".into());
            }
            push(false, "--mask", mask, None);
            push(false, "--rsource", "", Some(cond));
        }
        "bpf" => {
            let (_, code) = get(0).ok_or("-m bpf needs --bytecode")?;
            let prog = bpf::parse(code)?;
            push(
                false,
                "--bytecode",
                &quote(&bpf::text(&prog), true),
                Some(Cond::Bpf(prog)),
            );
        }
        _ => unreachable!("only known matches are opened"),
    }
    Ok((words, tests))
}

/// A target's normalized words (after `-j NAME`) and meaning.
pub fn build_target(
    t: &Opened,
    rule_proto: Option<Protocol>,
    family: IpFamily,
) -> Result<(String, Target), String> {
    let spec = TARGETS.iter().find(|(n, _)| *n == t.name).map(|(_, o)| *o);
    let Some(spec) = spec else {
        if !t.opts.is_empty() {
            return Err(format!("a jump to chain {} takes no options", t.name));
        }
        return Ok((String::new(), Target::Jump(t.name.to_string())));
    };
    if t.opts.iter().any(|o| o.1) {
        return Err(format!("{} options cannot be inverted", t.name));
    }
    let mut opts = t.opts.clone();
    opts.sort_by_key(|o| o.0);
    if opts.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(format!("an option given twice to -j {}", t.name));
    }
    let one = || -> Result<(usize, &str), String> {
        match opts[..] {
            [(i, _, Some(v))] => Ok((i, v)),
            _ => Err(format!("-j {} needs exactly one of {spec:?}", t.name)),
        }
    };
    Ok(match t.name {
        "ACCEPT" => (String::new(), Target::Accept),
        "DROP" => (String::new(), Target::Drop),
        "RETURN" => (String::new(), Target::Return),
        "REJECT" => {
            let with = opts.first().and_then(|o| o.2).unwrap_or("port-unreachable");
            let (v4, v6) = match with
                .trim_start_matches("icmp-")
                .trim_start_matches("icmp6-")
            {
                "port-unreachable" | "port-unreach" => {
                    ("icmp-port-unreachable", "icmp6-port-unreachable")
                }
                "host-unreachable" | "host-unreach" => ("icmp-host-unreachable", ""),
                "net-unreachable" | "net-unreach" => ("icmp-net-unreachable", ""),
                "admin-prohibited" | "admin-prohib" => ("icmp-admin-prohibited", ""),
                "adm-prohibited" => ("", "icmp6-adm-prohibited"),
                "tcp-reset" => ("tcp-reset", "tcp-reset"),
                _ => ("", ""),
            };
            let with = if family == IpFamily::V4 { v4 } else { v6 };
            if with.is_empty() {
                return Err(format!("unknown reject type {:?} (to the fake)", opts[0].2));
            }
            if with == "tcp-reset" && rule_proto != Some(Protocol::Tcp) {
                return Err("--reject-with tcp-reset is only valid with -p tcp".into());
            }
            (
                format!(" --reject-with {with}"),
                Target::Reject(with.to_string()),
            )
        }
        "DNAT" => {
            let (_, to) = one()?;
            let (addr, port) = match to.strip_prefix('[') {
                Some(rest) => {
                    let (a, p) = rest.split_once(']').ok_or("bad --to-destination")?;
                    (a, p.strip_prefix(':'))
                }
                None if family == IpFamily::V6 => (to, None),
                None => match to.split_once(':') {
                    Some((a, p)) => (a, Some(p)),
                    None => (to, None),
                },
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("Bad IP address \"{addr}\""))?;
            if IpFamily::of(&addr) != family {
                return Err(format!("Bad IP address \"{addr}\" (another family)"));
            }
            let port = port.map(self::port).transpose()?;
            if port.is_some() && rule_proto.is_none() {
                return Err("Need TCP, UDP, SCTP or DCCP with port specification".into());
            }
            let shown = match (addr, port) {
                (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
                (a, Some(p)) => format!("{a}:{p}"),
                (a, None) => a.to_string(),
            };
            (
                format!(" --to-destination {shown}"),
                Target::Dnat(addr, port),
            )
        }
        "MARK" => {
            let (i, v) = one()?;
            let (v, m) = value_mask(v)?;
            let (value, mask) = match spec[i] {
                "--set-xmark" => (v, m),
                "--set-mark" => (v, m | v),
                "--or-mark" => (v, v),
                "--and-mark" => (0, !v),
                _ => (v, 0),
            };
            (
                format!(" --set-xmark {value:#x}/{mask:#x}"),
                Target::Mark(value, mask),
            )
        }
        "MASQUERADE" => {
            let flags: String = opts.iter().map(|o| format!(" {}", spec[o.0])).collect();
            (flags, Target::Masquerade)
        }
        _ => unreachable!("every target in TARGETS is handled"),
    })
}
