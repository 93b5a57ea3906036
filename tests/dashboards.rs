//! deploy/grafana/kproxy.json and deploy/prometheus/kproxy-rules.yaml against kproxy itself:
//! every series and label their PromQL reads is one a running kproxy exports (root, in a
//! throwaway network namespace, on the bundled example manifests); the dashboard is Grafana
//! JSON whose every panel reads the `${datasource}` variable and which has the panels operators
//! need; the rules are Prometheus rule groups that `promtool check rules` accepts and whose
//! alerts fire as `promtool test rules` expects (tests/fixtures/prometheus/). Without promtool
//! those two skip, except under CI=true where that fails; the Rust check of the rule groups
//! runs everywhere.

mod support;

#[path = "dashboards/promql.rs"]
mod promql;
#[path = "dashboards/scrape.rs"]
mod scrape;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::Kproxy;
use support::netns::{self, Netns};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
const DASHBOARD: &str = "deploy/grafana/kproxy.json";
const RULES: &str = "deploy/prometheus/kproxy-rules.yaml";
const RULES_TESTS: &str = "tests/fixtures/prometheus/kproxy-rules-test.yaml";

/// What the issue asks the dashboard to show, by the series that show it.
const DASHBOARD_MUST_READ: &[&str] = &[
    "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
    "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket",
    "kubeproxy_network_programming_duration_seconds_bucket",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
    "kubeproxy_sync_proxy_rules_service_changes_pending",
    "kproxy_sync_failures_total",
    "kproxy_rules_drift_repairs_total",
    "kproxy_quarantined_service_ports",
    "kubeproxy_conntrack_reconciler_deleted_entries_total",
    "kproxy_rejected_objects_total",
    "process_resident_memory_bytes",
];

/// The alerts the issue asks for, and the others the file has.
const ALERTS: &[&str] = &[
    "KproxyDown",
    "KproxyHealthzFailing",
    "KproxySyncStalled",
    "KproxySyncFailing",
    "KproxyNetworkProgrammingSlow",
    "KproxyDriftRepairsClimbing",
    "KproxyServicePortsQuarantined",
];

fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn rules() -> Value {
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(RULES)).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    serde_json::to_value(yaml).expect("YAML as JSON")
}

/// Every panel, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (where, what it reads) of every expression of the dashboard: panel targets and variable
/// queries.
fn dashboard_reads(dashboard: &Value) -> Vec<(String, Result<promql::Used, String>)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            let at = format!("panel {:?} target {}: {expr}", p["title"], t["refId"]);
            out.push((at, promql::used(expr)));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        let at = format!("variable {}: {q}", v["name"]);
        out.push((at, promql::template_query(q)));
    }
    out
}

/// (alert, what its expression reads) of every rule.
fn rules_reads(rules: &Value) -> Vec<(String, Result<promql::Used, String>)> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .map(|r| {
            let expr = r["expr"].as_str().unwrap_or_default();
            let at = format!("rule {}: {expr}", r["alert"]);
            (at, promql::used(expr))
        })
        .collect()
}

/// What each expression reads that `scrape` lacks, one line per expression; empty when all
/// is there.
fn lacking(
    reads: &[(String, Result<promql::Used, String>)],
    scrape: &scrape::Exposition,
) -> Vec<String> {
    reads
        .iter()
        .filter_map(|(at, used)| match used {
            Err(e) => Some(format!("{at}: unreadable: {e}")),
            Ok(u) => {
                let m = scrape::missing(u, scrape);
                (!m.is_empty()).then(|| format!("{at}: no {}", m.join(", no ")))
            }
        })
        .collect()
}

/// Skips (false) when `tool` is missing, except under CI=true where that fails.
fn tool_or_skip(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {test} cannot run: no {tool} (./test.sh installs Debian's prometheus package)"
    );
    eprintln!("skipped {test}: no {tool}");
    false
}

#[test]
fn every_expression_of_the_dashboard_and_the_rules_reads_and_a_panel_naming_a_missing_metric_is_caught()
 {
    let reads: Vec<_> = dashboard_reads(&dashboard())
        .into_iter()
        .chain(rules_reads(&rules()))
        .collect();
    assert!(reads.len() > 20, "{reads:#?}");
    for (at, used) in &reads {
        let used = used.as_ref().unwrap_or_else(|e| panic!("{at}: {e}"));
        assert!(!used.metrics.is_empty(), "{at} reads no series");
    }
    // The same check as against kproxy, on a scrape that lacks one series the dashboard reads.
    let mut text = String::new();
    for (_, used) in &reads {
        for m in &used.as_ref().unwrap().metrics {
            text.push_str(&format!("{m}{{ip_family=\"IPv4\",le=\"1\",reason=\"parse\",code=\"200\",traffic_policy=\"internal\"}} 1\n"));
        }
    }
    let all = scrape::parse(&text).unwrap();
    assert_eq!(lacking(&reads, &all), Vec::<String>::new());
    let mut without = all.clone();
    without.remove("kproxy_quarantined_service_ports");
    let lack = lacking(&reads, &without);
    assert!(
        !lack.is_empty()
            && lack
                .iter()
                .all(|l| l.contains("no series kproxy_quarantined_service_ports")),
        "{lack:#?}"
    );
}

#[test]
fn the_dashboard_is_grafana_json_reading_the_datasource_variable_with_the_panels_operators_need() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "{}",
        d["schemaVersion"]
    );
    assert_eq!(d["uid"], "kproxy");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    let ds = var("datasource").expect("a datasource variable");
    assert_eq!(
        (&ds["type"], &ds["query"]),
        (&Value::from("datasource"), &Value::from("prometheus"))
    );
    assert!(
        var("instance").is_some_and(|v| v["type"] == "query"),
        "an instance variable"
    );
    let all = panels(&d);
    let ids: BTreeSet<u64> = all.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), all.len(), "every panel has its own id");
    for p in &all {
        let g = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(g[k].is_u64(), "panel {} gridPos.{k}", p["title"]);
        }
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(
            p["description"].as_str().is_some_and(|t| !t.is_empty()),
            "{} has a description",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in std::iter::once(*p).chain(targets) {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert_eq!(t["datasource"]["type"], "prometheus", "{}", p["title"]);
        }
        let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
        assert_eq!(refs.len(), targets.len(), "{}: one refId each", p["title"]);
        // Every expression selects by the dashboard's variables.
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("$job") && expr.contains("$instance"),
                "{expr}"
            );
        }
    }
    let read: BTreeSet<String> = dashboard_reads(&d)
        .into_iter()
        .flat_map(|(_, u)| u.unwrap().metrics)
        .collect();
    let lacking: Vec<&&str> = DASHBOARD_MUST_READ
        .iter()
        .filter(|m| !read.contains(**m))
        .collect();
    assert!(lacking.is_empty(), "no panel reads {lacking:?}");
}

#[test]
fn the_rules_are_prometheus_rule_groups_each_alert_with_a_severity_summary_and_description() {
    let r = rules();
    let groups = r["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    let mut names = Vec::new();
    for g in groups {
        assert!(g["name"].as_str().is_some_and(|n| !n.is_empty()), "{g}");
        let group_keys: BTreeSet<&str> =
            g.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(
            group_keys.is_subset(&BTreeSet::from([
                "name",
                "interval",
                "limit",
                "rules",
                "query_offset"
            ])),
            "{group_keys:?}"
        );
        for rule in g["rules"].as_array().expect("rules") {
            let keys: BTreeSet<&str> = rule
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert!(
                keys.is_subset(&BTreeSet::from([
                    "alert",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations"
                ])),
                "{keys:?}"
            );
            let name = rule["alert"].as_str().expect("alert rules only");
            names.push(name);
            assert!(
                rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{name}"
            );
            let duration = rule["for"].as_str().expect("a `for`");
            assert!(
                duration
                    .strip_suffix(['s', 'm', 'h'])
                    .is_some_and(|n| n.parse::<u32>().is_ok()),
                "{name}: for {duration}"
            );
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{name}: {severity:?}"
            );
            for a in ["summary", "description"] {
                assert!(
                    rule["annotations"][a]
                        .as_str()
                        .is_some_and(|t| !t.is_empty()),
                    "{name}: {a}"
                );
            }
        }
    }
    assert_eq!(names, ALERTS);
}

#[test]
fn promtool_accepts_the_rules_and_every_alert_fires_as_its_unit_tests_expect() {
    if !tool_or_skip("promtool", "promtool_accepts_the_rules") {
        return;
    }
    for args in [["check", "rules", RULES], ["test", "rules", RULES_TESTS]] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(ROOT)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test.
    let tests = read(RULES_TESTS);
    for alert in ALERTS {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no unit test fires {alert}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_and_label_the_dashboard_and_the_rules_read_is_one_a_running_kproxy_exports() {
    if !netns::can_run("every_series_and_label_the_dashboard_and_the_rules_read") {
        return;
    }
    let ns = Netns::new("dash");
    let mut kproxy = Kproxy::spawn(&ns, &["--manifests", EXAMPLE]);
    kproxy.until_synced().await;
    // The kubelet's probes (deploy/daemonset.yaml): the answer counters exist once asked.
    for probe in ["/healthz", "/livez"] {
        let (code, body) = kproxy.get(probe).await.unwrap();
        assert_eq!(code, 200, "{probe}: {body}");
    }
    let text = kproxy.metrics_text().await.unwrap();
    let exported = scrape::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    let reads: Vec<_> = dashboard_reads(&dashboard())
        .into_iter()
        .chain(rules_reads(&rules()))
        .collect();
    let lack = lacking(&reads, &exported);
    assert!(
        lack.is_empty(),
        "read but not exported by kproxy:\n{}\n\nexported: {:#?}",
        lack.join("\n"),
        exported.keys().collect::<Vec<_>>()
    );
    println!("{} expressions, every series exported", reads.len());
    assert!(kproxy.stop().success());
}
