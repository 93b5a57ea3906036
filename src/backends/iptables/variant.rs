//! Which iptables kproxy drives: iptables-nft or iptables-legacy. `--iptables-variant auto`
//! (the default) uses the one the host already uses, decided as upstream's iptables-wrapper
//! does: the kubelet's hint chains first, then whichever has more rules.
//!
//! Invariants: the commands are named explicitly (`iptables-nft-restore`, ...), never through
//! the `iptables` alternative, so the variant never changes under a running kproxy; detection
//! only reads (`-save`), and `decide` is pure.

use std::process::Command;

use crate::model::IpFamily;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Nft,
    Legacy,
}

/// `--iptables-variant`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VariantChoice {
    #[default]
    Auto,
    Fixed(Variant),
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        }
    }

    fn command(self, family: IpFamily, suffix: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        format!("{base}-{}{suffix}", self.as_str())
    }

    /// `iptables-nft-restore`, `ip6tables-legacy-restore`, ...
    pub fn restore(self, family: IpFamily) -> String {
        self.command(family, "-restore")
    }

    pub fn save(self, family: IpFamily) -> String {
        self.command(family, "-save")
    }

    /// `iptables-nft`, `ip6tables-legacy`, ...
    pub fn cli(self, family: IpFamily) -> String {
        self.command(family, "")
    }
}

impl VariantChoice {
    pub fn parse(s: &str) -> Result<VariantChoice, String> {
        match s {
            "auto" => Ok(VariantChoice::Auto),
            "nft" => Ok(VariantChoice::Fixed(Variant::Nft)),
            "legacy" => Ok(VariantChoice::Fixed(Variant::Legacy)),
            _ => Err(format!("unknown value {s:?} (want auto, nft or legacy)")),
        }
    }

    /// The variant to use; `Auto` looks at the host (see the module docs).
    pub fn resolve(self) -> Variant {
        match self {
            VariantChoice::Fixed(v) => v,
            VariantChoice::Auto => {
                let nft = look(Variant::Nft);
                let legacy = look(Variant::Legacy);
                let chosen = decide(&nft, &legacy);
                tracing::info!(
                    variant = chosen.as_str(),
                    nft_rules = nft.rules,
                    legacy_rules = legacy.rules,
                    "iptables variant detected"
                );
                chosen
            }
        }
    }
}

/// What one variant's `-save` shows on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The kubelet's `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY` chain is there.
    pub hint: bool,
    /// Rules (`-A` lines) in both families.
    pub rules: usize,
}

/// Upstream's iptables-wrapper order: a kubelet hint wins (nft first), then the variant with
/// more rules, nft on a tie.
pub fn decide(nft: &Seen, legacy: &Seen) -> Variant {
    if nft.hint {
        Variant::Nft
    } else if legacy.hint || legacy.rules > nft.rules {
        Variant::Legacy
    } else {
        Variant::Nft
    }
}

/// Reads one variant's rules (a missing tool shows nothing).
pub fn look(variant: Variant) -> Seen {
    let mut seen = Seen::default();
    for family in IpFamily::ALL {
        // Line by line: a node's whole ruleset is never held.
        let _ = crate::backends::process::run_lines(Command::new(variant.save(family)), &mut |l| {
            seen.hint |=
                l.starts_with(":KUBE-IPTABLES-HINT ") || l.starts_with(":KUBE-KUBELET-CANARY ");
            seen.rules += usize::from(l.starts_with("-A "));
        });
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(hint: bool, rules: usize) -> Seen {
        Seen { hint, rules }
    }

    #[test]
    fn a_kubelet_hint_decides_before_rule_counts() {
        assert_eq!(decide(&seen(true, 0), &seen(false, 900)), Variant::Nft);
        assert_eq!(decide(&seen(false, 900), &seen(true, 0)), Variant::Legacy);
    }

    #[test]
    fn without_a_hint_the_variant_with_more_rules_wins_and_nft_takes_a_tie() {
        assert_eq!(decide(&seen(false, 3), &seen(false, 40)), Variant::Legacy);
        assert_eq!(decide(&seen(false, 40), &seen(false, 3)), Variant::Nft);
        assert_eq!(decide(&seen(false, 0), &seen(false, 0)), Variant::Nft);
    }

    #[test]
    fn commands_are_named_by_variant_and_family() {
        assert_eq!(Variant::Nft.restore(IpFamily::V4), "iptables-nft-restore");
        assert_eq!(Variant::Legacy.save(IpFamily::V6), "ip6tables-legacy-save");
        assert_eq!(Variant::Legacy.cli(IpFamily::V4), "iptables-legacy");
        assert!(VariantChoice::parse("both").is_err());
    }
}
