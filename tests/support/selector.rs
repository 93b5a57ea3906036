//! Equality-based label and field selectors (`k`, `!k`, `k=v`, `k==v`, `k!=v`, comma = and), as
//! the test API server needs them. Set-based terms (`k in (a,b)`) are not supported.

#[derive(Clone, Debug, PartialEq)]
enum Term {
    Exists(String),
    Absent(String),
    Equals(String, String),
    Differs(String, String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector(Vec<Term>);

impl Selector {
    pub fn parse(s: &str) -> Selector {
        let terms = s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                if let Some((k, v)) = t.split_once("!=") {
                    Term::Differs(k.trim().into(), v.trim().into())
                } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                    Term::Equals(k.trim().into(), v.trim().into())
                } else if let Some(k) = t.strip_prefix('!') {
                    Term::Absent(k.trim().into())
                } else {
                    Term::Exists(t.into())
                }
            });
        Selector(terms.collect())
    }

    /// Whether an object whose value of key `k` is `get(k)` matches every term.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
            Term::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
            Term::Differs(k, v) => get(k).as_deref() != Some(v.as_str()),
        })
    }
}
