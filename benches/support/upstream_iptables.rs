//! Upstream kube-proxy's iptables ruleset shape (k/k pkg/proxy/iptables/proxier.go), as the
//! baseline of the iptables kernel bench: the `iptables-restore --noflush` input of upstream's
//! full sync, and of its partial sync (KEP-3453, MinimizeIPTablesRestore) after one Service's
//! endpoints changed.
//!
//! Invariants: pure text, no I/O. Services and endpoints are `support::service(i)` and
//! `support::slice(i, eps, generation)`, so the mix and addresses are those of every bench.
//! Chain names are upstream's, byte for byte: "KUBE-SVC-" etc. + the first 16 characters of
//! base32(sha256(portName + protocol [+ endpoint])), with the small SHA-256 below (checked against
//! upstream's test name `KUBE-SVC-XPGD46QRK7WJZT7O`). Rules are upstream's, argument for argument,
//! with upstream's defaults: masquerade bit 14, cluster CIDR 10.96.0.0/12 (`! -s` = not local),
//! localhost NodePorts on, every node address a NodePort address, nf_conntrack_tcp_be_liberal off.
//! Upstream's "large cluster mode" drops the endpoint comments when the cluster has more than 1000
//! endpoints; so does this. Services are written in index order (upstream: Go map order). The
//! jumps from the built-in chains are not in the text: upstream ensures them with separate
//! `iptables` calls (`JUMPS`). A partial sync expects the kernel to hold Service i at generation
//! `generation ^ 1` (the bench alternates 0 ↔ 1) and deletes those stale endpoint chains in the
//! same restore (upstream does that at most once per syncPeriod in large cluster mode).

use std::fmt::Write;
use std::net::IpAddr;

use kproxy::watch::Change;

/// Upstream's masquerade mark (`--iptables-masquerade-bit` 14, printed with `%#08x`).
const MARK: &str = "0x004000";
/// The cluster CIDR (`support::config()`): traffic from outside it is masqueraded.
const CLUSTER_CIDR: &str = "10.96.0.0/12";
/// Upstream's largeClusterEndpointsThreshold.
const LARGE_CLUSTER_ENDPOINTS: u64 = 1000;

/// One jump from a built-in chain, as upstream's `iptablesJumpChains` (then the kubelet's): the
/// bench runs `iptables -t TABLE -N TO` and `iptables -t TABLE -I FROM ARGS -j TO`, in this order.
pub struct Jump {
    pub table: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub args: &'static [&'static str],
}

const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];

const fn jump(table: &'static str, from: &'static str, to: &'static str, new: bool) -> Jump {
    Jump {
        table,
        from,
        to,
        args: if new { NEW } else { &[] },
    }
}

/// Upstream's jumps (comments left out: argv, not restore text, and they do not change cost).
pub const JUMPS: &[Jump] = &[
    jump("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", true),
    jump("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES", true),
    jump("filter", "INPUT", "KUBE-NODEPORTS", false),
    jump("filter", "FORWARD", "KUBE-SERVICES", true),
    jump("filter", "OUTPUT", "KUBE-SERVICES", true),
    jump("filter", "FORWARD", "KUBE-FORWARD", false),
    jump("filter", "INPUT", "KUBE-PROXY-FIREWALL", true),
    jump("filter", "OUTPUT", "KUBE-PROXY-FIREWALL", true),
    jump("filter", "FORWARD", "KUBE-PROXY-FIREWALL", true),
    jump("nat", "OUTPUT", "KUBE-SERVICES", false),
    jump("nat", "PREROUTING", "KUBE-SERVICES", false),
    jump("nat", "POSTROUTING", "KUBE-POSTROUTING", false),
    jump("filter", "INPUT", "KUBE-FIREWALL", false),
    jump("filter", "OUTPUT", "KUBE-FIREWALL", false),
];

const FILTER_CHAINS: [&str; 6] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FIREWALL",
];
const NAT_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// SHA-256's round constants and initial hash: the first 32 bits of the fractional parts of the
/// cube roots of the first 64 primes and of the square roots of the first 8 (FIPS 180-4).
fn sha256_constants() -> &'static (Vec<u32>, Vec<u32>) {
    static CONSTANTS: std::sync::OnceLock<(Vec<u32>, Vec<u32>)> = std::sync::OnceLock::new();
    CONSTANTS.get_or_init(|| {
        let primes: Vec<u32> = (2u32..)
            .filter(|p| (2..*p).take_while(|d| d * d <= *p).all(|d| p % d != 0))
            .take(64)
            .collect();
        let frac = |x: f64| ((x - x.floor()) * 4_294_967_296.0) as u32;
        let k = primes.iter().map(|&p| frac(f64::from(p).cbrt())).collect();
        let h = primes[..8]
            .iter()
            .map(|&p| frac(f64::from(p).sqrt()))
            .collect();
        (k, h)
    })
}

/// SHA-256 (FIPS 180-4).
fn sha256(data: &[u8]) -> [u8; 32] {
    let (k, h0) = sha256_constants();
    let mut h = h0.clone();
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for t in 0..64 {
            w[t] = if t < 16 {
                u32::from_be_bytes([
                    block[4 * t],
                    block[4 * t + 1],
                    block[4 * t + 2],
                    block[4 * t + 3],
                ])
            } else {
                let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
                let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
                w[t - 16]
                    .wrapping_add(s0)
                    .wrapping_add(w[t - 7])
                    .wrapping_add(s1)
            };
        }
        let mut v = [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]];
        for t in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(k[t])
                .wrapping_add(w[t]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let t2 = s0.wrapping_add((a & b) ^ (a & c) ^ (b & c));
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, x) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Upstream's hash suffix: the first 16 characters of base32(sha256(`s`)), i.e. its first 80 bits.
pub fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = sha256(s.as_bytes());
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
    (0..16)
        .map(|j| ALPHABET[((bits >> (75 - 5 * j)) & 31) as usize] as char)
        .collect()
}

/// Service i's port as upstream's proxier sees it.
struct Port {
    /// `default/svc-i:http`, upstream's svcPortNameString.
    name: String,
    vip: IpAddr,
    port: u16,
    node_port: Option<u16>,
    lb_ips: Vec<IpAddr>,
    source_ranges: Vec<String>,
    affinity: Option<u32>,
    svc: String,
    ext: String,
    fw: String,
}

fn port(i: u32) -> Port {
    let Change::Service(_, Some(service)) = super::service(i) else {
        unreachable!("support::service returns a Service")
    };
    let p = &service.ports[0];
    let name = format!("{}:{}", p.name.service, p.name.port);
    let h = hash16(&format!("{name}tcp"));
    Port {
        vip: p.cluster_ips[0],
        port: p.port,
        node_port: p.node_port,
        lb_ips: p.load_balancer_ips.clone(),
        source_ranges: p
            .load_balancer_source_ranges
            .iter()
            .map(|r| r.to_string())
            .collect(),
        affinity: p.affinity_timeout_seconds,
        svc: format!("KUBE-SVC-{h}"),
        ext: format!("KUBE-EXT-{h}"),
        fw: format!("KUBE-FW-{h}"),
        name,
    }
}

impl Port {
    fn external(&self) -> bool {
        self.node_port.is_some() || !self.lb_ips.is_empty()
    }

    fn firewall(&self) -> bool {
        !self.lb_ips.is_empty() && !self.source_ranges.is_empty()
    }
}

/// One endpoint of a port: `ip:8080` and its KUBE-SEP chain.
struct Endpoint {
    ip: IpAddr,
    addr: String,
    chain: String,
}

/// The endpoints of `slice` (a `support::slice…` change) for port p.
fn endpoints(p: &Port, slice: Change) -> Vec<Endpoint> {
    let Change::Slice(_, Some(slice)) = slice else {
        unreachable!("support::slice returns a slice")
    };
    let target = slice.ports[0].port;
    slice
        .endpoints
        .iter()
        .map(|e| {
            let addr = format!("{}:{target}", e.ip);
            Endpoint {
                ip: e.ip,
                chain: format!("KUBE-SEP-{}", hash16(&format!("{}tcp{addr}", p.name))),
                addr,
            }
        })
        .collect()
}

/// KUBE-SVC-… of Service i (for the bench's checks).
pub fn service_chain(i: u32) -> String {
    port(i).svc
}

/// One table of a restore input: chain lines, then rules (upstream's two line buffers).
#[derive(Default)]
struct Table {
    chains: String,
    rules: String,
}

impl Table {
    fn chain(&mut self, name: &str) {
        let _ = writeln!(self.chains, ":{name} - [0:0]");
    }

    fn rule(&mut self, rule: std::fmt::Arguments) {
        let _ = self.rules.write_fmt(rule);
        self.rules.push('\n');
    }
}

/// The restore input of one sync. `changed`: None = full sync (every Service's chains);
/// Some((i, endpoints, stale)) = partial sync where only Service i changed, now with `endpoints`,
/// and `stale` are its endpoint chains to delete.
fn sync(n: u32, eps: u32, mut changed: Option<(u32, Vec<Endpoint>, Vec<String>)>) -> String {
    let large = u64::from(n) * u64::from(eps) > LARGE_CLUSTER_ENDPOINTS;
    let (mut filter, mut nat) = (Table::default(), Table::default());
    FILTER_CHAINS.iter().for_each(|c| filter.chain(c));
    NAT_CHAINS.iter().for_each(|c| nat.chain(c));
    nat.rule(format_args!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MARK}/{MARK} -j RETURN"
    ));
    nat.rule(format_args!(
        "-A KUBE-POSTROUTING -j MARK --xor-mark {MARK}"
    ));
    nat.rule(format_args!(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
    ));
    nat.rule(format_args!("-A KUBE-MARK-MASQ -j MARK --or-mark {MARK}"));
    filter.rule(format_args!(
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
         -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    ));
    for i in 0..n {
        let p = port(i);
        // The dispatch chains: every Service, full and partial syncs alike (hence O(Services)).
        let (name, vip, port) = (&p.name, p.vip, p.port);
        nat.rule(format_args!(
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip} \
             --dport {port} -j {}",
            p.svc
        ));
        for lb in &p.lb_ips {
            let to = if p.firewall() { &p.fw } else { &p.ext };
            nat.rule(format_args!(
                "-A KUBE-SERVICES -m comment --comment \"{name} loadbalancer IP\" -m tcp -p tcp \
                 -d {lb} --dport {port} -j {to}"
            ));
            if p.firewall() {
                filter.rule(format_args!(
                    "-A KUBE-PROXY-FIREWALL -m comment --comment \"{name} traffic not accepted by \
                     {}\" -m tcp -p tcp -d {lb} --dport {port} -j DROP",
                    p.fw
                ));
            }
        }
        if let Some(np) = p.node_port {
            nat.rule(format_args!(
                "-A KUBE-NODEPORTS -m comment --comment {name} -m tcp -p tcp --dport {np} -j {}",
                p.ext
            ));
        }
        // The per-Service chains: only those of changed Services in a partial sync.
        let eps_now = match &mut changed {
            None => endpoints(&p, super::slice(i, eps, 0)),
            Some((c, now, _)) if *c == i => std::mem::take(now),
            Some(_) => continue,
        };
        service_chains(&mut nat, &p, &eps_now, large);
    }
    if let Some((_, _, stale)) = &changed {
        for chain in stale {
            nat.chain(chain);
            nat.rule(format_args!("-X {chain}"));
        }
    }
    nat.rule(format_args!(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    ));
    filter.rule(format_args!(
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    ));
    filter.rule(format_args!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MARK}/{MARK} -j ACCEPT"
    ));
    filter.rule(format_args!(
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    ));
    let mut out = String::with_capacity(
        filter.chains.len() + filter.rules.len() + nat.chains.len() + nat.rules.len() + 32,
    );
    for (header, t) in [("*filter", filter), ("*nat", nat)] {
        let _ = write!(out, "{header}\n{}{}COMMIT\n", t.chains, t.rules);
    }
    out
}

/// Service p's KUBE-EXT, KUBE-FW, KUBE-SVC and KUBE-SEP chains, in upstream's order.
fn service_chains(nat: &mut Table, p: &Port, eps: &[Endpoint], large: bool) {
    let (name, vip, port, svc) = (&p.name, p.vip, p.port, &p.svc);
    nat.rule(format_args!(
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip} --dport {port} \
         ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
    ));
    if p.external() {
        nat.chain(&p.ext);
        nat.rule(format_args!(
            "-A {} -m comment --comment \"masquerade traffic for {name} external destinations\" \
             -j KUBE-MARK-MASQ",
            p.ext
        ));
        nat.rule(format_args!("-A {} -j {svc}", p.ext));
    }
    if p.firewall() {
        nat.chain(&p.fw);
        for range in &p.source_ranges {
            nat.rule(format_args!(
                "-A {} -m comment --comment \"{name} loadbalancer IP\" -s {range} -j {}",
                p.fw, p.ext
            ));
        }
        nat.rule(format_args!(
            "-A {} -m comment --comment \"other traffic to {name} will be dropped by \
             KUBE-PROXY-FIREWALL\"",
            p.fw
        ));
    }
    nat.chain(svc);
    // Upstream's appendServiceCommentLocked: no comment in large cluster mode.
    let comment = |text: &str| {
        if large {
            String::new()
        } else {
            format!(" -m comment --comment {text}")
        }
    };
    if let Some(seconds) = p.affinity {
        for e in eps {
            nat.rule(format_args!(
                "-A {svc}{} -m recent --name {c} --rcheck --seconds {seconds} --reap -j {c}",
                comment(&format!("\"{name} -> {}\"", e.addr)),
                c = e.chain
            ));
        }
    }
    for (k, e) in eps.iter().enumerate() {
        let left = eps.len() - k;
        let pick = if left > 1 {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / left as f64
            )
        } else {
            String::new()
        };
        nat.rule(format_args!(
            "-A {svc}{}{pick} -j {}",
            comment(&format!("\"{name} -> {}\"", e.addr)),
            e.chain
        ));
    }
    for e in eps {
        let c = &e.chain;
        nat.chain(c);
        let comment = comment(name);
        nat.rule(format_args!(
            "-A {c}{comment} -s {} -j KUBE-MARK-MASQ",
            e.ip
        ));
        let recent = match p.affinity {
            Some(_) => format!(" -m recent --name {c} --set"),
            None => String::new(),
        };
        nat.rule(format_args!(
            "-A {c}{comment}{recent} -m tcp -p tcp -j DNAT --to-destination {}",
            e.addr
        ));
    }
}

/// Upstream's full sync of `n` Services × `eps` endpoints (generation 0): every KUBE chain
/// declared and every rule, both tables, one `iptables-restore --noflush` input.
pub fn full(n: u32, eps: u32) -> String {
    sync(n, eps, None)
}

/// Upstream's partial sync after all of Service i's endpoints moved to `generation` (from
/// `generation ^ 1`): the dispatch chains whole, Service i's chains, its new endpoint chains,
/// and its old endpoint chains flushed and deleted.
pub fn partial_endpoints_moved(n: u32, eps: u32, i: u32, generation: u32) -> String {
    let p = port(i);
    let now = endpoints(&p, super::slice(i, eps, generation));
    let stale = endpoints(&p, super::slice(i, eps, generation ^ 1));
    sync(
        n,
        eps,
        Some((i, now, stale.into_iter().map(|e| e.chain).collect())),
    )
}

/// Upstream's partial sync after one endpoint of Service i moved to `generation` (from
/// `generation ^ 1`), as `support::slice_one_replaced`: the others stay at generation 0.
pub fn partial_one_endpoint_changed(n: u32, eps: u32, i: u32, generation: u32) -> String {
    let p = port(i);
    let now = endpoints(&p, super::slice_one_replaced(i, eps, generation));
    let mut old = endpoints(&p, super::slice_one_replaced(i, eps, generation ^ 1));
    let stale = old.swap_remove((eps / 2) as usize).chain;
    sync(n, eps, Some((i, now, vec![stale])))
}
