//! What a PromQL expression (or a Grafana variable query) reads: the metric names of its
//! selectors, the label names its matchers put on each, and the labels it groups by. Not a full
//! parser: a tokenizer that knows strings, `{…}` matchers, `[…]` ranges, numbers and durations,
//! Grafana's `$var`/`${var}`, comments, and which identifiers are functions, aggregations or
//! keywords; whatever identifier is left is a metric name.
//!
//! Invariants: an identifier followed by `(` must be a known PromQL function or aggregation (so
//! a misspelt function is an error, never a metric); unbalanced brackets and unterminated
//! strings are errors.

use std::collections::BTreeSet;

/// PromQL's aggregation operators (they may be followed by `by`/`without` before `(`).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// PromQL's functions (Prometheus 3), including the `@` modifier's `start()`/`end()`.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "end",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "hour",
    "idelta",
    "increase",
    "info",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "start",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Keywords followed by a list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Keywords that are neither metrics nor followed by labels.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// What one expression reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Used {
    /// Metric names of the selectors.
    pub metrics: BTreeSet<String>,
    /// (metric, label) for every matcher of a named selector.
    pub matched: BTreeSet<(String, String)>,
    /// Labels named in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    pub grouped: BTreeSet<String>,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Skips whitespace and `#` comments; the next byte.
    fn skip_space(&mut self) -> Option<u8> {
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.i += 1;
                }
            } else {
                break;
            }
        }
        self.peek()
    }

    fn ident(&mut self) -> String {
        let start = self.i;
        while self.peek().is_some_and(ident_char) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// A quoted string starting here (`"`, `'` or `` ` ``), escapes honoured except in
    /// backquotes; its contents.
    fn string(&mut self) -> Result<String, String> {
        let quote = self.s[self.i];
        let start = self.i;
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self
                .peek()
                .ok_or_else(|| format!("unterminated string at byte {start}"))?;
            self.i += 1;
            if c == quote {
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            if c == b'\\' && quote != b'`' {
                let e = self
                    .peek()
                    .ok_or_else(|| format!("unterminated string at byte {start}"))?;
                self.i += 1;
                out.push(e);
            } else {
                out.push(c);
            }
        }
    }

    /// Skips from an opening `open` to its matching `close`, strings included.
    fn skip_balanced(&mut self, open: u8, close: u8) -> Result<(), String> {
        let start = self.i;
        let mut depth = 0;
        while let Some(c) = self.peek() {
            match c {
                b'"' | b'\'' | b'`' => {
                    self.string()?;
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        Err(format!("unclosed '{}' at byte {start}", open as char))
    }

    /// `{name op "value", …}` starting here: the label names.
    fn matchers(&mut self) -> Result<Vec<String>, String> {
        let start = self.i;
        self.i += 1; // {
        let mut labels = Vec::new();
        loop {
            match self.skip_space() {
                Some(b'}') => {
                    self.i += 1;
                    return Ok(labels);
                }
                Some(c) if ident_start(c) => labels.push(self.ident()),
                Some(b'"') => labels.push(self.string()?),
                _ => return Err(format!("malformed matchers at byte {start}")),
            }
            self.skip_space();
            let op_start = self.i;
            while self.peek().is_some_and(|c| matches!(c, b'=' | b'!' | b'~')) {
                self.i += 1;
            }
            let op = &self.s[op_start..self.i];
            if !matches!(op, b"=" | b"!=" | b"=~" | b"!~") {
                return Err(format!("malformed matcher operator at byte {op_start}"));
            }
            match self.skip_space() {
                Some(b'"' | b'\'' | b'`') => {
                    self.string()?;
                }
                // A Grafana variable standing for the whole value.
                Some(b'$') => self.variable(),
                _ => return Err(format!("matcher without a value at byte {op_start}")),
            }
            if self.skip_space() == Some(b',') {
                self.i += 1;
            }
        }
    }

    /// `(label, …)` starting here: the label names.
    fn label_list(&mut self) -> Result<Vec<String>, String> {
        let start = self.i;
        self.i += 1; // (
        let mut labels = Vec::new();
        loop {
            match self.skip_space() {
                Some(b')') => {
                    self.i += 1;
                    return Ok(labels);
                }
                Some(b',') => self.i += 1,
                Some(c) if ident_start(c) => labels.push(self.ident()),
                Some(b'"') => labels.push(self.string()?),
                _ => return Err(format!("malformed label list at byte {start}")),
            }
        }
    }

    /// A Grafana variable: `$name`, `${name…}` or `[[name]]` (the latter starts at `[`).
    fn variable(&mut self) {
        self.i += 1; // $
        if self.peek() == Some(b'{') {
            while self.peek().is_some_and(|c| c != b'}') {
                self.i += 1;
            }
            self.i += 1;
        } else {
            self.ident();
        }
    }
}

/// What `expr` reads, or why it cannot be read.
pub fn used(expr: &str) -> Result<Used, String> {
    let mut l = Lexer {
        s: expr.as_bytes(),
        i: 0,
    };
    let mut out = Used::default();
    let mut depth: i32 = 0;
    while let Some(c) = l.skip_space() {
        match c {
            b'"' | b'\'' | b'`' => {
                l.string()?;
            }
            b'$' => l.variable(),
            b'[' => l.skip_balanced(b'[', b']')?,
            b'{' => {
                // A selector without a metric name: nothing to look up.
                l.matchers()?;
            }
            b'(' => {
                depth += 1;
                l.i += 1;
            }
            b')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' at byte {}", l.i));
                }
                l.i += 1;
            }
            c if c.is_ascii_digit()
                || (c == b'.' && l.s.get(l.i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                // Numbers, durations (5m, 1h30m), exponents (1e+3).
                while l
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
                {
                    let e = l.peek() == Some(b'e') || l.peek() == Some(b'E');
                    l.i += 1;
                    if e && matches!(l.peek(), Some(b'+' | b'-')) {
                        l.i += 1;
                    }
                }
            }
            c if ident_start(c) => {
                let start = l.i;
                let word = l.ident();
                let lower = word.to_ascii_lowercase();
                let next = l.skip_space();
                if GROUPING.contains(&lower.as_str()) {
                    if next == Some(b'(') {
                        out.grouped.extend(l.label_list()?);
                    }
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&word.as_str())
                {
                } else if next == Some(b'(') {
                    if !FUNCTIONS.contains(&word.as_str()) {
                        return Err(format!("unknown function {word}() at byte {start}"));
                    }
                } else {
                    if next == Some(b'{') {
                        for label in l.matchers()? {
                            out.matched.insert((word.clone(), label));
                        }
                    }
                    out.metrics.insert(word);
                }
            }
            _ => l.i += 1,
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".to_string());
    }
    Ok(out)
}

/// What a Grafana Prometheus variable query reads: `label_values(selector, label)` reads the
/// selector (`label_values(label)` and `label_names()` read no metric), `query_result(expr)`
/// the expression, `metrics(regex)` nothing kproxy could check.
pub fn template_query(query: &str) -> Result<Used, String> {
    let q = query.trim();
    let inner = |prefix: &str| {
        q.strip_prefix(prefix)
            .and_then(|r| r.trim_start().strip_prefix('('))
            .and_then(|r| r.trim_end().strip_suffix(')'))
    };
    if let Some(args) = inner("label_values") {
        // The label is the last argument; a selector, if any, comes before it.
        return match args.rsplit_once(',') {
            Some((selector, _label)) => used(selector),
            None => Ok(Used::default()),
        };
    }
    if let Some(expr) = inner("query_result") {
        return used(expr);
    }
    if inner("label_names").is_some() || inner("metrics").is_some() {
        return Ok(Used::default());
    }
    used(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(expr: &str) -> Vec<String> {
        used(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .metrics
            .into_iter()
            .collect()
    }

    #[test]
    fn the_metrics_of_an_expression_are_its_selectors_names_not_its_functions_labels_or_strings() {
        let q = r#"histogram_quantile(0.99, sum by (le, ip_family) (rate(kubeproxy_sync_proxy_rules_duration_seconds_bucket{job=~"$job", instance=~"${instance}"}[$__rate_interval])))"#;
        assert_eq!(
            metrics(q),
            ["kubeproxy_sync_proxy_rules_duration_seconds_bucket"]
        );
        let u = used(q).unwrap();
        assert_eq!(
            u.grouped.into_iter().collect::<Vec<_>>(),
            ["ip_family", "le"]
        );
        assert_eq!(
            u.matched.into_iter().map(|(_, l)| l).collect::<Vec<_>>(),
            ["instance", "job"]
        );
        let q = r#"time() - max by (instance) (a_seconds offset 5m) > bool 1e+3
            unless on (instance) group_left (node) b_total{code!~"2..", x="a,b}c"} # c_total
            or label_replace(vector(0), "dst", "$1", "src", "(not_a_metric)") and sum(rate(c:d[1h30m:1m])) without (e)
            or absent(up{job="kproxy"} == 1) or .5 * count(d_total)"#;
        assert_eq!(metrics(q), ["a_seconds", "b_total", "c:d", "d_total", "up"]);
        let u = used(q).unwrap();
        assert_eq!(
            u.grouped.into_iter().collect::<Vec<_>>(),
            ["e", "instance", "node"]
        );
        assert!(u.matched.contains(&("b_total".into(), "x".into())));
    }

    #[test]
    fn a_misspelt_function_or_broken_expression_is_an_error_not_a_metric() {
        assert!(used("rat(x_total[5m])").unwrap_err().contains("rat()"));
        for bad in ["sum(x", "x)", r#"x{a="b}"#, "x[5m", r#"x{a}"#, r#"x{a=}"#] {
            assert!(used(bad).is_err(), "{bad}: {:?}", used(bad));
        }
    }

    #[test]
    fn a_grafana_variable_query_reads_the_selector_of_label_values_and_not_its_label() {
        let u = template_query(r#"label_values(kubeproxy_sync_proxy_rules_last_timestamp_seconds{job=~"$job"}, instance)"#)
            .unwrap();
        assert_eq!(
            u.metrics.into_iter().collect::<Vec<_>>(),
            ["kubeproxy_sync_proxy_rules_last_timestamp_seconds"]
        );
        assert!(
            template_query("label_values(job)")
                .unwrap()
                .metrics
                .is_empty()
        );
        let u = template_query("query_result(topk(3, process_resident_memory_bytes))").unwrap();
        assert_eq!(
            u.metrics.into_iter().collect::<Vec<_>>(),
            ["process_resident_memory_bytes"]
        );
    }
}
