//! A `/metrics` scrape as Prometheus stores it: the series names (a histogram `h` is stored as
//! `h_bucket`, `h_sum` and `h_count`, a counter under its `_total` name, as the text format
//! writes them) and the label names each carries; and what an expression reads that a scrape
//! does not have.
//!
//! Invariants: names come from sample lines, never from `# HELP`/`# TYPE` (a bare histogram name
//! selects nothing in Prometheus); `TARGET_LABELS` and `le` of a `_bucket` are the only labels
//! allowed that no sample carries (`le` is on every bucket sample anyway).

use std::collections::{BTreeMap, BTreeSet};

use super::promql::Used;

/// Labels Prometheus adds to every series of a target.
pub const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Series Prometheus makes itself for every target, never in a scrape.
pub const SYNTHETIC: &[&str] = &["up"];

/// Series name → the label names its samples carry.
pub type Exposition = BTreeMap<String, BTreeSet<String>>;

/// The label names of `{…}` at the start of `s`, and the rest after `}`.
fn labels(s: &str) -> Result<(Vec<String>, &str), String> {
    let b = s.as_bytes();
    let mut i = 1; // {
    let mut names = Vec::new();
    loop {
        match b.get(i) {
            Some(b'}') => return Ok((names, &s[i + 1..])),
            Some(b',') => i += 1,
            Some(_) => {
                let eq = s[i..].find("=\"").ok_or("a label without =\"")? + i;
                names.push(s[i..eq].to_string());
                i = eq + 2;
                loop {
                    match b.get(i) {
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                        None => return Err("an unterminated label value".into()),
                    }
                }
                i += 1;
            }
            None => return Err("no closing }".into()),
        }
    }
}

/// The series of a scrape in the text format; an error names a malformed line.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("no value: {line}"))?;
        let names = out.entry(line[..end].to_string()).or_default();
        let rest = &line[end..];
        let value = if rest.starts_with('{') {
            let (l, rest) = labels(rest).map_err(|e| format!("{e}: {line}"))?;
            names.extend(l);
            rest
        } else {
            rest
        };
        let value = value.split_whitespace().next().unwrap_or_default();
        value
            .parse::<f64>()
            .map_err(|_| format!("not a sample value {value:?}: {line}"))?;
    }
    Ok(out)
}

/// What `used` reads that `scrape` lacks: series (other than `SYNTHETIC`), matcher labels a
/// series does not carry, and grouping labels no series it reads carries. Empty when all is
/// there.
pub fn missing(used: &Used, scrape: &Exposition) -> Vec<String> {
    let mut out = Vec::new();
    for m in &used.metrics {
        if !scrape.contains_key(m) && !SYNTHETIC.contains(&m.as_str()) {
            out.push(format!("series {m}"));
        }
    }
    let target = |l: &str| TARGET_LABELS.contains(&l) || l == "__name__";
    for (m, l) in &used.matched {
        if let Some(labels) = scrape.get(m)
            && !labels.contains(l)
            && !target(l)
        {
            out.push(format!("label {l} of {m}"));
        }
    }
    let carried: BTreeSet<&String> = used
        .metrics
        .iter()
        .filter_map(|m| scrape.get(m))
        .flatten()
        .collect();
    for l in &used.grouped {
        if !carried.contains(l) && !target(l) {
            out.push(format!(
                "label {l} (grouped by) on none of {:?}",
                used.metrics
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::promql::used;
    use super::*;

    const SCRAPE: &str = r#"# HELP h_seconds A histogram.
# TYPE h_seconds histogram
h_seconds_bucket{ip_family="IPv4",le="0.001"} 0
h_seconds_bucket{ip_family="IPv4",le="+Inf"} 3
h_seconds_sum{ip_family="IPv4"} 0.25
h_seconds_count{ip_family="IPv4"} 3
# TYPE c_total counter
c_total{reason="a \"quoted\", {braced} value"} 1
g 2.5e-3
"#;

    fn missing_in(expr: &str) -> Vec<String> {
        let scrape = parse(SCRAPE).unwrap();
        missing(&used(expr).unwrap(), &scrape)
    }

    #[test]
    fn a_scrape_has_the_series_names_prometheus_stores_with_their_labels() {
        let s = parse(SCRAPE).unwrap();
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            [
                "c_total",
                "g",
                "h_seconds_bucket",
                "h_seconds_count",
                "h_seconds_sum"
            ]
        );
        assert_eq!(
            s["h_seconds_bucket"].iter().collect::<Vec<_>>(),
            ["ip_family", "le"]
        );
        assert_eq!(s["c_total"].iter().collect::<Vec<_>>(), ["reason"]);
        assert!(parse("x{a=\"b} 1").is_err());
        assert!(parse("x{a=\"b\"} one").is_err());
    }

    #[test]
    fn an_expression_naming_a_series_or_label_the_scrape_lacks_is_reported_and_one_that_does_not_is_not()
     {
        let good = r#"histogram_quantile(0.99, sum by (le, ip_family, instance) (rate(h_seconds_bucket{job="k"}[5m])))
            + sum by (reason) (c_total{reason!=""}) + g + absent(up == 1)"#;
        assert_eq!(missing_in(good), Vec::<String>::new());
        // The bare histogram name is no series; a kproxy metric that does not exist either.
        assert_eq!(
            missing_in("rate(h_seconds[5m]) + kproxy_not_exported_total"),
            ["series h_seconds", "series kproxy_not_exported_total"]
        );
        assert_eq!(
            missing_in(r#"c_total{ip_family="IPv4"}"#),
            ["label ip_family of c_total"]
        );
        assert_eq!(
            missing_in("sum by (ip_famly) (h_seconds_count)"),
            [r#"label ip_famly (grouped by) on none of {"h_seconds_count"}"#]
        );
    }
}
