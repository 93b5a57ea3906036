//! Real KubeProxyConfiguration files through kproxy's parser: kubeadm's kube-proxy ConfigMaps
//! (v1.33 to v1.37) and the files of upstream's own config tests, kept in tests/fixtures/config/,
//! each opening with its source.
//!
//! Invariants checked: every file loads without a warning, but for the warnings a case lists
//! with the reason upstream warns too; the effective configuration (what kproxy acts on, in
//! `/configz`'s upstream shape) is kproxy's default one for the same mode and command line with
//! exactly the case's fields changed, nothing else; files upstream refuses are refused. A check
//! that fails until work on another branch lands is in `PENDING`, which must hold exactly the
//! checks that fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use kproxy::config::{self, Config, Parsed};
use serde_json::Value;

#[path = "config_fixtures/cases.rs"]
mod cases;

use cases::{Case, KUBEADM_ARGS, PENDING, REFUSED, kubeadm_cases, upstream_cases};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/config");

/// A failed check: (fixture, check, what happened).
type Failure = (String, String, String);

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

/// `config::parse` of a command line; the file name is `args[0]`.
fn parse(args: &[String]) -> Result<Config, String> {
    match config::parse(std::iter::once("kproxy".to_owned()).chain(args.iter().cloned())) {
        Ok(Parsed::Run(cfg)) => Ok(cfg),
        Ok(other) => Err(format!("not a run: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The `config.conf` of a kubeadm ConfigMap fixture, in a file of its own.
fn config_conf(name: &str) -> tempfile::NamedTempFile {
    let map: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
    let text = map["data"]["config.conf"]
        .as_str()
        .expect("data.config.conf");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// The path kproxy reads for a fixture (a kubeadm ConfigMap's `config.conf` is copied out).
fn config_path(name: &str) -> (PathBuf, Option<tempfile::NamedTempFile>) {
    if name.starts_with("kubeadm/") {
        let file = config_conf(name);
        (file.path().to_owned(), Some(file))
    } else {
        (fixture(name), None)
    }
}

/// `/configz`'s document as `path -> value` for every leaf (lists are leaves).
fn flatten(cfg: &Config) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        &serde_json::to_value(config::document(cfg)).unwrap(),
        &mut out,
    );
    out
}

/// Equal, with numbers compared by value (`7` and `7.0` alike).
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Runs a case; every check that fails, by name.
fn run(case: &Case) -> Vec<Failure> {
    let name = case.file.unwrap_or("(flags only)").to_owned();
    let fail = |check: &str, what: String| (name.clone(), check.to_owned(), what);
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    let mut defaults = owned(case.args);
    defaults.push(format!("--proxy-mode={}", case.mode));
    let defaults = parse(&defaults).unwrap_or_else(|e| panic!("{name}: defaults: {e}"));
    assert!(
        defaults.warnings.is_empty(),
        "{name}: {:?}",
        defaults.warnings
    );
    let mut want = flatten(&defaults);
    for (path, value) in &case.set {
        want.insert((*path).to_owned(), value.clone());
    }

    let mut args = owned(case.args);
    args.extend(owned(case.flags));
    let _keep = case.file.map(|file| {
        let (path, keep) = config_path(file);
        args.push(format!("--config={}", path.display()));
        keep
    });
    let cfg = match parse(&args) {
        Ok(cfg) => cfg,
        Err(e) => return vec![fail("loads", e)],
    };

    let mut failures = Vec::new();
    let got = flatten(&cfg);
    for path in want.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
        if !same(want.get(path), got.get(path)) {
            failures.push(fail(
                path,
                format!("want {:?}, got {:?}", want.get(path), got.get(path)),
            ));
        }
    }
    let expected = case
        .warnings
        .iter()
        .map(|(part, _)| *part)
        .collect::<Vec<_>>();
    let matched = cfg.warnings.len() == expected.len()
        && expected
            .iter()
            .all(|part| cfg.warnings.iter().filter(|w| w.contains(part)).count() == 1);
    if !matched {
        failures.push(fail(
            "warnings",
            format!("want {expected:?}, got {:?}", cfg.warnings),
        ));
    }
    failures
}

/// Every pending (fixture, check), with why it is pending.
fn pending() -> Vec<(&'static str, &'static str, &'static str)> {
    PENDING
        .iter()
        .flat_map(|p| {
            p.files
                .iter()
                .flat_map(move |f| p.checks.iter().map(move |c| (*f, *c, p.why)))
        })
        .collect()
}

/// Runs the cases and holds their failures against `PENDING`: each failure must be pending,
/// and each pending check of these cases must still fail.
fn check(cases: &[Case]) {
    let failures: Vec<Failure> = cases.iter().flat_map(run).collect();
    let failed: BTreeSet<(&str, &str)> = failures
        .iter()
        .map(|(f, c, _)| (f.as_str(), c.as_str()))
        .collect();
    let pending = pending();
    let unexpected: Vec<&Failure> = failures
        .iter()
        .filter(|(f, c, _)| !pending.iter().any(|(pf, pc, _)| pf == f && pc == c))
        .collect();
    let files: BTreeSet<&str> = cases.iter().filter_map(|c| c.file).collect();
    let fixed: Vec<(&str, &str)> = pending
        .iter()
        .filter(|(f, c, _)| files.contains(f) && !failed.contains(&(*f, *c)))
        .map(|(f, c, _)| (*f, *c))
        .collect();
    assert!(
        unexpected.is_empty(),
        "checks that fail:\n{}",
        unexpected
            .iter()
            .map(|(f, c, w)| format!("  {f}: {c}: {w}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        fixed.is_empty(),
        "these pass now: delete them from PENDING (tests/config_fixtures/cases.rs): {fixed:?}"
    );
}

#[test]
fn kubeadms_config_maps_from_v1_33_to_v1_37_load_without_a_warning_with_the_values_they_set() {
    check(&kubeadm_cases());
}

#[test]
fn upstreams_own_config_test_files_load_as_upstream_loads_them() {
    check(&upstream_cases());
}

#[test]
fn files_upstream_refuses_are_refused_with_a_line_naming_the_problem() {
    for (name, reason, upstream) in REFUSED {
        let args = [format!("--config={}", fixture(name).display())];
        match parse(&args) {
            Err(e) => {
                assert!(e.contains(reason), "{name}: {e} ({upstream})");
                assert!(!e.contains('\n'), "{name}: one line: {e}");
            }
            Ok(cfg) => panic!("{name} loads ({upstream}): {:?}", cfg.mode),
        }
    }
}

/// kubeadm's `SignConfigMap`: sha256 over the data values in key order.
fn component_config_hash(map: &serde_yaml_ng::Value) -> String {
    let data = map["data"].as_mapping().expect("data");
    let mut values: Vec<(&str, &str)> = data
        .iter()
        .map(|(k, v)| (k.as_str().unwrap(), v.as_str().unwrap()))
        .collect();
    values.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (_, value) in values {
        ctx.update(value.as_bytes());
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The hash of the kube-proxy ConfigMap a kubeadm v1.34 cluster served (the v1.34 fixture's
/// header names it): the fixture is that ConfigMap's data byte for byte.
const REAL_V1_34_HASH: &str =
    "sha256:18238492c66d85cd87676223875eea97e931abd5bf402617aac40cede13ab4d3";

#[test]
fn the_kubeadm_config_maps_carry_kubeadms_hash_of_their_data() {
    for case in kubeadm_cases() {
        let name = case.file.unwrap();
        let map: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap();
        let annotation =
            map["metadata"]["annotations"]["kubeadm.kubernetes.io/component-config.hash"]
                .as_str()
                .expect("the component-config hash annotation");
        assert_eq!(annotation, component_config_hash(&map), "{name}");
        if name == "kubeadm/v1.34.yaml" {
            assert_eq!(annotation, REAL_V1_34_HASH, "{name}");
        }
    }
}

#[test]
fn the_binary_runs_each_kubeadm_config_map_warning_only_that_manifests_ignore_its_kubeconfig() {
    let manifests = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/cluster");
    for case in kubeadm_cases() {
        let name = case.file.unwrap();
        let conf = config_conf(name);
        let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .arg(format!("--config={}", conf.path().display()))
            .args(KUBEADM_ARGS)
            .args(["--dry-run", "--log-format=json", "--manifests", manifests])
            // The example cluster's node (a repeated flag keeps its last value), so the dry run
            // finds its Node.
            .args(["--hostname-override", "node1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(!out.stdout.is_empty(), "{name}: a ruleset is printed");
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains("\"level\":\"INFO\"") && !l.contains("\"level\":\"DEBUG\""))
            .collect();
        assert!(warnings.is_empty(), "{name}: {warnings:#?}");
    }
}

#[test]
fn every_fixture_names_its_source_and_is_tested() {
    let mut tested: BTreeSet<String> = kubeadm_cases()
        .iter()
        .chain(upstream_cases().iter())
        .filter_map(|c| c.file.map(str::to_owned))
        .collect();
    tested.extend(REFUSED.iter().map(|(f, _, _)| (*f).to_owned()));
    let mut found = BTreeSet::new();
    for dir in ["kubeadm", "upstream"] {
        for entry in std::fs::read_dir(fixture(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
            let text = std::fs::read_to_string(&path).unwrap();
            let header: String = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                header.contains("kubernetes/kubernetes") && header.contains("commit"),
                "{name}: the header names its source repository and commit"
            );
            found.insert(name);
        }
    }
    assert_eq!(found, tested, "fixtures on disk vs fixtures the tests run");
    for (file, check, why) in pending() {
        assert!(
            found.contains(file),
            "PENDING names a missing fixture: {file} {check} ({why})"
        );
    }
}
