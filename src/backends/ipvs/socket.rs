//! The IPVS family over a blocking generic netlink connection (`conn.rs`): resolves the family
//! id through nlctrl, applies batches of changes, and dumps virtual servers and destinations.
//!
//! Invariants: every message names itself in errors (`describe`); a missing family is its own
//! error (`NoIpvs`) so start-up can say that the kernel lacks ip_vs.

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};

use super::conn::{Conn, ConnError};
use super::netlink::{Cmd, DestKey, DestState, IpvsMessage, ServiceKey, VirtualServer};

/// Why talking to IPVS failed, named after the step.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("the kernel has no IPVS (generic netlink family \"IPVS\" not found; is ip_vs loaded?)")]
    NoIpvs,
    #[error("resolving the IPVS netlink family: {0}")]
    Resolve(String),
    #[error(transparent)]
    Netlink(#[from] ConnError),
}

pub struct IpvsSocket {
    conn: Conn,
    family_id: u16,
}

impl IpvsSocket {
    /// A socket in the calling thread's network namespace, with the IPVS family resolved.
    pub fn open() -> Result<IpvsSocket, SocketError> {
        let mut conn = Conn::open(netlink_sys::protocols::NETLINK_GENERIC)?;
        let msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("IPVS".into())],
        });
        let answers = match conn.request::<GenlMessage<GenlCtrl>>(
            msg,
            NLM_F_REQUEST | NLM_F_ACK,
            "resolving IPVS",
        ) {
            Ok(a) => a,
            Err(ConnError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                return Err(SocketError::NoIpvs);
            }
            Err(e) => return Err(SocketError::Resolve(e.to_string())),
        };
        let family_id = answers
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| SocketError::Resolve("no family id in the answer".into()))?;
        Ok(IpvsSocket { conn, family_id })
    }

    fn genl(&self, msg: IpvsMessage) -> GenlMessage<IpvsMessage> {
        let mut genl = GenlMessage::from_payload(msg);
        genl.set_resolved_family_id(self.family_id);
        genl
    }

    /// Applies every change in `messages`, in order. Returns how many were sent.
    pub fn execute(&mut self, messages: Vec<IpvsMessage>) -> Result<usize, SocketError> {
        let batch: Vec<_> = messages
            .into_iter()
            .map(|m| {
                let what = describe(&m);
                (self.genl(m), what)
            })
            .collect();
        Ok(self.conn.execute(batch, &[])?)
    }

    fn dump(&mut self, msg: IpvsMessage) -> Result<Vec<IpvsMessage>, SocketError> {
        let what = describe(&msg);
        let answers = self.conn.request::<GenlMessage<IpvsMessage>>(
            self.genl(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
            &what,
        )?;
        Ok(answers.into_iter().map(|m| m.payload).collect())
    }

    /// Every virtual server (fwmark services and foreign protocols left out).
    pub fn services(&mut self) -> Result<Vec<VirtualServer>, SocketError> {
        let msgs = self.dump(IpvsMessage {
            cmd: Cmd::GetService,
            attrs: vec![],
        })?;
        Ok(msgs
            .iter()
            .filter_map(|m| VirtualServer::from_attrs(m.service_attrs()?))
            .collect())
    }

    /// The destinations of one virtual server, with their connection counts.
    pub fn dests(&mut self, service: &ServiceKey) -> Result<Vec<DestState>, SocketError> {
        let msgs = self.dump(IpvsMessage::service(Cmd::GetDest, service.attrs()))?;
        Ok(msgs
            .iter()
            .filter_map(|m| DestState::from_attrs(m.dest_attrs()?, service.addr))
            .collect())
    }

    /// One virtual server, if it exists (one request, no dump).
    pub fn service(&mut self, service: &ServiceKey) -> Result<Option<VirtualServer>, SocketError> {
        let msg = IpvsMessage::service(Cmd::GetService, service.attrs());
        let what = describe(&msg);
        match self.conn.request::<GenlMessage<IpvsMessage>>(
            self.genl(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            &what,
        ) {
            Ok(found) => Ok(found
                .iter()
                .find_map(|m| VirtualServer::from_attrs(m.payload.service_attrs()?))),
            Err(ConnError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether one virtual server exists.
    pub fn has_service(&mut self, service: &ServiceKey) -> Result<bool, SocketError> {
        Ok(self.service(service)?.is_some())
    }
}

/// A message as a person would name it in an error ("adding destination 10.0.0.1:80 to
/// tcp 10.96.0.1:80").
pub fn describe(m: &IpvsMessage) -> String {
    let key = m
        .service_attrs()
        .and_then(VirtualServer::from_attrs)
        .map(|vs| vs.key);
    let service = key
        .map(|k| format!("{} {}", k.protocol.as_str(), socket(k.addr, k.port)))
        .unwrap_or_else(|| "every service".into());
    let dest = m
        .dest_attrs()
        .zip(key)
        .and_then(|(d, k)| DestState::from_attrs(d, k.addr))
        .map(|d| socket(d.key.addr, d.key.port))
        .unwrap_or_default();
    match m.cmd {
        Cmd::NewService => format!("adding service {service}"),
        Cmd::SetService => format!("updating service {service}"),
        Cmd::DelService => format!("deleting service {service}"),
        Cmd::NewDest => format!("adding destination {dest} to {service}"),
        Cmd::SetDest => format!("updating destination {dest} of {service}"),
        Cmd::DelDest => format!("deleting destination {dest} of {service}"),
        Cmd::GetService => format!("listing service {service}"),
        Cmd::GetDest => format!("listing the destinations of {service}"),
        Cmd::GetInfo => "reading IPVS info".into(),
        Cmd::SetConfig => "setting IPVS's connection timeouts".into(),
        Cmd::Flush => "flushing every service".into(),
    }
}

fn socket(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// A destination key, for callers that build messages by hand.
pub fn dest_message(cmd: Cmd, service: &ServiceKey, dest: &DestKey, weight: u32) -> IpvsMessage {
    let attrs = match cmd {
        Cmd::DelDest => dest.attrs(),
        _ => dest.attrs_with_weight(weight),
    };
    IpvsMessage::dest(cmd, service, attrs)
}
