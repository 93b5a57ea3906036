//! A fake kernel for IPVS mode's unit tests and user-space benches: virtual servers and destinations with the checks
//! the kernel makes (a NEW of something present is EEXIST, a change of something absent is
//! ESRCH/ENOENT, a NEW or SET without every required attribute is EINVAL), the dummy
//! interface's addresses, the companion tables' elements, and sysctls. Every IPVS message is
//! encoded to bytes and decoded back before it is applied, so the encoding is exercised too.
//!
//! Invariants: an nft script applies atomically or not at all; state is shared through an
//! `Arc`, so a second backend (a restarted kproxy) sees what the first one left.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;

use super::kernel::{Kernel, KernelError};
use super::netlink::{
    Cmd, DestAttr, DestKey, DestState, IpvsMessage, ServiceKey, SvcAttr, VirtualServer,
};
use crate::model::IpFamily;

/// `msg` as the kernel receives it (nlmsghdr, genlmsghdr, attributes).
pub fn wire(msg: IpvsMessage) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(msg);
    genl.set_resolved_family_id(0x20);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

/// The IPVS message in `buf`.
pub fn decode(buf: &[u8]) -> IpvsMessage {
    let m = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(buf).unwrap();
    match m.payload {
        NetlinkPayload::InnerMessage(g) => g.payload,
        other => panic!("not an IPVS message: {other:?}"),
    }
}

#[derive(Clone, Debug, Default)]
pub struct FakeState {
    pub services: BTreeMap<ServiceKey, (VirtualServer, BTreeMap<DestKey, DestState>)>,
    pub link: bool,
    pub addresses: BTreeSet<IpAddr>,
    pub host_addresses: BTreeSet<IpAddr>,
    /// Companion tables present, by family name ("ip", "ip6").
    pub tables: BTreeSet<String>,
    /// (family, set, key) of every companion set element (family and set names are static:
    /// only the key is held as text).
    pub elements: BTreeSet<(&'static str, &'static str, String)>,
    pub sysctls: BTreeMap<String, String>,
    /// The connection timeouts set (SET_CONFIG attributes).
    pub timeouts: Vec<super::netlink::CmdAttr>,
    /// IPVS messages applied, in all.
    pub ipvs_messages: usize,
    /// Destination lists read (one dump per server), in all.
    pub dest_reads: usize,
    /// nft scripts applied.
    pub scripts: usize,
    /// Companion tables created with their body (`table ... {` lines applied).
    pub tables_created: usize,
    /// The next IPVS batch fails after applying this many of its messages.
    pub fail_ipvs_after: Option<usize>,
    /// The batch after the next one fails (EIO) before applying anything.
    pub fail_second_batch: bool,
    second_batch_next: bool,
    /// A NEW_SERVICE at this address is refused (EINVAL): a poison pill.
    pub poison: Option<IpAddr>,
    /// ip_vs is not loaded: reading IPVS would load it (`autoloaded` then tells).
    pub ipvs_unloaded: bool,
    pub autoloaded: bool,
}

impl FakeState {
    /// What `ip link del kproxy-ipvs0` does: the interface and its addresses are gone, the
    /// virtual servers stay.
    pub fn delete_link(&mut self) {
        self.link = false;
        self.addresses.clear();
    }

    /// IPVS is read (its netlink family resolved), which loads ip_vs when it is missing.
    fn read_ipvs(&mut self) {
        if std::mem::take(&mut self.ipvs_unloaded) {
            self.autoloaded = true;
        }
    }
}

#[derive(Clone, Default)]
pub struct FakeKernel(pub Arc<Mutex<FakeState>>);

impl FakeKernel {
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

/// IPVS's refusal of `what` with `errno`, as the live socket reports it.
fn refused(what: &str, errno: i32) -> KernelError {
    KernelError::Ipvs(super::socket::SocketError::Netlink(
        super::conn::ConnError::Refused {
            what: what.to_string(),
            source: std::io::Error::from_raw_os_error(errno),
        },
    ))
}

/// nftables' refusal of a script.
fn script_refused(what: &str, errno: &str) -> KernelError {
    KernelError::Injected(format!("{what}: {errno}"))
}

fn full_service(attrs: &[SvcAttr]) -> bool {
    let has = |f: fn(&SvcAttr) -> bool| attrs.iter().any(f);
    has(|a| matches!(a, SvcAttr::Sched(_)))
        && has(|a| matches!(a, SvcAttr::Flags { .. }))
        && has(|a| matches!(a, SvcAttr::Timeout(_)))
        && has(|a| matches!(a, SvcAttr::Netmask(_)))
}

fn full_dest(attrs: &[DestAttr]) -> bool {
    let has = |f: fn(&DestAttr) -> bool| attrs.iter().any(f);
    has(|a| matches!(a, DestAttr::FwdMethod(_)))
        && has(|a| matches!(a, DestAttr::Weight(_)))
        && has(|a| matches!(a, DestAttr::UThresh(_)))
        && has(|a| matches!(a, DestAttr::LThresh(_)))
}

/// The service of `attrs`, for messages that only identify it.
fn key_of(attrs: &[SvcAttr]) -> Option<ServiceKey> {
    VirtualServer::from_attrs(attrs).map(|v| v.key)
}

impl FakeState {
    fn apply(&mut self, msg: IpvsMessage) -> Result<(), KernelError> {
        let msg = decode(&wire(msg));
        if msg.cmd == Cmd::SetConfig {
            self.timeouts.extend(msg.attrs.iter().cloned());
            self.ipvs_messages += 1;
            return Ok(());
        }
        let svc = msg.service_attrs().unwrap_or_default().to_vec();
        let key = key_of(&svc).ok_or_else(|| refused("no service", libc::EINVAL))?;
        let dest = msg.dest_attrs().map(|d| d.to_vec());
        let parsed_dest = dest
            .as_ref()
            .and_then(|d| DestState::from_attrs(d, key.addr));
        match msg.cmd {
            Cmd::NewService | Cmd::SetService if !full_service(&svc) => {
                return Err(refused("service without every attribute", libc::EINVAL));
            }
            Cmd::NewDest | Cmd::SetDest if !dest.as_deref().is_some_and(full_dest) => {
                return Err(refused("destination without every attribute", libc::EINVAL));
            }
            Cmd::NewService if self.poison == Some(key.addr) => {
                return Err(refused("poisoned service", libc::EINVAL));
            }
            Cmd::NewService => {
                if self.services.contains_key(&key) {
                    return Err(refused("new service", libc::EEXIST));
                }
                let vs = VirtualServer::from_attrs(&svc).expect("full");
                self.services.insert(key, (vs, BTreeMap::new()));
            }
            Cmd::SetService => {
                let vs = VirtualServer::from_attrs(&svc).expect("full");
                let entry = self
                    .services
                    .get_mut(&key)
                    .ok_or_else(|| refused("set service", libc::ESRCH))?;
                entry.0 = vs;
            }
            Cmd::DelService => {
                self.services
                    .remove(&key)
                    .ok_or_else(|| refused("del service", libc::ESRCH))?;
            }
            Cmd::NewDest | Cmd::SetDest | Cmd::DelDest => {
                let d = parsed_dest.ok_or_else(|| refused("no destination", libc::EINVAL))?;
                let dests = &mut self
                    .services
                    .get_mut(&key)
                    .ok_or_else(|| refused("destination of a missing service", libc::ESRCH))?
                    .1;
                match msg.cmd {
                    Cmd::NewDest if dests.contains_key(&d.key) => {
                        return Err(refused("new dest", libc::EEXIST));
                    }
                    Cmd::NewDest => {
                        dests.insert(d.key, d);
                    }
                    Cmd::SetDest => {
                        let have = dests
                            .get_mut(&d.key)
                            .ok_or_else(|| refused("set dest", libc::ENOENT))?;
                        have.weight = d.weight;
                    }
                    _ => {
                        dests
                            .remove(&d.key)
                            .ok_or_else(|| refused("del dest", libc::ENOENT))?;
                    }
                }
            }
            other => return Err(refused(&format!("{other:?}"), libc::EOPNOTSUPP)),
        }
        self.ipvs_messages += 1;
        Ok(())
    }

    /// Applies an nft script of the shapes the backend writes, atomically: every line is
    /// checked against the state as the earlier lines leave it before anything changes. The
    /// script is read line by line, three times (the elements it deletes; the checks; the
    /// changes), so checking a whole table's load holds no copy of its elements.
    fn script(&mut self, script: &str) -> Result<(), KernelError> {
        let mut deleted: BTreeSet<Elem> = BTreeSet::new();
        for op in ops(script) {
            if let Op::Delete(e) = op? {
                deleted.insert(e);
            }
        }
        let mut tables: BTreeMap<&str, bool> = BTreeMap::new();
        // Only the elements the script deletes need tracking: adding one never fails.
        let mut elements: BTreeMap<Elem, bool> = BTreeMap::new();
        let mut cleared: BTreeSet<&str> = BTreeSet::new();
        for op in ops(script) {
            let op = op?;
            match op {
                Op::Table(fam) | Op::Create(fam) => {
                    tables.insert(fam, true);
                }
                Op::DeleteTable(fam) => {
                    let present = tables.get(fam).copied();
                    if !present.unwrap_or_else(|| self.tables.contains(fam)) {
                        return Err(script_refused("delete table", "ENOENT"));
                    }
                    tables.insert(fam, false);
                    cleared.insert(fam);
                    elements.retain(|(f, _, _), _| *f != fam);
                }
                Op::Add(e) | Op::Delete(e) => {
                    let fam = e.0;
                    let table = tables.get(fam).copied();
                    if !table.unwrap_or_else(|| self.tables.contains(fam)) {
                        return Err(script_refused("element of a missing table", "ENOENT"));
                    }
                    if !deleted.contains(&e) {
                        continue;
                    }
                    let present = elements.get(&e).copied().unwrap_or_else(|| {
                        !cleared.contains(fam) && self.elements.contains(&owned(e))
                    });
                    if matches!(op, Op::Delete(_)) && !present {
                        return Err(script_refused("delete element", "ENOENT"));
                    }
                    elements.insert(e, matches!(op, Op::Add(_)));
                }
            }
        }
        for op in ops(script) {
            match op? {
                Op::Table(fam) => {
                    self.tables.insert(fam.to_string());
                }
                Op::Create(fam) => {
                    self.tables.insert(fam.to_string());
                    self.tables_created += 1;
                }
                Op::DeleteTable(fam) => {
                    self.tables.remove(fam);
                    self.elements.retain(|(f, _, _)| *f != fam);
                }
                Op::Add(e) => {
                    self.elements.insert(owned(e));
                }
                Op::Delete(e) => {
                    self.elements.remove(&owned(e));
                }
            }
        }
        Ok(())
    }
}

/// (family, set, key) of an element, as the script writes it.
type Elem<'a> = (&'static str, &'static str, &'a str);

fn owned((fam, set, key): Elem) -> (&'static str, &'static str, String) {
    (fam, set, key.to_string())
}

/// The companion table's families and sets (`compile::table`).
const FAMILIES: [&str; 2] = ["ip", "ip6"];
const SETS: [&str; 7] = [
    "cluster-ips",
    "external-masq",
    "dropped",
    "rejected",
    "firewall",
    "firewall-allow",
    "hairpin",
];

/// `name` as one of `names`.
fn known(names: &[&'static str], name: &str) -> Option<&'static str> {
    names.iter().copied().find(|n| *n == name)
}

/// One step of an nft script.
enum Op<'a> {
    Table(&'a str),
    /// A table with its body (sets, chains).
    Create(&'a str),
    DeleteTable(&'a str),
    Add(Elem<'a>),
    Delete(Elem<'a>),
}

/// The steps of `script`, in order, read as they are asked for.
fn ops(script: &str) -> impl Iterator<Item = Result<Op<'_>, KernelError>> {
    let mut in_table = false;
    script.lines().filter_map(move |line| {
        if in_table {
            in_table = line != "}";
            return None;
        }
        let words: Vec<&str> = line.split_whitespace().take(7).collect();
        let op = match words.as_slice() {
            ["table", fam, "kproxy-ipvs", "{}"] => Op::Table(fam),
            ["table", fam, "kproxy-ipvs", "{"] => {
                in_table = true;
                Op::Create(fam)
            }
            ["delete", "table", fam, "kproxy-ipvs"] => Op::DeleteTable(fam),
            [
                verb @ ("add" | "delete"),
                "element",
                fam,
                "kproxy-ipvs",
                set,
                "{",
                ..,
            ] => {
                // The key: the words between the braces (single spaces, as kproxy writes them).
                let key = line
                    .split_once(" { ")
                    .and_then(|(_, rest)| rest.trim_end().strip_suffix('}'))
                    .map(str::trim)
                    .unwrap_or_default();
                let (Some(fam), Some(set)) = (known(&FAMILIES, fam), known(&SETS, set)) else {
                    return Some(Err(script_refused(
                        &format!("no set {fam} {set}"),
                        "ENOENT",
                    )));
                };
                if *verb == "add" {
                    Op::Add((fam, set, key))
                } else {
                    Op::Delete((fam, set, key))
                }
            }
            [] => return None,
            _ => {
                let what = format!("unknown line {line:?}");
                return Some(Err(script_refused(&what, "EINVAL")));
            }
        };
        Some(Ok(op))
    })
}

impl Kernel for FakeKernel {
    fn load_ipvs(&mut self) -> Result<(), KernelError> {
        Ok(())
    }

    fn ipvs(&mut self, messages: Vec<IpvsMessage>) -> Result<usize, KernelError> {
        let mut s = self.state();
        s.read_ipvs();
        let n = messages.len();
        let mut fail_after = s.fail_ipvs_after.take();
        if s.fail_second_batch {
            if std::mem::take(&mut s.second_batch_next) {
                s.fail_second_batch = false;
                fail_after = Some(0);
            } else {
                s.second_batch_next = true;
            }
        }
        let mut first = None;
        for (i, m) in messages.into_iter().enumerate() {
            if fail_after == Some(i) {
                first = first.or(Some(refused("injected", libc::EIO)));
                break;
            }
            if let Err(e) = s.apply(m) {
                first = first.or(Some(e));
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn ipvs_loaded(&mut self) -> bool {
        !self.state().ipvs_unloaded
    }

    fn services(&mut self) -> Result<Vec<VirtualServer>, KernelError> {
        let mut s = self.state();
        s.read_ipvs();
        Ok(s.services.values().map(|(v, _)| v.clone()).collect())
    }

    fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestState>, KernelError> {
        let mut s = self.state();
        s.dest_reads += 1;
        let (_, dests) = s
            .services
            .get(service)
            .ok_or_else(|| refused("dests of a missing service", libc::ESRCH))?;
        Ok(dests.values().copied().collect())
    }

    fn service(&mut self, service: &ServiceKey) -> Result<Option<VirtualServer>, KernelError> {
        Ok(self.state().services.get(service).map(|(v, _)| v.clone()))
    }

    fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError> {
        let mut s = self.state();
        s.link = true;
        Ok(s.addresses.clone())
    }

    fn bind(&mut self, add: Vec<IpAddr>, remove: Vec<IpAddr>) -> Result<usize, KernelError> {
        let mut s = self.state();
        s.link = true;
        let n = add.len() + remove.len();
        for a in remove {
            s.addresses.remove(&a);
        }
        s.addresses.extend(add);
        Ok(n)
    }

    fn link_present(&mut self) -> Result<bool, KernelError> {
        Ok(self.state().link)
    }

    fn is_local(&mut self, ip: IpAddr) -> Result<bool, KernelError> {
        let s = self.state();
        Ok(s.host_addresses.contains(&ip) || s.link && s.addresses.contains(&ip))
    }

    fn nft(&mut self, script: &str) -> Result<(), KernelError> {
        let mut s = self.state();
        s.script(script)?;
        s.scripts += 1;
        Ok(())
    }

    fn table_present(&mut self, family: IpFamily, table: &str) -> Result<bool, KernelError> {
        let name = crate::nftables::family_name(family);
        Ok(table == super::compile::TABLE && self.state().tables.contains(name))
    }

    fn companion_rules(&mut self, family: IpFamily) -> Result<usize, KernelError> {
        let name = crate::nftables::family_name(family);
        Ok(if self.state().tables.contains(name) {
            5
        } else {
            0
        })
    }

    fn sysctl(&mut self, path: &str, value: &str) -> Result<(), KernelError> {
        self.state()
            .sysctls
            .insert(path.to_string(), value.to_string());
        Ok(())
    }

    fn delete_link(&mut self) -> Result<bool, KernelError> {
        let mut s = self.state();
        let had = s.link;
        s.delete_link();
        Ok(had)
    }

    fn host_addresses(&mut self) -> Result<BTreeSet<IpAddr>, KernelError> {
        let s = self.state();
        Ok(s.host_addresses.union(&s.addresses).copied().collect())
    }
}
