//! Rendering a desired state as a whole `nft -f` ruleset (for --dry-run and `nft -c`), in the
//! block form a human reads; the backend itself applies element diffs, never this text.
//!
//! Invariants: pure and deterministic (sets, chains and elements in a fixed order); the same
//! rule templates as the transactions (`compile::static_rules`, `lb_rules`, `affinity_rules`).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::compile::{Desired, affinity_rules, lb_rules, static_rules};
use super::skeleton::{self, fill};
use super::transaction::element;
use crate::model::IpFamily;

/// The whole ruleset of both families in `nft -f` syntax: deletes and recreates kproxy's
/// tables (for --dry-run and `nft -c -f`; the backend applies element diffs instead).
pub fn render(d: &Desired) -> String {
    let mut out = String::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        render_family(&mut out, d, family);
    }
    out
}

fn render_family(out: &mut String, d: &Desired, family: IpFamily) {
    let fam = d.family(family);
    let name = match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    };
    let t = skeleton::TABLE;
    let _ = writeln!(
        out,
        "table {name} {t} {{}}\ndelete table {name} {t}\ntable {name} {t} {{"
    );
    for set in skeleton::SETS {
        let kind = if set.decl.contains(" : ") {
            "map"
        } else {
            "set"
        };
        let _ = writeln!(
            out,
            "\t{kind} {} {{\n\t\t{}",
            set.name,
            fill(set.decl, family)
        );
        if let Some(elements) = fam.sets.get(set.name) {
            write_elements(out, elements);
        }
        let _ = writeln!(out, "\t}}");
    }
    for c in skeleton::CHAINS {
        let rules = static_rules(c, d, family);
        chain(out, c.name, None, &rules, family);
    }
    for (prefix, n) in &fam.lb_chains {
        chain(
            out,
            &format!("{prefix}-{n}"),
            None,
            &lb_rules(prefix, *n),
            family,
        );
    }
    for (prefix, timeout) in &fam.affinity_timeouts {
        let rules = affinity_rules(prefix, *timeout);
        chain(out, &format!("{prefix}-{timeout}"), None, &rules, family);
    }
    for b in skeleton::BASE_CHAINS {
        let head = format!(
            "type {} hook {} priority {}; policy accept; # {}",
            b.kind, b.hook, b.priority, b.comment
        );
        let rules: Vec<String> = b.rules.iter().map(|r| r.to_string()).collect();
        chain(out, b.name, Some(&head), &rules, family);
    }
    let _ = writeln!(out, "}}");
}

/// The `elements = { … }` line(s) of a set, as nft lists them; nothing when it is empty.
pub fn write_elements(out: &mut String, elements: &BTreeMap<String, String>) {
    if elements.is_empty() {
        return;
    }
    let items: Vec<String> = elements.iter().map(|(k, v)| element(k, v)).collect();
    let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(",\n\t\t\t     "));
}

fn chain(out: &mut String, name: &str, head: Option<&str>, rules: &[String], family: IpFamily) {
    let _ = writeln!(out, "\tchain {name} {{");
    if let Some(head) = head {
        let _ = writeln!(out, "\t\t{head}");
    }
    for r in rules {
        let _ = writeln!(out, "\t\t{}", fill(r, family));
    }
    let _ = writeln!(out, "\t}}");
}
