//! The text form of an `Explanation`: one `key: value` line per fact, aligned, for a person;
//! `--output json` prints the same facts as one object.
//!
//! Invariants: every field of the JSON object that has a value appears as a line; chances are
//! printed as percentages with at most one decimal.

use std::fmt::Write;

use super::Explanation;

pub fn render(e: &Explanation) -> String {
    let mut lines: Vec<(&str, String)> =
        vec![("packet", format!("{} ({} mode)", e.packet, e.mode))];
    if let Some(svc) = &e.service {
        let port = e.port.as_deref().unwrap_or("?");
        let kind = e.address_kind.map(|k| k.as_str()).unwrap_or("?");
        lines.push((
            "service",
            format!("{svc}, port {port}, reached at its {kind}"),
        ));
    }
    lines.push(("verdict", e.verdict.as_str().to_string()));
    if !e.endpoints.is_empty() {
        let eps: Vec<String> = e
            .endpoints
            .iter()
            .zip(&e.chances)
            .map(|(ep, c)| format!("{ep} ({})", percent(*c)))
            .collect();
        lines.push(("endpoints", eps.join(", ")));
    }
    if e.service.is_some() {
        lines.push(("masquerade", if e.masquerade { "yes" } else { "no" }.into()));
        let affinity = match e.affinity {
            Some(a) => format!("{}, {} s", a.kind, a.timeout_seconds),
            None => "none".into(),
        };
        lines.push(("affinity", affinity));
    }
    lines.push(("reason", e.reason.clone()));
    if let Some(r) = &e.rules {
        lines.push(("rules", r.clone()));
    }
    if let Some(k) = &e.kernel {
        lines.push(("kernel", k.clone()));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in lines {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    }
    out
}

fn percent(c: f64) -> String {
    let p = (c * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chances_print_as_short_percentages() {
        assert_eq!(percent(0.5), "50%");
        assert_eq!(percent(1.0 / 3.0), "33.3%");
        assert_eq!(percent(1.0), "100%");
    }
}
