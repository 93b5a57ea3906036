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
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::json;

use crate::backends::ProxyMode;
use crate::metrics::Metrics;
use crate::model::{IpFamily, NamespacedName, ServicePortName, validate};
use crate::state::{PlansSnapshot, Shared};
use crate::sync::quarantine::Quarantined;

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

/// `/debug/state`'s query: `?service=namespace/name` keeps that Service's ports only.
#[derive(serde::Deserialize)]
struct StateQuery {
    service: Option<String>,
}

/// An error answer: one line of JSON, `{"error": …}`.
fn json_error((code, error): (StatusCode, String)) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": error }).to_string(),
    )
        .into_response()
}

/// The plans `/debug/state` shows and the Service they are limited to (`None`: every service
/// port's), copied out of the plans lock; or the code and message for a malformed query (400)
/// or a Service kproxy plans nothing for (404).
fn state_plans(
    shared: &Shared,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> Result<(PlansSnapshot, Option<NamespacedName>), (StatusCode, String)> {
    let Query(query) = query.map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()))?;
    let Some(text) = query.service else {
        return Ok((shared.plans_snapshot(), None));
    };
    let service = validate::service_key(&text).map_err(|r| {
        (
            StatusCode::BAD_REQUEST,
            format!("service={text:?}: {}", r.detail),
        )
    })?;
    let plans = shared.service_plans(&service);
    if plans.is_empty() {
        let why = format!(
            "no Service {service} in kproxy's plans (unknown, or one kproxy does not proxy: ExternalName, headless, another proxy's)"
        );
        return Err((StatusCode::NOT_FOUND, why));
    }
    Ok((plans, Some(service)))
}

/// The model as kproxy sees it: node facts, every service port with its endpoints and plan
/// (with `?service=namespace/name`, that Service's ports and quarantined ports only). Everything
/// is copied out of its lock first and serialised after.
async fn debug_state(
    State(s): State<AppState>,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> Response {
    let (plans, service) = match state_plans(&s.shared, query) {
        Ok(found) => found,
        Err(error) => return json_error(error),
    };
    let of_service = |name: &ServicePortName| service.as_ref().is_none_or(|s| name.service == *s);
    let quarantined: Vec<(ServicePortName, IpFamily, Quarantined)> = s
        .shared
        .quarantined
        .read()
        .expect("quarantine lock")
        .iter()
        .filter(|((name, _), _)| of_service(name))
        .map(|((name, family), why)| (name.clone(), *family, why.clone()))
        .collect();
    let node = s.shared.node.read().expect("node lock").clone();
    let mut body = {
        let ports: serde_json::Map<String, serde_json::Value> = plans
            .iter()
            .map(|(name, p)| {
                (
                    name.to_string(),
                    serde_json::to_value(&**p).unwrap_or_default(),
                )
            })
            .collect();
        let quarantined: Vec<serde_json::Value> = quarantined
            .iter()
            .map(|(name, family, why)| {
                json!({
                    "servicePort": name.to_string(),
                    "family": family.as_str(),
                    "error": why.error,
                    "file": why.origin,
                })
            })
            .collect();
        json!({
            "node": &node,
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

    /// `/debug/state` answering `uri` (its query parsed as axum parses it): code and JSON.
    async fn state_answer(shared: Arc<Shared>, uri: &str) -> (u16, serde_json::Value) {
        let state = AppState {
            shared,
            metrics: Arc::new(Metrics::new()),
            mode: ProxyMode::Nftables,
        };
        let query = Query::try_from_uri(&uri.parse().unwrap());
        let r = debug_state(State(state), query).await;
        let code = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        (code, serde_json::from_str(text).unwrap())
    }

    #[tokio::test]
    async fn debug_state_of_one_service_is_its_ports_and_a_bad_or_unknown_service_is_a_json_error()
    {
        let mut plans = crate::testing::cluster_ips();
        plans.extend(crate::testing::external());
        let shared = Arc::new(Shared {
            plans: std::sync::RwLock::new(plans),
            ..Shared::default()
        });
        let sticky_a = crate::testing::name("sticky", "a", crate::model::Protocol::Tcp);
        shared.quarantined.write().unwrap().insert(
            (sticky_a, IpFamily::V4),
            Quarantined {
                error: "refused".into(),
                origin: None,
            },
        );
        let ports = |body: &serde_json::Value| -> Vec<String> {
            body["servicePorts"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        let (code, all) = state_answer(shared.clone(), "/debug/state").await;
        let every = shared.plans.read().unwrap().len();
        assert_eq!((code, ports(&all).len()), (200, every), "{all}");
        assert_eq!(all["quarantined"].as_array().unwrap().len(), 1);
        let (code, sticky) =
            state_answer(shared.clone(), "/debug/state?service=default%2Fsticky").await;
        assert_eq!(code, 200, "{sticky}");
        assert_eq!(
            ports(&sticky),
            ["default/sticky:a/TCP", "default/sticky:b/TCP"]
        );
        assert_eq!(
            sticky["quarantined"][0]["servicePort"],
            "default/sticky:a/TCP"
        );
        assert_eq!(
            sticky["servicePorts"],
            json!({
                "default/sticky:a/TCP": all["servicePorts"]["default/sticky:a/TCP"],
                "default/sticky:b/TCP": all["servicePorts"]["default/sticky:b/TCP"],
            }),
            "the same plans as the whole answer's"
        );
        assert!(sticky["node"].is_object() && sticky["syncs"].is_object());
        let (code, web) = state_answer(shared.clone(), "/debug/state?service=default/web").await;
        assert_eq!(
            (code, ports(&web)),
            (200, vec!["default/web:http/TCP".to_string()])
        );
        assert_eq!(
            web["quarantined"],
            json!([]),
            "sticky's quarantine is not web's"
        );
        let (code, unknown) =
            state_answer(shared.clone(), "/debug/state?service=default/nope").await;
        assert_eq!(code, 404, "{unknown}");
        assert!(
            unknown["error"].as_str().unwrap().contains("default/nope"),
            "{unknown}"
        );
        for bad in [
            "?service=web",
            "?service=default/Web",
            "?service=a/b&service=c/d",
        ] {
            let (code, answer) = state_answer(shared.clone(), &format!("/debug/state{bad}")).await;
            assert_eq!(code, 400, "{bad}: {answer}");
            assert!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{answer}"
            );
        }
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
