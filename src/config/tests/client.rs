//! Tests of the API client's flags and fields and of the feature gates, through the whole
//! command line and `--config` file: values in effect, one-line errors naming the flag or
//! field, and what refuses to start.

use std::io::Write;

use super::{error, run};
use crate::config::{ClientConnection, Feature};

fn config_file(text: &str) -> (tempfile::NamedTempFile, String) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
    f.write_all(format!("{head}{text}").as_bytes()).unwrap();
    let flag = format!("--config={}", f.path().display());
    (f, flag)
}

#[test]
fn the_client_defaults_to_upstreams_five_a_second_with_a_burst_of_ten() {
    let c = run(&[]);
    assert_eq!(c.client, ClientConnection::default());
    assert_eq!(c.client.rate_limit(), Some((5.0, 10)));
    assert!(c.warnings.is_empty());
}

#[test]
fn the_client_flags_beat_the_files_client_connection() {
    let (_f, flag) = config_file("clientConnection:\n  qps: 50\n  burst: 100\n");
    let c = run(&[&flag]);
    assert_eq!(c.client.rate_limit(), Some((50.0, 100)));
    let c = run(&[&flag, "--kube-api-qps=0.5", "--kube-api-burst", "1"]);
    assert_eq!(c.client.rate_limit(), Some((0.5, 1)));
    let c = run(&["--kube-api-qps=-1"]);
    assert_eq!(c.client.rate_limit(), None);
}

#[test]
fn bad_client_values_exit_naming_the_flag_or_field() {
    assert!(error(&["--kube-api-qps=lots"]).starts_with("--kube-api-qps: "));
    assert!(error(&["--kube-api-burst=0"]).starts_with("--kube-api-burst: "));
    // A content type is never refused, as upstream: kproxy speaks JSON whatever is asked.
    assert_eq!(
        run(&["--kube-api-content-type=text/plain"]).warnings.len(),
        1
    );
    let (_f, flag) = config_file("clientConnection:\n  contentType: application/yaml\n");
    assert!(run(&[&flag]).warnings.is_empty());
    let (_f, flag) = config_file("clientConnection:\n  qps: fast\n");
    assert!(error(&[&flag]).contains("clientConnection.qps: "));
}

#[test]
fn protobuf_on_the_command_line_warns_once_and_in_the_file_not_at_all() {
    let c = run(&["--kube-api-content-type=application/vnd.kubernetes.protobuf"]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let (_f, flag) = config_file(
        "clientConnection:\n  contentType: application/vnd.kubernetes.protobuf\n  \
         acceptContentTypes: application/vnd.kubernetes.protobuf,application/json\n",
    );
    let c = run(&[&flag, "--kube-api-content-type=application/json"]);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn feature_gates_come_from_the_file_and_the_flag_gate_by_gate() {
    let (_f, flag) =
        config_file("featureGates:\n  ComponentFlagz: false\n  ComponentStatusz: false\n");
    let c = run(&[&flag, "--feature-gates=ComponentStatusz=true"]);
    assert!(!c.feature_gates.enabled(Feature::ComponentFlagz));
    assert!(c.feature_gates.enabled(Feature::ComponentStatusz));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn malformed_or_locked_gates_exit_naming_where_they_came_from() {
    let e = error(&["--feature-gates=ComponentFlagz"]);
    assert_eq!(e, "--feature-gates: missing bool value for ComponentFlagz");
    let e = error(&["--feature-gates", "ComponentFlagz=maybe"]);
    assert!(
        e.starts_with("--feature-gates: invalid value of ComponentFlagz=maybe"),
        "{e}"
    );
    let (_f, flag) = config_file("featureGates:\n  NFTablesProxyMode: false\n");
    assert_eq!(
        error(&[&flag]),
        "featureGates: cannot set feature gate NFTablesProxyMode to false, feature is locked to true"
    );
    let (_f, flag) = config_file("featureGates:\n  ComponentFlagz: 1\n");
    assert!(error(&[&flag]).contains("featureGates.ComponentFlagz: want true or false"));
    assert!(error(&["--feature-gates=TopologyAwareHints=false"]).starts_with("--feature-gates: "));
}

#[test]
fn ipvs_mode_is_refused_when_the_kube_proxy_ipvs_gate_is_off() {
    let e = error(&["--proxy-mode=ipvs", "--feature-gates=KubeProxyIPVS=false"]);
    assert_eq!(
        e,
        "--proxy-mode: ipvs mode is disabled by the KubeProxyIPVS feature gate"
    );
    let (_f, flag) = config_file("mode: ipvs\nfeatureGates:\n  KubeProxyIPVS: false\n");
    assert!(error(&[&flag]).starts_with("mode: "));
    // Other modes do not care; the gate is deprecated, which upstream says when it is set.
    let c = run(&[
        "--proxy-mode=nftables",
        "--feature-gates=KubeProxyIPVS=false",
    ]);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
}
