//! One rule (the arguments after `-A CHAIN`): tokenized as iptables-restore does, parsed into
//! the tests and the target the tracer runs (each extension by `extensions.rs`), and
//! normalized into the text `save` prints and `-D` compares.
//!
//! Invariants: only the extensions and options `extensions.rs` knows are accepted, with
//! iptables' own checks; anything else is an error, never ignored. The normalized text
//! depends only on what the kernel stores: `-d 10.0.0.1` and `-d 10.0.0.1/32`, `--or-mark
//! 0x4000` and `--set-xmark 0x4000/0x4000`, the order of options inside one match, and quoting
//! all normalize alike; the order of matches is kept, and the header (`-s`, `-d`, `-p`) comes
//! first, as in `iptables-save`. A `!` negates exactly the next option.

use std::net::IpAddr;

use ipnet::IpNet;

use super::bpf::Insn;
use super::extensions::{MATCHES, TARGETS, build_match, build_target, opt_name};
use crate::model::{IpFamily, Protocol};

/// One test a packet must pass (`neg`: the test is inverted with `!`).
#[derive(Clone, Debug, PartialEq)]
pub struct Test {
    pub neg: bool,
    pub cond: Cond,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Src(IpNet),
    Dst(IpNet),
    Proto(Protocol),
    /// `--dport lo[:hi]` of `-m tcp|udp|sctp`.
    Dport(u16, u16),
    /// `-m addrtype --src-type LOCAL`.
    SrcLocal,
    /// `-m addrtype --dst-type LOCAL`.
    DstLocal,
    /// `-m conntrack --ctstate`: a mask of `CT_*`.
    CtState(u8),
    /// `-m mark --mark value/mask`.
    Mark(u32, u32),
    /// `-m statistic --mode random`: matches when a random 31-bit number is below this.
    Random(u32),
    /// `-m recent --set --name L --rsource`.
    RecentSet(String),
    /// `-m recent --update --seconds S [--reap] --name L --rsource`.
    RecentUpdate(String, u64),
    Bpf(Vec<Insn>),
}

pub const CT_NEW: u8 = 1 << 1;
pub const CT_DNAT: u8 = 1 << 6;

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// No `-j`: the rule only counts.
    None,
    Jump(String),
    Goto(String),
    Accept,
    Drop,
    Return,
    Reject(String),
    Dnat(IpAddr, Option<u16>),
    /// `MARK --set-xmark value/mask`: mark = (mark & !mask) ^ value.
    Mark(u32, u32),
    Masquerade,
}

/// A parsed rule and its normalized text.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub text: String,
    /// The header tests, then every match's, in order.
    pub tests: Vec<Test>,
    pub target: Target,
}

/// Whether `name` is a target rather than a chain.
pub fn is_target(name: &str) -> bool {
    TARGETS.iter().any(|(t, _)| *t == name)
}

/// Splits a line into words as iptables-restore does: whitespace separates, single or double
/// quotes group (and are removed), a backslash escapes the next character.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut in_word, mut quote) = (false, None);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
                continue;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                }
                in_word = false;
                continue;
            }
            (None, c) => cur.push(c),
        }
        in_word = true;
    }
    if quote.is_some() {
        return Err("unterminated quoted string".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// What one `-m` or `-j` collected before it is built: (option index, negated, value).
pub struct Opened<'a> {
    pub name: &'a str,
    pub opts: Vec<(usize, bool, Option<&'a str>)>,
}

fn net(s: &str, family: IpFamily) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(
            s.parse::<IpAddr>()
                .map_err(|_| format!("host/network `{s}' not found"))?,
        ),
    };
    if IpFamily::of(&net.addr()) != family {
        return Err(format!("host/network `{s}' not found (another family)"));
    }
    Ok(net.trunc())
}

fn proto(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Ok(Protocol::Tcp),
        "udp" | "17" => Ok(Protocol::Udp),
        "sctp" | "132" => Ok(Protocol::Sctp),
        _ => Err(format!(
            "unknown protocol `{s}' (the fake knows tcp, udp, sctp)"
        )),
    }
}

impl Rule {
    /// Parses the words after `-A CHAIN` in a table of `family`.
    pub fn parse(args: &[String], family: IpFamily) -> Result<Rule, String> {
        let mut header: [Option<(bool, &str)>; 3] = [None; 3];
        let mut matches: Vec<Opened> = Vec::new();
        let mut target: Option<Opened> = None;
        let mut goto = None;
        let mut neg = false;
        let mut it = args.iter().map(String::as_str);
        while let Some(w) = it.next() {
            let mut value = |what: &str| it.next().ok_or_else(|| format!("{what} needs a value"));
            let slot = match w {
                "!" if !neg => {
                    neg = true;
                    continue;
                }
                "-s" | "--source" => Some(0),
                "-d" | "--destination" => Some(1),
                "-p" | "--protocol" => Some(2),
                _ => None,
            };
            let opens = matches!(w, "-m" | "--match" | "-j" | "--jump" | "-g" | "--goto");
            if neg && opens {
                return Err(format!("Bad argument `{w}' after `!'"));
            }
            if let Some(i) = slot {
                if header[i].replace((neg, value(w)?)).is_some() {
                    return Err(format!("multiple {w} flags not allowed"));
                }
            } else if matches!(w, "-m" | "--match") {
                let name = value(w)?;
                if !MATCHES.iter().any(|(m, _)| *m == name) {
                    return Err(format!(
                        "Couldn't load match `{name}' (unknown to the fake)"
                    ));
                }
                matches.push(Opened { name, opts: vec![] });
            } else if matches!(w, "-j" | "--jump" | "-g" | "--goto") {
                if target.is_some() || goto.is_some() {
                    return Err("multiple -j or -g flags not allowed".into());
                }
                let name = value(w)?;
                if matches!(w, "-g" | "--goto") {
                    goto = Some(name);
                } else {
                    target = Some(Opened { name, opts: vec![] });
                }
            } else if let Some(t) = target.as_mut().filter(|_| w.starts_with("--")) {
                let spec = TARGETS.iter().find(|(n, _)| *n == t.name);
                let Some(i) = spec.and_then(|(_, o)| o.iter().position(|o| *o == w)) else {
                    return Err(format!("unknown option \"{w}\" for target {}", t.name));
                };
                let flag = t.name == "MASQUERADE";
                let v = if flag { None } else { Some(value(w)?) };
                t.opts.push((i, neg, v));
            } else if w.starts_with("--") {
                let known = |name: &str| {
                    let (_, spec) = MATCHES.iter().find(|(m, _)| *m == name)?;
                    let i = spec.iter().position(|(o, _, _)| *o == w)?;
                    Some((i, spec[i]))
                };
                // The latest match that knows the option takes it; `--dport` after `-p tcp`
                // without `-m tcp` loads tcp implicitly, as iptables does.
                let found = matches
                    .iter()
                    .rposition(|m| known(m.name).is_some())
                    .or_else(|| {
                        let p = proto(header[2]?.1).ok()?;
                        known(p.lower())?;
                        matches.push(Opened {
                            name: p.lower(),
                            opts: vec![],
                        });
                        Some(matches.len() - 1)
                    });
                let Some(m) = found else {
                    return Err(format!("unknown option \"{w}\""));
                };
                let (i, (_, takes, negatable)) = known(matches[m].name).expect("found above");
                if neg && !negatable {
                    return Err(format!("{w} cannot be inverted"));
                }
                let v = if takes { Some(value(w)?) } else { None };
                matches[m].opts.push((i, neg, v));
            } else {
                return Err(format!("Bad argument `{w}'"));
            }
            neg = false;
        }
        if neg {
            return Err("a trailing `!'".into());
        }
        build(header, &matches, target, goto, family)
    }
}

fn build(
    header: [Option<(bool, &str)>; 3],
    matches: &[Opened],
    target: Option<Opened>,
    goto: Option<&str>,
    family: IpFamily,
) -> Result<Rule, String> {
    let mut text = Vec::new();
    let mut tests = Vec::new();
    let bang = |neg: bool| if neg { "! " } else { "" };
    let mut rule_proto = None;
    for (i, h) in header.iter().enumerate() {
        let Some((neg, v)) = *h else { continue };
        let (flag, cond, shown) = match i {
            0 | 1 => {
                let n = net(v, family)?;
                let c = if i == 0 { Cond::Src(n) } else { Cond::Dst(n) };
                (["-s", "-d"][i], c, n.to_string())
            }
            _ => {
                let p = proto(v)?;
                if !neg {
                    rule_proto = Some(p);
                }
                ("-p", Cond::Proto(p), p.lower().to_string())
            }
        };
        text.push(format!("{}{flag} {shown}", bang(neg)));
        tests.push(Test { neg, cond });
    }
    for m in matches {
        let mut opts = m.opts.clone();
        opts.sort_by_key(|o| o.0);
        if let Some(w) = opts.windows(2).find(|w| w[0].0 == w[1].0) {
            let opt = opt_name(m.name, w[0].0);
            return Err(format!("multiple {opt} flags not allowed in -m {}", m.name));
        }
        let (words, conds) = build_match(m.name, &opts, rule_proto, family)?;
        text.push(format!("-m {}{words}", m.name));
        tests.extend(conds);
    }
    let target = match (target, goto) {
        (None, None) => Target::None,
        (None, Some(chain)) => {
            if is_target(chain) {
                return Err(format!("-g {chain}: only a chain can be gone to"));
            }
            text.push(format!("-g {chain}"));
            Target::Goto(chain.to_string())
        }
        (Some(t), _) => {
            let (words, target) = build_target(&t, rule_proto, family)?;
            text.push(format!("-j {}{words}", t.name));
            target
        }
    };
    Ok(Rule {
        text: text.join(" "),
        tests,
        target,
    })
}
