//! Field-level checks shared by the validators: names, IPs, CIDRs, ports and protocols, each
//! returning the `Rejection` the API server's message corresponds to.
//!
//! Invariants: pure; `field` arguments are JSON paths (`spec.ports[1].port`) used only in the
//! rejection's detail.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{RejectReason, Rejection};
use crate::model::{NamespacedName, Protocol};

/// metadata.namespace/name, both required and well-formed (`name_ok` checks the name).
pub(super) fn namespaced_name(
    meta: &ObjectMeta,
    name_ok: fn(&str) -> bool,
) -> Result<NamespacedName, Rejection> {
    let name = meta.name.as_deref().unwrap_or_default();
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let checks = [
        ("metadata.name", name, name_ok(name)),
        ("metadata.namespace", namespace, is_dns1123_label(namespace)),
    ];
    for (field, value, ok) in checks {
        if value.is_empty() {
            return Err(missing_name(format!("{field}: Required value")));
        }
        if !ok {
            return Err(missing_name(format!(
                "{field}: {value:?} is not a valid name"
            )));
        }
    }
    Ok(NamespacedName::new(namespace, name))
}

pub(super) fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

pub(super) fn parse_all<T>(
    values: Option<&[String]>,
    field: &str,
    parse: impl Fn(&str, &str) -> Result<T, Rejection>,
) -> Result<Vec<T>, Rejection> {
    values
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, v)| parse(v, &format!("{field}[{i}]")))
        .collect()
}

pub(super) fn parse_ip(s: &str, field: &str) -> Result<IpAddr, Rejection> {
    s.parse()
        .map_err(|_| Rejection::new(RejectReason::BadIp, format!("{field}: {s:?} is not an IP")))
}

/// A CIDR, host bits cleared as upstream's ParseCIDR does.
pub(super) fn parse_cidr(s: &str, field: &str) -> Result<IpNet, Rejection> {
    s.parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| invalid(format!("{field}: {s:?} is not a CIDR")))
}

pub(super) fn parse_port(p: i32, field: &str) -> Result<u16, Rejection> {
    u16::try_from(p)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| bad_port(format!("{field}: {p} is not in 1..=65535")))
}

pub(super) fn parse_protocol(p: Option<&str>, field: &str) -> Result<Protocol, Rejection> {
    let p = p.unwrap_or("TCP");
    p.parse().map_err(|()| {
        Rejection::new(
            RejectReason::BadProtocol,
            format!("{field}.protocol: unsupported {p:?}"),
        )
    })
}

pub(super) fn invalid(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::Invalid, detail)
}

pub(super) fn bad_port(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::BadPort, detail)
}

pub(super) fn missing_name(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::MissingName, detail)
}

/// Non-empty `[a-z0-9-]*`, starting and ending alphanumeric.
pub(super) fn is_label_shaped(s: &str) -> bool {
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// RFC 1123 label (namespaces, port names): label-shaped, at most 63 characters.
pub(super) fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shaped(s)
}

/// RFC 1035 label (Service names): an RFC 1123 label that starts with a letter.
pub(super) fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
}

/// RFC 1123 subdomain (slice and Node names): dot-separated label-shaped parts, at most 253
/// characters in all (as the API server's regex, parts are not limited to 63).
pub(super) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_shaped)
}
