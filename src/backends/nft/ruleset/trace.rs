//! The packet tracer: runs the first packet of a connection through kproxy's nat chain at
//! prerouting (or output, for node-originated packets), then, when nat left it alone, through
//! `cluster-ips-check` as the filter hooks after DNAT do, by interpreting kproxy's rule texts
//! against the sets and maps, and says where it ends up.
//!
//! Invariants: the tracer reads only the table; every constant that decides the path (the `mod
//! N` of `numgen`, the map a `dnat` reads, the set a match names) comes from the rule text, so
//! rules and data that disagree show up. What a real kernel would turn into a black hole is
//! `Outcome::Broken`, never a silent answer: a verdict naming a missing chain, a set or map a
//! rule names that is missing, an `lb-N` chain whose rule says another `mod`, a missing slot, a
//! slot at or beyond N left behind, a statement the tracer does not understand. `numgen` is
//! expanded to every slot, so `Dnat` lists every endpoint the packet can reach, in slot order.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::Table;
use super::types::{self, Atom, Verdict};
use crate::backends::nft::skeleton::{self, LB_FAMILIES};
use crate::model::{IpFamily, Protocol};

#[path = "trace_dnat.rs"]
mod dnat;

/// The chain the filter hooks jump to for new connections after DNAT.
const CHECK: &str = "cluster-ips-check";

/// The first packet of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub proto: Protocol,
    pub dport: u16,
    /// Sent by the node itself (`fib saddr type local`): traverses nat-output, not prerouting.
    pub from_local: bool,
}

/// Where the packet goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// DNATed; every endpoint it can reach, one per numgen slot, in slot order.
    Dnat(Vec<SocketAddr>),
    Reject,
    Drop,
    /// Left alone (accepted untouched).
    NotAService,
    /// The ruleset and its data disagree in a way a real kernel would black-hole.
    Broken(String),
}

/// The outcome and whether the packet leaves the nat chain marked for masquerade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub outcome: Outcome,
    pub masquerade: bool,
}

enum Flow {
    Next,
    Return,
    Done(Outcome),
}

#[derive(Clone, Debug)]
enum Val {
    /// A packet field and the index of its text in `Run::texts`.
    Atom(Atom, usize),
    Numgen(u32),
}

/// Every rule of a table, split into words once for many packets.
pub struct Program<'a> {
    t: &'a Table,
    rules: HashMap<&'a str, Vec<(&'a str, Vec<&'a str>)>>,
    /// The elements of every interval set, parsed.
    intervals: HashMap<&'a str, Vec<Vec<Atom>>>,
    /// The mark that asks for masquerading, as the table's `mark-for-masquerade` chain sets it
    /// (upstream's 0x4000 when the chain is missing).
    masquerade_mark: u32,
}

impl<'a> Program<'a> {
    pub fn new(t: &'a Table) -> Program<'a> {
        let rules = t
            .chains
            .iter()
            .map(|(name, c)| {
                let rules = c.rules.iter().map(|r| (r.as_str(), tokens(r))).collect();
                (name.as_str(), rules)
            })
            .collect();
        let intervals = t
            .sets
            .iter()
            .filter(|(_, s)| s.ty.interval)
            .map(|(name, s)| {
                let parsed = s.elements.keys();
                let parsed = parsed.filter_map(|k| types::atoms(&s.ty.key, k, true).ok());
                (name.as_str(), parsed.collect())
            })
            .collect();
        let set_mark = t
            .chains
            .get("mark-for-masquerade")
            .and_then(|c| c.rules.first());
        let masquerade_mark = set_mark
            .and_then(|r| r.rsplit(' ').next())
            .and_then(|m| hex(m).ok())
            .unwrap_or(1 << skeleton::DEFAULT_MASQUERADE_BIT);
        Program {
            t,
            rules,
            intervals,
            masquerade_mark,
        }
    }

    /// Traces `p` through this table (kproxy's table of `family`).
    pub fn trace(&self, family: IpFamily, p: &Packet) -> Trace {
        self.trace_asking(family, p).0
    }

    /// `trace`, and every (set, key) it looked up in a set without intervals, in order: what a
    /// caller that fetches elements on demand must fetch before it traces again.
    pub fn trace_asking(&self, family: IpFamily, p: &Packet) -> (Trace, Vec<(String, String)>) {
        let texts = [
            p.saddr.to_string(),
            p.daddr.to_string(),
            types::text(&[Atom::Proto(proto_number(p.proto))]),
            p.dport.to_string(),
        ];
        let mut run = Run {
            t: self.t,
            prog: self,
            family,
            p,
            mark: 0,
            depth: 0,
            texts,
            asked: RefCell::new(Vec::new()),
        };
        let outcome = run.base().and_then(|o| run.after_dnat(o));
        let outcome = outcome.unwrap_or_else(Outcome::Broken);
        // A rejected or dropped packet goes nowhere: its mark is moot.
        let gone = matches!(outcome, Outcome::Reject | Outcome::Drop);
        let trace = Trace {
            outcome,
            masquerade: !gone && run.mark & self.masquerade_mark != 0,
        };
        (trace, run.asked.into_inner())
    }
}

struct Run<'a> {
    t: &'a Table,
    prog: &'a Program<'a>,
    family: IpFamily,
    p: &'a Packet,
    mark: u32,
    depth: usize,
    /// The canonical texts of saddr, daddr, l4proto and dport, built once per packet.
    texts: [String; 4],
    /// (set, key) of every lookup in a set without intervals.
    asked: RefCell<Vec<(String, String)>>,
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn hex(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| format!("bad mark {s:?}"))
}

/// Traces `p` through `table` (kproxy's table of `family`; `None` when it does not exist).
pub fn trace(table: Option<&Table>, family: IpFamily, p: &Packet) -> Trace {
    match table {
        Some(t) => Program::new(t).trace(family, p),
        None => Trace {
            outcome: Outcome::NotAService,
            masquerade: false,
        },
    }
}

/// Words, with `{`, `}` and `,` as words of their own.
fn tokens(rule: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for word in rule.split_whitespace() {
        let mut rest = word;
        while !rest.is_empty() {
            let cut = match rest.find(['{', '}', ',']) {
                Some(0) => 1,
                Some(i) => i,
                None => rest.len(),
            };
            out.push(&rest[..cut]);
            rest = &rest[cut..];
        }
    }
    out
}

impl Run<'_> {
    fn base(&mut self) -> Result<Outcome, String> {
        let hook = if self.p.from_local {
            "hook output"
        } else {
            "hook prerouting"
        };
        let base = self.t.chains.iter().find(|(_, c)| {
            c.head
                .as_deref()
                .is_some_and(|h| h.contains("type nat") && h.contains(hook))
        });
        let Some((name, chain)) = base else {
            return Ok(Outcome::NotAService);
        };
        let policy_drop = chain
            .head
            .as_deref()
            .is_some_and(|h| h.contains("policy drop"));
        Ok(match self.chain(name)? {
            Some(o) => o,
            None if policy_drop => Outcome::Drop,
            None => Outcome::NotAService,
        })
    }

    /// A new connection the nat chains left alone meets the filter hooks after DNAT, whose
    /// `cluster-ips-check` (when the table has it) rejects a ClusterIP's undefined port and
    /// drops an unallocated ServiceCIDR address.
    fn after_dnat(&mut self, nat: Outcome) -> Result<Outcome, String> {
        if nat != Outcome::NotAService || !self.prog.rules.contains_key(CHECK) {
            return Ok(nat);
        }
        self.depth = 0;
        Ok(self.chain(CHECK)?.unwrap_or(Outcome::NotAService))
    }

    /// Runs a chain: `Some(outcome)` when a verdict ends the packet's path, `None` when the
    /// chain returns.
    fn chain(&mut self, name: &str) -> Result<Option<Outcome>, String> {
        self.depth += 1;
        if self.depth > 32 {
            return Err(format!("chains jump in a loop through {name}"));
        }
        let prog = self.prog;
        let Some(rules) = prog.rules.get(name) else {
            return Err(format!(
                "a verdict sends the packet to chain {name}, which does not exist"
            ));
        };
        for (rule, toks) in rules {
            match self.rule(name, rule, toks)? {
                Flow::Next => {}
                Flow::Return => break,
                Flow::Done(o) => return Ok(Some(o)),
            }
        }
        self.depth -= 1;
        Ok(None)
    }

    fn verdict(&mut self, v: &Verdict) -> Result<Flow, String> {
        Ok(match v {
            Verdict::Accept => Flow::Done(Outcome::NotAService),
            Verdict::Drop => Flow::Done(Outcome::Drop),
            Verdict::Return => Flow::Return,
            Verdict::Continue => Flow::Next,
            Verdict::Jump(c) => match self.chain(c)? {
                Some(o) => Flow::Done(o),
                None => Flow::Next,
            },
            Verdict::Goto(c) => match self.chain(c)? {
                Some(o) => Flow::Done(o),
                None => Flow::Return,
            },
        })
    }

    fn rule(&mut self, chain: &str, rule: &str, toks: &[&str]) -> Result<Flow, String> {
        let tok = |i: usize| toks.get(i).copied().unwrap_or("");
        let mut i = 0;
        while i < toks.len() {
            match (tok(i), tok(i + 1)) {
                ("jump", target) => return self.verdict(&Verdict::Jump(target.to_string())),
                ("goto", target) => return self.verdict(&Verdict::Goto(target.to_string())),
                ("drop", _) => return Ok(Flow::Done(Outcome::Drop)),
                ("reject", _) => return Ok(Flow::Done(Outcome::Reject)),
                ("accept", _) => return Ok(Flow::Done(Outcome::NotAService)),
                ("return", _) => return Ok(Flow::Return),
                ("fib", _) => {
                    if toks[i..]
                        .iter()
                        .take(4)
                        .copied()
                        .ne(["fib", "saddr", "type", "local"])
                    {
                        return Err(format!("unsupported fib match in {rule:?}"));
                    }
                    if !self.p.from_local {
                        return Ok(Flow::Next);
                    }
                    i += 4;
                }
                ("meta", "mark") => match tok(i + 2) {
                    "set" if tok(i + 3) == "meta" && tok(i + 4) == "mark" => {
                        let v = hex(tok(i + 6))?;
                        match tok(i + 5) {
                            "|" => self.mark |= v,
                            "^" => self.mark ^= v,
                            op => return Err(format!("unsupported mark operator {op:?}")),
                        }
                        i += 7;
                    }
                    "&" if tok(i + 4) == "==" => {
                        if self.mark & hex(tok(i + 3))? != hex(tok(i + 5))? {
                            return Ok(Flow::Next);
                        }
                        i += 6;
                    }
                    _ => return Err(format!("unsupported mark statement in {rule:?}")),
                },
                ("dnat", _) => return self.dnat(chain, rule, &toks[i..]),
                _ => {
                    let Some((vals, n)) = self.expr(&toks[i..], rule)? else {
                        return Ok(Flow::Next);
                    };
                    i += n;
                    match tok(i) {
                        "!=" => {
                            let set = tok(i + 1).trim_start_matches('@');
                            if self.member(set, &vals)? {
                                return Ok(Flow::Next);
                            }
                            i += 2;
                        }
                        "vmap" => {
                            let map = tok(i + 1).trim_start_matches('@');
                            let Some(v) = self.lookup(map, &vals)? else {
                                return Ok(Flow::Next);
                            };
                            let verdict = Verdict::parse(&v).ok_or_else(|| {
                                format!("map {map} holds {v:?}, which is not a verdict")
                            })?;
                            return self.verdict(&verdict);
                        }
                        "{" => {
                            let end = toks[i..].iter().position(|t| *t == "}").map(|e| e + i);
                            let end = end.ok_or_else(|| format!("unclosed set in {rule:?}"))?;
                            let want = self.text(&vals)?;
                            if !toks[i + 1..end].iter().any(|t| *t == want) {
                                return Ok(Flow::Next);
                            }
                            i = end + 1;
                        }
                        t if t.starts_with('@') => {
                            if !self.member(&t[1..], &vals)? {
                                return Ok(Flow::Next);
                            }
                            i += 1;
                        }
                        "" => return Err(format!("an expression without a match in {rule:?}")),
                        constant => {
                            if self.text(&vals)? != constant {
                                return Ok(Flow::Next);
                            }
                            i += 1;
                        }
                    }
                }
            }
        }
        Ok(Flow::Next)
    }

    /// Parses a concatenation of selectors; `None` when a selector's implied protocol does
    /// not match the packet (the rule does not match). Returns the values and tokens used.
    fn expr(&self, toks: &[&str], rule: &str) -> Result<Option<(Vec<Val>, usize)>, String> {
        let tok = |i: usize| toks.get(i).copied().unwrap_or("");
        let mut vals = Vec::new();
        let mut i = 0;
        loop {
            let (val, n) = match (tok(i), tok(i + 1)) {
                (fam @ ("ip" | "ip6"), dir @ ("saddr" | "daddr")) => {
                    let want = if self.family == IpFamily::V4 {
                        "ip"
                    } else {
                        "ip6"
                    };
                    if fam != want {
                        return Err(format!("{fam} {dir} in the {want} table: {rule:?}"));
                    }
                    let (a, t) = if dir == "saddr" {
                        (self.p.saddr, 0)
                    } else {
                        (self.p.daddr, 1)
                    };
                    (Val::Atom(Atom::Addr(a), t), 2)
                }
                ("meta", "l4proto") => (Val::Atom(Atom::Proto(proto_number(self.p.proto)), 2), 2),
                (proto @ ("th" | "tcp" | "udp" | "sctp"), "dport") => {
                    if proto != "th" && proto != self.texts[2] {
                        return Ok(None);
                    }
                    (Val::Atom(Atom::Num(u32::from(self.p.dport)), 3), 2)
                }
                ("numgen", "random") if tok(i + 2) == "mod" => {
                    let n = tok(i + 3)
                        .parse()
                        .map_err(|_| format!("bad numgen modulus in {rule:?}"))?;
                    (Val::Numgen(n), 4)
                }
                // `jhash ip6 saddr mod N` (IPv6 affinity by hash): one slot per client, any
                // of the N for the tracer.
                ("jhash", _) if tok(i + 2) == "saddr" && tok(i + 3) == "mod" => {
                    let n = tok(i + 4)
                        .parse()
                        .map_err(|_| format!("bad jhash modulus in {rule:?}"))?;
                    (Val::Numgen(n), 5)
                }
                (a, b) => return Err(format!("unsupported selector {a:?} {b:?} in {rule:?}")),
            };
            vals.push(val);
            i += n;
            if tok(i) != "." {
                return Ok(Some((vals, i)));
            }
            i += 1;
        }
    }

    /// The canonical text of a key made of packet fields (as kproxy writes element keys).
    fn text(&self, vals: &[Val]) -> Result<String, String> {
        let mut out = String::new();
        for (i, v) in vals.iter().enumerate() {
            let Val::Atom(_, t) = v else {
                return Err("numgen outside a dnat map key".to_string());
            };
            if i > 0 {
                out.push_str(" . ");
            }
            out.push_str(&self.texts[*t]);
        }
        Ok(out)
    }

    fn set(&self, name: &str) -> Result<&super::Set, String> {
        self.t
            .sets
            .get(name)
            .ok_or_else(|| format!("a rule names set {name}, which does not exist"))
    }

    fn member(&self, set: &str, vals: &[Val]) -> Result<bool, String> {
        let s = self.set(set)?;
        if !s.ty.interval {
            let key = self.text(vals)?;
            let found = s.elements.contains_key(&key);
            self.asked.borrow_mut().push((set.to_string(), key));
            return Ok(found);
        }
        let key = atoms(vals)?;
        let point = types::point(&key);
        let elements = self
            .prog
            .intervals
            .get(set)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(elements.iter().any(|e| types::contains(e, &point)))
    }

    fn lookup(&self, map: &str, vals: &[Val]) -> Result<Option<String>, String> {
        let s = self.set(map)?;
        if s.ty.value.is_none() {
            return Err(format!("{map} is a set, not a map"));
        }
        let key = self.text(vals)?;
        let found = s.elements.get(&key).cloned();
        self.asked.borrow_mut().push((map.to_string(), key));
        Ok(found)
    }

    fn endpoint(&self, map: &str, value: &str) -> Result<SocketAddr, String> {
        match value.split_once(" . ") {
            Some((a, p)) => match (a.parse::<IpAddr>(), p.parse::<u16>()) {
                (Ok(a), Ok(p)) if IpFamily::of(&a) == self.family => Ok(SocketAddr::new(a, p)),
                _ => Err(format!("map {map} holds {value:?}, not an endpoint")),
            },
            None => Err(format!("map {map} holds {value:?}, not an endpoint")),
        }
    }
}

fn atoms(vals: &[Val]) -> Result<Vec<Atom>, String> {
    vals.iter()
        .map(|v| match v {
            Val::Atom(a, _) => Ok(a.clone()),
            Val::Numgen(_) => Err("numgen outside a dnat map key".to_string()),
        })
        .collect()
}
