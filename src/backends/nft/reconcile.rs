//! What adoption needs from `nft list table` text: the listing parsed into chains, sets and
//! element texts (for transports that cannot read over netlink, and for the one interval set
//! whose elements do not decode), and the size of one transaction. Adoption itself streams:
//! `load.rs` (whole ports per transaction over what was found, leftovers deleted last, verdict
//! maps first, chains and sets kproxy no longer uses after them) and `read.rs` (the table
//! read without collecting its elements).
//!
//! Invariants: parsing never fails: what is not understood is skipped, and an element whose
//! text differs from compile's only in form is replaced by adoption, which is harmless.

use std::collections::{BTreeMap, BTreeSet};

use super::transaction::{SetKind, commented};

/// The most operations one transaction carries (elements; the first and last carry the rules
/// and deletions, which are few). 10,000 element operations commit in about 0.1 s here.
pub const CHUNK_OPS: usize = 10_000;

/// One family's kproxy table as `nft list table` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub chains: BTreeSet<String>,
    /// Set or map name -> (kind, key -> value; "" for plain sets).
    pub sets: BTreeMap<String, (SetKind, BTreeMap<String, String>)>,
}

/// Parses `nft list table` output (nft 1.0.x text: one `chain NAME {`, `set NAME {` or
/// `map NAME {` line per object, elements in `elements = { a, b }` over one or more lines).
pub fn parse_listing(text: &str) -> Listed {
    let mut listed = Listed::default();
    let mut current: Option<String> = None;
    let mut elements: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(buf) = elements.as_mut() {
            buf.push_str(trimmed);
            if trimmed.ends_with('}') {
                let done = elements.take().unwrap_or_default();
                if let Some(set) = current.as_ref().and_then(|s| listed.sets.get_mut(s)) {
                    collect(&done, &mut set.1);
                }
            }
            continue;
        }
        let mut words = trimmed.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("chain"), Some(name), Some("{")) => {
                listed.chains.insert(name.to_string());
                current = None;
            }
            (Some(kind @ ("set" | "map")), Some(name), Some("{")) => {
                let kind = if kind == "set" {
                    SetKind::Set
                } else {
                    SetKind::Map
                };
                listed
                    .sets
                    .insert(name.to_string(), (kind, BTreeMap::new()));
                current = Some(name.to_string());
            }
            _ => {
                if let Some(rest) = trimmed.strip_prefix("elements = {") {
                    if rest.ends_with('}') {
                        if let Some(set) = current.as_ref().and_then(|s| listed.sets.get_mut(s)) {
                            collect(rest, &mut set.1);
                        }
                    } else {
                        elements = Some(rest.to_string());
                    }
                }
            }
        }
    }
    listed
}

/// Adds the elements of `a : x, b : y }` (the text after `elements = {`) to `into`; an
/// element's comment (`a comment "c" : x`) stays with its value, as compile writes it
/// (`transaction::commented`).
fn collect(text: &str, into: &mut BTreeMap<String, String>) {
    let body = text.trim().trim_end_matches('}');
    for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((k, rest)) = item.split_once(" comment \"")
            && let Some((comment, tail)) = rest.split_once('"')
        {
            let value = tail.trim().strip_prefix(':').unwrap_or("").trim();
            into.insert(k.trim().to_string(), commented(comment, value));
            continue;
        }
        match item.split_once(" : ") {
            Some((k, v)) => into.insert(k.trim().to_string(), v.trim().to_string()),
            None => into.insert(item.to_string(), String::new()),
        };
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
