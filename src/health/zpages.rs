//! Upstream's z-pages on the metrics address: `/configz` (the effective KubeProxyConfiguration
//! as JSON), `/flagz` (every flag and its value) and `/statusz` (start time, uptime, versions and
//! the metrics server's paths), in the formats of component-base's configz and apiserver's
//! flagz/statusz.
//!
//! `/flagz` and `/statusz` answer `text/plain` without an `Accept` header (or with `text/plain`,
//! `text/*`, `*/*`), and the structured `config.k8s.io` `Flagz`/`Statusz` object (v1beta1, or
//! v1alpha1 with upstream's deprecation warning) as JSON or YAML when asked with
//! `application/json;g=config.k8s.io;v=v1beta1;as=Flagz`; anything else is 406, as upstream.
//! Differences from upstream, on purpose: the component is named `kproxy`; the text uses one
//! fixed delimiter (`=` in flagz, `:` in statusz) where upstream picks one of `:`, `: `, `=`, ` `
//! at random to discourage scraping; statusz says `Rust version` where upstream says
//! `Go version` (structured: `goVersion` is empty, the compiler is in `rustVersion`) and prints
//! no emulation version (kproxy emulates no Kubernetes release's feature set).
//!
//! `/flagz` and `/statusz` are served only while their feature gates (ComponentFlagz,
//! ComponentStatusz; on by default since 1.36) are on, as upstream; `/configz` always.
//!
//! Invariants: the bodies are built from values fixed at start-up (`Zpages`), except the uptime;
//! handlers never touch the sync loop's state.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// The name the pages give the component (upstream: `kube-proxy`).
pub const COMPONENT: &str = "kproxy";

/// The paths this module serves.
pub const PATHS: [&str; 3] = ["/configz", "/flagz", "/statusz"];

const WARNING: &str = "Warning: This endpoint is not meant to be machine parseable, has no \
                       formatting compatibility guarantees and is for debugging purposes only.";
const GROUP: &str = "config.k8s.io";
const VERSIONS: [&str; 2] = ["v1beta1", "v1alpha1"];
const TEXT: &str = "text/plain; charset=utf-8";

/// What the pages show, fixed at start-up.
#[derive(Clone, Debug)]
pub struct Zpages {
    /// `/configz`'s body (`crate::config::configz_json`).
    pub configz: String,
    /// Every flag with its value, sorted (`Config::flagz`).
    pub flagz: Vec<(String, String)>,
    /// When the process started.
    pub started: SystemTime,
    /// `/flagz` and `/statusz` are served: the ComponentFlagz and ComponentStatusz feature
    /// gates, as upstream installs each page only when its gate is on.
    pub serve_flagz: bool,
    pub serve_statusz: bool,
}

impl Zpages {
    /// The paths served (`/configz` always).
    pub fn paths(&self) -> Vec<&'static str> {
        let on = [true, self.serve_flagz, self.serve_statusz];
        PATHS
            .iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// The pages, listing `paths` (the metrics server's, these included) in `/statusz`.
pub fn router(zpages: Zpages, paths: &[&str]) -> Router {
    let served = zpages.paths();
    let state = Arc::new(Page {
        zpages,
        paths: top_level(paths),
    });
    let mut router = Router::new().route(PATHS[0], get(configz));
    if served.contains(&PATHS[1]) {
        router = router.route(PATHS[1], get(flagz));
    }
    if served.contains(&PATHS[2]) {
        router = router.route(PATHS[2], get(statusz));
    }
    router.with_state(state)
}

struct Page {
    zpages: Zpages,
    paths: Vec<String>,
}

/// Upstream's `aggregatePaths`: each path's first segment, once, sorted.
fn top_level(paths: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = paths
        .iter()
        .filter_map(|p| p.split('/').nth(1).filter(|s| !s.is_empty()))
        .map(|s| format!("/{s}"))
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn configz(State(page): State<Arc<Page>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page.zpages.configz.clone(),
    )
        .into_response()
}

async fn flagz(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    let flags = &page.zpages.flagz;
    respond(
        &headers,
        "Flagz",
        || flagz_text(flags),
        |version| {
            let flags: serde_json::Map<String, serde_json::Value> =
                flags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let mut object = header_object("Flagz", version);
            if !flags.is_empty() {
                object["flags"] = serde_json::Value::Object(flags);
            }
            object
        },
    )
}

async fn statusz(State(page): State<Arc<Page>>, headers: HeaderMap) -> Response {
    let status = Status::now(&page);
    respond(
        &headers,
        "Statusz",
        || status.text(),
        |version| status.object(version),
    )
}

/// `/flagz` as text: the header, then `name=value` lines.
pub fn flagz_text(flags: &[(String, String)]) -> String {
    let mut out = format!("\n{COMPONENT} flagz\n{WARNING}\n");
    for (name, value) in flags {
        out.push_str(&format!("{name}={value}\n"));
    }
    out
}

/// The facts `/statusz` shows.
struct Status<'a> {
    started: SystemTime,
    up: Duration,
    paths: &'a [String],
}

impl Status<'_> {
    fn now(page: &Page) -> Status<'_> {
        // Whole seconds, as upstream reads the process start time.
        let secs = page
            .zpages
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        Status {
            started,
            up: SystemTime::now()
                .duration_since(started)
                .unwrap_or_default(),
            paths: &page.paths,
        }
    }

    fn text(&self) -> String {
        let up = self.up.as_secs();
        let started = jiff::Timestamp::try_from(self.started)
            .map(|t| {
                t.to_zoned(jiff::tz::TimeZone::system())
                    .strftime("%a %b %e %H:%M:%S %Z %Y")
                    .to_string()
            })
            .unwrap_or_default();
        // Upstream's layout, its empty emulation-version line included.
        format!(
            "\n{COMPONENT} statusz\n{WARNING}\n\nStarted: {started}\n\
             Up: {} hr {:02} min {:02} sec\nRust version: {}\nBinary version: {}\n\nPaths: {}\n",
            up / 3600,
            up / 60 % 60,
            up % 60,
            env!("KPROXY_RUSTC_VERSION"),
            env!("CARGO_PKG_VERSION"),
            self.paths.join(" "),
        )
    }

    fn object(&self, version: &str) -> serde_json::Value {
        let mut object = header_object("Statusz", version);
        let started = jiff::Timestamp::try_from(self.started)
            .map(|t| t.to_string())
            .unwrap_or_default();
        object["startTime"] = json!(started);
        object["uptimeSeconds"] = json!(self.up.as_secs());
        object["goVersion"] = json!("");
        object["rustVersion"] = json!(env!("KPROXY_RUSTC_VERSION"));
        object["binaryVersion"] = json!(env!("CARGO_PKG_VERSION"));
        object["paths"] = json!(self.paths);
        object
    }
}

/// `kind`, `apiVersion` and `metadata.name` of a structured page.
fn header_object(kind: &str, version: &str) -> serde_json::Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{GROUP}/{version}"),
        "metadata": { "name": COMPONENT },
    })
}

/// A page in the form `Accept` asks for.
fn respond(
    headers: &HeaderMap,
    kind: &str,
    text: impl FnOnce() -> String,
    object: impl FnOnce(&str) -> serde_json::Value,
) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (format, version) = match negotiate(accept, kind) {
        Some(Wanted::Text) => return ([(header::CONTENT_TYPE, TEXT)], text()).into_response(),
        Some(Wanted::Structured { format, version }) => (format, version),
        None => return not_acceptable(kind),
    };
    let object = object(version);
    let (content_type, body) = match format {
        Format::Json => ("application/json", object.to_string()),
        Format::Yaml => (
            "application/yaml",
            serde_yaml_ng::to_string(&object).unwrap_or_default(),
        ),
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    if version == "v1alpha1" {
        let page = kind.to_lowercase();
        let warning = format!(
            "299 - \"This version of the {page} endpoint is deprecated. \
             Please use a newer version.\""
        );
        if let Ok(value) = HeaderValue::from_str(&warning) {
            response.headers_mut().insert(header::WARNING, value);
        }
    }
    response
}

fn not_acceptable(kind: &str) -> Response {
    let mut accepted: Vec<String> = ["application/json", "application/yaml"]
        .iter()
        .flat_map(|t| {
            VERSIONS
                .iter()
                .map(move |v| format!("{t};g={GROUP};v={v};as={kind}"))
        })
        .collect();
    accepted.push("text/plain".to_owned());
    let message = format!(
        "only the following media types are accepted: {}\n",
        accepted.join(", ")
    );
    (
        StatusCode::NOT_ACCEPTABLE,
        [(header::CONTENT_TYPE, TEXT)],
        message,
    )
        .into_response()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Text,
    Structured {
        format: Format,
        version: &'static str,
    },
}

/// The form an `Accept` header asks for, as upstream's negotiation for these pages decides:
/// nothing or a text type gives text; a structured form needs `as=<kind>`, `g=config.k8s.io` and
/// a known `v`; clauses are tried by decreasing `q`, in order. `None`: 406.
fn negotiate(accept: &str, kind: &str) -> Option<Wanted> {
    if accept.trim().is_empty() {
        return Some(Wanted::Text);
    }
    let mut clauses: Vec<(f32, &str)> = accept
        .split(',')
        .map(|clause| {
            let q = params(clause)
                .find(|(k, _)| *k == "q")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(1.0);
            (q, clause)
        })
        .filter(|(q, _)| *q > 0.0)
        .collect();
    // Stable: equal weights keep the client's order.
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0));
    clauses
        .into_iter()
        .find_map(|(_, clause)| wanted(clause, kind))
}

/// The `key=value` parameters of one `Accept` clause.
fn params(clause: &str) -> impl Iterator<Item = (&str, &str)> {
    clause.split(';').skip(1).filter_map(|p| {
        let (k, v) = p.split_once('=')?;
        Some((k.trim(), v.trim().trim_matches('"')))
    })
}

fn wanted(clause: &str, kind: &str) -> Option<Wanted> {
    let media = clause.split(';').next()?.trim().to_ascii_lowercase();
    let (main, sub) = media.split_once('/')?;
    let param = |name: &str| params(clause).find(|(k, _)| *k == name).map(|(_, v)| v);
    let Some(as_kind) = param("as") else {
        // Without a conversion only the text form is acceptable.
        return (matches!(main, "text" | "*") && matches!(sub, "plain" | "*"))
            .then_some(Wanted::Text);
    };
    let version = VERSIONS
        .into_iter()
        .find(|v| param("v") == Some(*v) && param("g") == Some(GROUP) && as_kind == kind)?;
    let format = match (main, sub) {
        ("application" | "*", "json" | "*") => Format::Json,
        ("application", "yaml") => Format::Yaml,
        _ => return None,
    };
    Some(Wanted::Structured { format, version })
}

#[cfg(test)]
#[path = "zpages_tests.rs"]
mod tests;
