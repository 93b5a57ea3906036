//! `--feature-gates` and the file's `featureGates`: upstream's syntax and rules for the gates
//! that concern kube-proxy in Kubernetes 1.31 to 1.37, and what kproxy does with each.
//!
//! Syntax, as component-base's feature gate: `Name=bool` pairs separated by commas, the flag
//! repeatable; blank pairs are skipped, names and values trimmed, values in Go's `ParseBool`
//! spelling. A pair without `=` or with a bad value is an error naming the gate. The file's map
//! comes first and each gate given on the command line overrides it (kproxy's precedence).
//!
//! Rules, as upstream: a locked gate set to the other value is an error (`cannot set feature
//! gate X to false, feature is locked to true`); setting a GA or deprecated gate is allowed with
//! a warning that it will go away; `AllAlpha`/`AllBeta` set every alpha/beta gate not set by
//! name. One difference: upstream refuses a gate it does not know, and its binary knows every
//! Kubernetes gate (~300, kubelet's and the API server's too); kproxy knows only the gates that
//! concern a proxy (`GATES`), so a name it does not know may well be a valid gate of another
//! component (clusters set one list everywhere): one warning each, and it is ignored.
//!
//! Invariants: `FeatureGates` holds every pair given (known or not), so `--write-config-to`
//! writes them back; `enabled` answers for the gates of `GATES` only; a gate set (by name or
//! through `AllAlpha`/`AllBeta`) to a value kproxy does not honour gets one warning saying so.

use std::collections::BTreeMap;

use super::values::parse_bool;
use super::{ConfigError, flags};

/// Gates kproxy queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// KEP-5707 (deprecated, default on, 1.36): off, Services' `externalIPs` are ignored.
    AllowServiceExternalIPs,
    /// `/flagz` on the metrics address (beta, default on, 1.36).
    ComponentFlagz,
    /// `/statusz` on the metrics address (beta, default on, 1.36).
    ComponentStatusz,
    /// KEP-5495 (deprecated, default on, 1.37): off, ipvs mode is refused.
    KubeProxyIpvs,
    /// KEP-6032 (alpha, default off, 1.37): localhost NodePorts in nftables mode.
    KubeProxyNftablesLocalhostNodePorts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Alpha,
    Beta,
    Ga,
    Deprecated,
}

/// One gate as the newest release (1.37) defines it, with what kproxy does about it.
#[derive(Clone, Copy, Debug)]
pub struct Gate {
    pub name: &'static str,
    pub stage: Stage,
    pub default: bool,
    /// Upstream refuses the other value.
    pub locked: bool,
    /// The value kproxy does not honour, and why (warned about when the gate takes it).
    pub unhonoured: Option<(bool, &'static str)>,
    /// The `Feature` kproxy queries it as, if any.
    pub feature: Option<Feature>,
}

const fn gate(name: &'static str, stage: Stage, default: bool, locked: bool) -> Gate {
    Gate {
        name,
        stage,
        default,
        locked,
        unhonoured: None,
        feature: None,
    }
}

const fn queried(mut g: Gate, feature: Feature) -> Gate {
    g.feature = Some(feature);
    g
}

const fn unhonoured(mut g: Gate, value: bool, why: &'static str) -> Gate {
    g.unhonoured = Some((value, why));
    g
}

use Stage::{Alpha, Beta, Deprecated, Ga};

/// The gates kproxy knows: those kube-proxy reads in 1.31 to 1.37 and component-base's that
/// its binary registers, at their newest stage. Gates upstream has since removed (GA and locked
/// in their last release) are kept, locked, so a 1.31 configuration still loads.
pub const GATES: &[Gate] = &[
    gate("AllAlpha", Alpha, false, false),
    gate("AllBeta", Beta, false, false),
    queried(
        gate("AllowServiceExternalIPs", Deprecated, true, false),
        Feature::AllowServiceExternalIPs,
    ),
    queried(
        gate("ComponentFlagz", Beta, true, false),
        Feature::ComponentFlagz,
    ),
    queried(
        gate("ComponentStatusz", Beta, true, false),
        Feature::ComponentStatusz,
    ),
    gate("ContextualLogging", Beta, true, false),
    gate("KubeProxyDrainingTerminatingNodes", Ga, true, true),
    queried(
        gate("KubeProxyIPVS", Deprecated, true, false),
        Feature::KubeProxyIpvs,
    ),
    // kproxy's relay runs whenever --nodeport-addresses names localhost, unless this gate is
    // set to false (upstream 1.37 also needs it set to true: it is alpha there).
    queried(
        gate("KubeProxyNFTablesLocalhostNodePorts", Alpha, false, false),
        Feature::KubeProxyNftablesLocalhostNodePorts,
    ),
    gate("LoadBalancerIPMode", Ga, true, true),
    gate("LoggingAlphaOptions", Alpha, false, false),
    gate("LoggingBetaOptions", Beta, true, false),
    gate("MultiCIDRServiceAllocator", Ga, true, true),
    unhonoured(
        gate("NFTablesNetlink", Beta, true, false),
        false,
        "how nftables mode reaches the kernel is --nftables-transport's choice",
    ),
    gate("NFTablesProxyMode", Ga, true, true),
    unhonoured(
        gate("NativeHistograms", Beta, true, false),
        true,
        "kproxy's histograms are classic ones only",
    ),
    gate("PreferSameTrafficDistribution", Ga, true, true),
    gate("ServiceTrafficDistribution", Ga, true, true),
    gate("TopologyAwareHints", Ga, true, true),
    gate("WinDSR", Ga, true, true),
    gate("WinOverlay", Ga, true, true),
];

/// The gates as given, resolved against `GATES`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureGates {
    /// Every pair given, by name (the file's, overridden by the command line's).
    given: BTreeMap<String, bool>,
}

impl FeatureGates {
    /// Whether `feature` is on: its own setting, else `AllAlpha`/`AllBeta` for an alpha/beta
    /// gate, else its default.
    pub fn enabled(&self, feature: Feature) -> bool {
        let gate = GATES
            .iter()
            .find(|g| g.feature == Some(feature))
            .expect("every Feature is in GATES");
        self.value(gate)
    }

    fn value(&self, gate: &Gate) -> bool {
        self.set(gate).unwrap_or(gate.default)
    }

    /// The gate's value if it was given, by name or through `AllAlpha`/`AllBeta`.
    fn set(&self, gate: &Gate) -> Option<bool> {
        if let Some(v) = self.given.get(gate.name) {
            return Some(*v);
        }
        let all = match gate.stage {
            Alpha => "AllAlpha",
            Beta => "AllBeta",
            Ga | Deprecated => return None,
        };
        self.given.get(all).copied()
    }

    /// Every pair given, sorted by name (for `featureGates` in a written configuration).
    pub fn given(&self) -> &BTreeMap<String, bool> {
        &self.given
    }

    /// The file's pairs overridden by the command line's, checked as upstream checks them.
    /// `Err` names the gate and gives upstream's one-line reason; `Ok` comes with the warnings
    /// to log.
    pub fn resolve(
        file: BTreeMap<String, bool>,
        flags: BTreeMap<String, bool>,
    ) -> Result<(FeatureGates, Vec<String>), (String, String)> {
        let mut given = file;
        given.extend(flags);
        let gates = FeatureGates { given };
        let mut warnings = Vec::new();
        for (name, &value) in &gates.given {
            let Some(gate) = GATES.iter().find(|g| g.name == name) else {
                warnings.push(format!(
                    "unrecognized feature gate {name}: not a gate that concerns kube-proxy; ignored"
                ));
                continue;
            };
            if gate.locked && value != gate.default {
                return Err((
                    name.clone(),
                    format!(
                        "cannot set feature gate {name} to {value}, feature is locked to {}",
                        gate.default
                    ),
                ));
            }
            match gate.stage {
                Ga => warnings.push(format!(
                    "setting GA feature gate {name}={value}; it will be removed in a future release"
                )),
                Deprecated => warnings.push(format!(
                    "setting deprecated feature gate {name}={value}; it will be removed in a future release"
                )),
                Alpha | Beta => {}
            }
        }
        for gate in GATES {
            if let Some((value, why)) = gate.unhonoured
                && gates.set(gate) == Some(value)
            {
                warnings.push(format!(
                    "feature gate {}={value} is not honoured: {why}",
                    gate.name
                ));
            }
        }
        Ok((gates, warnings))
    }
}

/// `--feature-gates` over the file's `featureGates`; its warnings go to `warnings`. An error
/// names the flag when the offending gate came from it, else the file's field.
pub fn from_matches(
    m: &clap::ArgMatches,
    file: &BTreeMap<String, bool>,
    warnings: &mut Vec<String>,
) -> Result<FeatureGates, ConfigError> {
    let invalid = |flag: &str, message: String| ConfigError::Invalid {
        flag: flag.to_owned(),
        message,
    };
    let given = flags::explicit_list(m, "feature-gates").unwrap_or_default();
    let from_flags = parse(&given).map_err(|e| invalid("--feature-gates", e))?;
    let on_command_line = from_flags.clone();
    let (gates, more) =
        FeatureGates::resolve(file.clone(), from_flags).map_err(
            |(name, e)| match on_command_line.contains_key(&name) {
                true => invalid("--feature-gates", e),
                false => invalid("featureGates", e),
            },
        )?;
    warnings.extend(more);
    Ok(gates)
}

/// Upstream's `--feature-gates` syntax: `A=true,B=false`; each item may hold several pairs.
/// A later pair for the same gate wins.
pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<BTreeMap<String, bool>, String> {
    let mut out = BTreeMap::new();
    for pair in items.iter().flat_map(|i| i.as_ref().split(',')) {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.split_once('=') {
            Some((name, value)) => (name.trim(), value.trim()),
            None => return Err(format!("missing bool value for {}", pair.trim())),
        };
        if name.is_empty() {
            return Err(format!("missing gate name in {pair:?}"));
        }
        let value =
            parse_bool(value).map_err(|e| format!("invalid value of {name}={value}: {e}"))?;
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "features_tests.rs"]
mod tests;
