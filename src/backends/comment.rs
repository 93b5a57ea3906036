//! The comment that names a rule's or element's Service port, as upstream kube-proxy writes it:
//! `namespace/name:port` (`namespace/name` for a Service's one unnamed port), so an operator
//! reading `nft list table ip kproxy` or `iptables-save` can tell which Service an element or
//! rule belongs to.
//!
//! Invariants: pure; at most `MAX_BYTES` bytes, cut on a char boundary (nft refuses a longer
//! comment and would fail the whole transaction, k/k#139515; upstream truncates at 128 since
//! k/k#139516); never holds `"` (the comment is quoted in nft and iptables text), `,` or a
//! control character (the listing parsers split elements on commas): none can occur in
//! Kubernetes names, and they are dropped if they ever do.

use crate::model::ServicePortName;

/// nftables' limit (NFTNL_UDATA_COMMENT_MAXLEN, without the NUL); iptables allows 255, but
/// upstream cuts both at 128.
pub const MAX_BYTES: usize = 128;

/// `namespace/name:port` of `name`, cut to `MAX_BYTES`.
pub fn service_port(name: &ServicePortName) -> String {
    let mut s = if name.port.is_empty() {
        name.service.to_string()
    } else {
        format!("{}:{}", name.service, name.port)
    };
    s.retain(|c| c != '"' && c != ',' && !c.is_control());
    truncate(&mut s);
    s
}

/// Cuts `s` to at most `MAX_BYTES` bytes, on a char boundary.
pub fn truncate(s: &mut String) {
    if s.len() > MAX_BYTES {
        let mut end = MAX_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NamespacedName, Protocol};

    #[test]
    fn a_comment_names_the_namespace_the_service_and_the_port_as_upstream_does() {
        let named = ServicePortName::new(NamespacedName::new("ns", "web"), "http", Protocol::Tcp);
        assert_eq!(service_port(&named), "ns/web:http");
        let unnamed = ServicePortName::new(NamespacedName::new("ns", "web"), "", Protocol::Udp);
        assert_eq!(service_port(&unnamed), "ns/web");
    }

    #[test]
    fn a_long_name_is_cut_at_128_bytes_on_a_char_boundary() {
        // 62 + 1 + 63 + ":http" = 131 bytes: nft would refuse it (k/k#139515).
        let ns = "n".repeat(62);
        let name = "s".repeat(63);
        let long = ServicePortName::new(NamespacedName::new(&ns, &name), "http", Protocol::Tcp);
        let c = service_port(&long);
        assert_eq!(c.len(), 128);
        assert!(format!("{ns}/{name}:http").starts_with(&c));

        // A two-byte char straddling byte 128 is dropped whole.
        let mut s = format!("{}é tail", "a".repeat(127));
        truncate(&mut s);
        assert_eq!(s, "a".repeat(127));
        let mut short = "ns/é:p".to_string();
        truncate(&mut short);
        assert_eq!(short, "ns/é:p");
    }

    #[test]
    fn quotes_and_commas_never_reach_the_comment() {
        let odd = ServicePortName::new(NamespacedName::new("n\"s", "a,b"), "p", Protocol::Tcp);
        assert_eq!(service_port(&odd), "ns/ab:p");
    }
}
