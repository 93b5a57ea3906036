//! Hostile input for the property tests' manifests: a document's field replaced by a value of
//! the wrong type, out of range, huge or odd unicode, a field removed, a list entry or string
//! doubled; a file's text cut short or spliced with YAML it does not expect; whole garbage
//! documents (syntax errors, aliases, merge keys, tags, duplicate keys, deep nesting, alias
//! expansion).
//!
//! Invariants: a `Mutation` names a node of the document's tree by its index in pre-order,
//! taken modulo the number of nodes, so every index is valid; cuts and splices fall on
//! character boundaries (a file must be UTF-8 to get past the first check, which is not what
//! is tested here).

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

/// Numbers where a port, a count or a timeout is expected.
pub(super) const ODD_INTS: &[i64] = &[
    0,
    -1,
    65536,
    2_147_483_647,
    2_147_483_648,
    -2_147_483_649,
    i64::MAX,
    i64::MIN,
];

/// Values (JSON text; `LONG` is a 10,000-character string) that replace a field.
const ODD_VALUES: &[&str] = &[
    "null",
    "true",
    "-1",
    "0",
    "65536",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "1e308",
    "-0.5",
    "\"\"",
    "\"ünïcødé-名前\"",
    "\"🙂\"",
    "\"\\u0000\"",
    "\"80\"",
    "\"10.0.0.1/33\"",
    "\"::ffff:1.2.3.4\"",
    "\"999.1.1.1\"",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{\"a\": {\"b\": {\"c\": null}}}",
    "LONG",
];

/// Whole documents no one should write.
pub(super) const GARBAGE: &[&str] = &[
    "",
    "{",
    "[1, 2",
    ": : :",
    "\t- a",
    "null",
    "42",
    "\"just a string\"",
    "# only a comment",
    "apiVersion: v1\nkind: Service\nmetadata: [",
    "apiVersion: v1\nkind: Service\n",
    "apiVersion: v1\nkind: List\nitems: 7",
    "apiVersion: v1\nkind: ServiceList\nitems: [{metadata: {name: web}, spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}}]",
    "apiVersion: v1\nkind: Service\nmetadata: &m {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\nextra: *m",
    "<<: {apiVersion: v1, kind: Service}\nmetadata: {name: merged}\nspec: {clusterIP: 10.96.0.7, ports: [{port: 80}]}",
    "<<: 5\napiVersion: v1\nkind: Service",
    "apiVersion: v1\napiVersion: v1\nkind: Node",
    "a: &a [*a]",
    "kind: !!binary aGVsbG8=\napiVersion: v1",
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: x, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: []}]",
    "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80, port: 81}]}",
    "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 8e1}]}",
    "apiVersion: v1\nkind: Service\nmetadata: {name: wéb}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "%YAML 1.2\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a}",
    "\u{feff}apiVersion: v1\nkind: Node\nmetadata: {name: node-a}",
    "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\napiVersion: v1\nkind: Service",
];

/// Text spliced into a file.
const SPLICES: &[&str] = &[
    "\t", ": ", "- ", "{", "]", "\"", "'", "&a ", "*a", "!!int ", "\u{0}", "---\n", "...\n", "ü",
    "\r\n", "#", "%", "\n  ",
];

/// A change to one document's tree.
#[derive(Clone, Debug)]
pub(super) enum Mutation {
    /// The node at this index becomes one of `ODD_VALUES`.
    Replace(u16, &'static str),
    /// The object entry at this index (counting entries only) goes.
    Remove(u16),
    /// The node at this index, when a list, gets its first entry again; when a string, twice.
    Double(u16),
}

pub(super) fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<u16>(), select(ODD_VALUES)).prop_map(|(at, v)| Mutation::Replace(at, v)),
        2 => any::<u16>().prop_map(Mutation::Remove),
        1 => any::<u16>().prop_map(Mutation::Double),
    ]
}

fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Object(o) => o.values().map(nodes).sum(),
        _ => 0,
    }
}

/// The node at pre-order index `n` (< `nodes(v)`).
fn nth(v: &mut Value, mut n: usize) -> &mut Value {
    if n == 0 {
        return v;
    }
    n -= 1;
    let children: Box<dyn Iterator<Item = &mut Value>> = match v {
        Value::Array(a) => Box::new(a.iter_mut()),
        Value::Object(o) => Box::new(o.values_mut()),
        _ => unreachable!("n < nodes(v)"),
    };
    for child in children {
        let c = nodes(child);
        if n < c {
            return nth(child, n);
        }
        n -= c;
    }
    unreachable!("n < nodes(v)")
}

/// Removes the object entry at pre-order index `*n` (counting entries only); true when done.
fn remove_entry(v: &mut Value, n: &mut usize) -> bool {
    match v {
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                if *n == 0 {
                    o.remove(&k);
                    return true;
                }
                *n -= 1;
                if remove_entry(o.get_mut(&k).expect("listed"), n) {
                    return true;
                }
            }
            false
        }
        Value::Array(a) => a.iter_mut().any(|c| remove_entry(c, n)),
        _ => false,
    }
}

fn entries(v: &Value) -> usize {
    match v {
        Value::Object(o) => o.len() + o.values().map(entries).sum::<usize>(),
        Value::Array(a) => a.iter().map(entries).sum(),
        _ => 0,
    }
}

impl Mutation {
    pub(super) fn apply(&self, doc: &mut Value) {
        match *self {
            Mutation::Replace(at, with) => {
                let value = match with {
                    "LONG" => Value::String("x".repeat(10_000)),
                    json => serde_json::from_str(json).expect("ODD_VALUES are JSON"),
                };
                *nth(doc, usize::from(at) % nodes(doc)) = value;
            }
            Mutation::Remove(at) => {
                let total = entries(doc);
                if total > 0 {
                    remove_entry(doc, &mut (usize::from(at) % total));
                }
            }
            Mutation::Double(at) => match nth(doc, usize::from(at) % nodes(doc)) {
                Value::Array(a) if !a.is_empty() => a.push(a[0].clone()),
                Value::String(s) => *s = s.repeat(2),
                _ => {}
            },
        }
    }
}

/// A change to one file's text.
#[derive(Clone, Debug)]
pub(super) enum TextCut {
    /// Cut after this many thousandths of the text.
    Truncate(u16),
    /// Insert one of `SPLICES` at this many thousandths of the text.
    Splice(u16, &'static str),
}

pub(super) fn cut() -> impl Strategy<Value = TextCut> {
    prop_oneof![
        (0..1000u16).prop_map(TextCut::Truncate),
        (0..1000u16, select(SPLICES)).prop_map(|(at, s)| TextCut::Splice(at, s)),
    ]
}

impl TextCut {
    pub(super) fn apply(&self, text: &str) -> String {
        let at = |k: u16| {
            let mut i = text.len() * usize::from(k) / 1000;
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        match *self {
            TextCut::Truncate(k) => text[..at(k)].to_string(),
            TextCut::Splice(k, s) => format!("{}{s}{}", &text[..at(k)], &text[at(k)..]),
        }
    }
}
