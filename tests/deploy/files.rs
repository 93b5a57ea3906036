//! Reading the deployment artifacts: deploy/daemonset.yaml's documents as typed Kubernetes
//! objects, a container's command line as the kubelet expands it, systemd unit files, the
//! Dockerfile's instructions.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const DAEMONSET: &str = "deploy/daemonset.yaml";

pub fn path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every document of a multi-document YAML file, as JSON (empty documents left out).
pub fn documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            let yaml = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{rel}: document {i}: {e}"));
            serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{rel}: document {i}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The object `K` named `name` in deploy/daemonset.yaml, typed. Panics unless exactly one
/// document is that object and it survives a round trip through the typed form unchanged: a
/// misspelled or misplaced field, which the API server would reject or silently drop, is lost
/// on the way and named.
pub fn object<K>(name: &str) -> K
where
    K: k8s_openapi::Resource + DeserializeOwned + Serialize,
{
    let docs = documents(DAEMONSET);
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            d["kind"] == K::KIND
                && d["apiVersion"] == K::API_VERSION
                && d["metadata"]["name"] == name
        })
        .collect();
    let [doc] = found.as_slice() else {
        panic!(
            "{DAEMONSET}: want one {} {name}, found {}",
            K::KIND,
            found.len()
        );
    };
    let typed: K = serde_json::from_value((*doc).clone())
        .unwrap_or_else(|e| panic!("{DAEMONSET}: {} {name}: {e}", K::KIND));
    let back = serde_json::to_value(&typed).expect("serialize");
    let mut changed = Vec::new();
    differences(doc, &back, "", &mut changed);
    assert!(
        changed.is_empty(),
        "{DAEMONSET}: {} {name} has fields the Kubernetes API does not (misspelled or \
         misplaced):\n{}",
        K::KIND,
        changed.join("\n")
    );
    typed
}

/// Where `a` and `b` differ, by path; an absent field equals null.
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Value::Null;
                let (va, vb) = (x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null));
                differences(va, vb, &format!("{at}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, &format!("{at}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{at}: {a} reads back as {b}")),
    }
}

pub fn daemonset() -> DaemonSet {
    object("kproxy")
}

/// The DaemonSet's one container.
pub fn container(ds: &DaemonSet) -> Container {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let containers = &spec.expect("DaemonSet without a pod spec").containers;
    assert_eq!(containers.len(), 1, "one container");
    containers[0].clone()
}

/// The container's command and args with `$(VAR)` expanded from its env as the kubelet does:
/// a plain value, or `spec.nodeName` for `node`. Every reference must name a defined variable.
pub fn command_line(c: &Container, node: &str) -> Vec<String> {
    let env = c.env.clone().unwrap_or_default();
    let value = |name: &str| -> String {
        let var = env
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("$({name}) names no env var of the container"));
        if let Some(v) = &var.value {
            return v.clone();
        }
        let field = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref());
        match field.map(|f| f.field_path.as_str()) {
            Some("spec.nodeName") => node.to_owned(),
            other => panic!("$({name}): unexpected source {other:?}"),
        }
    };
    let words = c.command.iter().flatten().chain(c.args.iter().flatten());
    words
        .map(|word| {
            let (mut out, mut rest) = (String::new(), word.as_str());
            while let Some(start) = rest.find("$(") {
                let len = rest[start..].find(')').expect("unclosed $(");
                out.push_str(&rest[..start]);
                out.push_str(&value(&rest[start + 2..start + len]));
                rest = &rest[start + len + 1..];
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// The ConfigMap key that `--config=` names through the container's mount of the ConfigMap,
/// with its text.
pub fn mounted_config(ds: &DaemonSet, args: &[String]) -> (String, String) {
    let c = container(ds);
    let config = args
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("the container passes --config=PATH");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.config_map.is_some())
        .expect("a ConfigMap volume");
    let cm_name = &volume.config_map.as_ref().unwrap().name;
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("the ConfigMap volume is mounted");
    let key = Path::new(config)
        .strip_prefix(&mount.mount_path)
        .unwrap_or_else(|_| panic!("--config={config} is not under {}", mount.mount_path))
        .to_str()
        .unwrap()
        .to_owned();
    let cm: ConfigMap = object(cm_name);
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {key}"))
        .clone();
    (key, text)
}

/// A command line with `--config=` pointing at `file` instead.
pub fn with_config(args: &[String], file: &Path) -> Vec<String> {
    args.iter()
        .map(|a| match a.strip_prefix("--config=") {
            Some(_) => format!("--config={}", file.display()),
            None => a.clone(),
        })
        .collect()
}

/// `kproxy::config::parse`, which must succeed with a configuration to run.
pub fn parse(args: &[String]) -> kproxy::config::Config {
    match kproxy::config::parse(args) {
        Ok(kproxy::config::Parsed::Run(cfg)) => cfg,
        other => panic!("kproxy's parser on {args:?}: {other:?}"),
    }
}

/// A systemd unit file's assignments as (section, key, value), in order.
pub fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "continuation lines are not read here: {line}"
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not k=v: {line}"));
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

/// Every value of `key` in `section`.
pub fn unit_values(entries: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// The one value of `key` in `section`.
pub fn unit_value(entries: &[(String, String, String)], section: &str, key: &str) -> String {
    let values = unit_values(entries, section, key);
    let [v] = values.as_slice() else {
        panic!("want one {key}= in [{section}], found {values:?}");
    };
    v.clone()
}

/// The Dockerfile's stages: (FROM line, instructions as (keyword, rest)), continuation lines
/// joined.
pub fn dockerfile_stages(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment between continued lines
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(t);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for instruction in joined {
        let (keyword, rest) = instruction.split_once(' ').unwrap_or((&instruction, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push((rest.trim().to_owned(), Vec::new()));
        } else {
            let stage = stages.last_mut().expect("an instruction before FROM");
            stage.1.push((keyword, rest.trim().to_owned()));
        }
    }
    stages
}
