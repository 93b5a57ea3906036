//! Tests of feature gate parsing and resolution: upstream's syntax, locked gates, the special
//! `AllAlpha`/`AllBeta`, unknown gates and the gates kproxy does not honour.

use std::collections::BTreeMap;

use super::*;

fn map(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn resolve(file: &[(&str, bool)], flags: &[(&str, bool)]) -> (FeatureGates, Vec<String>) {
    FeatureGates::resolve(map(file), map(flags)).expect("valid gates")
}

#[test]
fn pairs_parse_as_upstreams_flag_does_across_items_with_blanks_and_spaces() {
    let parsed = parse(&["A=true,B=false", " C = 1 ,,", "A=F"]).unwrap();
    assert_eq!(parsed, map(&[("A", false), ("B", false), ("C", true)]));
    assert_eq!(parse::<&str>(&[]).unwrap(), BTreeMap::new());
    assert_eq!(parse(&[""]).unwrap(), BTreeMap::new());
}

#[test]
fn a_pair_without_a_value_or_with_a_bad_one_is_refused_naming_the_gate() {
    assert_eq!(
        parse(&["A=true,Broken"]).unwrap_err(),
        "missing bool value for Broken"
    );
    let e = parse(&["A=yes"]).unwrap_err();
    assert!(e.starts_with("invalid value of A=yes"), "{e}");
    assert!(parse(&["=true"]).is_err());
}

#[test]
fn defaults_are_the_newest_releases() {
    let g = FeatureGates::default();
    assert!(g.enabled(Feature::AllowServiceExternalIPs));
    assert!(g.enabled(Feature::ComponentFlagz));
    assert!(g.enabled(Feature::ComponentStatusz));
    assert!(g.enabled(Feature::KubeProxyIpvs));
    assert!(!g.enabled(Feature::KubeProxyNftablesLocalhostNodePorts));
}

#[test]
fn every_queried_feature_is_one_gate_and_names_are_unique() {
    for f in [
        Feature::AllowServiceExternalIPs,
        Feature::ComponentFlagz,
        Feature::ComponentStatusz,
        Feature::KubeProxyIpvs,
        Feature::KubeProxyNftablesLocalhostNodePorts,
    ] {
        assert_eq!(GATES.iter().filter(|g| g.feature == Some(f)).count(), 1);
    }
    let mut names: Vec<&str> = GATES.iter().map(|g| g.name).collect();
    let all = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all);
    assert!(
        GATES.iter().all(|g| !g.locked || g.stage == Stage::Ga),
        "only GA gates are locked here"
    );
}

#[test]
fn the_command_line_overrides_the_file_gate_by_gate() {
    let (g, _) = resolve(
        &[("ComponentFlagz", false), ("ComponentStatusz", false)],
        &[("ComponentFlagz", true)],
    );
    assert!(g.enabled(Feature::ComponentFlagz));
    assert!(!g.enabled(Feature::ComponentStatusz));
    assert_eq!(
        g.given(),
        &map(&[("ComponentFlagz", true), ("ComponentStatusz", false)])
    );
}

#[test]
fn a_locked_gate_set_against_its_lock_is_refused_in_upstreams_words() {
    let (name, e) =
        FeatureGates::resolve(map(&[("NFTablesProxyMode", false)]), BTreeMap::new()).unwrap_err();
    assert_eq!(name, "NFTablesProxyMode");
    assert_eq!(
        e,
        "cannot set feature gate NFTablesProxyMode to false, feature is locked to true"
    );
}

#[test]
fn setting_a_ga_or_deprecated_gate_warns_that_it_will_go_as_upstream_does() {
    let (g, w) = resolve(
        &[],
        &[
            ("TopologyAwareHints", true),
            ("AllowServiceExternalIPs", false),
        ],
    );
    assert!(!g.enabled(Feature::AllowServiceExternalIPs));
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter()
            .any(|l| l.contains("GA feature gate TopologyAwareHints=true"))
    );
    assert!(
        w.iter()
            .any(|l| l.contains("deprecated feature gate AllowServiceExternalIPs=false"))
    );
}

#[test]
fn alpha_and_beta_gates_are_quiet_to_set() {
    let (_, w) = resolve(
        &[("ComponentStatusz", false)],
        &[("ContextualLogging", true)],
    );
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn an_unknown_gate_is_warned_about_once_and_ignored() {
    let (g, w) = resolve(&[("SidecarContainers", true)], &[("NoSuchGate", false)]);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w.iter()
            .all(|l| l.starts_with("unrecognized feature gate "))
    );
    assert_eq!(g.given().len(), 2, "kept, to be written back");
    assert_eq!(
        g,
        resolve(&[], &[("SidecarContainers", true), ("NoSuchGate", false)]).0
    );
}

#[test]
fn all_alpha_and_all_beta_set_the_gates_not_set_by_name() {
    let (g, _) = resolve(&[], &[("AllAlpha", true)]);
    assert!(g.enabled(Feature::KubeProxyNftablesLocalhostNodePorts));
    let (g, _) = resolve(&[], &[("AllBeta", false), ("ComponentStatusz", true)]);
    assert!(!g.enabled(Feature::ComponentFlagz));
    assert!(g.enabled(Feature::ComponentStatusz));
    assert!(
        g.enabled(Feature::KubeProxyIpvs),
        "deprecated gates are neither alpha nor beta"
    );
}

#[test]
fn a_gate_given_a_value_kproxy_does_not_honour_gets_one_warning_naming_it() {
    let (_, w) = resolve(&[], &[("NFTablesNetlink", false)]);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("feature gate NFTablesNetlink=false is not honoured"),
        "{w:?}"
    );
    // The localhost NodePort relay is kproxy's: the gate is honoured either way.
    let (_, w) = resolve(&[], &[("KubeProxyNFTablesLocalhostNodePorts", true)]);
    assert!(w.is_empty(), "{w:?}");
    let (_, w) = resolve(&[], &[("AllBeta", false)]);
    assert_eq!(w.len(), 1, "NFTablesNetlink off through AllBeta: {w:?}");
    let (_, w) = resolve(
        &[],
        &[("NFTablesNetlink", true), ("NativeHistograms", false)],
    );
    assert!(w.is_empty(), "values kproxy honours: {w:?}");
}
