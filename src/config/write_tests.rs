//! Tests of the written configuration: `--config` reads it back to the same configuration, its
//! fields and defaults are upstream's, and `/configz` wraps it as upstream does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::*;
use crate::config::{Parsed, parse_with};

fn parse(args: &[&str]) -> Config {
    let argv = std::iter::once("kproxy").chain(args.iter().copied());
    match parse_with(argv, &|| Ok("node-1.example\n".to_owned())) {
        Ok(Parsed::Run(config)) => config,
        other => panic!("{args:?}: expected a config, got {other:?}"),
    }
}

/// What `--config` cannot carry or that differs by construction between two runs.
fn comparable(mut c: Config) -> Config {
    c.config_file = None;
    c.warnings.clear();
    c.flagz.clear();
    c.write_config_to = None;
    c
}

/// Parses `args` + `again`, writes the result, and parses `--config FILE` + `again`: the second
/// run's configuration (which must come with no warning) and the first's.
fn written_and_read(args: &[&str], again: &[&str]) -> (Config, Config) {
    let first = parse(&[args, again].concat());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kube-proxy.yaml");
    write_config_file(&first, &path).unwrap();
    let file = path.to_str().unwrap();
    let second = parse(&[&["--config", file], again].concat());
    assert!(
        second.warnings.is_empty(),
        "{args:?}: reading the written file warned {:?}\n{}",
        second.warnings,
        std::fs::read_to_string(&path).unwrap()
    );
    (comparable(first), comparable(second))
}

#[test]
fn the_written_configuration_reads_back_to_the_same_configuration() {
    let cases: &[&[&str]] = &[
        &[],
        &[
            "--proxy-mode=iptables",
            "--masquerade-all",
            "--iptables-sync-period=45s",
            "--iptables-min-sync-period=250ms",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--nodeport-addresses=192.168.0.0/16,fd00::/64",
            "--iptables-masquerade-bit=5",
            "--iptables-localhost-nodeports=false",
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=veth",
            "--hostname-override=Worker-3",
            "--kubeconfig=/var/lib/kube-proxy/kubeconfig.conf",
            "--oom-score-adj=100",
            "--bind-address-hard-fail",
            "-v=4",
            "--log-format=json",
            "--metrics-bind-address=0.0.0.0:9999",
            "--healthz-bind-address=127.0.0.1:1234",
        ],
        &[
            "--proxy-mode=ipvs",
            "--ipvs-scheduler=mh",
            "--detect-local-mode=BridgeInterface",
            "--pod-bridge-interface=cbr0",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout=15m",
            "--ipvs-tcpfin-timeout=2m",
            "--ipvs-udp-timeout=1.5s",
            "--ipvs-sync-period=1m",
            "--ipvs-min-sync-period=2s",
            "--masquerade-all",
            "--iptables-masquerade-bit=20",
            "--nodeport-addresses=primary",
        ],
        &[
            "--proxy-mode=nftables",
            "--bind-address=::1",
            "--masquerade-all",
            "--sync-period=1h30m",
            "--min-sync-period=1.5s",
            "--cluster-cidr=fd00:10:244::/56",
        ],
        // Ignored upstream flags change nothing that is written.
        &["--conntrack-min=5", "--profiling"],
        // The API client and the feature gates are written.
        &[
            "--kube-api-qps=2.5",
            "--kube-api-burst=3",
            "--kube-api-content-type=application/json",
            "--feature-gates=ComponentStatusz=false,ContextualLogging=false",
        ],
    ];
    for args in cases {
        let (first, second) = written_and_read(args, &[]);
        assert_eq!(first, second, "{args:?}");
    }
}

#[test]
fn a_configuration_from_a_file_reads_back_with_its_nftables_masquerade_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.yaml");
    std::fs::write(
        &path,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         mode: nftables\nnftables:\n  masqueradeBit: 7\n  masqueradeAll: true\n  syncPeriod: 2m\n\
         hostnameOverride: from-file\nclusterCIDR: 10.0.0.0/8\n",
    )
    .unwrap();
    let (first, second) = written_and_read(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(
        (
            first.masquerade_bit,
            first.masquerade_all,
            first.sync_period
        ),
        (7, true, Duration::from_secs(120))
    );
    assert_eq!(first.hostname_override.as_deref(), Some("from-file"));
    assert_eq!(first, second);
}

/// kproxy's own flags and `--master` have no field in the file: given again, everything matches.
/// (`--master` goes apart from `--manifests`, which would warn that it is ignored.)
#[test]
fn flags_the_file_cannot_carry_are_given_again_and_nothing_else_differs() {
    let own: [&[&str]; 2] = [
        &["--master=https://10.0.0.1:6443"],
        &[
            "--manifests=/srv/manifests",
            "--manifests-max-file-size=1Mi",
            "--dry-run",
            "--nftables-transport=netlink",
            "--iptables-variant=legacy",
        ],
    ];
    // Without them, they are exactly what differs.
    let (_, bare) = written_and_read(&["--proxy-mode=iptables"], &[]);
    for own in own {
        let (first, second) = written_and_read(&["--proxy-mode=iptables"], own);
        assert_eq!(first, second);
        assert!(first.master != bare.master || first.manifests != bare.manifests);
    }
}

/// In the file a zero minimum sync period means the default (1s), so zero is written as 1ns.
#[test]
fn a_zero_minimum_sync_period_is_written_as_one_nanosecond() {
    for mode in ["nftables", "iptables", "ipvs"] {
        let args = [
            &format!("--proxy-mode={mode}") as &str,
            "--min-sync-period=0s",
        ];
        let (mut first, second) = written_and_read(&args, &[]);
        assert_eq!(first.min_sync_period, Duration::ZERO);
        assert_eq!(second.min_sync_period, Duration::from_nanos(1), "{mode}");
        first.min_sync_period = second.min_sync_period;
        assert_eq!(first, second);
        // /configz shows the value in effect.
        let shown = serde_json::to_value(document(&parse(&args))).unwrap();
        assert_eq!(shown[mode]["minSyncPeriod"], "0s", "{mode}");
    }
}

/// A defaulted v1alpha1 KubeProxyConfiguration as upstream encodes it (kubernetes/kubernetes
/// pkg/proxy/apis/config/scheme/testdata/KubeProxyConfiguration/after/v1alpha1.yaml).
const UPSTREAM_DEFAULTS: &str = r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: ""
  qps: 5
clusterCIDR: ""
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: ""
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 30s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 5s
  format: text
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 127.0.0.1:10249
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
nodePortAddresses: null
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

/// Every leaf of a YAML document by its dotted path.
fn leaves(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = k.as_str().unwrap();
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(v, &path, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// The written defaults have upstream's fields, in upstream's order, with upstream's values
/// except where kproxy's defaults or upstream's own start-up defaulting say otherwise.
#[test]
fn the_written_defaults_are_upstreams_fields_and_values_but_for_known_differences() {
    let ours = to_yaml(&parse(&["--proxy-mode=iptables"])).unwrap();
    let top = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .map(|l| l.split(':').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(top(&ours), top(UPSTREAM_DEFAULTS), "{ours}");
    let (mut mine, mut theirs) = (BTreeMap::new(), BTreeMap::new());
    leaves(&serde_yaml_ng::from_str(&ours).unwrap(), "", &mut mine);
    leaves(
        &serde_yaml_ng::from_str(UPSTREAM_DEFAULTS).unwrap(),
        "",
        &mut theirs,
    );
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    let s = |v: &str| Value::String(v.to_owned());
    let known: BTreeMap<&str, (Value, Value)> = BTreeMap::from([
        // Upstream's start-up defaulting (platformApplyDefaults) fills these before it writes.
        ("mode", (s("iptables"), s(""))),
        ("detectLocalMode", (s("ClusterCIDR"), s(""))),
        // Upstream's conversion writes the sync periods into the mode's section only.
        ("ipvs.syncPeriod", (s("0s"), s("30s"))),
        ("nftables.minSyncPeriod", (s("0s"), s("1s"))),
        ("nftables.syncPeriod", (s("0s"), s("30s"))),
        // Upstream's "" means rr; kproxy writes what it uses.
        ("ipvs.scheduler", (s("rr"), s(""))),
        // kube-rs speaks JSON only; kproxy writes what it speaks.
        (
            "clientConnection.contentType",
            (
                s("application/json"),
                s("application/vnd.kubernetes.protobuf"),
            ),
        ),
    ]);
    for (path, value) in &mine {
        let expected = match known.get(path.as_str()) {
            Some((ours, upstream)) => {
                assert_eq!(&theirs[path], upstream, "{path}: upstream's value moved");
                ours
            }
            None => &theirs[path],
        };
        assert_eq!(value, expected, "{path}");
    }
}

#[test]
fn feature_gates_and_the_client_settings_are_written_as_given_and_read_back() {
    let args = [
        "--kube-api-qps=0.5",
        "--kube-api-burst=2",
        "--kube-api-content-type=application/vnd.kubernetes.protobuf",
        "--feature-gates=AllowServiceExternalIPs=false",
        "--feature-gates=NoSuchGate=true",
    ];
    let first = parse(&args);
    let yaml = to_yaml(&first).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(doc["clientConnection"]["qps"], Value::from(0.5));
    assert_eq!(doc["clientConnection"]["burst"], Value::from(2));
    assert_eq!(doc["clientConnection"]["contentType"], "application/json");
    assert_eq!(doc["featureGates"]["AllowServiceExternalIPs"], false);
    assert_eq!(doc["featureGates"]["NoSuchGate"], true);
    assert!(yaml.contains("\nfeatureGates:\n"), "{yaml}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kube-proxy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let second = parse(&["--config", path.to_str().unwrap()]);
    // Reading back says again what the first run said of the gates, and nothing of protobuf.
    assert_eq!(second.warnings.len(), 2, "{:?}", second.warnings);
    assert_eq!(comparable(first), comparable(second));
    // Integral rates are written as upstream's encoder writes a float32: `5`, not `5.0`.
    assert!(to_yaml(&parse(&[])).unwrap().contains("  qps: 5\n"));
}

#[test]
fn configz_files_the_configuration_under_its_group_with_api_version_and_kind() {
    let c = parse(&["--proxy-mode=iptables", "--cluster-cidr=10.1.0.0/16"]);
    let body: serde_json::Value = serde_json::from_str(&configz_json(&c)).unwrap();
    let object = body.as_object().unwrap();
    assert_eq!(object.keys().collect::<Vec<_>>(), [CONFIGZ_GROUP]);
    let doc = &body[CONFIGZ_GROUP];
    assert_eq!(doc["apiVersion"], "kubeproxy.config.k8s.io/v1alpha1");
    assert_eq!(doc["kind"], "KubeProxyConfiguration");
    assert_eq!(doc["mode"], "iptables");
    assert_eq!(doc["clusterCIDR"], "10.1.0.0/16");
    assert_eq!(doc["iptables"]["syncPeriod"], "30s");
    assert_eq!(doc["nodePortAddresses"], serde_json::Value::Null);
}

#[test]
fn a_file_that_cannot_be_written_is_named_in_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("kube-proxy.yaml");
    let err = write_config_file(&parse(&[]), &path).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("--write-config-to "), "{text}");
    assert!(text.contains(path.to_str().unwrap()), "{text}");
    assert!(!text.contains('\n'), "{text}");
}
