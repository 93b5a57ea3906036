//! Who changed kproxy's nf_tables objects: a netlink socket subscribed to the kernel's nf_tables
//! change notifications (NFNLGRP_NFTABLES, what `nft monitor` reads). Every committed
//! transaction arrives as one message per object it added or deleted (table, chain, rule, set,
//! elements), then one NFT_MSG_NEWGEN naming the committing process. A commit that touched an
//! object the caller cares about (`Interest`) and was not kproxy's own is *foreign*: someone
//! flushed a map, deleted a rule, added an element. Draining the socket costs one `recv` when
//! nothing happened, and a few microseconds per other commit (a busy CNI writing its own table).
//!
//! Invariants: never writes to the kernel. A commit is kproxy's own when its process is kproxy
//! or a child or thread it started (`crate::own`), judged by pid when this process sees global pids
//! (the initial pid namespace, whose pids the kernel reports); otherwise (a container without
//! hostPID) a commit is kproxy's own when it arrived during one of kproxy's writes (`writing`).
//! Notifications the kernel dropped (a full receive buffer) outside kproxy's writes count as
//! foreign: the caller must then compare everything. Large writes run unsubscribed; when one
//! says how many commits it makes, the ruleset generation (NFT_MSG_GETGEN) read before and
//! after it tells whether anyone else committed meanwhile (`Foreign::unseen`: compare
//! everything).

use std::collections::BTreeMap;
use std::fmt;

use super::uapi::{NFNL_SUBSYS_NFTABLES, NLA_TYPE_MASK, NLM_F_REQUEST, NLMSG_ERROR};

/// NFNLGRP_NFTABLES (nfnetlink.h): the nf_tables notification group.
const NFNLGRP_NFTABLES: u32 = 7;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
/// Room for the notifications of one of kproxy's own transactions (at most
/// `reconcile::CHUNK_OPS` element operations, ~1.5 MiB), with a margin. Memory is taken only
/// while notifications wait.
const RECEIVE_BUFFER: i32 = 16 << 20;
/// The inode of the initial pid namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h).
const INIT_PID_NS: &str = "pid:[4026531836]";
/// Operations (elements, rules, lines) above which a write is `large` (see `Monitor::writing`).
pub const LARGE: usize = 1_000;
/// Foreign commits kept in detail for the report; later ones are only counted.
const KEPT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("opening the nf_tables notification socket: {0}")]
    Open(std::io::Error),
    #[error("entering network namespace {0} to open the notification socket: {1}")]
    Netns(String, std::io::Error),
    #[error("reading nf_tables notifications: {0}")]
    Receive(std::io::Error),
}

/// The kind of nf_tables object a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Table,
    Chain,
    Rule,
    Set,
    Element,
    Object,
    Flowtable,
}

/// One notification: what was added or deleted, where.
#[derive(Clone, Copy, Debug)]
pub struct Touch<'a> {
    /// nfgenmsg's family (NFPROTO_IPV4 2, NFPROTO_IPV6 10, inet 1, ...).
    pub family: u8,
    pub kind: Kind,
    pub deleted: bool,
    pub table: &'a str,
    /// The chain (of a chain or rule), set (of a set or elements) or object's name; "" for a
    /// table.
    pub name: &'a str,
    /// The message's attributes, for callers that look inside (a rule's jump target).
    pub attrs: &'a [u8],
}

/// Which notifications concern the caller.
pub type Interest = fn(&Touch<'_>) -> bool;

/// What one commit changed of interest: (kind, deleted, family, table, name) -> how many.
pub type Touched = BTreeMap<(Kind, bool, u8, String, String), usize>;

/// What foreign commits did to the objects of interest since the last report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Foreign {
    /// (pid, process name, what it changed: (kind, deleted, family, table, name) -> count).
    pub commits: Vec<(u32, String, Touched)>,
    /// Foreign commits beyond those kept.
    pub more: usize,
    /// The kernel dropped notifications: anything may have changed.
    pub lost: bool,
    /// Someone else committed during one of kproxy's large writes, whose notifications were
    /// off: anything may have changed.
    pub unseen: bool,
}

impl Foreign {
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty() && self.more == 0 && !self.lost && !self.unseen
    }
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.lost {
            parts.push("the kernel dropped nf_tables change notifications (receive buffer full), so anything may have changed".to_string());
        }
        if self.unseen {
            parts.push("another process committed to nf_tables during one of kproxy's large writes (notifications off), so anything may have changed".to_string());
        }
        for (pid, process, touched) in &self.commits {
            let what: Vec<String> = touched
                .iter()
                .take(3)
                .map(|((kind, deleted, family, table, name), n)| {
                    let verb = if *deleted { "deleted" } else { "added" };
                    let fam = family_label(*family);
                    match kind {
                        Kind::Table => format!("{verb} table {fam} {table}"),
                        Kind::Element => {
                            format!("{verb} {n} element(s) of {fam} {table} {name}")
                        }
                        Kind::Rule => format!("{verb} {n} rule(s) in {fam} {table} {name}"),
                        k => format!("{verb} {} {fam} {table} {name}", label(*k)),
                    }
                })
                .collect();
            let rest = touched.len().saturating_sub(3);
            let rest = if rest > 0 {
                format!(" and {rest} more")
            } else {
                String::new()
            };
            parts.push(format!("pid {pid} ({process}) {}{rest}", what.join(", ")));
        }
        if self.more > 0 {
            parts.push(format!("{} more commit(s)", self.more));
        }
        f.write_str(&parts.join("; "))
    }
}

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Table => "table",
        Kind::Chain => "chain",
        Kind::Rule => "rule",
        Kind::Set => "set",
        Kind::Element => "element",
        Kind::Object => "object",
        Kind::Flowtable => "flowtable",
    }
}

fn family_label(family: u8) -> &'static str {
    match family {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "?",
    }
}

/// A subscribed socket and what it has seen.
pub struct Monitor {
    socket: netlink_sys::Socket,
    /// Asks for the ruleset generation (a request socket: the subscribed one gets notifications).
    generation: netlink_sys::Socket,
    reader: Reader,
    buf: Vec<u8>,
}

/// What the notifications read so far say (the socket aside, so tests can feed it bytes).
pub(crate) struct Reader {
    interest: Interest,
    /// pids in notifications are this process's (the initial pid namespace).
    pids_global: bool,
    /// Inside `writing`: commits of interest are kproxy's unless their pid says otherwise.
    writing: bool,
    /// The commit being read (its NEWGEN not seen yet): what it touched of interest.
    current: Touched,
    foreign: Foreign,
}

impl Monitor {
    /// Subscribes in this thread's network namespace, or in `netns` (a named one, for tests).
    pub fn open(netns: Option<&str>, interest: Interest) -> Result<Monitor, MonitorError> {
        // The generation's answer comes at once: a second is plenty.
        let both = || Ok::<_, std::io::Error>((subscribe()?, super::elements::open(1)?));
        let (socket, generation) = match netns {
            None => both().map_err(MonitorError::Open)?,
            Some(ns) => crate::netns::run_in(ns, both)
                .map_err(|e| MonitorError::Netns(ns.to_string(), e))?
                .map_err(MonitorError::Open)?,
        };
        let pids_global =
            std::fs::read_link("/proc/self/ns/pid").is_ok_and(|p| p.as_os_str() == INIT_PID_NS);
        Ok(Monitor {
            socket,
            generation,
            reader: Reader::new(interest, pids_global),
            buf: vec![0; 64 << 10],
        })
    }

    /// Runs one of kproxy's own writes: what arrived before it is judged first, what arrives
    /// during it is kproxy's (by pid where pids tell). A `large` write (more operations than
    /// `LARGE`) runs unsubscribed: its notifications would cost the kernel more than the
    /// write itself and overflow any buffer (a 10,000-Service load took 1.05 s instead of
    /// 0.67 s); someone else's commit during it goes unseen, unless the write says how many
    /// `commits` it makes: then more generations than that between its start and its end mean
    /// someone else committed, and the caller is told to compare everything (`unseen`).
    pub fn writing<R>(
        &mut self,
        large: bool,
        commits: Option<u32>,
        write: impl FnOnce() -> R,
    ) -> R {
        // A receive error here is met again by the next `foreign`.
        let _ = self.drain();
        self.reader.writing = true;
        let quiet = large && self.socket.drop_membership(NFNLGRP_NFTABLES).is_ok();
        let before = quiet.then(|| self.generation()).flatten();
        let out = write();
        if quiet {
            let after = self.generation();
            let others = match (commits, before, after) {
                (Some(ours), Some(b), Some(a)) => a.wrapping_sub(b) > ours,
                // Unknown: as before, unseen.
                (None, ..) => false,
                // The generation could not be read: anything may have happened.
                _ => true,
            };
            if self.socket.add_membership(NFNLGRP_NFTABLES).is_err() {
                self.reader.lost();
            }
            if others {
                self.reader.foreign.unseen = true;
            }
        }
        let _ = self.drain();
        self.reader.writing = false;
        out
    }

    /// The ruleset generation, which every commit in this namespace moves on by one.
    fn generation(&mut self) -> Option<u32> {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
        let request = crate::nfnetlink::request(kind, NLM_F_REQUEST, 0, 0, &[]);
        self.generation.send(&request, 0).ok()?;
        let mut buf = vec![0u8; 4096];
        let n = self.generation.recv(&mut &mut buf[..], 0).ok()?;
        generation_of(&buf[..n])
    }

    /// What foreign commits did since the last call (and forgets it).
    pub fn foreign(&mut self) -> Result<Foreign, MonitorError> {
        self.drain()?;
        Ok(std::mem::take(&mut self.reader.foreign))
    }

    /// Judges commits by the write window only, as in a pid namespace of its own (tests).
    #[cfg(test)]
    pub(crate) fn without_pids(&mut self) {
        self.reader.pids_global = false;
    }

    /// Reads every notification waiting, without blocking.
    fn drain(&mut self) -> Result<(), MonitorError> {
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // During kproxy's own write, what overflowed was its own notifications.
                    match self.reader.writing {
                        true => self.reader.current.clear(),
                        false => self.reader.lost(),
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(MonitorError::Receive(e)),
            };
            self.reader.read(&self.buf[..n]);
        }
    }
}

impl Reader {
    pub(crate) fn new(interest: Interest, pids_global: bool) -> Reader {
        Reader {
            interest,
            pids_global,
            writing: false,
            current: BTreeMap::new(),
            foreign: Foreign::default(),
        }
    }

    /// The kernel dropped notifications.
    fn lost(&mut self) {
        self.foreign.lost = true;
        self.current.clear();
    }

    /// Takes in one datagram's messages. Malformed messages are skipped.
    pub(crate) fn read(&mut self, buf: &[u8]) {
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32_at(buf, at).unwrap_or(0) as usize;
            if len < 16 || at + len > buf.len() {
                return;
            }
            let kind = u16_at(buf, at + 4).unwrap_or(0);
            if kind != NLMSG_ERROR && kind >> 8 == NFNL_SUBSYS_NFTABLES && len >= 20 {
                let family = buf[at + 16];
                let attrs = &buf[at + 20..at + len];
                self.message(kind & 0xff, family, attrs);
            }
            at += len.div_ceil(4) * 4;
        }
    }

    #[cfg(test)]
    pub(crate) fn take(&mut self) -> Foreign {
        std::mem::take(&mut self.foreign)
    }

    fn message(&mut self, msg: u16, family: u8, attrs: &[u8]) {
        if msg == NFT_MSG_NEWGEN {
            let pid = attr(attrs, NFTA_GEN_PROC_PID)
                .and_then(|v| v.get(..4))
                .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
                .unwrap_or(0);
            let process = attr(attrs, NFTA_GEN_PROC_NAME)
                .map(c_string)
                .unwrap_or("?")
                .to_string();
            self.commit(pid, process);
            return;
        }
        let Some((kind, deleted)) = classify(msg) else {
            return;
        };
        let table = attr(attrs, 1).map(c_string).unwrap_or("");
        let name_attr = match kind {
            Kind::Table => None,
            Kind::Chain => Some(3),
            _ => Some(2),
        };
        let name = name_attr
            .and_then(|a| attr(attrs, a))
            .map(c_string)
            .unwrap_or("");
        let touch = Touch {
            family,
            kind,
            deleted,
            table,
            name,
            attrs,
        };
        if !(self.interest)(&touch) {
            return;
        }
        let n = match kind {
            Kind::Element => attr(attrs, NFTA_SET_ELEM_LIST_ELEMENTS).map_or(1, count_nested),
            _ => 1,
        };
        *self
            .current
            .entry((kind, deleted, family, table.to_string(), name.to_string()))
            .or_default() += n;
    }

    /// One commit ended (NEWGEN): judges what it touched of interest.
    fn commit(&mut self, pid: u32, process: String) {
        let touched = std::mem::take(&mut self.current);
        if touched.is_empty() {
            return;
        }
        let ours = if self.pids_global {
            is_ours(pid)
        } else {
            self.writing
        };
        if ours {
            return;
        }
        if self.foreign.commits.len() < KEPT {
            self.foreign.commits.push((pid, process, touched));
        } else {
            self.foreign.more += 1;
        }
    }
}

fn is_ours(pid: u32) -> bool {
    crate::own::is_own(pid)
}

/// NFTA_GEN_ID of the NEWGEN message in an answer to GETGEN.
pub(crate) fn generation_of(buf: &[u8]) -> Option<u32> {
    let len = u32_at(buf, 0)? as usize;
    let kind = u16_at(buf, 4)?;
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN || len > buf.len() {
        return None;
    }
    let id = attr(buf.get(20..len)?, NFTA_GEN_ID)?;
    Some(u32::from_be_bytes(id.get(..4)?.try_into().ok()?))
}

/// A non-blocking NETLINK_NETFILTER socket in the nf_tables group, with room for a large
/// transaction's notifications.
fn subscribe() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    socket.set_non_blocking(true)?;
    crate::nfnetlink::grow_receive_buffer(&socket, RECEIVE_BUFFER);
    Ok(socket)
}

/// (kind, deleted) of an nf_tables message type, for the object messages.
fn classify(msg: u16) -> Option<(Kind, bool)> {
    let kind = match msg {
        0..=2 => Kind::Table,
        3..=5 => Kind::Chain,
        6..=8 => Kind::Rule,
        9..=11 => Kind::Set,
        12..=14 => Kind::Element,
        18..=20 => Kind::Object,
        22..=24 => Kind::Flowtable,
        _ => return None,
    };
    let base = match kind {
        Kind::Table => 0,
        Kind::Chain => 3,
        Kind::Rule => 6,
        Kind::Set => 9,
        Kind::Element => 12,
        Kind::Object => 18,
        Kind::Flowtable => 22,
    };
    match msg - base {
        0 => Some((kind, false)),
        2 => Some((kind, true)),
        _ => None,
    }
}

/// The value of the first attribute of type `kind` in `attrs`.
fn attr(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let len = u16_at(attrs, at)? as usize;
        if len < 4 || at + len > attrs.len() {
            return None;
        }
        if u16_at(attrs, at + 2)? & NLA_TYPE_MASK == kind {
            return Some(&attrs[at + 4..at + len]);
        }
        at += len.div_ceil(4) * 4;
    }
    None
}

/// How many attributes a nested attribute holds (elements in an element list).
fn count_nested(value: &[u8]) -> usize {
    let (mut at, mut n) = (0, 0);
    while at + 4 <= value.len() {
        let len = u16_at(value, at).unwrap_or(0) as usize;
        if len < 4 {
            break;
        }
        n += 1;
        at += len.div_ceil(4) * 4;
    }
    n
}

fn c_string(value: &[u8]) -> &str {
    let raw = value.split(|&b| b == 0).next().unwrap_or_default();
    std::str::from_utf8(raw).unwrap_or("?")
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
