//! Netfilter netlink by hand, for the two places that need bytes no crate writes for them (the
//! nf_tables rule-count probe, and conntrack dumps filtered with CTA_FILTER): a socket, one
//! attribute, and one request (nlmsghdr, nfgenmsg, attributes); and a receive buffer made
//! large, for any netlink socket.
//!
//! Invariants: native byte order for headers and lengths (netlink's), values as given; every
//! attribute is padded to 4 bytes; the request's length field is its whole length.

/// A NETLINK_NETFILTER socket connected to the kernel, in the calling thread's namespace.
pub fn socket() -> std::io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Raises a netlink socket's receive buffer to `size` bytes (beyond net.core.rmem_max with
/// CAP_NET_ADMIN; as far as that allows without). The memory is taken only while messages wait.
pub fn grow_receive_buffer(socket: &netlink_sys::Socket, size: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid fd and a pointer to an int of the given length.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        let _ = socket.set_rx_buf_sz(size);
    }
}

/// The address family byte of nfgenmsg for an IP family (NFPROTO_IPV4 / NFPROTO_IPV6, which
/// equal AF_INET / AF_INET6).
pub fn nfproto(family: crate::model::IpFamily) -> u8 {
    match family {
        crate::model::IpFamily::V4 => 2,
        crate::model::IpFamily::V6 => 10,
    }
}

/// The IP family of nfgenmsg's family byte (`nfproto`'s inverse); `None` for the others
/// (inet, arp, bridge, netdev).
pub fn ip_family(nfproto: u8) -> Option<crate::model::IpFamily> {
    crate::model::IpFamily::ALL
        .into_iter()
        .find(|f| self::nfproto(*f) == nfproto)
}

/// Appends one attribute (header, value, padding to 4 bytes) to `out`.
pub fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().div_ceil(4) * 4, 0);
}

/// One request: nlmsghdr (`message_type`, `flags`, `seq`, port id 0: the kernel), nfgenmsg
/// (`family`, version 0, res_id 0), then `attrs`.
pub fn request(message_type: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&message_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(attrs);
    m
}
