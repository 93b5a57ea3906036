//! healthCheckNodePort servers: for each externalTrafficPolicy=Local Service that has one, an
//! HTTP server on that port tells load balancers whether this node has local endpoints and a
//! healthy proxy (200 with upstream's JSON) or not (503).
//!
//! Invariants: one server per port; a Service's local-endpoint count is updated in place (no
//! rebind); a server is stopped when its Service no longer needs it, and its port is closed
//! when `set` or `retain_only` returns. A port that cannot be bound
//! is logged and retried at the next sync that touches the Service.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::model::NamespacedName;
use crate::state::Shared;

struct Served {
    service: NamespacedName,
    port: u16,
    local: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Default)]
pub struct ServiceHealthServers {
    by_service: BTreeMap<NamespacedName, Served>,
    /// Whose health `serviceProxyHealthy` reports (none: healthy, for tests).
    shared: Option<Arc<Shared>>,
}

#[derive(Clone)]
struct HcState {
    service: NamespacedName,
    local: Arc<AtomicUsize>,
    shared: Option<Arc<Shared>>,
}

/// Upstream's answer: 200 when this node has local endpoints and the proxy is healthy (its
/// rules are not stale: the Node's draining aside, as upstream's `IsHealthy`), else 503.
async fn answer(State(s): State<HcState>) -> Response {
    let n = s.local.load(Ordering::Relaxed);
    let healthy = s.shared.as_ref().is_none_or(|sh| sh.health.status().0);
    let code = if n > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "service": {"namespace": s.service.namespace, "name": s.service.name},
        "localEndpoints": n,
        "serviceProxyHealthy": healthy,
    });
    (
        code,
        [
            (
                header::CONTENT_TYPE.as_str(),
                "application/json".to_string(),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS.as_str(),
                "nosniff".to_string(),
            ),
            ("X-Load-Balancing-Endpoint-Weight", n.to_string()),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Binds `[::]:port` (both families) or, where IPv6 is off, `0.0.0.0:port`.
async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
        Ok(l) => Ok(l),
        Err(_) => {
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).await
        }
    }
}

impl ServiceHealthServers {
    /// Answers report (and fail with) the health of `shared`'s proxy.
    pub fn report_health_of(&mut self, shared: Arc<Shared>) {
        self.shared = Some(shared);
    }

    /// Ports currently served.
    pub fn ports(&self) -> Vec<u16> {
        self.by_service.values().map(|s| s.port).collect()
    }

    /// Stops the servers of every Service not in `keep`.
    pub async fn retain_only<'a>(&mut self, keep: impl Iterator<Item = &'a NamespacedName>) {
        let keep: HashSet<&NamespacedName> = keep.collect();
        let gone: Vec<NamespacedName> = self
            .by_service
            .keys()
            .filter(|s| !keep.contains(s))
            .cloned()
            .collect();
        for svc in gone {
            if let Some(served) = self.by_service.remove(&svc) {
                stop(served).await;
            }
        }
    }

    /// Serves (port, local endpoint count) for `service`, or stops serving it with `None`.
    pub async fn set(&mut self, service: &NamespacedName, want: Option<(u16, usize)>) {
        let Some((port, local)) = want else {
            if let Some(old) = self.by_service.remove(service) {
                stop(old).await;
            }
            return;
        };
        if let Some(served) = self.by_service.get(service) {
            if served.port == port {
                served.local.store(local, Ordering::Relaxed);
                return;
            }
            if let Some(old) = self.by_service.remove(service) {
                stop(old).await;
            }
        }
        let listener = match bind(port).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(service = %service, port, error = %e, "cannot serve healthCheckNodePort");
                return;
            }
        };
        let local_count = Arc::new(AtomicUsize::new(local));
        let state = HcState {
            service: service.clone(),
            local: local_count.clone(),
            shared: self.shared.clone(),
        };
        let app = Router::new().fallback(answer).with_state(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(port, error = %e, "healthCheckNodePort server stopped");
            }
        });
        self.by_service.insert(
            service.clone(),
            Served {
                service: service.clone(),
                port,
                local: local_count,
                task,
            },
        );
    }
}

/// Stops a server and waits until its listening socket is closed, so that the port can be
/// bound again at once (by another Service that now owns it).
async fn stop(served: Served) {
    served.task.abort();
    let _ = served.task.await;
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for s in self.by_service.values() {
            s.task.abort();
        }
    }
}

impl std::fmt::Debug for ServiceHealthServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.by_service.values().map(|s| (&s.service, s.port)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(port: u16) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn free_port() -> u16 {
        crate::testing::low_port()
    }

    #[tokio::test]
    async fn a_local_service_answers_200_with_upstreams_json_and_503_without_local_endpoints() {
        let mut hc = ServiceHealthServers::default();
        let svc = NamespacedName::new("default", "web");
        let port = free_port();
        hc.set(&svc, Some((port, 2))).await;
        let ok = get(port).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let body: serde_json::Value =
            serde_json::from_str(ok.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"service": {"namespace": "default", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert!(
            ok.to_ascii_lowercase()
                .contains("x-load-balancing-endpoint-weight: 2"),
            "{ok}"
        );
        hc.set(&svc, Some((port, 0))).await;
        let down = get(port).await;
        assert!(down.starts_with("HTTP/1.1 503"), "{down}");
        assert!(down.contains(r#""localEndpoints":0"#), "{down}");
        hc.set(&svc, None).await;
        assert!(hc.ports().is_empty());
    }

    #[tokio::test]
    async fn an_unhealthy_proxy_fails_the_health_check_with_local_endpoints_and_a_draining_node_does_not()
     {
        let shared = Arc::new(Shared {
            health: crate::health::ProxyHealth::new(std::time::Duration::ZERO),
            ..Shared::default()
        });
        let mut hc = ServiceHealthServers::default();
        hc.report_health_of(shared.clone());
        let svc = NamespacedName::new("default", "web");
        let port = free_port();
        hc.set(&svc, Some((port, 2))).await;
        shared.health.node_seen(None, true); // deleted
        let draining = get(port).await;
        assert!(
            draining.starts_with("HTTP/1.1 200"),
            "as upstream's IsHealthy: {draining}"
        );
        shared.health.queued();
        let stale = get(port).await;
        assert!(stale.starts_with("HTTP/1.1 503"), "{stale}");
        assert!(stale.contains(r#""serviceProxyHealthy":false"#), "{stale}");
        assert!(stale.contains(r#""localEndpoints":2"#), "{stale}");
        shared.health.updated();
        assert!(get(port).await.starts_with("HTTP/1.1 200"));
    }
}
