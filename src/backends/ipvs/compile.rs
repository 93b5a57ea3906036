//! IPVS compile: what one service port needs from the kernel — its virtual servers with their
//! destinations, the service addresses bound to the dummy interface, and its elements in the
//! companion nftables sets — plus the fixed companion table itself. Pure.
//!
//! Invariants: one virtual server per (address, protocol, port): every ClusterIP, externalIP
//! and LoadBalancer IP at the service port, and every NodePort address at the NodePort.
//! Everything comes from the port's family plans: each family's addresses, and destinations
//! from its targets (internal for ClusterIPs, external for the rest), so a server and its
//! destinations are always of one family and a NodePort listens only on the node addresses of
//! the families the Service has; Reject and Drop leave a server without destinations (IPVS
//! answers that with ICMP port unreachable, which is the reject), and Drop adds the address to
//! the `dropped` set, matched before IPVS sees the packet; Reject adds it to `rejected`, where
//! TCP gets a reset (IPVS's own ICMP answer is rate-limited per client, so a client connecting
//! in a loop would see timeouts). The companion rules are a fixed number
//! whatever the Services; Services only add set elements.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::netlink::{DestKey, ServiceKey, VirtualServer};
use crate::backends::BackendConfig;
use crate::model::IpFamily;
use crate::model::plan::{Planned, Targets};
use crate::node::{LocalTraffic, NodeFacts};

/// The companion table's name (in the `ip` and `ip6` families).
pub const TABLE: &str = "kproxy-ipvs";

/// IPVS mode's settings, from the backend configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsSettings {
    pub scheduler: String,
    pub masquerade_all: bool,
    /// The node's local-traffic match (--detect-local-mode), taken from the node facts by
    /// every full sync; `Undetected` until the first.
    pub local: LocalTraffic,
    pub masq_mark: u32,
}

impl IpvsSettings {
    pub fn from_config(config: &BackendConfig) -> IpvsSettings {
        IpvsSettings {
            scheduler: if config.ipvs_scheduler.is_empty() {
                "rr".into()
            } else {
                config.ipvs_scheduler.clone()
            },
            masquerade_all: config.masquerade_all,
            local: LocalTraffic::Undetected,
            masq_mark: 1u32 << config.masquerade_bit.unwrap_or(14).min(31),
        }
    }
}

/// A virtual server with the destinations it should have (each at weight 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub vs: VirtualServer,
    pub dests: BTreeSet<DestKey>,
}

/// One element of one companion set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub family: IpFamily,
    pub set: &'static str,
    pub key: String,
}

/// Everything one service port contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortState {
    pub servers: BTreeMap<ServiceKey, Server>,
    pub addresses: BTreeSet<IpAddr>,
    pub elements: BTreeSet<Element>,
}

/// Whether NodePorts are served on `ip`: not loopback (IPVS mode has no localhost NodePorts, as
/// upstream) and not IPv6 link-local.
pub fn serves_nodeports(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

impl PortState {
    fn element(&mut self, set: &'static str, ip: &IpAddr, key: String) {
        self.elements.insert(Element {
            family: IpFamily::of(ip),
            set,
            key,
        });
    }

    fn server(&mut self, vs: VirtualServer, targets: &Targets) {
        let dests = match targets {
            Targets::Endpoints(eps) => eps
                .iter()
                .map(|e| DestKey {
                    addr: e.ip,
                    port: e.port,
                })
                .collect(),
            Targets::Reject | Targets::Drop => BTreeSet::new(),
        };
        let addr = vs.key.addr;
        let triple = format!("{addr} . {} . {}", vs.key.protocol.lower(), vs.key.port);
        match targets {
            Targets::Drop => self.element("dropped", &addr, triple),
            Targets::Reject => self.element("rejected", &addr, triple),
            Targets::Endpoints(_) => {}
        }
        self.servers.insert(vs.key, Server { vs, dests });
    }
}

/// The kernel state one service port needs. Pure.
pub fn compile_port(p: &Planned, node: &NodeFacts, settings: &IpvsSettings) -> PortState {
    let mut st = PortState::default();
    let protocol = p.port.name.protocol;
    let vs = |addr: IpAddr, port: u16| VirtualServer {
        key: ServiceKey {
            addr,
            protocol,
            port,
        },
        scheduler: settings.scheduler.clone(),
        persistence: p.port.affinity_timeout_seconds,
        owned: true,
    };
    let triple = |ip: &IpAddr, port: u16| format!("{ip} . {} . {port}", protocol.lower());
    for fp in &p.plan.families {
        for ip in &fp.cluster_ips {
            st.server(vs(*ip, p.port.port), &fp.internal);
            st.addresses.insert(*ip);
            st.element("cluster-ips", ip, triple(ip, p.port.port));
        }
        if let Some(external) = &fp.external {
            for ip in fp.external_ips.iter().chain(&fp.load_balancer_ips) {
                st.server(vs(*ip, p.port.port), external);
                st.addresses.insert(*ip);
                if fp.masquerade_external {
                    st.element("external-masq", ip, triple(ip, p.port.port));
                }
            }
            if let Some(ranges) = &fp.source_ranges {
                for ip in &fp.load_balancer_ips {
                    st.element("firewall", ip, triple(ip, p.port.port));
                    for range in ranges {
                        let key = format!("{} . {range}", triple(ip, p.port.port));
                        st.element("firewall-allow", ip, key);
                    }
                }
            }
            if let Some(node_port) = fp.node_port {
                let addrs = node
                    .nodeport_ips
                    .iter()
                    .filter(|ip| IpFamily::of(ip) == fp.family && serves_nodeports(ip));
                for ip in addrs {
                    st.server(vs(*ip, node_port), external);
                    if fp.masquerade_external {
                        st.element("external-masq", ip, triple(ip, node_port));
                    }
                }
            }
        }
        // Hairpin: a pod reaching itself through the Service is masqueraded (source ==
        // destination after IPVS rewrote the destination).
        for targets in [Some(&fp.internal), fp.external.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Targets::Endpoints(eps) = targets {
                for e in eps {
                    st.element("hairpin", &e.ip, format!("{} . {}", e.ip, e.ip));
                }
            }
        }
    }
    st
}

/// The companion table of `family`, without elements: sets, chains and their fixed rules. Pure.
pub fn table(family: IpFamily, settings: &IpvsSettings) -> String {
    let (fam, ip, addr) = match family {
        IpFamily::V4 => ("ip", "ip", "ipv4_addr"),
        IpFamily::V6 => ("ip6", "ip6", "ipv6_addr"),
    };
    let mark = format!("{:#010x}", settings.masq_mark);
    let triple = format!("{addr} . inet_proto . inet_service");
    let key = format!("{ip} daddr . meta l4proto . th dport");
    let mut out = format!("table {fam} {TABLE} {{\n");
    out.push_str("\tcomment \"kproxy IPVS mode: what IPVS cannot do itself\"\n");
    for set in [
        "cluster-ips",
        "external-masq",
        "dropped",
        "rejected",
        "firewall",
    ] {
        out.push_str(&format!("\tset {set} {{\n\t\ttype {triple}\n\t}}\n"));
    }
    out.push_str(&format!(
        "\tset firewall-allow {{\n\t\ttype {triple} . {addr}\n\t\tflags interval\n\t}}\n"
    ));
    out.push_str(&format!(
        "\tset hairpin {{\n\t\ttype {addr} . {addr}\n\t}}\n"
    ));
    for (hook, jumps) in [
        ("prerouting", &["services"][..]),
        ("input", &["rejects"][..]),
        ("output", &["services", "rejects"][..]),
    ] {
        out.push_str(&format!(
            "\tchain {hook} {{\n\t\ttype filter hook {hook} priority -110; policy accept;\n"
        ));
        for j in jumps {
            out.push_str(&format!("\t\tjump {j}\n"));
        }
        out.push_str("\t}\n");
    }
    let masq = format!("meta mark set meta mark | {mark}");
    let mut services = vec![
        format!("{key} @firewall {key} . {ip} saddr != @firewall-allow drop"),
        format!("{key} @dropped drop"),
    ];
    if settings.masquerade_all {
        services.push(format!("{key} @cluster-ips {masq}"));
    } else if let Some(cidr) = settings.local.cidr(family) {
        services.push(format!(
            "{key} @cluster-ips {ip} saddr != {{ {cidr} }} {masq}"
        ));
    } else if let LocalTraffic::Interface { name, prefix } = &settings.local {
        let star = if *prefix { "*" } else { "" };
        services.push(format!(
            "{key} @cluster-ips iifname != \"{name}{star}\" {masq}"
        ));
    } else {
        services.push(format!("{key} @cluster-ips fib saddr type local {masq}"));
    }
    services.push(format!("{key} @external-masq {masq}"));
    chain(&mut out, "services", &services);
    chain(
        &mut out,
        "rejects",
        &[format!(
            "meta l4proto tcp {key} @rejected reject with tcp reset"
        )],
    );
    out.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for rule in [
        format!("{ip} saddr . {ip} daddr @hairpin masquerade fully-random"),
        format!("meta mark & {mark} == 0x00000000 return"),
        format!("meta mark set meta mark ^ {mark}"),
        "masquerade fully-random".to_string(),
    ] {
        out.push_str(&format!("\t\t{rule}\n"));
    }
    out.push_str("\t}\n}\n");
    out
}

fn chain(out: &mut String, name: &str, rules: &[String]) {
    out.push_str(&format!("\tchain {name} {{\n"));
    for r in rules {
        out.push_str(&format!("\t\t{r}\n"));
    }
    out.push_str("\t}\n");
}
