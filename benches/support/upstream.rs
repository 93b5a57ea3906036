//! Upstream kube-proxy's nftables ruleset shape, as a baseline (issue 4): a chain per Service
//! and per endpoint, dispatch by a verdict map, endpoints picked by an anonymous
//! `numgen random mod N vmap` in the Service's chain (k/k pkg/proxy/nftables/proxier.go).
//!
//! Invariants: table `ip kube-proxy-bench`, never upstream's real `kube-proxy`; the text is what
//! `nft -f` loads; names are short (`svc-I`, `ep-I-K`) since only the shape matters.

use std::fmt::Write;

pub const TABLE: &str = "kube-proxy-bench";

fn vip(i: u32) -> String {
    format!("10.{}.{}.{}", (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn endpoint(i: u32, k: u32, generation: u32) -> String {
    let e = i * 16 + k;
    format!(
        "{}.{}.{}.{}",
        100 + generation % 100,
        (e >> 16) as u8,
        (e >> 8) as u8,
        e as u8
    )
}

/// The rules of Service i's chain: masquerade outside the cluster CIDR, then the endpoint pick.
fn service_rules(i: u32, eps: u32, generation: u32) -> Vec<String> {
    let picks: Vec<String> = (0..eps)
        .map(|k| format!("{k} : goto ep-{i}-{k}-{generation}"))
        .collect();
    vec![
        format!(
            "ip daddr {} tcp dport 80 ip saddr != 10.96.0.0/12 jump mark-for-masquerade",
            vip(i)
        ),
        format!("numgen random mod {eps} vmap {{ {} }}", picks.join(", ")),
    ]
}

fn endpoint_chain(out: &mut String, i: u32, k: u32, generation: u32) {
    let ep = endpoint(i, k, generation);
    let _ = writeln!(
        out,
        "add chain ip {TABLE} ep-{i}-{k}-{generation}\n\
         add rule ip {TABLE} ep-{i}-{k}-{generation} ip saddr {ep} jump mark-for-masquerade\n\
         add rule ip {TABLE} ep-{i}-{k}-{generation} meta l4proto tcp dnat to {ep}:8080"
    );
}

/// The whole ruleset for `n` Services × `eps` endpoints, as one `nft -f` transaction.
pub fn ruleset(n: u32, eps: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "add table ip {TABLE}\n\
         add chain ip {TABLE} mark-for-masquerade\n\
         add rule ip {TABLE} mark-for-masquerade meta mark set meta mark | 0x4000\n\
         add map ip {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n\
         add chain ip {TABLE} services\n\
         add rule ip {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add chain ip {TABLE} nat-prerouting {{ type nat hook prerouting priority -100; }}\n\
         add rule ip {TABLE} nat-prerouting jump services\n\
         add chain ip {TABLE} nat-output {{ type nat hook output priority -100; }}\n\
         add rule ip {TABLE} nat-output jump services"
    );
    for i in 0..n {
        for k in 0..eps {
            endpoint_chain(&mut out, i, k, 0);
        }
        let _ = writeln!(out, "add chain ip {TABLE} svc-{i}");
        for r in service_rules(i, eps, 0) {
            let _ = writeln!(out, "add rule ip {TABLE} svc-{i} {r}");
        }
        let _ = writeln!(
            out,
            "add element ip {TABLE} service-ips {{ {} . tcp . 80 : goto svc-{i} }}",
            vip(i)
        );
    }
    out
}

/// Upstream's partial sync when Service i's endpoints all move to `generation`: new endpoint
/// chains, the Service chain flushed and rewritten (upstream flushes and deletes the stale
/// endpoint chains a second or more later, so this transaction keeps them).
pub fn endpoints_moved(i: u32, eps: u32, generation: u32) -> String {
    let mut out = String::new();
    for k in 0..eps {
        endpoint_chain(&mut out, i, k, generation);
    }
    let _ = writeln!(out, "flush chain ip {TABLE} svc-{i}");
    for r in service_rules(i, eps, generation) {
        let _ = writeln!(out, "add rule ip {TABLE} svc-{i} {r}");
    }
    out
}

/// The deferred cleanup of the endpoint chains of `generation` (a separate, later transaction).
pub fn stale_endpoints(i: u32, eps: u32, generation: u32) -> String {
    (0..eps)
        .map(|k| {
            format!(
                "flush chain ip {TABLE} ep-{i}-{k}-{generation}\n\
                 delete chain ip {TABLE} ep-{i}-{k}-{generation}\n"
            )
        })
        .collect()
}
