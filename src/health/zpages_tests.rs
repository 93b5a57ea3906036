//! Tests of the z-pages: content negotiation as upstream's, and the text and structured bodies.

use axum::http::HeaderMap;

use super::*;

fn text(s: &str) -> Option<Wanted> {
    negotiate(s, "Flagz")
}

fn structured(format: Format, version: &'static str) -> Option<Wanted> {
    Some(Wanted::Structured { format, version })
}

#[test]
fn accept_headers_are_negotiated_as_upstreams_flagz_and_statusz_do() {
    let json = "application/json;v=v1beta1;g=config.k8s.io;as=Flagz";
    for (accept, expected) in [
        ("", Some(Wanted::Text)),
        ("   ", Some(Wanted::Text)),
        ("text/plain", Some(Wanted::Text)),
        ("text/*", Some(Wanted::Text)),
        ("*/*", Some(Wanted::Text)),
        (json, structured(Format::Json, "v1beta1")),
        (
            "application/json;g=config.k8s.io;v=v1alpha1;as=Flagz",
            structured(Format::Json, "v1alpha1"),
        ),
        (
            "application/yaml;as=Flagz;g=config.k8s.io;v=v1beta1",
            structured(Format::Yaml, "v1beta1"),
        ),
        // application/json without the conversion, or with a wrong part of it: 406.
        ("application/json", None),
        ("application/json;v=v1beta1;g=config.k8s.io", None),
        ("application/json;v=v1;g=config.k8s.io;as=Flagz", None),
        ("application/json;v=v1beta1;g=meta.k8s.io;as=Flagz", None),
        (
            "application/json;v=v1beta1;g=config.k8s.io;as=Statusz",
            None,
        ),
        ("application/xml", None),
        // A clause that cannot be served falls through to the next one.
        (
            "application/json;v=foo;g=config.k8s.io;as=Flagz,*/*",
            Some(Wanted::Text),
        ),
        // Weights order the clauses; q=0 refuses.
        (
            &format!("text/plain;q=0.5, {json}"),
            structured(Format::Json, "v1beta1"),
        ),
        ("text/plain;q=0", None),
    ] {
        assert_eq!(text(accept), expected, "{accept:?}");
    }
}

fn headers(accept: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, accept.parse().unwrap());
    h
}

async fn body(response: Response) -> (u16, String, String) {
    let code = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        code,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

fn page() -> Arc<Page> {
    Arc::new(Page {
        zpages: Zpages {
            configz: "{}".to_owned(),
            flagz: vec![
                ("masquerade-all".to_owned(), "true".to_owned()),
                ("proxy-mode".to_owned(), "iptables".to_owned()),
            ],
            started: SystemTime::now() - Duration::from_secs(3725),
            serve_flagz: true,
            serve_statusz: true,
        },
        paths: top_level(&[
            "/metrics",
            "/debug/state",
            "/proxyMode",
            "/healthz",
            "/configz",
            "/flagz",
            "/statusz",
        ]),
    })
}

#[tokio::test]
async fn flagz_text_is_upstreams_header_then_one_name_value_line_per_flag() {
    let (code, content_type, text) = body(flagz(State(page()), HeaderMap::new()).await).await;
    assert_eq!((code, content_type.as_str()), (200, TEXT));
    assert_eq!(
        text,
        format!("\nkproxy flagz\n{WARNING}\nmasquerade-all=true\nproxy-mode=iptables\n")
    );
}

#[tokio::test]
async fn flagz_structured_is_a_flagz_object_and_v1alpha1_carries_the_deprecation_warning() {
    let accept = "application/json;v=v1alpha1;g=config.k8s.io;as=Flagz";
    let response = flagz(State(page()), headers(accept)).await;
    let warning = response.headers().get(header::WARNING).cloned();
    let (code, content_type, text) = body(response).await;
    assert_eq!((code, content_type.as_str()), (200, "application/json"));
    let object: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        object,
        json!({
            "kind": "Flagz",
            "apiVersion": "config.k8s.io/v1alpha1",
            "metadata": {"name": "kproxy"},
            "flags": {"masquerade-all": "true", "proxy-mode": "iptables"},
        })
    );
    let warning = warning.expect("a Warning header");
    assert!(
        warning.to_str().unwrap().starts_with("299 - "),
        "{warning:?}"
    );
    let beta = flagz(
        State(page()),
        headers("application/json;v=v1beta1;g=config.k8s.io;as=Flagz"),
    )
    .await;
    assert!(beta.headers().get(header::WARNING).is_none());
}

#[tokio::test]
async fn an_unacceptable_type_is_406_naming_what_is_accepted() {
    let (code, _, text) = body(statusz(State(page()), headers("application/json")).await).await;
    assert_eq!(code, 406);
    assert!(
        text.contains("application/json;g=config.k8s.io;v=v1beta1;as=Statusz"),
        "{text}"
    );
}

#[tokio::test]
async fn statusz_text_has_upstreams_lines_with_the_uptime_versions_and_top_level_paths() {
    let (code, _, text) = body(statusz(State(page()), HeaderMap::new()).await).await;
    assert_eq!(code, 200);
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(&lines[..4], ["", "kproxy statusz", WARNING, ""], "{text}");
    assert!(lines[4].starts_with("Started: "), "{text}");
    // Up 1 h 2 min 5 s, give or take the second the test takes.
    assert!(lines[5].starts_with("Up: 1 hr 02 min 0"), "{text}");
    assert!(lines[6].starts_with("Rust version: rustc "), "{text}");
    assert_eq!(
        lines[7],
        format!("Binary version: {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(lines[8], "", "upstream's empty emulation-version line");
    assert_eq!(
        lines[9],
        "Paths: /configz /debug /flagz /healthz /metrics /proxyMode /statusz"
    );
    assert_eq!(&lines[10..], [""]);
}

#[tokio::test]
async fn statusz_structured_is_a_statusz_object() {
    let accept = "application/yaml;v=v1beta1;g=config.k8s.io;as=Statusz";
    let (code, content_type, text) = body(statusz(State(page()), headers(accept)).await).await;
    assert_eq!((code, content_type.as_str()), (200, "application/yaml"));
    let object: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(object["kind"], "Statusz");
    assert_eq!(object["apiVersion"], "config.k8s.io/v1beta1");
    assert_eq!(object["binaryVersion"], env!("CARGO_PKG_VERSION"));
    let up = object["uptimeSeconds"].as_u64().unwrap();
    assert!((3725..3735).contains(&up), "{up}");
    assert!(
        object["startTime"].as_str().unwrap().ends_with('Z'),
        "{object}"
    );
    assert_eq!(object["paths"].as_array().unwrap().len(), 7);
}

#[test]
fn top_level_paths_are_first_segments_once_sorted() {
    assert_eq!(
        top_level(&["/metrics", "/metrics/slis", "/debug/state", "/", "/a/b/c"]),
        ["/a", "/debug", "/metrics"]
    );
}
