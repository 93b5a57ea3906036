//! The stand-in for a proxy mode whose kernel backend has not landed yet: it accepts every sync
//! without touching the kernel. It renders the plans as readable text; its cleanup removes the
//! mode's kproxy objects (`leftovers.rs`), so --cleanup is already complete.
//!
//! Invariants: never performs I/O; `render` is deterministic (plans are ordered by name).

use std::collections::BTreeSet;
use std::fmt::Write;

use super::{Backend, BackendConfig, BackendError, Plans, ProxyMode, SyncReport};
use crate::model::ServicePortName;
use crate::model::plan::Targets;
use crate::node::NodeFacts;

pub struct Pending {
    mode: ProxyMode,
    config: BackendConfig,
}

impl Pending {
    pub fn new(mode: ProxyMode, config: BackendConfig) -> Self {
        tracing::warn!(
            mode = %mode,
            "the {mode} backend is not implemented yet: kproxy plans every service port but programs no rules"
        );
        Pending { mode, config }
    }
}

fn targets(t: &Targets) -> String {
    match t {
        Targets::Reject => "reject".into(),
        Targets::Drop => "drop".into(),
        Targets::Endpoints(eps) => eps
            .iter()
            .map(|e| match e.ip {
                std::net::IpAddr::V4(ip) => format!("{ip}:{}", e.port),
                std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", e.port),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl Backend for Pending {
    fn mode(&self) -> ProxyMode {
        self.mode
    }

    fn sync_full(&mut self, plans: &Plans, _node: &NodeFacts) -> Result<SyncReport, BackendError> {
        Ok(SyncReport {
            operations: plans.len(),
        })
    }

    fn sync_partial(
        &mut self,
        _plans: &Plans,
        changed: &BTreeSet<ServicePortName>,
        _node: &NodeFacts,
    ) -> Result<SyncReport, BackendError> {
        Ok(SyncReport {
            operations: changed.len(),
        })
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let result = match self.mode {
            ProxyMode::Iptables => super::leftovers::remove_iptables().map(|_| ()),
            ProxyMode::Ipvs => super::leftovers::remove_ipvs(),
            ProxyMode::Nftables => Ok(()),
        };
        result.map_err(|e| BackendError::Cleanup(e.to_string()))
    }

    fn render(&self, plans: &Plans, node: &NodeFacts) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# kproxy {}: backend not implemented yet; the plan it will compile for node {:?}",
            self.mode, node.name
        );
        let _ = writeln!(
            out,
            "# cluster-cidr {:?} masquerade-all {} nodeport-ips {:?}",
            self.config
                .cluster_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
            self.config.masquerade_all,
            node.nodeport_ips
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
        );
        for (name, planned) in plans {
            let p = &planned.port;
            let ips: Vec<String> = p.cluster_ips.iter().map(|ip| ip.to_string()).collect();
            let _ = write!(
                out,
                "{name} {:?} clusterIPs {} port {}",
                p.service_type,
                ips.join(","),
                p.port
            );
            if let Some(np) = p.node_port {
                let _ = write!(out, " nodePort {np}");
            }
            for ip in &p.external_ips {
                let _ = write!(out, " externalIP {ip}");
            }
            for ip in &p.load_balancer_ips {
                let _ = write!(out, " loadBalancerIP {ip}");
            }
            if let Some(t) = p.affinity_timeout_seconds {
                let _ = write!(out, " affinity ClientIP {t}s");
            }
            out.push('\n');
            let _ = writeln!(out, "  internal: {}", targets(&planned.plan.internal));
            if let Some(ext) = &planned.plan.external {
                let _ = writeln!(out, "  external: {}", targets(ext));
            }
        }
        out
    }
}
