//! The dummy interface IPVS mode binds service addresses to (`kproxy-ipvs0`), over rtnetlink:
//! created on first use and brought up, its addresses listed, added and removed in batches.
//!
//! Invariants: addresses are host routes (/32, /128; IPv6 without duplicate address detection,
//! so they are usable at once); adding an address that is there and removing one that is not are
//! not errors; only this one interface is ever touched.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{AddressMessageBuilder, LinkDummy, LinkUnspec};

use super::conn::{Conn, ConnError};

/// Why the dummy interface could not be set up, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("creating the dummy interface {name}: {source}")]
    Create { name: String, source: ConnError },
    #[error("bringing {name} up: {source}")]
    Up { name: String, source: ConnError },
    #[error("listing the addresses of {name}: {source}")]
    List { name: String, source: ConnError },
    #[error("changing the addresses of {name}: {source}")]
    Change { name: String, source: ConnError },
    #[error("deleting {name}: {source}")]
    Delete { name: String, source: ConnError },
}

impl LinkError {
    pub fn conn(&self) -> &ConnError {
        match self {
            LinkError::Create { source, .. }
            | LinkError::Up { source, .. }
            | LinkError::List { source, .. }
            | LinkError::Change { source, .. }
            | LinkError::Delete { source, .. } => source,
        }
    }
}

pub struct DummyLink {
    conn: Conn,
    name: String,
    index: u32,
}

fn prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn address_message(index: u32, ip: IpAddr) -> AddressMessage {
    match ip {
        IpAddr::V4(v4) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(v4, 32)
            .build(),
        IpAddr::V6(v6) => {
            let mut m = AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(v6, 128)
                .build();
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            m
        }
    }
}

/// The index of interface `name`, if it exists.
fn index_of(conn: &mut Conn, name: &str) -> Result<Option<u32>, ConnError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    match conn.request(
        RouteNetlinkMessage::GetLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        "looking the interface up",
    ) {
        Ok(found) => Ok(found.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
            _ => None,
        })),
        Err(ConnError::Refused { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl DummyLink {
    /// Interface `name`, created (type dummy) when missing, and up.
    pub fn ensure(name: &str) -> Result<DummyLink, LinkError> {
        let create = |source| LinkError::Create {
            name: name.to_string(),
            source,
        };
        let mut conn = Conn::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(create)?;
        let index = match index_of(&mut conn, name).map_err(create)? {
            Some(i) => i,
            None => {
                let msg = RouteNetlinkMessage::NewLink(LinkDummy::new(name).build());
                conn.request(
                    msg,
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                    "creating the link",
                )
                .map_err(create)?;
                index_of(&mut conn, name).map_err(create)?.ok_or_else(|| {
                    create(ConnError::Malformed("the new link is not listed".into()))
                })?
            }
        };
        let up = RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(index).up().build());
        conn.request(up, NLM_F_REQUEST | NLM_F_ACK, "setting the link up")
            .map_err(|source| LinkError::Up {
                name: name.to_string(),
                source,
            })?;
        Ok(DummyLink {
            conn,
            name: name.to_string(),
            index,
        })
    }

    /// The addresses bound to the interface now, but for its link-scope ones: the kernel gives
    /// an interface that is up an IPv6 link-local address of its own, which kproxy neither
    /// binds nor may unbind (every full sync tried, and failed quietly).
    pub fn addresses(&mut self) -> Result<BTreeSet<IpAddr>, LinkError> {
        let answers = self
            .conn
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_REQUEST | NLM_F_DUMP,
                "listing addresses",
            )
            .map_err(|source| LinkError::List {
                name: self.name.clone(),
                source,
            })?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.header.index == self.index && a.header.scope != AddressScope::Link =>
                {
                    address_of(&a)
                }
                _ => None,
            })
            .collect())
    }

    /// Binds `add` and unbinds `remove`. Returns how many messages were sent.
    pub fn change(
        &mut self,
        add: impl IntoIterator<Item = IpAddr>,
        remove: impl IntoIterator<Item = IpAddr>,
    ) -> Result<usize, LinkError> {
        let mut batch: Vec<(RouteNetlinkMessage, String)> = Vec::new();
        for ip in remove {
            let what = format!("removing {ip}/{}", prefix(&ip));
            batch.push((
                RouteNetlinkMessage::DelAddress(address_message(self.index, ip)),
                what,
            ));
        }
        for ip in add {
            let what = format!("adding {ip}/{}", prefix(&ip));
            batch.push((
                RouteNetlinkMessage::NewAddress(address_message(self.index, ip)),
                what,
            ));
        }
        if batch.is_empty() {
            return Ok(0);
        }
        // An address that is already there answers EEXIST, one that is gone EADDRNOTAVAIL.
        self.conn
            .execute(batch, &[libc::EEXIST, libc::EADDRNOTAVAIL])
            .map_err(|source| LinkError::Change {
                name: self.name.clone(),
                source,
            })
    }
}

/// Whether interface `name` exists.
pub fn exists(name: &str) -> Result<bool, LinkError> {
    let fail = |source| LinkError::List {
        name: name.to_string(),
        source,
    };
    let mut conn = Conn::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(fail)?;
    Ok(index_of(&mut conn, name).map_err(fail)?.is_some())
}

/// Every address of this host (all interfaces, both families).
pub fn host_addresses() -> Result<BTreeSet<IpAddr>, LinkError> {
    let fail = |source| LinkError::List {
        name: "every interface".into(),
        source,
    };
    let mut conn = Conn::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(fail)?;
    let answers = conn
        .request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            "listing addresses",
        )
        .map_err(fail)?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => address_of(&a),
            _ => None,
        })
        .collect())
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    a.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })
}

/// Deletes interface `name` when it exists; whether it did.
pub fn delete(name: &str) -> Result<bool, LinkError> {
    let fail = |source| LinkError::Delete {
        name: name.to_string(),
        source,
    };
    let mut conn = Conn::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(fail)?;
    let Some(index) = index_of(&mut conn, name).map_err(fail)? else {
        return Ok(false);
    };
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    conn.request(
        RouteNetlinkMessage::DelLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        "deleting the link",
    )
    .map_err(fail)?;
    Ok(true)
}

/// Whether `ip` is an address of this host now: the kernel's route to it (`ip route get`) is
/// of type local. One request, for the drift probe (a flushed `kproxy-ipvs0`, or one set down,
/// has no local routes left).
pub fn is_local(ip: IpAddr) -> Result<bool, LinkError> {
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteType};
    let fail = |source| LinkError::List {
        name: format!("the route to {ip}"),
        source,
    };
    let mut conn = Conn::open(netlink_sys::protocols::NETLINK_ROUTE).map_err(fail)?;
    let mut msg = RouteMessage::default();
    msg.header.address_family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = prefix(&ip);
    msg.attributes.push(RouteAttribute::Destination(ip.into()));
    match conn.request(
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        "looking the route up",
    ) {
        Ok(found) => Ok(found.iter().any(
            |m| matches!(m, RouteNetlinkMessage::NewRoute(r) if r.header.kind == RouteType::Local),
        )),
        // No route at all (an isolated namespace): not local either.
        Err(ConnError::Refused { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(fail(e)),
    }
}
