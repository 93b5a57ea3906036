//! HTTP endpoints: `/healthz` and `/livez` on --healthz-bind-address (upstream's semantics), and
//! `/metrics`, `/debug/state`, `/proxyMode`, `/healthz` and the z-pages (`/configz`, `/flagz`,
//! `/statusz`: health/zpages.rs) on --metrics-bind-address.
//!
//! Invariants: handlers only read `Shared`; they never block on the sync loop for longer than a
//! lock held during one plan update. Unhealthy means an update was queued and not applied within
//! 2 × sync-period, as upstream.

pub mod proxy;
pub mod service;
pub mod zpages;

pub use proxy::ProxyHealth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::json;

use crate::backends::ProxyMode;
use crate::metrics::Metrics;
use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn rfc3339(t: Option<SystemTime>) -> String {
    t.and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    mode: ProxyMode,
}

/// Upstream's `/healthz` (with the Node's eligibility) and `/livez` (without it): 503 when
/// unhealthy. `lastUpdated` is the last successful sync (empty before the first), where
/// upstream says "now" whenever healthy.
fn health_response(
    state: &AppState,
    counter: &prometheus::IntCounterVec,
    with_node: bool,
) -> Response {
    let (proxy_healthy, last) = state.shared.health.status();
    let eligible = state.shared.health.node_eligible();
    let healthy = proxy_healthy && (eligible || !with_node);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    counter.with_label_values(&[code.as_str()]).inc();
    let mut body = json!({
        "lastUpdated": rfc3339(last),
        "currentTime": rfc3339(Some(SystemTime::now())),
    });
    if with_node {
        body["nodeEligible"] = json!(eligible);
    }
    (
        code,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    health_response(&s, &s.metrics.healthz_total, true)
}

async fn livez(State(s): State<AppState>) -> Response {
    health_response(&s, &s.metrics.livez_total, false)
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.metrics.render(),
    )
        .into_response()
}

async fn proxy_mode(State(s): State<AppState>) -> String {
    s.mode.to_string()
}

/// The model as kproxy sees it: node facts, every service port with its endpoints and plan.
async fn debug_state(State(s): State<AppState>) -> Response {
    let mut body = {
        let plans = s.shared.plans.read().expect("plans lock");
        let node = s.shared.node.read().expect("node lock");
        let ports: serde_json::Map<String, serde_json::Value> = plans
            .iter()
            .map(|(name, p)| {
                (
                    name.to_string(),
                    serde_json::to_value(&**p).unwrap_or_default(),
                )
            })
            .collect();
        let quarantined: Vec<serde_json::Value> = s
            .shared
            .quarantined
            .read()
            .expect("quarantine lock")
            .iter()
            .map(|((name, family), why)| {
                json!({
                    "servicePort": name.to_string(),
                    "family": family.as_str(),
                    "error": why.error,
                    "file": why.origin,
                })
            })
            .collect();
        json!({
            "node": &*node,
            "servicePorts": ports,
            "quarantined": quarantined,
            "syncs": {
                "full": s.shared.full_syncs.load(Ordering::Relaxed),
                "partial": s.shared.partial_syncs.load(Ordering::Relaxed),
            },
        })
    };
    body["node"]["found"] = json!(s.shared.node_presence.found());
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HealthError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })
}

/// How often an address that could not be bound is tried again (upstream's 5 s).
pub const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `app` on `addr`, binding it now. When that fails: with `hard_fail`, the error (kproxy
/// exits); otherwise one error line, and the address is tried again every `BIND_RETRY` in the
/// background until it binds (one info line then), as upstream's `wait.Until` loop.
async fn serve_on(
    what: &'static str,
    addr: SocketAddr,
    app: Router,
    hard_fail: bool,
) -> Result<(), HealthError> {
    let listener = match bind(addr).await {
        Ok(l) => Some(l),
        Err(e) if hard_fail => return Err(e),
        Err(e) => {
            tracing::error!(error = %e, server = what,
                "cannot bind; retrying every 5 s (--bind-address-hard-fail exits instead)");
            None
        }
    };
    tokio::spawn(async move {
        let listener = match listener {
            Some(l) => l,
            None => loop {
                tokio::time::sleep(BIND_RETRY).await;
                if let Ok(l) = bind(addr).await {
                    tracing::info!(server = what, %addr, "bound at last; serving");
                    break l;
                }
            },
        };
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, server = what, "server stopped");
        }
    });
    Ok(())
}

/// Serves both servers in the background; an address that cannot be bound is retried, or with
/// `hard_fail` ends kproxy at start-up.
pub async fn serve(
    metrics_addr: SocketAddr,
    healthz_addr: SocketAddr,
    hard_fail: bool,
    shared: Arc<Shared>,
    metrics_reg: Arc<Metrics>,
    mode: ProxyMode,
    zpages: zpages::Zpages,
) -> Result<(), HealthError> {
    let state = AppState {
        shared,
        metrics: metrics_reg,
        mode,
    };
    // One table, so /statusz lists exactly what is served.
    let routes: [(&str, MethodRouter<AppState>); 4] = [
        ("/metrics", get(metrics)),
        ("/debug/state", get(debug_state)),
        ("/proxyMode", get(proxy_mode)),
        ("/healthz", get(healthz)),
    ];
    let paths: Vec<&str> = routes
        .iter()
        .map(|(path, _)| *path)
        .chain(zpages.paths())
        .collect();
    let metrics_app = routes
        .into_iter()
        .fold(Router::new(), |app, (path, handler)| {
            app.route(path, handler)
        })
        .with_state(state.clone())
        .merge(zpages::router(zpages, &paths));
    let health_app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(state);
    serve_on("metrics", metrics_addr, metrics_app, hard_fail).await?;
    serve_on("healthz", healthz_addr, health_app, hard_fail).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn answer(state: &AppState, with_node: bool) -> (u16, serde_json::Value) {
        let counter = &state.metrics.healthz_total;
        let r = health_response(state, counter, with_node);
        let code = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (code, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_draining_node_fails_healthz_with_node_eligible_false_and_livez_ignores_it() {
        let state = AppState {
            shared: Arc::new(Shared::default()),
            metrics: Arc::new(Metrics::new()),
            mode: ProxyMode::Nftables,
        };
        let (code, body) = answer(&state, true).await;
        assert_eq!((code, &body["nodeEligible"]), (200, &json!(true)));
        state.shared.health.node_seen(None, true); // deleted
        let (code, body) = answer(&state, true).await;
        assert_eq!((code, &body["nodeEligible"]), (503, &json!(false)));
        let (code, body) = answer(&state, false).await;
        assert_eq!(code, 200, "/livez ignores the node");
        assert!(
            body.get("nodeEligible").is_none(),
            "and says nothing of it: {body}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_fails_only_when_a_queued_update_waits_longer_than_the_timeout() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        assert!(h.status().0, "nothing queued is healthy");
        h.queued();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(h.status().0);
        h.queued(); // a later update does not reset the oldest one
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!h.status().0);
        h.updated();
        assert!(h.status().0);
        assert!(h.status().1.is_some());
    }
}
